/**
 * tcpbutler's echo server for the benchmark: `serve()` with the default
 * protocol (`--variant default`, its own 9-byte header) or with the "plain"
 * codec (`--variant plain`: the baselines' wire format, a 4-byte length then
 * u32 id + payload, the id as correlation id).
 *
 * Run: `deno run -A bench/tcpbutler_server.ts --variant default|plain` —
 * prints `LISTENING <port>`, exits when stdin closes.
 *
 * @module
 */

import { serve } from "../mod.ts";
import { lengthPrefixed } from "../framing/mod.ts";
import { readU32, stdinClosed } from "./_shared.ts";
import type { BenchServer } from "./raw_server.ts";

/** The plain codec: 4-byte big-endian length, body = u32 id + payload. */
export function plainCodec(): ReturnType<typeof lengthPrefixed> {
  return lengthPrefixed({ correlationId: (f: Uint8Array) => readU32(f, 0) });
}

/** Starts tcpbutler's echo server on an ephemeral port. */
export function startTcpbutlerServer(
  variant: string,
  hostname = "127.0.0.1",
): BenchServer {
  const server = variant === "plain"
    ? serve({
      hostname,
      port: 0,
      codec: plainCodec(),
      handler: (frame: Uint8Array) => frame,
    })
    : serve({ hostname, port: 0, handler: (payload: Uint8Array) => payload });
  return {
    port: (server.addr as Deno.NetAddr).port,
    async close() {
      await server.shutdown();
    },
  };
}

if (import.meta.main) {
  const i = Deno.args.indexOf("--variant");
  const variant = i >= 0 ? Deno.args[i + 1]! : "default";
  const server = startTcpbutlerServer(variant);
  // deno-lint-ignore no-console
  console.log(`LISTENING ${server.port}`);
  await stdinClosed();
  await server.close();
  Deno.exit(0);
}
