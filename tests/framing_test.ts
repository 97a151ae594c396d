import assert from "node:assert/strict";
import fc from "fast-check";
import { FrameTooLargeError, ProtocolError } from "../errors.ts";
import {
  type Codec,
  decoderStream,
  delimited,
  fixedLength,
  lengthPrefixed,
} from "../framing/mod.ts";
import { bytewise, concat, cut } from "./_bytes.ts";

const encoder = new TextEncoder();

function decodeAll(
  codec: Codec<Uint8Array>,
  chunks: readonly Uint8Array[],
): Uint8Array[] {
  const decoder = codec.decoder();
  const frames = chunks.flatMap((chunk) => decoder.decode(chunk));
  decoder.end?.();
  return frames;
}

async function decodeStream(
  codec: Codec<Uint8Array>,
  chunks: readonly Uint8Array[],
): Promise<Uint8Array[]> {
  const batches = await Array.fromAsync(
    ReadableStream.from(chunks).pipeThrough(decoderStream(codec)),
  );
  for (const batch of batches) assert.ok(batch.length > 0, "empty batch");
  return batches.flat();
}

function canEncode(codec: Codec<Uint8Array>, frame: Uint8Array): boolean {
  try {
    codec.encode(frame);
    return true;
  } catch {
    return false;
  }
}

/** Frames with many marker-like bytes, so delimiters and digits get close calls. */
function frames(
  codec: Codec<Uint8Array>,
  { minLength = 0, maxLength = 300 } = {},
): fc.Arbitrary<Uint8Array[]> {
  const tricky = fc.array(
    fc.oneof(
      fc.constantFrom(0x0a, 0x0d, 0x1c, 0x0b, 0x30),
      fc.integer({ min: 0, max: 255 }),
    ),
    { minLength, maxLength: Math.min(maxLength, 12) },
  ).map((bytes) => new Uint8Array(bytes));
  const plain = fc.uint8Array({ minLength, maxLength });
  return fc.array(
    fc.oneof(tricky, plain).filter((frame) => canEncode(codec, frame)),
    { maxLength: 12 },
  );
}

interface Case {
  readonly name: string;
  readonly codec: Codec<Uint8Array>;
  readonly frames: fc.Arbitrary<Uint8Array[]>;
}

function lengthCase(
  name: string,
  options: Parameters<typeof lengthPrefixed>[0],
  limits: { minLength?: number; maxLength?: number } = {},
): Case {
  const codec = lengthPrefixed(options);
  return {
    name: `lengthPrefixed(${name})`,
    codec,
    frames: frames(codec, limits),
  };
}

function delimitedCase(
  name: string,
  options: Parameters<typeof delimited>[0],
): Case {
  const codec = delimited(options);
  return { name: `delimited(${name})`, codec, frames: frames(codec) };
}

function fixedCase(size: number): Case {
  const codec = fixedLength(size);
  return {
    name: `fixedLength(${size})`,
    codec,
    frames: fc.array(fc.uint8Array({ minLength: size, maxLength: size }), {
      maxLength: 12,
    }),
  };
}

const CASES: Case[] = [
  lengthCase("headerBytes 1", { headerBytes: 1 }, { maxLength: 255 }),
  lengthCase("headerBytes 2", { headerBytes: 2 }),
  lengthCase("headerBytes 2 LE", { headerBytes: 2, littleEndian: true }),
  lengthCase("default (4 BE)", {}),
  lengthCase("headerBytes 4 LE", { headerBytes: 4, littleEndian: true }),
  lengthCase("headerBytes 8", { headerBytes: 8 }),
  lengthCase("headerBytes 8 LE", { headerBytes: 8, littleEndian: true }),
  lengthCase("lengthIncludesHeader", {
    headerBytes: 2,
    lengthIncludesHeader: true,
  }),
  lengthCase("lengthAdjustment -2", { headerBytes: 2, lengthAdjustment: -2 }),
  lengthCase("lengthAdjustment 5", { headerBytes: 4, lengthAdjustment: 5 }, {
    minLength: 5,
  }),
  lengthCase("lengthOffset 3", { headerBytes: 2, lengthOffset: 3 }, {
    minLength: 3,
  }),
  lengthCase("lengthOffset 1, includes header, LE", {
    headerBytes: 4,
    littleEndian: true,
    lengthOffset: 1,
    lengthIncludesHeader: true,
  }, { minLength: 1 }),
  lengthCase("asciiDigits 4", { asciiDigits: 4 }),
  lengthCase("asciiDigits 3, includes header", {
    asciiDigits: 3,
    lengthIncludesHeader: true,
  }),
  lengthCase("maxFrameBytes 100", { headerBytes: 2, maxFrameBytes: 100 }, {
    maxLength: 100,
  }),
  delimitedCase('"\\n"', { delimiter: "\n" }),
  delimitedCase('"\\r\\n"', { delimiter: "\r\n" }),
  delimitedCase('"\\r\\n\\r\\n"', { delimiter: "\r\n\r\n" }),
  delimitedCase("MLLP", {
    start: new Uint8Array([0x0b]),
    delimiter: new Uint8Array([0x1c, 0x0d]),
  }),
  delimitedCase('start "<<", "\\n"', { start: "<<", delimiter: ">>\n" }),
  delimitedCase("maxFrameBytes 50", { delimiter: "\r\n", maxFrameBytes: 50 }),
  fixedCase(1),
  fixedCase(7),
  fixedCase(300),
];

for (const { name, codec, frames } of CASES) {
  Deno.test(`${name} decodes any split of the encoded frames in order`, () => {
    fc.assert(
      fc.property(
        frames,
        fc.array(fc.nat(), { maxLength: 20 }),
        (messages, points) => {
          const wire = concat(messages.map((message) => codec.encode(message)));
          assert.deepEqual(decodeAll(codec, cut(wire, points)), messages);
          assert.deepEqual(decodeAll(codec, bytewise(wire)), messages);
          assert.deepEqual(decodeAll(codec, [wire]), messages);
        },
      ),
    );
  });

  Deno.test(`${name} decodes through decoderStream()`, async () => {
    await fc.assert(
      fc.asyncProperty(
        frames,
        fc.array(fc.nat(), { maxLength: 10 }),
        async (messages, points) => {
          const wire = concat(messages.map((message) => codec.encode(message)));
          assert.deepEqual(
            await decodeStream(codec, cut(wire, points)),
            messages,
          );
        },
      ),
      { numRuns: 50 },
    );
  });

  Deno.test(`${name} encodeInto() writes what encode() returns`, () => {
    fc.assert(
      fc.property(frames, fc.nat({ max: 8 }), (messages, offset) => {
        for (const message of messages) {
          const expected = codec.encode(message);
          const length = codec.encodedLength!(message);
          assert.equal(length, expected.length);
          const target = new Uint8Array(offset + length + 3).fill(0xee);
          assert.equal(codec.encodeInto!(message, target, offset), length);
          assert.deepEqual(
            target.subarray(offset, offset + length),
            expected,
          );
          assert.ok(target.subarray(0, offset).every((byte) => byte === 0xee));
          assert.ok(
            target.subarray(offset + length).every((byte) => byte === 0xee),
          );
        }
      }),
      { numRuns: 50 },
    );
  });

  // Every byte ends a frame of fixedLength(1): it cannot be truncated.
  if (name !== "fixedLength(1)") {
    Deno.test(
      `${name} decoder throws ProtocolError from end() on a truncated stream`,
      () => {
        fc.assert(
          fc.property(
            frames.filter((messages) =>
              messages.some((message) => codec.encode(message).length > 1)
            ),
            fc.nat(),
            (messages, point) => {
              const wire = concat(
                messages.map((message) => codec.encode(message)),
              );
              const decoder = codec.decoder();
              const boundaries = new Set<number>([0]);
              let at = 0;
              for (const message of messages) {
                at += codec.encode(message).length;
                boundaries.add(at);
              }
              const candidates = Array.from(wire.keys()).filter((i) =>
                !boundaries.has(i)
              );
              const stop = candidates[point % candidates.length]!;
              decoder.decode(wire.subarray(0, stop));
              assert.throws(() => decoder.end!(), ProtocolError);
            },
          ),
          { numRuns: 50 },
        );
      },
    );
  }
}

Deno.test("lengthPrefixed() decoder returns views of the chunk for whole frames", () => {
  const codec = lengthPrefixed({ headerBytes: 2 });
  const wire = concat([
    codec.encode(encoder.encode("ab")),
    codec.encode(encoder.encode("cde")),
  ]);
  const frames = codec.decoder().decode(wire);
  assert.deepEqual(frames, [encoder.encode("ab"), encoder.encode("cde")]);
  for (const frame of frames) assert.equal(frame.buffer, wire.buffer);
});

Deno.test("delimited() decoder returns views of the chunk for whole frames", () => {
  const codec = delimited({ delimiter: "\r\n" });
  const wire = encoder.encode("ab\r\ncde\r\n");
  const frames = codec.decoder().decode(wire);
  assert.deepEqual(frames, [encoder.encode("ab"), encoder.encode("cde")]);
  for (const frame of frames) assert.equal(frame.buffer, wire.buffer);
});

Deno.test("fixedLength() decoder returns views of the chunk for whole frames", () => {
  const wire = new Uint8Array([1, 2, 3, 4, 5]);
  const decoder = fixedLength(2).decoder();
  const frames = decoder.decode(wire);
  assert.deepEqual(frames, [new Uint8Array([1, 2]), new Uint8Array([3, 4])]);
  for (const frame of frames) assert.equal(frame.buffer, wire.buffer);
  assert.deepEqual(decoder.decode(new Uint8Array([6])), [
    new Uint8Array([5, 6]),
  ]);
});

Deno.test("lengthPrefixed() rejects a header over maxFrameBytes before the body arrives", async (t) => {
  const layouts: Array<
    [string, Parameters<typeof lengthPrefixed>[0], Uint8Array]
  > = [
    [
      "headerBytes 1",
      { headerBytes: 1, maxFrameBytes: 100 },
      new Uint8Array([101]),
    ],
    [
      "headerBytes 2",
      { headerBytes: 2, maxFrameBytes: 1024 },
      new Uint8Array([4, 1]),
    ],
    ["headerBytes 2 LE", {
      headerBytes: 2,
      littleEndian: true,
      maxFrameBytes: 1024,
    }, new Uint8Array([1, 4])],
    ["default", {}, new Uint8Array([0, 0x80, 0, 1])],
    [
      "headerBytes 4 LE",
      { headerBytes: 4, littleEndian: true },
      new Uint8Array([1, 0, 0x80, 0]),
    ],
    ["headerBytes 4, 4 GiB", {}, new Uint8Array([0xff, 0xff, 0xff, 0xff])],
    [
      "headerBytes 8",
      { headerBytes: 8 },
      new Uint8Array([0, 0, 0, 0, 0, 0x80, 0, 1]),
    ],
    [
      "headerBytes 8 LE",
      { headerBytes: 8, littleEndian: true },
      new Uint8Array([1, 0, 0x80, 0, 0, 0, 0, 0]),
    ],
    ["headerBytes 8, 2^64 - 1", {
      headerBytes: 8,
      maxFrameBytes: Number.MAX_SAFE_INTEGER,
    }, new Uint8Array(8).fill(0xff)],
    ["headerBytes 8, 2^53", {
      headerBytes: 8,
      maxFrameBytes: Number.MAX_SAFE_INTEGER,
    }, new Uint8Array([0, 0x20, 0, 0, 0, 0, 0, 0])],
    [
      "asciiDigits 4",
      { asciiDigits: 4, maxFrameBytes: 1000 },
      encoder.encode("1001"),
    ],
    [
      "lengthOffset 2",
      { lengthOffset: 2, headerBytes: 2, maxFrameBytes: 1000 },
      new Uint8Array([9, 9, 3, 0xe7]),
    ],
    ["lengthAdjustment 10", {
      headerBytes: 1,
      lengthAdjustment: 10,
      maxFrameBytes: 100,
    }, new Uint8Array([91])],
  ];
  for (const [name, options, header] of layouts) {
    await t.step(name, () => {
      const decoder = lengthPrefixed(options).decoder();
      for (const byte of bytewise(header.subarray(0, -1))) {
        assert.deepEqual(decoder.decode(byte), []);
      }
      assert.throws(
        () => decoder.decode(header.subarray(-1)),
        (error: unknown) => {
          assert.ok(error instanceof FrameTooLargeError);
          assert.equal(
            error.maxFrameBytes,
            options?.maxFrameBytes ?? 8 * 1024 * 1024,
          );
          assert.ok(error.frameBytes > error.maxFrameBytes);
          return true;
        },
      );
      // The same header at once, after a valid frame.
      const codec = lengthPrefixed(options);
      const ok = codec.encode(
        new Uint8Array(
          (options?.lengthOffset ?? 0) +
            Math.max(0, options?.lengthAdjustment ?? 0),
        ),
      );
      assert.throws(
        () => codec.decoder().decode(concat([ok, header])),
        FrameTooLargeError,
      );
    });
  }
});

Deno.test("lengthPrefixed() accepts a frame of exactly maxFrameBytes", () => {
  const codec = lengthPrefixed({ headerBytes: 2, maxFrameBytes: 300 });
  const frame = new Uint8Array(300).fill(7);
  assert.deepEqual(decodeAll(codec, bytewise(codec.encode(frame))), [frame]);
  assert.throws(() => codec.encode(new Uint8Array(301)), RangeError);
});

Deno.test("lengthPrefixed() decoder reports the announced size in FrameTooLargeError", () => {
  const decoder = lengthPrefixed({ headerBytes: 4, maxFrameBytes: 10 })
    .decoder();
  assert.throws(
    () => decoder.decode(new Uint8Array([0, 0, 1, 0])),
    (error: unknown) =>
      error instanceof FrameTooLargeError && error.frameBytes === 256 &&
      error.maxFrameBytes === 10,
  );
});

Deno.test("lengthPrefixed() rejects a non-digit ASCII header with ProtocolError", () => {
  for (const header of ["00a1", " 012", "-001", "00:0"]) {
    const decoder = lengthPrefixed({ asciiDigits: 4 }).decoder();
    assert.throws(
      () => decoder.decode(encoder.encode(header + "body")),
      (error: unknown) =>
        error instanceof ProtocolError &&
        !(error instanceof FrameTooLargeError),
      header,
    );
  }
  // Split header: the error comes when the garbage byte completes it.
  const decoder = lengthPrefixed({ asciiDigits: 4 }).decoder();
  assert.deepEqual(decoder.decode(encoder.encode("00")), []);
  assert.throws(() => decoder.decode(encoder.encode("x1")), ProtocolError);
});

Deno.test("lengthPrefixed() rejects a negative adjusted body size with ProtocolError", () => {
  const includes = lengthPrefixed({
    headerBytes: 2,
    lengthIncludesHeader: true,
  });
  assert.throws(
    () => includes.decoder().decode(new Uint8Array([0, 1, 0xaa])),
    (error: unknown) =>
      error instanceof ProtocolError && !(error instanceof FrameTooLargeError),
  );
  const adjusted = lengthPrefixed({ headerBytes: 1, lengthAdjustment: -4 });
  assert.throws(
    () => adjusted.decoder().decode(new Uint8Array([3])),
    ProtocolError,
  );
  assert.deepEqual(adjusted.decoder().decode(new Uint8Array([4])), [
    new Uint8Array(),
  ]);
});

Deno.test("lengthPrefixed() end() throws ProtocolError mid-header and mid-body", () => {
  const codec = lengthPrefixed();
  const midHeader = codec.decoder();
  midHeader.decode(new Uint8Array([0, 0]));
  assert.throws(() => midHeader.end!(), ProtocolError);
  const midBody = codec.decoder();
  midBody.decode(new Uint8Array([0, 0, 0, 5, 1, 2]));
  assert.throws(() => midBody.end!(), /2 of 5/);
  const clean = codec.decoder();
  clean.decode(codec.encode(new Uint8Array(3)));
  clean.end!();
});

Deno.test("lengthPrefixed() lays out prefix, length field and body on the wire", () => {
  const body = new Uint8Array([0xaa, 0xbb, 0xcc]);
  const cases: Array<
    [Parameters<typeof lengthPrefixed>[0], Uint8Array, number[]]
  > = [
    [{ headerBytes: 1 }, body, [3, 0xaa, 0xbb, 0xcc]],
    [{ headerBytes: 2, littleEndian: true }, body, [3, 0, 0xaa, 0xbb, 0xcc]],
    [{ headerBytes: 4, lengthIncludesHeader: true }, body, [
      0,
      0,
      0,
      7,
      0xaa,
      0xbb,
      0xcc,
    ]],
    [{ headerBytes: 8 }, new Uint8Array(), [0, 0, 0, 0, 0, 0, 0, 0]],
    [{ headerBytes: 8, littleEndian: true }, body, [
      3,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      0xaa,
      0xbb,
      0xcc,
    ]],
    [{ headerBytes: 1, lengthAdjustment: 2 }, body, [1, 0xaa, 0xbb, 0xcc]],
    [{ asciiDigits: 4 }, body, [0x30, 0x30, 0x30, 0x33, 0xaa, 0xbb, 0xcc]],
    [{ asciiDigits: 2, lengthIncludesHeader: true }, body, [
      0x30,
      0x35,
      0xaa,
      0xbb,
      0xcc,
    ]],
    [{ headerBytes: 2, lengthOffset: 1 }, body, [0xaa, 0, 2, 0xbb, 0xcc]],
    [{ headerBytes: 1, lengthOffset: 1, lengthIncludesHeader: true }, body, [
      0xaa,
      4,
      0xbb,
      0xcc,
    ]],
  ];
  for (const [options, message, wire] of cases) {
    const codec = lengthPrefixed(options);
    assert.deepEqual(
      codec.encode(message),
      new Uint8Array(wire),
      JSON.stringify(options),
    );
    assert.deepEqual(codec.decoder().decode(new Uint8Array(wire)), [message]);
  }
});

Deno.test("lengthPrefixed() encode throws RangeError for a body the header cannot hold", () => {
  assert.throws(
    () => lengthPrefixed({ headerBytes: 1 }).encode(new Uint8Array(256)),
    RangeError,
  );
  assert.throws(
    () => lengthPrefixed({ headerBytes: 2 }).encode(new Uint8Array(65536)),
    RangeError,
  );
  assert.throws(
    () => lengthPrefixed({ asciiDigits: 2 }).encode(new Uint8Array(100)),
    RangeError,
  );
  assert.throws(
    () =>
      lengthPrefixed({ asciiDigits: 2, lengthIncludesHeader: true }).encode(
        new Uint8Array(98),
      ),
    RangeError,
  );
  assert.throws(
    () => lengthPrefixed({ lengthAdjustment: 2 }).encode(new Uint8Array(1)),
    RangeError,
  );
  assert.throws(
    () => lengthPrefixed({ lengthOffset: 2 }).encode(new Uint8Array(1)),
    RangeError,
  );
  assert.throws(
    () =>
      lengthPrefixed({ maxFrameBytes: 4 }).encodedLength!(new Uint8Array(5)),
    RangeError,
  );
  assert.throws(
    () => lengthPrefixed().encodeInto!(new Uint8Array(5), new Uint8Array(8), 0),
    RangeError,
  );
  assert.equal(
    lengthPrefixed({ headerBytes: 1 }).encode(new Uint8Array(255)).length,
    256,
  );
});

Deno.test("lengthPrefixed() rejects bad options with RangeError", () => {
  const bad: Array<Parameters<typeof lengthPrefixed>[0]> = [
    { headerBytes: 3 as 1 },
    { asciiDigits: 0 },
    { asciiDigits: 16 },
    { asciiDigits: 1.5 },
    { lengthOffset: -1 },
    { lengthOffset: 11, maxFrameBytes: 10 },
    { maxFrameBytes: -1 },
    { maxFrameBytes: Infinity },
    { lengthAdjustment: 0.5 },
  ];
  for (const options of bad) {
    assert.throws(
      () => lengthPrefixed(options),
      RangeError,
      JSON.stringify(options),
    );
  }
});

Deno.test("delimited() rejects a frame growing past maxFrameBytes with FrameTooLargeError", async (t) => {
  const codec = delimited({ delimiter: "\r\n", maxFrameBytes: 10 });
  await t.step("in one chunk, with a delimiter", () => {
    assert.throws(
      () => codec.decoder().decode(encoder.encode("ab\r\n12345678901\r\n")),
      FrameTooLargeError,
    );
  });
  await t.step("in one chunk, without a delimiter", () => {
    assert.throws(
      () => codec.decoder().decode(new Uint8Array(64 * 1024)),
      FrameTooLargeError,
    );
  });
  await t.step("one byte at a time, before any delimiter", () => {
    const decoder = codec.decoder();
    // 10 bytes plus "\r" may still be a frame of 10 bytes.
    for (const byte of bytewise(encoder.encode("1234567890\r"))) {
      assert.deepEqual(decoder.decode(byte), []);
    }
    assert.throws(
      () => decoder.decode(encoder.encode("x")),
      FrameTooLargeError,
    );
  });
  await t.step("small chunks, the limit reached across chunks", () => {
    const decoder = codec.decoder();
    decoder.decode(encoder.encode("1234"));
    decoder.decode(encoder.encode("5678"));
    assert.throws(
      () => decoder.decode(encoder.encode("9012")),
      FrameTooLargeError,
    );
  });
  await t.step(
    "a frame of exactly maxFrameBytes, split in its delimiter",
    () => {
      const decoder = codec.decoder();
      assert.deepEqual(decoder.decode(encoder.encode("1234567890\r")), []);
      assert.deepEqual(decoder.decode(encoder.encode("\n")), [
        encoder.encode("1234567890"),
      ]);
    },
  );
  await t.step("through decoderStream()", async () => {
    const chunks = Array.from({ length: 100 }, () => encoder.encode("xxxx"));
    await assert.rejects(decodeStream(codec, chunks), FrameTooLargeError);
  });
  await t.step("encode", () => {
    assert.throws(() => codec.encode(new Uint8Array(11)), RangeError);
  });
});

Deno.test("delimited() finds a multi-byte delimiter split across chunks", () => {
  const codec = delimited({ delimiter: new Uint8Array([0x1c, 0x0d]) });
  const decoder = codec.decoder();
  assert.deepEqual(decoder.decode(new Uint8Array([1, 2, 0x1c])), []);
  assert.deepEqual(decoder.decode(new Uint8Array([0x0d, 3, 0x1c])), [
    new Uint8Array([1, 2]),
  ]);
  assert.deepEqual(decoder.decode(new Uint8Array([0x1c])), []);
  assert.deepEqual(decoder.decode(new Uint8Array([0x0d])), [
    new Uint8Array([3, 0x1c]),
  ]);
  decoder.end!();
});

Deno.test("delimited() rejects bytes before the start marker with ProtocolError", () => {
  const mllp = delimited({ start: "\x0b", delimiter: "\x1c\r" });
  assert.throws(
    () => mllp.decoder().decode(encoder.encode("x\x0bhi\x1c\r")),
    ProtocolError,
  );
  const decoder = mllp.decoder();
  assert.deepEqual(decoder.decode(encoder.encode("\x0bhi\x1c\r")), [
    encoder.encode("hi"),
  ]);
  assert.throws(() => decoder.decode(encoder.encode("\r\x0b")), ProtocolError);
  const split = delimited({ start: "<<", delimiter: "\n" }).decoder();
  assert.deepEqual(split.decode(encoder.encode("<")), []);
  assert.throws(() => split.decode(encoder.encode("x")), ProtocolError);
});

Deno.test("delimited() end() throws ProtocolError inside a frame", () => {
  const lines = delimited({ delimiter: "\n" });
  const decoder = lines.decoder();
  decoder.decode(encoder.encode("a\nb"));
  assert.throws(() => decoder.end!(), ProtocolError);
  const mllp = delimited({ start: "\x0b", delimiter: "\x1c\r" });
  for (const partial of ["\x0b", "\x0babc", "\x0babc\x1c"]) {
    const d = mllp.decoder();
    d.decode(encoder.encode(partial));
    assert.throws(() => d.end!(), ProtocolError, JSON.stringify(partial));
  }
  const startOnly = delimited({ start: "<<", delimiter: "\n" }).decoder();
  startOnly.decode(encoder.encode("<"));
  assert.throws(() => startOnly.end!(), ProtocolError);
  const clean = mllp.decoder();
  clean.decode(encoder.encode("\x0babc\x1c\r"));
  clean.end!();
});

Deno.test("delimited() encode throws TypeError for a message containing the delimiter", () => {
  assert.throws(
    () => delimited({ delimiter: "\n" }).encode(encoder.encode("a\nb")),
    TypeError,
  );
  assert.throws(
    () => delimited({ delimiter: "\r\n" }).encode(encoder.encode("a\r\n")),
    TypeError,
  );
  // "x\r\n" + "\r\n\r\n" would end the frame early.
  assert.throws(
    () => delimited({ delimiter: "\r\n\r\n" }).encode(encoder.encode("x\r\n")),
    TypeError,
  );
  assert.deepEqual(
    delimited({ delimiter: "\r\n" }).encode(encoder.encode("a\r")),
    encoder.encode("a\r\r\n"),
  );
});

Deno.test("delimited() rejects bad options", () => {
  assert.throws(() => delimited({ delimiter: "" }), RangeError);
  assert.throws(
    () => delimited({ delimiter: "\n", start: new Uint8Array() }),
    RangeError,
  );
  assert.throws(
    () => delimited({ delimiter: 10 as unknown as string }),
    TypeError,
  );
  assert.throws(
    () => delimited({ delimiter: "\n", maxFrameBytes: 1.5 }),
    RangeError,
  );
});

Deno.test("fixedLength() encode throws RangeError for a message of the wrong size", () => {
  const codec = fixedLength(4);
  assert.throws(() => codec.encode(new Uint8Array(3)), RangeError);
  assert.throws(() => codec.encode(new Uint8Array(5)), RangeError);
  assert.throws(
    () => codec.encodeInto!(new Uint8Array(4), new Uint8Array(5), 2),
    RangeError,
  );
  assert.throws(() => fixedLength(0), RangeError);
  assert.throws(() => fixedLength(2.5), RangeError);
});

Deno.test("fixedLength() end() throws ProtocolError inside a frame", () => {
  const decoder = fixedLength(4).decoder();
  decoder.decode(new Uint8Array(6));
  assert.throws(() => decoder.end!(), /2 of 4/);
});

Deno.test("decoderStream() errors with ProtocolError when the stream ends inside a frame", async () => {
  const codec = lengthPrefixed();
  const wire = codec.encode(new Uint8Array(10));
  await assert.rejects(
    decodeStream(codec, [wire.subarray(0, 7)]),
    ProtocolError,
  );
  await assert.rejects(
    decodeStream(delimited({ delimiter: "\n" }), [encoder.encode("a\nb")]),
    ProtocolError,
  );
});

Deno.test("decoderStream() emits one batch per chunk and skips empty ones", async () => {
  const codec = fixedLength(1);
  const batches = await Array.fromAsync(
    ReadableStream.from([
      new Uint8Array([1, 2]),
      new Uint8Array(),
      new Uint8Array([3]),
    ])
      .pipeThrough(decoderStream(codec.decoder())),
  );
  assert.deepEqual(batches, [
    [new Uint8Array([1]), new Uint8Array([2])],
    [new Uint8Array([3])],
  ]);
});

Deno.test("lengthPrefixed(), delimited() and fixedLength() pass correlationId through", () => {
  const byFirstByte = (frame: Uint8Array) => frame[0];
  const codecs = [
    lengthPrefixed({ correlationId: byFirstByte }),
    delimited({ delimiter: "\n", correlationId: byFirstByte }),
    fixedLength(2, { correlationId: byFirstByte }),
  ];
  for (const codec of codecs) {
    assert.equal(codec.correlationId, byFirstByte);
    assert.equal(codec.correlationId!(new Uint8Array([9, 1])), 9);
  }
  assert.equal("correlationId" in lengthPrefixed(), false);
  assert.equal("correlationId" in delimited({ delimiter: "\n" }), false);
  assert.equal("correlationId" in fixedLength(1), false);
});
