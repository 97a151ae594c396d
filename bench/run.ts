/**
 * The benchmark orchestrator: `deno task bench` (= `deno run -A bench/run.ts`).
 *
 * Echo on loopback, server and client in separate processes (plus one
 * in-process case), for: raw Deno (the ceiling), Node `net` (what a Node user
 * hand-writes), and tcpbutler (default protocol, and the "plain" codec that
 * speaks the baselines' wire format). Each scenario runs for a fixed duration
 * after a warm-up; the client keeps N requests in flight over S connections.
 *
 * Figures: req/s = replies received in the window / window length. MB/s =
 * payload bytes per second ONE way (request payload only, no headers or ids;
 * the same amount flows back). Latency: from `performance.now()` when the
 * request is issued to when its reply (matched by id) is handed back; every
 * client reads the clock once per request sent and once per read of replies
 * (`replyClock()` in `_shared.ts`), so timing costs all of them the same. CPU
 * µs/req = (client process CPU + server process CPU) over the window / replies
 * (`process.cpuUsage()` in the client, `/proc/<pid>/stat` for the server).
 * Ratio: req/s against raw Deno in the same scenario.
 *
 * Flags: `--quick` (small matrix, 1 s windows, under a minute), `--runs N`
 * (median of N runs per scenario and metric, runs interleaved across
 * implementations), `--duration MS`, `--warmup MS`, `--impls raw,node,…`
 * (default `raw,node,tcpbutler,tcpbutler-pipeline,tcpbutler-plain`, where
 * `tcpbutler-pipeline` is the default protocol through `client.pipeline()`
 * batches; also `node-cork` (Node
 * writing one frame per `write()` between cork/uncork), `raw-promise` (the
 * raw client through a promise per request, awaited by N loops: the floor
 * of any promise-based client), `tcpbutler-srv`
 * (tcpbutler's plain server under the raw client) and `tcpbutler-cli`
 * (tcpbutler's plain client against the raw server, in process too)),
 * `--filter TEXT` (scenario names containing it),
 * `--pin` (server on CPU 1, client on CPU 0, via taskset),
 * `--no-idle`, `--idle-conns N`, `--out PATH` (without extension; default
 * `bench/results/latest`, or `bench/results/quick` with `--quick`; with
 * `--runtime`, `-node` or `-bun` appended).
 *
 * `--runtime node|bun` (default `deno`) runs tcpbutler's client and server
 * processes on that runtime: `tcpbutler_node.ts` bundled with `deno bundle`,
 * Bun from npm when missing (`tests/conformance/_runtimes.ts`). The
 * baselines stay in the run so its ratios compare like with like: raw Deno,
 * and the hand-written `node:net` echo (`node_*.mjs`) on that runtime
 * (impl `node` or `bun`; the default impls become
 * `raw,<runtime>,tcpbutler,tcpbutler-pipeline,tcpbutler-plain`). The table
 * then has a "× net" column: req/s against that hand-written echo.
 *
 * @module
 */
// deno-lint-ignore-file no-console

import { parseArgs } from "node:util";
import { renderChart } from "./chart.ts";
import { type ClientResult, procRssKiB } from "./_shared.ts";
import { bunBinary, bundle } from "../tests/conformance/_runtimes.ts";

const BENCH = new URL(".", import.meta.url).pathname;
const DENO = Deno.execPath();

// ---------------------------------------------------------------- options

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    runs: { type: "string", default: "1" },
    duration: { type: "string" },
    warmup: { type: "string" },
    impls: { type: "string" },
    filter: { type: "string" },
    "no-idle": { type: "boolean", default: false },
    "idle-conns": { type: "string", default: "5000" },
    out: { type: "string" },
    pin: { type: "boolean", default: false },
    runtime: { type: "string", default: "deno" },
  },
});
const RUNTIMES = ["deno", "node", "bun"] as const;
type Runtime = (typeof RUNTIMES)[number];
if (!(RUNTIMES as readonly string[]).includes(flags.runtime)) {
  throw new TypeError(
    `--runtime must be one of ${RUNTIMES.join(", ")}: got "${flags.runtime}"`,
  );
}
const runtime = flags.runtime as Runtime;
const quick = flags.quick;
const runs = Math.max(1, Number(flags.runs));
const duration = Number(flags.duration ?? (quick ? 1000 : 3000));
const warmup = Number(flags.warmup ?? (quick ? 250 : 500));
const idleConns = Number(flags["idle-conns"]);
const pin = flags.pin;
// A quick run does not overwrite the full run's figures.
const out = flags.out ??
  `${BENCH}results/${quick ? "quick" : "latest"}${
    runtime === "deno" ? "" : `-${runtime}`
  }`;

// ---------------------------------------------------------------- implementations

interface Impl {
  name: string;
  /** Tried in the idle-memory test. */
  idle: boolean;
  /** Has an in-process variant (`--inproc` on the client). */
  inproc: boolean;
  server: string[];
  client: string[];
}

const denoRun = (file: string, ...args: string[]) => [
  DENO,
  "run",
  "-A",
  // Lets the idle-memory measurement collect garbage first (stdin "gc").
  "--v8-flags=--expose-gc",
  `${BENCH}${file}`,
  ...args,
];

const IMPLS: Record<string, Impl> = {
  raw: {
    name: "raw",
    idle: true,
    inproc: true,
    server: denoRun("raw_server.ts"),
    client: denoRun("raw_client.ts"),
  },
  node: {
    name: "node",
    idle: true,
    inproc: true,
    server: [
      "node",
      "--expose-gc",
      `${BENCH}node_server.mjs`,
      "--variant",
      "batch",
    ],
    client: ["node", `${BENCH}node_client.mjs`, "--variant", "batch"],
  },
  "node-cork": {
    name: "node-cork",
    idle: false,
    inproc: true,
    server: [
      "node",
      "--expose-gc",
      `${BENCH}node_server.mjs`,
      "--variant",
      "cork",
    ],
    client: ["node", `${BENCH}node_client.mjs`, "--variant", "cork"],
  },
  "raw-promise": {
    name: "raw-promise",
    idle: false,
    inproc: true,
    server: denoRun("raw_server.ts"),
    client: denoRun("raw_client.ts", "--variant", "promise"),
  },
  tcpbutler: {
    name: "tcpbutler",
    idle: true,
    inproc: true,
    server: denoRun("tcpbutler_server.ts", "--variant", "default"),
    client: denoRun("tcpbutler_client.ts", "--variant", "default"),
  },
  "tcpbutler-pipeline": {
    name: "tcpbutler-pipeline",
    idle: false,
    inproc: true,
    server: denoRun("tcpbutler_server.ts", "--variant", "default"),
    client: denoRun("tcpbutler_client.ts", "--variant", "pipeline"),
  },
  "tcpbutler-plain": {
    name: "tcpbutler-plain",
    idle: false,
    inproc: true,
    server: denoRun("tcpbutler_server.ts", "--variant", "plain"),
    client: denoRun("tcpbutler_client.ts", "--variant", "plain"),
  },
  // Halves, to tell the server's cost from the client's (same wire format):
  "tcpbutler-srv": {
    name: "tcpbutler-srv",
    idle: false,
    inproc: false,
    server: denoRun("tcpbutler_server.ts", "--variant", "plain"),
    client: denoRun("raw_client.ts"),
  },
  "tcpbutler-cli": {
    name: "tcpbutler-cli",
    idle: false,
    inproc: true,
    server: denoRun("raw_server.ts"),
    client: denoRun(
      "tcpbutler_client.ts",
      "--variant",
      "plain",
      "--server",
      "raw",
    ),
  },
};

/** The temporary directory of the `--runtime` bundle, removed at exit. */
let bundleDir: string | undefined;

function removeBundle() {
  if (bundleDir === undefined) return;
  try {
    Deno.removeSync(bundleDir, { recursive: true });
  } catch { /* gone */ }
  bundleDir = undefined;
}

/**
 * Adds the hand-written `node:net` echo on Bun (`bun`) when asked for, and,
 * for `--runtime node|bun`, puts tcpbutler's processes on that runtime
 * (`tcpbutler-cli` goes: its in-process server is raw Deno's).
 *
 * @param wanted The implementations asked for.
 */
async function useRuntime(wanted: string[]): Promise<void> {
  const bun = runtime === "bun" || wanted.includes("bun")
    ? await bunBinary()
    : undefined;
  if (bun !== undefined) {
    IMPLS.bun = {
      name: "bun",
      idle: true,
      inproc: true,
      server: [bun, `${BENCH}node_server.mjs`, "--variant", "batch"],
      client: [bun, `${BENCH}node_client.mjs`, "--variant", "batch"],
    };
  }
  if (runtime === "deno") return;
  bundleDir = await Deno.makeTempDir({ prefix: "tcpbutler-bench-" });
  const entry = `${bundleDir}/tcpbutler_node.mjs`;
  await bundle(`${BENCH}tcpbutler_node.ts`, entry);
  // Bun has no --expose-gc; its servers skip the collection before a reading.
  const server = (variant: string) =>
    runtime === "node"
      ? ["node", "--expose-gc", entry, "server", "--variant", variant]
      : [bun!, entry, "server", "--variant", variant];
  const client = (variant: string) => [
    runtime === "node" ? "node" : bun!,
    entry,
    "client",
    "--variant",
    variant,
  ];
  for (const variant of ["default", "pipeline", "plain"]) {
    const name = variant === "default" ? "tcpbutler" : `tcpbutler-${variant}`;
    IMPLS[name] = {
      ...IMPLS[name]!,
      server: server(variant === "plain" ? "plain" : "default"),
      client: client(variant),
    };
  }
  IMPLS["tcpbutler-srv"]!.server = server("plain");
  delete IMPLS["tcpbutler-cli"];
}

// ---------------------------------------------------------------- scenarios

interface Scenario {
  name: string;
  payload: number;
  inflight: number;
  sessions: number;
  inproc: boolean;
}

function sizeLabel(bytes: number): string {
  return bytes >= 1024 ? `${bytes / 1024}KiB` : `${bytes}B`;
}

function scenario(
  payload: number,
  inflight: number,
  sessions: number,
  inproc = false,
): Scenario {
  const name = `${sizeLabel(payload)} ${inflight}inf/${sessions}s${
    inproc ? " inproc" : ""
  }`;
  return { name, payload, inflight, sessions, inproc };
}

function matrix(): Scenario[] {
  if (quick) {
    return [
      scenario(64, 1, 1),
      scenario(64, 64, 1),
      scenario(1024, 256, 4),
      scenario(16384, 64, 1),
      scenario(64, 64, 1, true),
    ];
  }
  const list: Scenario[] = [];
  for (const payload of [64, 1024, 16384]) {
    list.push(scenario(payload, 1, 1));
    for (const inflight of [64, 256]) {
      for (const sessions of [1, 4]) {
        list.push(scenario(payload, inflight, sessions));
      }
    }
  }
  list.push(scenario(64, 64, 1, true));
  return list;
}

// ---------------------------------------------------------------- child processes

const children = new Set<Child>();

/** A spawned process with line-wise stdout and the tail of its stderr. */
class Child {
  readonly proc: Deno.ChildProcess;
  readonly pid: number;
  #lines: string[] = [];
  #waiters: (() => void)[] = [];
  #stdoutDone = false;
  #stderr = "";
  #stdin: WritableStreamDefaultWriter<Uint8Array>;

  /** Asks the child to collect garbage (servers listen for "gc" on stdin). */
  async gc(): Promise<void> {
    await this.#stdin.write(new TextEncoder().encode("gc\n"));
  }
  readonly status: Promise<Deno.CommandStatus>;

  constructor(argv: string[], cpu?: number) {
    const pin = cpu === undefined ? [] : ["taskset", "-c", String(cpu)];
    // Raise the descriptor limit to the hard limit (5,000 idle connections).
    this.proc = new Deno.Command("sh", {
      args: [
        "-c",
        'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"',
        "sh",
        ...pin,
        ...argv,
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    this.pid = this.proc.pid;
    this.#stdin = this.proc.stdin.getWriter();
    children.add(this);
    this.status = this.proc.status.finally(() => children.delete(this));
    this.#pump();
    this.#pumpErr();
  }

  async #pump() {
    let rest = "";
    try {
      for await (
        const text of this.proc.stdout.pipeThrough(new TextDecoderStream())
      ) {
        const parts = (rest + text).split("\n");
        rest = parts.pop()!;
        this.#lines.push(...parts);
        this.#wake();
      }
    } catch { /* killed */ }
    if (rest) this.#lines.push(rest);
    this.#stdoutDone = true;
    this.#wake();
  }

  async #pumpErr() {
    try {
      for await (
        const text of this.proc.stderr.pipeThrough(new TextDecoderStream())
      ) {
        this.#stderr = (this.#stderr + text).slice(-4000);
      }
    } catch { /* killed */ }
  }

  #wake() {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** The first stdout line starting with `prefix` (the rest of it). */
  async line(prefix: string, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.#lines.findIndex((l) => l.startsWith(prefix));
      if (i >= 0) {
        return this.#lines.splice(0, i + 1).pop()!.slice(prefix.length);
      }
      if (this.#stdoutDone) {
        throw new Error(`exited before "${prefix}": ${this.stderrTail()}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `no "${prefix}" within ${timeoutMs} ms: ${this.stderrTail()}`,
        );
      }
      const { promise, resolve } = Promise.withResolvers<void>();
      this.#waiters.push(resolve);
      const timer = setTimeout(resolve, left);
      await promise;
      clearTimeout(timer);
    }
  }

  stderrTail(): string {
    const lines = this.#stderr.trim().split("\n").filter((l) => l.trim());
    return lines.slice(-6).join(" | ") ||
      "(no stderr)";
  }

  /** Closes stdin (servers and idle clients exit on EOF), then kills after `graceMs`. */
  async stop(graceMs = 3000): Promise<void> {
    try {
      await this.#stdin.close();
    } catch { /* gone */ }
    const timer = setTimeout(() => this.kill(), graceMs);
    await this.status;
    clearTimeout(timer);
  }

  kill() {
    try {
      this.proc.kill("SIGKILL");
    } catch { /* already gone */ }
  }
}

function killAll() {
  for (const child of children) child.kill();
  removeBundle();
}

for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  Deno.addSignalListener(signal, () => {
    killAll();
    Deno.exit(130);
  });
}
globalThis.addEventListener("unload", killAll);

// ---------------------------------------------------------------- one run

function clientArgs(sc: Scenario): string[] {
  return [
    "--sessions",
    String(sc.sessions),
    "--inflight",
    String(sc.inflight),
    "--payload",
    String(sc.payload),
    "--warmup",
    String(warmup),
    "--duration",
    String(duration),
  ];
}

async function runOnce(impl: Impl, sc: Scenario): Promise<ClientResult> {
  let server: Child | undefined;
  let client: Child | undefined;
  try {
    const args = clientArgs(sc);
    if (sc.inproc) {
      client = new Child([...impl.client, ...args, "--inproc"]);
    } else {
      server = new Child(impl.server, pin ? 1 : undefined);
      const port = (await server.line("LISTENING ", 20_000)).trim();
      client = new Child([
        ...impl.client,
        ...args,
        "--port",
        port,
        "--server-pid",
        String(server.pid),
      ], pin ? 0 : undefined);
    }
    const line = await client.line("RESULT ", warmup + duration + 30_000);
    await client.stop();
    return JSON.parse(line) as ClientResult;
  } finally {
    client?.kill();
    await client?.status;
    await server?.stop();
  }
}

// ---------------------------------------------------------------- idle memory

interface IdleResult {
  connections: number;
  rssBeforeKiB: number;
  rssAfterKiB: number;
  kibPerConnection: number;
}

function fdCount(pid: number): number {
  let n = 0;
  for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) n++;
  return n;
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until the RSS of `pid` stops moving (< 0.5% over 200 ms), at most `maxMs`. */
async function settledRss(pid: number, maxMs: number): Promise<number> {
  const end = Date.now() + maxMs;
  let last = procRssKiB(pid);
  while (Date.now() < end) {
    await delay(200);
    const now = procRssKiB(pid);
    if (Math.abs(now - last) <= last * 0.005) return now;
    last = now;
  }
  return last;
}

async function idleMemory(impl: Impl): Promise<IdleResult> {
  const server = new Child(impl.server);
  let client: Child | undefined;
  try {
    const port = (await server.line("LISTENING ", 20_000)).trim();
    // Garbage left by start-up or by accepting is not per-connection memory:
    // every server collects before each reading.
    await server.gc();
    const before = await settledRss(server.pid, 2000);
    const fds = fdCount(server.pid);
    client = new Child([
      ...IMPLS.raw!.client,
      "--idle",
      String(idleConns),
      "--port",
      port,
    ]);
    await client.line("IDLE READY", 60_000);
    // Every connection accepted by the server (it holds a descriptor each).
    const deadline = Date.now() + 30_000;
    while (fdCount(server.pid) < fds + idleConns) {
      if (Date.now() > deadline) throw new Error("connections not accepted");
      await delay(50);
    }
    await server.gc();
    const after = await settledRss(server.pid, 3000);
    return {
      connections: idleConns,
      rssBeforeKiB: before,
      rssAfterKiB: after,
      kibPerConnection: (after - before) / idleConns,
    };
  } finally {
    await client?.stop();
    await server.stop();
  }
}

// ---------------------------------------------------------------- tcpbutler availability

async function tcpbutlerMissing(): Promise<string | undefined> {
  try {
    const mod = await import(new URL("../mod.ts", import.meta.url).href);
    const framing = await import(
      new URL("../framing/mod.ts", import.meta.url).href
    );
    const missing = [
      typeof mod.dial !== "function" && "dial",
      typeof mod.serve !== "function" && "serve",
      typeof framing.lengthPrefixed !== "function" && "lengthPrefixed",
    ].filter(Boolean);
    return missing.length ? `mod.ts lacks ${missing.join(", ")}` : undefined;
  } catch (error) {
    return (error instanceof Error ? error.message : String(error)).split(
      "\n",
    )[0];
  }
}

// ---------------------------------------------------------------- figures

const METRICS = [
  "reqPerSec",
  "mbPerSec",
  "p50",
  "p99",
  "p999",
  "mean",
  "max",
  "cpuUsPerReq",
  "clientCpuUs",
  "serverCpuUs",
  "requests",
  "errors",
] as const;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

type Summary = Record<(typeof METRICS)[number], number | null>;

function summarize(list: ClientResult[]): Summary {
  const out = {} as Summary;
  for (const key of METRICS) {
    const xs = list.map((r) => r[key]).filter((x): x is number =>
      typeof x === "number"
    );
    out[key] = xs.length ? median(xs) : null;
  }
  return out;
}

const fmtInt = (x: number) => Math.round(x).toLocaleString("en-US");
function fmtUs(us: number | null): string {
  if (us === null || !Number.isFinite(us)) return "-";
  if (us >= 10_000) return `${(us / 1000).toFixed(1)} ms`;
  if (us >= 1000) return `${(us / 1000).toFixed(2)} ms`;
  return `${us.toFixed(0)} µs`;
}
function fmtNum(x: number | null, digits: number): string {
  return x === null || !Number.isFinite(x) ? "-" : x.toFixed(digits);
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) =>
    Math.max(...rows.map((r) => r[i]!.length))
  );
  const line = (r: string[]) =>
    `| ${
      r.map((c, i) => i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))
        .join(" | ")
    } |`;
  return [
    line(rows[0]!),
    `|${
      widths.map((w, i) => i < 2 ? "-".repeat(w + 2) : "-".repeat(w + 1) + ":")
        .join("|")
    }|`,
    ...rows.slice(1).map(line),
  ].join("\n");
}

async function machine() {
  const cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  let node = "unavailable";
  try {
    const out = await new Deno.Command("node", { args: ["--version"] })
      .output();
    node = new TextDecoder().decode(out.stdout).trim();
  } catch { /* no node */ }
  let bun: string | undefined;
  if (IMPLS.bun) {
    const out = await new Deno.Command(IMPLS.bun.server[0]!, {
      args: ["--version"],
    }).output();
    bun = new TextDecoder().decode(out.stdout).trim();
  }
  return {
    cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    memoryMiB: Math.round(Deno.systemMemoryInfo().total / 1048576),
    kernel: Deno.osRelease(),
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    node,
    ...(bun === undefined ? {} : { bun }),
    date: new Date().toISOString(),
  };
}

// ---------------------------------------------------------------- main

/** The JSON written to `latest.json`. */
export interface Report {
  machine: Awaited<ReturnType<typeof machine>>;
  settings: {
    /** Where tcpbutler's processes ran (`--runtime`). */
    runtime: Runtime;
    quick: boolean;
    runs: number;
    durationMs: number;
    warmupMs: number;
    definitions: Record<string, string>;
  };
  unavailable: Record<string, string>;
  scenarios: {
    name: string;
    payload: number;
    inflight: number;
    sessions: number;
    inproc: boolean;
    results: Record<
      string,
      {
        median: Summary;
        /** Slowest and fastest run's req/s. */
        reqPerSecRange: [number, number];
        ratioToRaw: number | null;
        /** With `--runtime node|bun`: against that runtime's `node:net` echo. */
        ratioToNet?: number | null;
        runs: ClientResult[];
      }
    >;
    failures: Record<string, string>;
  }[];
  idleMemory: Record<string, IdleResult | { error: string }>;
}

async function main() {
  const started = Date.now();
  const wanted = (
    flags.impls ??
      `raw,${
        runtime === "deno" ? "node" : runtime
      },tcpbutler,tcpbutler-pipeline,tcpbutler-plain`
  )
    .split(",").map((s) => s.trim()).filter(Boolean);
  await useRuntime(wanted);
  for (const name of wanted) {
    if (!IMPLS[name]) throw new Error(`unknown implementation ${name}`);
  }
  const unavailable: Record<string, string> = {};
  if (wanted.some((n) => n.startsWith("tcpbutler"))) {
    const why = await tcpbutlerMissing();
    if (why) {
      console.log(`tcpbutler: not available (${why})`);
      for (const n of wanted) {
        if (n.startsWith("tcpbutler")) unavailable[n] = why;
      }
    }
  }
  const impls = wanted.filter((n) => !unavailable[n]).map((n) => IMPLS[n]!);
  const scenarios = matrix().filter((sc) =>
    !flags.filter || sc.name.includes(flags.filter)
  );

  const report: Report = {
    machine: await machine(),
    settings: {
      runtime,
      quick,
      runs,
      durationMs: duration,
      warmupMs: warmup,
      definitions: {
        reqPerSec: "replies received in the measurement window / its length",
        mbPerSec:
          "request payload bytes per second, one way, in 1e6 bytes (no headers, no ids); the same flows back",
        latency:
          "µs from performance.now() when a request is issued to its reply matched by id",
        cpuUsPerReq:
          "(client CPU + server CPU) over the window / replies; in-process: that one process",
        ratioToRaw: "req/s / raw Deno req/s in the same scenario",
        ...(runtime === "deno" ? {} : {
          ratioToNet:
            `req/s / req/s of the hand-written node:net echo on ${runtime} in the same scenario`,
        }),
        median:
          `median of ${runs} run(s) per metric, runs interleaved across implementations`,
      },
    },
    unavailable,
    scenarios: [],
    idleMemory: {},
  };
  const m = report.machine;
  console.log(
    `machine: ${m.cpu}, ${m.cores} cores, Deno ${m.deno}, Node ${m.node}${
      m.bun === undefined ? "" : `, Bun ${m.bun}`
    }; ${runtime === "deno" ? "" : `tcpbutler on ${runtime}; `}` +
      `${scenarios.length} scenarios × ${impls.length} impls × ${runs} run(s), ` +
      `${duration} ms windows after ${warmup} ms warm-up`,
  );

  const failuresInARow: Record<string, number> = {};
  for (const [index, sc] of scenarios.entries()) {
    const perImpl: Record<string, ClientResult[]> = {};
    const failures: Record<string, string> = {};
    for (let run = 0; run < runs; run++) {
      for (const impl of impls) {
        if (sc.inproc && !impl.inproc) continue;
        if ((failuresInARow[impl.name] ?? 0) >= 2) {
          failures[impl.name] ??= "skipped after two failures in a row";
          continue;
        }
        try {
          const r = await runOnce(impl, sc);
          (perImpl[impl.name] ??= []).push(r);
          failuresInARow[impl.name] = 0;
          console.log(
            `[${index + 1}/${scenarios.length}] ${sc.name.padEnd(20)} ${
              impl.name.padEnd(15)
            } run ${run + 1}/${runs}: ${
              fmtInt(r.reqPerSec).padStart(9)
            } req/s  p50 ${fmtUs(r.p50)}  p99 ${fmtUs(r.p99)}  ${
              fmtNum(r.cpuUsPerReq, 2)
            } µs CPU/req${r.errors ? `  ${r.errors} ERRORS` : ""}`,
          );
        } catch (error) {
          const message = error instanceof Error
            ? error.message
            : String(error);
          failures[impl.name] = message;
          failuresInARow[impl.name] = (failuresInARow[impl.name] ?? 0) + 1;
          console.log(
            `[${index + 1}/${scenarios.length}] ${sc.name.padEnd(20)} ${
              impl.name.padEnd(15)
            } run ${run + 1}/${runs}: FAILED ${message}`,
          );
        }
      }
    }
    const results: Report["scenarios"][number]["results"] = {};
    for (const [name, list] of Object.entries(perImpl)) {
      const rates = list.map((r) => r.reqPerSec);
      results[name] = {
        median: summarize(list),
        reqPerSecRange: [Math.min(...rates), Math.max(...rates)],
        ratioToRaw: null,
        runs: list,
      };
    }
    const raw = results.raw?.median.reqPerSec;
    const net = results[runtime]?.median.reqPerSec;
    for (const r of Object.values(results)) {
      r.ratioToRaw = raw ? (r.median.reqPerSec ?? 0) / raw : null;
      if (runtime !== "deno") {
        r.ratioToNet = net ? (r.median.reqPerSec ?? 0) / net : null;
      }
    }
    report.scenarios.push({ ...sc, results, failures });
  }

  if (!flags["no-idle"]) {
    for (const impl of impls.filter((i) => i.idle)) {
      try {
        const r = await idleMemory(impl);
        report.idleMemory[impl.name] = r;
        console.log(
          `idle memory ${impl.name.padEnd(15)} ${r.connections} connections: ` +
            `RSS ${fmtInt(r.rssBeforeKiB)} → ${fmtInt(r.rssAfterKiB)} KiB, ` +
            `${r.kibPerConnection.toFixed(1)} KiB per connection`,
        );
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        report.idleMemory[impl.name] = { error: message };
        console.log(`idle memory ${impl.name}: FAILED ${message}`);
      }
    }
  }

  // The table.
  const rows = [[
    "scenario",
    "impl",
    "req/s",
    "MB/s",
    "p50",
    "p99",
    "p99.9",
    "CPU µs/req",
    "× raw",
    ...(runtime === "deno" ? [] : ["× net"]),
    ...(runs > 1 ? ["max/min"] : []),
  ]];
  for (const sc of report.scenarios) {
    for (const impl of impls) {
      if (sc.inproc && !impl.inproc) continue;
      const r = sc.results[impl.name];
      if (!r) {
        rows.push([
          sc.name,
          impl.name,
          "failed",
          ...rows[0]!.slice(3).map(() => ""),
        ]);
        continue;
      }
      const x = r.median;
      rows.push([
        sc.name,
        impl.name,
        fmtInt(x.reqPerSec ?? NaN),
        fmtNum(x.mbPerSec, x.mbPerSec! >= 100 ? 0 : 1),
        fmtUs(x.p50),
        fmtUs(x.p99),
        fmtUs(x.p999),
        fmtNum(x.cpuUsPerReq, 2),
        fmtNum(r.ratioToRaw, 2),
        ...(runtime === "deno" ? [] : [fmtNum(r.ratioToNet ?? null, 2)]),
        ...(runs > 1
          ? [fmtNum(r.reqPerSecRange[1] / r.reqPerSecRange[0], 2)]
          : []),
      ]);
    }
  }
  console.log();
  console.log(table(rows));
  const idleRows = [[
    "impl",
    "conns",
    "RSS before KiB",
    "RSS after KiB",
    "KiB/conn",
  ]];
  for (const [name, r] of Object.entries(report.idleMemory)) {
    idleRows.push(
      "error" in r ? [name, "failed", r.error.slice(0, 60), "", ""] : [
        name,
        String(r.connections),
        fmtInt(r.rssBeforeKiB),
        fmtInt(r.rssAfterKiB),
        r.kibPerConnection.toFixed(1),
      ],
    );
  }
  if (idleRows.length > 1) {
    console.log();
    console.log(table(idleRows));
  }
  for (const [name, why] of Object.entries(unavailable)) {
    console.log(`${name}: not available (${why})`);
  }

  await Deno.mkdir(new URL(".", `file://${out}`).pathname, { recursive: true });
  await Deno.writeTextFile(
    `${out}.json`,
    JSON.stringify(report, null, 2) + "\n",
  );
  await Deno.writeTextFile(`${out}.svg`, renderChart(report));
  console.log(
    `\nMB/s = payload one way; CPU = client + server${
      runs > 1 ? `; medians of ${runs} runs, max/min = spread of req/s` : ""
    }. Wrote ${out}.json and ${out}.svg in ${
      ((Date.now() - started) / 1000).toFixed(0)
    } s.`,
  );
}

try {
  await main();
} finally {
  killAll();
}
Deno.exit(0);
