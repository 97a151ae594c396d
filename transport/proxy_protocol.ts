/**
 * HAProxy PROXY protocol, versions 1 (text) and 2 (binary): parse the header
 * a load balancer puts in front of a connection to tell the server who the
 * client really is, and encode one (for tests and for your own proxies).
 *
 * The parser is pure: {@linkcode parseProxyHeader} works on bytes and tells
 * "need more" apart from "malformed", and {@linkcode readProxyHeader} reads a
 * connection until a header parses, handing back the application bytes that
 * came with it.
 *
 * @module
 */

import { ProxyProtocolError } from "../errors.ts";
import { withResolvers } from "../_util.ts";

/** Where a PROXY header says a connection came from or went to. */
export type ProxyAddress = Deno.NetAddr | Deno.UnixAddr;

/** A parsed PROXY protocol header. */
export interface ProxyHeader {
  /** The protocol version the header used. */
  readonly version: 1 | 2;
  /**
   * `"proxy"`: a relayed connection, addresses follow when known.
   * `"local"` (v2 only): the proxy's own connection (a health check); use the
   * connection's real addresses.
   */
  readonly command: "proxy" | "local";
  /**
   * The original connection's kind. `"unknown"` for v1 `UNKNOWN`, v2
   * `UNSPEC`, and every `"local"` header: there are no addresses then.
   */
  readonly transport: "tcp4" | "tcp6" | "unix" | "unknown";
  /** The original client (absent when `transport` is `"unknown"`). */
  readonly source?: ProxyAddress;
  /** The address the client connected to (absent when `transport` is `"unknown"`). */
  readonly destination?: ProxyAddress;
}

/** Options of {@linkcode parseProxyHeader}. */
export interface ParseProxyHeaderOptions {
  /**
   * The largest header accepted, in bytes (v2: 16 + the announced length;
   * v1 is never more than 107). Between 16 and 65551.
   *
   * @default {4096}
   */
  maxHeaderBytes?: number;
}

/** Options of {@linkcode readProxyHeader}. */
export interface ReadProxyHeaderOptions extends ParseProxyHeaderOptions {
  /**
   * Aborts the wait for the header (use `AbortSignal.timeout()` against
   * clients that send it slowly or never). The connection is not closed:
   * close it, which also ends the pending read.
   */
  signal?: AbortSignal;
}

/** One v2 type-length-value extension to write after the addresses. */
export interface ProxyTlv {
  /** The type byte (0–255), e.g. `0x04` for `PP2_TYPE_NOOP`. */
  readonly type: number;
  /** The value (at most 65535 bytes). */
  readonly value: Uint8Array;
}

/** Options of {@linkcode encodeProxyHeaderV2}. */
export interface EncodeProxyHeaderV2Options {
  /**
   * Write a `LOCAL` header (the proxy's own connection, e.g. a health check)
   * instead of `PROXY`. Addresses, if given, are written but receivers
   * ignore them; without them the family is `UNSPEC`.
   *
   * @default {false}
   */
  local?: boolean;
  /**
   * TLVs to append after the addresses.
   *
   * @default {[]}
   */
  tlvs?: readonly ProxyTlv[];
}

/** The default `maxHeaderBytes`. */
const DEFAULT_MAX_HEADER_BYTES = 4096;
/** v1: "PROXY " … "\r\n", at most 107 bytes. */
const V1_MAX_BYTES = 107;
const V1_PREFIX = Array.from("PROXY ", (c) => c.charCodeAt(0));
const V2_SIGNATURE = Array.from("\r\n\r\n\0\r\nQUIT\n", (c) => c.charCodeAt(0));
const V2_HEADER_BYTES = 16;
const V2_MAX_HEADER_BYTES = V2_HEADER_BYTES + 0xffff;
const UNIX_PATH_BYTES = 108;
/** The first `readProxyHeader` buffer: fits every v1 header and common v2 ones. */
const INITIAL_READ_BYTES = 512;

/** A parsed header and how many bytes it took. */
type ParsedHeader = { header: ProxyHeader; consumed: number };

function fail(message: string): never {
  throw new ProxyProtocolError(`Cannot parse PROXY header: ${message}`);
}

function checkMaxHeaderBytes(maxHeaderBytes: number): number {
  if (
    !Number.isInteger(maxHeaderBytes) || maxHeaderBytes < V2_HEADER_BYTES ||
    maxHeaderBytes > V2_MAX_HEADER_BYTES
  ) {
    throw new RangeError(
      `maxHeaderBytes must be an integer in ${V2_HEADER_BYTES}..${V2_MAX_HEADER_BYTES}, got ${maxHeaderBytes}`,
    );
  }
  return maxHeaderBytes;
}

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/** Parses dotted-quad IPv4 text (no leading zeros) into 4 bytes, or null. */
function parseIpv4(text: string): Uint8Array | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  const bytes = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i]!;
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part)) return null;
    const value = Number(part);
    if (value > 255) return null;
    bytes[i] = value;
  }
  return bytes;
}

/** Parses IPv6 text (with `::` and an optional trailing IPv4 part) into 16 bytes, or null. */
function parseIpv6(text: string): Uint8Array | null {
  if (text.length < 2 || text.length > 45) return null;
  const double = text.indexOf("::");
  if (double !== -1 && text.indexOf("::", double + 1) !== -1) return null;
  const groups: number[] = [];
  const parseSide = (side: string, allowIpv4: boolean): number[] | null => {
    if (side === "") return [];
    const out: number[] = [];
    const pieces = side.split(":");
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i]!;
      if (allowIpv4 && i === pieces.length - 1 && piece.includes(".")) {
        const v4 = parseIpv4(piece);
        if (!v4) return null;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(piece)) return null;
        out.push(parseInt(piece, 16));
      }
    }
    return out;
  };
  if (double === -1) {
    const all = parseSide(text, true);
    if (!all || all.length !== 8) return null;
    groups.push(...all);
  } else {
    const head = parseSide(text.slice(0, double), false);
    const tail = parseSide(text.slice(double + 2), true);
    if (!head || !tail || head.length + tail.length > 7) return null;
    groups.push(
      ...head,
      ...new Array<number>(8 - head.length - tail.length).fill(0),
      ...tail,
    );
  }
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    bytes[2 * i] = groups[i]! >> 8;
    bytes[2 * i + 1] = groups[i]! & 0xff;
  }
  return bytes;
}

function formatIpv4(bytes: Uint8Array, offset: number): string {
  return `${bytes[offset]}.${bytes[offset + 1]}.${bytes[offset + 2]}.${
    bytes[offset + 3]
  }`;
}

/**
 * Formats 16 bytes as canonical IPv6 text (RFC 5952): lower-case hex, no
 * leading zeros, the longest run of two or more zero groups (the first of
 * equal runs) as `::`, and IPv4-mapped addresses as `::ffff:a.b.c.d`.
 */
function formatIpv6(bytes: Uint8Array, offset: number): string {
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) {
    groups.push((bytes[offset + 2 * i]! << 8) | bytes[offset + 2 * i + 1]!);
  }
  if (
    groups[0] === 0 && groups[1] === 0 && groups[2] === 0 &&
    groups[3] === 0 && groups[4] === 0 && groups[5] === 0xffff
  ) {
    return `::ffff:${formatIpv4(bytes, offset + 12)}`;
  }
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (list: number[]) => list.map((g) => g.toString(16)).join(":");
  if (bestStart === -1) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${
    hex(groups.slice(bestStart + bestLength))
  }`;
}

function netAddr(hostname: string, port: number): Deno.NetAddr {
  return { transport: "tcp", hostname, port };
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/** Checks `buffer` against `expected` as far as both go; throws on a mismatch. */
function checkPrefix(
  buffer: Uint8Array,
  expected: readonly number[],
  what: string,
): void {
  const n = Math.min(buffer.length, expected.length);
  for (let i = 0; i < n; i++) {
    if (buffer[i] !== expected[i]) fail(`bad ${what}`);
  }
}

function parsePort(text: string): number {
  if (!/^[0-9]{1,5}$/.test(text)) fail(`port "${text}" is not a number`);
  const port = Number(text);
  if (port > 65535) fail(`port ${port} is over 65535`);
  return port;
}

/**
 * Finds the CR of the v1 line's CRLF after checking the bytes before it.
 *
 * @returns Its index, or -1 while the line may still end in bytes to come.
 * @throws {ProxyProtocolError} On a non-printable byte, a CR without LF, or
 * no CRLF within the limit.
 */
function v1LineEnd(buffer: Uint8Array, maxHeaderBytes: number): number {
  const max = Math.min(V1_MAX_BYTES, maxHeaderBytes);
  const scan = Math.min(buffer.length, max);
  for (let i = V1_PREFIX.length; i < scan; i++) {
    const byte = buffer[i]!;
    if (byte === 0x0d) {
      if (i + 2 > max) break; // CRLF would end past the limit
      if (i + 1 === buffer.length) return -1; // the LF may follow
      if (buffer[i + 1] !== 0x0a) fail("v1 line has CR without LF");
      return i;
    }
    if (byte < 0x20 || byte > 0x7e) {
      fail(`v1 line has a non-printable byte 0x${byte.toString(16)}`);
    }
  }
  if (buffer.length >= max) fail(`no CRLF within ${max} bytes (v1)`);
  return -1;
}

/** The header of a v1 `TCP4` or `TCP6` line, split into its 6 fields. */
function v1Header(
  protocol: "TCP4" | "TCP6",
  fields: readonly [string, string, string, string, string, string],
): ProxyHeader {
  const [, , sourceText, destinationText, sourcePort, destinationPort] = fields;
  let source: string;
  let destination: string;
  if (protocol === "TCP4") {
    const s = parseIpv4(sourceText);
    const d = parseIpv4(destinationText);
    if (!s) fail(`"${sourceText}" is not an IPv4 address`);
    if (!d) fail(`"${destinationText}" is not an IPv4 address`);
    source = formatIpv4(s, 0);
    destination = formatIpv4(d, 0);
  } else {
    const s = parseIpv6(sourceText);
    const d = parseIpv6(destinationText);
    if (!s) fail(`"${sourceText}" is not an IPv6 address`);
    if (!d) fail(`"${destinationText}" is not an IPv6 address`);
    source = formatIpv6(s, 0);
    destination = formatIpv6(d, 0);
  }
  return {
    version: 1,
    command: "proxy",
    transport: protocol === "TCP4" ? "tcp4" : "tcp6",
    source: netAddr(source, parsePort(sourcePort)),
    destination: netAddr(destination, parsePort(destinationPort)),
  };
}

function parseV1(
  buffer: Uint8Array,
  maxHeaderBytes: number,
): ParsedHeader | null {
  checkPrefix(buffer, V1_PREFIX, "v1 prefix");
  const end = v1LineEnd(buffer, maxHeaderBytes);
  if (end === -1) return null;
  const consumed = end + 2;
  const line = String.fromCharCode(...buffer.subarray(0, end));
  const fields = line.split(" ");
  const protocol = fields[1];
  if (protocol === "UNKNOWN") {
    // The receiver must ignore whatever follows UNKNOWN up to the CRLF.
    return {
      header: { version: 1, command: "proxy", transport: "unknown" },
      consumed,
    };
  }
  if (protocol !== "TCP4" && protocol !== "TCP6") {
    fail(`unknown v1 protocol "${protocol ?? ""}"`);
  }
  if (fields.length !== 6) {
    fail(`v1 ${protocol} line has ${fields.length} fields, expected 6`);
  }
  return {
    header: v1Header(
      protocol,
      fields as [string, string, string, string, string, string],
    ),
    consumed,
  };
}

function unixPath(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return new TextDecoder().decode(nul === -1 ? bytes : bytes.subarray(0, nul));
}

/** Checks that the TLVs after the addresses fill the rest of the block exactly. */
function checkTlvs(tlvs: Uint8Array): void {
  let offset = 0;
  while (offset < tlvs.length) {
    if (tlvs.length - offset < 3) fail("truncated v2 TLV");
    const length = (tlvs[offset + 1]! << 8) | tlvs[offset + 2]!;
    offset += 3 + length;
    if (offset > tlvs.length) fail("v2 TLV runs past the header");
  }
}

/** The fields of a v2 header's first 16 bytes. */
interface V2Preamble {
  /** 0 `LOCAL`, 1 `PROXY`. */
  readonly command: number;
  readonly family: number;
  readonly protocol: number;
  /** Bytes of the address block and TLVs. */
  readonly length: number;
  /** The whole header's size. */
  readonly consumed: number;
}

/**
 * Reads and checks a v2 header's first 16 bytes, as far as `buffer` goes.
 *
 * @returns The fields, or null while fewer than 16 bytes are there.
 * @throws {ProxyProtocolError} On a bad signature, version, command, family
 * or protocol, or a header larger than `maxHeaderBytes`.
 */
function v2Preamble(
  buffer: Uint8Array,
  maxHeaderBytes: number,
): V2Preamble | null {
  checkPrefix(buffer, V2_SIGNATURE, "v2 signature");
  if (buffer.length < 13) return null;
  const versionCommand = buffer[12]!;
  if (versionCommand >> 4 !== 2) {
    fail(`unsupported v2 version ${versionCommand >> 4}`);
  }
  const command = versionCommand & 0x0f;
  if (command > 1) fail(`unknown v2 command ${command}`);
  if (buffer.length < 14) return null;
  // LOCAL headers discard the family byte, so only PROXY ones check it.
  const family = buffer[13]! >> 4;
  const protocol = buffer[13]! & 0x0f;
  if (command === 1) {
    if (family > 3) fail(`unknown v2 address family ${family}`);
    if (protocol > 2) fail(`unknown v2 transport protocol ${protocol}`);
    if ((family === 0) !== (protocol === 0)) {
      fail(`v2 family ${family} with protocol ${protocol}`);
    }
  }
  if (buffer.length < V2_HEADER_BYTES) return null;
  const length = (buffer[14]! << 8) | buffer[15]!;
  const consumed = V2_HEADER_BYTES + length;
  if (consumed > maxHeaderBytes) {
    fail(
      `header of ${consumed} bytes exceeds maxHeaderBytes (${maxHeaderBytes})`,
    );
  }
  return { command, family, protocol, length, consumed };
}

/** The header of a v2 `PROXY` block of `family` 1 (IPv4), 2 (IPv6) or 3 (Unix). */
function v2Header(block: Uint8Array, family: number): ProxyHeader {
  const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
  if (family === 1) {
    return {
      version: 2,
      command: "proxy",
      transport: "tcp4",
      source: netAddr(formatIpv4(block, 0), view.getUint16(8)),
      destination: netAddr(formatIpv4(block, 4), view.getUint16(10)),
    };
  }
  if (family === 2) {
    return {
      version: 2,
      command: "proxy",
      transport: "tcp6",
      source: netAddr(formatIpv6(block, 0), view.getUint16(32)),
      destination: netAddr(formatIpv6(block, 16), view.getUint16(34)),
    };
  }
  return {
    version: 2,
    command: "proxy",
    transport: "unix",
    source: {
      transport: "unix",
      path: unixPath(block.subarray(0, UNIX_PATH_BYTES)),
    },
    destination: {
      transport: "unix",
      path: unixPath(block.subarray(UNIX_PATH_BYTES, 2 * UNIX_PATH_BYTES)),
    },
  };
}

function parseV2(
  buffer: Uint8Array,
  maxHeaderBytes: number,
): ParsedHeader | null {
  const preamble = v2Preamble(buffer, maxHeaderBytes);
  if (preamble === null) return null;
  const { command, family, protocol, length, consumed } = preamble;
  if (buffer.length < consumed) return null;
  if (command === 0) {
    // LOCAL: discard the block, addresses and family included.
    return {
      header: { version: 2, command: "local", transport: "unknown" },
      consumed,
    };
  }
  if (family === 0) {
    // UNSPEC: the receiver ignores the address block.
    return {
      header: { version: 2, command: "proxy", transport: "unknown" },
      consumed,
    };
  }
  if (protocol !== 1) fail("v2 DGRAM (UDP or datagram) is not supported");
  const addressBytes = family === 1 ? 12 : family === 2 ? 36 : 216;
  if (length < addressBytes) {
    fail(
      `v2 address block of ${length} bytes, ${addressBytes} needed for family ${family}`,
    );
  }
  const block = buffer.subarray(V2_HEADER_BYTES, consumed);
  checkTlvs(block.subarray(addressBytes));
  return { header: v2Header(block, family), consumed };
}

/**
 * Parses a PROXY protocol header (v1 or v2) at the start of `buffer`.
 *
 * Gives `null` while the bytes so far are a valid beginning of a header, so
 * callers can append and try again; malformed bytes throw as soon as they
 * are seen. Addresses come out canonical: IPv6 in RFC 5952 form (lower case,
 * `::` compression, `::ffff:a.b.c.d` for IPv4-mapped) for both versions.
 *
 * @param buffer The first bytes of the connection.
 * @param options `maxHeaderBytes`.
 * @returns The header and how many bytes it took, or `null` to ask for more.
 * @throws {ProxyProtocolError} When the bytes are not a PROXY header: a first
 * byte that starts neither version, bad text or numbers, wrong address
 * lengths, unsupported families or commands, no CRLF within 107 bytes (v1),
 * or a header larger than `maxHeaderBytes`.
 * @throws {RangeError} When `maxHeaderBytes` is not an integer in 16..65551.
 *
 * @example Usage
 * ```ts
 * import { parseProxyHeader } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const bytes = new TextEncoder().encode(
 *   "PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\nHELLO",
 * );
 * assert.equal(parseProxyHeader(bytes.subarray(0, 10)), null); // need more
 * const result = parseProxyHeader(bytes);
 * assert.deepEqual(result?.header.source, {
 *   transport: "tcp",
 *   hostname: "192.0.2.1",
 *   port: 51234,
 * });
 * assert.equal(result?.consumed, bytes.length - "HELLO".length);
 * ```
 */
export function parseProxyHeader(
  buffer: Uint8Array,
  options?: ParseProxyHeaderOptions,
): { header: ProxyHeader; consumed: number } | null {
  const maxHeaderBytes = checkMaxHeaderBytes(
    options?.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES,
  );
  if (buffer.length === 0) return null;
  switch (buffer[0]) {
    case V1_PREFIX[0]:
      return parseV1(buffer, maxHeaderBytes);
    case V2_SIGNATURE[0]:
      return parseV2(buffer, maxHeaderBytes);
    default:
      fail(
        `missing header (first byte 0x${
          buffer[0]!.toString(16).padStart(2, "0")
        } starts neither v1 nor v2)`,
      );
  }
}

/** `buffer` copied into one twice its size, up to `maxHeaderBytes`. */
function grow(
  buffer: Uint8Array,
  maxHeaderBytes: number,
): Uint8Array<ArrayBuffer> {
  if (buffer.length >= maxHeaderBytes) {
    // parseProxyHeader already threw for anything this long; kept as a guard.
    fail(`header exceeds maxHeaderBytes (${maxHeaderBytes})`);
  }
  const grown = new Uint8Array(Math.min(maxHeaderBytes, buffer.length * 2));
  grown.set(buffer);
  return grown;
}

/** One `conn.read()`, or the rejection of `aborted` if that comes first. */
function readOrAbort(
  conn: { read(p: Uint8Array): Promise<number | null> },
  into: Uint8Array,
  aborted: Promise<never> | undefined,
): Promise<number | null> {
  const read = conn.read(into);
  if (!aborted) return read;
  // A read left pending by an abort settles when the caller closes conn.
  read.catch(() => {});
  return Promise.race([read, aborted]);
}

/**
 * Reads a PROXY protocol header (v1 or v2) from the start of a connection.
 *
 * Reads in chunks (never more than `maxHeaderBytes` in all), so the last read
 * may take application bytes along: they come back in `rest` and must be
 * processed before anything else read from `conn`.
 *
 * @param conn The connection (`Deno.Conn` or any `read()`er).
 * @param options `maxHeaderBytes` and an abort `signal`.
 * @returns The header and the bytes read past it (often empty). `rest` may
 * be a view into a buffer of up to `maxHeaderBytes`.
 * @throws {ProxyProtocolError} When the header is malformed or too large, or
 * the connection ends before a whole header arrived.
 * @throws {RangeError} When `maxHeaderBytes` is not an integer in 16..65551.
 * @throws {unknown} `signal.reason` when the signal aborts first (the
 * connection stays open: close it); errors of `conn.read()` unchanged.
 *
 * @example Usage
 * ```ts
 * import { encodeProxyHeaderV2, readProxyHeader } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * using conn = await listener.accept();
 * const header = encodeProxyHeaderV2(
 *   { transport: "tcp", hostname: "2001:db8::1", port: 40000 },
 *   { transport: "tcp", hostname: "2001:db8::2", port: 443 },
 * );
 * await client.write(header);
 *
 * const { header: parsed, rest } = await readProxyHeader(conn, {
 *   signal: AbortSignal.timeout(5000),
 * });
 * assert.equal(parsed.transport, "tcp6");
 * assert.equal((parsed.source as Deno.NetAddr).hostname, "2001:db8::1");
 * assert.equal(rest.length, 0);
 * ```
 */
export async function readProxyHeader(
  conn: { read(p: Uint8Array): Promise<number | null> },
  options?: ReadProxyHeaderOptions,
): Promise<{ header: ProxyHeader; rest: Uint8Array }> {
  options ??= {};
  const maxHeaderBytes = checkMaxHeaderBytes(
    options.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES,
  );
  const { signal } = options;
  signal?.throwIfAborted();
  let buffer = new Uint8Array(Math.min(INITIAL_READ_BYTES, maxHeaderBytes));
  let filled = 0;
  let aborted: Promise<never> | undefined;
  let onAbort: (() => void) | undefined;
  if (signal) {
    const { promise, reject } = withResolvers<never>();
    aborted = promise;
    aborted.catch(() => {});
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  }
  try {
    while (true) {
      if (filled === buffer.length) buffer = grow(buffer, maxHeaderBytes);
      const n = await readOrAbort(conn, buffer.subarray(filled), aborted);
      if (n === null) {
        fail(
          filled === 0
            ? "connection closed before a header"
            : `connection closed after ${filled} bytes of a header`,
        );
      }
      filled += n;
      const result = parseProxyHeader(buffer.subarray(0, filled), {
        maxHeaderBytes,
      });
      if (result) {
        const rest = result.consumed === filled
          ? new Uint8Array(0)
          : buffer.subarray(result.consumed, filled);
        return { header: result.header, rest };
      }
    }
  } finally {
    if (onAbort) signal?.removeEventListener("abort", onAbort);
  }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

type Family = "tcp4" | "tcp6";

function ipFamily(address: Deno.NetAddr, role: string): {
  family: Family;
  bytes: Uint8Array;
} {
  if (address?.transport !== "tcp") {
    throw new TypeError(`${role} must be a TCP NetAddr`);
  }
  const { hostname, port } = address;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`${role} port ${port} is not in 0..65535`);
  }
  const v4 = parseIpv4(hostname);
  if (v4) return { family: "tcp4", bytes: v4 };
  const v6 = parseIpv6(
    hostname.startsWith("[") && hostname.endsWith("]")
      ? hostname.slice(1, -1)
      : hostname,
  );
  if (v6) return { family: "tcp6", bytes: v6 };
  throw new TypeError(
    `${role} hostname "${hostname}" is not an IPv4 or IPv6 address`,
  );
}

function pairOf(source: Deno.NetAddr, destination: Deno.NetAddr): {
  family: Family;
  source: Uint8Array;
  destination: Uint8Array;
} {
  const s = ipFamily(source, "source");
  const d = ipFamily(destination, "destination");
  if (s.family !== d.family) {
    throw new TypeError(
      "source and destination must both be IPv4 or both be IPv6",
    );
  }
  return { family: s.family, source: s.bytes, destination: d.bytes };
}

/**
 * Encodes a PROXY protocol v1 (text) header, e.g.
 * `PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n`. Addresses are written
 * in canonical form.
 *
 * @param source The original client.
 * @param destination The address the client connected to.
 * @returns The header bytes (at most 107).
 * @throws {TypeError} When a hostname is not an IP address, or the two are
 * of different families.
 * @throws {RangeError} When a port is not in 0..65535.
 *
 * @example Usage
 * ```ts
 * import { encodeProxyHeaderV1 } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const bytes = encodeProxyHeaderV1(
 *   { transport: "tcp", hostname: "192.0.2.1", port: 51234 },
 *   { transport: "tcp", hostname: "198.51.100.2", port: 443 },
 * );
 * assert.equal(
 *   new TextDecoder().decode(bytes),
 *   "PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n",
 * );
 * ```
 */
export function encodeProxyHeaderV1(
  source: Deno.NetAddr,
  destination: Deno.NetAddr,
): Uint8Array {
  const pair = pairOf(source, destination);
  const text = pair.family === "tcp4"
    ? `PROXY TCP4 ${formatIpv4(pair.source, 0)} ${
      formatIpv4(pair.destination, 0)
    }`
    : `PROXY TCP6 ${formatIpv6(pair.source, 0)} ${
      formatIpv6(pair.destination, 0)
    }`;
  return new TextEncoder().encode(
    `${text} ${source.port} ${destination.port}\r\n`,
  );
}

function unixPathBytes(address: Deno.UnixAddr, role: string): Uint8Array {
  const bytes = new TextEncoder().encode(address.path);
  if (bytes.length >= UNIX_PATH_BYTES || bytes.includes(0)) {
    throw new RangeError(
      `${role} path must be under ${UNIX_PATH_BYTES} bytes without NUL`,
    );
  }
  return bytes;
}

/**
 * Encodes a PROXY protocol v2 (binary) header for TCP over IPv4 or IPv6, or
 * for Unix stream sockets, or (with `local`) a `LOCAL` header that carries
 * no client.
 *
 * @param source The original client; may be `undefined` only with `local`.
 * @param destination The address the client connected to; likewise.
 * @param options `local` and extra `tlvs`.
 * @returns The header bytes.
 * @throws {TypeError} When an address is missing (without `local`), a
 * hostname is not an IP address, or the two addresses differ in family.
 * @throws {RangeError} When a port, a Unix path, a TLV or the whole header is
 * out of range.
 *
 * @example Usage
 * ```ts
 * import { encodeProxyHeaderV2, parseProxyHeader } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const proxied = encodeProxyHeaderV2(
 *   { transport: "tcp", hostname: "192.0.2.1", port: 51234 },
 *   { transport: "tcp", hostname: "198.51.100.2", port: 443 },
 * );
 * assert.equal(proxied.length, 16 + 12);
 * assert.equal(parseProxyHeader(proxied)?.header.transport, "tcp4");
 *
 * const healthCheck = encodeProxyHeaderV2(undefined, undefined, { local: true });
 * assert.equal(parseProxyHeader(healthCheck)?.header.command, "local");
 * ```
 */
export function encodeProxyHeaderV2(
  source: ProxyAddress | undefined,
  destination: ProxyAddress | undefined,
  options?: EncodeProxyHeaderV2Options,
): Uint8Array {
  const { local = false, tlvs = [] } = options ?? {};
  const { familyByte, addresses } = v2AddressBlock(source, destination, local);
  const length = addresses.length + tlvBytes(tlvs);
  if (length > 0xffff) {
    throw new RangeError(`v2 header block of ${length} bytes is over 65535`);
  }
  const out = new Uint8Array(V2_HEADER_BYTES + length);
  out.set(V2_SIGNATURE, 0);
  out[12] = local ? 0x20 : 0x21;
  out[13] = familyByte;
  out[14] = length >> 8;
  out[15] = length & 0xff;
  out.set(addresses, V2_HEADER_BYTES);
  let offset = V2_HEADER_BYTES + addresses.length;
  for (const tlv of tlvs) {
    out[offset] = tlv.type;
    out[offset + 1] = tlv.value.length >> 8;
    out[offset + 2] = tlv.value.length & 0xff;
    out.set(tlv.value, offset + 3);
    offset += 3 + tlv.value.length;
  }
  return out;
}

/**
 * The v2 family byte and address block for two addresses (`UNSPEC` and no
 * block for none, which only `local` allows).
 *
 * @throws {TypeError} When addresses are missing or differ in family.
 * @throws {RangeError} When a port or a Unix path is out of range.
 */
function v2AddressBlock(
  source: ProxyAddress | undefined,
  destination: ProxyAddress | undefined,
  local: boolean,
): { familyByte: number; addresses: Uint8Array } {
  if (source === undefined || destination === undefined) {
    if (!local || source !== destination) {
      throw new TypeError(
        "source and destination are required unless local is set (then give both or neither)",
      );
    }
    return { familyByte: 0x00, addresses: new Uint8Array(0) };
  }
  if (source.transport === "unix" || destination.transport === "unix") {
    if (source.transport !== "unix" || destination.transport !== "unix") {
      throw new TypeError("source and destination must both be Unix addresses");
    }
    const addresses = new Uint8Array(2 * UNIX_PATH_BYTES);
    addresses.set(unixPathBytes(source, "source"), 0);
    addresses.set(unixPathBytes(destination, "destination"), UNIX_PATH_BYTES);
    return { familyByte: 0x31, addresses };
  }
  // Anything but two TCP addresses is refused by pairOf().
  const s = source as Deno.NetAddr;
  const d = destination as Deno.NetAddr;
  const pair = pairOf(s, d);
  const size = pair.family === "tcp4" ? 4 : 16;
  const addresses = new Uint8Array(2 * size + 4);
  addresses.set(pair.source, 0);
  addresses.set(pair.destination, size);
  const view = new DataView(addresses.buffer);
  view.setUint16(2 * size, s.port);
  view.setUint16(2 * size + 2, d.port);
  return { familyByte: pair.family === "tcp4" ? 0x11 : 0x21, addresses };
}

/**
 * The bytes `tlvs` take in a v2 header.
 *
 * @throws {RangeError} When a type or a value's size is out of range.
 */
function tlvBytes(tlvs: readonly ProxyTlv[]): number {
  let bytes = 0;
  for (const tlv of tlvs) {
    if (!Number.isInteger(tlv.type) || tlv.type < 0 || tlv.type > 255) {
      throw new RangeError(`TLV type ${tlv.type} is not in 0..255`);
    }
    if (tlv.value.length > 0xffff) {
      throw new RangeError(
        `TLV value of ${tlv.value.length} bytes is over 65535`,
      );
    }
    bytes += 3 + tlv.value.length;
  }
  return bytes;
}
