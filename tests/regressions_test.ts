/**
 * Regression tests for the defects the code review found (fixed in
 * "Fixes from the code review"). Each test fails on the code before that
 * commit and passes now; the reviewer's reproductions are the source of each
 * scenario. Real sockets on 127.0.0.1, port 0; no sleeps as synchronisation.
 */

import assert from "node:assert/strict";
import {
  type Client,
  ConnectionClosedError,
  ConnectionError,
  dial,
  FrameKind,
  type Logger,
  NoSessionError,
  RemoteError,
  serve,
  type ServerEventDetail,
  type Session,
  SlowConsumerError,
  TimeoutError,
} from "../mod.ts";
import { type Codec, delimited, lengthPrefixed } from "../framing/mod.ts";
import { withTimeout } from "./_process.ts";
import {
  bytes,
  CaptureLogger,
  connectRaw,
  encodeFrame,
  nextEvents,
  text,
} from "./_raw_peer.ts";
import { closedPort } from "./_loopback.ts";

const HOST = "127.0.0.1";

type Detail<K extends ServerEventDetail["type"]> = Extract<
  ServerEventDetail,
  { type: K }
>;

/** Concatenates byte arrays. */
function concat(...parts: Uint8Array[]): Uint8Array {
  let total = 0;
  for (const part of parts) total += part.length;
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/**
 * Calls `start` and asserts that it returned a promise instead of throwing
 * synchronously (callers that only `.catch()` would miss a throw).
 */
function asPromise<R>(start: () => Promise<R>): Promise<R> {
  let result: Promise<R> | undefined;
  assert.doesNotThrow(() => {
    result = start();
  }, "expected a rejected promise, not a synchronous throw");
  assert.ok(result instanceof Promise);
  return result;
}

// ---------------------------------------------------------------------------
// 1. A payload the dialect refuses leaves no pending entry behind.

Deno.test("Client.request() with a payload the dialect refuses rejects and leaves nothing pending to time out later", async () => {
  const hold = Promise.withResolvers<void>();
  await using server = serve({
    hostname: HOST,
    port: 0,
    handler: async (payload) => {
      // The canary request: answered only once the test has seen it time out.
      if (payload[0] === 0xff) await hold.promise;
      return payload;
    },
  });
  await using client = await dial(`${HOST}:${server.port}`, {
    maxFrameBytes: 1024,
    requestTimeout: 50,
  });

  await assert.rejects(
    asPromise(() => client.request(new Uint8Array(2048))),
    RangeError,
  );
  assert.equal(client.stats().pending, 0);
  await assert.rejects(
    asPromise(() => client.request("not bytes" as unknown as Uint8Array)),
    TypeError,
  );
  assert.equal(client.stats().pending, 0);

  // A canary made after them with the same timeout: once it has timed out,
  // any entry the refused requests had left behind would have timed out too
  // (and rejected with nobody listening: Deno fails the test on that).
  await assert.rejects(client.request(new Uint8Array([0xff])), TimeoutError);
  hold.resolve();
  const reply = await client.request(new Uint8Array([1, 2]), {
    timeout: 2000,
  });
  assert.deepEqual([...reply], [1, 2]);
  const stats = client.stats();
  assert.equal(stats.pending, 0);
  assert.equal(stats.timeouts, 1, "only the canary timed out");
});

// ---------------------------------------------------------------------------
// 2. A message the codec refuses throws to its caller; nothing poisons the queue.

function lineCodec(): Codec<Uint8Array> {
  return delimited({
    delimiter: "\n",
    correlationId: (line) => text(line).split(" ")[0],
  });
}

Deno.test("Client.request() with a message the codec refuses rejects with its TypeError and the session keeps working", async () => {
  const codec = lineCodec();
  await using server = serve({
    hostname: HOST,
    port: 0,
    codec,
    handler: (line) => line,
  });
  await using client = await dial(`${HOST}:${server.port}`, codec, {
    requestTimeout: 2000,
  });
  await assert.rejects(
    asPromise(() => client.request(bytes("1 bad\nmessage"))),
    { name: "TypeError", message: /delimiter/ },
  );
  assert.equal(client.stats().pending, 0);
  assert.equal(text(await client.request(bytes("2 good"))), "2 good");
  assert.equal(client.sessions.length, 1);
  assert.equal(client.stats().reconnects, 0);
  assert.equal(server.stats().accepted, 1);
});

Deno.test("Server handler reply the codec refuses becomes the onHandlerError reply and the session keeps serving", async () => {
  const codec = lineCodec();
  const idOf = (line: Uint8Array) => text(line).split(" ")[0];
  await using server = serve({
    hostname: HOST,
    port: 0,
    codec,
    // "async" lines are answered from a promise, the others at once: both
    // paths reply with a line the codec refuses (it contains the delimiter).
    handler: (line) => {
      const words = text(line).split(" ");
      if (words[1] !== "bad") return line;
      const reply = bytes(`${words[0]} two\nlines`);
      return words[2] === "async" ? Promise.resolve(reply) : reply;
    },
    onHandlerError: (error, line) =>
      bytes(`${idOf(line)} failed: ${(error as Error).name}`),
  });
  await using client = await dial(`${HOST}:${server.port}`, codec, {
    requestTimeout: 2000,
  });
  assert.equal(
    text(await client.request(bytes("3 bad async"))),
    "3 failed: TypeError",
  );
  assert.equal(text(await client.request(bytes("4 good"))), "4 good");
  assert.equal(
    text(await client.request(bytes("5 bad sync"))),
    "5 failed: TypeError",
  );
  assert.equal(text(await client.request(bytes("6 good"))), "6 good");
  assert.equal(server.stats().accepted, 1);
  assert.equal(server.stats().sessions, 1);
  assert.equal(client.stats().reconnects, 0);
});

Deno.test("Server handler that throws a value without toString answers with RemoteError and keeps serving", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    handler: (payload) => {
      const how = text(payload);
      if (how === "async") return Promise.reject(Object.create(null));
      if (how === "sync") throw Object.create(null);
      return payload;
    },
  });
  await using client = await dial(`${HOST}:${server.port}`, {
    requestTimeout: 2000,
  });
  await assert.rejects(client.request(bytes("async")), RemoteError);
  await assert.rejects(client.request(bytes("sync")), RemoteError);
  assert.equal(text(await client.request(bytes("ok"))), "ok");
  assert.equal(server.stats().accepted, 1);
  assert.equal(client.stats().reconnects, 0);
});

// ---------------------------------------------------------------------------
// 3. send() promises of a batch whose write failed settle.

Deno.test("Session.send() promises of a write in flight reject with ConnectionClosedError when the session closes", async () => {
  const connected = Promise.withResolvers<Session<Uint8Array>>();
  await using server = serve({
    hostname: HOST,
    port: 0,
    onConnect: (session) => connected.resolve(session),
  });
  // A peer that never reads: the write of the batch cannot complete.
  await using peer = await connectRaw(server.port);
  const session = await connected.promise;
  const chunk = new Uint8Array(4 * 1024 * 1024);
  const sends: Promise<void>[] = [];
  for (let i = 0; i < 8; i++) sends.push(session.send(chunk));
  // The flush (a microtask queued by the first send) has taken the batch.
  await Promise.resolve();
  assert.equal(session.stats().queued, 0, "the batch is being written");
  session.close();
  const results = await withTimeout(
    Promise.allSettled(sends),
    3000,
    "the send() promises",
  );
  for (const result of results) {
    assert.equal(result.status, "rejected");
    assert.ok(
      result.reason instanceof ConnectionClosedError,
      `expected ConnectionClosedError, got ${result.reason}`,
    );
  }
  peer.close();
});

// ---------------------------------------------------------------------------
// 4. One client cannot answer a request the server made to another.

Deno.test("Session.request() from the server is not completed by a reply from another client", async () => {
  const first = Promise.withResolvers<Session<Uint8Array>>();
  await using server = serve({
    hostname: HOST,
    port: 0,
    handler: (payload) => payload,
    onConnect: (session) => first.resolve(session),
  });
  const answer = Promise.withResolvers<void>();
  await using a = await dial(`${HOST}:${server.port}`, {
    handler: async () => {
      await answer.promise;
      return bytes("from A");
    },
  });
  try {
    const toA = (await first.promise).request(bytes("for A"), {
      timeout: 5000,
    });
    let outcome: string | undefined;
    toA.then(
      (reply) => outcome = text(reply),
      (error) => outcome = `rejected: ${error}`,
    );

    // B answers ids 1..5 (the server's table starts at 1), then pings: the
    // pong proves the server has read the forged responses.
    await using b = await connectRaw(server.port);
    const forged = [];
    for (let id = 1; id <= 5; id++) {
      forged.push(encodeFrame(FrameKind.Response, id, bytes("forged by B")));
    }
    await b.write(concat(...forged, encodeFrame(FrameKind.Ping, 77)));
    assert.equal((await b.expect(FrameKind.Pong)).id, 77);
    assert.equal(outcome, undefined, "B's response completed A's request");
    assert.equal(server.stats().lateReplies, 5);

    answer.resolve();
    assert.equal(text(await toA), "from A");
    assert.equal(a.stats().reconnects, 0);
  } finally {
    answer.resolve();
  }
});

// ---------------------------------------------------------------------------
// 5. Replies keep being read while the handlers are at their limit.

Deno.test("Server handler awaiting its own client's answer does not deadlock at maxConcurrentHandlers: 1", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    maxConcurrentHandlers: 1,
    requestTimeout: 1000,
    handler: async (payload, { session }) =>
      concat(bytes("server:"), await session.request(payload)),
  });
  await using client = await dial(`${HOST}:${server.port}`, {
    handler: (payload) => concat(bytes("client:"), payload),
    requestTimeout: 5000,
  });
  const replies = await withTimeout(
    Promise.all(["a", "b", "c"].map((x) => client.request(bytes(x)))),
    5000,
    "three requests",
  );
  assert.deepEqual(replies.map(text), [
    "server:client:a",
    "server:client:b",
    "server:client:c",
  ]);
});

// ---------------------------------------------------------------------------
// 6. maxWriteBytes holds for codecs without encodedLength.

Deno.test("Server.broadcast() cuts off a slow consumer at maxWriteBytes with a codec that has no encodedLength", async () => {
  const lp = lengthPrefixed({ headerBytes: 4 });
  // A user codec as in the README's ISO example: no encodedLength/encodeInto.
  const codec: Codec<Uint8Array> = {
    decoder: () => lp.decoder(),
    encode: (message) => lp.encode(message),
    correlationId: () => undefined,
  };
  const ready = Promise.withResolvers<void>();
  await using server = serve({
    hostname: HOST,
    port: 0,
    codec,
    maxWriteBytes: 1024 * 1024,
    writeTimeout: 0,
    // The handler runs only once the session is ready for broadcasts.
    handler: () => {
      ready.resolve();
    },
  });
  // A peer that sends one message and never reads.
  await using peer = await connectRaw(server.port);
  await peer.write(lp.encode(bytes("hello")));
  await withTimeout(ready.promise, 3000, "the session to be ready");

  const disconnected = nextEvents<Detail<"disconnect">>(server, "disconnect");
  const message = new Uint8Array(256 * 1024);
  let queued = 0;
  for (let i = 0; i < 64; i++) {
    const n = server.broadcast(message);
    if (n === 0) break;
    queued += n;
  }
  assert.ok(queued <= 5, `${queued} broadcasts of 256 KiB were queued`);
  const [detail] = await withTimeout(disconnected, 2000, "the cut-off");
  assert.ok(
    detail!.reason instanceof SlowConsumerError,
    `expected SlowConsumerError, got ${detail!.reason}`,
  );
  assert.equal(server.stats().sessions, 0);
  peer.close();
});

// ---------------------------------------------------------------------------
// 7. Requests held during onConnect run even if a drain began meanwhile.

Deno.test("Server.shutdown() during onConnect answers the request held meanwhile and reports it drained", async () => {
  const open = Promise.withResolvers<void>();
  const connected = Promise.withResolvers<Session<Uint8Array>>();
  const server = serve({
    hostname: HOST,
    port: 0,
    handler: (payload) => payload,
    onConnect: async (session) => {
      connected.resolve(session);
      await open.promise;
    },
  });
  try {
    // The client is driven by hand, so that the request is provably held
    // (read during onConnect) before the shutdown begins.
    await using peer = await connectRaw(server.port);
    const session = await connected.promise;
    await peer.write(
      concat(
        encodeFrame(FrameKind.Request, 1, bytes("held")),
        encodeFrame(FrameKind.Ping, 2),
      ),
    );
    // Frames are dispatched in order: the pong proves the request was read.
    assert.equal((await peer.expect(FrameKind.Pong)).id, 2);
    assert.equal(session.state, "handshaking");

    const report = server.shutdown({ timeout: 2000 });
    await peer.expect(FrameKind.Drain);
    assert.equal(session.state, "draining");
    // The client acknowledges the drain at once; then onConnect finishes.
    await peer.send(FrameKind.Drain, 0);
    open.resolve();
    const reply = await peer.expect(FrameKind.Response);
    assert.equal(reply.id, 1);
    assert.equal(text(reply.payload), "held");
    const end = await withTimeout(peer.end(), 3000, "the server's close");
    assert.equal(end.how, "eof");
    peer.close();
    const done = await withTimeout(report, 3000, "the shutdown report");
    assert.equal(done.sessions, 1);
    assert.equal(done.drained, 1);
    assert.equal(done.forced, 0);
    assert.equal(done.handlersCut, 0);
  } finally {
    open.resolve();
    await server.close();
  }
});

Deno.test("Server.shutdown() goes on when onDrain throws: the error is logged and the session drains", async () => {
  const codec = lineCodec();
  const logger = new CaptureLogger();
  const server = serve({
    hostname: HOST,
    port: 0,
    codec,
    logger,
    handler: (line) => line,
    onDrain: () => {
      throw new Error("no goodbye today");
    },
  });
  try {
    await using client = await dial(`${HOST}:${server.port}`, codec, {
      requestTimeout: 2000,
      reconnect: { maxAttempts: 1 },
    });
    assert.equal(text(await client.request(bytes("1 hi"))), "1 hi");
    const report = await withTimeout(
      server.shutdown({ timeout: 2000 }),
      3000,
      "the shutdown",
    );
    assert.equal(report.drained, 1);
    assert.equal(report.forced, 0);
    const entry = await logger.waitFor((e) => e.message === "onDrain failed");
    assert.equal(entry.level, "error");
    assert.equal(
      (entry.properties?.error as Error | undefined)?.message,
      "no goodbye today",
    );
  } finally {
    await server.close();
  }
});

// ---------------------------------------------------------------------------
// 8. A throwing shouldReconnect stops the slot, logged, instead of crashing.

const throwingPolicy = {
  shouldReconnect: (): boolean => {
    throw new Error("policy bug");
  },
};

Deno.test("dial() rejects with ConnectionError when reconnect.shouldReconnect throws, and logs it", async () => {
  const logger = new CaptureLogger();
  await assert.rejects(
    dial(`${HOST}:${closedPort()}`, {
      logger,
      connectTimeout: 3000,
      reconnect: throwingPolicy,
    }),
    ConnectionError,
  );
  const entry = logger.entries.find((e) => /shouldReconnect/.test(e.message));
  assert.ok(entry !== undefined, "the throw was logged");
  assert.equal(entry.level, "error");
  assert.equal((entry.properties?.error as Error).message, "policy bug");
});

Deno.test("Client stops the slot when reconnect.shouldReconnect throws after a disconnect, and logs it", async () => {
  const logger = new CaptureLogger();
  const server = serve({ hostname: HOST, port: 0, handler: (p) => p });
  let client: Client<Uint8Array> | undefined;
  try {
    client = await dial(`${HOST}:${server.port}`, {
      logger,
      requestTimeout: 2000,
      reconnect: throwingPolicy,
    });
    assert.deepEqual([...await client.request(new Uint8Array([1]))], [1]);
    await server.close();
    const entry = await withTimeout(
      logger.waitFor((e) => /shouldReconnect/.test(e.message)),
      3000,
      "the log entry",
    );
    assert.equal(entry.level, "error");
    await assert.rejects(
      client.request(new Uint8Array([2])),
      NoSessionError,
    );
  } finally {
    await client?.close();
    await server.close();
  }
});

// ---------------------------------------------------------------------------
// 9. Loggers that throw do not break anything.

Deno.test("serve() and dial() with a logger that throws still serve requests, handler errors and bad input", async () => {
  const fail = (): never => {
    throw new Error("log sink down");
  };
  const logger: Logger = { debug: fail, info: fail, warn: fail, error: fail };
  await using server = serve({
    hostname: HOST,
    port: 0,
    logger,
    handler: async (payload, { session }) => {
      const what = text(payload);
      if (what === "fail") throw new Error("boom");
      if (what === "ask") {
        // The client's handler throws too: it answers with an error frame.
        return await session.request(payload).then(
          () => bytes("answered"),
          (error) => bytes((error as Error).name),
        );
      }
      return payload;
    },
  });
  await using client = await dial(`${HOST}:${server.port}`, {
    logger,
    requestTimeout: 2000,
    handler: () => {
      throw new Error("client boom");
    },
  });
  assert.equal(text(await client.request(bytes("hi"))), "hi");
  await assert.rejects(client.request(bytes("fail")), {
    name: "RemoteError",
    message: "boom",
  });
  assert.equal(text(await client.request(bytes("ask"))), "RemoteError");

  // Bad input on another connection: an unknown frame kind closes it.
  await using raw = await connectRaw(server.port);
  await raw.write(encodeFrame(99, 1, bytes("garbage")));
  await withTimeout(raw.end(), 3000, "the bad connection to close");
  raw.close();

  assert.equal(text(await client.request(bytes("still"))), "still");
  assert.equal(server.stats().protocolErrors, 1);
  assert.equal(client.stats().reconnects, 0);
});

// ---------------------------------------------------------------------------
// 10. A foreign session rejects instead of throwing.

Deno.test("Client.request() with another client's session returns a promise rejected with TypeError", async () => {
  await using server = serve({ hostname: HOST, port: 0, handler: (p) => p });
  await using one = await dial(`${HOST}:${server.port}`);
  await using other = await dial(`${HOST}:${server.port}`);
  const foreign = other.sessions[0]!;
  await assert.rejects(
    asPromise(() => one.request(bytes("x"), { session: foreign })),
    { name: "TypeError", message: /does not belong/ },
  );
  assert.equal(one.stats().pending, 0);
  assert.equal(text(await one.request(bytes("y"))), "y");
});

// ---------------------------------------------------------------------------
// A connection whose session cannot be made is closed.

Deno.test("dial() closes the connection when the codec's decoder() throws", async () => {
  using listener = Deno.listen({ hostname: HOST, port: 0 });
  const codec: Codec<Uint8Array> = {
    decoder: () => {
      throw new Error("decoder init failed");
    },
    encode: (message) => message,
    correlationId: () => undefined,
  };
  const dialing = dial(`${HOST}:${listener.addr.port}`, codec, {
    connectTimeout: 3000,
    reconnect: { maxAttempts: 1 },
  });
  const rejected = assert.rejects(dialing, ConnectionError);
  using conn = await listener.accept();
  const n = await withTimeout(
    conn.read(new Uint8Array(16)),
    3000,
    "the client to close its connection",
  );
  assert.equal(n, null);
  await rejected;
});
