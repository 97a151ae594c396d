/**
 * Recognises a foreign protocol from the first bytes a session received, so
 * that a decoder error on them can say what went wrong ("the peer speaks
 * TLS") instead of how it looked to the decoder (a length header of hundreds of megabytes).
 *
 * Only signatures that are certain are matched, each on its full prefix:
 * a chunk too short to hold one never matches. None of them can start a
 * default-protocol frame, whose first byte is 0 (a 4-byte big-endian length
 * under `maxFrameBytes`). The session asks only when decoding its first
 * bytes failed, so the normal read path never runs this code.
 *
 * @module
 */

import { type DetectedProtocol, ProtocolMismatchError } from "./errors.ts";

/** What a peer's first bytes were recognised as. */
export interface Sniffed {
  /** The protocol family. */
  protocol: DetectedProtocol;
  /** Its display name: "TLS", "HTTP", "HTTP/2" or "SSH". */
  name: string;
  /** What was seen, for people: "a TLS alert record", "an HTTP response (`HTTP/1.1 400 Bad Request`)". */
  description: string;
}

/** TLS record content types: change_cipher_spec, alert, handshake, application_data, heartbeat. */
const TLS_CONTENT_TYPES: Record<number, string> = {
  0x14: "change_cipher_spec",
  0x15: "alert",
  0x16: "handshake",
  0x17: "application data",
  0x18: "heartbeat",
};
/** Largest TLS record body (TLSCiphertext: 2^14 + 2048). */
const TLS_MAX_RECORD = 16_384 + 2048;

const HTTP_METHODS = [
  "GET ",
  "POST ",
  "PUT ",
  "HEAD ",
  "DELETE ",
  "OPTIONS ",
  "PATCH ",
  "CONNECT ",
];
const HTTP2_PREFACE = "PRI * HTTP/2";
/** Longest excerpt of a text line quoted in a description. */
const MAX_QUOTE = 60;

/**
 * Recognises a foreign protocol from the first bytes a session received.
 *
 * @param bytes The start of what the peer sent.
 * @returns What it is, or `undefined` when nothing certain matched.
 */
export function sniffProtocol(bytes: Uint8Array): Sniffed | undefined {
  if (bytes.length === 0) return undefined;
  const tls = sniffTls(bytes);
  if (tls !== undefined) return tls;
  if (startsWith(bytes, HTTP2_PREFACE)) {
    return {
      protocol: "http",
      name: "HTTP/2",
      description: "an HTTP/2 connection preface",
    };
  }
  if (startsWith(bytes, "HTTP/") && isDigit(bytes[5])) {
    return {
      protocol: "http",
      name: "HTTP",
      description: `an HTTP response (${quote(bytes)})`,
    };
  }
  for (const method of HTTP_METHODS) {
    if (startsWith(bytes, method)) {
      return {
        protocol: "http",
        name: "HTTP",
        description: `an HTTP request (${quote(bytes)})`,
      };
    }
  }
  if (startsWith(bytes, "SSH-") && isDigit(bytes[4])) {
    return {
      protocol: "ssh",
      name: "SSH",
      description: `an SSH banner (${quote(bytes)})`,
    };
  }
  return undefined;
}

/**
 * The error a session fails with when its first bytes, which the decoder
 * refused, belong to a foreign protocol.
 *
 * @param bytes The first bytes the session received.
 * @param side Which end the session is: the message tells what to change there.
 * @param peer The peer's address, as text.
 * @param cause The decoder's error.
 * @returns The error, or `undefined` when nothing certain matched.
 */
export function protocolMismatch(
  bytes: Uint8Array,
  side: "client" | "server",
  peer: string,
  cause: unknown,
): ProtocolMismatchError | undefined {
  const sniffed = sniffProtocol(bytes);
  if (sniffed === undefined) return undefined;
  const { protocol, name, description } = sniffed;
  let message: string;
  if (side === "client") {
    message = protocol === "tls"
      ? `The peer at ${peer} speaks TLS: connect with \`tls\` options`
      : `The peer at ${peer} speaks ${name}, not this protocol (it sent ${description}): check the address and port`;
  } else {
    message = protocol === "tls"
      ? `A TLS client connected to this plain-text port (from ${peer}): serve with \`tls\` options, or connect without TLS`
      : `An ${name} client connected to this port (from ${peer}; it sent ${description})`;
  }
  return new ProtocolMismatchError(message, { detected: protocol, cause });
}

/** A TLS record header: content type, version 3.0–3.4, a plausible length. */
function sniffTls(bytes: Uint8Array): Sniffed | undefined {
  if (bytes.length < 5) return undefined;
  const type = TLS_CONTENT_TYPES[bytes[0]!];
  if (type === undefined || bytes[1] !== 0x03 || bytes[2]! > 0x04) {
    return undefined;
  }
  const length = (bytes[3]! << 8) | bytes[4]!;
  if (length === 0 || length > TLS_MAX_RECORD) return undefined;
  return {
    protocol: "tls",
    name: "TLS",
    description: `a TLS ${type} record`,
  };
}

function startsWith(bytes: Uint8Array, prefix: string): boolean {
  if (bytes.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) {
    if (bytes[i] !== prefix.charCodeAt(i)) return false;
  }
  return true;
}

function isDigit(byte: number | undefined): boolean {
  return byte !== undefined && byte >= 0x30 && byte <= 0x39;
}

/** The first line, printable ASCII only and capped, in backticks. */
function quote(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes) {
    if (byte < 0x20 || byte > 0x7e) break;
    if (text.length === MAX_QUOTE) return `\`${text}…\``;
    text += String.fromCharCode(byte);
  }
  return `\`${text}\``;
}
