/**
 * Server tests over real loopback sockets: the forms of `serve()`, handlers,
 * pushes, server → client requests, a rolling restart under load, many
 * sessions, limits, bad input and the PROXY protocol.
 */

import assert from "node:assert/strict";
import {
  type Client,
  ConnectionClosedError,
  delay,
  dial,
  encodeProxyHeaderV1,
  encodeProxyHeaderV2,
  FrameKind,
  type HandlerContext,
  ProtocolError,
  RemoteError,
  serve,
  type Server,
  type ServerEventDetail,
  type Session,
  SlowConsumerError,
} from "../mod.ts";
import { withTimeout } from "./_process.ts";
import {
  bytes,
  CaptureLogger,
  connectRaw,
  encodeFrame,
  frameHeader,
  latch,
  nextEvents,
  text,
} from "./_raw_peer.ts";

const HOST = "127.0.0.1";

function portOf(server: { addr: Deno.Addr }): number {
  const addr = server.addr;
  assert.equal(addr.transport, "tcp");
  return (addr as Deno.NetAddr).port;
}

function endpointOf(
  server: { addr: Deno.Addr },
): { hostname: string; port: number } {
  return { hostname: HOST, port: portOf(server) };
}

const echo = (payload: Uint8Array) => payload;

type Detail<K extends ServerEventDetail["type"]> = Extract<
  ServerEventDetail,
  { type: K }
>;

/** Messages received by a client handler, with a way to wait for the n-th. */
class Inbox {
  readonly messages: string[] = [];
  #waiters: { n: number; resolve: () => void }[] = [];

  readonly handler = (payload: Uint8Array): undefined => {
    this.messages.push(text(payload));
    for (const waiter of [...this.#waiters]) {
      if (this.messages.length >= waiter.n) {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
    return undefined;
  };

  /** Resolves once `n` messages have arrived in total. */
  async count(n: number): Promise<string[]> {
    if (this.messages.length < n) {
      const { promise, resolve } = Promise.withResolvers<void>();
      this.#waiters.push({ n, resolve });
      await withTimeout(promise, 5000, `message ${n}`);
    }
    return this.messages.slice(0, n);
  }
}

/** A counter with a promise for reaching a value. */
class Counter {
  value = 0;
  #waiters: { at: number; resolve: () => void }[] = [];

  add(): void {
    this.value++;
    for (const waiter of [...this.#waiters]) {
      if (this.value >= waiter.at) {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
  }

  reach(at: number, ms = 10_000): Promise<void> {
    if (this.value >= at) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#waiters.push({ at, resolve });
    return withTimeout(promise, ms, `counter reaching ${at}`);
  }
}

// ---------------------------------------------------------------------------
// serve() forms

Deno.test("serve() turns Nagle's algorithm off on accepted TCP connections (setNoDelay), as dial() does", async () => {
  // Deno leaves TCP_NODELAY off: a small reply written while an earlier one
  // is unacknowledged would wait for the peer's (possibly delayed) ACK.
  const calls: boolean[] = [];
  const inner = Deno.listen({ hostname: HOST, port: 0 });
  const spy = (conn: Deno.TcpConn): Deno.TcpConn => {
    const setNoDelay = conn.setNoDelay.bind(conn);
    conn.setNoDelay = (on = true) => {
      calls.push(on);
      setNoDelay(on);
    };
    return conn;
  };
  const listener = {
    addr: inner.addr,
    accept: async () => spy(await inner.accept()),
    close: () => inner.close(),
    [Symbol.asyncIterator]: () => {
      throw new Error("not used");
    },
  };
  await using server = serve({ listener, handler: echo });
  await using client = await dial(endpointOf(server));
  assert.equal(text(await client.request(bytes("hi"))), "hi");
  assert.deepEqual(calls, [true]);
});

Deno.test("serve() with a handler in options knows addr at once and calls onListen with it", async () => {
  let listened: Deno.Addr | undefined;
  await using server = serve({
    hostname: HOST,
    port: 0,
    handler: echo,
    onListen: (addr) => {
      listened = addr;
    },
  });
  // Known synchronously, before any await.
  assert.ok(portOf(server) > 0);
  assert.deepEqual(listened, server.addr);
  await using client = await dial(endpointOf(server));
  assert.equal(text(await client.request(bytes("hello"))), "hello");
});

Deno.test("serve() takes the handler as a second argument", async () => {
  await using server = serve(
    { hostname: HOST, port: 0 },
    (payload) => bytes(`got ${text(payload)}`),
  );
  await using client = await dial(endpointOf(server));
  assert.equal(text(await client.request(bytes("x"))), "got x");
});

Deno.test("serve() serves connections from a user's Deno.listen listener", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const server = serve({ listener }, (payload) => payload.toReversed());
  assert.deepEqual(server.addr, listener.addr);
  const client = await dial({ hostname: HOST, port: listener.addr.port });
  try {
    assert.deepEqual([...await client.request(new Uint8Array([1, 2, 3]))], [
      3,
      2,
      1,
    ]);
  } finally {
    await client.close();
    await server.shutdown({ timeout: 1000 });
  }
  // The server owned the listener from then on and closed it.
  await assert.rejects(
    Deno.connect({ hostname: HOST, port: listener.addr.port }),
    Deno.errors.ConnectionRefused,
  );
});

Deno.test("serve() listens on a Unix socket path, and the path can be served again", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tcpbutler_" });
  const path = `${dir}/server.sock`;
  try {
    for (const round of [1, 2]) {
      await using server = serve({ path }, () => bytes(`unix ${round}`));
      assert.equal(server.addr.transport, "unix");
      assert.equal((server.addr as Deno.UnixAddr).path, path);
      await using client = await dial(`unix:${path}`);
      assert.equal(text(await client.request(bytes("?"))), `unix ${round}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve() runs two servers in one process side by side", async () => {
  await using a = serve({ hostname: HOST, port: 0 }, () => bytes("a"));
  await using b = serve({ hostname: HOST, port: 0 }, () => bytes("b"));
  assert.notEqual(portOf(a), portOf(b));
  await using toA = await dial(endpointOf(a));
  await using toB = await dial(endpointOf(b));
  const replies = await Promise.all([
    toA.request(bytes("")),
    toB.request(bytes("")),
    toA.request(bytes("")),
  ]);
  assert.deepEqual(replies.map(text), ["a", "b", "a"]);
  // messagesIn also counts each client's connect ping.
  assert.equal(a.stats().messagesIn, 2 + 1);
  assert.equal(b.stats().messagesIn, 1 + 1);
});

// ---------------------------------------------------------------------------
// Handlers

Deno.test("Server handler replies with sync and async values", async () => {
  await using server = serve({ hostname: HOST, port: 0 }, (payload) => {
    const word = text(payload);
    if (word === "sync") return bytes("sync reply");
    return Promise.resolve().then(() => bytes("async reply"));
  });
  await using client = await dial(endpointOf(server));
  const [a, b] = await Promise.all([
    client.request(bytes("sync")),
    client.request(bytes("async")),
  ]);
  assert.equal(text(a), "sync reply");
  assert.equal(text(b), "async reply");
});

Deno.test("Server handler context.session is the server's session of that client", async () => {
  const seen: HandlerContext<Uint8Array>[] = [];
  await using server = serve({ hostname: HOST, port: 0 }, (payload, ctx) => {
    seen.push(ctx);
    return payload;
  });
  await using client = await dial(endpointOf(server));
  await client.request(bytes("one"));
  await client.request(bytes("two"));
  assert.equal(seen.length, 2);
  const session = seen[0]!.session;
  assert.equal(seen[1]!.session, session);
  assert.equal(session.side, "server");
  assert.equal(session.state, "ready");
  assert.deepEqual(server.sessions, [session]);
  const clientSession = client.sessions[0]!;
  assert.equal(
    (session.remoteAddr as Deno.NetAddr).port,
    (clientSession.localAddr as Deno.NetAddr).port,
  );
  assert.equal(seen[0]!.signal.aborted, false);
});

Deno.test("Server handler context.signal aborts when the server closes the session", async () => {
  const started = Promise.withResolvers<HandlerContext<Uint8Array>>();
  await using server = serve({ hostname: HOST, port: 0 }, (_payload, ctx) => {
    started.resolve(ctx);
    return new Promise<Uint8Array>((resolve) =>
      ctx.signal.addEventListener(
        "abort",
        () => resolve(bytes("aborted")),
        { once: true },
      )
    );
  });
  await using client = await dial(endpointOf(server), {
    reconnect: { maxAttempts: 1 },
  });
  const reply = client.request(bytes("wait"));
  const ctx = await withTimeout(started.promise, 5000, "handler start");
  assert.equal(ctx.signal.aborted, false);
  const gone = nextEvents(server, "disconnect");
  ctx.session.close(new Error("closed by the test"));
  assert.equal(ctx.signal.aborted, true);
  await gone;
  await assert.rejects(reply, ConnectionClosedError);
});

Deno.test("Server handler context.signal aborts when the client goes away mid-request", async () => {
  const started = Promise.withResolvers<HandlerContext<Uint8Array>>();
  const aborted = Promise.withResolvers<void>();
  const server = serve({ hostname: HOST, port: 0 }, (_payload, ctx) => {
    started.resolve(ctx);
    return new Promise<Uint8Array>((resolve) =>
      ctx.signal.addEventListener("abort", () => {
        aborted.resolve();
        resolve(bytes("too late"));
      }, { once: true })
    );
  });
  try {
    await using raw = await connectRaw(portOf(server));
    await raw.request(1, "slow");
    await withTimeout(started.promise, 5000, "handler start");
    raw.close();
    // Go's net/http cancels a request's context when its client's
    // connection closes; a handler must not wait forever for a peer that is gone.
    await withTimeout(aborted.promise, 2000, "context.signal abort");
  } finally {
    await server.shutdown({ timeout: 200 });
  }
});

Deno.test("Server handler context.signal is aborted when first read after the client went away", async () => {
  const started = Promise.withResolvers<void>();
  const aborted = Promise.withResolvers<void>();
  const server = serve(
    { hostname: HOST, port: 0 },
    async (_payload, ctx) => {
      // The server's own request to the peer fails once the peer's EOF is read.
      const own = ctx.session.request(bytes("still there?"), {
        timeout: 10_000,
      });
      started.resolve();
      await own.catch(() => {});
      // Only now does the handler look at its signal.
      const signal = ctx.signal;
      return new Promise<Uint8Array>((resolve) => {
        const done = () => {
          aborted.resolve();
          resolve(bytes("too late"));
        };
        if (signal.aborted) done();
        else signal.addEventListener("abort", done, { once: true });
      });
    },
  );
  try {
    await using raw = await connectRaw(portOf(server));
    await raw.request(1, "slow");
    await withTimeout(started.promise, 5000, "handler start");
    raw.close();
    await withTimeout(aborted.promise, 2000, "context.signal abort");
  } finally {
    await server.shutdown({ timeout: 200 });
  }
});

Deno.test("Server handler that throws sends RemoteError with its message and the session keeps serving", async () => {
  await using server = serve({ hostname: HOST, port: 0 }, (payload) => {
    const word = text(payload);
    if (word === "throw") throw new Error("sync boom");
    if (word === "reject") return Promise.reject(new Error("async boom"));
    if (word === "string") throw "a thrown string";
    return bytes(`ok ${word}`);
  });
  await using client = await dial(endpointOf(server));
  await assert.rejects(client.request(bytes("throw")), (error: unknown) => {
    assert.ok(error instanceof RemoteError);
    assert.equal(error.message, "sync boom");
    return true;
  });
  await assert.rejects(client.request(bytes("reject")), {
    name: "RemoteError",
    message: "async boom",
  });
  await assert.rejects(client.request(bytes("string")), {
    name: "RemoteError",
    message: "a thrown string",
  });
  assert.equal(text(await client.request(bytes("after"))), "ok after");
  const stats = server.stats();
  assert.equal(stats.handlerErrors, 3);
  assert.equal(stats.accepted, 1);
  assert.equal(stats.sessions, 1);
});

Deno.test("Server handler returning undefined answers a request with an empty response", async () => {
  await using server = serve({ hostname: HOST, port: 0 }, (payload) => {
    if (text(payload) === "async") return Promise.resolve(undefined);
    return undefined;
  });
  await using client = await dial(endpointOf(server));
  assert.equal((await client.request(bytes("sync"))).length, 0);
  assert.equal((await client.request(bytes("async"))).length, 0);
  // On the wire: a Response frame with the request's id and no payload.
  await using raw = await connectRaw(portOf(server));
  await raw.request(77, "sync");
  const frame = await raw.expect(FrameKind.Response);
  assert.equal(frame.id, 77);
  assert.equal(frame.payload.length, 0);
});

Deno.test("Server handler without a handler set answers requests with an error", async () => {
  await using server = serve({ hostname: HOST, port: 0 });
  await using client = await dial(endpointOf(server));
  await assert.rejects(client.request(bytes("x")), RemoteError);
  server.handler = (payload) => payload;
  assert.equal(text(await client.request(bytes("now"))), "now");
});

Deno.test("Server handler returning a value that is not a Uint8Array answers with RemoteError", async () => {
  await using server = serve(
    { hostname: HOST, port: 0 },
    // deno-lint-ignore no-explicit-any
    (() => "a string, not bytes") as any,
  );
  await using client = await dial(endpointOf(server));
  await assert.rejects(client.request(bytes("x")), (error: unknown) => {
    assert.ok(error instanceof RemoteError);
    assert.match(error.message, /Uint8Array/);
    return true;
  });
  assert.equal(server.stats().sessions, 1);
});

Deno.test("Server handler returning a payload over maxFrameBytes answers with an error and keeps the session", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    maxFrameBytes: 1024,
    handler: (payload) =>
      text(payload) === "big" ? new Uint8Array(4096) : payload,
  });
  await using client = await dial(endpointOf(server), {
    maxFrameBytes: 1024,
  });
  const before = client.sessions[0]!;
  const [big, other] = await Promise.allSettled([
    client.request(bytes("big")),
    client.request(bytes("other")),
  ]);
  assert.equal(big.status, "rejected");
  assert.ok(
    big.reason instanceof RemoteError,
    `big reply failed with ${String(big.reason)}`,
  );
  assert.equal(
    other.status,
    "fulfilled",
    String((other as PromiseRejectedResult).reason),
  );
  assert.equal(text(other.value), "other");
  assert.equal(text(await client.request(bytes("after"))), "after");
  assert.equal(client.sessions[0], before, "the same session still serves");
  assert.equal(client.stats().protocolErrors, 0);
});

// ---------------------------------------------------------------------------
// Push and server → client requests

Deno.test("Session.send() pushes to one client and Server.broadcast() to all ready ones, returning the count", async () => {
  const byName = new Map<string, Session<Uint8Array>>();
  await using server = serve({ hostname: HOST, port: 0 }, (payload, ctx) => {
    byName.set(text(payload), ctx.session);
    return undefined;
  });
  const inboxA = new Inbox();
  const inboxB = new Inbox();
  await using a = await dial(endpointOf(server), { handler: inboxA.handler });
  await using b = await dial(endpointOf(server), { handler: inboxB.handler });
  await a.request(bytes("a"));
  await b.request(bytes("b"));
  await byName.get("a")!.send(bytes("only for a"));
  assert.deepEqual(await inboxA.count(1), ["only for a"]);
  assert.equal(server.broadcast(bytes("for all")), 2);
  assert.deepEqual(await inboxA.count(2), ["only for a", "for all"]);
  // Per-session order: b's first push is the broadcast, so it never got a's.
  assert.deepEqual(await inboxB.count(1), ["for all"]);
});

Deno.test("Session.send() and Server.broadcast() send the message as it was when called (the buffer may be reused at once)", async () => {
  let session: Session<Uint8Array> | undefined;
  await using server = serve({ hostname: HOST, port: 0 }, (_, ctx) => {
    session = ctx.session;
    return undefined;
  });
  const inbox = new Inbox();
  await using client = await dial(endpointOf(server), {
    handler: inbox.handler,
  });
  await client.request(bytes("hello"));
  const buffer = new Uint8Array(1);
  const sent: Promise<void>[] = [];
  for (const letter of "abc") {
    buffer[0] = letter.charCodeAt(0);
    sent.push(session!.send(buffer));
  }
  buffer[0] = "d".charCodeAt(0);
  assert.equal(server.broadcast(buffer), 1);
  buffer[0] = "z".charCodeAt(0);
  await Promise.all(sent);
  assert.deepEqual(await inbox.count(4), ["a", "b", "c", "d"]);
});

Deno.test("Session.send() and Session.request() of a message that overflows maxWriteBytes reject with the cut-off, as do the sends queued before them", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    handler: echo,
    // Room for exactly one largest frame: the small send queued first makes
    // the largest one overflow.
    maxWriteBytes: 64 * 1024 + 9,
    maxFrameBytes: 64 * 1024,
  });
  const tooBig = new Uint8Array(64 * 1024);
  const cutOff = async (settles: Promise<unknown>) => {
    const error = await withTimeout(
      settles.then(() => undefined, (e: unknown) => e),
      5000,
      "the call settles",
    );
    assert.ok(error instanceof ConnectionClosedError, String(error));
    assert.ok(error.cause instanceof SlowConsumerError, String(error.cause));
  };
  for (const call of ["send", "request"] as const) {
    await using client = await dial(endpointOf(server));
    await client.request(bytes("hello"));
    const session = server.sessions.at(-1)!;
    const queued = session.send(bytes("small"));
    await cutOff(session[call](tooBig));
    await cutOff(queued);
    assert.equal(session.state, "closed");
  }
});

Deno.test("Session.request() from the server is answered by the client's handler (bidirectional)", async () => {
  await using server = serve(
    { hostname: HOST, port: 0 },
    async (payload, ctx) => {
      const answer = await ctx.session.request(
        bytes(`question about ${text(payload)}`),
      );
      return bytes(`server heard: ${text(answer)}`);
    },
  );
  await using client = await dial(endpointOf(server), {
    handler: (payload) => bytes(`answer to ${text(payload)}`),
  });
  assert.equal(
    text(await client.request(bytes("cats"))),
    "server heard: answer to question about cats",
  );
  // From outside a handler too, many at once.
  const session = server.sessions[0]!;
  const answers = await Promise.all(
    Array.from({ length: 20 }, (_, i) => session.request(bytes(`q${i}`))),
  );
  assert.deepEqual(
    answers.map(text),
    Array.from({ length: 20 }, (_, i) => `answer to q${i}`),
  );
});

// ---------------------------------------------------------------------------
// Rolling restart

/** Serves on a given port, retrying while the port is still taken. */
async function serveOn(
  port: number,
  handler: (payload: Uint8Array) => Promise<Uint8Array>,
): Promise<Server<Uint8Array>> {
  for (let attempt = 0;; attempt++) {
    try {
      return serve({ hostname: HOST, port }, handler);
    } catch (error) {
      if (!(error instanceof Deno.errors.AddrInUse) || attempt >= 100) {
        throw error;
      }
      await delay(20);
    }
  }
}

Deno.test("Server.shutdown() during a rolling restart loses zero requests and the client's sessions come back", async () => {
  const handledBy = new Map<string, Counter>();
  const handlerFor = (name: string) => {
    const counter = new Counter();
    handledBy.set(name, counter);
    return async (payload: Uint8Array) => {
      counter.add();
      // A little asynchronous work, so requests are in flight at shutdown.
      await delay(Math.random() * 2);
      return payload;
    };
  };
  let a = serve({ hostname: HOST, port: 0 }, handlerFor("a1"));
  const b = serve({ hostname: HOST, port: 0 }, handlerFor("b"));
  const portA = portOf(a);
  const nameA = `${HOST}:${portA}`;
  let client: Client<Uint8Array> | undefined;
  let stop = false;
  const loops: Promise<void>[] = [];
  const ok = new Counter();
  let attempted = 0;
  const failures: unknown[] = [];
  try {
    client = await dial([nameA, `${HOST}:${portOf(b)}`], {
      sessions: 2,
      reconnect: { initial: 5, max: 50 },
    });
    const c = client;
    for (let loop = 0; loop < 8; loop++) {
      loops.push((async () => {
        for (let i = 0; !stop; i++) {
          attempted++;
          const payload = bytes(`${loop}:${i}`);
          try {
            const reply = await c.request(payload);
            assert.equal(text(reply), `${loop}:${i}`);
            ok.add();
          } catch (error) {
            failures.push(error);
          }
        }
      })());
    }
    await ok.reach(300);
    const backToA = nextEvents<{ endpoint: string }>(
      client,
      "ready",
      2,
      (detail) => detail.endpoint === nameA,
    );
    const report = await a.shutdown({ timeout: 5000 });
    assert.equal(report.forced, 0, "every session to A drained");
    assert.equal(report.drained, 2);
    assert.equal(report.handlersCut, 0);
    // A is down: load goes on against B alone.
    await ok.reach(ok.value + 300);
    a = await serveOn(portA, handlerFor("a2"));
    await withTimeout(backToA, 10_000, "client sessions back to A");
    // The new A takes its share of the load.
    await handledBy.get("a2")!.reach(100);
    await ok.reach(ok.value + 200);
  } finally {
    stop = true;
    await Promise.all(loops);
    await client?.close();
    await a.shutdown({ timeout: 1000 });
    await b.shutdown({ timeout: 1000 });
  }
  assert.deepEqual(failures, [], "zero failed requests");
  assert.equal(ok.value, attempted, "every request counted as a success");
  assert.equal(
    handledBy.get("a1")!.value + handledBy.get("a2")!.value +
      handledBy.get("b")!.value,
    attempted,
    "every request handled exactly once",
  );
});

// ---------------------------------------------------------------------------
// Many sessions

const fdLimit = Number(
  new TextDecoder().decode(
    (await new Deno.Command("sh", { args: ["-c", "ulimit -n"] }).output())
      .stdout,
  ).trim(),
) || 0;
const NEEDED_FDS = 2500;

Deno.test({
  name: fdLimit >= NEEDED_FDS
    ? "Server serves 1,000 concurrent client sessions, each making requests"
    : `Server serves 1,000 concurrent client sessions (skipped: ulimit -n is ${fdLimit}, needs ${NEEDED_FDS})`,
  ignore: fdLimit < NEEDED_FDS,
  async fn() {
    const SESSIONS = 1000;
    const perSession = new Map<number, number>();
    const server = serve({ hostname: HOST, port: 0 }, (payload, ctx) => {
      perSession.set(ctx.session.id, (perSession.get(ctx.session.id) ?? 0) + 1);
      return payload;
    });
    const connected = nextEvents(server, "connect", SESSIONS);
    let client: Client<Uint8Array> | undefined;
    try {
      client = await dial(endpointOf(server), {
        sessions: SESSIONS,
        connectTimeout: 30_000,
        heartbeat: false,
      });
      await withTimeout(connected, 30_000, "1000 server connects");
      const ready = client.stats().sessions.ready;
      if (ready < SESSIONS) {
        await withTimeout(
          nextEvents(client, "ready", SESSIONS - ready),
          30_000,
          "1000 ready sessions",
        );
      }
      assert.equal(server.stats().sessions, SESSIONS);
      const sessions = client.sessions;
      assert.equal(sessions.length, SESSIONS);
      const c = client;
      for (let round = 0; round < 3; round++) {
        const replies = await Promise.all(
          sessions.map((session, i) =>
            c.request(bytes(`${round}:${i}`), { session })
          ),
        );
        replies.forEach((reply, i) =>
          assert.equal(text(reply), `${round}:${i}`)
        );
      }
      assert.equal(perSession.size, SESSIONS);
      for (const count of perSession.values()) assert.equal(count, 3);
      assert.equal(server.stats().sessions, SESSIONS);
    } finally {
      await client?.close();
      const report = await server.shutdown({ timeout: 5000 });
      assert.equal(report.forced, 0);
    }
  },
});

// ---------------------------------------------------------------------------
// Limits

Deno.test("Server maxConnections closes a connection past the limit at once and counts it", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    maxConnections: 2,
    handler: echo,
  });
  const port = portOf(server);
  const twoIn = nextEvents(server, "connect", 2);
  await using first = await connectRaw(port);
  await using second = await connectRaw(port);
  await twoIn;
  await using third = await connectRaw(port);
  const end = await withTimeout(third.end(), 2000, "third connection end");
  assert.deepEqual(end.frames, []);
  assert.equal(server.stats().refused, 1);
  assert.equal(server.stats().sessions, 2);
  await first.request(1, "one");
  assert.equal(text((await first.expect(FrameKind.Response)).payload), "one");
  await second.request(2, "two");
  assert.equal(text((await second.expect(FrameKind.Response)).payload), "two");
  // A freed place is taken again.
  const left = nextEvents(server, "disconnect");
  first.close();
  await left;
  const backIn = nextEvents(server, "connect");
  await using fourth = await connectRaw(port);
  await backIn;
  await fourth.request(4, "four");
  assert.equal(text((await fourth.expect(FrameKind.Response)).payload), "four");
  assert.equal(server.stats().refused, 1);
});

Deno.test("Server maxConnections counts a connection whose onConnect hook is running once", async () => {
  const gate = Promise.withResolvers<void>();
  const hooks = latch(2);
  const hookStarted = latch(1);
  await using server = serve({
    hostname: HOST,
    port: 0,
    maxConnections: 2,
    handler: echo,
    onConnect: async () => {
      hookStarted.count();
      hooks.count();
      await gate.promise;
    },
  });
  const port = portOf(server);
  await using first = await connectRaw(port);
  await withTimeout(hookStarted.promise, 2000, "first onConnect");
  await using second = await connectRaw(port);
  // Two connections, limit two: both must get to their hook.
  const refusedOrHooked = await withTimeout(
    Promise.race([
      hooks.promise.then(() => "both hooked"),
      second.end().then(() => "second closed"),
    ]),
    2000,
    "second connection",
  );
  gate.resolve();
  assert.equal(refusedOrHooked, "both hooked");
  assert.equal(server.stats().refused, 0);
  await second.request(2, "two");
  assert.equal(text((await second.expect(FrameKind.Response)).payload), "two");
  await first.request(1, "one");
  assert.equal(text((await first.expect(FrameKind.Response)).payload), "one");
});

Deno.test("Server cuts off a peer that never reads its replies while a clean client keeps a 100 % success rate", async () => {
  const logger = new CaptureLogger();
  await using server = serve({
    hostname: HOST,
    port: 0,
    handler: echo,
    writeTimeout: 200,
    logger,
  });
  const port = portOf(server);
  await using clean = await dial(endpointOf(server));
  const rawIn = nextEvents<Detail<"connect">>(server, "connect");
  await using raw = await connectRaw(port);
  const rawSession = (await rawIn)[0]!.session;
  const rawGone = nextEvents<Detail<"disconnect">>(
    server,
    "disconnect",
    1,
    (detail) => detail.session === rawSession,
  );
  // The misbehaving peer: 64 KiB requests, written as fast as the server
  // takes them, never a read. Stops when the server cuts it off.
  const big = new Uint8Array(64 * 1024).fill(7);
  const frame = encodeFrame(FrameKind.Request, 0, big);
  let written = 0;
  const flood = (async () => {
    try {
      for (let i = 0; i < 4096; i++) {
        new DataView(frame.buffer).setUint32(5, i + 1);
        await raw.write(frame);
        written++;
      }
    } catch {
      // Cut off.
    }
  })();
  let stop = false;
  const ok = new Counter();
  const failures: unknown[] = [];
  const cleanLoop = (async () => {
    for (let i = 0; !stop; i++) {
      try {
        const reply = await clean.request(bytes(`clean ${i}`));
        assert.equal(text(reply), `clean ${i}`);
        ok.add();
      } catch (error) {
        failures.push(error);
      }
    }
  })();
  try {
    const [gone] = await withTimeout(rawGone, 10_000, "slow consumer cut-off");
    assert.ok(
      gone!.reason instanceof SlowConsumerError,
      `closed for ${String(gone!.reason)}`,
    );
    const entry = await logger.waitFor((e) =>
      e.message.includes("Cutting off")
    );
    assert.equal(entry.level, "warn");
    // The clean client keeps working after the cut-off too.
    await ok.reach(ok.value + 50);
  } finally {
    stop = true;
    await cleanLoop;
    raw.close();
    await flood;
  }
  assert.deepEqual(failures, []);
  assert.ok(ok.value >= 50);
  assert.ok(written > 0);
  assert.equal(server.stats().sessions, 1);
});

// ---------------------------------------------------------------------------
// Bad input

Deno.test("Server closes a session whose length header exceeds maxFrameBytes and counts a protocol error", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    maxFrameBytes: 1024,
    handler: echo,
  });
  await using clean = await dial(endpointOf(server));
  const rawIn = nextEvents<Detail<"connect">>(server, "connect");
  await using raw = await connectRaw(portOf(server));
  const id = (await rawIn)[0]!.session;
  const gone = nextEvents<Detail<"disconnect">>(
    server,
    "disconnect",
    1,
    (d) => d.session === id,
  );
  await raw.write(frameHeader(FrameKind.Request, 1, 1_000_000));
  const end = await withTimeout(raw.end(), 2000, "oversize end");
  assert.deepEqual(end.frames, []);
  const [detail] = await gone;
  assert.equal((detail!.reason as Error).name, "FrameTooLargeError");
  assert.equal(server.stats().protocolErrors, 1);
  assert.equal(text(await clean.request(bytes("fine"))), "fine");
  assert.equal(server.stats().sessions, 1);
});

Deno.test("Server closes a session that sends an unknown frame kind and counts a protocol error", async () => {
  await using server = serve({ hostname: HOST, port: 0, handler: echo });
  await using clean = await dial(endpointOf(server));
  const rawIn = nextEvents<Detail<"connect">>(server, "connect");
  await using raw = await connectRaw(portOf(server));
  const id = (await rawIn)[0]!.session;
  const gone = nextEvents<Detail<"disconnect">>(
    server,
    "disconnect",
    1,
    (d) => d.session === id,
  );
  // A valid request first: answered; then kind 42.
  await raw.request(1, "valid");
  assert.equal(text((await raw.expect(FrameKind.Response)).payload), "valid");
  await raw.write(encodeFrame(42, 2, bytes("what")));
  const end = await withTimeout(raw.end(), 2000, "unknown kind end");
  assert.deepEqual(end.frames, []);
  const [detail] = await gone;
  assert.ok(detail!.reason instanceof ProtocolError);
  assert.match((detail!.reason as Error).message, /unknown kind 42/);
  assert.equal(server.stats().protocolErrors, 1);
  assert.equal(text(await clean.request(bytes("fine"))), "fine");
});

Deno.test("Server ends a session whose peer sends a truncated frame then EOF", async () => {
  await using server = serve({ hostname: HOST, port: 0, handler: echo });
  await using clean = await dial(endpointOf(server));
  const rawIn = nextEvents<Detail<"connect">>(server, "connect");
  await using raw = await connectRaw(portOf(server));
  const id = (await rawIn)[0]!.session;
  const gone = nextEvents<Detail<"disconnect">>(
    server,
    "disconnect",
    1,
    (d) => d.session === id,
  );
  await raw.write(frameHeader(FrameKind.Request, 1, 100));
  await raw.write(new Uint8Array(10));
  await raw.closeWrite();
  const end = await withTimeout(raw.end(), 2000, "truncated end");
  assert.deepEqual(end.frames, []);
  const [detail] = await gone;
  assert.ok(
    detail!.reason instanceof ProtocolError,
    `closed for ${String(detail!.reason)}`,
  );
  assert.equal(server.stats().protocolErrors, 1);
  assert.equal(server.stats().sessions, 1);
  assert.equal(text(await clean.request(bytes("fine"))), "fine");
});

Deno.test("Server closes a session whose frame length is shorter than kind and id", async () => {
  await using server = serve({ hostname: HOST, port: 0, handler: echo });
  await using raw = await connectRaw(portOf(server));
  const gone = nextEvents<Detail<"disconnect">>(server, "disconnect");
  await raw.write(new Uint8Array([0, 0, 0, 2, 1, 0]));
  const end = await withTimeout(raw.end(), 2000, "short length end");
  assert.deepEqual(end.frames, []);
  const [detail] = await gone;
  assert.ok(detail!.reason instanceof ProtocolError);
  assert.equal(server.stats().protocolErrors, 1);
});

Deno.test("Server answers a ping with a pong of the same id and payload, and drops a reply that matches nothing", async () => {
  await using server = serve({ hostname: HOST, port: 0, handler: echo });
  await using raw = await connectRaw(portOf(server));
  await raw.send(FrameKind.Ping, 9, bytes("are you there"));
  const pong = await raw.expect(FrameKind.Pong);
  assert.equal(pong.id, 9);
  assert.equal(text(pong.payload), "are you there");
  // A response and an error for requests the server never made.
  await raw.send(FrameKind.Response, 12345, bytes("stray"));
  await raw.send(FrameKind.Error, 12346, bytes("stray error"));
  await raw.request(3, "still here");
  const reply = await raw.expect(FrameKind.Response);
  assert.equal(reply.id, 3);
  assert.equal(server.stats().lateReplies, 2);
  assert.equal(server.stats().protocolErrors, 0);
  assert.equal(server.stats().sessions, 1);
});

Deno.test("Server idleTimeout closes a session that sends nothing, and not one that keeps talking", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    handler: echo,
    // Far above the chatty peer's 50 ms pace, even on a loaded machine.
    idleTimeout: 1000,
  });
  const port = portOf(server);
  const silentIn = nextEvents<Detail<"connect">>(server, "connect");
  const started = performance.now();
  await using silent = await connectRaw(port);
  const silentId = (await silentIn)[0]!.session;
  const gone = nextEvents<Detail<"disconnect">>(
    server,
    "disconnect",
    1,
    (d) => d.session === silentId,
  );
  await using chatty = await connectRaw(port);
  // The chatty peer talks every 50 ms until the silent one is closed.
  let closed = false;
  gone.then(() => closed = true);
  let id = 0;
  while (!closed && performance.now() - started < 5000) {
    await chatty.request(++id, "hi");
    await chatty.expect(FrameKind.Response);
    await delay(50);
  }
  const [detail] = await withTimeout(gone, 5000, "idle close");
  assert.ok(performance.now() - started >= 990);
  assert.ok(detail!.reason instanceof ConnectionClosedError);
  assert.match(String((detail!.reason as Error).message), /idleTimeout/);
  const end = await withTimeout(silent.end(), 2000, "silent end");
  assert.deepEqual(end.frames, []);
  await chatty.request(++id, "still open");
  assert.equal((await chatty.expect(FrameKind.Response)).id, id);
});

Deno.test("Server.broadcast() cuts off a peer whose write queue passes maxWriteBytes while the others keep receiving", async () => {
  const logger = new CaptureLogger();
  await using server = serve({
    hostname: HOST,
    port: 0,
    handler: echo,
    maxWriteBytes: 1024 * 1024,
    maxFrameBytes: 128 * 1024,
    writeTimeout: 0,
    logger,
  });
  const inbox = new Inbox();
  await using clean = await dial(endpointOf(server), {
    handler: inbox.handler,
  });
  assert.equal(text(await clean.request(bytes("ready"))), "ready");
  const rawIn = nextEvents<Detail<"connect">>(server, "connect");
  await using _neverReads = await connectRaw(portOf(server));
  const rawId = (await rawIn)[0]!.session;
  let cut: unknown;
  server.addEventListener("disconnect", (event) => {
    const detail = (event as CustomEvent<Detail<"disconnect">>).detail;
    if (detail.session === rawId) cut = detail.reason;
  });
  const chunk = new Uint8Array(64 * 1024).fill(1);
  chunk[0] = 0x30;
  let sent = 0;
  const counts: number[] = [];
  // One push at a time, paced by the clean client receiving it.
  while (cut === undefined && sent < 2000) {
    counts.push(server.broadcast(chunk));
    sent++;
    await inbox.count(sent);
  }
  assert.ok(cut instanceof SlowConsumerError, `cut for ${String(cut)}`);
  assert.match(String((cut as Error).message), /maxWriteBytes/);
  assert.equal(counts[0], 2);
  // After the cut, broadcasts reach only the clean client.
  assert.equal(server.broadcast(chunk), 1);
  await inbox.count(sent + 1);
  assert.equal(server.stats().sessions, 1);
  assert.ok(logger.entries.some((e) => e.message.includes("Cutting off")));
});

// ---------------------------------------------------------------------------
// PROXY protocol (headers written by hand, as HAProxy would send them)

const PROXY_V2_SIGNATURE = [
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
];

/** A PROXY v2 header for TCP over IPv4 (command PROXY, or LOCAL), with optional TLV bytes. */
function proxyV2(
  source: [number, number, number, number, number],
  destination: [number, number, number, number, number],
  options: { local?: boolean; tlv?: number[] } = {},
): Uint8Array {
  const tlv = options.tlv ?? [];
  const length = 12 + tlv.length;
  const out = new Uint8Array(16 + length);
  out.set(PROXY_V2_SIGNATURE, 0);
  out[12] = options.local ? 0x20 : 0x21;
  out[13] = 0x11; // AF_INET, STREAM
  new DataView(out.buffer).setUint16(14, length);
  out.set(source.slice(0, 4), 16);
  out.set(destination.slice(0, 4), 20);
  new DataView(out.buffer).setUint16(24, source[4]);
  new DataView(out.buffer).setUint16(26, destination[4]);
  out.set(tlv, 28);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** A server with PROXY protocol on, whose handler reports the session's view of the peer. */
function proxyServer(
  proxyProtocol: boolean | { timeout?: number } = true,
): Server<Uint8Array> {
  return serve({
    hostname: HOST,
    port: 0,
    proxyProtocol,
    handler: (_payload, ctx) =>
      bytes(JSON.stringify({
        remote: ctx.session.remoteAddr,
        destination: ctx.session.proxy?.destination ?? null,
      })),
  });
}

Deno.test("serve({ proxyProtocol }) takes the client address from a PROXY v1 header", async () => {
  await using server = proxyServer();
  await using raw = await connectRaw(portOf(server));
  // Header and first request in one write: the bytes after the header are kept.
  await raw.write(concat(
    bytes("PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n"),
    encodeFrame(FrameKind.Request, 1, bytes("who am I")),
  ));
  const reply = await withTimeout(raw.expect(FrameKind.Response), 2000, "v1");
  const view = JSON.parse(text(reply.payload));
  assert.deepEqual(view.remote, {
    transport: "tcp",
    hostname: "203.0.113.7",
    port: 56324,
  });
  assert.deepEqual(view.destination, {
    transport: "tcp",
    hostname: "192.0.2.1",
    port: 443,
  });
  // IPv6 in v1, on another connection.
  await using raw6 = await connectRaw(portOf(server));
  await raw6.write(bytes("PROXY TCP6 2001:db8::1 2001:db8::2 1000 2000\r\n"));
  await raw6.request(2, "and me");
  const reply6 = await withTimeout(
    raw6.expect(FrameKind.Response),
    2000,
    "v1 ipv6",
  );
  const view6 = JSON.parse(text(reply6.payload));
  assert.equal(view6.remote.port, 1000);
  assert.match(view6.remote.hostname, /^2001:db8::1$/i);
  assert.equal(server.stats().rejected, 0);
});

Deno.test("serve({ proxyProtocol }) takes the client address from a PROXY v2 header, TLVs included", async () => {
  await using server = proxyServer();
  await using raw = await connectRaw(portOf(server));
  // Header alone first (with a NOOP TLV), the request in a later write.
  await raw.write(
    proxyV2([198, 51, 100, 9, 40000], [192, 0, 2, 1, 9000], {
      tlv: [0x04, 0x00, 0x02, 0xaa, 0xbb],
    }),
  );
  await raw.request(1, "who am I");
  const reply = await withTimeout(raw.expect(FrameKind.Response), 2000, "v2");
  const view = JSON.parse(text(reply.payload));
  assert.deepEqual(view.remote, {
    transport: "tcp",
    hostname: "198.51.100.9",
    port: 40000,
  });
  assert.deepEqual(view.destination, {
    transport: "tcp",
    hostname: "192.0.2.1",
    port: 9000,
  });
  // LOCAL (a health check of the proxy itself): the real peer address stays.
  await using local = await connectRaw(portOf(server));
  await local.write(
    concat(
      proxyV2([0, 0, 0, 0, 0], [0, 0, 0, 0, 0], { local: true }),
      encodeFrame(FrameKind.Request, 2, bytes("local")),
    ),
  );
  const localReply = await withTimeout(
    local.expect(FrameKind.Response),
    2000,
    "v2 local",
  );
  const localView = JSON.parse(text(localReply.payload));
  assert.equal(localView.remote.hostname, HOST);
  assert.equal(
    localView.remote.port,
    (local.conn.localAddr as Deno.NetAddr).port,
  );
  assert.equal(server.stats().rejected, 0);
});

Deno.test("serve({ proxyProtocol }) accepts headers made by encodeProxyHeaderV1() and encodeProxyHeaderV2(), IPv6 included", async () => {
  await using server = proxyServer();
  const source6: Deno.NetAddr = {
    transport: "tcp",
    hostname: "2001:db8::7",
    port: 4711,
  };
  const destination6: Deno.NetAddr = {
    transport: "tcp",
    hostname: "2001:db8::1",
    port: 443,
  };
  const source4: Deno.NetAddr = {
    transport: "tcp",
    hostname: "192.0.2.99",
    port: 1234,
  };
  const destination4: Deno.NetAddr = {
    transport: "tcp",
    hostname: "192.0.2.1",
    port: 443,
  };
  const cases: [string, Uint8Array, Deno.NetAddr][] = [
    ["v1 IPv4", encodeProxyHeaderV1(source4, destination4), source4],
    ["v1 IPv6", encodeProxyHeaderV1(source6, destination6), source6],
    ["v2 IPv4", encodeProxyHeaderV2(source4, destination4), source4],
    [
      "v2 IPv6 with a TLV",
      encodeProxyHeaderV2(source6, destination6, {
        tlvs: [{ type: 0x04, value: new Uint8Array(5) }],
      }),
      source6,
    ],
  ];
  for (const [name, header, source] of cases) {
    await using raw = await connectRaw(portOf(server));
    await raw.write(
      concat(header, encodeFrame(FrameKind.Request, 1, bytes(name))),
    );
    const reply = await withTimeout(raw.expect(FrameKind.Response), 2000, name);
    const view = JSON.parse(text(reply.payload));
    assert.equal(view.remote.port, source.port, name);
    assert.equal(
      view.remote.hostname.toLowerCase(),
      source.hostname.toLowerCase(),
      name,
    );
  }
  assert.equal(server.stats().rejected, 0);
});

Deno.test("serve({ proxyProtocol }) closes only a connection with a malformed or missing header and counts it", async () => {
  await using server = proxyServer();
  const port = portOf(server);
  await using good = await connectRaw(port);
  await good.write(bytes("PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\n"));
  await good.request(1, "first");
  await withTimeout(good.expect(FrameKind.Response), 2000, "good");
  const cases: [string, Uint8Array][] = [
    ["bad address", bytes("PROXY TCP4 999.1.1.1 192.0.2.1 1 2\r\n")],
    ["bad port", bytes("PROXY TCP4 1.1.1.1 192.0.2.1 1 99999\r\n")],
    ["no CRLF in 107 bytes", bytes(`PROXY TCP4 ${"1".repeat(120)}`)],
    [
      "bad v2 version",
      (() => {
        const header = proxyV2([1, 2, 3, 4, 5], [5, 6, 7, 8, 9]);
        header[12] = 0x31;
        return header;
      })(),
    ],
    ["missing header", encodeFrame(FrameKind.Request, 1, bytes("plain"))],
  ];
  let rejected = 0;
  for (const [name, header] of cases) {
    await using bad = await connectRaw(port);
    const gone = nextEvents(server, "error");
    await bad.write(header).catch(() => {});
    const end = await withTimeout(bad.end(), 2000, name);
    assert.deepEqual(end.frames, [], name);
    await gone;
    rejected++;
    assert.equal(server.stats().rejected, rejected, name);
  }
  assert.equal(server.stats().sessions, 1);
  await good.request(2, "still fine");
  assert.equal((await good.expect(FrameKind.Response)).id, 2);
});

Deno.test("serve({ proxyProtocol: { timeout } }) closes a connection that sends half a header and stalls", async () => {
  await using server = proxyServer({ timeout: 200 });
  await using slow = await connectRaw(portOf(server));
  const started = performance.now();
  await slow.write(bytes("PROXY TCP4 203.0"));
  const end = await withTimeout(slow.end(), 3000, "slowloris close");
  const elapsed = performance.now() - started;
  assert.deepEqual(end.frames, []);
  assert.ok(elapsed >= 190, `closed after ${Math.round(elapsed)} ms`);
  assert.equal(server.stats().rejected, 1);
  assert.equal(server.stats().sessions, 0);
});

Deno.test("Server.shutdown() does not wait for a connection still sending its PROXY header", async () => {
  const server = proxyServer({ timeout: 10_000 });
  await using slow = await connectRaw(portOf(server));
  await slow.write(bytes("PROXY TCP4 "));
  // Make sure the server is reading the header before shutting down.
  await using probe = await connectRaw(portOf(server));
  await probe.write(bytes("PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\n"));
  await probe.request(1, "probe");
  await withTimeout(probe.expect(FrameKind.Response), 2000, "probe");
  const shutdown = server.shutdown({ timeout: 5000 });
  // The probe plays a tcpbutler client: ack the drain, close after the server.
  assert.equal((await probe.expect()).kind, FrameKind.Drain);
  await probe.send(FrameKind.Drain, 0);
  assert.equal((await withTimeout(probe.end(), 2000, "probe end")).how, "eof");
  probe.close();
  const report = await withTimeout(shutdown, 2000, "shutdown");
  assert.equal(report.sessions, 1);
  assert.equal(report.drained, 1);
  assert.equal(server.stats().rejected, 0, "a shutdown is no bad header");
  const end = await withTimeout(slow.end(), 2000, "slow end");
  assert.deepEqual(end.frames, []);
});

Deno.test("serve() takes a listener as its first argument", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  await using server = serve(listener, (payload) => payload.toReversed());
  assert.equal(server.port, listener.addr.port);
  await using client = await dial({ hostname: "127.0.0.1", port: server.port });
  assert.deepEqual([...await client.request(new Uint8Array([1, 2]))], [2, 1]);
});
