/**
 * serveWorkers(): N Web Workers, each with its own SO_REUSEPORT listener,
 * served and stopped as one server, over real loopback sockets.
 *
 * @module
 */

import assert from "node:assert/strict";
import { dial } from "../client/dial.ts";
import {
  serveWorkers,
  type WorkerServerEventDetail,
} from "../server/workers.ts";
import { dec, enc, EventLog, HOST } from "./_loopback.ts";
import { startProcess } from "./_process.ts";

const MODULE = new URL("./_worker_handler.ts", import.meta.url);

Deno.test("serveWorkers() spreads connections over its workers, drains them all on shutdown, and restarts a crashed one", async () => {
  const server = await serveWorkers({
    module: MODULE,
    workers: 2,
    hostname: HOST,
    port: 0,
    restart: { initial: 10, max: 100 },
  });
  try {
    using log = new EventLog<WorkerServerEventDetail>(server, [
      "crash",
      "restart",
    ]);
    assert.ok(server.port > 0);
    // 16 connections: the kernel spreads them over both listeners.
    const client = await dial(`${HOST}:${server.port}`, { sessions: 16 });
    await new EventLog(client, ["ready"]).until(() =>
      client.stats().sessions.ready === 16
    );
    const ids = new Set<string>();
    for (const session of client.sessions) {
      ids.add(dec(await client.request(enc("id"), { session })));
    }
    assert.equal(ids.size, 2, "both workers took connections");
    let stats = await server.stats();
    assert.equal(stats.workers, 2);
    assert.equal(stats.sessions, 16);
    assert.ok(stats.accepted >= 16);
    await client.close();

    // A worker that throws an uncaught error is logged and started again.
    const crasher = await dial(`${HOST}:${server.port}`, {
      heartbeat: false,
      reconnect: { maxAttempts: 1 },
    });
    await crasher.request(enc("crash"));
    const crash = await log.next("crash");
    assert.match(
      String((crash.detail as { error: unknown }).error),
      /crash on purpose/,
    );
    await log.next("restart");
    stats = await server.stats();
    assert.equal(stats.workers, 2);
    assert.equal(stats.restarts, 1);
    await crasher.close({ timeout: 0 });

    // Shutdown drains both workers: requests in flight complete.
    const busy = await dial(`${HOST}:${server.port}`, { sessions: 8 });
    await new EventLog(busy, ["ready"]).until(() =>
      busy.stats().sessions.ready === 8
    );
    const slow = busy.sessions.map((session) =>
      busy.request(enc("slow"), { session })
    );
    const inFlight = new Set<string>();
    const report = await server.shutdown({ timeout: 5000 });
    for (const reply of await Promise.all(slow)) inFlight.add(dec(reply));
    assert.equal(report.forced, 0);
    assert.equal(report.sessions, 8);
    assert.equal(report.drained, 8);
    assert.ok(inFlight.size >= 1);
    await busy.close();
  } finally {
    await server.shutdown({ timeout: 1000 });
  }
});

Deno.test("serveWorkers() rejects a module without a handler, and a bad worker count", async () => {
  await assert.rejects(
    serveWorkers({
      module: new URL("./_loopback.ts", import.meta.url),
      workers: 1,
      hostname: HOST,
      port: 0,
    }),
    /exports no handler function/,
  );
  await assert.rejects(
    serveWorkers({ module: MODULE, workers: 0, hostname: HOST, port: 0 }),
    RangeError,
  );
});

Deno.test("examples/echo_server.ts --workers 2 (deno task serve --workers 2) serves from two workers and shuts down on SIGTERM", async () => {
  await using child = await startProcess([
    "deno",
    "run",
    "--allow-net",
    "--allow-read",
    new URL("../examples/echo_server.ts", import.meta.url).pathname,
    "--port",
    "0",
    "--workers",
    "2",
    "--log-level",
    "error",
  ]);
  const port = Number(child.match.groups!.port);
  await using client = await dial(`${HOST}:${port}`, { sessions: 4 });
  assert.equal(dec(await client.request(enc("hello"))), "hello");
  await client.close();
  const status = await child.kill("SIGTERM");
  assert.equal(status.code, 0);
  const report = child.stdoutLines.find((line) => line.startsWith("shutdown "));
  assert.ok(report !== undefined, child.stderrLines.join("\n"));
  assert.equal(JSON.parse(report.slice(9)).forced, 0);
});
