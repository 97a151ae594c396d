import assert from "node:assert/strict";
import { startFaultProxy } from "./_fault_proxy.ts";
import { LISTENING_LINE, startProcess, withTimeout } from "./_process.ts";
import { ClosedError, TimeoutError } from "../errors.ts";
import { readExactly, writeAll } from "./_bytes.ts";

/** Upper bound for anything a test awaits: a hang fails instead of stalling. */
const HANG_MS = 5_000;

// ---------------------------------------------------------------------------
// Helpers: a raw echo server and exact reads/writes.

interface EchoServer extends AsyncDisposable {
  readonly addr: Deno.NetAddr;
}

/** A raw TCP echo server on 127.0.0.1 port 0. Disposal stops every loop. */
function startEchoServer(): EchoServer {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const handlers = new Set<Promise<void>>();
  const echo = async (conn: Deno.Conn) => {
    const buffer = new Uint8Array(16 * 1024);
    try {
      for (;;) {
        const n = await conn.read(buffer);
        if (n === null) break;
        await writeAll(conn, buffer.subarray(0, n));
      }
    } catch {
      // Reset by the peer or closed by dispose.
    } finally {
      conns.delete(conn);
      closeQuietly(conn);
    }
  };
  const acceptLoop = (async () => {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch {
        return;
      }
      conns.add(conn);
      const handler = echo(conn).finally(() => handlers.delete(handler));
      handlers.add(handler);
    }
  })();
  return {
    addr: listener.addr,
    async [Symbol.asyncDispose]() {
      listener.close();
      for (const conn of conns) closeQuietly(conn);
      await acceptLoop;
      await Promise.all([...handlers]);
    },
  };
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

/** Writes `bytes` and reads as many back at the same time (no deadlock). */
async function roundTrip(
  conn: Deno.Conn,
  bytes: Uint8Array,
): Promise<Uint8Array> {
  const [, echoed] = await withTimeout(
    Promise.all([writeAll(conn, bytes), readExactly(conn, bytes.length)]),
    HANG_MS,
    `round trip of ${bytes.length} bytes`,
  );
  return echoed;
}

/** Reads until EOF or an error; returns how many bytes came and how it ended. */
async function readToEnd(
  conn: Deno.Conn,
): Promise<{ bytes: number; ended: "eof" | "error" }> {
  const buffer = new Uint8Array(64 * 1024);
  let bytes = 0;
  try {
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) return { bytes, ended: "eof" };
      bytes += n;
    }
  } catch {
    return { bytes, ended: "error" };
  }
}

/** Bytes that differ from their neighbours, so a reordering shows. */
function pattern(length: number, seed = 0): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 7 + seed + (i >> 8)) % 251;
  return bytes;
}

const text = (s: string) => new TextEncoder().encode(s);

// ---------------------------------------------------------------------------
// startFaultProxy()

Deno.test("startFaultProxy() forwards 1 MiB both ways unchanged", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  assert.equal(proxy.addr.hostname, "127.0.0.1");
  using client = await Deno.connect(proxy.addr);
  const payload = pattern(1024 * 1024);
  assert.deepEqual(await roundTrip(client, payload), payload);
  assert.deepEqual(proxy.bytesForwarded, {
    up: payload.length,
    down: payload.length,
  });
  assert.equal(proxy.connections, 1);
  assert.equal(proxy.accepted, 1);
});

Deno.test("startFaultProxy() gives each client its own upstream connection", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  using a = await Deno.connect(proxy.addr);
  using b = await Deno.connect(proxy.addr);
  await withTimeout(proxy.waitForConnections(2), HANG_MS, "two connections");
  const [echoA, echoB] = await Promise.all([
    roundTrip(a, pattern(4096, 1)),
    roundTrip(b, pattern(4096, 2)),
  ]);
  assert.deepEqual(echoA, pattern(4096, 1));
  assert.deepEqual(echoB, pattern(4096, 2));
});

Deno.test("startFaultProxy() forwards a half-close in both directions", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  using client = await Deno.connect(proxy.addr);
  await writeAll(client, text("bye"));
  await client.closeWrite();
  // The echo server sees EOF through the proxy, echoes, and closes: the
  // client gets the echo, then EOF.
  const echoed = await withTimeout(readExactly(client, 3), HANG_MS, "echo");
  assert.deepEqual(echoed, text("bye"));
  const end = await withTimeout(readToEnd(client), HANG_MS, "EOF");
  assert.deepEqual(end, { bytes: 0, ended: "eof" });
});

Deno.test("startFaultProxy() rejects an invalid target port with RangeError", () => {
  assert.throws(
    () => startFaultProxy({ target: { hostname: "127.0.0.1", port: 0 } }),
    RangeError,
  );
});

Deno.test("startFaultProxy() closes the client when the target is down", async () => {
  // A port that was just free: nothing listens there any more.
  const gone = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const target = gone.addr;
  gone.close();
  await using proxy = startFaultProxy({ target });
  using client = await Deno.connect(proxy.addr);
  const end = await withTimeout(readToEnd(client), HANG_MS, "client read");
  assert.equal(end.bytes, 0);
  assert.equal(proxy.connections, 0);
});

// ---------------------------------------------------------------------------
// Faults

Deno.test("FaultProxy.fragment() delivers the same bytes", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  using client = await Deno.connect(proxy.addr);
  assert.deepEqual(await roundTrip(client, text("before")), text("before"));
  proxy.fragment(true);
  const payload = pattern(8 * 1024);
  assert.deepEqual(await roundTrip(client, payload), payload);
  proxy.heal();
  assert.deepEqual(await roundTrip(client, text("after")), text("after"));
});

Deno.test("FaultProxy.latency() delays chunks without reordering them", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  using client = await Deno.connect(proxy.addr);
  await withTimeout(proxy.waitForConnections(1), HANG_MS, "connection");
  const latency = 40;
  proxy.latency(latency);
  const messages = ["one,", "two,", "three,", "four,", "five"];
  const expected = text(messages.join(""));
  const start = performance.now();
  const received = readExactly(client, expected.length);
  for (const message of messages) await writeAll(client, text(message));
  const echoed = await withTimeout(received, HANG_MS, "delayed echo");
  const elapsed = performance.now() - start;
  assert.equal(new TextDecoder().decode(echoed), messages.join(""));
  // Not before: the round trip crosses the proxy twice (timers may round by 1 ms).
  assert.ok(elapsed >= latency - 1, `echo after ${elapsed} ms`);
  proxy.heal();
  assert.deepEqual(await roundTrip(client, text("healed")), text("healed"));
});

Deno.test("FaultProxy.latency() rejects a negative delay with RangeError", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  assert.throws(() => proxy.latency(-1), RangeError);
  assert.throws(() => proxy.latency(Number.NaN), RangeError);
});

Deno.test("FaultProxy.blackhole() forwards nothing until heal() delivers it all", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  using client = await Deno.connect(proxy.addr);
  assert.deepEqual(await roundTrip(client, text("warm")), text("warm"));
  const before = proxy.bytesForwarded;

  proxy.blackhole(true);
  const payload = pattern(32 * 1024, 3);
  await writeAll(client, payload);
  const echoed = readExactly(client, payload.length);
  // A bounded read: nothing may come back while the link is a black hole.
  await assert.rejects(
    withTimeout(echoed, 200, "blackholed read"),
    TimeoutError,
  );
  assert.deepEqual(proxy.bytesForwarded, before);
  assert.equal(proxy.connections, 1);

  // A client connecting now is accepted and kept open, silently.
  using late = await Deno.connect(proxy.addr);
  await withTimeout(proxy.waitForConnections(2), HANG_MS, "late connection");

  proxy.heal();
  assert.deepEqual(await withTimeout(echoed, HANG_MS, "healed read"), payload);
  assert.deepEqual(await roundTrip(late, text("late")), text("late"));
});

Deno.test("FaultProxy.resetMidFrame() cuts the next frame and ends the client read", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  using client = await Deno.connect(proxy.addr);
  assert.deepEqual(await roundTrip(client, text("ok")), text("ok"));

  proxy.resetMidFrame();
  const frame = pattern(1000);
  await writeAll(client, frame);
  const end = await withTimeout(readToEnd(client), HANG_MS, "cut read");
  assert.ok(end.bytes < frame.length, `${end.bytes} bytes came back`);
  assert.equal(proxy.resets, 1);
  assert.equal(proxy.connections, 0);
  assert.ok(proxy.bytesForwarded.up < 2 + frame.length);

  // One-shot: a new connection is forwarded cleanly.
  using next = await Deno.connect(proxy.addr);
  assert.deepEqual(await roundTrip(next, text("next")), text("next"));
});

Deno.test("FaultProxy.resetMidFrame({ persistent: true }) cuts new connections until heal()", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  proxy.resetMidFrame({ persistent: true });
  for (let i = 0; i < 2; i++) {
    using client = await Deno.connect(proxy.addr);
    await writeAll(client, pattern(100));
    const end = await withTimeout(readToEnd(client), HANG_MS, "cut read");
    assert.ok(end.bytes < 100);
  }
  assert.equal(proxy.resets, 2);
  proxy.heal();
  using client = await Deno.connect(proxy.addr);
  assert.deepEqual(await roundTrip(client, pattern(100)), pattern(100));
});

Deno.test("FaultProxy.resetAll() closes every open connection", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  const clients = await Promise.all(
    [1, 2, 3].map(() => Deno.connect(proxy.addr)),
  );
  try {
    await withTimeout(
      proxy.waitForConnections(3),
      HANG_MS,
      "three connections",
    );
    proxy.resetAll();
    assert.equal(proxy.connections, 0);
    assert.equal(proxy.resets, 3);
    for (const client of clients) {
      const end = await withTimeout(readToEnd(client), HANG_MS, "reset read");
      assert.equal(end.bytes, 0);
    }
  } finally {
    for (const client of clients) client.close();
  }
  using again = await Deno.connect(proxy.addr);
  assert.deepEqual(await roundTrip(again, text("again")), text("again"));
});

Deno.test("FaultProxy.refuse() closes new connections at once", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  using open = await Deno.connect(proxy.addr);
  await withTimeout(proxy.waitForConnections(1), HANG_MS, "connection");

  proxy.refuse(true);
  using refused = await Deno.connect(proxy.addr);
  const end = await withTimeout(readToEnd(refused), HANG_MS, "refused read");
  assert.equal(end.bytes, 0);
  assert.equal(proxy.refused, 1);
  // Connections open before refuse(true) keep working.
  assert.deepEqual(await roundTrip(open, text("still")), text("still"));

  proxy.heal();
  using accepted = await Deno.connect(proxy.addr);
  assert.deepEqual(await roundTrip(accepted, text("in")), text("in"));
  assert.equal(proxy.accepted, 3);
});

Deno.test("FaultProxy.slowRead() still delivers every byte", async (t) => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  using client = await Deno.connect(proxy.addr);
  for (const direction of ["up", "down", "both"] as const) {
    await t.step(`direction ${direction}`, async () => {
      proxy.slowRead(2048, { intervalMs: 1, direction });
      const payload = pattern(64 * 1024, direction.length);
      assert.deepEqual(await roundTrip(client, payload), payload);
    });
  }
  assert.throws(() => proxy.slowRead(-1), RangeError);
  assert.throws(() => proxy.slowRead(1.5), RangeError);
});

// ---------------------------------------------------------------------------
// Waiting and closing

Deno.test("FaultProxy.onConnection() resolves on the next established connection", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  const next = proxy.onConnection();
  using _client = await Deno.connect(proxy.addr);
  await withTimeout(next, HANG_MS, "onConnection()");
  assert.equal(proxy.connections, 1);
  // Already satisfied: resolves at once.
  await proxy.waitForConnections(1);
});

Deno.test("FaultProxy.waitForConnections() rejects with the signal's reason", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  const controller = new AbortController();
  const waiting = proxy.waitForConnections(5, { signal: controller.signal });
  const reason = new Error("gave up");
  controller.abort(reason);
  await assert.rejects(waiting, (error) => error === reason);
  await assert.rejects(proxy.waitForConnections(-1), RangeError);
});

Deno.test("FaultProxy.close() ends every connection, timer and waiter", async () => {
  await using echo = startEchoServer();
  const proxy = startFaultProxy({ target: echo.addr });
  // Pumps parked in long timers: close() must clear them, not wait them out.
  proxy.slowRead(1, { intervalMs: 60_000, direction: "both" });
  const clients = await Promise.all([1, 2].map(() => Deno.connect(proxy.addr)));
  try {
    await withTimeout(proxy.waitForConnections(2), HANG_MS, "two connections");
    await writeAll(clients[0]!, pattern(1024));
    proxy.slowRead(0);
    proxy.latency(60_000);
    await writeAll(clients[1]!, pattern(1024));
    // Waiters pending at close() reject (handlers attached before closing).
    const waiter = assert.rejects(proxy.waitForConnections(10), ClosedError);
    const next = assert.rejects(proxy.onConnection(), ClosedError);

    await withTimeout(proxy.close(), HANG_MS, "FaultProxy.close()");
    assert.equal(proxy.isClosed, true);
    assert.equal(proxy.connections, 0);
    await waiter;
    await next;
    await assert.rejects(proxy.onConnection(), ClosedError);
    for (const client of clients) {
      const end = await withTimeout(readToEnd(client), HANG_MS, "client read");
      assert.equal(end.bytes, 0);
    }
    await assert.rejects(
      Deno.connect(proxy.addr),
      Deno.errors.ConnectionRefused,
    );
    // Idempotent, and the same through asyncDispose.
    await proxy.close();
    await proxy[Symbol.asyncDispose]();
  } finally {
    for (const client of clients) client.close();
  }
});

Deno.test("FaultProxy.close() ends a blackholed link without leaks", async () => {
  await using echo = startEchoServer();
  await using proxy = startFaultProxy({ target: echo.addr });
  using client = await Deno.connect(proxy.addr);
  await withTimeout(proxy.waitForConnections(1), HANG_MS, "connection");
  proxy.blackhole(true);
  proxy.fragment(true);
  await writeAll(client, pattern(4096));
  await withTimeout(proxy.close(), HANG_MS, "FaultProxy.close()");
  const end = await withTimeout(readToEnd(client), HANG_MS, "client read");
  assert.equal(end.bytes, 0);
});

// ---------------------------------------------------------------------------
// _process.ts

const LISTENER_SOURCE = `
const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
console.error("starting");
console.log("listening 127.0.0.1:" + listener.addr.port);
for await (const conn of listener) {
  await conn.write(new TextEncoder().encode("hello"));
  conn.close();
}
`;

Deno.test("startProcess() waits for the ready line and kill() returns the exit status", async () => {
  await using child = await startProcess(["deno", "eval", LISTENER_SOURCE]);
  assert.match(child.match[0], LISTENING_LINE);
  const port = Number(child.match.groups?.port);
  assert.ok(port > 0);
  assert.ok(child.pid > 0);

  using conn = await Deno.connect({ hostname: "127.0.0.1", port });
  assert.deepEqual(await readExactly(conn, 5), text("hello"));

  const status = await withTimeout(child.kill("SIGTERM"), HANG_MS, "kill()");
  assert.equal(status.success, false);
  assert.equal(status.signal, "SIGTERM");
  assert.deepEqual(child.stderrLines, ["starting"]);
  assert.deepEqual(child.stdoutLines, [child.match[0]]);
  // Killing again only reports the status.
  assert.equal((await child.kill()).signal, "SIGTERM");
});

Deno.test("startProcess() matches a custom ready line", async () => {
  await using child = await startProcess([
    "deno",
    "eval",
    "console.log('warming up'); console.log('ready 42'); setInterval(() => {}, 1000);",
  ], { readyLine: /^ready (\d+)$/ });
  assert.equal(child.match[1], "42");
  assert.equal(
    (await child.waitForLine(/^warming/)).input,
    "warming up",
  );
  const status = await withTimeout(child.kill("SIGKILL"), HANG_MS, "kill()");
  assert.equal(status.signal, "SIGKILL");
});

Deno.test("startProcess() rejects with ClosedError when the child exits before its ready line", async () => {
  await assert.rejects(
    startProcess(["deno", "eval", "console.error('boom'); Deno.exit(3);"]),
    (error) => {
      assert.ok(error instanceof ClosedError);
      assert.match(error.message, /boom/);
      return true;
    },
  );
});

Deno.test("startProcess() rejects with TimeoutError when the ready line is late", async () => {
  await assert.rejects(
    startProcess(
      ["deno", "eval", "setInterval(() => {}, 1000);"],
      { readyTimeout: 300 },
    ),
    TimeoutError,
  );
});

Deno.test("startProcess() rejects with the signal's reason and kills the child", async () => {
  const controller = new AbortController();
  const starting = startProcess(
    ["deno", "eval", "setInterval(() => {}, 1000);"],
    { signal: controller.signal },
  );
  const reason = new Error("stop");
  controller.abort(reason);
  await assert.rejects(starting, (error) => error === reason);
});

Deno.test("startProcess() rejects an empty command with TypeError", async () => {
  await assert.rejects(startProcess([]), TypeError);
});

Deno.test("ChildProcess.restart() kills the child and starts it again", async () => {
  const first = await startProcess(["deno", "eval", LISTENER_SOURCE]);
  await using second = await withTimeout(first.restart(), HANG_MS, "restart()");
  assert.equal((await first.status).signal, "SIGTERM");
  assert.notEqual(second.pid, first.pid);
  using conn = await Deno.connect({
    hostname: "127.0.0.1",
    port: Number(second.match.groups?.port),
  });
  assert.deepEqual(await readExactly(conn, 5), text("hello"));
});

Deno.test("withTimeout() rejects with a TimeoutError naming what hung", async () => {
  assert.equal(
    await withTimeout(Promise.resolve("done"), HANG_MS, "quick"),
    "done",
  );
  let aborted: unknown;
  await assert.rejects(
    withTimeout(
      (signal) =>
        new Promise<never>((_, reject) => {
          signal.addEventListener("abort", () => {
            aborted = signal.reason;
            reject(signal.reason);
          }, { once: true });
        }),
      20,
      "the stuck thing",
    ),
    (error) => {
      assert.ok(error instanceof TimeoutError);
      assert.equal(
        error.message,
        "the stuck thing did not settle within 20 ms",
      );
      assert.equal(error.timeout, 20);
      assert.equal(aborted, error);
      return true;
    },
  );
});
