// deno-lint-ignore-file no-console -- a test runner reports on stdout
/**
 * `deno task test:runtimes`: bundles the conformance suite (`run.ts`) into
 * one `.mjs` file (Node 20 cannot run TypeScript) and runs it with Node and
 * Bun. Bun comes from npm (`bun@1.4.4`, which ships the binary) into
 * `~/.cache/tcpbutler/` when it is not on the PATH.
 *
 * Usage: `deno task test:runtimes [--node22] [filter]`. `--node22` also runs
 * Node 22 through `npx --yes node@22` (downloaded on first use).
 *
 * @module
 */

const BUN_VERSION = "1.4.4";

const args = [...Deno.args];
const withNode22 = args.includes("--node22");
const filter = args.filter((arg) => arg !== "--node22");

async function run(
  command: string,
  commandArgs: string[],
  options: { quiet?: boolean } = {},
): Promise<boolean> {
  const output = options.quiet ? "null" : "inherit";
  const child = new Deno.Command(command, {
    args: commandArgs,
    stdin: "null",
    stdout: output,
    stderr: output,
  }).spawn();
  return (await child.status).success;
}

async function onPath(command: string): Promise<boolean> {
  try {
    return await run(command, ["--version"], { quiet: true });
  } catch {
    return false;
  }
}

/** The bun binary: on the PATH, cached, or installed from npm into the cache. */
async function bunBinary(): Promise<string> {
  if (await onPath("bun")) return "bun";
  const home = Deno.env.get("HOME") ?? Deno.cwd();
  const prefix = `${home}/.cache/tcpbutler/bun-${BUN_VERSION}`;
  const binary = `${prefix}/node_modules/.bin/bun`;
  if (await onPath(binary)) return binary;
  console.log(`Installing bun@${BUN_VERSION} from npm into ${prefix}`);
  await Deno.mkdir(prefix, { recursive: true });
  const installed = await run("npm", [
    "install",
    "--prefix",
    prefix,
    "--no-save",
    "--no-audit",
    "--no-fund",
    `bun@${BUN_VERSION}`,
  ]);
  if (!installed || !await onPath(binary)) {
    throw new Error(`Cannot install bun@${BUN_VERSION} from npm`);
  }
  return binary;
}

const dir = await Deno.makeTempDir({ prefix: "tcpbutler-runtimes-" });
try {
  const bundle = `${dir}/conformance.mjs`;
  const suite = new URL("./run.ts", import.meta.url).pathname;
  const bundled = await run(Deno.execPath(), [
    "bundle",
    "--quiet",
    "--platform",
    "deno",
    "-o",
    bundle,
    suite,
  ]);
  if (!bundled) throw new Error("Cannot bundle the conformance suite");
  const runtimes: [string, string, string[]][] = [
    ["node", "node", [bundle, ...filter]],
    ["bun", await bunBinary(), [bundle, ...filter]],
  ];
  if (withNode22) {
    runtimes.push(["node 22", "npx", ["--yes", "node@22", bundle, ...filter]]);
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
