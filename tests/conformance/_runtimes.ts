/**
 * What running the library's TypeScript on Node and Bun takes, shared by
 * `deno task test:runtimes` and the benchmark's `--runtime` option: bundling
 * an entry point into one `.mjs` file (Node 20 cannot run TypeScript), and a
 * Bun binary (`bun@1.4.4` from npm, which ships it, into
 * `~/.cache/tcpbutler/` when `bun` is not on the PATH).
 *
 * @module
 */

/** The Bun version installed when none is on the PATH. */
export const BUN_VERSION = "1.4.4";

/**
 * Runs a command to its end.
 *
 * @param command The program.
 * @param commandArgs Its arguments.
 * @param options `quiet` discards its output (otherwise inherited).
 * @returns Whether it exited with status 0.
 */
export async function run(
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

/**
 * The bun binary: on the PATH, cached, or installed from npm into the cache.
 *
 * @returns The command to run Bun with.
 * @throws {Error} When npm cannot install it.
 */
export async function bunBinary(): Promise<string> {
  if (await onPath("bun")) return "bun";
  const home = Deno.env.get("HOME") ?? Deno.cwd();
  const prefix = `${home}/.cache/tcpbutler/bun-${BUN_VERSION}`;
  const binary = `${prefix}/node_modules/.bin/bun`;
  if (await onPath(binary)) return binary;
  // deno-lint-ignore no-console -- says why the first run takes a while
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

/**
 * Bundles `entry` and what it imports into one ES module that Node and Bun
 * run (`node:` imports stay imports).
 *
 * @param entry Path of the TypeScript entry point.
 * @param out Path of the `.mjs` file to write.
 * @throws {Error} When `deno bundle` fails.
 */
export async function bundle(entry: string, out: string): Promise<void> {
  const bundled = await run(Deno.execPath(), [
    "bundle",
    "--quiet",
    "--platform",
    "deno",
    "-o",
    out,
    entry,
  ]);
  if (!bundled) throw new Error(`Cannot bundle ${entry}`);
}
