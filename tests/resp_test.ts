import assert from "node:assert/strict";
import fc from "fast-check";
import { FrameTooLargeError, ProtocolError } from "../errors.ts";
import { decoderStream } from "../framing/codec.ts";
import {
  command,
  resp,
  respCall,
  RespError,
  type RespValue,
} from "../framing/resp.ts";
import { bytewise, concat, cut } from "./_bytes.ts";

const encoder = new TextEncoder();
const bytes = (text: string) => encoder.encode(text);
const text = (data: Uint8Array) => new TextDecoder().decode(data);

function decodeAll(
  chunks: readonly Uint8Array[],
  options: Parameters<typeof resp>[0] = {},
): RespValue[] {
  const decoder = resp(options).decoder();
  const values = chunks.flatMap((chunk) => decoder.decode(chunk));
  decoder.end();
  return values;
}

/** Errors compared by class and message; the rest as they are. */
function plain(value: RespValue): unknown {
  if (value instanceof RespError) return { error: value.message };
  if (Array.isArray(value)) return value.map(plain);
  return value;
}

const lineString = fc.string({ unit: "binary", maxLength: 24 }).filter((s) =>
  !/[\r\n]/.test(s)
);
const integerValue = fc.oneof(
  fc.integer({ min: -1000, max: 1000 }),
  fc.maxSafeInteger(),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map((n) =>
    n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(n)
      : n
  ),
);
const { value: respValue } = fc.letrec<{ value: RespValue; array: RespValue }>(
  (tie) => ({
    value: fc.oneof(
      { depthSize: "small", withCrossShrink: true },
      lineString,
      lineString.map((message) => new RespError(message)),
      integerValue,
      fc.uint8Array({ maxLength: 40 }),
      fc.constant(null),
      tie("array"),
    ),
    array: fc.array(tie("value"), { maxLength: 5 }),
  }),
);

Deno.test("resp() decodes every RESP2 reply type", async (t) => {
  const cases: [string, string, unknown][] = [
    ["simple string", "+OK\r\n", "OK"],
    ["empty simple string", "+\r\n", ""],
    ["UTF-8 simple string", "+héllo ✓\r\n", "héllo ✓"],
    ["error", "-ERR unknown command 'FOO'\r\n", {
      error: "ERR unknown command 'FOO'",
    }],
    ["integer", ":1000\r\n", 1000],
    ["negative integer", ":-42\r\n", -42],
    ["zero", ":0\r\n", 0],
    ["largest safe integer", ":9007199254740991\r\n", Number.MAX_SAFE_INTEGER],
    ["int64 beyond 2^53 as bigint", ":9223372036854775807\r\n", 2n ** 63n - 1n],
    ["int64 minimum", ":-9223372036854775808\r\n", -(2n ** 63n)],
    ["bulk string", "$5\r\nhello\r\n", bytes("hello")],
    ["bulk string with CRLF inside", "$4\r\na\r\nb\r\n", bytes("a\r\nb")],
    ["empty bulk string", "$0\r\n\r\n", new Uint8Array()],
    ["null bulk string", "$-1\r\n", null],
    ["null array", "*-1\r\n", null],
    ["empty array", "*0\r\n", []],
    ["array", "*3\r\n:1\r\n+two\r\n$5\r\nthree\r\n", [
      1,
      "two",
      bytes("three"),
    ]],
    [
      "nested arrays",
      "*2\r\n*2\r\n:1\r\n*1\r\n$-1\r\n*0\r\n",
      [[1, [null]], []],
    ],
    ["error inside an array", "*2\r\n-ERR one\r\n:2\r\n", [{
      error: "ERR one",
    }, 2]],
  ];
  for (const [name, wire, expected] of cases) {
    await t.step(name, () => {
      assert.deepEqual(decodeAll([bytes(wire)]).map(plain), [expected]);
      assert.deepEqual(decodeAll(bytewise(bytes(wire))).map(plain), [
        expected,
      ]);
    });
  }
});

Deno.test("resp() returns bulk strings as views of the chunk", () => {
  const chunk = bytes("*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\n");
  const [reply] = resp().decoder().decode(chunk);
  assert.ok(Array.isArray(reply));
  for (const item of reply) {
    assert.ok(item instanceof Uint8Array);
    assert.equal(item.buffer, chunk.buffer);
  }
  assert.deepEqual(reply, [bytes("foo"), bytes("bar")]);
});

Deno.test("resp() decodes many replies in one chunk, in order", () => {
  const wire = bytes("+OK\r\n".repeat(100) + ":7\r\n$1\r\nx\r\n");
  const values = decodeAll([wire]);
  assert.equal(values.length, 102);
  assert.deepEqual(values.slice(-3), ["OK", 7, bytes("x")]);
});

Deno.test("resp() gives the same values for any split of the bytes", () => {
  fc.assert(
    fc.property(
      fc.array(respValue, { minLength: 1, maxLength: 8 }),
      fc.array(fc.nat(), { maxLength: 12 }),
      (values, points) => {
        const codec = resp();
        const wire = concat(values.map((value) => codec.encode(value)));
        const expected = values.map(plain);
        assert.deepEqual(decodeAll(cut(wire, points)).map(plain), expected);
        assert.deepEqual(decodeAll(bytewise(wire)).map(plain), expected);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("resp() accepts a reply of exactly maxFrameBytes and rejects one byte less, for any split", () => {
  fc.assert(
    fc.property(
      respValue,
      fc.array(fc.nat(), { maxLength: 6 }),
      (value, points) => {
        const size = resp().encodedLength(value);
        const wire = resp().encode(value);
        const twice = concat([wire, wire]);
        assert.deepEqual(
          decodeAll(cut(twice, points), { maxFrameBytes: size }).map(plain),
          [plain(value), plain(value)],
        );
        assert.throws(
          () => decodeAll(cut(wire, points), { maxFrameBytes: size - 1 }),
          FrameTooLargeError,
        );
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("resp() reassembles a large bulk string split across chunks", () => {
  const body = new Uint8Array(200_000).map((_, i) => i % 251);
  const wire = resp().encode(body);
  for (const size of [1000, 65_536, 99_999]) {
    const chunks: Uint8Array[] = [];
    for (let at = 0; at < wire.length; at += size) {
      chunks.push(wire.subarray(at, at + size));
    }
    assert.deepEqual(decodeAll(chunks), [body]);
  }
});

Deno.test("resp() rejects a bulk string over maxFrameBytes at its header", () => {
  const decoder = resp({ maxFrameBytes: 10 }).decoder();
  assert.throws(
    () => decoder.decode(bytes("$100\r\n")),
    (error: unknown) =>
      error instanceof FrameTooLargeError && error.maxFrameBytes === 10 &&
      error.frameBytes === 108,
  );
});

Deno.test("resp() rejects a reply whose accumulated size passes maxFrameBytes", () => {
  const decoder = resp({ maxFrameBytes: 30 }).decoder();
  // 4 + 10 + 10 bytes fit; the third element does not.
  assert.deepEqual(
    decoder.decode(bytes("*3\r\n$4\r\nabcd\r\n$4\r\nabcd\r\n")),
    [],
  );
  assert.throws(() => decoder.decode(bytes("$4\r\n")), FrameTooLargeError);
});

Deno.test("resp() rejects an array header that cannot fit maxFrameBytes", () => {
  const decoder = resp({ maxFrameBytes: 1000 }).decoder();
  assert.throws(
    () => decoder.decode(bytes("*1000000\r\n")),
    FrameTooLargeError,
  );
});

Deno.test("resp() rejects a simple string that grows past maxFrameBytes without CRLF", () => {
  const decoder = resp({ maxFrameBytes: 100 }).decoder();
  decoder.decode(bytes("+" + "a".repeat(60)));
  assert.throws(
    () => decoder.decode(bytes("a".repeat(60))),
    FrameTooLargeError,
  );
});

Deno.test("resp() limits each top-level reply, not the stream", () => {
  const values = decodeAll([bytes("$5\r\nhello\r\n".repeat(50))], {
    maxFrameBytes: 11,
  });
  assert.equal(values.length, 50);
});

Deno.test("resp() rejects garbage with ProtocolError", async (t) => {
  const cases: [string, string][] = [
    ["an unknown type byte", "?what\r\n"],
    ["a RESP3 type byte", "_\r\n"],
    ["a non-digit bulk length", "$abc\r\n"],
    ["a negative bulk length other than -1", "$-2\r\n"],
    ["an empty array length", "*\r\n"],
    ["a non-digit integer", ":12a\r\n"],
    ["an empty integer", ":\r\n"],
    ["an integer beyond 64 bits", ":9223372036854775808\r\n"],
    ["a bulk string without CRLF after it", "$3\r\nfooXY"],
    ["a CR without LF", "+OK\rX\r\n"],
    ["a line ended by LF alone", "+OK\n+OK\r\n"],
    ["a bare LF in a partial line", "+OK\nabc"],
    ["a length line that never ends", "$" + "1".repeat(40)],
    ["garbage after a reply", "+OK\r\nhello\r\n"],
  ];
  for (const [name, wire] of cases) {
    await t.step(name, () => {
      assert.throws(() => decodeAll([bytes(wire)]), ProtocolError);
      assert.throws(() => decodeAll(bytewise(bytes(wire))), ProtocolError);
    });
  }
});

Deno.test("resp() rejects arrays nested deeper than maxDepth", () => {
  const deep = (n: number) => "*1\r\n".repeat(n) + ":1\r\n";
  assert.deepEqual(decodeAll([bytes(deep(3))], { maxDepth: 3 }), [[[[1]]]]);
  assert.throws(
    () => decodeAll([bytes(deep(4))], { maxDepth: 3 }),
    (error: unknown) =>
      error instanceof ProtocolError && /maxDepth \(3\)/.test(error.message),
  );
  assert.throws(() => decodeAll([bytes(deep(33))]), ProtocolError);
});

Deno.test("resp() decoder.end() throws ProtocolError mid-reply", async (t) => {
  for (
    const [name, wire] of [
      ["inside a line", "+OK"],
      ["after a line's CR", "+OK\r"],
      ["inside a bulk string", "$5\r\nhel"],
      ["before a bulk string's CRLF", "$5\r\nhello"],
      ["inside an array", "*2\r\n:1\r\n"],
    ]
  ) {
    await t.step(name!, () => {
      const decoder = resp().decoder();
      assert.deepEqual(decoder.decode(bytes(wire!)), []);
      assert.throws(() => decoder.end(), ProtocolError);
      // The state is reset: the decoder ends cleanly afterwards.
      decoder.end();
    });
  }
  const decoder = resp().decoder();
  decoder.decode(bytes("+OK\r\n"));
  decoder.end();
});

Deno.test("resp() works through decoderStream()", async () => {
  const wire = bytes("+OK\r\n$3\r\nbar\r\n*1\r\n:5\r\n");
  const batches = await Array.fromAsync(
    ReadableStream.from(cut(wire, [3, 11, 14])).pipeThrough(
      decoderStream(resp()),
    ),
  );
  assert.deepEqual(batches.flat(), ["OK", bytes("bar"), [5]]);
  await assert.rejects(
    Array.fromAsync(
      ReadableStream.from([bytes("$5\r\nhe")]).pipeThrough(
        decoderStream(resp()),
      ),
    ),
    ProtocolError,
  );
});

Deno.test("resp() encodes every value type", async (t) => {
  const codec = resp();
  const cases: [string, RespValue, string][] = [
    ["simple string", "OK", "+OK\r\n"],
    ["error", new RespError("ERR bad"), "-ERR bad\r\n"],
    ["integer", -12, ":-12\r\n"],
    ["bigint", 2n ** 62n, ":4611686018427387904\r\n"],
    ["bulk string", bytes("héllo"), "$6\r\nhéllo\r\n"],
    ["null", null, "$-1\r\n"],
    ["array", [bytes("GET"), bytes("k")], "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"],
    ["empty array", [], "*0\r\n"],
  ];
  for (const [name, value, wire] of cases) {
    await t.step(name, () => {
      assert.equal(text(codec.encode(value)), wire);
      assert.equal(codec.encodedLength(value), bytes(wire).length);
      const target = new Uint8Array(bytes(wire).length + 3);
      assert.equal(codec.encodeInto(value, target, 3), bytes(wire).length);
      assert.equal(text(target.subarray(3)), wire);
    });
  }
});

Deno.test("resp() encodedLength() matches encode() for any value", () => {
  const codec = resp();
  fc.assert(
    fc.property(respValue, (value) => {
      assert.equal(codec.encodedLength(value), codec.encode(value).length);
    }),
    { numRuns: 300 },
  );
  // Lone surrogates become U+FFFD (3 bytes), as TextEncoder writes them.
  assert.equal(codec.encodedLength("\ud800"), 6);
  assert.deepEqual(decodeAll([codec.encode("\ud800")]), ["\ufffd"]);
});

Deno.test("resp() refuses to encode what RESP2 cannot carry", () => {
  const codec = resp();
  assert.throws(() => codec.encode("a\r\nb"), TypeError);
  assert.throws(() => codec.encode(new RespError("bad\nline")), TypeError);
  assert.throws(() => codec.encode(1.5), TypeError);
  assert.throws(() => codec.encode(2n ** 63n), RangeError);
  assert.throws(
    () => codec.encode(undefined as unknown as RespValue),
    TypeError,
  );
  assert.throws(
    () => codec.encode([{}] as unknown as RespValue),
    TypeError,
  );
  assert.throws(
    () => codec.encodeInto(bytes("abc"), new Uint8Array(4), 0),
    RangeError,
  );
});

Deno.test("resp() rejects bad options with RangeError", () => {
  assert.throws(() => resp({ maxFrameBytes: -1 }), RangeError);
  assert.throws(() => resp({ maxDepth: 0 }), RangeError);
  assert.throws(() => resp({ maxDepth: 1.5 }), RangeError);
});

Deno.test("resp().replyError() marks error replies only", () => {
  const codec = resp();
  const error = new RespError("ERR x");
  assert.equal(codec.replyError(error), error);
  assert.equal(codec.replyError("OK"), undefined);
  assert.equal(codec.replyError([error]), undefined);
});

Deno.test("command() encodes strings as UTF-8 and numbers in decimal", () => {
  const raw = new Uint8Array([0, 13, 10, 255]);
  const args = command("SET", "clé", raw, 42, -1.5, 2n ** 64n);
  assert.deepEqual(args.map((arg) => Array.from(arg)), [
    Array.from(bytes("SET")),
    Array.from(bytes("clé")),
    [0, 13, 10, 255],
    Array.from(bytes("42")),
    Array.from(bytes("-1.5")),
    Array.from(bytes("18446744073709551616")),
  ]);
  assert.equal(args[2], raw);
  assert.equal(
    text(resp().encode(command("GET", "k"))),
    "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
  );
});

Deno.test("command() rejects no arguments, non-finite numbers and other types", () => {
  assert.throws(() => command(), TypeError);
  assert.throws(() => command("INCRBY", "k", Number.NaN), RangeError);
  assert.throws(() => command("INCRBY", "k", Infinity), RangeError);
  assert.throws(
    () => command("SET", {} as unknown as string),
    TypeError,
  );
});

Deno.test("RespError takes its code from the first capitalised word", () => {
  assert.equal(new RespError("WRONGTYPE Operation").code, "WRONGTYPE");
  assert.equal(new RespError("NOAUTH").code, "NOAUTH");
  assert.equal(new RespError("something odd").code, "");
  const error = new RespError("ERR x");
  assert.equal(error.name, "RespError");
  assert.equal(error.message, "ERR x");
});

Deno.test("respCall() rejects with the RespError of an error reply and resolves other replies", async () => {
  const replies: RespValue[] = [new RespError("ERR nope"), bytes("v"), [
    new RespError("ERR inside"),
  ]];
  const sent: RespValue[] = [];
  const fake = {
    request: (message: RespValue) => {
      sent.push(message);
      return Promise.resolve(replies.shift()!);
    },
  };
  await assert.rejects(respCall(fake, ["INCR", "k"]), {
    name: "RespError",
    message: "ERR nope",
  });
  assert.deepEqual(await respCall(fake, ["GET", "k"]), bytes("v"));
  const nested = await respCall(fake, ["EXEC"]);
  assert.ok(Array.isArray(nested) && nested[0] instanceof RespError);
  assert.deepEqual(sent, [command("INCR", "k"), command("GET", "k"), [
    bytes("EXEC"),
  ]]);
});

Deno.test("command() keeps earlier commands intact while later ones fill new buffers", () => {
  const kept = Array.from(
    { length: 10_000 },
    (_, i) => command("SET", `key:${i}`, "x".repeat(i % 100)),
  );
  const big = "é".repeat(10_000);
  const large = command("SET", "big", big);
  kept.forEach((args, i) => {
    assert.deepEqual(args.map(text), ["SET", `key:${i}`, "x".repeat(i % 100)]);
  });
  assert.equal(text(large[2]!), big);
});
