// deno-lint-ignore-file no-console -- a test runner reports on stdout
/**
 * Runs the conformance suite on whatever runtime loads it, one case after
 * the other, and sets the exit code: the entry point bundled for Node and
 * Bun by `runtimes.ts`. Runs under Deno too (`deno run -A`).
 *
 * Usage: `node conformance.mjs [filter]` (cases whose name contains it).
 *
 * @module
 */

import process from "node:process";

import { cases } from "./_harness.ts";
import { hasOpenssl } from "./_support.ts";
import "./suite.ts";

/** Longest a case may take before it counts as failed. */
const CASE_TIMEOUT_MS = 20_000;

const filter = process.argv[2] ?? "";
const runtime = "Bun" in globalThis
  ? `bun ${process.versions.bun}`
  : "Deno" in globalThis
  ? `deno ${process.versions.deno}`
  : `node ${process.version}`;
const openssl = hasOpenssl();
let passed = 0;
let failed = 0;
let ignored = 0;
const started = performance.now();
for (const c of cases) {
  if (!c.name.includes(filter)) continue;
  if (c.needsOpenssl && !openssl) {
    ignored++;
    console.log(`ignored ${c.name} (no openssl)`);
    continue;
  }
  const t0 = performance.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      c.run(),
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`timed out after ${CASE_TIMEOUT_MS} ms`)),
          CASE_TIMEOUT_MS,
        );
      }),
    ]);
    passed++;
    console.log(`ok      ${c.name} (${Math.round(performance.now() - t0)} ms)`);
  } catch (error) {
    failed++;
    console.log(`FAILED  ${c.name}`);
    console.log(error);
  } finally {
    clearTimeout(timer);
  }
}
console.log(
  `${runtime}: ${passed} passed, ${failed} failed, ${ignored} ignored (${
    Math.round(performance.now() - started)
  } ms)`,
);
process.exitCode = failed === 0 ? 0 : 1;
// A case that failed may leave sockets open: do not wait for them.
if (failed > 0) process.exit(1);
