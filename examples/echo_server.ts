// deno-lint-ignore-file no-console -- a command-line program prints its results
/**
 * An echo server on the default protocol: `deno task serve`.
 *
 * Flags: `--hostname` (127.0.0.1), `--port` (9000), `--cert`/`--key` (TLS,
 * PEM files), `--ca` (PEM file: require client certificates, mTLS),
 * `--log-format text|json`, `--log-level debug|info|warn|error`,
 * `--shutdown-timeout` (ms), `--proxy-protocol` (expect a PROXY v1/v2
 * header on each connection), `--leave-for` (ms of failing the proxy's
 * health checks before shutting down), `--workers N` (N worker threads on
 * one port, `SO_REUSEPORT`; 0 = one per core). SIGINT or SIGTERM shuts it
 * down gracefully.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  consoleLogger,
  type LogLevel,
  serve,
  serveMutualTls,
  type Server,
  serveWorkers,
  type WorkerServer,
} from "../mod.ts";
import { handler } from "./echo_handler.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    hostname: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "9000" },
    cert: { type: "string" },
    key: { type: "string" },
    ca: { type: "string" },
    "log-format": { type: "string", default: "text" },
    "log-level": { type: "string", default: "info" },
    "shutdown-timeout": { type: "string", default: "10000" },
    "proxy-protocol": { type: "boolean", default: false },
    "leave-for": { type: "string", default: "0" },
    workers: { type: "string" },
  },
});

const logger = consoleLogger({
  name: "echo-server",
  format: values["log-format"] === "json" ? "json" : "text",
  level: values["log-level"] as LogLevel,
});

const base = {
  hostname: values.hostname,
  port: Number(values.port),
  logger,
  handler,
  proxyProtocol: values["proxy-protocol"],
};

let server: Server<Uint8Array> | WorkerServer;
if (values.workers !== undefined) {
  const workers = Number(values.workers);
  server = await serveWorkers({
    module: new URL("./echo_handler.ts", import.meta.url),
    hostname: base.hostname,
    port: base.port,
    logger,
    serveOptions: { proxyProtocol: base.proxyProtocol },
    ...(workers === 0 ? {} : { workers }),
  });
} else if (values.cert !== undefined && values.key !== undefined) {
  const tls = {
    cert: await Deno.readTextFile(values.cert),
    key: await Deno.readTextFile(values.key),
  };
  server = values.ca !== undefined
    ? await serveMutualTls({
      ...base,
      tls: { ...tls, ca: await Deno.readTextFile(values.ca) },
    })
    : serve({ ...base, tls });
} else {
  server = serve(base);
}

const addr = server.addr as Deno.NetAddr;
// A plain line that scripts and tests wait for.
console.log(`listening ${addr.hostname}:${addr.port}`);
logger.info("Echo server listening", {
  hostname: addr.hostname,
  port: addr.port,
  tls: values.cert !== undefined,
  mtls: values.ca !== undefined,
  workers: values.workers === undefined
    ? 1
    : (await (server as WorkerServer).stats()).workers,
});

const stop = () => {
  logger.info("Signal received, shutting down", {});
  server.shutdown({
    timeout: Number(values["shutdown-timeout"]),
    leaveFor: Number(values["leave-for"]),
  });
};
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);

const report = await server.finished;
Deno.removeSignalListener("SIGINT", stop);
Deno.removeSignalListener("SIGTERM", stop);
console.log(`shutdown ${JSON.stringify(report)}`);
