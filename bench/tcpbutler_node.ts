/**
 * tcpbutler's echo server and load generator on Node and Bun, for
 * `deno task bench --runtime node|bun`, which bundles this file into one
 * `.mjs` file with `deno bundle` (Node 20 cannot run TypeScript). The same
 * server (default protocol or the plain codec) and the same request loops
 * as `tcpbutler_server.ts` and `tcpbutler_client.ts`, with the runtime's
 * `node:` APIs where those use `Deno.*`. The server listens with `listen()`:
 * `serve({ port })` cannot bind by itself on Node and Bun.
 *
 * Usage: `node tcpbutler_node.mjs server --variant default|plain` prints
 * `LISTENING <port>` and exits when stdin closes; `node tcpbutler_node.mjs
 * client [flags]` takes `tcpbutler_client.ts`'s flags (`--inproc` runs the
 * server in the same process) and prints one `RESULT {json}` line.
 *
 * @module
 */

import process from "node:process";

import { dial, listen, serve } from "../mod.ts";
import { parseClientArgs, printResult } from "./_shared.ts";
import { Recorder, stdinClosed } from "./_node_shared.mjs";
import type { BenchServer } from "./raw_server.ts";
import { startLoops } from "./tcpbutler_client.ts";
import { plainCodec } from "./tcpbutler_server.ts";

/**
 * Starts tcpbutler's echo server on an ephemeral loopback port.
 *
 * @param variant `plain` for the baselines' wire format, else the default
 *   protocol.
 * @param hostname Where to listen.
 * @returns The running server.
 */
export async function startNodeTcpbutlerServer(
  variant: string,
  hostname = "127.0.0.1",
): Promise<BenchServer> {
  const listener = await listen({ hostname, port: 0 });
  const server = variant === "plain"
    ? serve({
      listener,
      codec: plainCodec(),
      handler: (frame: Uint8Array) => frame,
    })
    : serve({ listener, handler: (payload: Uint8Array) => payload });
  return {
    port: server.port,
    async close() {
      await server.shutdown();
    },
  };
}

async function runServer(args: string[]): Promise<void> {
  const i = args.indexOf("--variant");
  const server = await startNodeTcpbutlerServer(
    i >= 0 ? args[i + 1]! : "default",
  );
  // deno-lint-ignore no-console
  console.log(`LISTENING ${server.port}`);
  await stdinClosed();
  await server.close();
}

async function runClient(args: string[]): Promise<void> {
  const opts = parseClientArgs(args);
  // The orchestrator keeps stdin open while it waits for the result: if it
  // dies, stop at once.
  stdinClosed().then(() => process.exit(2));
  const server = opts.inproc
    ? await startNodeTcpbutlerServer(
      opts.variant === "pipeline" ? "default" : opts.variant,
      opts.hostname,
    )
    : undefined;
  if (server) opts.serverPid = 0;
  const address = { hostname: opts.hostname, port: server?.port ?? opts.port };
  const client = opts.variant === "plain"
    ? await dial(address, plainCodec(), { sessions: opts.sessions })
    : await dial(address, { sessions: opts.sessions });
  const rec = new Recorder(opts);
  const loops = startLoops(client, rec, opts);
  await rec.run();
  await Promise.all(loops);
  const result = rec.result();
  await client.close();
  await server?.close();
  printResult(result);
}

const [role, ...rest] = process.argv.slice(2);
if (role === "server") await runServer(rest);
else if (role === "client") await runClient(rest);
else throw new TypeError(`Unknown role "${role}": expected server or client`);
process.exit(0);
