/**
 * Web Streams on the public surface: `client.messages()`,
 * `server.messages()`, `client.status()`, `server.status()` and
 * `client.writable`. Backpressure is asserted on the library's own
 * accounting (handler slots, messages decoded but not yet read), never on
 * timing.
 */

import assert from "node:assert/strict";
import {
  type ClientStatus,
  ClosedError,
  dial,
  FrameTooLargeError,
  type InboundMessage,
  NoSessionError,
  RemoteError,
  serve,
  type Session,
} from "../mod.ts";
import { lengthPrefixed } from "../framing/mod.ts";
import type { SessionImpl } from "../session/session.ts";
import {
  dec,
  enc,
  HOST,
  pollUntil,
  portOf,
  serveLoopback,
} from "./_loopback.ts";

const FAST_RECONNECT = { initial: 10, max: 50 } as const;

/** A server whose first session is handed out once it connects. */
function serverWithSession(
  options: Parameters<typeof serveLoopback>[0] = {},
) {
  const connected = Promise.withResolvers<Session<Uint8Array>>();
  const server = serveLoopback({
    ...options,
    onConnect: (session) => connected.resolve(session),
  });
  return { server, session: connected.promise };
}

Deno.test("Client.messages() yields pushes and requests; respond() and fail() answer the server", async () => {
  const { server, session: serverSide } = serverWithSession();
  await using _server = server;
  await using client = await dial(`${HOST}:${server.port}`);
  const reader = client.messages()[Symbol.asyncIterator]();
  const session = await serverSide;

  await session.send(enc("pushed"));
  const push = (await reader.next()).value as InboundMessage<Uint8Array>;
  assert.equal(push.kind, "push");
  assert.equal(push.expectsReply, false);
  assert.equal(dec(push.message), "pushed");
  assert.equal(push.session, client.sessions[0]);
  push.respond(enc("ignored")); // nothing is owed for a push

  const asked = session.request(enc("question"));
  const request = (await reader.next()).value as InboundMessage<Uint8Array>;
  assert.equal(request.kind, "request");
  assert.equal(request.expectsReply, true);
  request.respond(enc(`answer to ${dec(request.message)}`));
  assert.equal(dec(await asked), "answer to question");
  assert.throws(() => request.respond(), TypeError);

  const failing = session.request(enc("bad"));
  const bad = (await reader.next()).value as InboundMessage<Uint8Array>;
  bad.fail(new Error("no such thing"));
  await assert.rejects(failing, (error: unknown) => {
    assert.ok(error instanceof RemoteError);
    assert.match(error.message, /no such thing/);
    return true;
  });
  await reader.return?.();
});

Deno.test("Client.messages() stands in for the handler while open; the handler takes over after cancel", async () => {
  const { server, session: serverSide } = serverWithSession();
  await using _server = server;
  await using client = await dial(`${HOST}:${server.port}`, {
    handler: (message) => enc(`handler: ${dec(message)}`),
  });
  const session = await serverSide;
  const stream = client.messages();
  assert.throws(() => client.messages(), TypeError); // one at a time
  const reader = stream.getReader();
  const asked = session.request(enc("a"));
  const first = await reader.read();
  first.value!.respond(enc("stream: a"));
  assert.equal(dec(await asked), "stream: a");
  await reader.cancel();
  assert.equal(dec(await session.request(enc("b"))), "handler: b");
  // A new stream may open once the old one is gone.
  const again = client.messages();
  await again.cancel();
});

Deno.test("Client.messages() cancelled with unread requests answers them as failed handlers and frees their slots", async () => {
  const { server, session: serverSide } = serverWithSession();
  await using _server = server;
  await using client = await dial(`${HOST}:${server.port}`);
  const session = await serverSide;
  const stream = client.messages();
  const asked = [1, 2, 3].map((n) => session.request(enc(`r${n}`)));
  const clientSession = client.sessions[0]!;
  await pollUntil(() => clientSession.stats().handlersRunning === 3);
  await stream.cancel(new Error("done reading"));
  for (const request of asked) {
    await assert.rejects(request, (error: unknown) => {
      assert.ok(error instanceof RemoteError);
      assert.match(error.message, /message stream was cancelled/);
      return true;
    });
  }
  assert.equal(clientSession.stats().handlersRunning, 0);
});

Deno.test("Client.messages() aborted by its signal errors with the reason and lets go", async () => {
  const { server, session: serverSide } = serverWithSession();
  await using _server = server;
  await using client = await dial(`${HOST}:${server.port}`);
  const session = await serverSide;
  const controller = new AbortController();
  const reader = client.messages({ signal: controller.signal }).getReader();
  const read = reader.read();
  controller.abort(new Error("stop"));
  await assert.rejects(read, { message: "stop" });
  // Let go: with no handler, a request now fails as unhandled.
  await assert.rejects(session.request(enc("x")), RemoteError);
});

Deno.test("Client.messages() ends when the client closes; Client.writable then errors with ClosedError", async () => {
  const { server, session: serverSide } = serverWithSession();
  await using _server = server;
  const client = await dial(`${HOST}:${server.port}`);
  const session = await serverSide;
  const reader = client.messages().getReader();
  await session.send(enc("last"));
  const writer = client.writable.getWriter();
  await writer.write(enc("before close"));
  const pending = reader.read();
  assert.equal(dec((await pending).value!.message), "last");
  await client.close();
  assert.deepEqual(await reader.read(), { done: true, value: undefined });
  // The send a write starts fails at once; the stream errors with it.
  await writer.write(enc("after close")).catch(() => {});
  await assert.rejects(writer.closed, ClosedError);
});

Deno.test("Client.messages() errors with NoSessionError once every slot gave up reconnecting, and so does one opened after", async () => {
  const server = serveLoopback({ handler: (p) => p });
  const client = await dial(`${HOST}:${server.port}`, {
    heartbeat: false,
    reconnect: { ...FAST_RECONNECT, maxAttempts: 2 },
  });
  try {
    const reader = client.messages().getReader();
    const status = client.status()[Symbol.asyncIterator]();
    await server.shutdown();
    await assert.rejects(reader.read(), NoSessionError);
    // The status stream saw the slot give up before the message stream erred.
    for (;;) {
      const { value, done } = await status.next();
      assert.ok(!done, "the status stream ended before the slot gave up");
      if (value.type === "error") break;
    }
    await assert.rejects(
      client.messages().getReader().read(),
      NoSessionError,
    );
  } finally {
    await client.close();
  }
});

Deno.test("Client.messages(): a reader that stops pauses the server (its sends wait); 100,000 pushes stay bounded", async () => {
  const N = 100_000;
  const payload = new Uint8Array(1024);
  const { server, session: serverSide } = serverWithSession();
  await using _server = server;
  await using client = await dial(`${HOST}:${server.port}`, {
    heartbeat: false,
  });
  const max = client.settings.maxConcurrentHandlers;
  const session = await serverSide as SessionImpl<Uint8Array>;
  const reader = client.messages().getReader();
  const clientSession = client.sessions[0]!;
  let sent = 0;
  const producer = (async () => {
    for (let i = 0; i < N; i++) {
      const written = session.send(payload).then(() => void sent++);
      if (i % 256 === 255 || i === N - 1) await written;
      else written.catch(() => {}); // a failure shows at the next await
    }
  })();
  let read = 0;
  // Decoded but not read: held by the gate, waiting in the stream, or left
  // in the batch the read loop paused in (at most a slab's worth).
  const slab = (256 * 1024) / (payload.length + 9);
  const bound = 2 * max + slab;
  const unread = () => clientSession.stats().messagesIn - read;
  for (; read < 10; read++) await reader.read();
  // The reader stopped: the client's slots fill, as many are held, its
  // reading pauses, and the server's write stays stuck behind TCP.
  await pollUntil(
    () =>
      clientSession.stats().handlersRunning === max && unread() >= 2 * max &&
      session.writeStartedAt !== 0,
    { timeout: 10_000 },
  );
  assert.ok(sent < N, `the server sent all ${N} to a reader that stopped`);
  assert.ok(unread() <= bound, `${unread()} unread > ${bound}`);
  let worst = 0;
  while (read < N) {
    const { value } = await reader.read();
    assert.equal(value!.message.length, payload.length);
    read++;
    worst = Math.max(worst, unread());
  }
  await producer;
  assert.ok(worst <= bound, `${worst} unread > ${bound}`);
  assert.equal(sent, N);
  await reader.cancel();
});

Deno.test("Server.messages({ session }): a reader that stops pauses the client's writable; 100,000 pushes arrive in order", async () => {
  const N = 100_000;
  const { server, session: connected } = serverWithSession();
  await using _server = server;
  await using client = await dial(`${HOST}:${server.port}`, {
    heartbeat: false,
  });
  const session = await connected as SessionImpl<Uint8Array>;
  const max = server.settings.maxConcurrentHandlers;
  const reader = server.messages({ session }).getReader();
  let produced = 0;
  const messages = ReadableStream.from((function* () {
    const payload = new Uint8Array(1024);
    for (let i = 0; i < N; i++, produced++) {
      new DataView(payload.buffer).setUint32(0, i);
      yield payload; // reused: a write copies it before it resolves
    }
  })());
  const piped = messages.pipeTo(client.writable);
  let read = 0;
  const slab = (256 * 1024) / (1024 + 9);
  const bound = 2 * max + slab;
  const unread = () => session.stats().messagesIn - read;
  const clientSession = client.sessions[0]!;
  await pollUntil(
    () =>
      session.stats().handlersRunning === max && unread() >= 2 * max &&
      (clientSession as SessionImpl<Uint8Array>).writeStartedAt !== 0,
    { timeout: 10_000 },
  );
  assert.ok(unread() <= bound, `${unread()} unread > ${bound}`);
  // The writable took no more than its window beyond what was written.
  const inHand = produced - clientSession.stats().messagesOut;
  const window = client.settings.outboundBuffer;
  assert.ok(inHand <= window + 4, `${inHand} messages in hand > ${window}`);
  let worst = 0;
  while (read < N) {
    const { value } = await reader.read();
    const message = value!.message;
    assert.equal(
      new DataView(message.buffer, message.byteOffset).getUint32(0),
      read,
    );
    read++;
    worst = Math.max(worst, unread());
  }
  await piped;
  assert.ok(worst <= bound, `${worst} unread > ${bound}`);
  await reader.cancel();
});

Deno.test("Server.messages() takes every session without a stream of its own; a session's stream takes precedence", async () => {
  await using server = serveLoopback();
  const all = server.messages().getReader();
  await using a = await dial(`${HOST}:${server.port}`);
  await using b = await dial(`${HOST}:${server.port}`);
  const aSession = server.sessions.find((s) =>
    portOf(s.remoteAddr) === portOf(a.sessions[0]!.localAddr)
  )!;
  const own = server.messages({ session: aSession }).getReader();
  assert.throws(() => server.messages({ session: aSession }), TypeError);
  const fromA = a.request(enc("from a"));
  const fromB = b.request(enc("from b"));
  const mine = (await own.read()).value!;
  assert.equal(dec(mine.message), "from a");
  mine.respond(enc("own stream"));
  const shared = (await all.read()).value!;
  assert.equal(dec(shared.message), "from b");
  shared.respond(enc("server stream"));
  assert.equal(dec(await fromA), "own stream");
  assert.equal(dec(await fromB), "server stream");
  await own.cancel();
  await all.cancel();
});

Deno.test("Server.messages({ session }) errors with the session's failure, and ends when the peer leaves", async () => {
  const { server, session: connected } = serverWithSession({
    maxFrameBytes: 1024,
  });
  await using _server = server;
  const client = await dial(`${HOST}:${server.port}`, {
    reconnect: { maxAttempts: 1 },
  });
  const session = await connected;
  const reader = server.messages({ session }).getReader();
  const read = reader.read();
  void client.send(new Uint8Array(4096)).catch(() => {});
  await assert.rejects(read, FrameTooLargeError);
  await client.close();

  const { server: second, session: next } = serverWithSession();
  await using _second = second;
  const other = await dial(`${HOST}:${second.port}`);
  const nextReader = second.messages({ session: await next }).getReader();
  await other.close();
  assert.deepEqual(await nextReader.read(), { done: true, value: undefined });
});

Deno.test("Client.status() yields connect, ready, disconnect, reconnecting, drain and close across a server restart", async () => {
  for (let attempt = 1;; attempt++) {
    const outcome = await statusAcrossRestart();
    if (outcome === "done") return;
    assert.ok(attempt < 3, "the freed port was taken 3 times in a row");
  }
});

async function statusAcrossRestart(): Promise<"done" | "port taken"> {
  const first = serveLoopback({ handler: (p) => p });
  const port = first.port;
  const client = await dial(`${HOST}:${port}`, {
    heartbeat: false,
    reconnect: FAST_RECONNECT,
  });
  const status = client.status()[Symbol.asyncIterator]();
  const next = async (type: string): Promise<ClientStatus> => {
    for (;;) {
      const { value, done } = await status.next();
      assert.ok(!done, `the status stream ended before "${type}"`);
      if (value.type === type) return value;
      // Reconnect attempts repeat while the port is closed.
      assert.ok(
        ["reconnecting", "error", "drain"].includes(value.type),
        `unexpected ${value.type} before ${type}`,
      );
    }
  };
  let second: ReturnType<typeof serveLoopback> | undefined;
  try {
    const shutdown = first.shutdown();
    await next("drain");
    const gone = await next("disconnect");
    assert.equal(gone.type === "disconnect" && typeof gone.session, "number");
    const retry = await next("reconnecting");
    assert.ok(retry.type === "reconnecting" && retry.attempt >= 1);
    assert.ok(retry.type === "reconnecting" && retry.delay >= 0);
    await shutdown;
    try {
      second = serveLoopback({ port, handler: (p) => p });
    } catch (error) {
      if (error instanceof Deno.errors.AddrInUse) return "port taken";
      throw error;
    }
    await next("connect");
    await next("ready");
    assert.equal(dec(await client.request(enc("back"))), "back");
    await client.close();
    await next("disconnect");
    await next("close");
    assert.deepEqual(await status.next(), { done: true, value: undefined });
    return "done";
  } finally {
    await client.close();
    await second?.shutdown();
    await first.shutdown();
  }
}

Deno.test("Client.status(): a reader that falls behind gets the newest events and a count of the dropped", async () => {
  await using server = serveLoopback();
  const client = await dial(`${HOST}:${server.port}`, { sessions: 3 });
  const status = client.status({ buffer: 2 });
  assert.throws(() => client.status({ buffer: 0 }), RangeError);
  await client.close(); // 3 disconnects and a close: 4 events, 2 kept
  const seen = await Array.fromAsync(status);
  assert.deepEqual(seen[0], { type: "dropped", count: 2 });
  assert.deepEqual(seen.slice(1).map((e) => e.type), ["disconnect", "close"]);
  // Opened after the close: empty.
  assert.deepEqual(await Array.fromAsync(client.status()), []);
});

Deno.test("Server.status() yields connect and disconnect, and ends with the shutdown report", async () => {
  const server = serveLoopback();
  const status = server.status();
  const client = await dial(`${HOST}:${server.port}`);
  await client.close();
  await server.shutdown();
  const types = (await Array.fromAsync(status)).map((e) => e.type);
  assert.deepEqual(types, ["connect", "disconnect", "shutdown"]);
});

Deno.test("Client.writable: a failed send errors the stream; a fresh one is handed out after", async () => {
  await using server = serveLoopback({ handler: () => undefined });
  await using client = await dial(`${HOST}:${server.port}`);
  const first = client.writable;
  assert.equal(client.writable, first); // the same while open
  const tooLarge = new Uint8Array(client.settings.maxFrameBytes + 1);
  const writer = first.getWriter();
  await writer.write(tooLarge).catch(() => {});
  await assert.rejects(writer.closed, RangeError);
  const second = client.writable;
  assert.notEqual(second, first);
  await ReadableStream.from([enc("ok")]).pipeTo(second);
  assert.notEqual(client.writable, second); // closed by pipeTo
});

Deno.test("Server.messages() with a fifo custom codec: a message holds its slot until respond(), replies keep request order", async () => {
  const codec = lengthPrefixed({ headerBytes: 2 });
  await using server = serve({ hostname: HOST, port: 0, codec });
  const reader = server.messages().getReader();
  await using client = await dial(`${HOST}:${server.port}`, codec, {
    correlation: "fifo",
    heartbeat: false,
  });
  const first = client.request(enc("one"));
  const second = client.request(enc("two"));
  const a = (await reader.read()).value!;
  const b = (await reader.read()).value!;
  assert.equal(a.kind, "message");
  assert.equal(a.expectsReply, true);
  const session = server.sessions[0]!;
  assert.equal(session.stats().handlersRunning, 2);
  b.respond(enc(`re ${dec(b.message)}`)); // answered first, sent second
  a.respond(enc(`re ${dec(a.message)}`));
  assert.equal(dec(await first), "re one");
  assert.equal(dec(await second), "re two");
  assert.equal(session.stats().handlersRunning, 0);
  await reader.cancel();
});

Deno.test("messages() opened after its client, server or session closed ends at once", async () => {
  const { server, session: connected } = serverWithSession();
  const client = await dial(`${HOST}:${server.port}`);
  const session = await connected;
  const early = client.messages(); // makes the client's streams
  await early.cancel();
  await client.close();
  await session.closed;
  assert.deepEqual(await Array.fromAsync(client.messages()), []);
  assert.deepEqual(await Array.fromAsync(server.messages({ session })), []);
  await server.shutdown();
  assert.deepEqual(await Array.fromAsync(server.messages()), []);
  assert.deepEqual(await Array.fromAsync(server.status()), []);
});

Deno.test("Client.messages({ session }) takes that session's messages only; the handler keeps the others", async () => {
  await using server = serveLoopback();
  const handled: string[] = [];
  await using client = await dial(`${HOST}:${server.port}`, {
    sessions: 2,
    handler: (message) => void handled.push(dec(message)),
  });
  await pollUntil(() => server.sessions.length === 2);
  const mine = client.sessions[0]!;
  const other = client.sessions[1]!;
  const reader = client.messages({ session: mine }).getReader();
  const serverSideOf = (session: Session<Uint8Array>) =>
    server.sessions.find((s) =>
      portOf(s.remoteAddr) === portOf(session.localAddr)
    )!;
  await serverSideOf(other).send(enc("to the handler"));
  await serverSideOf(mine).send(enc("to the stream"));
  const { value } = await reader.read();
  assert.equal(dec(value!.message), "to the stream");
  assert.equal(value!.session, mine);
  await pollUntil(() => handled.length === 1);
  assert.deepEqual(handled, ["to the handler"]);
  await reader.cancel();
});
