/**
 * A peer that speaks another protocol (TLS, HTTP) is named as such: `dial()`
 * fails at once with `ProtocolMismatchError`, and a server logs and counts
 * the foreign client. Certificates are made by openssl (tests/_certs.ts);
 * the TLS cases are ignored when it is missing.
 */

import assert from "node:assert/strict";
import {
  type ClientEventDetail,
  ConnectionClosedError,
  dial,
  FrameTooLargeError,
  isRetryableError,
  ProtocolMismatchError,
} from "../mod.ts";
import { lengthPrefixed } from "../framing/mod.ts";
import { defaultCodec, type Frame, FrameKind } from "../protocol.ts";
import { hasOpenssl, makeTestPki, OPENSSL_SUFFIX } from "./_certs.ts";
import { enc, HOST, portOf, rawPeer, serveLoopback } from "./_loopback.ts";
import { CaptureLogger, type LogEntry, nextEvents } from "./_raw_peer.ts";

const ignore = !hasOpenssl();

/** A fatal TLS alert, as a TLS server answers bytes that are not a ClientHello. */
const TLS_ALERT = Uint8Array.of(0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32);

/** Awaits a dial that must fail; closes the client if it did not. */
async function dialError(
  pending: Promise<{ close(o?: { timeout?: number }): Promise<void> }>,
): Promise<unknown> {
  let client;
  try {
    client = await pending;
  } catch (error) {
    return error;
  }
  await client.close({ timeout: 0 });
  assert.fail("dial() resolved but was expected to reject");
}

const badInput = (entry: LogEntry) =>
  entry.message === "Closing session: bad input from peer";

Deno.test({
  name:
    `dial() without tls rejects at once with ProtocolMismatchError against a TLS server${OPENSSL_SUFFIX}`,
  ignore,
  fn: async () => {
    await using pki = await makeTestPki();
    await using server = serveLoopback({
      tls: { cert: pki.serverCert, key: pki.serverKey },
    });
    const target = `${HOST}:${portOf(server.addr)}`;
    // connectTimeout is far longer than the test's own limit: only the
    // mismatch can end this dial in time.
    const error = await dialError(dial(target, { connectTimeout: 60_000 }));
    assert.ok(error instanceof ProtocolMismatchError, `got ${error}`);
    assert.equal(error.detected, "tls");
    assert.equal(
      error.message,
      `The peer at ${target} speaks TLS: connect with \`tls\` options`,
    );
    assert.ok(error.cause instanceof FrameTooLargeError, `${error.cause}`);
    assert.equal(isRetryableError(error), false);
  },
});

Deno.test("dial() rejects with ProtocolMismatchError (http) when the peer answers an HTTP response", async () => {
  using listener = Deno.listen({ hostname: HOST, port: 0 });
  const peer = (async () => {
    using conn = await listener.accept();
    await conn.read(new Uint8Array(64)); // the client's ping
    await conn.write(enc("HTTP/1.1 400 Bad Request\r\n\r\n"));
  })();
  const target = `${HOST}:${portOf(listener.addr)}`;
  const error = await dialError(dial(target, { connectTimeout: 60_000 }));
  await peer;
  assert.ok(error instanceof ProtocolMismatchError, `got ${error}`);
  assert.equal(error.detected, "http");
  assert.match(error.message, /speaks HTTP/);
  assert.match(error.message, /`HTTP\/1\.1 400 Bad Request`/);
});

Deno.test({
  name:
    `serve() without tls logs a TLS client as a protocol mismatch and counts it${OPENSSL_SUFFIX}`,
  ignore,
  fn: async () => {
    const logger = new CaptureLogger();
    await using server = serveLoopback({ logger });
    const conn = await Deno.connectTls({
      hostname: HOST,
      port: portOf(server.addr),
    });
    try {
      // The server reads the ClientHello, fails the session and closes.
      await assert.rejects(conn.handshake());
    } finally {
      conn.close();
    }
    const entry = await logger.waitFor(badInput);
    assert.equal(entry.level, "warn");
    const error = entry.properties?.error;
    assert.ok(error instanceof ProtocolMismatchError, `got ${error}`);
    assert.equal(error.detected, "tls");
    assert.match(
      error.message,
      /^A TLS client connected to this plain-text port \(from 127\.0\.0\.1:\d+\)/,
    );
    assert.equal(server.stats().protocolErrors, 1);
  },
});

Deno.test("serve() logs an HTTP request as a protocol mismatch and counts it", async () => {
  const logger = new CaptureLogger();
  await using server = serveLoopback({ logger });
  {
    using conn = await Deno.connect({ hostname: HOST, port: server.port });
    await conn.write(enc("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
    // The server closes the session: end of stream (or a reset).
    await conn.read(new Uint8Array(64)).catch(() => null);
  }
  const error = (await logger.waitFor(badInput)).properties?.error;
  assert.ok(error instanceof ProtocolMismatchError, `got ${error}`);
  assert.equal(error.detected, "http");
  assert.match(error.message, /^An HTTP client connected to this port/);
  assert.match(error.message, /`GET \/health HTTP\/1\.1`/);
  assert.equal(server.stats().protocolErrors, 1);
});

Deno.test("dial() client logs a ProtocolMismatchError at error level once up, and reconnects with backoff", async () => {
  // A default-protocol peer by hand: the first and third connections answer
  // the ping, the second answers with a TLS alert.
  await using peer = rawPeer(defaultCodec());
  const answerPing = async () => {
    const conn = await peer.accept();
    const ping = await conn.read();
    assert.equal(ping?.kind, FrameKind.Ping);
    await conn.write({ ...ping!, kind: FrameKind.Pong } as Frame);
    return conn;
  };
  const logger = new CaptureLogger();
  const dialing = dial(peer.target, {
    logger,
    connectTimeout: 60_000,
    heartbeat: false,
    reconnect: { initial: 1, max: 1 },
  });
  const first = await answerPing();
  await using client = await dialing;

  const failed = nextEvents<ClientEventDetail>(client, "error");
  const backingOff = nextEvents<ClientEventDetail>(client, "reconnecting", 2);
  first.close();
  const second = await peer.accept();
  await second.read();
  await second.writeBytes(TLS_ALERT);
  second.close();
  const [event] = await failed;
  assert.ok(
    event?.type === "error" && event.error instanceof ProtocolMismatchError,
    `got ${JSON.stringify(event)}`,
  );
  const entry = await logger.waitFor((e) =>
    e.message === "Connection attempt failed"
  );
  assert.equal(entry.level, "error");
  assert.ok(entry.properties?.error instanceof ProtocolMismatchError);
  assert.equal(client.isClosed, false);

  const ready = nextEvents<ClientEventDetail>(client, "ready");
  const third = await answerPing();
  await backingOff;
  await ready;
  third.close();
});

Deno.test("Client logs at error level a ready session that meets a peer of another protocol (custom codec: no connect ping)", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const peer = (async () => {
    using conn = await listener.accept();
    // Refuse reconnects: this test is about the session that was ready.
    listener.close();
    await conn.read(new Uint8Array(64)); // the request
    await conn.write(TLS_ALERT);
  })();
  const logger = new CaptureLogger();
  const client = await dial(
    `${HOST}:${portOf(listener.addr)}`,
    lengthPrefixed(),
    { correlation: "fifo", logger },
  );
  try {
    const error = await client.request(enc("hi")).then(
      () => assert.fail("request() resolved"),
      (error: unknown) => error,
    );
    await peer;
    assert.ok(error instanceof ConnectionClosedError, `got ${error}`);
    assert.ok(error.cause instanceof ProtocolMismatchError, `${error.cause}`);
    assert.equal(isRetryableError(error), false);
    const entry = await logger.waitFor((e) =>
      e.message === "Session failed: the peer speaks another protocol"
    );
    assert.equal(entry.level, "error");
    assert.ok(entry.properties?.error instanceof ProtocolMismatchError);
  } finally {
    await client.close();
  }
});

Deno.test("isRetryableError() is false for a mismatch and for a close it caused", () => {
  const mismatch = new ProtocolMismatchError("tls", { detected: "tls" });
  assert.equal(isRetryableError(mismatch), false);
  assert.equal(
    isRetryableError(new ConnectionClosedError("cut", { cause: mismatch })),
    false,
  );
  assert.equal(isRetryableError(new ConnectionClosedError("cut")), true);
});
