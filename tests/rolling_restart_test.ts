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
 * aborts: each makes one request and closes. With `attempts` 1 (behind a
 * proxy that only routes to servers that stay) it connects once and the
 * request must find its session ready; with more, it may be drained during
 * or right after its handshake by a server that starts to stop (on a shared
 * socket nothing routes around it) and connect again, as a user's client on
 * default settings does.
 */
async function connectionChurn(
  address: string,
  signal: AbortSignal,
  attempts = 1,
): Promise<{ ok: number; failed: string[] }> {
  let ok = 0;
  const failed: string[] = [];
  while (!signal.aborted && ok + failed.length < 1000) {
    try {
      await using client = await dial(address, {
        heartbeat: false,
        connectTimeout: 5000,
        reconnect: { maxAttempts: attempts, initial: 10, max: 50 },
      });
      await client.request(new Uint8Array([1]), {
        waitForSession: attempts > 1,
      });
      ok++;
    } catch (error) {
      failed.push(causes(error));
    }
  }
  return { ok, failed };
}

/**
 * A supervisor, as systemd's socket units or a process manager would be: it
 * binds one listening socket on 127.0.0.1 port 0, keeps it open for its whole
 * life, and runs two copies of argv[1:] that inherit it as fd 3 (LISTEN_FDS,
 * LISTEN_PID). SIGUSR1 / SIGUSR2 restart copy 0 / 1 (SIGTERM, wait, start
 * again); SIGTERM stops both. Copies die with the supervisor.
 */
const PYTHON_SUPERVISOR = `
import ctypes, os, signal, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen(512)
port = s.getsockname()[1]
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
    s.close()
os.set_inheritable(3, True)
watched = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM}
signal.pthread_sigmask(signal.SIG_BLOCK, watched)
def spawn():
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
        env.pop("LISTEN_FDNAMES", None)
        os.execve(sys.argv[1], sys.argv[1:], env)
    return pid
copies = [spawn(), spawn()]
print("supervisor 127.0.0.1:%d" % port, flush=True)
while True:
    sig = signal.sigwait(watched)
    if sig == signal.SIGTERM:
        for pid in copies:
            os.kill(pid, signal.SIGTERM)
        for pid in copies:
            os.waitpid(pid, 0)
        sys.exit(0)
    i = 0 if sig == signal.SIGUSR1 else 1
    os.kill(copies[i], signal.SIGTERM)
    os.waitpid(copies[i], 0)
    copies[i] = spawn()
    print("restarted %d" % i, flush=True)
`;

const hasPython = await new Deno.Command("python3", {
  args: ["-c", "pass"],
  stdin: "null",
  stdout: "null",
  stderr: "null",
}).output().then((out) => out.success, () => false);

/** How many copies of the fixture have printed their ready line so far. */
function started(supervisor: ChildProcess): number {
  return supervisor.stdoutLines.filter((l) => l.startsWith("listening "))
    .length;
}

Deno.test({
  name:
    "Rolling restart on one host: 2 server processes sharing one inherited listening socket (socket activation), restarted one at a time under load and connection churn, lose no request and no new connection" +
    (hasPython ? "" : " (ignored: python3 not found)"),
  ignore: !hasPython,
  async fn() {
    await using supervisor = await startProcess([
      "python3",
      "-c",
      PYTHON_SUPERVISOR,
      Deno.execPath(),
      "run",
      "--allow-net=127.0.0.1",
      "--allow-env=LISTEN_PID,LISTEN_FDS,LISTEN_FDNAMES",
      FIXTURE,
      "--activated",
    ], { readyLine: /^supervisor (?<address>127\.0\.0\.1:\d+)$/ });
    const address = supervisor.match.groups!.address!;
    await pollUntil(() => started(supervisor) === 2, { timeout: 10_000 });
    await using client = await dial(address, {
      sessions: 4,
      requestTimeout: 5000,
      reconnect: { initial: 20, max: 200 },
    });
    const load = steadyLoad(client);
    const stopChurn = new AbortController();
    const churn = Promise.all(
      Array.from(
        { length: 4 },
        () => connectionChurn(address, stopChurn.signal, 3),
      ),
    ).then((all) => ({
      ok: all.reduce((n, c) => n + c.ok, 0),
      failed: all.flatMap((c) => c.failed),
    }));
    let report: LoadReport | undefined;
    let churned: { ok: number; failed: string[] } | undefined;
    try {
      await pollUntil(() => load.ok() > 100, { timeout: 10_000 });
      for (const [i, signal] of (["SIGUSR1", "SIGUSR2"] as const).entries()) {
        const before = started(supervisor);
        Deno.kill(supervisor.pid, signal);
        await pollUntil(
          () =>
            supervisor.stdoutLines.includes(`restarted ${i}`) &&
            started(supervisor) === before + 1,
          { timeout: 20_000 },
        );
        const okBefore = load.ok();
        await pollUntil(() => load.ok() > okBefore + 100, { timeout: 10_000 });
      }
    } finally {
      report = await load.stop();
      stopChurn.abort();
      churned = await churn;
    }
    const reports = supervisor.stdoutLines
      .filter((l) => l.startsWith("shutdown "))
      .map((l) => JSON.parse(l.slice("shutdown ".length)));
    assert.equal(reports.length, 2, "both restarted copies reported");
    assert.deepEqual(reports.map((r) => r.forced), [0, 0]);
    assert.deepEqual(violations(report), []);
    assert.equal(report.ok, report.requests, JSON.stringify(report.errors));
    assert.ok(report.requests > 300);
    assert.deepEqual(churned.failed, []);
    assert.ok(churned.ok > 10, `${churned.ok} fresh connections`);
    await supervisor.kill("SIGTERM");
  },
});

/** An error and its causes, one after the other. */
function causes(error: unknown): string {
  const parts: string[] = [];
  for (let e = error; e !== undefined && parts.length < 5;) {
    parts.push(String(e));
    e = e instanceof Error ? e.cause : undefined;
  }
  return parts.join(" <- ");
}
