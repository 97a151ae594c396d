/**
 * Client integration tests over real loopback sockets: dial, routing,
 * reconnect, timeouts, correlation (default protocol, custom codecs, fifo),
 * handshake, heartbeat, pushes, close, stats and events.
 */

import assert from "node:assert/strict";
import {
  type Client,
  type ClientEventDetail,
  type ClientHandlerContext,
  ClosedError,
  ConnectionClosedError,
  ConnectionError,
  dial,
  DuplicateIdError,
  FrameKind,
  NoSessionError,
  RemoteError,
  serve,
  TimeoutError,
} from "../mod.ts";
import { lengthPrefixed } from "../framing/mod.ts";
import { withTimeout } from "./_process.ts";
import {
  autoAnswer,
  closedPort,
  Counter,
  dec,
  enc,
  EventLog,
  forceGc,
  HOST,
  pollUntil,
  portOf,
  push,
  rawPeer,
  response,
  serveLoopback,
} from "./_loopback.ts";

const FAST_RECONNECT = { initial: 10, max: 50 } as const;
const CLIENT_EVENTS = [
  "connect",
  "ready",
  "disconnect",
  "reconnecting",
  "error",
  "close",
];

type Detail<K extends ClientEventDetail["type"]> = Extract<
  ClientEventDetail,
  { type: K }
>;

function events(client: EventTarget): EventLog<ClientEventDetail> {
  return new EventLog<ClientEventDetail>(client, CLIENT_EVENTS);
}

/** Awaits a dial that must fail; closes the client if it did not. */
async function dialError<T>(pending: Promise<Client<T>>): Promise<unknown> {
  let client: Client<T>;
  try {
    client = await pending;
  } catch (error) {
    return error;
  }
  await client.close({ timeout: 0 });
  assert.fail("dial() resolved but was expected to reject");
}

/**
 * Makes `await using` force-close the client: raw peers do not answer the
 * drain of a graceful close, which would otherwise wait its full timeout when
 * a test fails early.
 */
function forceOnDispose<T>(client: Client<T>): Client<T> {
  Object.defineProperty(client, Symbol.asyncDispose, {
    value: () => client.close({ timeout: 0 }),
  });
  return client;
}

function rootCause(error: unknown): unknown {
  let e = error;
  while (e instanceof Error && e.cause !== undefined) e = e.cause;
  return e;
}

/** A u32 big-endian id followed by UTF-8 text. */
function idMessage(id: number, text: string): Uint8Array {
  const body = enc(text);
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, id);
  out.set(body, 4);
  return out;
}

function idOf(message: Uint8Array): number | undefined {
  return message.length < 4
    ? undefined
    : new DataView(message.buffer, message.byteOffset, message.byteLength)
      .getUint32(0);
}

function textOf(message: Uint8Array): string {
  return dec(message.subarray(4));
}

// ---------------------------------------------------------------------------
// dial()

Deno.test("dial() resolves once the first session is ready and connects the other slots in the background", async () => {
  await using server = serveLoopback({ handler: (p) => p });
  const release = Promise.withResolvers<void>();
  let handshakes = 0;
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    sessions: 3,
    heartbeat: false,
    reconnect: FAST_RECONNECT,
    onConnect: async () => {
      if (handshakes++ > 0) await release.promise;
    },
  });
  // The other two are held in their handshake: dial() did not wait for them.
  assert.equal(client.stats().sessions.ready, 1);
  using log = events(client);
  release.resolve();
  await log.until(() => client.stats().sessions.ready === 3);
  assert.equal(handshakes, 3);
  assert.equal(client.sessions.length, 3);
});

Deno.test("dial() rejects with ConnectionError (cause set) after connectTimeout when nothing listens", async () => {
  const port = closedPort();
  const start = performance.now();
  const error = await dialError(
    dial(`${HOST}:${port}`, { connectTimeout: 300, reconnect: FAST_RECONNECT }),
  );
  const elapsed = performance.now() - start;
  assert.ok(error instanceof ConnectionError, `got ${error}`);
  assert.ok(error.cause !== undefined, "cause is set");
  assert.ok(
    rootCause(error) instanceof Deno.errors.ConnectionRefused,
    `root cause: ${rootCause(error)}`,
  );
  assert.ok(elapsed >= 290, `rejected after ${elapsed} ms`);
  assert.ok(elapsed < 3000, `rejected after ${elapsed} ms`);
});

Deno.test("dial() rejects with ConnectionError when reconnect.maxAttempts is exhausted", async () => {
  const port = closedPort();
  const start = performance.now();
  const error = await dialError(
    dial(`${HOST}:${port}`, {
      connectTimeout: 5000,
      reconnect: { ...FAST_RECONNECT, maxAttempts: 2 },
    }),
  );
  assert.ok(error instanceof ConnectionError, `got ${error}`);
  assert.ok(performance.now() - start < 2000);
});

Deno.test("dial() with an aborted signal rejects with signal.reason", async (t) => {
  await using server = serveLoopback({ handler: (p) => p });
  const target = `${HOST}:${portOf(server.addr)}`;

  await t.step("aborted before the call", async () => {
    const reason = new Error("not today");
    const controller = new AbortController();
    controller.abort(reason);
    const error = await dialError(dial(target, { signal: controller.signal }));
    assert.equal(error, reason);
  });

  await t.step("aborted while connecting", async () => {
    const reason = { why: "a non-Error reason" };
    const controller = new AbortController();
    const error = await dialError(dial(target, {
      signal: controller.signal,
      heartbeat: false,
      onConnect: (_session, { signal }) => {
        controller.abort(reason);
        return new Promise<void>((_, reject) => {
          if (signal.aborted) return reject(signal.reason);
          signal.addEventListener("abort", () => reject(signal.reason), {
            once: true,
          });
        });
      },
    }));
    assert.equal(error, reason);
  });
});

Deno.test("dial() accepts host:port, an endpoint object, a list of endpoints and a Unix socket path", async (t) => {
  const seen = new Map<string, number>();
  const handler = (name: string) => (payload: Uint8Array) => {
    seen.set(name, (seen.get(name) ?? 0) + 1);
    return payload;
  };
  await using a = serveLoopback({ handler: handler("a") });
  await using b = serveLoopback({ handler: handler("b") });
  const opts = { heartbeat: false as const, reconnect: FAST_RECONNECT };

  await t.step('"host:port"', async () => {
    await using client = await dial(`${HOST}:${portOf(a.addr)}`, opts);
    assert.equal(dec(await client.request(enc("one"))), "one");
  });

  await t.step("{ hostname, port }", async () => {
    await using client = await dial({ hostname: HOST, port: portOf(a.addr) }, {
      ...opts,
    });
    assert.equal(dec(await client.request(enc("two"))), "two");
  });

  await t.step("a list of endpoints: one slot each, both used", async () => {
    seen.clear();
    await using client = await dial([
      `${HOST}:${portOf(a.addr)}`,
      { hostname: HOST, port: portOf(b.addr) },
    ], opts);
    using log = events(client);
    await log.until(() => client.stats().sessions.ready === 2);
    for (let i = 0; i < 10; i++) await client.request(enc(`r${i}`));
    assert.equal(seen.get("a"), 5);
    assert.equal(seen.get("b"), 5);
  });

  await t.step("a Unix socket path, unix: prefix and { path }", async () => {
    const dir = await Deno.makeTempDir({ prefix: "tcpbutler-unix-" });
    try {
      const path = `${dir}/s.sock`;
      await using server = serve({ path, handler: (p: Uint8Array) => p });
      for (const target of [path, `unix:${path}`, { path }]) {
        await using client = await dial(target, opts);
        assert.equal(dec(await client.request(enc("unix"))), "unix");
      }
      await server.shutdown({ timeout: 1000 });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});

// ---------------------------------------------------------------------------
// Request/response and routing

Deno.test("Client.request() gets the server handler's reply over the default protocol", async () => {
  await using server = serveLoopback({
    handler: (p) => enc(`echo: ${dec(p)}`),
  });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`);
  assert.equal(dec(await client.request(enc("hello"))), "echo: hello");
  const replies = await Promise.all(
    Array.from({ length: 100 }, (_, i) => client.request(enc(String(i)))),
  );
  replies.forEach((reply, i) => assert.equal(dec(reply), `echo: ${i}`));
  assert.equal(client.stats().pending, 0);
});

Deno.test("Client.request() and Client.send() send the message as it was when called, also when it waits for room or for a session", async (t) => {
  // The caller may reuse its buffer as soon as request()/send() returns:
  // messages are encoded when queued, and one that has to wait is copied or
  // encoded at once. Messages whose first byte is 100 or more are pushes.
  for (const protocol of ["default protocol", "custom codec"] as const) {
    for (const when of ["ready", "no room", "no session"] as const) {
      await t.step(`${protocol}, ${when}`, async () => {
        const custom = protocol === "custom codec";
        const codec = () => lengthPrefixed({ correlationId: (m) => m[0] });
        const pushes: number[][] = [];
        const gotPushes = Promise.withResolvers<void>();
        const handler = (m: Uint8Array) => {
          if (m[0]! < 100) return m.slice();
          pushes.push([...m]);
          if (pushes.length === 3) gotPushes.resolve();
          return undefined;
        };
        await using server = custom
          ? serve({ hostname: HOST, port: 0, codec: codec(), handler })
          : serveLoopback({ handler });
        let connects = 0;
        const gate = Promise.withResolvers<void>();
        const options = {
          reconnect: FAST_RECONNECT,
          outboundBuffer: when === "no room" ? 1 : 100,
          // The second connect waits at the gate: no session is ready.
          onConnect: async () => {
            if (++connects > 1) await gate.promise;
          },
        };
        const target = `${HOST}:${portOf(server.addr)}`;
        await using client = custom
          ? await dial(target, codec(), options)
          : await dial(target, { ...options, heartbeat: false });
        if (when === "no session") {
          using log = events(client);
          server.sessions[0]!.close();
          await log.next("disconnect");
          assert.equal(client.stats().sessions.ready, 0);
        }
        const buffer = new Uint8Array(4);
        const replies: Promise<Uint8Array>[] = [];
        const sent: Promise<void>[] = [];
        for (let i = 0; i < 3; i++) {
          buffer.fill(i);
          replies.push(client.request(buffer));
          buffer.fill(100 + i);
          sent.push(client.send(buffer));
        }
        buffer.fill(9);
        gate.resolve();
        const got = (await Promise.all(replies)).map((reply) => [...reply]);
        assert.deepEqual(got, [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]]);
        await Promise.all(sent);
        await withTimeout(gotPushes.promise, 5000, "three pushes");
        assert.deepEqual(pushes, [
          [100, 100, 100, 100],
          [101, 101, 101, 101],
          [102, 102, 102, 102],
        ]);
      });
    }
  }
});

Deno.test("Client.request() rejects with RemoteError carrying the handler's message when it throws", async () => {
  await using server = serveLoopback({
    handler: (p) => {
      if (dec(p) === "sync") throw new Error("sync failure");
      return Promise.reject(new Error("async failure: é"));
    },
  });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`);
  await assert.rejects(client.request(enc("sync")), {
    name: "RemoteError",
    message: "sync failure",
  });
  const error = await client.request(enc("async")).catch((e) => e);
  assert.ok(error instanceof RemoteError);
  assert.equal(error.message, "async failure: é");
  // The session survives a handler error.
  assert.equal(client.stats().sessions.ready, 1);
  assert.equal(client.stats().pending, 0);
});

Deno.test("Client.request() spreads requests round-robin across sessions", async () => {
  const perSession = new Map<number, number>();
  await using server = serveLoopback({
    handler: (p, { session }) => {
      perSession.set(session.id, (perSession.get(session.id) ?? 0) + 1);
      return p;
    },
  });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    sessions: 3,
  });
  using log = events(client);
  await log.until(() => client.stats().sessions.ready === 3);
  for (let i = 0; i < 30; i++) await client.request(enc("x"));
  assert.deepEqual([...perSession.values()], [10, 10, 10]);
  // Concurrent requests spread too.
  perSession.clear();
  await Promise.all(
    Array.from({ length: 30 }, () => client.request(enc("y"))),
  );
  assert.deepEqual([...perSession.values()], [10, 10, 10]);
});

Deno.test('Client.request() with routing "least-pending" avoids the busy session', async () => {
  const release = Promise.withResolvers<void>();
  const held = Promise.withResolvers<number>();
  const perSession = new Map<number, number>();
  await using server = serveLoopback({
    handler: async (p, { session }) => {
      if (dec(p) === "hold") {
        held.resolve(session.id);
        await release.promise;
      } else {
        perSession.set(session.id, (perSession.get(session.id) ?? 0) + 1);
      }
      return p;
    },
  });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    sessions: 2,
    routing: "least-pending",
  });
  using log = events(client);
  await log.until(() => client.stats().sessions.ready === 2);
  const slow = client.request(enc("hold"));
  const busy = await held.promise;
  for (let i = 0; i < 6; i++) await client.request(enc("quick"));
  assert.equal(perSession.size, 1, "all quick requests went to one session");
  assert.ok(!perSession.has(busy), "none went to the busy session");
  assert.equal(perSession.values().next().value, 6);
  release.resolve();
  assert.equal(dec(await slow), "hold");
});

Deno.test("Client.request() with { session } sends on that session", async () => {
  await using server = serveLoopback({
    handler: (_p, { session }) => enc(String(portOf(session.remoteAddr))),
  });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    sessions: 3,
  });
  using log = events(client);
  await log.until(() => client.stats().sessions.ready === 3);
  for (const session of client.sessions) {
    const local = String(portOf(session.localAddr));
    for (let i = 0; i < 3; i++) {
      assert.equal(dec(await client.request(enc("?"), { session })), local);
    }
  }
});

// ---------------------------------------------------------------------------
// No session ready

Deno.test("Client.request() waits while no session is ready and succeeds once a server appears", async () => {
  for (let attempt = 1;; attempt++) {
    const first = serveLoopback({ handler: (p) => p });
    const port = portOf(first.addr);
    const client = await dial(`${HOST}:${port}`, {
      heartbeat: false,
      reconnect: FAST_RECONNECT,
    });
    try {
      using log = events(client);
      await first.shutdown({ timeout: 1000 });
      await log.next("reconnecting");
      assert.equal(client.stats().sessions.ready, 0);
      const reply = client.request(enc("patience"), { timeout: 5000 });
      assert.equal(client.stats().waiting, 1);
      let second;
      try {
        second = serveLoopback({ port, handler: (p) => p });
      } catch (error) {
        reply.catch(() => {});
        if (error instanceof Deno.errors.AddrInUse && attempt < 3) continue;
        throw error;
      }
      await using _second = second;
      assert.equal(dec(await reply), "patience");
      assert.equal(client.stats().waiting, 0);
      assert.equal(client.stats().pending, 0);
      return;
    } finally {
      await client.close({ timeout: 1000 });
    }
  }
});

Deno.test("Client.request() fails with NoSessionError at its deadline, or at once with waitForSession: false", async () => {
  const server = serveLoopback({ handler: (p) => p });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: false,
    reconnect: FAST_RECONNECT,
  });
  using log = events(client);
  await server.shutdown({ timeout: 1000 });
  await log.next("reconnecting");

  let start = performance.now();
  await assert.rejects(
    client.request(enc("x"), { timeout: 200 }),
    NoSessionError,
  );
  let elapsed = performance.now() - start;
  assert.ok(elapsed >= 190 && elapsed < 1500, `after ${elapsed} ms`);

  start = performance.now();
  await assert.rejects(
    client.request(enc("x"), { timeout: 5000, waitForSession: false }),
    NoSessionError,
  );
  elapsed = performance.now() - start;
  assert.ok(elapsed < 100, `after ${elapsed} ms`);

  // Abort while waiting for a session: signal.reason, unchanged.
  const controller = new AbortController();
  const waiting = client.request(enc("x"), { signal: controller.signal });
  assert.equal(client.stats().waiting, 1);
  const reason = new Error("stop waiting");
  controller.abort(reason);
  await assert.rejects(waiting, (e) => e === reason);
  assert.equal(client.stats().waiting, 0);
  assert.equal(client.stats().pending, 0);
});

Deno.test("dial() option waitForSession: false makes requests fail at once with NoSessionError", async () => {
  const server = serveLoopback({ handler: (p) => p });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: false,
    waitForSession: false,
    reconnect: FAST_RECONNECT,
  });
  using log = events(client);
  await server.shutdown({ timeout: 1000 });
  await log.next("reconnecting");
  const start = performance.now();
  await assert.rejects(client.request(enc("x")), NoSessionError);
  await assert.rejects(client.send(enc("x")), NoSessionError);
  assert.ok(performance.now() - start < 100);
});

Deno.test("dial() option maxWaitingRequests bounds the requests waiting for a session", async () => {
  const server = serveLoopback({ handler: (p) => p });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: false,
    maxWaitingRequests: 2,
    reconnect: FAST_RECONNECT,
  });
  using log = events(client);
  await server.shutdown({ timeout: 1000 });
  await log.next("reconnecting");
  const waiting = [
    client.request(enc("1"), { timeout: 100 }),
    client.request(enc("2"), { timeout: 100 }),
  ];
  assert.equal(client.stats().waiting, 2);
  const start = performance.now();
  await assert.rejects(client.request(enc("3")), NoSessionError);
  assert.ok(performance.now() - start < 50);
  for (const w of waiting) await assert.rejects(w, NoSessionError);
  assert.equal(client.stats().waiting, 0);
});

// ---------------------------------------------------------------------------
// Session drops and reconnect

Deno.test("Client.request() rejects at once with ConnectionClosedError when the server closes the connection, then the slot reconnects", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, {
      heartbeat: false,
      reconnect: FAST_RECONNECT,
    }),
  );
  const conn = await accepted;
  using log = events(client);
  const start = performance.now();
  const reply = client.request(enc("doomed"), { timeout: 10_000 });
  const frame = await conn.read();
  assert.equal(frame?.kind, FrameKind.Request);
  assert.equal(dec(frame!.payload), "doomed");
  const next = peer.accept();
  conn.close();
  await assert.rejects(reply, ConnectionClosedError);
  const elapsed = performance.now() - start;
  assert.ok(elapsed < 2000, `rejected after ${elapsed} ms`);
  assert.equal(client.stats().pending, 0);

  const disconnect = await log.next("disconnect");
  assert.ok(
    (disconnect.detail as Detail<"disconnect">).reason instanceof
      ConnectionClosedError,
  );
  const reconnecting = (await log.next("reconnecting"))
    .detail as Detail<"reconnecting">;
  assert.equal(reconnecting.attempt, 1);
  assert.equal(typeof reconnecting.delay, "number");
  assert.ok(reconnecting.delay >= 0 && reconnecting.delay <= 50);
  await log.next("ready");
  const again = await next;
  const answering = autoAnswer(again);
  assert.equal(dec(await client.request(enc("again"))), "again");
  await client.close({ timeout: 1000 });
  await answering;
});

Deno.test("Client recovers on its own when the server restarts on the same port while requests run; none hangs", async () => {
  // Another process may grab the freed port before we listen again: then
  // the whole scenario is retried (at most 3 times).
  for (let attempt = 1;; attempt++) {
    const outcome = await restartScenario();
    if (outcome === "done") return;
    if (attempt === 3) {
      assert.fail(
        "listening again on the port failed with AddrInUse 3 times in a row: " +
          "is the old listener still open after `await server.close()`?",
      );
    }
  }
});

async function restartScenario(): Promise<"done" | "port taken"> {
  const first = serveLoopback({ handler: (p) => p });
  const port = portOf(first.addr);
  await using client = await dial(`${HOST}:${port}`, {
    sessions: 2,
    heartbeat: false,
    reconnect: FAST_RECONNECT,
  });
  const ok = new Counter();
  const failures = new Map<string, number>();
  let stop = false;
  const worker = async () => {
    while (!stop) {
      try {
        await client.request(enc("n"), { timeout: 300 });
        ok.increment();
      } catch (error) {
        assert.ok(
          error instanceof NoSessionError || error instanceof TimeoutError ||
            error instanceof ConnectionClosedError,
          `unexpected ${error}`,
        );
        const name = (error as Error).name;
        failures.set(name, (failures.get(name) ?? 0) + 1);
      }
    }
  };
  const workers = Array.from({ length: 8 }, worker);
  let second: ReturnType<typeof serveLoopback> | undefined;
  try {
    await withTimeout(ok.reach(50), 5000, "first 50 replies");
    await first.close();
    const before = ok.value;
    try {
      second = serveLoopback({ port, handler: (p) => p });
    } catch (error) {
      if (error instanceof Deno.errors.AddrInUse) return "port taken";
      throw error;
    }
    await withTimeout(
      ok.reach(before + 100),
      5000,
      "100 replies after restart",
    );
  } finally {
    stop = true;
    await withTimeout(Promise.all(workers), 5000, "workers");
    await second?.shutdown({ timeout: 1000 });
    await first.shutdown();
  }
  assert.ok(client.stats().reconnects >= 1);
  assert.equal(client.stats().pending, 0);
  assert.equal(client.stats().waiting, 0);
  return "done";
}

Deno.test("Client routes new requests to its other endpoint while one drains: zero failed requests in a rolling restart", async () => {
  const a = serveLoopback({ handler: (p) => p });
  await using b = serveLoopback({ handler: (p) => p });
  await using client = await dial([
    `${HOST}:${portOf(a.addr)}`,
    `${HOST}:${portOf(b.addr)}`,
  ], { heartbeat: false, reconnect: FAST_RECONNECT });
  using log = events(client);
  await log.until(() => client.stats().sessions.ready === 2);
  const ok = new Counter();
  const failures: unknown[] = [];
  let stop = false;
  const worker = async () => {
    while (!stop) {
      try {
        await client.request(enc("r"), { timeout: 2000 });
        ok.increment();
      } catch (error) {
        failures.push(error);
      }
    }
  };
  const workers = Array.from({ length: 8 }, worker);
  try {
    await withTimeout(ok.reach(100), 5000, "100 replies");
    const report = await a.shutdown({ timeout: 2000 });
    assert.equal(report.forced, 0);
    const after = ok.value;
    await withTimeout(ok.reach(after + 100), 5000, "100 replies from b");
  } finally {
    stop = true;
    await withTimeout(Promise.all(workers), 5000, "workers");
    await a.shutdown();
  }
  assert.deepEqual(failures.map(String), []);
  assert.equal(client.stats().sessions.ready, 1);
});

// ---------------------------------------------------------------------------
// Timeouts, abort, late replies

Deno.test("Client.request() times out after requestTimeout by default and after its own timeout per call", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, {
      heartbeat: false,
      requestTimeout: 200,
    }),
  );
  const conn = await accepted;
  const sink = conn.drainAll();

  let start = performance.now();
  let error = await client.request(enc("a")).catch((e) => e);
  let elapsed = performance.now() - start;
  assert.ok(error instanceof TimeoutError, `got ${error}`);
  assert.equal(error.timeout, 200);
  assert.ok(elapsed >= 195 && elapsed < 1000, `after ${elapsed} ms`);

  start = performance.now();
  error = await client.request(enc("b"), { timeout: 50 }).catch((e) => e);
  elapsed = performance.now() - start;
  assert.ok(error instanceof TimeoutError, `got ${error}`);
  assert.equal(error.timeout, 50);
  assert.ok(elapsed >= 45 && elapsed < 500, `after ${elapsed} ms`);

  const stats = client.stats();
  assert.equal(stats.timeouts, 2);
  assert.equal(stats.pending, 0);
  assert.equal(client.sessions[0]!.stats().pending, 0);
  await client.close({ timeout: 0 });
  await sink;
});

Deno.test("Client.request() waits for room in a full write queue (outboundBuffer) and is never sent once its deadline passed", async () => {
  // The peer does not read at first, so the socket fills up and the write
  // queue of 1 message stays full: later requests must wait for room, and
  // those whose deadline passes while waiting must not be written at all.
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, {
      heartbeat: false,
      outboundBuffer: 1,
    }),
  );
  const conn = await accepted;
  const big = new Uint8Array(1024 * 1024);
  const requests = Array.from(
    { length: 40 },
    () =>
      client.request(big, { timeout: 300 }).then(
        () => assert.fail("a reply came"),
        (error) => assert.ok(error instanceof TimeoutError, `got ${error}`),
      ),
  );
  await Promise.all(requests);
  assert.equal(client.stats().pending, 0);
  // Now read everything the client wrote, up to a small marker request.
  const marker = client.request(enc("marker"), { timeout: 10_000 });
  let written = 0;
  const last = await conn.readUntil((frame) => {
    if (frame.payload.length === big.length) written++;
    return dec(frame.payload) === "marker";
  });
  await conn.write(response(last!.id, enc("ok")));
  assert.equal(dec(await marker), "ok");
  assert.ok(
    written < 20,
    `${written} of 40 timed-out 1 MiB requests were written anyway: the write queue bound (outboundBuffer: 1) did not hold`,
  );
  await client.close({ timeout: 0 });
});

Deno.test("Client.request() never times out before its timeout, even after synchronous work in the same tick", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, { heartbeat: false }),
  );
  const conn = await accepted;
  const sink = conn.drainAll();
  // A first request reads the clock; then the caller works for 150 ms
  // without yielding (building a batch, parsing); then makes a request
  // with a 100 ms timeout in the same tick.
  const first = client.request(enc("first"), { timeout: 1000 }).catch((
    e,
  ) => e);
  const busyUntil = performance.now() + 150;
  while (performance.now() < busyUntil) {
    // Synchronous work.
  }
  const start = performance.now();
  const error = await client.request(enc("second"), { timeout: 100 }).catch((
    e,
  ) => e);
  const elapsed = performance.now() - start;
  assert.ok(error instanceof TimeoutError, `got ${error}`);
  assert.ok(
    elapsed >= 95,
    `a 100 ms timeout fired after ${
      elapsed.toFixed(1)
    } ms: the deadline was computed from a clock reading taken before the synchronous work`,
  );
  assert.ok((await first) instanceof TimeoutError);
  await client.close({ timeout: 0 });
  await sink;
});

Deno.test("Client.request() with a timeout of days arms the deadline timer once instead of spinning", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, { heartbeat: false }),
  );
  const conn = await accepted;
  const sink = conn.drainAll();
  // setTimeout takes a signed 32-bit delay: 30 days overflows it.
  const realSetTimeout = globalThis.setTimeout;
  let armed = 0;
  globalThis.setTimeout = ((...args: Parameters<typeof setTimeout>) => {
    armed++;
    return realSetTimeout(...args);
  }) as typeof setTimeout;
  const controller = new AbortController();
  let pending: Promise<unknown>;
  try {
    pending = client.request(enc("patient"), {
      timeout: 30 * 24 * 3600 * 1000,
      signal: controller.signal,
    }).catch((e) => e);
    // Let 200 ms pass: the criterion is what happens over time.
    await new Promise((resolve) => realSetTimeout(resolve, 200));
  } finally {
    globalThis.setTimeout = realSetTimeout;
  }
  controller.abort(new Error("enough"));
  assert.equal(((await pending) as Error).message, "enough");
  assert.ok(
    armed <= 2,
    `the deadline sweep set ${armed} timers in 200 ms: a delay over 2^31-1 ms fires at once, so it re-arms in a loop`,
  );
  await client.close({ timeout: 0 });
  await sink;
});

Deno.test("Client.request() rejects with signal.reason unchanged when aborted", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, { heartbeat: false }),
  );
  const conn = await accepted;
  const sink = conn.drainAll();

  const reason = new Error("changed my mind");
  const controller = new AbortController();
  const pending = client.request(enc("a"), { signal: controller.signal });
  assert.equal(client.stats().pending, 1);
  controller.abort(reason);
  await assert.rejects(pending, (e) => e === reason);
  assert.equal(client.stats().pending, 0);

  // Already aborted, with a reason that is not an Error.
  const early = new AbortController();
  early.abort("plain string");
  await assert.rejects(
    client.request(enc("b"), { signal: early.signal }),
    (e) => e === "plain string",
  );
  // Default reason.
  const plain = new AbortController();
  const p = client.request(enc("c"), { signal: plain.signal });
  plain.abort();
  await assert.rejects(p, (e) => e === plain.signal.reason);
  assert.equal((plain.signal.reason as DOMException).name, "AbortError");
  assert.equal(client.stats().pending, 0);
  await client.close({ timeout: 0 });
  await sink;
});

Deno.test("Client.request() frees the pending entry on every outcome", async () => {
  await using server = serveLoopback({
    handler: (p, { signal }) => {
      const text = dec(p);
      if (text === "fail") throw new Error("nope");
      if (text === "hang") {
        return new Promise<undefined>((resolve) =>
          signal.addEventListener("abort", () => resolve(undefined))
        );
      }
      return p;
    },
  });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: false,
    reconnect: FAST_RECONNECT,
  });
  const settled = () => {
    assert.equal(client.stats().pending, 0);
    for (const s of client.sessions) assert.equal(s.stats().pending, 0);
  };
  await client.request(enc("ok"));
  settled();
  await assert.rejects(client.request(enc("fail")), RemoteError);
  settled();
  await assert.rejects(
    client.request(enc("hang"), { timeout: 30 }),
    TimeoutError,
  );
  settled();
  const controller = new AbortController();
  const aborted = client.request(enc("hang"), { signal: controller.signal });
  controller.abort(new Error("abort"));
  await assert.rejects(aborted, { message: "abort" });
  settled();
  const cut = client.request(enc("hang"), { timeout: 10_000 });
  await pollUntil(() => server.sessions[0]?.stats().handlersRunning === 3);
  server.sessions[0]!.close(new Error("kicked"));
  await assert.rejects(cut, ConnectionClosedError);
  settled();
});

Deno.test("Client drops a reply that arrives after its request timed out, counts it, logs it at debug, and never hands it to the handler", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  const pushes: string[] = [];
  const marker = Promise.withResolvers<void>();
  const debug: [string, Record<string, unknown> | undefined][] = [];
  const nothing = () => {};
  await using client = forceOnDispose(
    await dial(peer.target, {
      heartbeat: false,
      logger: {
        debug: (message, fields) => debug.push([message, fields]),
        info: nothing,
        warn: nothing,
        error: nothing,
      },
      handler: (p) => {
        pushes.push(dec(p));
        if (dec(p) === "marker") marker.resolve();
      },
    }),
  );
  const conn = await accepted;
  const reply = client.request(enc("slow"), { timeout: 50 });
  const frame = await conn.read();
  await assert.rejects(reply, TimeoutError);
  // The peer answers after the deadline, then pushes a marker: once the
  // marker arrived, the late reply (written before it) was processed.
  await conn.write(response(frame!.id, enc("too late")), push(enc("marker")));
  await marker.promise;
  assert.deepEqual(pushes, ["marker"]);
  assert.equal(client.stats().lateReplies, 1);
  const logged = debug.filter(([, fields]) => fields?.id === String(frame!.id));
  assert.equal(logged.length, 1, "one debug line names the late reply's id");
  assert.equal(client.stats().timeouts, 1);
  assert.equal(client.stats().pending, 0);
  const answering = autoAnswer(conn);
  await client.close({ timeout: 1000 });
  await answering;
});

Deno.test("Client.request() leaves nothing behind after 100,000 requests that all time out", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, {
      heartbeat: false,
      requestTimeout: 50,
    }),
  );
  const conn = await accepted;
  const sink = conn.drainAll();
  const payload = new Uint8Array(8);
  const batch = async (n: number) => {
    const all: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      all.push(
        client.request(payload).then(
          () => assert.fail("a reply came"),
          (error) => {
            if (!(error instanceof TimeoutError)) throw error;
          },
        ),
      );
    }
    await Promise.all(all);
  };
  await batch(2000); // warm-up
  const collected = forceGc();
  const before = Deno.memoryUsage().heapUsed;
  const start = performance.now();
  for (let i = 0; i < 20; i++) await batch(5000);
  const elapsed = performance.now() - start;
  forceGc();
  const after = Deno.memoryUsage().heapUsed;
  // With a real collection the heap is back within a few MiB; without one,
  // garbage may linger, so the bound is loose.
  const slack = (collected ? 8 : 200) * 1024 * 1024;
  const stats = client.stats();
  assert.equal(stats.pending, 0);
  assert.equal(stats.timeouts, 102_000);
  assert.equal(client.sessions[0]!.stats().pending, 0);
  assert.ok(elapsed < 15_000, `took ${elapsed} ms`);
  assert.ok(
    after < before + slack,
    `heap grew by ${((after - before) / 1048576).toFixed(1)} MiB`,
  );
  await client.close({ timeout: 0 });
  await sink;
});

Deno.test("Client delivers a reply that arrives on a different session than its request", async () => {
  await using peer = rawPeer();
  const accepting = (async () => [await peer.accept(), await peer.accept()])();
  await using client = forceOnDispose(
    await dial(peer.target, {
      sessions: 2,
      heartbeat: false,
    }),
  );
  const conns = await accepting;
  using log = events(client);
  await log.until(() => client.stats().sessions.ready === 2);
  const session = client.sessions[0]!;
  const a = conns.find((c) => c.remotePort === portOf(session.localAddr))!;
  const b = conns.find((c) => c !== a)!;
  const reply = client.request(enc("ping?"), { session });
  const frame = await a.read();
  assert.equal(frame?.kind, FrameKind.Request);
  await b.write(response(frame!.id, enc("pong, via the other session")));
  assert.equal(dec(await reply), "pong, via the other session");
  assert.equal(client.stats().pending, 0);
  assert.equal(client.stats().lateReplies, 0);
  const answering = conns.map((c) => autoAnswer(c));
  await client.close({ timeout: 1000 });
  await Promise.all(answering);
});

// ---------------------------------------------------------------------------
// Handshake

Deno.test("dial() option onConnect runs before the session is ready and may sign on with session.request()", async () => {
  const order: string[] = [];
  await using server = serveLoopback({
    handler: (p, { session }) => {
      order.push(`server:${dec(p)}:${session.id}`);
      return dec(p) === "sign-on" ? enc("welcome") : p;
    },
  });
  let stateDuring = "";
  let readyDuring = -1;
  const clientRef: { client?: Client<Uint8Array> } = {};
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: false,
    onConnect: async (session) => {
      stateDuring = session.state;
      readyDuring = clientRef.client?.stats().sessions.ready ?? 0;
      const reply = await session.request(enc("sign-on"));
      order.push(`client:${dec(reply)}`);
    },
  });
  clientRef.client = client;
  assert.equal(stateDuring, "handshaking");
  assert.equal(readyDuring, 0);
  assert.deepEqual(order.map((o) => o.split(":").slice(0, 2).join(":")), [
    "server:sign-on",
    "client:welcome",
  ]);
  await client.request(enc("business"));
  assert.equal(order.length, 3);
  assert.ok(order[2]!.startsWith("server:business"));
});

Deno.test("dial() option onConnect that throws closes the session and the slot backs off", async () => {
  await using server = serveLoopback({ handler: (p) => p });
  let refuse = false;
  const refusal = new Error("sign-on refused");
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: false,
    reconnect: FAST_RECONNECT,
    onConnect: () => {
      if (refuse) throw refusal;
    },
  });
  using log = events(client);
  refuse = true;
  server.sessions[0]!.close(new Error("kick"));
  await log.next("disconnect");
  await log.next("reconnecting");
  await log.next("connect");
  // The failed handshake: the session closes with the error, then the slot
  // reports it and backs off.
  const closed = await log.next("disconnect");
  assert.equal((closed.detail as Detail<"disconnect">).reason, refusal);
  const error = await log.next("error");
  assert.equal((error.detail as Detail<"error">).error, refusal);
  const backoff = (await log.next("reconnecting"))
    .detail as Detail<"reconnecting">;
  assert.equal(backoff.attempt, 2);
  assert.ok(backoff.delay >= 0 && backoff.delay <= 50);
  assert.equal(client.stats().sessions.ready, 0);
  refuse = false;
  await log.next("ready");
  assert.equal(dec(await client.request(enc("back"))), "back");
});

Deno.test("dial() rejects at connectTimeout when onConnect never succeeds", async () => {
  await using server = serveLoopback({ handler: (p) => p });
  const refusal = new Error("sign-on refused");
  let attempts = 0;
  const start = performance.now();
  const error = await dialError(dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: false,
    connectTimeout: 300,
    reconnect: FAST_RECONNECT,
    onConnect: () => {
      attempts++;
      throw refusal;
    },
  }));
  const elapsed = performance.now() - start;
  assert.ok(error instanceof ConnectionError, `got ${error}`);
  assert.equal(error.cause, refusal);
  assert.ok(attempts >= 2, `${attempts} attempts`);
  assert.ok(elapsed >= 290 && elapsed < 3000, `after ${elapsed} ms`);
});

// ---------------------------------------------------------------------------
// Heartbeat and idle timeout

Deno.test("Client heartbeat closes a session whose peer never answers pings", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  const interval = 200;
  await using client = forceOnDispose(
    await dial(peer.target, {
      heartbeat: { interval },
      reconnect: { initial: 5000, max: 5000 },
    }),
  );
  const connected = performance.now();
  const conn = await accepted;
  using log = events(client);
  let pings = 0;
  const blackhole = conn.drainAll((frame) => {
    if (frame.kind === FrameKind.Ping) pings++;
  });
  const disconnect = await log.next("disconnect", { timeout: 5000 });
  const elapsed = disconnect.at - connected;
  const reason = (disconnect.detail as Detail<"disconnect">).reason;
  assert.ok(reason instanceof ConnectionClosedError, `reason: ${reason}`);
  assert.match(reason.message, /heartbeat/);
  assert.ok(elapsed < 2 * interval + 300, `closed after ${elapsed} ms`);
  assert.ok(elapsed >= interval, `closed after ${elapsed} ms`);
  assert.equal(await blackhole, pings);
  assert.ok(pings >= 2, `${pings} pings`);
});

Deno.test("Client heartbeat keeps a session to a real server up across several intervals", async () => {
  await using server = serveLoopback({ handler: (p) => p });
  // Each ping waits interval/2 for its pong: 200 ms, room enough for a
  // loaded machine.
  const interval = 400;
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: { interval },
  });
  using log = events(client);
  const start = client.stats();
  // Pings go out after interval/2 of silence: wait for a handful of pongs.
  await pollUntil(() => client.stats().messagesIn - start.messagesIn >= 6, {
    interval: 20,
    timeout: 10_000,
  });
  const stats = client.stats();
  assert.ok(stats.messagesOut - start.messagesOut >= 6);
  assert.deepEqual(log.types.filter((t) => t === "disconnect"), []);
  assert.equal(stats.sessions.ready, 1);
  assert.equal(stats.timeouts, 0);
  assert.equal(stats.pending, 0);
  assert.equal(dec(await client.request(enc("still here"))), "still here");
});

Deno.test("dial() option idleTimeout closes a silent session", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, {
      heartbeat: false,
      idleTimeout: 200,
      reconnect: { initial: 5000, max: 5000 },
    }),
  );
  const connected = performance.now();
  const conn = await accepted;
  using log = events(client);
  const sink = conn.drainAll();
  const disconnect = await log.next("disconnect", { timeout: 5000 });
  const elapsed = disconnect.at - connected;
  const reason = (disconnect.detail as Detail<"disconnect">).reason;
  assert.ok(reason instanceof ConnectionClosedError, `reason: ${reason}`);
  assert.match(reason.message, /idleTimeout/);
  assert.ok(elapsed >= 190 && elapsed < 1000, `closed after ${elapsed} ms`);
  await sink;
});

// ---------------------------------------------------------------------------
// Pushes

Deno.test("Client handler receives server pushes; pushing back is explicit (a returned value is not sent)", async () => {
  const fromClient: string[] = [];
  const gotBack = new Counter();
  await using server = serveLoopback({
    handler: async (p, { session }) => {
      const text = dec(p);
      if (text.startsWith("push-me")) {
        await session.send(enc(`hello ${text}`));
        return enc("pushed");
      }
      fromClient.push(text);
      gotBack.increment();
      return undefined;
    },
  });
  const received: string[] = [];
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: false,
    handler: async (p, { session, kind, expectsReply }) => {
      received.push(`first: ${dec(p)} (${kind}, ${expectsReply})`);
      await session.send(enc(`thanks for ${dec(p)}`));
      return enc("not sent: a push owes no reply");
    },
  });
  assert.equal(dec(await client.request(enc("push-me 1"))), "pushed");
  await gotBack.reach(1);
  assert.deepEqual(received, ["first: hello push-me 1 (push, false)"]);
  assert.deepEqual(fromClient, ["thanks for hello push-me 1"]);

  const second = (
    p: Uint8Array,
    { client: owner }: ClientHandlerContext<Uint8Array>,
  ) => {
    received.push(`second: ${dec(p)}`);
    void owner.send(enc("from the second handler"));
    return undefined;
  };
  client.handler = second;
  assert.equal(client.handler, second);
  await client.request(enc("push-me 2"));
  await gotBack.reach(2);
  assert.deepEqual(received.slice(1), ["second: hello push-me 2"]);
  assert.equal(fromClient[1], "from the second handler");

  // client.send() is a push the other way.
  await client.send(enc("a client push"));
  await gotBack.reach(3);
  assert.equal(fromClient[2], "a client push");
  assert.equal(fromClient.length, 3);
});

Deno.test("Client handler answers the server's own requests; a throwing handler gives the server a RemoteError", async () => {
  const asked = Promise.withResolvers<unknown[]>();
  await using server = serveLoopback({
    handler: async (_p, { session }) => {
      const results: unknown[] = [];
      results.push(dec(await session.request(enc("what is 6 x 7?"))));
      results.push(await session.request(enc("fail please")).catch((e) => e));
      asked.resolve(results);
      return enc("done");
    },
  });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: false,
    handler: (p) => {
      if (dec(p) === "fail please") throw new Error("client says no");
      return enc("42");
    },
  });
  assert.equal(dec(await client.request(enc("go"))), "done");
  const [answer, error] = await asked.promise;
  assert.equal(answer, "42");
  assert.ok(error instanceof RemoteError, `got ${error}`);
  assert.equal(error.message, "client says no");
  assert.equal(client.stats().handlerErrors, 1);
});

// ---------------------------------------------------------------------------
// Custom codecs

Deno.test("dial() with lengthPrefixed({ correlationId }) matches replies by the id in the body", async () => {
  const codec = lengthPrefixed({ correlationId: idOf });
  const release = Promise.withResolvers<void>();
  await using server = serve({
    hostname: HOST,
    port: 0,
    codec,
    handler: async (m: Uint8Array) => {
      if (textOf(m) === "hold") await release.promise;
      return idMessage(idOf(m)!, `re: ${textOf(m)}`);
    },
  });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, codec);
  // Out of order: 3 waits while 1 and 2 are answered.
  const held = client.request(idMessage(3, "hold"));
  const replies = await Promise.all([
    client.request(idMessage(1, "one")),
    client.request(idMessage(2, "two")),
  ]);
  assert.deepEqual(replies.map(textOf), ["re: one", "re: two"]);
  assert.deepEqual(replies.map(idOf), [1, 2]);

  // A second request with the pending id 3: refused, the first untouched.
  const error = await client.request(idMessage(3, "again")).catch((e) => e);
  assert.ok(error instanceof DuplicateIdError, `got ${error}`);
  assert.equal(error.id, 3);
  assert.equal(client.stats().pending, 1);

  release.resolve();
  const reply = await held;
  assert.equal(idOf(reply), 3);
  assert.equal(textOf(reply), "re: hold");
  assert.equal(client.stats().pending, 0);
});

Deno.test('dial() with correlation: "fifo" matches replies in request order', async () => {
  const codec = lengthPrefixed();
  await using peer = rawPeer(codec);
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, codec, {
      correlation: "fifo",
    }),
  );
  const conn = await accepted;
  const replies = Promise.all(
    ["a", "b", "c"].map((x) => client.request(enc(x))),
  );
  const got: string[] = [];
  for (let i = 0; i < 3; i++) got.push(dec((await conn.read())!));
  assert.deepEqual(got, ["a", "b", "c"]);
  await conn.write(enc("ra"), enc("rb"), enc("rc"));
  assert.deepEqual((await replies).map(dec), ["ra", "rb", "rc"]);
  assert.equal(client.stats().pending, 0);
  await client.close({ timeout: 0 });
});

Deno.test('dial() with correlation: "fifo" drops the late reply of a timed-out request without shifting the others', async () => {
  const codec = lengthPrefixed();
  await using peer = rawPeer(codec);
  const accepted = peer.accept();
  const pushes: string[] = [];
  await using client = forceOnDispose(
    await dial(peer.target, codec, {
      correlation: "fifo",
      handler: (m) => {
        pushes.push(dec(m));
      },
    }),
  );
  const conn = await accepted;
  const a = client.request(enc("a"), { timeout: 5000 });
  const b = client.request(enc("b"), { timeout: 50 });
  const c = client.request(enc("c"), { timeout: 5000 });
  for (let i = 0; i < 3; i++) await conn.read();
  await assert.rejects(b, TimeoutError);
  await conn.write(enc("ra"), enc("rb"), enc("rc"));
  assert.equal(dec(await a), "ra");
  assert.equal(dec(await c), "rc");
  assert.equal(client.stats().lateReplies, 1);
  assert.deepEqual(pushes, []);
  // The next request lines up with the next reply.
  const d = client.request(enc("d"));
  assert.equal(dec((await conn.read())!), "d");
  await conn.write(enc("rd"));
  assert.equal(dec(await d), "rd");
  assert.equal(client.stats().pending, 0);
  await client.close({ timeout: 0 });
});

Deno.test("dial() heartbeat.message pings a custom-codec peer and closes the session when it never answers", async () => {
  const codec = lengthPrefixed({ correlationId: idOf });
  await using peer = rawPeer(codec);
  const accepted = peer.accept();
  let nextId = 1;
  const interval = 200;
  await using client = forceOnDispose(
    await dial(peer.target, codec, {
      heartbeat: { interval, message: () => idMessage(nextId++, "echo") },
      reconnect: { initial: 5000, max: 5000 },
    }),
  );
  const connected = performance.now();
  const conn = await accepted;
  using log = events(client);
  const seen: string[] = [];
  const blackhole = conn.drainAll((m) => seen.push(textOf(m)));
  const disconnect = await log.next("disconnect", { timeout: 5000 });
  const reason = (disconnect.detail as Detail<"disconnect">).reason;
  assert.ok(reason instanceof ConnectionClosedError, `reason: ${reason}`);
  assert.match(reason.message, /heartbeat/);
  assert.ok(disconnect.at - connected < 2 * interval + 300);
  await blackhole;
  assert.ok(seen.length >= 2 && seen.every((t) => t === "echo"));
  assert.equal(client.stats().pending, 0);
});

Deno.test("dial() heartbeat.message keeps a session to a custom-codec server up", async () => {
  const codec = lengthPrefixed({ correlationId: idOf });
  const echoes = new Counter();
  await using server = serve({
    hostname: HOST,
    port: 0,
    codec,
    handler: (m: Uint8Array) => {
      if (textOf(m) === "echo") echoes.increment();
      return m;
    },
  });
  let nextId = 1;
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, codec, {
    // Each heartbeat waits 200 ms for its answer: room for a loaded machine.
    heartbeat: { interval: 400, message: () => idMessage(nextId++, "echo") },
  });
  using log = events(client);
  await withTimeout(echoes.reach(5), 10_000, "five echoes");
  assert.deepEqual(log.types, []);
  assert.equal(client.stats().timeouts, 0);
  assert.equal(client.stats().lateReplies, 0);
  const reply = await client.request(idMessage(1_000_000, "business"));
  assert.equal(textOf(reply), "business");
});

Deno.test("dial() rejects bad options with TypeError or RangeError", async () => {
  await using server = serveLoopback({ handler: (p) => p });
  const target = `${HOST}:${portOf(server.addr)}`;
  await assert.rejects(dial([]), TypeError);
  await assert.rejects(dial("no port here"), TypeError);
  await assert.rejects(dial(`${HOST}:70000`), RangeError);
  await assert.rejects(dial(target, { sessions: 0 }), RangeError);
  await assert.rejects(dial(target, { requestTimeout: -1 }), RangeError);
  // A custom codec without correlationId needs correlation: "fifo".
  await assert.rejects(dial(target, lengthPrefixed()), TypeError);
  // A custom codec's heartbeat needs a message.
  await assert.rejects(
    dial(target, lengthPrefixed(), {
      correlation: "fifo",
      heartbeat: { interval: 100 },
    }),
    TypeError,
  );
});

// ---------------------------------------------------------------------------
// close()

Deno.test("Client.close() lets pending requests finish and rejects new ones with ClosedError", async () => {
  const release = Promise.withResolvers<void>();
  const received = Promise.withResolvers<void>();
  await using server = serveLoopback({
    handler: async (p) => {
      if (dec(p) === "hold") {
        received.resolve();
        await release.promise;
      }
      return p;
    },
  });
  const client = await dial(`${HOST}:${portOf(server.addr)}`);
  using log = events(client);
  const pending = client.request(enc("hold"));
  await received.promise;
  const closing = client.close();
  assert.equal(client.isClosed, true);
  await assert.rejects(client.request(enc("new")), ClosedError);
  await assert.rejects(client.send(enc("new")), ClosedError);
  release.resolve();
  assert.equal(dec(await pending), "hold");
  await closing;
  await client.closed;
  await client.close(); // twice is fine
  await client[Symbol.asyncDispose]();
  assert.equal(client.sessions.length, 0);
  assert.equal(client.stats().pending, 0);
  const disconnect = await log.next("disconnect");
  assert.equal(
    (disconnect.detail as Detail<"disconnect">).reason,
    undefined,
    "a graceful close has no error reason",
  );
  await log.next("close");
});

Deno.test("Client supports await using disposal", async () => {
  await using server = serveLoopback({ handler: (p) => p });
  let escaped: Client<Uint8Array>;
  {
    await using client = await dial(`${HOST}:${portOf(server.addr)}`);
    escaped = client;
    await client.request(enc("x"));
  }
  assert.equal(escaped.isClosed, true);
  await escaped.closed;
  assert.equal(escaped.sessions.length, 0);
});

Deno.test("Client.close({ timeout: 0 }) forces: pending requests reject at once", async () => {
  const release = Promise.withResolvers<void>();
  const received = Promise.withResolvers<void>();
  await using server = serveLoopback({
    handler: async (p) => {
      received.resolve();
      await release.promise;
      return p;
    },
  });
  const client = await dial(`${HOST}:${portOf(server.addr)}`);
  const pending = client.request(enc("hold"), { timeout: 10_000 });
  await received.promise;
  const start = performance.now();
  await client.close({ timeout: 0 });
  const error = await pending.catch((e) => e);
  assert.ok(
    error instanceof ConnectionClosedError || error instanceof ClosedError,
    `got ${error}`,
  );
  assert.ok(performance.now() - start < 1000);
  await client.closed;
  release.resolve();
});

Deno.test("dial() and Client.close() never treat a huge or infinite timeout as 0", async (t) => {
  // setTimeout takes a signed 32-bit delay: Infinity and 2^32 become 0.
  // Such a timeout must either work (wait) or be refused with RangeError.
  // The sign-on and the in-flight request below take 50 ms, so a timer that
  // fires at once always wins against them.
  const slow = () => new Promise((resolve) => setTimeout(resolve, 50));
  await using server = serveLoopback({
    handler: async (p) => {
      if (dec(p) !== "fast") await slow();
      return p;
    },
  });
  const target = `${HOST}:${portOf(server.addr)}`;
  for (const value of [Infinity, 2 ** 32]) {
    await t.step(`dial() with connectTimeout ${value}`, async () => {
      let client: Client<Uint8Array> | undefined;
      try {
        client = await dial(target, {
          connectTimeout: value,
          heartbeat: false,
          onConnect: async (session) => {
            await session.request(enc("slow sign-on"));
          },
        });
        assert.equal(dec(await client.request(enc("fast"))), "fast");
      } catch (error) {
        assert.ok(
          error instanceof RangeError,
          `connectTimeout ${value} failed at once: ${error}`,
        );
      } finally {
        await client?.close({ timeout: 0 });
      }
    });
    await t.step(`Client.close() with timeout ${value}`, async () => {
      const client = await dial(target, { heartbeat: false });
      const pending = client.request(enc("slow")).catch((e) => e);
      let closing: Promise<void> | undefined;
      try {
        closing = client.close({ timeout: value });
      } catch (error) {
        assert.ok(error instanceof RangeError, `got ${error}`);
      }
      const outcome = await pending;
      await closing?.catch((e) => assert.ok(e instanceof RangeError));
      await client.close({ timeout: 0 });
      if (closing !== undefined) {
        assert.ok(
          outcome instanceof Uint8Array,
          `close({ timeout: ${value} }) forced the pending request: ${outcome}`,
        );
      }
    });
  }
});

// ---------------------------------------------------------------------------
// stats() and events

Deno.test("Client.stats() and events report connect, ready, disconnect, reconnecting, error and close", async () => {
  const server = serveLoopback({ handler: (p) => p });
  const port = portOf(server.addr);
  const client = await dial(`${HOST}:${port}`, {
    heartbeat: false,
    reconnect: FAST_RECONNECT,
  });
  using log = events(client);
  try {
    await client.request(enc("abc"));
    let stats = client.stats();
    assert.equal(stats.sessions.ready, 1);
    assert.equal(stats.sessions.connecting, 0);
    assert.ok(stats.messagesOut >= 1 && stats.messagesIn >= 1);
    assert.ok(stats.bytesOut >= 12 && stats.bytesIn >= 12);
    assert.equal(stats.pending, 0);
    assert.equal(stats.waiting, 0);
    assert.equal(stats.reconnects, 0);

    // The server drops the session.
    server.sessions[0]!.close(new Error("kicked"));
    const disconnect = (await log.next("disconnect"))
      .detail as Detail<"disconnect">;
    assert.equal(disconnect.endpoint, `${HOST}:${port}`);
    assert.equal(typeof disconnect.session, "number");
    assert.ok(disconnect.reason instanceof ConnectionClosedError);
    const reconnecting = (await log.next("reconnecting"))
      .detail as Detail<"reconnecting">;
    assert.equal(reconnecting.endpoint, `${HOST}:${port}`);
    assert.equal(reconnecting.attempt, 1);
    assert.ok(reconnecting.delay >= 0 && reconnecting.delay <= 50);
    const connect = (await log.next("connect")).detail as Detail<"connect">;
    const ready = (await log.next("ready")).detail as Detail<"ready">;
    assert.equal(connect.session, ready.session);
    assert.notEqual(ready.session, disconnect.session);
    assert.equal(client.stats().reconnects, 1);

    // The server goes away: connection attempts fail with error events.
    await server.close();
    await log.next("disconnect");
    const error = (await log.next("error")).detail as Detail<"error">;
    assert.ok(error.error instanceof ConnectionError, `got ${error.error}`);
    await log.next("reconnecting");
    stats = client.stats();
    assert.equal(stats.sessions.ready, 0);
    assert.ok(stats.reconnects >= 2);
  } finally {
    await client.close();
    await server.shutdown();
  }
  await log.next("close");
});
