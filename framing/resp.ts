/**
 * RESP2, the Redis serialization protocol, as a {@linkcode Codec}: talk to
 * Redis (or Valkey, KeyDB, Dragonfly…) with `dial(target, resp(), {
 * correlation: "fifo" })`, since Redis answers in request order on each
 * connection and puts no ids on the wire.
 *
 * @module
 */

import { FrameTooLargeError, ProtocolError, RemoteError } from "../errors.ts";
import type { Codec, FrameDecoder } from "./codec.ts";
import { maxFrameBytesOption, PartialBytes, withDecoded } from "./_buffer.ts";

/**
 * A RESP2 value, as decoded and as encoded:
 *
 * | wire | value |
 * | --- | --- |
 * | simple string `+OK` | `string` |
 * | error `-ERR …` | {@linkcode RespError} |
 * | integer `:42` | `number`, or `bigint` beyond ±2^53−1 |
 * | bulk string `$3 foo` | `Uint8Array` (a view into the read buffer: copy it to keep it long) |
 * | null bulk string `$-1`, null array `*-1` | `null` |
 * | array `*2 …` | `RespValue[]` |
 *
 * Commands are arrays of bulk strings: build them with {@linkcode command}.
 */
export type RespValue =
  | string
  | number
  | bigint
  | Uint8Array
  | null
  | RespError
  | RespValue[];

/** An argument of {@linkcode command}: strings are UTF-8 encoded, numbers written in decimal. */
export type RespArgument = string | Uint8Array | number | bigint;

/**
 * A Redis error reply (`-ERR unknown command`, `-WRONGTYPE …`), decoded as a
 * value. `message` is the error text without the leading `-`; `code` is its
 * first word when that word is in capitals (`"ERR"`, `"WRONGTYPE"`,
 * `"NOAUTH"`, `"MOVED"`), else `""`. It is a {@linkcode RemoteError}: the
 * server refused the command, retrying the same command will not help.
 *
 * A reply that is a `RespError` rejects `client.request()` (through the
 * codec's `replyError` hook), and {@linkcode respCall} throws it.
 *
 * @example Usage
 * ```ts
 * import { resp, RespError } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * const [reply] = resp().decoder().decode(new TextEncoder().encode("-WRONGTYPE Operation against a key\r\n"));
 * assert.ok(reply instanceof RespError);
 * assert.equal(reply.code, "WRONGTYPE");
 * assert.equal(reply.message, "WRONGTYPE Operation against a key");
 * ```
 */
export class RespError extends RemoteError {
  /** The first word of the message when it is in capitals (`"ERR"`), else `""`. */
  readonly code: string;

  /**
   * Creates the error.
   *
   * @param message The error text (what follows `-` on the wire); it must
   * not contain CR or LF to be encoded.
   * @param options `cause`, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "RespError";
    const space = message.indexOf(" ");
    const word = space < 0 ? message : message.slice(0, space);
    this.code = /^[A-Z][A-Z0-9_-]*$/.test(word) ? word : "";
  }
}

/** Options of {@linkcode resp}. */
export interface RespOptions {
  /**
   * The largest reply accepted, in bytes on the wire: one top-level value
   * with everything nested in it. A bulk string or array header that
   * announces more fails the decoder with `FrameTooLargeError` before any
   * of it is buffered. Encoding is not limited.
   *
   * @default {8388608}
   */
  maxFrameBytes?: number;
  /**
   * How deeply arrays may nest (a top-level array is depth 1); deeper input
   * is a `ProtocolError`.
   *
   * @default {32}
   */
  maxDepth?: number;
}

/**
 * The RESP2 codec built by {@linkcode resp}.
 */
export interface RespCodec extends Codec<RespValue> {
  /**
   * Makes a fresh decoder for one byte stream.
   *
   * @returns A new decoder with empty state.
   */
  decoder(): Required<FrameDecoder<RespValue>>;
  /**
   * The encoded size of `message`.
   *
   * @param message The value.
   * @returns Its size in bytes.
   * @throws {TypeError} When the value cannot be encoded.
   */
  encodedLength(message: RespValue): number;
  /**
   * Encodes `message` into `target` at `offset`.
   *
   * @param message The value.
   * @param target The buffer to write into.
   * @param offset Where to start.
   * @returns The number of bytes written.
   * @throws {RangeError} When it does not fit.
   */
  encodeInto(message: RespValue, target: Uint8Array, offset: number): number;
  /**
   * The error a request should reject with when `message` is its reply:
   * the {@linkcode RespError} for an error reply, else `undefined`.
   *
   * @param message A decoded reply.
   * @returns The error, or `undefined`.
   */
  replyError(message: RespValue): RespError | undefined;
}

const PLUS = 43; // +
const MINUS = 45; // -
const COLON = 58; // :
const DOLLAR = 36; // $
const STAR = 42; // *
const CR = 13;
const LF = 10;

/** Digits a length or integer line may have (sign included): int64 needs 20. */
const MAX_NUMBER_CHARS = 20;
const INT64_MAX = 9223372036854775807n;
const INT64_MIN = -9223372036854775808n;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

const utf8 = new TextDecoder();
const textEncoder = new TextEncoder();

function isType(byte: number | undefined): boolean {
  return byte === PLUS || byte === MINUS || byte === COLON ||
    byte === DOLLAR || byte === STAR;
}

function badType(byte: number): ProtocolError {
  const char = byte >= 0x20 && byte < 0x7f
    ? ` (${JSON.stringify(String.fromCharCode(byte))})`
    : "";
  const resp3 = "_,#!=(%~>|".includes(String.fromCharCode(byte))
    ? "; RESP3 replies are not supported (do not send HELLO 3)"
    : "";
  return new ProtocolError(
    `Cannot decode RESP reply: unexpected type byte 0x${
      byte.toString(16).padStart(2, "0")
    }${char}${resp3}`,
  );
}

function bareLf(): ProtocolError {
  return new ProtocolError(
    "Cannot decode RESP reply: a line ends with LF without CR",
  );
}

function missingCrlf(what: string): ProtocolError {
  return new ProtocolError(
    `Cannot decode RESP reply: expected CRLF after ${what}`,
  );
}

/** Decodes the text of a simple string or error line; LF is not allowed in it. */
function lineText(bytes: Uint8Array, start: number, end: number): string {
  if (end - start <= 64) {
    let text = "";
    for (let i = start; i < end; i++) {
      const byte = bytes[i]!;
      if (byte >= 0x80) return utf8Text(bytes, start, end);
      if (byte === LF) throw bareLf();
      text += String.fromCharCode(byte);
    }
    return text;
  }
  return utf8Text(bytes, start, end);
}

function utf8Text(bytes: Uint8Array, start: number, end: number): string {
  const view = bytes.subarray(start, end);
  if (view.indexOf(LF) >= 0) throw bareLf();
  return utf8.decode(view);
}

function notNumber(
  bytes: Uint8Array,
  start: number,
  end: number,
  what: string,
): ProtocolError {
  const text = String.fromCharCode(
    ...bytes.subarray(start, Math.min(end, start + MAX_NUMBER_CHARS + 1)),
  );
  return new ProtocolError(
    `Cannot decode RESP reply: ${what} ${JSON.stringify(text)} is not ${
      what === "integer" ? "a 64-bit integer" : "-1 or a non-negative integer"
    }`,
  );
}

/** Parses an integer reply (`:` line): a signed 64-bit decimal. */
function integer(
  bytes: Uint8Array,
  start: number,
  end: number,
): number | bigint {
  let i = start;
  const negative = bytes[i] === MINUS;
  if (negative) i++;
  const digits = end - i;
  if (digits <= 0 || end - start > MAX_NUMBER_CHARS) {
    throw notNumber(bytes, start, end, "integer");
  }
  if (digits <= 15) {
    let value = 0;
    for (; i < end; i++) {
      const digit = bytes[i]! - 48;
      if (digit < 0 || digit > 9) {
        throw notNumber(bytes, start, end, "integer");
      }
      value = value * 10 + digit;
    }
    return negative ? (value === 0 ? 0 : -value) : value;
  }
  let text = negative ? "-" : "";
  for (; i < end; i++) {
    const byte = bytes[i]!;
    if (byte < 48 || byte > 57) throw notNumber(bytes, start, end, "integer");
    text += String.fromCharCode(byte);
  }
  const big = BigInt(text);
  if (big > INT64_MAX || big < INT64_MIN) {
    throw notNumber(bytes, start, end, "integer");
  }
  return big <= MAX_SAFE && big >= -MAX_SAFE ? Number(big) : big;
}

/** Parses the length of a bulk string or an array: -1 or a count. */
function count(
  bytes: Uint8Array,
  start: number,
  end: number,
  what: string,
): number {
  if (end - start === 2 && bytes[start] === MINUS && bytes[start + 1] === 49) {
    return -1;
  }
  if (end === start || end - start > MAX_NUMBER_CHARS) {
    throw notNumber(bytes, start, end, what);
  }
  let value = 0;
  for (let i = start; i < end; i++) {
    const digit = bytes[i]! - 48;
    if (digit < 0 || digit > 9) throw notNumber(bytes, start, end, what);
    value = value * 10 + digit;
  }
  return value;
}

interface OpenArray {
  readonly items: RespValue[];
  remaining: number;
}

class RespDecoder implements FrameDecoder<RespValue> {
  readonly #max: number;
  readonly #maxDepth: number;
  /** Arrays being filled, outermost first. */
  readonly #stack: OpenArray[] = [];
  /** Wire bytes of the current top-level reply accounted so far. */
  #replyBytes = 0;
  /** A header line that spans chunks (type byte included); empty unless a line is partly read. */
  readonly #line = new PartialBytes();
  /** The body of a bulk string that spans chunks. */
  readonly #bulk = new PartialBytes();
  /** A bulk string body that lay whole in its chunk but whose CRLF did not. */
  #bulkWhole: Uint8Array | undefined;
  /** The size of the bulk string being read, or -1 when none is. */
  #bulkSize = -1;
  /** Bytes of the CRLF after it checked (0–2). */
  #bulkTail = 0;

  constructor(max: number, maxDepth: number) {
    this.#max = max;
    this.#maxDepth = maxDepth;
  }

  decode(chunk: Uint8Array): RespValue[] {
    const out: RespValue[] = [];
    try {
      this.#decodeInto(chunk, out);
    } catch (error) {
      throw withDecoded(error, out);
    }
    return out;
  }

  /** The body of decode(): messages go into `out` (kept when it throws). */
  #decodeInto(chunk: Uint8Array, out: RespValue[]): void {
    const length = chunk.length;
    let pos = 0;
    if (this.#line.length > 0) pos = this.#resumeLine(chunk, out);
    else if (this.#bulkSize >= 0) pos = this.#resumeBulk(chunk, out);
    while (pos < length) {
      const cr = chunk.indexOf(CR, pos + 1);
      if (cr < 0 || cr + 1 === length) {
        this.#startLine(chunk, pos);
        return;
      }
      if (chunk[cr + 1] !== LF) throw missingCrlf("a header line");
      const size = this.#header(chunk, pos, cr, out);
      pos = cr + 2;
      if (size >= 0) pos = this.#body(chunk, pos, size, out);
    }
  }

  end(): void {
    const line = this.#line;
    if (line.length === 0 && this.#bulkSize < 0 && this.#stack.length === 0) {
      return;
    }
    const detail = line.length > 0
      ? `${line.length} bytes of a header line`
      : this.#bulkSize >= 0
      ? `${this.#bulkFilled()} of ${this.#bulkSize} bulk string bytes`
      : `${this.#stack.at(-1)!.remaining} array elements missing`;
    line.clear();
    this.#bulkSize = -1;
    this.#bulk.clear();
    this.#bulkWhole = undefined;
    this.#stack.length = 0;
    this.#replyBytes = 0;
    throw new ProtocolError(
      `Cannot decode RESP reply: stream ended inside a reply (${detail})`,
    );
  }

  /**
   * Handles the complete header line `bytes[start..cr]` (CRLF at `cr`).
   *
   * @returns The size of the bulk string body that follows, or -1.
   */
  #header(
    bytes: Uint8Array,
    start: number,
    cr: number,
    out: RespValue[],
  ): number {
    const type = bytes[start]!;
    let total = this.#replyBytes + cr + 2 - start;
    if (total > this.#max) {
      if (!isType(type)) throw badType(type);
      throw new FrameTooLargeError(this.#max, total);
    }
    this.#replyBytes = total;
    switch (type) {
      case PLUS:
        this.#complete(lineText(bytes, start + 1, cr), out);
        return -1;
      case MINUS:
        this.#complete(new RespError(lineText(bytes, start + 1, cr)), out);
        return -1;
      case COLON:
        this.#complete(integer(bytes, start + 1, cr), out);
        return -1;
      case DOLLAR: {
        const size = count(bytes, start + 1, cr, "bulk string length");
        if (size < 0) {
          this.#complete(null, out);
          return -1;
        }
        total += size + 2;
        if (total > this.#max) {
          throw new FrameTooLargeError(this.#max, total);
        }
        this.#replyBytes = total;
        return size;
      }
      case STAR: {
        const n = count(bytes, start + 1, cr, "array length");
        if (n < 0) this.#complete(null, out);
        else if (n === 0) this.#complete([], out);
        else {
          if (this.#stack.length >= this.#maxDepth) {
            throw new ProtocolError(
              `Cannot decode RESP reply: arrays nest deeper than maxDepth (${this.#maxDepth})`,
            );
          }
          // Every element takes at least 3 bytes (`+\r\n`).
          const least = total + n * 3;
          if (least > this.#max) throw new FrameTooLargeError(this.#max, least);
          this.#stack.push({ items: [], remaining: n });
        }
        return -1;
      }
      default:
        throw badType(type);
    }
  }

  /** Reads a bulk string body of `size` bytes at `pos`; returns where the next value starts. */
  #body(
    chunk: Uint8Array,
    pos: number,
    size: number,
    out: RespValue[],
  ): number {
    const length = chunk.length;
    const end = pos + size;
    if (end + 2 <= length) {
      if (chunk[end] !== CR || chunk[end + 1] !== LF) {
        throw missingCrlf(`a ${size}-byte bulk string`);
      }
      // new Uint8Array(buffer, offset, length) is faster than subarray().
      this.#complete(
        new Uint8Array(chunk.buffer, chunk.byteOffset + pos, size),
        out,
      );
      return end + 2;
    }
    this.#bulkSize = size;
    this.#bulkTail = 0;
    if (end <= length) {
      // The body is whole in this chunk, only (part of) its CRLF is missing.
      this.#bulkWhole = new Uint8Array(
        chunk.buffer,
        chunk.byteOffset + pos,
        size,
      );
      if (end < length) {
        if (chunk[end] !== CR) throw missingCrlf(`a ${size}-byte bulk string`);
        this.#bulkTail = 1;
      }
    } else {
      this.#bulk.append(chunk, pos, length, size);
    }
    return length;
  }

  /** Body bytes of the bulk string being read received so far. */
  #bulkFilled(): number {
    return this.#bulkWhole === undefined ? this.#bulk.length : this.#bulkSize;
  }

  /** Continues the bulk string left partial by the previous chunk. */
  #resumeBulk(chunk: Uint8Array, out: RespValue[]): number {
    const length = chunk.length;
    const size = this.#bulkSize;
    const bulk = this.#bulk;
    let pos = 0;
    if (this.#bulkWhole === undefined && bulk.length < size) {
      pos = Math.min(size - bulk.length, length);
      bulk.append(chunk, 0, pos, size);
      if (bulk.length < size) return length;
    }
    while (this.#bulkTail < 2) {
      if (pos === length) return length;
      if (chunk[pos] !== (this.#bulkTail === 0 ? CR : LF)) {
        throw missingCrlf(`a ${size}-byte bulk string`);
      }
      pos++;
      this.#bulkTail++;
    }
    const body = this.#bulkWhole ?? bulk.take();
    this.#bulkWhole = undefined;
    this.#bulkSize = -1;
    this.#complete(body, out);
    return pos;
  }

  /** Keeps the start of a header line that the chunk does not finish. */
  #startLine(chunk: Uint8Array, pos: number): void {
    const type = chunk[pos]!;
    if (!isType(type)) throw badType(type);
    // No CRLF in the rest of the chunk, so any LF in it is a bare one.
    if (chunk.indexOf(LF, pos) >= 0) throw bareLf();
    this.#checkLine(type, chunk.length - pos);
    this.#line.append(chunk, pos, chunk.length, this.#max + 2);
  }

  /** Fails when a partial line of `size` bytes can no longer be valid. */
  #checkLine(type: number, size: number): void {
    if (type !== PLUS && type !== MINUS && size > MAX_NUMBER_CHARS + 3) {
      throw new ProtocolError(
        `Cannot decode RESP reply: a ${
          String.fromCharCode(type)
        } line runs past ${MAX_NUMBER_CHARS} characters without CRLF`,
      );
    }
    const total = this.#replyBytes + size;
    if (total > this.#max) throw new FrameTooLargeError(this.#max, total);
  }

  /** Continues the header line left partial by the previous chunk. */
  #resumeLine(chunk: Uint8Array, out: RespValue[]): number {
    const length = chunk.length;
    if (length === 0) return 0;
    const line = this.#line;
    const used = line.length;
    const type = line.buffer[0]!;
    let last: number; // index in chunk of the LF that ends the line
    if (line.buffer[used - 1] === CR) {
      if (chunk[0] !== LF) throw missingCrlf("a header line");
      last = 0;
    } else {
      const cr = chunk.indexOf(CR);
      if (cr < 0 || cr + 1 === length) {
        if (chunk.indexOf(LF) >= 0) throw bareLf();
        this.#checkLine(type, used + length);
        line.append(chunk, 0, length, this.#max + 2);
        return length;
      }
      if (chunk[cr + 1] !== LF) throw missingCrlf("a header line");
      last = cr + 1;
    }
    const size = used + last + 1;
    line.append(chunk, 0, last + 1, size);
    const bytes = line.buffer;
    line.clear();
    const bodySize = this.#header(bytes, 0, size - 2, out);
    const pos = last + 1;
    return bodySize < 0 ? pos : this.#body(chunk, pos, bodySize, out);
  }

  /** A value is complete: add it to its array, or hand out the top-level reply. */
  #complete(value: RespValue, out: RespValue[]): void {
    const stack = this.#stack;
    let done = value;
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      top.items.push(done);
      if (--top.remaining > 0) return;
      stack.pop();
      done = top.items;
    }
    this.#replyBytes = 0;
    out.push(done);
  }
}

// ---- encoding --------------------------------------------------------------

/** Decimal digits of a non-negative safe integer. */
function decimalLength(n: number): number {
  let digits = 1;
  while (n >= 10) {
    n = Math.floor(n / 10);
    digits++;
  }
  return digits;
}

/** UTF-8 size of a string (lone surrogates count as U+FFFD, as TextEncoder writes them). */
function utf8Length(text: string): number {
  let size = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) size += 1;
    else if (
      c >= 0xd800 && c <= 0xdbff && i + 1 < text.length &&
      (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00
    ) {
      size += 2; // 4 bytes for 2 code units
      i++;
    } else size += 2;
  }
  return size;
}

/** Size of a simple string or error line's text; CR and LF are not allowed. */
function lineLength(text: string, what: string): number {
  if (text.includes("\r") || text.includes("\n")) {
    throw new TypeError(
      `Cannot encode RESP ${what}: it contains CR or LF (${
        JSON.stringify(text.slice(0, 40))
      })`,
    );
  }
  return utf8Length(text);
}

/** Writes `text` as UTF-8 at `at`; returns the bytes written. */
function writeText(target: Uint8Array, at: number, text: string): number {
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x80) {
      const { written } = textEncoder.encodeInto(
        text.slice(i),
        target.subarray(at + i),
      );
      return i + written;
    }
    target[at + i] = c;
  }
  return n;
}

/** Writes a non-negative safe integer in decimal at `at`; returns the bytes written. */
function writeDecimal(target: Uint8Array, at: number, n: number): number {
  const digits = decimalLength(n);
  for (let i = at + digits - 1; i >= at; i--) {
    target[i] = 48 + (n % 10);
    n = Math.floor(n / 10);
  }
  return digits;
}

function integerText(value: number | bigint): string {
  if (typeof value === "number" && !Number.isSafeInteger(value)) {
    throw new TypeError(
      `Cannot encode RESP integer: ${value} is not a safe integer (use a bigint)`,
    );
  }
  if (value > INT64_MAX || value < INT64_MIN) {
    throw new RangeError(
      `Cannot encode RESP integer: ${value} does not fit 64 bits`,
    );
  }
  return String(value);
}

function notEncodable(value: unknown): TypeError {
  return new TypeError(
    `Cannot encode RESP value: ${
      value === undefined ? "undefined" : typeof value
    } is not a RespValue`,
  );
}

/** Wire size of a value. */
function encodedLength(value: RespValue): number {
  if (value instanceof Uint8Array) {
    return value.length + decimalLength(value.length) + 5;
  }
  switch (typeof value) {
    case "string":
      return lineLength(value, "simple string") + 3;
    case "number":
    case "bigint":
      return integerText(value).length + 3;
    case "object": {
      if (value === null) return 5;
      if (Array.isArray(value)) {
        let size = decimalLength(value.length) + 3;
        for (const item of value) size += encodedLength(item);
        return size;
      }
      if (value instanceof RespError) {
        return lineLength(value.message, "error") + 3;
      }
    }
  }
  throw notEncodable(value);
}

/** Writes a value at `at` (room checked by the caller); returns the bytes written. */
function write(target: Uint8Array, at: number, value: RespValue): number {
  const start = at;
  if (value instanceof Uint8Array) {
    target[at++] = DOLLAR;
    at += writeDecimal(target, at, value.length);
    target[at++] = CR;
    target[at++] = LF;
    target.set(value, at);
    at += value.length;
  } else if (typeof value === "string") {
    target[at++] = PLUS;
    at += writeText(target, at, value);
  } else if (typeof value === "number" || typeof value === "bigint") {
    target[at++] = COLON;
    at += writeText(target, at, integerText(value));
  } else if (value === null) {
    target[at++] = DOLLAR;
    target[at++] = MINUS;
    target[at++] = 49;
  } else if (Array.isArray(value)) {
    target[at++] = STAR;
    at += writeDecimal(target, at, value.length);
    target[at++] = CR;
    target[at++] = LF;
    for (const item of value) at += write(target, at, item);
    return at - start;
  } else if (value instanceof RespError) {
    target[at++] = MINUS;
    at += writeText(target, at, value.message);
  } else {
    throw notEncodable(value);
  }
  target[at++] = CR;
  target[at++] = LF;
  return at - start;
}

/**
 * A RESP2 codec: Redis replies in, commands out. Decoding is incremental
 * (any split of the bytes gives the same values), bulk strings are views
 * into the read buffer where they lie in one chunk, and a reply that
 * announces more than `maxFrameBytes` fails before it is buffered.
 *
 * Use it with `correlation: "fifo"`: Redis answers each connection's
 * commands in order. An error reply is a {@linkcode RespError} value;
 * {@linkcode respCall} throws it. Pub/sub messages, which come without a
 * request, go to the client's `handler`; a subscribed connection takes no
 * other commands, so give it a client of its own.
 *
 * @param options `maxFrameBytes` and `maxDepth`.
 * @returns The codec (with a `replyError` hook that marks error replies).
 * @throws {RangeError} When an option is out of range.
 *
 * @example Usage
 * ```ts
 * import { command, resp } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * const codec = resp();
 * const wire = new TextDecoder().decode(codec.encode(command("SET", "greeting", "hello")));
 * assert.equal(wire, "*3\r\n$3\r\nSET\r\n$8\r\ngreeting\r\n$5\r\nhello\r\n");
 *
 * // Replies split anywhere decode the same.
 * const bytes = new TextEncoder().encode("+OK\r\n*2\r\n$5\r\nhello\r\n:42\r\n$-1\r\n");
 * const decoder = codec.decoder();
 * const replies = [...decoder.decode(bytes.subarray(0, 12)), ...decoder.decode(bytes.subarray(12))];
 * decoder.end();
 * assert.deepEqual(replies, ["OK", [new TextEncoder().encode("hello"), 42], null]);
 * ```
 *
 * @example Talk to Redis
 * ```ts ignore
 * import { dial } from "@tcpbutler/core";
 * import { command, resp, respCall } from "@tcpbutler/core/framing";
 *
 * await using redis = await dial("127.0.0.1:6379", resp(), { correlation: "fifo", sessions: 4 });
 * await respCall(redis, ["SET", "greeting", "hello"]);
 * const value = await redis.request(command("GET", "greeting")); // Uint8Array "hello"
 * ```
 */
export function resp(options?: RespOptions): RespCodec {
  options ??= {};
  const max = maxFrameBytesOption(options.maxFrameBytes);
  const maxDepth = options.maxDepth ?? 32;
  if (!Number.isSafeInteger(maxDepth) || maxDepth < 1) {
    throw new RangeError(
      `Cannot create codec: maxDepth must be a positive integer, got ${maxDepth}`,
    );
  }
  return {
    decoder: () => new RespDecoder(max, maxDepth),
    encode(message) {
      const out = new Uint8Array(encodedLength(message));
      write(out, 0, message);
      return out;
    },
    encodedLength,
    encodeInto(message, target, at) {
      const size = encodedLength(message);
      if (!(at >= 0 && at + size <= target.length)) {
        throw new RangeError(
          `Cannot encode RESP value: ${size} bytes do not fit in target at offset ${at}`,
        );
      }
      return write(target, at, message);
    },
    replyError: (message) => message instanceof RespError ? message : undefined,
  };
}

/** Commands are encoded into views of a shared slab (one allocation per many commands). */
const COMMAND_SLAB_BYTES = 64 * 1024;
/** Commands needing more than this get a buffer of their own. */
const COMMAND_OWN_BUFFER = 8 * 1024;
let commandSlab = new Uint8Array(0);
let commandSlabUsed = 0;

/** Room for `bytes` bytes of command arguments; written from the returned offset. */
function commandStore(bytes: number): [Uint8Array, number] {
  if (bytes > COMMAND_OWN_BUFFER) return [new Uint8Array(bytes), 0];
  if (commandSlab.length - commandSlabUsed < bytes) {
    // The old slab lives on while commands still refer to it; it is never reused.
    commandSlab = new Uint8Array(COMMAND_SLAB_BYTES);
    commandSlabUsed = 0;
  }
  return [commandSlab, commandSlabUsed];
}

/**
 * Builds a command: an array of bulk strings, the form Redis expects.
 * Strings are UTF-8 encoded and numbers written in decimal into views of a
 * shared 64 KiB buffer (no allocation per command; a command kept for long
 * keeps its buffer alive); `Uint8Array` arguments are used as they are.
 *
 * @param args The command name and its arguments.
 * @returns The command, ready for `client.request()`.
 * @throws {TypeError} When there is no argument or one is of another type.
 * @throws {RangeError} When a number is not finite.
 *
 * @example Usage
 * ```ts
 * import { command } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * const incr = command("INCRBY", "visits", 5);
 * assert.deepEqual(incr.map((arg) => new TextDecoder().decode(arg)), ["INCRBY", "visits", "5"]);
 * ```
 */
export function command(...args: RespArgument[]): Uint8Array[] {
  if (args.length === 0) {
    throw new TypeError("Cannot build command: no arguments");
  }
  let bound = 0;
  for (const arg of args) {
    if (typeof arg === "string") bound += arg.length * 3;
    else if (typeof arg === "number") {
      if (!Number.isFinite(arg)) {
        throw new RangeError(`Cannot build command: ${arg} is not finite`);
      }
      bound += 25;
    } else if (typeof arg === "bigint") bound += String(arg).length;
    else if (!(arg instanceof Uint8Array)) {
      throw new TypeError(
        `Cannot build command: ${typeof arg} is not a string, number, bigint or Uint8Array`,
      );
    }
  }
  const [store, start] = commandStore(bound);
  const buffer = store.buffer;
  const out = new Array<Uint8Array>(args.length);
  let at = start;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg instanceof Uint8Array) {
      out[i] = arg;
      continue;
    }
    const written = writeText(
      store,
      at,
      typeof arg === "string" ? arg : String(arg),
    );
    // new Uint8Array(buffer, offset, length) is faster than subarray().
    out[i] = new Uint8Array(buffer, at, written);
    at += written;
  }
  if (store === commandSlab) commandSlabUsed = at;
  return out;
}

/** Options of {@linkcode respCall}. */
export interface RespCallOptions {
  /**
   * Milliseconds to wait for the reply.
   *
   * @default {5000} (the client's `requestTimeout`)
   */
  timeout?: number;
  /** Aborts the call: it rejects with `signal.reason`. */
  signal?: AbortSignal;
}

/** What {@linkcode respCall} sends through: a `Client<RespValue>` or one of its sessions. */
export interface RespRequester {
  /**
   * Sends a request and resolves with its reply.
   *
   * @param message The command.
   * @param options Timeout and signal.
   * @returns The reply.
   */
  request(message: RespValue, options?: RespCallOptions): Promise<RespValue>;
}

/**
 * Sends a command and resolves with its reply, or rejects with the
 * {@linkcode RespError} when Redis answers with an error. Only a top-level
 * error reply rejects: errors inside an array (the results of `EXEC`) stay
 * values.
 *
 * @param target A client dialled with `resp()` and `correlation: "fifo"`, or a session (in `onConnect`).
 * @param args The command name and its arguments (see {@linkcode command}).
 * @param options Timeout and signal.
 * @returns The reply.
 * @throws {RespError} Redis answered with an error.
 * @throws {TimeoutError} No reply before the timeout.
 * @throws {ConnectionClosedError} The session closed first.
 *
 * @example Usage
 * ```ts
 * import { command, respCall, RespError, type RespValue } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * // A stand-in for a client: answers every command with an error.
 * const fake = { request: (_: RespValue) => Promise.resolve(new RespError("ERR no such key")) };
 * await assert.rejects(respCall(fake, ["GET", "missing"]), { name: "RespError", code: "ERR" });
 * assert.ok((await fake.request(command("GET", "missing"))) instanceof RespError);
 * ```
 */
export async function respCall(
  target: RespRequester,
  args: readonly RespArgument[],
  options?: RespCallOptions,
): Promise<RespValue> {
  const reply = await target.request(command(...args), options);
  if (reply instanceof RespError) throw reply;
  return reply;
}
