// deno-lint-ignore-file no-console -- a test fixture reports on stdout
/**
 * Test fixture: an echo server with `serve({ tls })`, run as a child process
 * so that a test can count the descriptors of the server alone
 * (`/proc/<pid>/fd`), whatever else the test process has open. Prints
 * `listening HOST:PORT` once up; SIGTERM shuts it down and it prints
 * `stats {…}` before exiting.
 *
 * Flags: `--cert` and `--key` (PEM files, required), `--handshake-timeout`,
 * `--idle-timeout` and `--max-connections` (the server's defaults when
 * omitted).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { serve } from "../server/serve.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    cert: { type: "string" },
    key: { type: "string" },
    "handshake-timeout": { type: "string" },
    "idle-timeout": { type: "string" },
    "max-connections": { type: "string" },
  },
});

if (values.cert === undefined || values.key === undefined) {
  throw new TypeError("Cannot start: --cert and --key are required");
}
const limits: {
  handshakeTimeout?: number;
  idleTimeout?: number;
  maxConnections?: number;
} = {};
if (values["handshake-timeout"] !== undefined) {
  limits.handshakeTimeout = Number(values["handshake-timeout"]);
}
if (values["idle-timeout"] !== undefined) {
  limits.idleTimeout = Number(values["idle-timeout"]);
}
if (values["max-connections"] !== undefined) {
  limits.maxConnections = Number(values["max-connections"]);
}

const server = serve({
  hostname: "127.0.0.1",
  port: 0,
  tls: {
    cert: await Deno.readTextFile(values.cert),
    key: await Deno.readTextFile(values.key),
  },
  ...limits,
  handler: (payload) => payload,
});
console.log(`listening 127.0.0.1:${server.port}`);

const stop = () => server.shutdown({ timeout: 1000 });
Deno.addSignalListener("SIGTERM", stop);
await server.finished;
Deno.removeSignalListener("SIGTERM", stop);
console.log(`stats ${JSON.stringify(server.stats())}`);
