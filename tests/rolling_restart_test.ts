/**
 * Rolling restarts with nothing lost: three server processes restarted one
 * at a time (SIGTERM, graceful shutdown, started again on the same port)
 * under continuous load, from a client that knows all three, and from
 * clients behind HAProxy (`send-proxy-v2`, health checks in the default
 * protocol) where each server first fails its checks (`leaveFor`), then
 * drains. Also the health check itself: a PROXY v2 `LOCAL` connection gets
 * its ping answered, and is closed unanswered while the server leaves.
 *
 * @module
 */

import assert from "node:assert/strict";
import { dial } from "../client/dial.ts";
import type { Client } from "../client/client.ts";
import { encodeProxyHeaderV2 } from "../transport/proxy_protocol.ts";
import { ConnectionError } from "../errors.ts";
import { HOST, pollUntil, serveLoopback } from "./_loopback.ts";
import { type LoadReport, runLoad, violations } from "./_load.ts";
import { type ChildProcess, startProcess } from "./_process.ts";
import { haproxyTestName, hasHaproxy, startHaproxy } from "./_haproxy.ts";

const FIXTURE = new URL("./_fleet_server.ts", import.meta.url).pathname;

/** A ping frame of the default protocol (id 1), and its pong. */
const PING = Uint8Array.of(0, 0, 0, 5, 5, 0, 0, 0, 1);
const PONG = Uint8Array.of(0, 0, 0, 5, 6, 0, 0, 0, 1);

/** Sends `bytes`, reads what comes back until 9 bytes or the end. */
async function exchange(port: number, bytes: Uint8Array): Promise<number[]> {
  using conn = await Deno.connect({ hostname: HOST, port });
  await conn.write(bytes);
  const got: number[] = [];
  const buffer = new Uint8Array(64);
  while (got.length < 9) {
    const n = await conn.read(buffer).catch(() => null);
    if (n === null) break;
    got.push(...buffer.subarray(0, n));
  }
  return got;
}

Deno.test("Server answers a health check's ping behind a PROXY v2 LOCAL header, and fails it while leaving (shutdown({ leaveFor }))", async () => {
  const server = serveLoopback({ proxyProtocol: true, handler: (p) => p });
  const local = encodeProxyHeaderV2(undefined, undefined, { local: true });
  const check = new Uint8Array([...local, ...PING]);
  assert.deepEqual(await exchange(server.port, check), [...PONG]);
  const finished = server.shutdown({ leaveFor: 60_000, timeout: 1000 });
  assert.equal(server.isLeaving, true);
  // The check gets nothing: the connection is closed unanswered.
  assert.deepEqual(await exchange(server.port, check), []);
  assert.equal(server.stats().healthChecksFailed, 1);
  // A client's connection is still served.
  const proxied = encodeProxyHeaderV2(
    { transport: "tcp", hostname: "192.0.2.1", port: 40000 },
    { transport: "tcp", hostname: HOST, port: server.port },
  );
  assert.deepEqual(
    await exchange(server.port, new Uint8Array([...proxied, ...PING])),
    [...PONG],
  );
  // close() cuts the leaving phase short.
  await pollUntil(() => server.sessions.length === 0);
  await server.close();
  const report = await finished;
  assert.equal(report.forced, 0);
  assert.equal(server.isLeaving, false);
});

Deno.test("Server.shutdown() rejects a bad leaveFor with RangeError and keeps serving", async () => {
  await using server = serveLoopback({ handler: (p) => p });
  await assert.rejects(server.shutdown({ leaveFor: -1 }), RangeError);
  assert.equal(server.isClosed, false);
});

/** Runs load on `client` until stopped; counts successes as they come. */
function steadyLoad(client: Client<Uint8Array>): {
  stop(): Promise<LoadReport>;
  ok(): number;
} {
  const controller = new AbortController();
  let ok = 0;
  const load = runLoad(client, {
    concurrency: 8,
    timeout: 5000,
    duration: 60_000,
    signal: controller.signal,
    onSettle: (report) => {
      ok = report.ok;
    },
  });
  return {
    ok: () => ok,
    stop: () => {
      controller.abort();
      return load;
    },
  };
}

function serverCommand(port: number, extra: string[] = []): string[] {
  return [
    "deno",
    "run",
    "--allow-net=127.0.0.1",
    FIXTURE,
    "--port",
    String(port),
    ...extra,
  ];
}

/** Starts the fixture on `port`; a port taken meanwhile is tried again. */
async function startOn(port: number, extra: string[]): Promise<ChildProcess> {
  for (let attempt = 1;; attempt++) {
    try {
      return await startProcess(serverCommand(port, extra));
    } catch (error) {
      if (attempt >= 3) throw error;
    }
  }
}

/** The report the fixture printed when it shut down. */
function shutdownReport(child: ChildProcess): { forced: number } {
  const line = child.stdoutLines.find((l) => l.startsWith("shutdown "));
  assert.ok(line !== undefined, "the server printed its shutdown report");
  return JSON.parse(line.slice("shutdown ".length));
}

Deno.test("Rolling restart: 3 server processes restarted one at a time under load lose no request of a client that knows all three", async () => {
  const children: ChildProcess[] = [];
  try {
    for (let i = 0; i < 3; i++) children.push(await startOn(0, []));
    const ports = children.map((c) => Number(c.match.groups!.port));
    await using client = await dial(ports.map((port) => `${HOST}:${port}`), {
      sessions: 2,
      requestTimeout: 5000,
      reconnect: { initial: 20, max: 200 },
    });
    const load = steadyLoad(client);
    let report: LoadReport | undefined;
    try {
      await pollUntil(() => load.ok() > 100, { timeout: 10_000 });
      for (let i = 0; i < 3; i++) {
        const port = ports[i]!;
        const back = readyAgain(client, port, 2);
        await children[i]!.kill("SIGTERM");
        assert.equal(shutdownReport(children[i]!).forced, 0);
        children[i] = await startOn(port, []);
        await back;
        const okBefore = load.ok();
        await pollUntil(() => load.ok() > okBefore + 100, { timeout: 10_000 });
      }
    } finally {
      report = await load.stop();
    }
    assert.deepEqual(violations(report), []);
    assert.equal(report.ok, report.requests, JSON.stringify(report.errors));
    assert.ok(report.requests > 400);
  } finally {
    await Promise.all(children.map((c) => c.kill("SIGKILL")));
  }
});

/** Resolves once `sessions` sessions to `port` became ready, within 10 s. */
function readyAgain(
  client: Client<Uint8Array>,
  port: number,
  sessions: number,
): Promise<void> {
  const { promise, resolve, reject } = Promise.withResolvers<void>();
  let seen = 0;
  const onReady = (event: Event) => {
    const { endpoint } = (event as CustomEvent<{ endpoint: string }>).detail;
    if (endpoint === `${HOST}:${port}` && ++seen === sessions) done();
  };
  const timer = setTimeout(() => {
    done();
    reject(new Error(`No ${sessions} sessions to ${port} again within 10 s`));
  }, 10_000);
  const done = () => {
    clearTimeout(timer);
    client.removeEventListener("ready", onReady);
    resolve();
  };
  client.addEventListener("ready", onReady);
  return promise;
}

/** Health checks the fixture answered so far. */
function checks(child: ChildProcess): number {
  return child.stdoutLines.filter((line) => line === "check").length;
}

Deno.test({
  name: haproxyTestName(
    "Rolling restart behind HAProxy (send-proxy-v2, health checks in the default protocol): each server leaves, then drains; no request and no new connection is lost",
  ),
  ignore: !hasHaproxy(),
  async fn() {
    const inter = 200;
    const fall = 2;
    const rise = 2;
    // fall × inter for the checks to fail, one inter more of margin.
    const leave = [
      "--proxy",
      "--leave-for",
      Deno.env.get("LEAVE") ?? String((fall + 2) * inter),
    ];
    const children: ChildProcess[] = [];
    try {
      for (let i = 0; i < 3; i++) children.push(await startOn(0, leave));
      const ports = children.map((c) => Number(c.match.groups!.port));
      await using haproxy = await startHaproxy({
        backendPorts: ports,
        sendProxy: "v2",
        check: { inter, fall, rise },
      });
      // Every backend answered its checks: HAProxy has them up.
      await pollUntil(() => children.every((c) => checks(c) >= rise), {
        timeout: 10_000,
      });
      await using client = await dial(haproxy.address, {
        sessions: 6,
        requestTimeout: 5000,
        reconnect: { initial: 20, max: 200 },
      });
      const load = steadyLoad(client);
      // New connections all along: one request on a fresh client each.
      const stopChurn = new AbortController();
      const churn = Promise.all(
        Array.from(
          { length: 4 },
          () => connectionChurn(haproxy.address, stopChurn.signal),
        ),
      ).then((all) => ({
        ok: all.reduce((n, c) => n + c.ok, 0),
        failed: all.flatMap((c) => c.failed),
      }));
      let report: LoadReport | undefined;
      let churned: { ok: number; failed: string[] } | undefined;
      try {
        await pollUntil(() => load.ok() > 100, { timeout: 10_000 });
        for (let i = 0; i < 3; i++) {
          const port = ports[i]!;
          await children[i]!.kill("SIGTERM");
          const stats = children[i]!.stdoutLines.find((l) =>
            l.startsWith("stats ")
          );
          assert.ok(
            JSON.parse(stats!.slice(6)).healthChecksFailed >= fall,
            "the leaving server failed HAProxy's checks",
          );
          assert.equal(shutdownReport(children[i]!).forced, 0);
          children[i] = await startOn(port, leave);
          // HAProxy marks it up after `rise` answered checks.
          await pollUntil(() => checks(children[i]!) >= rise + 1, {
            timeout: 10_000,
          });
          const okBefore = load.ok();
          await pollUntil(() => load.ok() > okBefore + 100, {
            timeout: 10_000,
          });
        }
      } finally {
        report = await load.stop();
        stopChurn.abort();
        churned = await churn;
      }
      assert.deepEqual(violations(report), []);
      assert.equal(report.ok, report.requests, JSON.stringify(report.errors));
      assert.ok(report.requests > 400);
      assert.deepEqual(churned.failed, []);
      assert.ok(churned.ok > 10, `${churned.ok} fresh connections`);
    } finally {
      await Promise.all(children.map((c) => c.kill("SIGKILL")));
    }
  },
});

/**
 * Opens a fresh client through `address` again and again until `signal`
 * aborts: each connects once (no retry), makes one request, and closes.
 */
async function connectionChurn(
  address: string,
  signal: AbortSignal,
): Promise<{ ok: number; failed: string[] }> {
  let ok = 0;
  const failed: string[] = [];
  while (!signal.aborted && ok + failed.length < 1000) {
    try {
      await using client = await dial(address, {
        heartbeat: false,
        connectTimeout: 5000,
        reconnect: { maxAttempts: 1 },
      });
      await client.request(new Uint8Array([1]), { waitForSession: false });
      ok++;
    } catch (error) {
      failed.push(
        error instanceof ConnectionError
          ? `${error.message} (${String(error.cause)})`
          : String(error),
      );
    }
  }
  return { ok, failed };
}
