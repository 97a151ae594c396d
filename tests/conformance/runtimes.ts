// deno-lint-ignore-file no-console -- a test runner reports on stdout
/**
 * `deno task test:runtimes`: bundles the conformance suite (`run.ts`) into
 * one `.mjs` file (Node 20 cannot run TypeScript) and runs it with Node and
 * Bun (installed from npm when missing: `_runtimes.ts`).
 *
 * Usage: `deno task test:runtimes [--node22] [filter]`. `--node22` also runs
 * Node 22 through `npx --yes node@22` (downloaded on first use).
 *
 * @module
 */

import { bunBinary, bundle, run } from "./_runtimes.ts";

const args = [...Deno.args];
const withNode22 = args.includes("--node22");
const filter = args.filter((arg) => arg !== "--node22");

const dir = await Deno.makeTempDir({ prefix: "tcpbutler-runtimes-" });
try {
  const bundled = `${dir}/conformance.mjs`;
  const suite = new URL("./run.ts", import.meta.url).pathname;
  await bundle(suite, bundled);
  const runtimes: [string, string, string[]][] = [
    ["node", "node", [bundled, ...filter]],
    ["bun", await bunBinary(), [bundled, ...filter]],
  ];
  if (withNode22) {
    runtimes.push(["node 22", "npx", ["--yes", "node@22", bundled, ...filter]]);
  }
  const failed: string[] = [];
  for (const [name, command, commandArgs] of runtimes) {
    console.log(`\n# ${name}`);
    if (!await run(command, commandArgs)) failed.push(name);
  }
  if (failed.length > 0) {
    console.log(`\nconformance failed on: ${failed.join(", ")}`);
    Deno.exitCode = 1;
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
