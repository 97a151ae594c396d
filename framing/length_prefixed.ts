/**
 * Length-prefixed framing: a length field (binary or ASCII digits) followed
 * by the body.
 *
 * @module
 */

import { FrameTooLargeError, ProtocolError } from "../errors.ts";
import type { Codec, CorrelationId, FrameDecoder } from "./codec.ts";
import {
  maxFrameBytesOption,
  PartialFrame,
  readU32BE,
  withDecoded,
} from "./_buffer.ts";

/** Options of {@linkcode lengthPrefixed}. */
export interface LengthPrefixedOptions {
  /**
   * Size of the binary length field in bytes. Ignored when `asciiDigits` is
   * set. An 8-byte field is read as an unsigned 64-bit integer; values above
   * `maxFrameBytes` (and so above `Number.MAX_SAFE_INTEGER`) are rejected.
   *
   * @default {4}
   */
  headerBytes?: 1 | 2 | 4 | 8;
  /**
   * Whether the binary length field is little-endian. Ignored when
   * `asciiDigits` is set.
   *
   * @default {false}
   */
  littleEndian?: boolean;
  /**
   * Whether the length field counts the whole header as well as the body:
   * the `lengthOffset` prefix and the length field itself. When `false` it
   * counts only what follows the length field.
   *
   * @default {false}
   */
  lengthIncludesHeader?: boolean;
  /**
   * A number added to the length field's value to get the body size (Netty's
   * `lengthAdjustment`), for length fields that count something else, such as
   * a trailer or a part of the header. Applied together with
   * `lengthIncludesHeader`: body = value + lengthAdjustment − (header size if
   * `lengthIncludesHeader`).
   *
   * @default {0}
   */
  lengthAdjustment?: number;
  /**
   * How many bytes come before the length field (Netty's
   * `lengthFieldOffset`), for example a message type. When it is not 0, the
   * message (what `decode` returns and `encode` takes) is those prefix bytes
   * followed by the body, without the length field: on the wire
   * prefix + length field + body. Decoding then copies each frame once (the
   * prefix and the body are not adjacent on the wire); with 0 frames are
   * views of the input, without a copy.
   *
   * @default {0}
   */
  lengthOffset?: number;
  /**
   * When set, the length field is that many ASCII decimal digits (`"0123"`,
   * zero-padded on encode) instead of a binary integer, as many ISO 8583
   * hosts use with 4. From 1 to 15.
   */
  asciiDigits?: number;
  /**
   * The largest message accepted, in bytes: the body, plus the prefix when
   * `lengthOffset` is not 0. A header that announces more fails the decoder
   * with `FrameTooLargeError` before any of the frame is buffered; encoding
   * more throws `RangeError`.
   *
   * @default {8388608}
   */
  maxFrameBytes?: number;
  /**
   * Finds a message's correlation id; becomes the codec's `correlationId`.
   * When absent, the codec has no `correlationId`.
   */
  correlationId?: (frame: Uint8Array) => CorrelationId | undefined;
}

// Length field kinds, as small integers so the hot loop switches on a Smi.
const U8 = 0;
const U16BE = 1;
const U16LE = 2;
const U32BE = 3;
const U32LE = 4;
const U64BE = 5;
const U64LE = 6;
const ASCII = 7;

const TWO_POW_32 = 4294967296;

interface Config {
  readonly kind: number;
  /** The length field's size: bytes, or ASCII digits. */
  readonly fieldBytes: number;
  /** The largest field value encode may write. */
  readonly maxField: number;
  /** Bytes before the length field. */
  readonly offset: number;
  /** lengthOffset + the length field's size: bytes before the body. */
  readonly headerBytes: number;
  /** body = field value + adjust. */
  readonly adjust: number;
  readonly maxFrameBytes: number;
  /** maxFrameBytes − offset: the largest body. */
  readonly maxBody: number;
}

function readAscii(bytes: Uint8Array, at: number, digits: number): number {
  let value = 0;
  for (let i = 0; i < digits; i++) {
    const digit = bytes[at + i]! - 48;
    if (digit < 0 || digit > 9) {
      const got = Array.from(
        bytes.subarray(at, at + digits),
        (byte) => byte.toString(16).padStart(2, "0"),
      ).join(" ");
      throw new ProtocolError(
        `Cannot decode frame: length header is not ${digits} ASCII digits (bytes ${got})`,
      );
    }
    value = value * 10 + digit;
  }
  return value;
}

function u32le(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) |
    (bytes[at + 3]! << 24)) >>> 0;
}

/** Reads the length field at `at`; may exceed MAX_SAFE_INTEGER for 8 bytes. */
function readField(
  kind: number,
  bytes: Uint8Array,
  at: number,
  digits: number,
): number {
  switch (kind) {
    case U8:
      return bytes[at]!;
    case U16BE:
      return (bytes[at]! << 8) | bytes[at + 1]!;
    case U16LE:
      return bytes[at]! | (bytes[at + 1]! << 8);
    case U32BE:
      return readU32BE(bytes, at);
    case U32LE:
      return u32le(bytes, at);
    case U64BE:
      return readU32BE(bytes, at) * TWO_POW_32 + readU32BE(bytes, at + 4);
    case U64LE:
      return u32le(bytes, at + 4) * TWO_POW_32 + u32le(bytes, at);
    default:
      return readAscii(bytes, at, digits);
  }
}

function writeField(
  kind: number,
  target: Uint8Array,
  at: number,
  value: number,
  digits: number,
): void {
  switch (kind) {
    case U8:
      target[at] = value;
      return;
    case U16BE:
      target[at] = value >>> 8;
      target[at + 1] = value;
      return;
    case U16LE:
      target[at] = value;
      target[at + 1] = value >>> 8;
      return;
    case U32BE:
      target[at] = value >>> 24;
      target[at + 1] = value >>> 16;
      target[at + 2] = value >>> 8;
      target[at + 3] = value;
      return;
    case U32LE:
      target[at] = value;
      target[at + 1] = value >>> 8;
      target[at + 2] = value >>> 16;
      target[at + 3] = value >>> 24;
      return;
    case U64BE:
      writeField(U32BE, target, at, Math.floor(value / TWO_POW_32), 0);
      writeField(U32BE, target, at + 4, value >>> 0, 0);
      return;
    case U64LE:
      writeField(U32LE, target, at, value >>> 0, 0);
      writeField(U32LE, target, at + 4, Math.floor(value / TWO_POW_32), 0);
      return;
    default:
      for (let i = digits - 1; i >= 0; i--) {
        target[at + i] = 48 + (value % 10);
        value = Math.floor(value / 10);
      }
  }
}

/**
 * Turns a field value into a body size, or throws.
 *
 * @throws {ProtocolError} When the adjusted size is negative.
 * @throws {FrameTooLargeError} When it is over the limit.
 */
function bodySize(config: Config, value: number): number {
  const body = value + config.adjust;
  if (body >= 0 && body <= config.maxBody && value <= Number.MAX_SAFE_INTEGER) {
    return body;
  }
  if (body < 0) {
    throw new ProtocolError(
      `Cannot decode frame: length field ${value} gives a negative body size (${body})`,
    );
  }
  throw new FrameTooLargeError(config.maxFrameBytes, body + config.offset);
}

class LengthPrefixedDecoder implements FrameDecoder<Uint8Array> {
  readonly #config: Config;
  readonly #digits: number;
  /** The message of the frame that spans chunks. */
  readonly #partial: PartialFrame;

  constructor(config: Config, digits: number) {
    this.#config = config;
    this.#digits = digits;
    this.#partial = new PartialFrame(
      config.headerBytes,
      config.offset,
      (header, at) =>
        bodySize(
          config,
          readField(config.kind, header, at + config.offset, digits),
        ),
    );
  }

  // The whole-frame loops stay written out in this one method, the common
  // layout apart: every message passes through them, and they are kept free
  // of a call per frame (to read the field or to cut the message).
  decode(chunk: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    try {
      this.#decodeInto(chunk, out);
    } catch (error) {
      throw withDecoded(error, out);
    }
    return out;
  }

  /** The body of decode(): messages go into `out` (kept when it throws). */
  #decodeInto(chunk: Uint8Array, out: Uint8Array[]): void {
    const partial = this.#partial;
    let pos = 0;
    if (partial.active) {
      pos = partial.feed(chunk, 0);
      if (pos < 0) return;
      out.push(partial.take());
    }
    const config = this.#config;
    const kind = config.kind;
    const digits = this.#digits;
    const offset = config.offset;
    const headerBytes = config.headerBytes;
    const adjust = config.adjust;
    const maxBody = config.maxBody;
    const length = chunk.length;
    // Whole frames are cut straight out of the chunk, as views, without a
    // call per frame; only a frame that the chunk does not finish goes to
    // #partial. The constructor makes a view faster than subarray() on V8.
    const buffer = chunk.buffer;
    const base = chunk.byteOffset;
    if (kind === U32BE && offset === 0) {
      // The common layout, with the field read inline: no switch per frame.
      while (length - pos >= 4) {
        const value = ((chunk[pos]! << 24) | (chunk[pos + 1]! << 16) |
          (chunk[pos + 2]! << 8) | chunk[pos + 3]!) >>> 0;
        let body = value + adjust;
        if (!(body >= 0 && body <= maxBody)) body = bodySize(config, value);
        const start = pos + 4;
        const stop = start + body;
        if (stop > length) break;
        out.push(new Uint8Array(buffer, base + start, body));
        pos = stop;
      }
    } else {
      while (length - pos >= headerBytes) {
        const value = readField(kind, chunk, pos + offset, digits);
        let body = value + adjust;
        if (
          !(body >= 0 && body <= maxBody && value <= Number.MAX_SAFE_INTEGER)
        ) {
          body = bodySize(config, value); // throws
        }
        const start = pos + headerBytes;
        const stop = start + body;
        if (stop > length) break;
        if (offset === 0) out.push(new Uint8Array(buffer, base + start, body));
        else {
          const message = new Uint8Array(offset + body);
          message.set(chunk.subarray(pos, pos + offset));
          message.set(chunk.subarray(start, stop), offset);
          out.push(message);
        }
        pos = stop;
      }
    }
    if (pos < length) partial.feed(chunk, pos);
  }

  end(): void {
    const partial = this.#partial;
    if (!partial.active) return;
    const config = this.#config;
    const fieldBytes = config.headerBytes - config.offset;
    const detail = partial.size < 0
      ? `${partial.received} of ${config.headerBytes} header bytes`
      : `${partial.received - fieldBytes} of ${partial.size} message bytes`;
    partial.clear();
    throw new ProtocolError(
      `Cannot decode frame: stream ended inside a frame (${detail})`,
    );
  }
}

function integerOption(
  value: number | undefined,
  name: string,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new RangeError(
      `Cannot create codec: ${name} must be an integer from ${min} to ${max}, got ${value}`,
    );
  }
  return value;
}

/** The length field's kind, its size, and the largest value it can hold. */
function fieldLayout(
  options: LengthPrefixedOptions,
): Pick<Config, "kind" | "fieldBytes" | "maxField"> {
  const digits = options.asciiDigits;
  if (digits !== undefined) {
    const fieldBytes = integerOption(digits, "asciiDigits", 4, 1, 15);
    return { kind: ASCII, fieldBytes, maxField: 10 ** fieldBytes - 1 };
  }
  const fieldBytes = options.headerBytes ?? 4;
  const le = options.littleEndian ?? false;
  let kind: number;
  switch (fieldBytes) {
    case 1:
      kind = U8;
      break;
    case 2:
      kind = le ? U16LE : U16BE;
      break;
    case 4:
      kind = le ? U32LE : U32BE;
      break;
    case 8:
      kind = le ? U64LE : U64BE;
      break;
    default:
      throw new RangeError(
        `Cannot create codec: headerBytes must be 1, 2, 4 or 8, got ${fieldBytes}`,
      );
  }
  const maxField = fieldBytes === 8
    ? Number.MAX_SAFE_INTEGER
    : 2 ** (8 * fieldBytes) - 1;
  return { kind, fieldBytes, maxField };
}

/**
 * Checks the options and derives the layout the decoder and encoder share.
 *
 * @throws {RangeError} When an option is out of range.
 */
function lengthPrefixedConfig(options: LengthPrefixedOptions): Config {
  const maxFrameBytes = maxFrameBytesOption(options.maxFrameBytes);
  const offset = integerOption(
    options.lengthOffset,
    "lengthOffset",
    0,
    0,
    maxFrameBytes,
  );
  const adjustment = integerOption(
    options.lengthAdjustment,
    "lengthAdjustment",
    0,
    Number.MIN_SAFE_INTEGER,
    Number.MAX_SAFE_INTEGER,
  );
  const { kind, fieldBytes, maxField } = fieldLayout(options);
  const headerBytes = offset + fieldBytes;
  return {
    kind,
    fieldBytes,
    maxField,
    offset,
    headerBytes,
    adjust: adjustment - (options.lengthIncludesHeader ? headerBytes : 0),
    maxFrameBytes,
    maxBody: maxFrameBytes - offset,
  };
}

/**
 * The length field's value for `message`.
 *
 * @throws {RangeError} When the message is over `maxFrameBytes`, shorter
 * than the prefix, or its length does not fit the field.
 */
function fieldValue(config: Config, message: Uint8Array): number {
  const { maxFrameBytes, offset } = config;
  const length = message.length;
  if (length > maxFrameBytes) {
    throw new RangeError(
      `Cannot encode frame: ${length} bytes exceeds maxFrameBytes (${maxFrameBytes})`,
    );
  }
  if (length < offset) {
    throw new RangeError(
      `Cannot encode frame: ${length} bytes is shorter than the ${offset}-byte prefix (lengthOffset)`,
    );
  }
  const value = length - offset - config.adjust;
  if (value < 0 || value > config.maxField) {
    throw new RangeError(
      `Cannot encode frame: length ${value} does not fit the length field`,
    );
  }
  return value;
}

/** Writes the frame of `message` at `at`; returns the bytes written. */
function writeFrame(
  config: Config,
  message: Uint8Array,
  value: number,
  target: Uint8Array,
  at: number,
): number {
  const { kind, offset, fieldBytes } = config;
  if (offset === 0) {
    writeField(kind, target, at, value, fieldBytes);
    target.set(message, at + fieldBytes);
  } else {
    for (let i = 0; i < offset; i++) target[at + i] = message[i]!;
    writeField(kind, target, at + offset, value, fieldBytes);
    target.set(message.subarray(offset), at + config.headerBytes);
  }
  return message.length + fieldBytes;
}

/**
 * A flat `encodeInto` for the common layout (a 4-byte big-endian field, no
 * prefix); anything out of range goes to `general`, which throws the
 * precise error.
 */
function encodeIntoU32BE(
  config: Config,
  general: NonNullable<Codec<Uint8Array>["encodeInto"]>,
): NonNullable<Codec<Uint8Array>["encodeInto"]> {
  const adjust = config.adjust;
  const maxFrameBytes = config.maxFrameBytes;
  return (message, target, at) => {
    const length = message.length;
    const value = length - adjust;
    if (
      !(length <= maxFrameBytes && value >= 0 && value <= 0xffff_ffff &&
        at >= 0 && at + length + 4 <= target.length)
    ) {
      return general(message, target, at);
    }
    target[at] = value >>> 24;
    target[at + 1] = value >>> 16;
    target[at + 2] = value >>> 8;
    target[at + 3] = value;
    target.set(message, at + 4);
    return length + 4;
  };
}

/**
 * Makes a codec for length-prefixed frames: an optional prefix of
 * `lengthOffset` bytes, a length field (1, 2, 4 or 8 bytes in either byte
 * order, or ASCII digits), then the body. The message is the body (the
 * prefix plus the body when `lengthOffset` is not 0).
 *
 * Decoded messages are `subarray` views of the chunks given to `decode` when
 * a frame lies wholly inside one chunk (no copy); frames that span chunks are
 * copied into a buffer of their own size. A view keeps its chunk's memory
 * alive: copy messages you keep for long. A decoder that threw is broken:
 * drop it (and its byte stream). Frames that the failing chunk completed
 * before the bad bytes are lost with it.
 *
 * @param options The header layout, the limit and the correlation id.
 * @returns The codec. Its `encode`, `encodedLength` and `encodeInto` throw
 * `RangeError` for a message over `maxFrameBytes`, shorter than the
 * `lengthOffset` prefix, or whose length the header cannot represent;
 * `encodeInto` also when `target` has no room.
 * Its decoders throw `FrameTooLargeError` as soon as a header announces more
 * than `maxFrameBytes`, before the body arrives, and `ProtocolError` for a
 * header that is not ASCII digits or gives a negative body size, and from
 * `end()` when the stream stopped inside a frame.
 * @throws {RangeError} When an option is out of range.
 *
 * @example Usage
 * ```ts
 * import { lengthPrefixed } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * const codec = lengthPrefixed({ headerBytes: 2 });
 * const wire = codec.encode(new TextEncoder().encode("hi"));
 * assert.deepEqual(wire, new Uint8Array([0, 2, 104, 105]));
 *
 * const decoder = codec.decoder();
 * assert.deepEqual(decoder.decode(wire.subarray(0, 3)), []);
 * const [frame] = decoder.decode(wire.subarray(3));
 * assert.equal(new TextDecoder().decode(frame), "hi");
 * ```
 *
 * @example ISO 8583 with a 4 ASCII digit header
 * ```ts
 * import { lengthPrefixed } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * const codec = lengthPrefixed({ asciiDigits: 4 });
 * const wire = codec.encode(new TextEncoder().encode("0800..."));
 * assert.equal(new TextDecoder().decode(wire), "00070800...");
 * ```
 *
 * @example A type byte before the length field
 * ```ts
 * import { lengthPrefixed } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * // On the wire: type (1 byte), length (2 bytes), body.
 * const codec = lengthPrefixed({ lengthOffset: 1, headerBytes: 2 });
 * const wire = codec.encode(new Uint8Array([7, 0xaa, 0xbb]));
 * assert.deepEqual(wire, new Uint8Array([7, 0, 2, 0xaa, 0xbb]));
 * assert.deepEqual(codec.decoder().decode(wire), [new Uint8Array([7, 0xaa, 0xbb])]);
 * ```
 */
export function lengthPrefixed(
  options?: LengthPrefixedOptions,
): Codec<Uint8Array> {
  options ??= {};
  const config = lengthPrefixedConfig(options);
  const fieldBytes = config.fieldBytes;
  const codec: Codec<Uint8Array> = {
    decoder: () => new LengthPrefixedDecoder(config, fieldBytes),
    encode(message) {
      const value = fieldValue(config, message);
      const out = new Uint8Array(message.length + fieldBytes);
      writeFrame(config, message, value, out, 0);
      return out;
    },
    encodedLength(message) {
      fieldValue(config, message);
      return message.length + fieldBytes;
    },
    encodeInto(message, target, at) {
      const value = fieldValue(config, message);
      const total = message.length + fieldBytes;
      if (!(at >= 0 && at + total <= target.length)) {
        throw new RangeError(
          `Cannot encode frame: ${total} bytes do not fit in target at offset ${at}`,
        );
      }
      return writeFrame(config, message, value, target, at);
    },
  };
  if (config.offset === 0 && config.kind === U32BE) {
    codec.encodeInto = encodeIntoU32BE(config, codec.encodeInto!);
  }
  if (options.correlationId !== undefined) {
    codec.correlationId = options.correlationId;
  }
  return codec;
}
