import assert from "node:assert/strict";
import fc from "fast-check";
import { ProxyProtocolError } from "../errors.ts";
import {
  encodeProxyHeaderV1,
  encodeProxyHeaderV2,
  parseProxyHeader,
  type ProxyHeader,
  readProxyHeader,
} from "../transport/proxy_protocol.ts";

const encoder = new TextEncoder();
const ascii = (text: string) => encoder.encode(text);

function tcp(hostname: string, port: number): Deno.NetAddr {
  return { transport: "tcp", hostname, port };
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

/** The canonical text WHATWG URL gives an IPv6 address: same address ⇔ same text. */
function whatwgIpv6(text: string): string {
  return new URL(`http://[${text}]/`).hostname;
}

/** A scripted `read()`er that hands out the given chunks, then EOF. */
function scriptedConn(chunks: Uint8Array[]) {
  const queue = chunks.map((c) => c.slice());
  return {
    read(p: Uint8Array): Promise<number | null> {
      const chunk = queue.shift();
      if (chunk === undefined) return Promise.resolve(null);
      const n = Math.min(chunk.length, p.length);
      p.set(chunk.subarray(0, n));
      if (n < chunk.length) queue.unshift(chunk.subarray(n));
      return Promise.resolve(n);
    },
    remaining(): Uint8Array {
      return concat(...queue);
    },
  };
}

const v4 = tcp("192.0.2.1", 51234);
const v4d = tcp("198.51.100.2", 443);
const v6 = tcp("2001:db8::1", 40000);
const v6d = tcp("2001:db8::2", 443);

const ipv6Text = fc.array(fc.integer({ min: 0, max: 0xffff }), {
  minLength: 8,
  maxLength: 8,
}).map((groups) => groups.map((g) => g.toString(16)).join(":"));
const anyIpv6 = fc.oneof(fc.ipV6(), ipv6Text);
const port = fc.integer({ min: 0, max: 65535 });

Deno.test("encodeProxyHeaderV1() and parseProxyHeader() round-trip IPv4 addresses", () => {
  fc.assert(
    fc.property(fc.ipV4(), fc.ipV4(), port, port, (s, d, sp, dp) => {
      const bytes = encodeProxyHeaderV1(tcp(s, sp), tcp(d, dp));
      assert.ok(bytes.length <= 107);
      const result = parseProxyHeader(bytes);
      assert.deepEqual(result, {
        header: {
          version: 1,
          command: "proxy",
          transport: "tcp4",
          source: tcp(s, sp),
          destination: tcp(d, dp),
        },
        consumed: bytes.length,
      });
    }),
  );
});

Deno.test("encodeProxyHeaderV2() and parseProxyHeader() round-trip IPv4 addresses", () => {
  fc.assert(
    fc.property(fc.ipV4(), fc.ipV4(), port, port, (s, d, sp, dp) => {
      const bytes = encodeProxyHeaderV2(tcp(s, sp), tcp(d, dp));
      assert.equal(bytes.length, 28);
      assert.deepEqual(parseProxyHeader(bytes), {
        header: {
          version: 2,
          command: "proxy",
          transport: "tcp4",
          source: tcp(s, sp),
          destination: tcp(d, dp),
        },
        consumed: 28,
      });
    }),
  );
});

Deno.test("parseProxyHeader() round-trips IPv6 addresses in both versions to one canonical text", () => {
  fc.assert(
    fc.property(anyIpv6, anyIpv6, port, port, (s, d, sp, dp) => {
      const results = [
        parseProxyHeader(encodeProxyHeaderV1(tcp(s, sp), tcp(d, dp))),
        parseProxyHeader(encodeProxyHeaderV2(tcp(s, sp), tcp(d, dp))),
      ];
      const [one, two] = results.map((r) => r!.header);
      assert.equal(one!.transport, "tcp6");
      assert.deepEqual({ ...one, version: 2 }, two);
      const source = two!.source as Deno.NetAddr;
      const destination = two!.destination as Deno.NetAddr;
      assert.equal(source.port, sp);
      assert.equal(destination.port, dp);
      // Same address as the input…
      assert.equal(whatwgIpv6(source.hostname), whatwgIpv6(s));
      assert.equal(whatwgIpv6(destination.hostname), whatwgIpv6(d));
      // …and canonical: encoding it again gives the same text.
      const again = parseProxyHeader(
        encodeProxyHeaderV2(source, destination),
      )!.header;
      assert.deepEqual(again, two);
      assert.equal(source.hostname, source.hostname.toLowerCase());
    }),
  );
});

Deno.test("parseProxyHeader() gives IPv6 in RFC 5952 form", async (t) => {
  const cases: [string, string][] = [
    ["2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["1:0:0:2:0:0:0:3", "1:0:0:2::3"],
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["0:0:0:0:0:0:0:0", "::"],
    ["0:0:0:0:0:0:0:1", "::1"],
    ["1:0:0:0:0:0:0:0", "1::"],
    ["::ffff:c000:0201", "::ffff:192.0.2.1"],
    ["::ffff:192.0.2.1", "::ffff:192.0.2.1"],
    ["::1.2.3.4", "::102:304"],
    ["fe80::1:2:3:4", "fe80::1:2:3:4"],
  ];
  for (const [input, canonical] of cases) {
    await t.step(`${input} → ${canonical}`, () => {
      for (
        const bytes of [
          ascii(`PROXY TCP6 ${input} ::1 1 2\r\n`),
          encodeProxyHeaderV2(tcp(input, 1), tcp("::1", 2)),
        ]
      ) {
        const source = parseProxyHeader(bytes)!.header.source as Deno.NetAddr;
        assert.equal(source.hostname, canonical);
      }
    });
  }
});

const samples: [string, Uint8Array][] = [
  ["v1 TCP4", encodeProxyHeaderV1(v4, v4d)],
  ["v1 TCP6", encodeProxyHeaderV1(v6, v6d)],
  ["v1 UNKNOWN", ascii("PROXY UNKNOWN\r\n")],
  ["v1 UNKNOWN with addresses", ascii("PROXY UNKNOWN ::1 ::2 1 2\r\n")],
  ["v2 TCP4", encodeProxyHeaderV2(v4, v4d)],
  ["v2 TCP6", encodeProxyHeaderV2(v6, v6d)],
  [
    "v2 UNIX",
    encodeProxyHeaderV2({ transport: "unix", path: "/run/a.sock" }, {
      transport: "unix",
      path: "/run/b.sock",
    }),
  ],
  ["v2 LOCAL", encodeProxyHeaderV2(undefined, undefined, { local: true })],
  [
    "v2 TCP4 with TLVs",
    encodeProxyHeaderV2(v4, v4d, {
      tlvs: [
        { type: 0x01, value: ascii("h2") },
        { type: 0x04, value: new Uint8Array(5) },
      ],
    }),
  ],
];

Deno.test("parseProxyHeader() returns null for every incomplete prefix", async (t) => {
  for (const [name, bytes] of samples) {
    await t.step(name, () => {
      for (let k = 0; k < bytes.length; k++) {
        assert.equal(
          parseProxyHeader(bytes.subarray(0, k)),
          null,
          `prefix of ${k} bytes`,
        );
      }
      const data = ascii("application data");
      assert.equal(
        parseProxyHeader(concat(bytes, data))?.consumed,
        bytes.length,
      );
    });
  }
});

Deno.test("parseProxyHeader() reads v1 UNKNOWN, v2 LOCAL and v2 UNIX", () => {
  assert.deepEqual(parseProxyHeader(ascii("PROXY UNKNOWN\r\n"))?.header, {
    version: 1,
    command: "proxy",
    transport: "unknown",
  });
  assert.deepEqual(
    parseProxyHeader(ascii("PROXY UNKNOWN ffff:f...f:ffff 1\r\n"))?.header
      .transport,
    "unknown",
  );
  const local = encodeProxyHeaderV2(undefined, undefined, { local: true });
  assert.deepEqual(local.subarray(12), new Uint8Array([0x20, 0, 0, 0]));
  assert.deepEqual(parseProxyHeader(local), {
    header: { version: 2, command: "local", transport: "unknown" },
    consumed: 16,
  });
  // LOCAL with an address block (and any family byte) discards it.
  const localWithAddresses = encodeProxyHeaderV2(v4, v4d, { local: true });
  localWithAddresses[13] = 0xff;
  assert.deepEqual(parseProxyHeader(localWithAddresses), {
    header: { version: 2, command: "local", transport: "unknown" },
    consumed: 28,
  });
  const unix = encodeProxyHeaderV2(
    { transport: "unix", path: "/run/client.sock" },
    { transport: "unix", path: "/run/server.sock" },
  );
  assert.equal(unix.length, 16 + 216);
  assert.deepEqual(parseProxyHeader(unix)?.header, {
    version: 2,
    command: "proxy",
    transport: "unix",
    source: { transport: "unix", path: "/run/client.sock" },
    destination: { transport: "unix", path: "/run/server.sock" },
  });
  // PROXY with family UNSPEC: addresses ignored.
  const unspec = concat(
    encodeProxyHeaderV2(undefined, undefined, { local: true }).subarray(0, 12),
    new Uint8Array([0x21, 0x00, 0x00, 0x03, 1, 2, 3]),
  );
  assert.deepEqual(parseProxyHeader(unspec), {
    header: { version: 2, command: "proxy", transport: "unknown" },
    consumed: 19,
  });
});

Deno.test("parseProxyHeader() skips v2 TLVs within the announced length", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          type: fc.integer({ min: 0, max: 255 }),
          value: fc.uint8Array({ maxLength: 300 }),
        }),
        { maxLength: 8 },
      ),
      fc.uint8Array({ maxLength: 32 }),
      (tlvs, data) => {
        const header = encodeProxyHeaderV2(v6, v6d, { tlvs });
        const result = parseProxyHeader(concat(header, data));
        assert.equal(result?.consumed, header.length);
        assert.deepEqual(result?.header.source, v6);
      },
    ),
  );
});

function v2With(
  command: number,
  family: number,
  block: Uint8Array,
  length = block.length,
): Uint8Array {
  return concat(
    ascii("\r\n\r\n\0\r\nQUIT\n"),
    new Uint8Array([command, family, length >> 8, length & 0xff]),
    block,
  );
}

Deno.test("parseProxyHeader() throws ProxyProtocolError on malformed headers", async (t) => {
  const malformed: [string, Uint8Array][] = [
    ["no header (plain data)", ascii("GET / HTTP/1.1\r\n")],
    ["no header (binary zero)", new Uint8Array([0])],
    ["v1 prefix in lower case", ascii("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n")],
    ["v1 without the space", ascii("PROXYTCP4")],
    ["v1 unknown protocol", ascii("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n")],
    ["v1 missing field", ascii("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n")],
    ["v1 extra field", ascii("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n")],
    ["v1 double space", ascii("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n")],
    ["v1 non-numeric port", ascii("PROXY TCP4 1.2.3.4 5.6.7.8 http 2\r\n")],
    ["v1 negative port", ascii("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n")],
    ["v1 port over 65535", ascii("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n")],
    ["v1 port of six digits", ascii("PROXY TCP4 1.2.3.4 5.6.7.8 1 000080\r\n")],
    ["v1 bad IPv4", ascii("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n")],
    ["v1 IPv4 with 3 parts", ascii("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n")],
    ["v1 IPv4 leading zero", ascii("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n")],
    ["v1 IPv6 under TCP4", ascii("PROXY TCP4 ::1 ::2 1 2\r\n")],
    ["v1 IPv4 under TCP6", ascii("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n")],
    ["v1 bad IPv6 (two ::)", ascii("PROXY TCP6 1::2::3 ::1 1 2\r\n")],
    [
      "v1 bad IPv6 (9 groups)",
      ascii("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"),
    ],
    ["v1 bad IPv6 (hex)", ascii("PROXY TCP6 ::g ::1 1 2\r\n")],
    ["v1 IPv6 zone id", ascii("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n")],
    ["v1 LF without CR", ascii("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n")],
    ["v1 CR without LF", ascii("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX")],
    ["v1 no CRLF in 107 bytes", ascii("PROXY UNKNOWN " + "x".repeat(93))],
    [
      "v1 CRLF at bytes 107-108",
      ascii("PROXY UNKNOWN " + "x".repeat(92) + "\r\n"),
    ],
    ["v1 non-ASCII byte", concat(ascii("PROXY TCP4 "), new Uint8Array([0xc3]))],
    ["v2 bad signature", ascii("\r\n\r\n\0\r\nQUIZ\n")],
    ["v2 version 1", v2With(0x11, 0x11, new Uint8Array(12))],
    ["v2 version 3", v2With(0x31, 0x11, new Uint8Array(12))],
    ["v2 command 2", v2With(0x22, 0x11, new Uint8Array(12))],
    ["v2 family 4", v2With(0x21, 0x41, new Uint8Array(12))],
    ["v2 protocol 3", v2With(0x21, 0x13, new Uint8Array(12))],
    [
      "v2 family INET with UNSPEC protocol",
      v2With(0x21, 0x10, new Uint8Array(12)),
    ],
    ["v2 UNSPEC family with STREAM", v2With(0x21, 0x01, new Uint8Array(0))],
    ["v2 UDP over IPv4", v2With(0x21, 0x12, new Uint8Array(12))],
    ["v2 TCP4 address block too short", v2With(0x21, 0x11, new Uint8Array(11))],
    ["v2 TCP6 address block too short", v2With(0x21, 0x21, new Uint8Array(35))],
    [
      "v2 UNIX address block too short",
      v2With(0x21, 0x31, new Uint8Array(215)),
    ],
    [
      "v2 TLV past the block",
      v2With(
        0x21,
        0x11,
        concat(new Uint8Array(12), new Uint8Array([1, 0, 5, 1, 2])),
      ),
    ],
    ["v2 truncated TLV header", v2With(0x21, 0x11, new Uint8Array(14))],
  ];
  for (const [name, bytes] of malformed) {
    await t.step(name, () => {
      assert.throws(() => parseProxyHeader(bytes), ProxyProtocolError);
    });
  }
});

Deno.test("parseProxyHeader() throws as soon as the bytes cannot start a header", () => {
  assert.throws(() => parseProxyHeader(ascii("G")), ProxyProtocolError);
  assert.throws(() => parseProxyHeader(ascii("PRX")), ProxyProtocolError);
  assert.throws(
    () => parseProxyHeader(ascii("\r\n\r\n\0\r\nX")),
    ProxyProtocolError,
  );
  // A v2 header announcing too much fails on its 16th byte, before the body.
  const big = v2With(0x21, 0x11, new Uint8Array(0), 5000);
  assert.throws(() => parseProxyHeader(big), ProxyProtocolError);
});

Deno.test("parseProxyHeader() rejects a header larger than maxHeaderBytes", () => {
  const big = encodeProxyHeaderV2(v4, v4d, {
    tlvs: [{ type: 0x04, value: new Uint8Array(4096) }],
  });
  assert.throws(
    () => parseProxyHeader(big),
    (error: unknown) =>
      error instanceof ProxyProtocolError &&
      /maxHeaderBytes/.test(error.message),
  );
  assert.equal(
    parseProxyHeader(big, { maxHeaderBytes: 65551 })?.consumed,
    big.length,
  );
  const v2 = encodeProxyHeaderV2(v6, v6d);
  assert.equal(
    parseProxyHeader(v2, { maxHeaderBytes: v2.length })?.consumed,
    v2.length,
  );
  assert.throws(
    () => parseProxyHeader(v2, { maxHeaderBytes: v2.length - 1 }),
    ProxyProtocolError,
  );
  const v1 = encodeProxyHeaderV1(v4, v4d);
  assert.throws(
    () => parseProxyHeader(v1, { maxHeaderBytes: v1.length - 1 }),
    ProxyProtocolError,
  );
  assert.throws(() => parseProxyHeader(v1, { maxHeaderBytes: 15 }), RangeError);
  assert.throws(
    () => parseProxyHeader(v1, { maxHeaderBytes: 65552 }),
    RangeError,
  );
});

Deno.test("encodeProxyHeaderV1() and encodeProxyHeaderV2() reject bad addresses", () => {
  assert.throws(
    () => encodeProxyHeaderV1(tcp("example.com", 1), v4d),
    TypeError,
  );
  assert.throws(() => encodeProxyHeaderV1(v4, v6d), TypeError);
  assert.throws(
    () => encodeProxyHeaderV1(tcp("1.2.3.4", 65536), v4d),
    RangeError,
  );
  assert.throws(
    () => encodeProxyHeaderV1(tcp("1.2.3.4", 1.5), v4d),
    RangeError,
  );
  assert.throws(() => encodeProxyHeaderV2(v4, v6d), TypeError);
  assert.throws(() => encodeProxyHeaderV2(undefined, undefined), TypeError);
  assert.throws(
    () => encodeProxyHeaderV2(v4, undefined, { local: true }),
    TypeError,
  );
  assert.throws(
    () => encodeProxyHeaderV2(v4, { transport: "unix", path: "/x" }),
    TypeError,
  );
  assert.throws(
    () =>
      encodeProxyHeaderV2({ transport: "unix", path: "x".repeat(108) }, {
        transport: "unix",
        path: "/y",
      }),
    RangeError,
  );
  assert.throws(
    () =>
      encodeProxyHeaderV2(v4, v4d, {
        tlvs: [{ type: 256, value: new Uint8Array(0) }],
      }),
    RangeError,
  );
  assert.throws(
    () =>
      encodeProxyHeaderV2(v4, v4d, {
        tlvs: [{ type: 1, value: new Uint8Array(0xffff) }],
      }),
    RangeError,
  );
  // Bracketed IPv6 (as in URLs) is accepted.
  assert.equal(
    new TextDecoder().decode(
      encodeProxyHeaderV1(tcp("[::1]", 1), tcp("::2", 2)),
    ),
    "PROXY TCP6 ::1 ::2 1 2\r\n",
  );
});

Deno.test("readProxyHeader() finds the header and keeps the bytes after it in rest, for any split", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(...samples.map(([, bytes]) => bytes)),
      fc.uint8Array({ maxLength: 2000 }),
      fc.array(fc.integer({ min: 1, max: 64 }), {
        minLength: 1,
        maxLength: 40,
      }),
      async (header, data, sizes) => {
        const all = concat(header, data);
        const chunks: Uint8Array[] = [];
        for (let offset = 0, i = 0; offset < all.length; i++) {
          const size = sizes[i % sizes.length]!;
          chunks.push(all.subarray(offset, offset + size));
          offset += size;
        }
        const conn = scriptedConn(chunks);
        const result = await readProxyHeader(conn);
        assert.deepEqual(result.header, parseProxyHeader(header)!.header);
        assert.deepEqual(concat(result.rest, conn.remaining()), data);
      },
    ),
  );
});

Deno.test("readProxyHeader() returns the application bytes of the same read in rest", async () => {
  const header = encodeProxyHeaderV1(v4, v4d);
  const conn = scriptedConn([concat(header, ascii("HELLO"))]);
  const { header: parsed, rest } = await readProxyHeader(conn);
  assert.equal(parsed.transport, "tcp4");
  assert.equal(new TextDecoder().decode(rest), "HELLO");
});

Deno.test("readProxyHeader() throws ProxyProtocolError on EOF before a whole header", async () => {
  await assert.rejects(readProxyHeader(scriptedConn([])), ProxyProtocolError);
  await assert.rejects(
    readProxyHeader(scriptedConn([ascii("PROXY TCP4 1.2.3.4")])),
    ProxyProtocolError,
  );
  const v2 = encodeProxyHeaderV2(v6, v6d);
  await assert.rejects(
    readProxyHeader(scriptedConn([v2.subarray(0, 20)])),
    ProxyProtocolError,
  );
});

Deno.test("readProxyHeader() throws ProxyProtocolError on malformed data and oversize headers", async () => {
  await assert.rejects(
    readProxyHeader(scriptedConn([ascii("HELLO WORLD\r\n")])),
    ProxyProtocolError,
  );
  const big = encodeProxyHeaderV2(v4, v4d, {
    tlvs: [{ type: 4, value: new Uint8Array(5000) }],
  });
  await assert.rejects(
    readProxyHeader(scriptedConn([big])),
    ProxyProtocolError,
  );
  const chunks = Array.from({ length: 100 }, () => ascii("x".repeat(50)));
  await assert.rejects(
    readProxyHeader(scriptedConn([ascii("PROXY UNKNOWN "), ...chunks])),
    ProxyProtocolError,
  );
  // Large headers within the limit work, the buffer grows as needed.
  const large = encodeProxyHeaderV2(v4, v4d, {
    tlvs: [{ type: 4, value: new Uint8Array(20000) }],
  });
  const { rest } = await readProxyHeader(
    scriptedConn([concat(large, ascii("!"))]),
    { maxHeaderBytes: 65551 },
  );
  assert.equal(new TextDecoder().decode(rest), "!");
});

Deno.test("readProxyHeader() rejects with signal.reason on abort", async () => {
  const pending = Promise.withResolvers<number | null>();
  const conn = { read: () => pending.promise };
  const controller = new AbortController();
  const reason = new Error("too slow");
  const reading = readProxyHeader(conn, { signal: controller.signal });
  controller.abort(reason);
  await assert.rejects(reading, (error) => error === reason);
  pending.resolve(null); // what closing the connection would do
  const aborted = AbortSignal.abort(reason);
  await assert.rejects(
    readProxyHeader(conn, { signal: aborted }),
    (error) => error === reason,
  );
});

Deno.test("readProxyHeader() reads a v1 header and data over a real connection", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using client = await Deno.connect({
    hostname: "127.0.0.1",
    port: listener.addr.port,
  });
  using conn = await listener.accept();
  await client.write(concat(encodeProxyHeaderV1(v6, v6d), ascii("PING")));
  const { header, rest } = await readProxyHeader(conn);
  const expected: ProxyHeader = {
    version: 1,
    command: "proxy",
    transport: "tcp6",
    source: v6,
    destination: v6d,
  };
  assert.deepEqual(header, expected);
  const data = concat(rest, new Uint8Array(4 - rest.length));
  if (rest.length < 4) {
    const n = await conn.read(data.subarray(rest.length));
    assert.equal(n, 4 - rest.length);
  }
  assert.equal(new TextDecoder().decode(data), "PING");
});

Deno.test("readProxyHeader() gives up on a stalled client with AbortSignal.timeout()", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using client = await Deno.connect({
    hostname: "127.0.0.1",
    port: listener.addr.port,
  });
  const conn = await listener.accept();
  await client.write(ascii("PROXY TCP4 1.2.")); // then nothing
  await assert.rejects(
    readProxyHeader(conn, { signal: AbortSignal.timeout(50) }),
    (error: unknown) =>
      error instanceof DOMException && error.name === "TimeoutError",
  );
  conn.close(); // ends the read left pending
});
