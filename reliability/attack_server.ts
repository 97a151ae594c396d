// deno-lint-ignore-file no-console -- a command-line program prints its results
/**
 * The server the attack scenarios of `deno task reliability` hit: `serve()`
 * on its defaults, in a process of its own so that its RSS is its own. Its
 * handler echoes, except a request whose payload starts with "STALL": that
 * one never returns (until its session closes), for the pipelining attack.
 * Prints `listening HOST:PORT`, then a `stats {json}` line every 200 ms.
 *
 * Flags: `--port` (0), `--memory-budget BYTES`, `--idle-timeout MS`,
 * `--cert`/`--key` (PEM files: serve TLS).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { serve } from "../mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    port: { type: "string", default: "0" },
    "memory-budget": { type: "string" },
    "idle-timeout": { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
  },
});

const STALL = new TextEncoder().encode("STALL");

function stalls(payload: Uint8Array): boolean {
  if (payload.length < STALL.length) return false;
  for (let i = 0; i < STALL.length; i++) {
    if (payload[i] !== STALL[i]) return false;
  }
  return true;
}

const server = serve({
  hostname: "127.0.0.1",
  port: Number(values.port),
  ...(values.cert === undefined || values.key === undefined ? {} : {
    tls: {
      cert: Deno.readTextFileSync(values.cert),
      key: Deno.readTextFileSync(values.key),
    },
  }),
  ...(values["memory-budget"] === undefined
    ? {}
    : { memoryBudget: Number(values["memory-budget"]) }),
  ...(values["idle-timeout"] === undefined
    ? {}
    : { idleTimeout: Number(values["idle-timeout"]) }),
  handler: (payload, { signal }) => {
    if (!stalls(payload)) return payload;
    return new Promise<Uint8Array>((resolve) =>
      signal.addEventListener("abort", () => resolve(payload), { once: true })
    );
  },
});
console.log(`listening 127.0.0.1:${server.port}`);
const timer = setInterval(
  () => console.log(`stats ${JSON.stringify(server.stats())}`),
  200,
);
const stop = () => {
  clearInterval(timer);
  server.close();
};
Deno.addSignalListener("SIGTERM", stop);
await server.finished;
Deno.removeSignalListener("SIGTERM", stop);
