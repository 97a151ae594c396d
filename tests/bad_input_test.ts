/**
 * Bad bytes after good ones: the messages decoded before the bad bytes are
 * handled and answered, then the session closes with its protocol error —
 * whatever the read boundaries.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { Correlator } from "../_correlation.ts";
import { defaultDialect } from "../_protocol_dialect.ts";
import { ProtocolError } from "../errors.ts";
import { noopLogger } from "../logger.ts";
import { defaultCodec, type Frame, FrameKind } from "../protocol.ts";
import { type Codec, decoderStream } from "../framing/codec.ts";
import { delimited } from "../framing/delimited.ts";
import { lengthPrefixed } from "../framing/length_prefixed.ts";
import { resp } from "../framing/resp.ts";
import type { Dialect } from "../session/dialect.ts";
import { SessionImpl } from "../session/session.ts";
import { newCounters } from "../session/types.ts";
import { serve } from "../server/serve.ts";
import { HOST, rawPeer } from "./_loopback.ts";
import { dial } from "../client/dial.ts";
import { memoryPair, type MemoryTransport } from "./_memory_transport.ts";
import { bytes, connectRaw, encodeFrame, text } from "./_raw_peer.ts";
import { withTimeout } from "./_process.ts";

/** A valid request (id 7), then a frame of an unknown kind. */
function requestThenGarbage(): Uint8Array {
  const request = encodeFrame(FrameKind.Request, 7, bytes("hello"));
  const garbage = encodeFrame(0xee, 8, bytes("junk"));
  const out = new Uint8Array(request.length + garbage.length);
  out.set(request);
  out.set(garbage, request.length);
  return out;
}

Deno.test("serve() answers a request that came in the same write as garbage, then closes with the ProtocolError", async () => {
  let calls = 0;
  const reasons: unknown[] = [];
  await using server = serve({
    hostname: HOST,
    port: 0,
    handler: async (payload) => {
      calls++;
      await Promise.resolve();
      return payload;
    },
  });
  server.addEventListener("disconnect", (event) => {
    reasons.push((event as CustomEvent).detail.reason);
  });
  await using peer = await connectRaw(server.port);
  await peer.write(requestThenGarbage());
  const reply = await peer.expect(FrameKind.Response);
  assert.equal(reply.id, 7);
  assert.equal(text(reply.payload), "hello");
  const end = await withTimeout(peer.end(), 5000, "the server's close");
  assert.deepEqual(end.frames, []);
  assert.equal(calls, 1);
  assert.equal(server.stats().protocolErrors, 1);
  await withTimeout(
    (async () => {
      while (reasons.length === 0) await server.sessions[0]?.closed;
    })(),
    5000,
    "the disconnect event",
  );
  assert.ok(reasons[0] instanceof ProtocolError, String(reasons[0]));
});

/** A server session over an in-memory pair: the test's writes are its reads. */
function serverSession(handler: (payload: Uint8Array) => Promise<Uint8Array>) {
  const [peer, end] = memoryPair();
  const counters = newCounters();
  const correlator = new Correlator();
  const session = new SessionImpl<Uint8Array>(end, {
    side: "server",
    dialect: defaultDialect() as unknown as Dialect<Uint8Array>,
    correlator,
    counters,
    logger: noopLogger,
    handler: () => handler,
    context: {},
    retry: undefined,
    replies: "session",
    onHandlerError: undefined,
    maxConcurrentHandlers: 64,
    highWaterMark: 100,
    maxWriteBytes: 64 * 1024 * 1024,
    requestTimeout: 5000,
    onClose: () => {},
    onPeerDrain: () => {},
  });
  session.start();
  session.markReady();
  return {
    session,
    peer: peer as MemoryTransport,
    counters,
    [Symbol.dispose]() {
      session.close();
      correlator.close();
    },
  };
}

/** Every frame the peer reads until its end of stream. */
async function readAll(peer: MemoryTransport): Promise<Frame[]> {
  const decoder = defaultCodec().decoder();
  const frames: Frame[] = [];
  for (;;) {
    const buffer = new Uint8Array(4096);
    const n = await peer.read(buffer).catch(() => null);
    if (n === null) return frames;
    frames.push(...decoder.decode(buffer.subarray(0, n)));
  }
}

Deno.test("SessionImpl gives the same outcome for request + garbage at every read boundary: handler once, reply, then ProtocolError", async () => {
  const wire = requestThenGarbage();
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: wire.length }),
      fc.boolean(),
      async (split, slowHandler) => {
        let calls = 0;
        using s = serverSession(async (payload) => {
          calls++;
          if (slowHandler) await new Promise((r) => setTimeout(r, 5));
          return payload.slice();
        });
        const frames = readAll(s.peer);
        if (split > 0) await s.peer.write(wire.subarray(0, split));
        if (split < wire.length) await s.peer.write(wire.subarray(split));
        await withTimeout(s.session.closed, 5000, "the session's close");
        const got = await frames;
        assert.equal(calls, 1);
        assert.deepEqual(
          got.map((f) => [f.kind, f.id, text(f.payload)]),
          [[FrameKind.Response, 7, "hello"]],
        );
        assert.ok(s.session.closeReason instanceof ProtocolError);
        assert.equal(s.counters.protocolErrors, 1);
      },
    ),
    { numRuns: 60, examples: [[0, false], [wire.length, true]] },
  );
});

Deno.test("FrameDecoder of each built-in codec gives the messages before bad bytes in ProtocolError.decoded", async (t) => {
  const cases: [string, Codec<unknown>, Uint8Array, number][] = [
    [
      "default protocol",
      defaultCodec() as Codec<unknown>,
      requestThenGarbage(),
      1,
    ],
    [
      "lengthPrefixed",
      lengthPrefixed({ headerBytes: 1, maxFrameBytes: 4 }) as Codec<unknown>,
      new Uint8Array([2, 0x61, 0x62, 1, 0x63, 200, 0, 0]),
      2,
    ],
    [
      "delimited",
      delimited({ delimiter: "\n", maxFrameBytes: 4 }) as Codec<unknown>,
      bytes("ab\ncd\ntoo long line\n"),
      2,
    ],
    ["resp", resp() as Codec<unknown>, bytes("+OK\r\n:1\r\n?bad\r\n"), 2],
  ];
  for (const [name, codec, wire, before] of cases) {
    await t.step(name, () => {
      const error = (() => {
        try {
          codec.decoder().decode(wire);
        } catch (error) {
          return error;
        }
        assert.fail("decode() did not throw");
      })();
      assert.ok(error instanceof ProtocolError, String(error));
      assert.equal(error.decoded.length, before);
    });
  }
});

Deno.test("decoderStream() emits the messages before bad bytes, then errors with the ProtocolError", async () => {
  const batches: unknown[][] = [];
  const stream = ReadableStream.from([requestThenGarbage(), bytes("more")])
    .pipeThrough(decoderStream(defaultCodec()));
  await assert.rejects(
    (async () => {
      for await (const batch of stream) batches.push(batch);
    })(),
    ProtocolError,
  );
  assert.equal(batches.length, 1);
  assert.equal((batches[0]![0] as Frame).id, 7);
});

Deno.test("dial() takes a reply that came in the same write as garbage, then the session closes with the ProtocolError", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = await dial(peer.target, {
    heartbeat: false,
    reconnect: { initial: 60_000, max: 60_000 },
  });
  const conn = await accepted;
  const reply = client.request(bytes("question"));
  const request = await conn.readUntil((f) => f.kind === FrameKind.Request);
  assert.ok(request !== null);
  await conn.writeBytes(concatBytes(
    encodeFrame(FrameKind.Response, request.id, bytes("answer")),
    encodeFrame(0xee, 1, bytes("junk")),
  ));
  assert.equal(text(await reply), "answer");
  const [session] = client.sessions;
  if (session !== undefined) await session.closed;
  assert.equal(client.stats().protocolErrors, 1);
});

function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
