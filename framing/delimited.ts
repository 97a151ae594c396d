/**
 * Delimited framing: frames end with a delimiter byte sequence and may start
 * with a start-of-block marker.
 *
 * @module
 */

import { FrameTooLargeError, ProtocolError } from "../errors.ts";
import type { Codec, CorrelationId, FrameDecoder } from "./codec.ts";
import {
  indexOfBytes,
  markerOption,
  maxFrameBytesOption,
  PartialBytes,
  withDecoded,
} from "./_buffer.ts";

/** Options of {@linkcode delimited}. */
export interface DelimitedOptions {
  /**
   * The bytes that end every frame: `"\n"`, `"\r\n"`, or any non-empty byte
   * sequence such as `new Uint8Array([0x1c, 0x0d])`. Strings are UTF-8
   * encoded. It is not part of the message.
   */
  delimiter: string | Uint8Array;
  /**
   * A start-of-block marker before every frame, as in HL7 MLLP
   * (`0x0b` … `0x1c 0x0d`). It is not part of the message. When set, any
   * other bytes between frames are a `ProtocolError`.
   */
  start?: string | Uint8Array;
  /**
   * The largest message accepted, in bytes (markers excluded). A frame that
   * grows past it without a delimiter fails the decoder with
   * `FrameTooLargeError`; the decoder never holds more than
   * `maxFrameBytes + delimiter.length - 1` bytes of one frame. Encoding more
   * throws `RangeError`.
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

class DelimitedDecoder implements FrameDecoder<Uint8Array> {
  readonly #delimiter: Uint8Array;
  readonly #start: Uint8Array | undefined;
  readonly #max: number;
  /** The most bytes a partial frame may hold: it may end in a partial delimiter. */
  readonly #limit: number;
  /** With a start marker: whether the marker of the current frame was read. */
  #inside: boolean;
  /** Bytes of the start marker read so far, when it spans chunks. */
  #startRead = 0;
  /** The bytes of a frame that spans chunks (possibly ending in part of the delimiter). */
  readonly #partial = new PartialBytes();

  constructor(
    delimiter: Uint8Array,
    start: Uint8Array | undefined,
    max: number,
  ) {
    this.#delimiter = delimiter;
    this.#start = start;
    this.#max = max;
    this.#limit = max + delimiter.length - 1;
    this.#inside = start === undefined;
  }

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
    let pos = 0;
    if (this.#partial.length > 0 || this.#startRead > 0) {
      pos = this.#resume(chunk, out);
    }
    const delimiter = this.#delimiter;
    const start = this.#start;
    const length = chunk.length;
    // The constructor makes a view faster than subarray() on V8.
    const buffer = chunk.buffer;
    const base = chunk.byteOffset;
    while (pos < length) {
      if (!this.#inside) {
        pos = this.#readStart(chunk, pos, 0);
        if (pos === length) return;
      }
      const end = indexOfBytes(chunk, delimiter, pos);
      if (end < 0) {
        this.#keep(chunk, pos);
        return;
      }
      if (end - pos > this.#max) {
        throw new FrameTooLargeError(this.#max, end - pos);
      }
      out.push(new Uint8Array(buffer, base + pos, end - pos));
      pos = end + delimiter.length;
      if (start !== undefined) this.#inside = false;
    }
  }

  end(): void {
    const partial = this.#partial;
    if (partial.length === 0 && this.#startRead === 0) {
      if (this.#start === undefined || !this.#inside) return;
    }
    const length = partial.length;
    partial.clear();
    this.#startRead = 0;
    this.#inside = this.#start === undefined;
    throw new ProtocolError(
      `Cannot decode frame: stream ended inside a frame (${length} bytes without a delimiter)`,
    );
  }

  /**
   * Reads (the rest of) the start marker at `pos`, from its byte `from`;
   * returns where the frame's content starts (or the chunk's end).
   */
  #readStart(chunk: Uint8Array, pos: number, from: number): number {
    const start = this.#start!;
    const count = Math.min(start.length - from, chunk.length - pos);
    for (let i = 0; i < count; i++) {
      if (chunk[pos + i] !== start[from + i]) {
        throw new ProtocolError(
          `Cannot decode frame: expected the start marker, got byte 0x${
            chunk[pos + i]!.toString(16).padStart(2, "0")
          }`,
        );
      }
    }
    if (from + count < start.length) {
      this.#startRead = from + count;
    } else {
      this.#startRead = 0;
      this.#inside = true;
    }
    return pos + count;
  }

  /** Keeps the frame that starts at `pos` and has no delimiter in `chunk`. */
  #keep(chunk: Uint8Array, pos: number): void {
    const count = chunk.length - pos;
    if (count > this.#limit) throw new FrameTooLargeError(this.#max, count);
    this.#partial.append(chunk, pos, chunk.length, this.#limit);
  }

  /** Continues what the previous chunk left partial; returns where to go on in `chunk`. */
  #resume(chunk: Uint8Array, out: Uint8Array[]): number {
    if (this.#startRead > 0) return this.#readStart(chunk, 0, this.#startRead);
    const delimiter = this.#delimiter;
    const m = delimiter.length;
    const partial = this.#partial;
    const buffer = partial.buffer;
    const length = partial.length;
    // A delimiter that starts in the buffer and ends in this chunk.
    for (let k = Math.max(0, length - m + 1); k < length; k++) {
      const inBuffer = length - k;
      if (
        !matchesPrefix(buffer, k, delimiter, 0, inBuffer) ||
        !matchesPrefix(chunk, 0, delimiter, inBuffer, m - inBuffer)
      ) continue;
      if (k > this.#max) throw new FrameTooLargeError(this.#max, k);
      this.#emit(partial.take(k), out);
      return m - inBuffer;
    }
    const end = indexOfBytes(chunk, delimiter, 0);
    if (end >= 0) {
      const total = length + end;
      if (total > this.#max) throw new FrameTooLargeError(this.#max, total);
      // Capped at the frame's size: the frame handed out holds no spare room.
      partial.append(chunk, 0, end, total);
      this.#emit(partial.take(), out);
      return end + m;
    }
    const total = length + chunk.length;
    if (total > this.#limit) throw new FrameTooLargeError(this.#max, total);
    partial.append(chunk, 0, chunk.length, this.#limit);
    return chunk.length;
  }

  /** Hands a frame taken from #partial to the caller, which now owns that memory. */
  #emit(frame: Uint8Array, out: Uint8Array[]): void {
    out.push(frame);
    if (this.#start !== undefined) this.#inside = false;
  }
}

/** Whether `bytes[at, at + count)` equals `marker[from, from + count)`, in bounds. */
function matchesPrefix(
  bytes: Uint8Array,
  at: number,
  marker: Uint8Array,
  from: number,
  count: number,
): boolean {
  const n = Math.min(count, bytes.length - at);
  for (let i = 0; i < n; i++) {
    if (bytes[at + i] !== marker[from + i]) return false;
  }
  return n === count;
}

/**
 * Whether `message` contains `delimiter`, or its tail and the delimiter
 * written after it would form an earlier delimiter.
 */
function runsIntoDelimiter(
  message: Uint8Array,
  delimiter: Uint8Array,
): boolean {
  const length = message.length;
  const m = delimiter.length;
  let runsInto = indexOfBytes(message, delimiter, 0) >= 0;
  for (let k = Math.max(0, length - m + 1); k < length && !runsInto; k++) {
    const inMessage = length - k;
    runsInto = matchesPrefix(message, k, delimiter, 0, inMessage) &&
      matchesPrefix(delimiter, 0, delimiter, inMessage, m - inMessage);
  }
  return runsInto;
}

/**
 * Makes a codec for delimited frames: each frame is the message followed by
 * `delimiter`, optionally preceded by a `start` marker (HL7 MLLP:
 * `start: "\x0b"`, `delimiter: "\x1c\r"`). The message is the bytes between
 * the markers; it may be empty.
 *
 * Decoding searches for the delimiter's first byte with `indexOf`. Decoded
 * messages are `subarray` views of the chunks given to `decode` when a frame
 * lies wholly inside one chunk (no copy); frames that span chunks, delimiter
 * included, are copied into a buffer of their own. A view keeps its chunk's
 * memory alive: copy messages you keep for long. A decoder that threw is
 * broken: drop it (and its byte stream).
 *
 * @param options The delimiter, the start marker, the limit and the
 * correlation id.
 * @returns The codec. Its `encode`, `encodedLength` and `encodeInto` throw
 * `TypeError` for a message that contains the delimiter (or would run into it)
 * and `RangeError` for one over `maxFrameBytes`, and `encodeInto` also when
 * `target` has no room. Its decoders throw `FrameTooLargeError` when a frame
 * grows past `maxFrameBytes`, `ProtocolError` for bytes other than the start
 * marker between frames, and from `end()` when the stream stopped inside a
 * frame.
 * @throws {TypeError} When `delimiter` or `start` is not a string or a
 * Uint8Array.
 * @throws {RangeError} When `delimiter` or `start` is empty or
 * `maxFrameBytes` is out of range.
 *
 * @example Usage
 * ```ts
 * import { delimited } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * const codec = delimited({ delimiter: "\r\n" });
 * const decoder = codec.decoder();
 * const bytes = new TextEncoder().encode("PING\r\nPO");
 * const frames = [...decoder.decode(bytes), ...decoder.decode(codec.encode(new Uint8Array()))];
 * assert.deepEqual(frames.map((f) => new TextDecoder().decode(f)), ["PING", "PO"]);
 * ```
 *
 * @example HL7 MLLP
 * ```ts
 * import { delimited } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * const mllp = delimited({
 *   start: new Uint8Array([0x0b]),
 *   delimiter: new Uint8Array([0x1c, 0x0d]),
 * });
 * const wire = mllp.encode(new TextEncoder().encode("MSH|^~\\&|"));
 * assert.equal(wire[0], 0x0b);
 * assert.equal(new TextDecoder().decode(mllp.decoder().decode(wire)[0]), "MSH|^~\\&|");
 * ```
 */
export function delimited(options: DelimitedOptions): Codec<Uint8Array> {
  const delimiter = markerOption(options.delimiter, "delimiter");
  const start = options.start === undefined
    ? undefined
    : markerOption(options.start, "start");
  const maxFrameBytes = maxFrameBytesOption(options.maxFrameBytes);
  const startBytes = start?.length ?? 0;
  const m = delimiter.length;

  const check = (message: Uint8Array): number => {
    const length = message.length;
    if (length > maxFrameBytes) {
      throw new RangeError(
        `Cannot encode frame: ${length} bytes exceeds maxFrameBytes (${maxFrameBytes})`,
      );
    }
    if (runsIntoDelimiter(message, delimiter)) {
      throw new TypeError(
        "Cannot encode frame: message contains the delimiter",
      );
    }
    return startBytes + length + m;
  };

  const write = (message: Uint8Array, target: Uint8Array, at: number) => {
    if (start !== undefined) target.set(start, at);
    target.set(message, at + startBytes);
    target.set(delimiter, at + startBytes + message.length);
  };

  const codec: Codec<Uint8Array> = {
    decoder: () => new DelimitedDecoder(delimiter, start, maxFrameBytes),
    encode(message) {
      const out = new Uint8Array(check(message));
      write(message, out, 0);
      return out;
    },
    encodedLength: check,
    encodeInto(message, target, at) {
      const total = check(message);
      if (!(at >= 0 && at + total <= target.length)) {
        throw new RangeError(
          `Cannot encode frame: ${total} bytes do not fit in target at offset ${at}`,
        );
      }
      write(message, target, at);
      return total;
    },
  };
  if (options.correlationId !== undefined) {
    codec.correlationId = options.correlationId;
  }
  return codec;
}
