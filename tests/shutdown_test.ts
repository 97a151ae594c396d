/**
 * Server shutdown over real loopback sockets: the drain protocol byte by
 * byte, shutdown under load with a short timeout, handlers that never
 * return, the report, idempotence, disposal, `close()`, signals, and the
 * `onDrain` hook of custom codecs.
 */

import assert from "node:assert/strict";
import {
  type Client,
  ClosedError,
  ConnectionClosedError,
  delay,
  dial,
  FrameKind,
  NoSessionError,
  serve,
  type Server,
  type Session,
  type ShutdownReport,
  TimeoutError,
} from "../mod.ts";
import { lengthPrefixed } from "../framing/mod.ts";
import { defaultCodec, type Frame } from "../protocol.ts";
import { withTimeout } from "./_process.ts";
import {
  bytes,
  connectRaw,
  encodeFrame,
  latch,
  nextEvents,
  text,
} from "./_raw_peer.ts";

const HOST = "127.0.0.1";

function portOf(server: { addr: Deno.Addr }): number {
  assert.equal(server.addr.transport, "tcp");
  return (server.addr as Deno.NetAddr).port;
}

function endpointOf(server: { addr: Deno.Addr }): {
  hostname: string;
  port: number;
} {
  return { hostname: HOST, port: portOf(server) };
}

/** A request that was still unsettled past its own deadline (a hang). */
class HungError extends Error {
  override name = "HungError";
}

/** Rejects with HungError when `promise` has not settled within `ms`. */
function guard<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new HungError(`${what} hung past ${ms} ms`)),
      ms,
    );
  });
  return Promise.race([promise, hung]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------
// The drain protocol, seen by a raw peer

Deno.test("Server.shutdown() sends Drain, answers requests sent before the ack, half-closes, and closes after the peer", async () => {
  const gate = Promise.withResolvers<void>();
  const slowStarted = Promise.withResolvers<void>();
  const server = serve({ hostname: HOST, port: 0 }, async (payload) => {
    if (text(payload) === "slow") {
      slowStarted.resolve();
      await gate.promise;
    }
    return bytes(`re ${text(payload)}`);
  });
  const connected = nextEvents(server, "connect");
  await using raw = await connectRaw(portOf(server));
  await connected;
  await raw.request(1, "slow");
  await withTimeout(slowStarted.promise, 2000, "slow handler start");
  let finished = false;
  const shutdown = server.shutdown({ timeout: 5000 }).then((report) => {
    finished = true;
    return report;
  });
  const drain = await withTimeout(raw.expect(), 2000, "drain frame");
  assert.equal(drain.kind, FrameKind.Drain);
  assert.equal(drain.id, 0);
  assert.equal(drain.payload.length, 0);
  // Still allowed: a request sent after the server's drain, before our ack.
  await raw.request(2, "fast");
  await raw.send(FrameKind.Drain, 0);
  const fast = await withTimeout(raw.expect(FrameKind.Response), 2000, "fast");
  assert.equal(fast.id, 2);
  assert.equal(text(fast.payload), "re fast");
  gate.resolve();
  const slow = await withTimeout(raw.expect(FrameKind.Response), 2000, "slow");
  assert.equal(slow.id, 1);
  assert.equal(text(slow.payload), "re slow");
  // Everything owed was flushed: then the server half-closes.
  const end = await withTimeout(raw.end(), 2000, "half-close");
  assert.equal(end.how, "eof");
  assert.deepEqual(end.frames, []);
  // The server waits for the peer to close before it finishes.
  assert.equal(finished, false);
  raw.close();
  const report = await withTimeout(shutdown, 2000, "shutdown");
  assert.equal(report.sessions, 1);
  assert.equal(report.drained, 1);
  assert.equal(report.forced, 0);
  assert.equal(report.handlersCut, 0);
  assert.equal(report.requestsCut, 0);
});

Deno.test("Server.shutdown() forces a peer that never acknowledges the drain at the timeout", async () => {
  const server = serve({ hostname: HOST, port: 0 }, (payload) => payload);
  const connected = nextEvents(server, "connect");
  await using raw = await connectRaw(portOf(server));
  await connected;
  const started = performance.now();
  const shutdown = server.shutdown({ timeout: 200 });
  assert.equal((await raw.expect()).kind, FrameKind.Drain);
  const report = await withTimeout(shutdown, 3000, "shutdown");
  assert.ok(performance.now() - started >= 190);
  assert.equal(report.sessions, 1);
  assert.equal(report.forced, 1);
  assert.equal(report.drained, 0);
  assert.equal(report.handlersCut, 0);
  assert.ok(report.durationMs >= 190 && report.durationMs < 3000);
  const end = await withTimeout(raw.end(), 2000, "forced end");
  assert.deepEqual(end.frames, []);
});

Deno.test("Server.shutdown() lets in-flight requests of a tcpbutler client finish and drains cleanly", async () => {
  const gate = Promise.withResolvers<void>();
  const started = latch(10);
  const server = serve({ hostname: HOST, port: 0 }, async (payload) => {
    started.count();
    await gate.promise;
    return payload;
  });
  const client = await dial(endpointOf(server), { sessions: 2 });
  try {
    const replies = Array.from(
      { length: 10 },
      (_, i) => client.request(bytes(`r${i}`)),
    );
    await withTimeout(started.promise, 2000, "handlers start");
    const shutdown = server.shutdown({ timeout: 5000 });
    gate.resolve();
    const texts = (await Promise.all(replies)).map(text);
    assert.deepEqual(texts, Array.from({ length: 10 }, (_, i) => `r${i}`));
    const report = await withTimeout(shutdown, 3000, "shutdown");
    assert.equal(report.sessions, 2);
    assert.equal(report.drained, 2);
    assert.equal(report.forced, 0);
    assert.equal(report.handlersCut, 0);
  } finally {
    await client.close({ timeout: 0 });
    await server.shutdown();
  }
});

// ---------------------------------------------------------------------------
// Shutdown under load with a short timeout

Deno.test("Server.shutdown() under load with a 100 ms timeout settles every request with a typed error in time and reports handlersCut exactly", async () => {
  const started = new Set<string>();
  const delivered = new Set<string>();
  let startedCount = 0;
  const enough = Promise.withResolvers<void>();
  const server = serve({ hostname: HOST, port: 0 }, async (payload) => {
    started.add(text(payload));
    if (++startedCount === 100) enough.resolve();
    await delay(Math.random() * 200);
    return payload;
  });
  const REQUEST_TIMEOUT = 1000;
  const client = await dial(endpointOf(server), {
    sessions: 4,
    requestTimeout: REQUEST_TIMEOUT,
    reconnect: { initial: 20, max: 100 },
  });
  const typed: Record<string, number> = {};
  const unexpected: unknown[] = [];
  let stop = false;
  const loops = Array.from({ length: 32 }, async (_, loop) => {
    for (let i = 0; !stop; i++) {
      const key = `${loop}:${i}`;
      try {
        const reply = await guard(
          client.request(bytes(key)),
          REQUEST_TIMEOUT + 500,
          key,
        );
        assert.equal(text(reply), key);
        delivered.add(key);
      } catch (error) {
        if (
          error instanceof ConnectionClosedError ||
          error instanceof ClosedError || error instanceof TimeoutError ||
          error instanceof NoSessionError
        ) {
          typed[error.name] = (typed[error.name] ?? 0) + 1;
        } else {
          unexpected.push(error);
        }
      }
    }
  });
  let report: ShutdownReport;
  try {
    await withTimeout(enough.promise, 5000, "100 handlers started");
    report = await withTimeout(
      server.shutdown({ timeout: 100 }),
      3000,
      "shutdown",
    );
  } finally {
    stop = true;
    await Promise.all(loops);
    await client.close({ timeout: 0 });
    await server.shutdown();
  }
  assert.deepEqual(unexpected, [], "only typed errors, none hung");
  assert.ok(report.durationMs < 1000, `took ${report.durationMs} ms`);
  assert.equal(report.sessions, 4);
  assert.equal(report.drained + report.forced, 4);
  const cut = [...started].filter((key) => !delivered.has(key)).length;
  assert.equal(
    report.handlersCut,
    cut,
    `report ${
      JSON.stringify(report)
    }; started ${started.size}, delivered ${delivered.size}, errors ${
      JSON.stringify(typed)
    }`,
  );
  assert.ok(report.handlersCut > 0, "the timeout cut some handlers");
  for (const key of delivered) assert.ok(started.has(key));
});

Deno.test("Server.shutdown() counts replies lost in the write queue of a peer that stopped reading as handlersCut", async () => {
  const REPLY_BYTES = 4 * 1024 * 1024;
  const REQUESTS = 8;
  const handled = latch(REQUESTS);
  const server = serve({ hostname: HOST, port: 0, writeTimeout: 0 }, () => {
    handled.count();
    return new Uint8Array(REPLY_BYTES);
  });
  await using raw = await connectRaw(portOf(server), {
    maxFrameBytes: REPLY_BYTES,
  });
  for (let id = 1; id <= REQUESTS; id++) await raw.request(id, "big");
  await withTimeout(handled.promise, 2000, "handlers");
  // The peer reads nothing: 32 MiB of replies cannot all leave the server.
  const report = await withTimeout(
    server.shutdown({ timeout: 300 }),
    3000,
    "shutdown",
  );
  const end = await withTimeout(raw.end(), 5000, "read what arrived");
  const delivered = end.frames.filter((f) => f.kind === FrameKind.Response)
    .length;
  assert.ok(delivered < REQUESTS, `all ${delivered} replies arrived`);
  assert.equal(report.forced, 1);
  assert.equal(
    report.handlersCut,
    REQUESTS - delivered,
    `${REQUESTS} handled, ${delivered} replies arrived, report ${
      JSON.stringify(report)
    }`,
  );
});

Deno.test("Server.shutdown() ends at its timeout despite a handler that never returns, and finished resolves with the report", async () => {
  const running = Promise.withResolvers<void>();
  const server = serve({ hostname: HOST, port: 0 }, (payload) => {
    if (text(payload) === "never") {
      running.resolve();
      return new Promise<Uint8Array>(() => {});
    }
    return payload;
  });
  const client = await dial(endpointOf(server), {
    reconnect: { maxAttempts: 1 },
  });
  try {
    const stuck = client.request(bytes("never"), { timeout: 10_000 });
    stuck.catch(() => {});
    assert.equal(text(await client.request(bytes("fine"))), "fine");
    await withTimeout(running.promise, 2000, "handler start");
    const shutdownEvent = nextEvents<{ report: ShutdownReport }>(
      server,
      "shutdown",
    );
    const report = await withTimeout(
      server.shutdown({ timeout: 300 }),
      3000,
      "shutdown",
    );
    assert.ok(report.forced >= 1);
    assert.equal(report.forced, 1);
    assert.equal(report.handlersCut, 1);
    assert.ok(report.durationMs >= 290, `took ${report.durationMs} ms`);
    assert.equal(await server.finished, report);
    assert.equal((await shutdownEvent)[0]!.report, report);
    await assert.rejects(stuck, ConnectionClosedError);
  } finally {
    await client.close({ timeout: 0 });
  }
});

Deno.test("Server.shutdown() reports the server's own requests still pending at the timeout as requestsCut", async () => {
  const server = serve({ hostname: HOST, port: 0 }, (payload) => payload);
  const connected = nextEvents(server, "connect");
  const clientHandler = Promise.withResolvers<void>();
  const client = await dial(endpointOf(server), {
    reconnect: { maxAttempts: 1 },
    handler: () => {
      clientHandler.resolve();
      return new Promise<Uint8Array>(() => {});
    },
  });
  try {
    await connected;
    const session = server.sessions[0]!;
    const own = session.request(bytes("answer me"), { timeout: 10_000 });
    own.catch(() => {});
    await withTimeout(clientHandler.promise, 2000, "client handler start");
    const report = await withTimeout(
      server.shutdown({ timeout: 200 }),
      3000,
      "shutdown",
    );
    assert.equal(report.forced, 1);
    assert.equal(report.requestsCut, 1);
    assert.equal(report.handlersCut, 0);
    await assert.rejects(own, ConnectionClosedError);
  } finally {
    await client.close({ timeout: 0 });
  }
});

Deno.test("Server.shutdown() ends at its timeout while an onConnect hook hangs", async () => {
  const gate = Promise.withResolvers<void>();
  const hooked = Promise.withResolvers<void>();
  const server = serve({
    hostname: HOST,
    port: 0,
    handler: (payload) => payload,
    onConnect: async () => {
      hooked.resolve();
      await gate.promise;
    },
  });
  await using raw = await connectRaw(portOf(server));
  await withTimeout(hooked.promise, 2000, "onConnect start");
  const shutdown = server.shutdown({ timeout: 200 });
  try {
    const report = await withTimeout(shutdown, 2000, "shutdown");
    assert.equal(report.sessions, 1);
    assert.equal(report.forced, 1);
  } finally {
    // Let a stuck shutdown finish, so nothing leaks into other tests.
    gate.resolve();
    raw.close();
    await shutdown;
  }
});

// ---------------------------------------------------------------------------
// Shutdown details

Deno.test("Server.shutdown() refuses new connections afterwards and resolves finished", async () => {
  const server = serve({ hostname: HOST, port: 0 }, (payload) => payload);
  const port = portOf(server);
  assert.equal(server.isClosed, false);
  const report = await server.shutdown({ timeout: 1000 });
  assert.equal(server.isClosed, true);
  assert.equal(report.sessions, 0);
  assert.equal(await server.finished, report);
  await assert.rejects(
    Deno.connect({ hostname: HOST, port }),
    Deno.errors.ConnectionRefused,
  );
});

Deno.test("Server.shutdown() called twice returns the same report", async () => {
  const server = serve({ hostname: HOST, port: 0 }, (payload) => payload);
  const client = await dial(endpointOf(server), {
    reconnect: { maxAttempts: 1 },
  });
  try {
    assert.equal(text(await client.request(bytes("x"))), "x");
    const first = server.shutdown({ timeout: 2000 });
    const second = server.shutdown({ timeout: 1 });
    assert.equal(first, second);
    const report = await first;
    assert.equal(report, await second);
    assert.equal(await server.shutdown(), report);
    assert.equal(report.drained, 1);
    assert.equal(report.forced, 0);
  } finally {
    await client.close({ timeout: 0 });
  }
});

Deno.test("Server [Symbol.asyncDispose] (await using) drains and finishes the server", async () => {
  let ref: Server<Uint8Array> | undefined;
  let client: Client<Uint8Array> | undefined;
  try {
    {
      await using server = serve({ hostname: HOST, port: 0 }, (p) => p);
      ref = server;
      client = await dial(endpointOf(server), {
        reconnect: { maxAttempts: 1 },
      });
      assert.equal(text(await client.request(bytes("in scope"))), "in scope");
    }
    assert.equal(ref.isClosed, true);
    const report = await withTimeout(ref.finished, 1000, "finished");
    assert.equal(report.sessions, 1);
    assert.equal(report.drained, 1);
    assert.equal(report.forced, 0);
  } finally {
    await client?.close({ timeout: 0 });
  }
});

Deno.test("Server.close() forces every session at once", async () => {
  const running = Promise.withResolvers<void>();
  const server = serve({ hostname: HOST, port: 0 }, () => {
    running.resolve();
    return new Promise<Uint8Array>(() => {});
  });
  const client = await dial(endpointOf(server), {
    reconnect: { maxAttempts: 1 },
  });
  try {
    const stuck = client.request(bytes("never"), { timeout: 10_000 });
    stuck.catch(() => {});
    await withTimeout(running.promise, 2000, "handler start");
    const started = performance.now();
    const report = await withTimeout(server.close(), 2000, "close");
    assert.ok(performance.now() - started < 1000);
    assert.equal(report.forced, 1);
    assert.equal(report.handlersCut, 1);
    await assert.rejects(stuck, ConnectionClosedError);
  } finally {
    await client.close({ timeout: 0 });
  }
});

Deno.test("Server.close() right after shutdown() began forces the shutdown at once", async () => {
  const running = Promise.withResolvers<void>();
  const server = serve({ hostname: HOST, port: 0 }, () => {
    running.resolve();
    return new Promise<Uint8Array>(() => {});
  });
  const client = await dial(endpointOf(server), {
    reconnect: { maxAttempts: 1 },
  });
  try {
    client.request(bytes("never"), { timeout: 20_000 }).catch(() => {});
    await withTimeout(running.promise, 2000, "handler start");
    const graceful = server.shutdown({ timeout: 10_000 });
    const forced = server.close();
    const report = await withTimeout(forced, 2000, "close after shutdown");
    assert.equal(report, await graceful);
    assert.equal(report.forced, 1);
  } finally {
    // A failed close leaves a 10 s shutdown: cut it through the sessions.
    for (const session of server.sessions) session.close();
    await server.finished;
    await client.close({ timeout: 0 });
  }
});

Deno.test("Server.shutdown() signal option aborting forces the shutdown at once", async () => {
  const running = Promise.withResolvers<void>();
  const server = serve({ hostname: HOST, port: 0 }, () => {
    running.resolve();
    return new Promise<Uint8Array>(() => {});
  });
  await using raw = await connectRaw(portOf(server));
  await raw.request(1, "never");
  await withTimeout(running.promise, 2000, "handler start");
  const controller = new AbortController();
  const started = performance.now();
  const shutdown = server.shutdown({
    timeout: 10_000,
    signal: controller.signal,
  });
  // The drain has begun; acknowledge it, then pull the plug.
  assert.equal((await raw.expect()).kind, FrameKind.Drain);
  await raw.send(FrameKind.Drain, 0);
  controller.abort(new Error("operator said stop"));
  const report = await withTimeout(shutdown, 2000, "aborted shutdown");
  assert.ok(performance.now() - started < 2000);
  assert.equal(report.forced, 1);
  assert.equal(report.handlersCut, 1);
  const end = await raw.end();
  assert.deepEqual(end.frames, []);
});

Deno.test("serve() signal option aborting shuts the server down gracefully", async () => {
  const controller = new AbortController();
  const server = serve({
    hostname: HOST,
    port: 0,
    signal: controller.signal,
    handler: (payload) => payload,
  });
  const port = portOf(server);
  const client = await dial(endpointOf(server), {
    reconnect: { maxAttempts: 1 },
  });
  try {
    assert.equal(text(await client.request(bytes("before"))), "before");
    controller.abort();
    const report = await withTimeout(server.finished, 3000, "finished");
    assert.equal(server.isClosed, true);
    assert.equal(report.drained, 1);
    assert.equal(report.forced, 0);
    await assert.rejects(
      Deno.connect({ hostname: HOST, port }),
      Deno.errors.ConnectionRefused,
    );
  } finally {
    await client.close({ timeout: 0 });
  }
  // Already aborted: the server shuts down at once.
  const early = serve({
    hostname: HOST,
    port: 0,
    signal: AbortSignal.abort(),
    handler: (payload) => payload,
  });
  const report = await withTimeout(early.finished, 2000, "early finished");
  assert.equal(report.sessions, 0);
});

// ---------------------------------------------------------------------------
// Custom codecs

Deno.test("Server.shutdown() with a custom codec calls onDrain once for each session", async () => {
  // Messages: byte 0 is the correlation id (0 = a push), the rest is text.
  const codec = lengthPrefixed({
    headerBytes: 2,
    correlationId: (frame) => frame[0] === 0 ? undefined : frame[0],
  });
  const message = (id: number, body: string) => {
    const body_ = bytes(body);
    const out = new Uint8Array(1 + body_.length);
    out[0] = id;
    out.set(body_, 1);
    return out;
  };
  const drained: Session<Uint8Array>[] = [];
  const server = serve({
    hostname: HOST,
    port: 0,
    codec,
    handler: (request) =>
      message(request[0]!, `re ${text(request.subarray(1))}`),
    onDrain: async (session) => {
      drained.push(session);
      await session.send(message(0, "going away"));
    },
  });
  const pushes: string[] = [];
  const allPushed = latch(2);
  const client = await dial(endpointOf(server), codec, {
    sessions: 2,
    heartbeat: false,
    reconnect: { maxAttempts: 1 },
    handler: (push) => {
      pushes.push(text(push.subarray(1)));
      allPushed.count();
      return undefined;
    },
  });
  try {
    const connected: Promise<unknown> = server.stats().sessions >= 2
      ? Promise.resolve()
      : nextEvents(server, "connect", 2 - server.stats().sessions);
    await withTimeout(connected, 2000, "two sessions");
    const reply = await client.request(message(5, "hi"));
    assert.equal(reply[0], 5);
    assert.equal(text(reply.subarray(1)), "re hi");
    const before = new Set(server.sessions);
    const report = await withTimeout(
      server.shutdown({ timeout: 2000 }),
      3000,
      "shutdown",
    );
    assert.equal(drained.length, 2);
    assert.deepEqual(new Set(drained), before);
    assert.equal(report.sessions, 2);
    assert.equal(report.forced, 0);
    assert.equal(report.drained, 2);
    await withTimeout(allPushed.promise, 2000, "going-away pushes");
    assert.deepEqual(pushes, ["going away", "going away"]);
  } finally {
    await client.close({ timeout: 0 });
    await server.shutdown();
  }
});

// ---------------------------------------------------------------------------
// The report counts every request received and not answered

Deno.test("Server.shutdown() forced reports every pipelined request it did not answer: handlersCut + refused + dropped = sent - answered", async (t) => {
  const SENT = 300;
  const MAX = 4;
  const FAST = 8;
  const PAYLOAD = 8;
  const cases = [
    { name: "custom codec (no refusals)", codec: true },
    { name: "default protocol", codec: false },
  ];
  for (const { name, codec } of cases) {
    await t.step(name, async () => {
      const started = latch(FAST + MAX);
      // The first FAST answer at once; the rest outlast the shutdown (they
      // end only when their session is closed).
      const handler = (
        payload: Uint8Array,
        { signal }: { signal: AbortSignal },
      ) => {
        started.count();
        if (payload[0]! < FAST) return payload;
        return new Promise<Uint8Array>((resolve) =>
          signal.addEventListener("abort", () => resolve(payload), {
            once: true,
          })
        );
      };
      const lp = lengthPrefixed({ headerBytes: 2 });
      const server = codec
        ? serve({
          hostname: HOST,
          port: 0,
          codec: lp,
          maxConcurrentHandlers: MAX,
        }, handler)
        : serve(
          { hostname: HOST, port: 0, maxConcurrentHandlers: MAX },
          handler,
        );
      const payload = (i: number) => {
        const p = new Uint8Array(PAYLOAD);
        p[0] = Math.min(i, 255);
        return p;
      };
      const frames = Array.from(
        { length: SENT },
        (_, i) =>
          codec
            ? lp.encode(payload(i))
            : encodeFrame(FrameKind.Request, i + 1, payload(i)),
      );
      const wire = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
      frames.reduce((at, f) => (wire.set(f, at), at + f.length), 0);
      const conn = await Deno.connect({ hostname: HOST, port: portOf(server) });
      let answered = 0;
      let refused = 0;
      const reading = (async () => {
        const decoder = codec ? lp.decoder() : defaultCodec().decoder();
        const buffer = new Uint8Array(64 * 1024);
        for (;;) {
          let n: number | null;
          try {
            n = await conn.read(buffer);
          } catch {
            return;
          }
          if (n === null) return;
          for (const message of decoder.decode(buffer.subarray(0, n))) {
            const kind = codec ? FrameKind.Response : (message as Frame).kind;
            if (kind === FrameKind.Response) answered++;
            if (kind === FrameKind.Refused) refused++;
          }
        }
      })();
      try {
        for (let at = 0; at < wire.length;) {
          at += await conn.write(wire.subarray(at));
        }
        await withTimeout(started.promise, 2000, "handlers at their limit");
        const report = await withTimeout(
          server.shutdown({ timeout: 50 }),
          3000,
          "shutdown",
        );
        await withTimeout(reading, 3000, "the server closes");
        const summary = `${name}: sent ${SENT}, answered ${answered}, ` +
          `refusals read ${refused}, report ${JSON.stringify(report)}`;
        assert.equal(report.forced, 1, summary);
        assert.equal(answered, FAST, summary);
        assert.equal(report.handlersCut, MAX, summary);
        assert.equal(report.refused, refused, summary);
        assert.equal(
          report.handlersCut + report.refused + report.dropped,
          SENT - answered,
          summary,
        );
      } finally {
        conn.close();
        await server.shutdown();
      }
    });
  }
});

Deno.test("Server.shutdown() forced counts refusals a non-reading peer never got as dropped, not refused", async () => {
  const REPLY_BYTES = 4 * 1024 * 1024;
  const BIG = 4;
  const MAX = 4;
  const SENT = 60;
  const started = latch(BIG + MAX);
  const server = serve({
    hostname: HOST,
    port: 0,
    writeTimeout: 0,
    maxConcurrentHandlers: MAX,
  }, (payload, { signal }) => {
    started.count();
    // 16 MiB of replies fill the socket: nothing queued behind them leaves.
    if (payload[0] === 0) return new Uint8Array(REPLY_BYTES);
    return new Promise<Uint8Array>((resolve) =>
      signal.addEventListener("abort", () => resolve(payload), { once: true })
    );
  });
  await using raw = await connectRaw(portOf(server), {
    maxFrameBytes: REPLY_BYTES,
  });
  const wire = new Uint8Array(SENT * 10);
  for (let i = 0; i < SENT; i++) {
    wire.set(
      encodeFrame(FrameKind.Request, i + 1, new Uint8Array([i < BIG ? 0 : 1])),
      i * 10,
    );
  }
  await raw.write(wire);
  await withTimeout(started.promise, 2000, "handlers at their limit");
  // The peer reads nothing until the shutdown is over.
  const report = await withTimeout(
    server.shutdown({ timeout: 50 }),
    3000,
    "shutdown",
  );
  const end = await withTimeout(raw.end(), 5000, "read what arrived");
  const answered = end.frames.filter((f) => f.kind === FrameKind.Response)
    .length;
  const refused = end.frames.filter((f) => f.kind === FrameKind.Refused)
    .length;
  const summary =
    `sent ${SENT}, answered ${answered}, refusals read ${refused}, report ${
      JSON.stringify(report)
    }`;
  assert.ok(answered < BIG, summary);
  assert.equal(report.refused, refused, summary);
  assert.equal(
    report.handlersCut + report.refused + report.dropped,
    SENT - answered,
    summary,
  );
});
