import assert from "node:assert/strict";
import fc from "fast-check";
import { FrameTooLargeError, ProtocolError } from "../errors.ts";
import { decoderStream } from "../framing/codec.ts";
import {
  defaultCodec,
  type Frame,
  FrameKind,
  HEADER_BYTES,
} from "../protocol.ts";
import { bytewise, concat, cut } from "./_bytes.ts";

const frameArb: fc.Arbitrary<Frame> = fc.record({
  kind: fc.integer({ min: 1, max: 7 }) as fc.Arbitrary<FrameKind>,
  id: fc.integer({ min: 0, max: 0xffff_ffff }),
  payload: fc.oneof(
    { weight: 1, arbitrary: fc.constant(new Uint8Array(0)) },
    { weight: 4, arbitrary: fc.uint8Array({ maxLength: 2048 }) },
  ),
});
const framesArb = fc.array(frameArb, { maxLength: 24 });
const cutsArb = fc.array(fc.nat(), { maxLength: 40 });

/** Frames as plain values, payloads copied: comparable with deepEqual. */
function plain(frames: readonly Frame[]) {
  return frames.map((f) => ({
    kind: f.kind,
    id: f.id,
    payload: [...f.payload],
  }));
}

function encodeAll(frames: readonly Frame[]): Uint8Array {
  const codec = defaultCodec();
  return concat(frames.map((frame) => codec.encode(frame)));
}

function decodeAll(
  chunks: readonly Uint8Array[],
  maxFrameBytes?: number,
): Frame[] {
  const decoder = defaultCodec(
    maxFrameBytes === undefined ? {} : { maxFrameBytes },
  ).decoder();
  const frames = chunks.flatMap((chunk) => decoder.decode(chunk));
  decoder.end?.();
  return frames;
}

/** A 9-byte header announcing `payloadBytes` of payload (length field = payload + 5). */
function header(payloadBytes: number, kind = 1, id = 1): Uint8Array {
  const bytes = new Uint8Array(HEADER_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, payloadBytes + 5);
  bytes[4] = kind;
  view.setUint32(5, id);
  return bytes;
}

Deno.test("defaultCodec() decodes random frames split at random points", () => {
  fc.assert(
    fc.property(framesArb, cutsArb, (frames, points) => {
      const bytes = encodeAll(frames);
      assert.deepEqual(plain(decodeAll(cut(bytes, points))), plain(frames));
    }),
    { numRuns: 300 },
  );
});

Deno.test("defaultCodec() decodes random frames fed one byte at a time", () => {
  fc.assert(
    fc.property(fc.array(frameArb, { maxLength: 6 }), (frames) => {
      const bytes = encodeAll(frames);
      assert.deepEqual(plain(decodeAll(bytewise(bytes))), plain(frames));
    }),
    { numRuns: 60 },
  );
});

Deno.test("defaultCodec() decodes random frames fed all in one chunk", () => {
  fc.assert(
    fc.property(framesArb, (frames) => {
      const bytes = encodeAll(frames);
      assert.deepEqual(plain(decodeAll([bytes])), plain(frames));
    }),
    { numRuns: 300 },
  );
});

Deno.test("defaultCodec() decodes frames of hundreds of KiB, split anywhere", () => {
  // The partial-frame buffer grows with the bytes that arrive, doubling.
  const big = fc.record({
    kind: fc.integer({ min: 1, max: 7 }) as fc.Arbitrary<FrameKind>,
    id: fc.integer({ min: 0, max: 0xffff_ffff }),
    payload: fc.integer({ min: 60_000, max: 300_000 }).map((n) => {
      const payload = new Uint8Array(n);
      for (let i = 0; i < n; i++) payload[i] = (i * 31) & 0xff;
      return payload;
    }),
  });
  fc.assert(
    fc.property(
      fc.array(fc.oneof(frameArb, big), { minLength: 1, maxLength: 4 }),
      fc.array(fc.nat(), { maxLength: 12 }),
      (frames, points) => {
        const bytes = encodeAll(frames);
        assert.deepEqual(plain(decodeAll(cut(bytes, points))), plain(frames));
      },
    ),
    { numRuns: 30 },
  );
});

Deno.test("defaultCodec() encodeInto() writes the same bytes as encode() and nothing else", () => {
  const codec = defaultCodec();
  fc.assert(
    fc.property(
      frameArb,
      fc.nat({ max: 64 }),
      fc.nat({ max: 64 }),
      (frame, before, after) => {
        const expected = codec.encode(frame);
        assert.equal(expected.length, HEADER_BYTES + frame.payload.length);
        assert.equal(codec.encodedLength!(frame), expected.length);
        const target = new Uint8Array(before + expected.length + after)
          .fill(0xaa);
        const written = codec.encodeInto!(frame, target, before);
        assert.equal(written, expected.length);
        assert.deepEqual(
          target.subarray(before, before + written),
          expected,
        );
        assert.ok(target.subarray(0, before).every((b) => b === 0xaa));
        assert.ok(target.subarray(before + written).every((b) => b === 0xaa));
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("defaultCodec() encodes the documented wire layout", () => {
  const bytes = defaultCodec().encode({
    kind: FrameKind.Error,
    id: 0xdeadbeef,
    payload: new Uint8Array([0x41, 0x42]),
  });
  assert.deepEqual(
    [...bytes],
    [0, 0, 0, 7, 4, 0xde, 0xad, 0xbe, 0xef, 0x41, 0x42],
  );
});

Deno.test("defaultCodec() correlationId() is undefined for push and drain only", () => {
  const codec = defaultCodec();
  for (let kind = 1; kind <= 7; kind++) {
    const id = codec.correlationId!({
      kind: kind as FrameKind,
      id: 42,
      payload: new Uint8Array(0),
    });
    const uncorrelated = kind === FrameKind.Push || kind === FrameKind.Drain;
    assert.equal(id, uncorrelated ? undefined : 42, `kind ${kind}`);
  }
});

Deno.test("defaultCodec() rejects a bad maxFrameBytes and encoding past it", () => {
  assert.throws(() => defaultCodec({ maxFrameBytes: -1 }), RangeError);
  assert.throws(() => defaultCodec({ maxFrameBytes: 1.5 }), RangeError);
  const codec = defaultCodec({ maxFrameBytes: 4 });
  codec.encode({ kind: 1, id: 1, payload: new Uint8Array(4) });
  assert.throws(
    () => codec.encode({ kind: 1, id: 1, payload: new Uint8Array(5) }),
    RangeError,
  );
});

Deno.test("defaultCodec() decoder accepts a payload of exactly maxFrameBytes", () => {
  for (const max of [0, 1, 100]) {
    const frame: Frame = { kind: 2, id: 9, payload: new Uint8Array(max) };
    const bytes = defaultCodec({ maxFrameBytes: max }).encode(frame);
    assert.deepEqual(plain(decodeAll([bytes], max)), plain([frame]));
    assert.deepEqual(plain(decodeAll(bytewise(bytes), max)), plain([frame]));
  }
});

Deno.test("defaultCodec() decoder raises FrameTooLargeError from the header bytes alone", async (t) => {
  const max = 1024;
  // Length field and kind only (4 + 1 bytes): no id, no payload yet.
  const head = header(max + 1).subarray(0, 5);
  await t.step("in one chunk", () => {
    const decoder = defaultCodec({ maxFrameBytes: max }).decoder();
    assert.throws(
      () => decoder.decode(head),
      (error: unknown) =>
        error instanceof FrameTooLargeError &&
        error.maxFrameBytes === max && error.frameBytes === max + 1,
    );
  });
  await t.step("one byte at a time: on the fourth byte", () => {
    const decoder = defaultCodec({ maxFrameBytes: max }).decoder();
    for (const byte of bytewise(head).slice(0, 3)) {
      assert.deepEqual(decoder.decode(byte), []);
    }
    assert.throws(
      () => decoder.decode(head.subarray(3, 4)),
      FrameTooLargeError,
    );
  });
  await t.step("after complete frames in the same chunk", () => {
    const decoder = defaultCodec({ maxFrameBytes: max }).decoder();
    const ok = defaultCodec().encode({
      kind: 1,
      id: 1,
      payload: new Uint8Array(3),
    });
    assert.throws(() => decoder.decode(concat([ok, head])), FrameTooLargeError);
  });
  await t.step("the largest announced length (u32 max)", () => {
    const decoder = defaultCodec().decoder();
    assert.throws(
      () => decoder.decode(new Uint8Array([0xff, 0xff, 0xff, 0xff, 1])),
      FrameTooLargeError,
    );
  });
  await t.step("any oversize length, any split", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 1 << 20 }),
        fc.integer({ min: 1, max: 0xffff_ffff - 5 }),
        cutsArb,
        (limit, excess, points) => {
          const announced = Math.min(limit + excess, 0xffff_ffff - 5);
          const decoder = defaultCodec({ maxFrameBytes: limit }).decoder();
          assert.throws(() => {
            for (const chunk of cut(header(announced).subarray(0, 5), points)) {
              decoder.decode(chunk);
            }
          }, FrameTooLargeError);
        },
      ),
      { numRuns: 200 },
    );
  });
});

Deno.test("defaultCodec() decoder commits no memory for a large frame announced by a header alone", () => {
  // maxFrameBytes 16 MiB, a header announcing 8 MiB: allowed, and the
  // decoder must wait for the bytes without allocating 8 MiB up front.
  const codec = defaultCodec({ maxFrameBytes: 16 * 1024 * 1024 });
  const count = 16;
  const decoders = Array.from({ length: count }, () => codec.decoder());
  const before = Deno.memoryUsage().external;
  for (const decoder of decoders) {
    assert.deepEqual(decoder.decode(header(8 * 1024 * 1024)), []);
  }
  const grown = Deno.memoryUsage().external - before;
  // 16 × 8 MiB would be 128 MiB; a header alone takes a buffer of its size.
  assert.ok(
    grown < count * 1024 * 1024,
    `${grown} bytes committed for ${count} headers`,
  );
  for (const decoder of decoders) {
    assert.throws(() => decoder.end!(), ProtocolError);
  }
});

Deno.test("defaultCodec() decoder rejects a length below 5 with ProtocolError", () => {
  for (let length = 0; length < 5; length++) {
    const bytes = new Uint8Array([0, 0, 0, length, 1, 0, 0, 0, 0]);
    for (const chunks of [[bytes], bytewise(bytes), [bytes.subarray(0, 4)]]) {
      const decoder = defaultCodec().decoder();
      assert.throws(
        () => chunks.forEach((chunk) => decoder.decode(chunk)),
        (error: unknown) =>
          error instanceof ProtocolError &&
          !(error instanceof FrameTooLargeError),
        `length ${length}`,
      );
    }
  }
});

Deno.test("defaultCodec() decoder rejects unknown kinds 0 and 9 with ProtocolError", () => {
  for (const kind of [0, 9, 255]) {
    const bytes = concat([header(3, kind), new Uint8Array([1, 2, 3])]);
    for (const chunks of [[bytes], bytewise(bytes)]) {
      const decoder = defaultCodec().decoder();
      assert.throws(
        () => chunks.forEach((chunk) => decoder.decode(chunk)),
        (error: unknown) =>
          error instanceof ProtocolError &&
          /unknown kind/.test(error.message),
        `kind ${kind}`,
      );
    }
  }
});

Deno.test("defaultCodec() decoder end() throws ProtocolError on a truncated stream", () => {
  fc.assert(
    fc.property(
      fc.array(frameArb, { minLength: 1, maxLength: 6 }),
      fc.nat(),
      cutsArb,
      (frames, drop, points) => {
        const bytes = encodeAll(frames);
        const last = HEADER_BYTES + frames.at(-1)!.payload.length;
        // Keep the complete frames and 1 .. last-1 bytes of the last one.
        const keep = bytes.length - last + 1 + (drop % (last - 1));
        const decoder = defaultCodec().decoder();
        const got = cut(bytes.subarray(0, keep), points)
          .flatMap((chunk) => decoder.decode(chunk));
        assert.deepEqual(plain(got), plain(frames.slice(0, -1)));
        assert.throws(
          () => decoder.end!(),
          (error: unknown) =>
            error instanceof ProtocolError &&
            /ended inside a frame/.test(error.message),
        );
      },
    ),
    { numRuns: 200 },
  );
  // Nothing buffered: end() is quiet.
  const decoder = defaultCodec().decoder();
  decoder.end!();
  decoder.decode(encodeAll([{ kind: 3, id: 0, payload: new Uint8Array(1) }]));
  decoder.end!();
});

Deno.test("decoderStream(defaultCodec()) gives the same frames, one batch per chunk", async () => {
  await fc.assert(
    fc.asyncProperty(framesArb, cutsArb, async (frames, points) => {
      const chunks = cut(encodeAll(frames), points);
      const batches = await Array.fromAsync(
        ReadableStream.from(chunks).pipeThrough(decoderStream(defaultCodec())),
      );
      assert.ok(batches.length <= chunks.length);
      for (const batch of batches) assert.ok(batch.length > 0, "empty batch");
      assert.deepEqual(plain(batches.flat()), plain(frames));
    }),
    { numRuns: 100 },
  );
});

Deno.test("decoderStream(defaultCodec()) errors with ProtocolError on truncation and FrameTooLargeError on oversize", async () => {
  const frame = defaultCodec().encode({
    kind: 1,
    id: 5,
    payload: new Uint8Array(10),
  });
  await assert.rejects(
    Array.fromAsync(
      ReadableStream.from([frame, frame.subarray(0, 12)])
        .pipeThrough(decoderStream(defaultCodec())),
    ),
    ProtocolError,
  );
  await assert.rejects(
    Array.fromAsync(
      ReadableStream.from([frame, header(11).subarray(0, 5)])
        .pipeThrough(decoderStream(defaultCodec({ maxFrameBytes: 10 }))),
    ),
    FrameTooLargeError,
  );
  await assert.rejects(
    Array.fromAsync(
      ReadableStream.from([header(0, 9)])
        .pipeThrough(decoderStream(defaultCodec().decoder())),
    ),
    ProtocolError,
  );
});
