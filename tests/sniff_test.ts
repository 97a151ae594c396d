/**
 * The foreign-protocol sniffer on its own: a table of first bytes, and a
 * property that no prefix of a default-protocol frame is ever taken for a
 * foreign protocol.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { protocolMismatch, sniffProtocol } from "../_sniff.ts";
import { FrameTooLargeError, ProtocolMismatchError } from "../errors.ts";
import { defaultCodec, type FrameKind } from "../protocol.ts";

const hex = (text: string) =>
  Uint8Array.from(text.split(" ").filter(Boolean), (b) => parseInt(b, 16));
const ascii = (text: string) => new TextEncoder().encode(text);

/** The first bytes of a real TLS 1.3 ClientHello (record + handshake header). */
const CLIENT_HELLO = hex("16 03 01 00 f8 01 00 00 f4 03 03 5a 1c");
/** A fatal TLS alert as a TLS server sends it to a plain-text client. */
const TLS_ALERT = hex("15 03 03 00 02 02 32");

Deno.test("sniffProtocol() recognises foreign first bytes and nothing else", async (t) => {
  const table: [string, Uint8Array, string | undefined][] = [
    ["a TLS ClientHello", CLIENT_HELLO, "tls"],
    ["a TLS alert", TLS_ALERT, "tls"],
    ["a TLS 1.0 handshake record", hex("16 03 01 00 05 02"), "tls"],
    ["an SSL 3.0 handshake record", hex("16 03 00 00 30"), "tls"],
    ["an HTTP response", ascii("HTTP/1.1 400 Bad Request\r\n\r\n"), "http"],
    ["an HTTP/1.0 response", ascii("HTTP/1.0 200 OK\r\n"), "http"],
    ["a GET request", ascii("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "http"],
    ["a POST request", ascii("POST /api HTTP/1.1\r\n"), "http"],
    ["a PUT request", ascii("PUT /x HTTP/1.1\r\n"), "http"],
    ["a HEAD request", ascii("HEAD / HTTP/1.1\r\n"), "http"],
    ["a DELETE request", ascii("DELETE /x HTTP/1.1\r\n"), "http"],
    ["an OPTIONS request", ascii("OPTIONS * HTTP/1.1\r\n"), "http"],
    ["a PATCH request", ascii("PATCH /x HTTP/1.1\r\n"), "http"],
    ["a CONNECT request", ascii("CONNECT a:443 HTTP/1.1\r\n"), "http"],
    ["the HTTP/2 preface", ascii("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "http"],
    ["an SSH banner", ascii("SSH-2.0-OpenSSH_9.6\r\n"), "ssh"],
    ["an SSH 1.99 banner", ascii("SSH-1.99-srv\r\n"), "ssh"],
    // Never a match: default-protocol frames, short chunks, near misses.
    ["empty", new Uint8Array(0), undefined],
    ["a request frame", hex("00 00 00 07 01 00 00 00 01 68 69"), undefined],
    ["a ping frame", hex("00 00 00 05 05 00 00 00 01"), undefined],
    ["1 byte of a TLS record", hex("16"), undefined],
    ["2 bytes of a TLS record", hex("16 03"), undefined],
    ["3 bytes of a TLS record", hex("16 03 01"), undefined],
    ["4 bytes of a TLS record", hex("16 03 01 00"), undefined],
    ["3 bytes of a frame", hex("00 00 00"), undefined],
    ["1 byte of a frame", hex("00"), undefined],
    ["3 bytes of GET", ascii("GET"), undefined],
    ["3 bytes of SSH-", ascii("SSH"), undefined],
    ["TLS with a bad version", hex("16 03 05 00 10"), undefined],
    ["TLS with major version 2", hex("16 02 01 00 10"), undefined],
    ["TLS with an empty record", hex("16 03 03 00 00"), undefined],
    ["TLS with an oversize record", hex("16 03 03 ff ff"), undefined],
    ["an unknown content type", hex("19 03 03 00 10"), undefined],
    ["HTTP/ without a version", ascii("HTTP/x"), undefined],
    ["a lowercase method", ascii("get / HTTP/1.1\r\n"), undefined],
    ["a method without a space", ascii("GETX / HTTP/1.1\r\n"), undefined],
    ["SSH- without a version", ascii("SSH-x"), undefined],
    ["a RESP error line", ascii("-ERR unknown command\r\n"), undefined],
  ];
  for (const [name, bytes, expected] of table) {
    await t.step(name, () => {
      assert.equal(sniffProtocol(bytes)?.protocol, expected);
    });
  }
});

Deno.test("sniffProtocol() never matches any prefix of a default-protocol frame", () => {
  const codec = defaultCodec();
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 7 }),
      fc.integer({ min: 0, max: 0xffff_ffff }),
      fc.uint8Array({ maxLength: 300 }),
      fc.nat(),
      (kind, id, payload, cut) => {
        const frame = codec.encode({ kind: kind as FrameKind, id, payload });
        const prefix = frame.subarray(0, cut % (frame.length + 1));
        assert.equal(sniffProtocol(prefix), undefined);
      },
    ),
  );
});

Deno.test("sniffProtocol() quotes the first line of a text protocol, capped", () => {
  assert.equal(
    sniffProtocol(ascii("HTTP/1.1 400 Bad Request\r\n\r\n"))?.description,
    "an HTTP response (`HTTP/1.1 400 Bad Request`)",
  );
  const long = sniffProtocol(ascii(`GET /${"a".repeat(200)} HTTP/1.1\r\n`));
  assert.equal(
    long?.description,
    `an HTTP request (\`GET /${"a".repeat(55)}…\`)`,
  );
  assert.equal(
    sniffProtocol(ascii("SSH-2.0-x\x00\x01"))?.description,
    "an SSH banner (`SSH-2.0-x`)",
  );
});

Deno.test("protocolMismatch() says what to change on each side, with the decoder's error as cause", () => {
  const cause = new FrameTooLargeError(8 * 1024 * 1024, 352518907);
  const client = protocolMismatch(TLS_ALERT, "client", "127.0.0.1:4433", cause);
  assert.ok(client instanceof ProtocolMismatchError);
  assert.equal(client.detected, "tls");
  assert.equal(client.name, "ProtocolMismatchError");
  assert.equal(client.cause, cause);
  assert.equal(
    client.message,
    "The peer at 127.0.0.1:4433 speaks TLS: connect with `tls` options",
  );
  const server = protocolMismatch(
    CLIENT_HELLO,
    "server",
    "127.0.0.1:5000",
    cause,
  );
  assert.match(
    server!.message,
    /^A TLS client connected to this plain-text port/,
  );
  const http = protocolMismatch(
    ascii("HTTP/1.1 400 Bad Request\r\n\r\n"),
    "client",
    "127.0.0.1:8080",
    cause,
  );
  assert.equal(http?.detected, "http");
  assert.match(http!.message, /^The peer at 127\.0\.0\.1:8080 speaks HTTP/);
  assert.match(http!.message, /HTTP\/1\.1 400 Bad Request/);
  assert.equal(
    protocolMismatch(hex("00 00 00 07 01"), "client", "x", cause),
    undefined,
  );
});
