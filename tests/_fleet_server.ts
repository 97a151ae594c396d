// deno-lint-ignore-file no-console -- a test fixture reports on stdout
/**
 * Test fixture: an echo server on the default protocol for the rolling
 * restart tests, run as a child process. Prints `listening HOST:PORT` once
 * up, `check` for each session of the proxy's own (a PROXY header without
 * a client address: a health check that was answered), and `stats {…}` and
 * `shutdown {report}` at the end. SIGTERM shuts it down gracefully, with the leaving
 * phase first when `--leave-for` is given.
 *
 * Flags: `--port` (0), `--proxy` (expect PROXY headers), `--leave-for` (ms),
 * `--shutdown-timeout` (ms, 10000), `--handler-ms` (work per request, 1),
 * `--activated` (serve the listening socket inherited as fd 3, socket
 * activation's way; needs `--allow-env`).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { serve } from "../server/serve.ts";
import { delay } from "../backoff.ts";
import { systemdListeners } from "../transport/socket_activation.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    port: { type: "string", default: "0" },
    proxy: { type: "boolean", default: false },
    "leave-for": { type: "string", default: "0" },
    "shutdown-timeout": { type: "string", default: "10000" },
    "handler-ms": { type: "string", default: "1" },
    activated: { type: "boolean", default: false },
  },
});

const handlerMs = Number(values["handler-ms"]);
const where = values.activated
  ? { listener: (await systemdListeners())[0]! }
  : { hostname: "127.0.0.1", port: Number(values.port) };
const server = serve({
  ...where,
  proxyProtocol: values.proxy,
  onConnect: (session) => {
    if (session.proxy !== undefined && session.proxy.source === undefined) {
      console.log("check");
    }
  },
  handler: async (payload) => {
    if (handlerMs > 0) await delay(handlerMs);
    return payload;
  },
});
console.log(`listening 127.0.0.1:${server.port}`);

const stop = () => {
  server.shutdown({
    timeout: Number(values["shutdown-timeout"]),
    leaveFor: Number(values["leave-for"]),
  });
};
Deno.addSignalListener("SIGTERM", stop);
const report = await server.finished;
Deno.removeSignalListener("SIGTERM", stop);
console.log(`stats ${JSON.stringify(server.stats())}`);
console.log(`shutdown ${JSON.stringify(report)}`);
