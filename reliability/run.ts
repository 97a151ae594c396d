/**
 * The reliability runner: `deno task reliability`
 * (= `deno run -A --v8-flags=--expose-gc reliability/run.ts`).
 *
 * Runs every fault scenario of `tests/_load.ts` under concurrent load (16
 * loops, 1 s request timeout, payloads with a unique nonce echoed back), then
 * a forced rolling restart (three in-process servers, each shut down in turn
 * with a 50 ms timeout while its handlers run and more requests wait), then
 * a soak with a random fault switched every 0.5–2 s, and prints a Markdown
 * table: scenario | requests | ok | errors by type | max lateness beyond
 * deadline | recovered | notes, then the soak's RSS at start and end.
 *
 * A request is "late" by how long after its own deadline (issue time +
 * timeout) it settled; the invariants are: every request settles exactly
 * once, no later than deadline + 250 ms, with its own reply or a
 * `TimeoutError`/`ConnectionClosedError`/`NoSessionError`; after the heal, a
 * verification load of 160 requests all succeed and no request is left
 * pending. In the rolling restart, no more requests may fail than the
 * servers' shutdowns cut (`handlersCut`), and no failed request may be one
 * that no handler had started. The exit code is 1 if any invariant fails, if the client did not
 * recover, or if RSS grew by 64 MiB or more over the soak.
 *
 * Flags: `--duration S` (soak seconds, default 60), `--seed N` (the soak's
 * fault schedule), `--faults a,b` (a subset of latency, fragment,
 * reset-mid-frame, blackhole, slow-read, process-restart, rolling-restart),
 * `--fault-ms MS`
 * (how long each fault lasts, default 1500), `--no-soak`, `--soak-only`,
 * `--json` (also print the results as one JSON line at the end),
 * `--attacks a,b` (a subset of the attacks in `attacks.ts`, or `none`;
 * default all, none with `--soak-only`), `--attack-ms MS` (how long the clean client runs beside
 * each attack, default 6000), `--memory-budget BYTES` (the attacked
 * server's `memoryBudget`; default its own), `--idle-timeout MS` (the
 * attacked server's `idleTimeout`; default its own, off).
 *
 * The attacks run after the soak: each against a fresh server process on
 * `serve()`'s defaults (or beside one, for the hostile servers), with a
 * clean client (4 request loops, 1 s timeout) beside it; a second table
 * gives its success rate and p99, and the server's RSS before and at peak.
 * A forged reply accepted, or an untyped error, is a failure.
 *
 * @module
 */
// deno-lint-ignore-file no-console

import { parseArgs } from "node:util";
import {
  collectGarbage,
  type FaultName,
  FAULTS,
  type FaultScenarioResult,
  formatErrors,
  type LoadReport,
  mib,
  type RollingRestartResult,
  rollingRestartViolations,
  runFaultScenario,
  runRollingRestart,
  runSoak,
  type SoakResult,
  violations,
} from "../tests/_load.ts";
import {
  type AttackName,
  type AttackResult,
  ATTACKS,
  runAttack,
  setIdleTimeout,
  setMemoryBudget,
} from "./attacks.ts";
import { hasOpenssl } from "../tests/_certs.ts";

/** Allowed lateness past a deadline, ms. */
const SLACK_MS = 250;
/** RSS growth allowed over the soak. */
const RSS_GROWTH_BOUND = 64 * 1024 * 1024;

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    duration: { type: "string", default: "60" },
    seed: { type: "string" },
    faults: { type: "string" },
    "fault-ms": { type: "string", default: "1500" },
    "no-soak": { type: "boolean", default: false },
    "soak-only": { type: "boolean", default: false },
    json: { type: "boolean", default: false },
    attacks: { type: "string" },
    "attack-ms": { type: "string", default: "6000" },
    "memory-budget": { type: "string" },
    "idle-timeout": { type: "string" },
  },
});

const attacks: AttackName[] = flags.attacks === "none" || flags["soak-only"]
  ? []
  : flags.attacks === undefined
  ? [...ATTACKS]
  : flags.attacks.split(",").map((name) => name.trim() as AttackName);
for (const name of attacks) {
  if (!ATTACKS.includes(name)) {
    throw new TypeError(
      `Unknown attack ${name}: expected one of ${ATTACKS.join(", ")}`,
    );
  }
}
const attackMs = Number(flags["attack-ms"]);
if (flags["memory-budget"] !== undefined) {
  setMemoryBudget(Number(flags["memory-budget"]));
}
if (flags["idle-timeout"] !== undefined) {
  setIdleTimeout(Number(flags["idle-timeout"]));
}

const durationS = Number(flags.duration);
if (!(durationS > 0)) {
  throw new RangeError(`Cannot soak for ${flags.duration} s`);
}
const ROLLING = "rolling-restart";
const SCENARIOS: readonly string[] = [...FAULTS, ROLLING];
const selected = flags.faults === undefined
  ? SCENARIOS
  : flags.faults.split(",").map((name) => name.trim());
for (const name of selected) {
  if (!SCENARIOS.includes(name)) {
    throw new TypeError(
      `Unknown fault ${name}: expected one of ${SCENARIOS.join(", ")}`,
    );
  }
}
const faults = selected.filter((name) => name !== ROLLING) as FaultName[];
const faultMs = Number(flags["fault-ms"]);

interface Row {
  scenario: string;
  requests: number;
  ok: number;
  errors: string;
  lateness: string;
  recovered: string;
  notes: string;
}

const rows: Row[] = [];
const failures: string[] = [];

function lateness(report: LoadReport): string {
  return `${Math.max(0, report.maxLatenessMs).toFixed(0)} ms`;
}

function check(scenario: string, problems: string[]): string[] {
  for (const problem of problems) failures.push(`${scenario}: ${problem}`);
  return problems.map((p) => `VIOLATION ${p}`);
}

const results: FaultScenarioResult[] = [];
if (!flags["soak-only"]) {
  for (const name of faults) {
    console.error(`… ${name}`);
    const result = await runFaultScenario(name, {
      concurrency: 16,
      timeout: 1000,
      slack: SLACK_MS,
      faultMs,
    });
    results.push(result);
    const problems = [
      ...violations(result.load, SLACK_MS),
      ...violations(result.verify, SLACK_MS).map((v) => `after heal: ${v}`),
      ...(result.pendingAfter === 0
        ? []
        : [`${result.pendingAfter} requests left pending`]),
      ...(result.recovered ? [] : ["did not recover"]),
    ];
    rows.push({
      scenario: name,
      requests: result.load.requests,
      ok: result.load.ok,
      errors: formatErrors(result.load.errors),
      lateness: lateness(result.load),
      recovered: result.recovered ? "yes" : "no",
      notes: [
        ...result.notes,
        result.recovered
          ? `first ok ${
            result.recoveryMs.toFixed(0)
          } ms after heal, then ${result.verify.ok}/${result.verify.requests} ok`
          : `after heal ${result.verify.ok}/${result.verify.requests} ok`,
        ...check(name, problems),
      ].join("; "),
    });
  }
}

let rolling: RollingRestartResult | undefined;
if (!flags["soak-only"] && selected.includes(ROLLING)) {
  console.error(`… ${ROLLING}`);
  rolling = await runRollingRestart({
    concurrency: 16,
    timeout: 1000,
    slack: SLACK_MS,
  });
  const failed = rolling.load.requests - rolling.load.ok;
  rows.push({
    scenario: "rolling restart, forced",
    requests: rolling.load.requests,
    ok: rolling.load.ok,
    errors: formatErrors(rolling.load.errors),
    lateness: lateness(rolling.load),
    recovered: rolling.completed &&
        rolling.verify.ok === rolling.verify.requests
      ? "yes"
      : "no",
    notes: [
      ...rolling.notes,
      `${failed} failed ≤ ${rolling.handlersCut} cut`,
      `after restarts ${rolling.verify.ok}/${rolling.verify.requests} ok`,
      ...check(ROLLING, rollingRestartViolations(rolling, SLACK_MS)),
    ].join("; "),
  });
}

let soak: SoakResult | undefined;
if (!flags["no-soak"]) {
  const seed = flags.seed === undefined ? undefined : Number(flags.seed);
  console.error(`… soak ${durationS} s`);
  soak = await runSoak({
    duration: durationS * 1000,
    ...(seed === undefined ? {} : { seed }),
    concurrency: 16,
    timeout: 1000,
    slack: SLACK_MS,
  });
  const growth = soak.rssEnd - soak.rssStart;
  const problems = [
    ...violations(soak.load, SLACK_MS),
    ...violations(soak.verify, SLACK_MS).map((v) => `after heal: ${v}`),
    ...(soak.pendingAfter === 0
      ? []
      : [`${soak.pendingAfter} requests left pending`]),
    ...(soak.recovered ? [] : ["did not recover"]),
    ...(growth < RSS_GROWTH_BOUND
      ? []
      : [`RSS grew ${mib(growth)} (bound ${mib(RSS_GROWTH_BOUND)})`]),
  ];
  const faultCounts = Object.entries(soak.faults).map(([f, n]) => `${f} ${n}`)
    .join(", ");
  rows.push({
    scenario: `soak ${durationS} s`,
    requests: soak.load.requests,
    ok: soak.load.ok,
    errors: formatErrors(soak.load.errors),
    lateness: lateness(soak.load),
    recovered: soak.recovered ? "yes" : "no",
    notes: [
      `seed ${soak.seed}`,
      `faults: ${faultCounts}`,
      `${soak.reconnects} reconnects`,
      `after heal ${soak.verify.ok}/${soak.verify.requests} ok`,
      ...check("soak", problems),
    ].join("; "),
  });
}

const attackResults: AttackResult[] = [];
for (const name of attacks) {
  if (name === "stalled-tls-handshakes" && !hasOpenssl()) {
    console.error(`… attack ${name} skipped: it needs openssl`);
    continue;
  }
  console.error(`… attack ${name}`);
  const result = await runAttack(name, attackMs);
  attackResults.push(result);
  const problems = [
    ...(result.load.mismatches === 0
      ? []
      : [`${result.load.mismatches} replies reached the wrong request`]),
    ...(result.load.unexpectedCount === 0
      ? []
      : [`untyped errors: ${result.load.unexpected.join(", ")}`]),
  ];
  result.notes.push(...check(`attack ${name}`, problems));
}

collectGarbage();
const header: Row = {
  scenario: "scenario",
  requests: 0,
  ok: 0,
  errors: "errors by type",
  lateness: "max lateness beyond deadline",
  recovered: "recovered",
  notes: "notes",
};
const cells = (row: Row, isHeader = false) => [
  row.scenario,
  isHeader ? "requests" : String(row.requests),
  isHeader ? "ok" : String(row.ok),
  row.errors,
  row.lateness,
  row.recovered,
  row.notes,
];
const table = [cells(header, true), ...rows.map((row) => cells(row))];
const widths = table[0]!.map((_, i) =>
  Math.max(...table.map((line) => line[i]!.length))
);
const line = (parts: string[]) =>
  `| ${
    parts.map((part, i) =>
      i === parts.length - 1 ? part : part.padEnd(widths[i]!)
    )
      .join(" | ")
  } |`;
console.log(
  `\nDeno ${Deno.version.deno}, ${Deno.build.os}/${Deno.build.arch}; 16 loops, 1 s timeout, slack ${SLACK_MS} ms; each fault ${faultMs} ms\n`,
);
console.log(line(table[0]!));
console.log(
  line(widths.map((w, i) => i === widths.length - 1 ? "---" : "-".repeat(w))),
);
for (const row of table.slice(1)) console.log(line(row));
if (soak !== undefined) {
  console.log(
    `\nsoak RSS: start ${mib(soak.rssStart)}, end ${mib(soak.rssEnd)} (growth ${
      mib(soak.rssEnd - soak.rssStart)
    }, bound ${mib(RSS_GROWTH_BOUND)}; peak ${
      mib(soak.rssPeak)
    }); V8 heap used ${mib(soak.heapStart)} → ${mib(soak.heapEnd)}${
      (globalThis as { gc?: unknown }).gc === undefined
        ? " (no --expose-gc: figures before GC)"
        : " (after a full GC)"
    }`,
  );
}
if (attackResults.length > 0) {
  console.log(
    `\nAttacks, ${attackMs} ms each (drain-and-stay: at least 12 s, trickle: at least 65 s); clean client: 4 loops, 1 s timeout${
      flags["idle-timeout"] === undefined
        ? ""
        : `; attacked server idleTimeout ${flags["idle-timeout"]} ms`
    }\n`,
  );
  console.log(
    "| attack | clean client ok | p99 | server RSS before → peak | errors | notes |",
  );
  console.log("| --- | --- | --- | --- | --- | --- |");
  for (const r of attackResults) {
    const rate = r.load.requests === 0 ? 0 : r.load.ok / r.load.requests;
    console.log(
      `| ${r.name}: ${r.what} | ${r.load.ok}/${r.load.requests} (${
        (rate * 100).toFixed(2)
      } %) | ${r.load.latency.p99.toFixed(1)} ms | ${mib(r.rssBefore)} → ${
        mib(r.rssPeak)
      } | ${formatErrors(r.load.errors)} | ${r.notes.join("; ")} |`,
    );
  }
}
if (failures.length > 0) {
  console.log(`\nFAILED:\n${failures.map((f) => `- ${f}`).join("\n")}`);
}
if (flags.json) {
  console.log(
    JSON.stringify({
      scenarios: results,
      rolling,
      soak,
      attacks: attackResults,
      failures,
    }),
  );
}
// No Deno.exit(): the process ends only once every connection, timer and
// child is gone, so a leak shows as a runner that does not exit.
Deno.exitCode = failures.length > 0 ? 1 : 0;
