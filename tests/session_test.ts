/**
 * The session's state machine driven over an in-memory transport pair: no
 * sockets, every byte under the test's control.
 */

import { Lifecycle } from "../session/lifecycle.ts";
import assert from "node:assert/strict";
import { Correlator, type Pending, Retry } from "../_correlation.ts";
import type { Dialect } from "../session/dialect.ts";
import { defaultDialect } from "../_protocol_dialect.ts";
import { ConnectionClosedError } from "../errors.ts";
import { noopLogger } from "../logger.ts";
import { defaultCodec, FrameKind } from "../protocol.ts";
import type { SessionConfig } from "../session/config.ts";
import { SessionImpl } from "../session/session.ts";
import { type Handler, newCounters } from "../session/types.ts";
import { memoryPair, type MemoryTransport } from "./_memory_transport.ts";
import { pollUntil } from "./_loopback.ts";

const enc = (text: string) => new TextEncoder().encode(text);
const dec = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

function config(
  side: "client" | "server",
  options: Partial<SessionConfig<Uint8Array>> & {
    onHandler?: Handler<Uint8Array>;
  } = {},
): SessionConfig<Uint8Array> {
  const { onHandler, ...rest } = options;
  return {
    side,
    dialect: defaultDialect() as unknown as Dialect<Uint8Array>,
    correlator: new Correlator(),
    counters: newCounters(),
    logger: noopLogger,
    handler: () => onHandler,
    context: {},
    retry: undefined,
    replies: side === "server" ? "session" : "any",
    onHandlerError: undefined,
    maxConcurrentHandlers: 64,
    highWaterMark: 100,
    maxWriteBytes: 64 * 1024 * 1024,
    requestTimeout: 5000,
    onClose: () => {},
    onPeerDrain: () => {},
    ...rest,
  };
}

/** A client and a server session joined in memory, both started and ready. */
function joined(
  client: Partial<SessionConfig<Uint8Array>> = {},
  server: Parameters<typeof config>[1] = { onHandler: (message) => message },
) {
  const [a, b] = memoryPair();
  const clientCfg = config("client", client);
  const serverCfg = config("server", server);
  const c = new SessionImpl<Uint8Array>(a, clientCfg);
  const s = new SessionImpl<Uint8Array>(b, serverCfg);
  assert.equal(c.state, "handshaking");
  c.start();
  s.start();
  c.markReady();
  s.markReady();
  return {
    client: c,
    server: s,
    clientEnd: a as MemoryTransport,
    serverEnd: b as MemoryTransport,
    [Symbol.dispose]() {
      c.close();
      s.close();
      clientCfg.correlator.close();
      serverCfg.correlator.close();
    },
  };
}

/** Lets queued microtasks (a flush, a write) run. */
async function turns(n = 4): Promise<void> {
  for (let i = 0; i < n; i++) await Promise.resolve();
}

Deno.test("SessionImpl goes handshaking → ready → draining → closed when the server drains, and the client answers the drain", async () => {
  let peerDrained = 0;
  using pair = joined({ onPeerDrain: () => void peerDrained++ });
  assert.equal(pair.client.state, "ready");
  assert.equal(dec(await pair.client.request(enc("hi"))), "hi");
  const result = await pair.server.drain(new AbortController().signal);
  assert.equal(result.forced, false);
  assert.equal(pair.server.state, "closed");
  await pair.client.closed;
  assert.equal(pair.client.state, "closed");
  assert.equal(pair.client.closeReason, undefined);
  assert.equal(peerDrained, 1);
});

Deno.test("SessionImpl drains from the client side: the server answers, the client closes clean", async () => {
  using pair = joined();
  const reply = pair.client.request(enc("in flight"));
  const result = await pair.client.drain(new AbortController().signal);
  assert.equal(dec(await reply), "in flight");
  assert.deepEqual(result, {
    forced: false,
    handlers: 0,
    refused: 0,
    requests: 0,
    reasons: [],
  });
  await pair.server.closed;
  assert.equal(pair.server.state, "closed");
});

Deno.test("SessionImpl refuses new requests once draining", async () => {
  using pair = joined();
  const drained = pair.server.drain(new AbortController().signal);
  await pair.client.request(enc("x")).then(
    () => {},
    () => {},
  );
  await pair.client.closed;
  await assert.rejects(pair.client.request(enc("late")), ConnectionClosedError);
  await drained;
});

Deno.test("SessionImpl at the peer's end of stream fails its pending requests and closes", async () => {
  using pair = joined({}, { onHandler: () => new Promise(() => {}) });
  const pending = pair.client.request(enc("never answered"));
  await turns();
  await pair.serverEnd.closeWrite();
  await assert.rejects(pending, ConnectionClosedError);
  await pair.client.closed;
  assert.ok(pair.client.closeReason instanceof ConnectionClosedError);
});

Deno.test("SessionImpl closes on a reset, failing what is pending on both ends", async () => {
  using pair = joined({}, { onHandler: () => new Promise(() => {}) });
  const pending = pair.client.request(enc("x"));
  await turns();
  pair.clientEnd.reset(pair.serverEnd);
  await assert.rejects(pending, ConnectionClosedError);
  await Promise.all([pair.client.closed, pair.server.closed]);
  const reason = pair.client.closeReason as ConnectionClosedError;
  assert.ok(reason.cause instanceof Deno.errors.ConnectionReset);
});

Deno.test("SessionImpl closes when a write fails: the request and the send in it fail", async () => {
  using pair = joined();
  pair.clientEnd.failWrites(new Deno.errors.BrokenPipe("gone"));
  const request = pair.client.request(enc("x"));
  const send = pair.client.send(enc("y"));
  await assert.rejects(request, ConnectionClosedError);
  await assert.rejects(send, ConnectionClosedError);
  assert.equal(pair.client.state, "closed");
});

Deno.test("SessionImpl hands a routed request still queued at close to the retry; one in the write may have run and fails", async () => {
  const retried: { entry: Pending; bytes: Uint8Array }[] = [];
  using pair = joined({
    retry: (entry, bytes) => {
      retried.push({ entry, bytes });
      entry.fail(new Error("retried elsewhere"));
    },
  });
  pair.clientEnd.stallWrites();
  const inWrite = pair.client.requestOn(
    enc("first"),
    undefined,
    undefined,
    false,
    Retry.Unprocessed,
  );
  await turns(); // the flush starts: its write is stalled
  const queued = pair.client.requestOn(
    enc("second"),
    undefined,
    undefined,
    false,
    Retry.Unprocessed,
  );
  pair.client.close();
  await assert.rejects(inWrite, ConnectionClosedError);
  await assert.rejects(queued, { message: "retried elsewhere" });
  assert.equal(retried.length, 1);
  const [frame] = defaultCodec().decoder().decode(retried[0]!.bytes);
  assert.equal(frame?.kind, FrameKind.Request);
  assert.equal(dec(frame!.payload), "second");
});

Deno.test("SessionImpl holds requests past maxConcurrentHandlers and runs them in order as slots free", async () => {
  const release = Promise.withResolvers<void>();
  const seen: string[] = [];
  using pair = joined({}, {
    maxConcurrentHandlers: 1,
    onHandler: async (message) => {
      seen.push(dec(message));
      await release.promise;
      return message;
    },
  });
  const replies = ["a", "b", "c"].map((t) => pair.client.request(enc(t)));
  await pollUntil(() => pair.server.stats().messagesIn === 3, { interval: 1 });
  assert.deepEqual(seen, ["a"]);
  assert.equal(pair.server.stats().handlersRunning, 1);
  release.resolve();
  assert.deepEqual((await Promise.all(replies)).map(dec), ["a", "b", "c"]);
});

Deno.test("SessionImpl makes requests wait for room in a full write queue, and sends them once it drains", async () => {
  using pair = joined({ highWaterMark: 2 });
  pair.clientEnd.stallWrites();
  const first = pair.client.request(enc("0"));
  await turns(); // in the stalled write
  const more = ["1", "2", "3"].map((t) => pair.client.request(enc(t)));
  assert.equal(pair.client.stats().queued, 2); // "3" waits for room
  pair.clientEnd.resumeWrites();
  assert.deepEqual(
    (await Promise.all([first, ...more])).map(dec),
    ["0", "1", "2", "3"],
  );
});

Deno.test("Lifecycle.whenEnded() resolves when asked after the session closed (a drain that half-closed as the session closed holds no timer)", async () => {
  const life = new Lifecycle({ isIdle: () => true });
  life.drain();
  assert.equal(life.close(), true);
  // Before the fix this promise never settled: the test would leak and hang.
  await life.whenEnded();
  await life.whenDrained();
});
