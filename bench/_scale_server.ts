// deno-lint-ignore-file no-console -- a benchmark's child prints its ports
/**
 * The server side of `bench/scale.ts`, run as a child process. Prints
 * `ports P1,P2,…` once listening; SIGTERM stops it.
 *
 * - `--workers N`: `serveWorkers()` with N workers on one port
 *   (`_spin_handler.ts`).
 * - `--servers N`: N plain servers in this process, each on its own port,
 *   each replying with its port (2 bytes).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { serve, type Server, serveWorkers } from "../mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { workers: { type: "string" }, servers: { type: "string" } },
});

const stops: (() => Promise<unknown>)[] = [];
if (values.workers !== undefined) {
  const server = await serveWorkers({
    module: new URL("./_spin_handler.ts", import.meta.url),
    workers: Number(values.workers),
    hostname: "127.0.0.1",
    port: 0,
  });
  stops.push(() => server.shutdown({ timeout: 1000 }));
  console.log(`ports ${server.port}`);
} else {
  const ports: number[] = [];
  for (let i = 0; i < Number(values.servers ?? 1); i++) {
    const server: Server<Uint8Array> = serve({
      hostname: "127.0.0.1",
      port: 0,
      maxConnections: 20_000,
      handler: (): Uint8Array =>
        Uint8Array.of(server.port >> 8, server.port & 0xff),
    });
    ports.push(server.port);
    stops.push(() => server.shutdown({ timeout: 1000 }));
  }
  console.log(`ports ${ports.join(",")}`);
}
const stopped = Promise.withResolvers<void>();
Deno.addSignalListener("SIGTERM", () => stopped.resolve());
await stopped.promise;
await Promise.all(stops.map((stop) => stop()));
Deno.exit(0);
