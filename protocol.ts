/**
 * The default wire format spoken between two tcpbutler ends.
 *
 * Every frame is a 9-byte header followed by the payload:
 *
 * | offset | size | field | meaning |
 * | --- | --- | --- | --- |
 * | 0 | 4 | length | u32 big-endian: bytes after this field (5 + payload length) |
 * | 4 | 1 | kind | 1 request, 2 response, 3 push, 4 error, 5 ping, 6 pong, 7 drain, 8 refused |
 * | 5 | 4 | id | u32 big-endian correlation id |
 * | 9 | length − 5 | payload | opaque bytes (UTF-8 text for `error`) |
 *
 * @module
 */

import type { Codec, FrameDecoder } from "./framing/codec.ts";
import { FrameTooLargeError, ProtocolError } from "./errors.ts";

/** The kinds of frame of the default protocol, by their wire value. */
export const FrameKind = {
  /** A request: the peer answers with a `Response` or an `Error` of the same id. */
  Request: 1,
  /** The reply to the request with the same id. */
  Response: 2,
  /** A message that expects no reply; id is 0. */
  Push: 3,
  /** The handler of the request with the same id failed; payload is the UTF-8 message. */
  Error: 4,
  /** A heartbeat; the peer answers with a `Pong` of the same id and payload. */
  Ping: 5,
  /** The answer to a `Ping`. */
  Pong: 6,
  /**
   * The sender is shutting down: send no new requests on this connection.
   * The receiver answers with a `Drain` of its own once it has stopped
   * sending requests, so the sender knows every request it must answer has
   * arrived. Id is 0.
   */
  Drain: 7,
  /**
   * The answer to a request that the sender read but will not run (it is
   * shutting down): the request with the same id was not processed, and its
   * payload is the request's payload, so the requester can send it again
   * elsewhere without having kept a copy.
   */
  Refused: 8,
} as const;

/** One of the {@linkcode FrameKind} values. */
export type FrameKind = typeof FrameKind[keyof typeof FrameKind];

/** One frame of the default protocol. */
export interface Frame {
  /** What the frame is. */
  kind: FrameKind;
  /** Correlation id, an unsigned 32-bit integer (0 where unused). */
  id: number;
  /**
   * The payload. Decoded payloads are views into the session's read buffer:
   * copy (`slice()`) one you keep for long, so the buffer can be freed.
   */
  payload: Uint8Array;
}

/** The highest frame kind on the wire. */
const MAX_KIND = FrameKind.Refused;

/** Size of the frame header, in bytes. */
export const HEADER_BYTES = 9;

/** Options of {@linkcode defaultCodec}. */
export interface DefaultCodecOptions {
  /**
   * Largest payload accepted, in bytes; a header announcing more fails with
   * `FrameTooLargeError` before anything is buffered.
   *
   * @default {8388608}
   */
  maxFrameBytes?: number;
}

const EMPTY = new Uint8Array(0);
/** First buffer of a frame split across reads; it doubles as bytes arrive. */
const INITIAL_PARTIAL_BYTES = 64 * 1024;

/**
 * The codec of the default protocol.
 *
 * @param options Limits.
 * @returns A codec of {@linkcode Frame}s.
 *
 * @example Usage
 * ```ts
 * import { defaultCodec, FrameKind } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const codec = defaultCodec();
 * const bytes = codec.encode({ kind: FrameKind.Request, id: 7, payload: new Uint8Array([1, 2]) });
 * const [frame] = codec.decoder().decode(bytes);
 * assert.equal(frame?.id, 7);
 * assert.deepEqual([...frame!.payload], [1, 2]);
 * ```
 */
export function defaultCodec(options?: DefaultCodecOptions): Codec<Frame> {
  const maxFrameBytes = options?.maxFrameBytes ?? 8 * 1024 * 1024;
  if (!Number.isInteger(maxFrameBytes) || maxFrameBytes < 0) {
    throw new RangeError(
      `Cannot use maxFrameBytes ${maxFrameBytes}: expected a non-negative integer`,
    );
  }
  const encodedLength = (frame: Frame) => HEADER_BYTES + frame.payload.length;
  const encodeInto = (frame: Frame, target: Uint8Array, offset: number) => {
    const length = frame.payload.length + 5;
    target[offset] = length >>> 24;
    target[offset + 1] = length >>> 16;
    target[offset + 2] = length >>> 8;
    target[offset + 3] = length;
    target[offset + 4] = frame.kind;
    const id = frame.id;
    target[offset + 5] = id >>> 24;
    target[offset + 6] = id >>> 16;
    target[offset + 7] = id >>> 8;
    target[offset + 8] = id;
    target.set(frame.payload, offset + HEADER_BYTES);
    return HEADER_BYTES + frame.payload.length;
  };
  return {
    decoder: () => new DefaultDecoder(maxFrameBytes),
    encodedLength,
    encodeInto,
    encode(frame) {
      if (frame.payload.length > maxFrameBytes) {
        throw new RangeError(
          `Cannot encode frame: ${frame.payload.length} bytes exceeds maxFrameBytes (${maxFrameBytes})`,
        );
      }
      const out = new Uint8Array(encodedLength(frame));
      encodeInto(frame, out, 0);
      return out;
    },
    correlationId(frame) {
      return frame.kind === FrameKind.Push || frame.kind === FrameKind.Drain
        ? undefined
        : frame.id;
    },
  };
}

function checkKind(kind: number): void {
  if (kind < 1 || kind > MAX_KIND) {
    throw new ProtocolError(`Cannot decode frame: unknown kind ${kind}`);
  }
}

class DefaultDecoder implements FrameDecoder<Frame> {
  readonly #max: number;
  /** Bytes of an unfinished frame (header included), or undefined. */
  #partial: Uint8Array | undefined;
  #partialLength = 0;
  /** Total size of the unfinished frame once its header is known, else 0. */
  #need = 0;

  constructor(max: number) {
    this.#max = max;
  }

  decode(chunk: Uint8Array): Frame[] {
    const frames: Frame[] = [];
    let pos = 0;
    if (this.#partialLength > 0) {
      pos = this.#continue(chunk, frames);
      if (pos < 0) return frames;
    }
    const end = chunk.length;
    // Frames are read inline (no call per frame).
    const buffer = chunk.buffer;
    const base = chunk.byteOffset;
    const max = this.#max;
    while (end - pos >= HEADER_BYTES) {
      const length = ((chunk[pos]! << 24) | (chunk[pos + 1]! << 16) |
        (chunk[pos + 2]! << 8) | chunk[pos + 3]!) >>> 0;
      const kind = chunk[pos + 4]!;
      const total = length + 4;
      if (
        length < 5 || length - 5 > max || kind < 1 || kind > MAX_KIND ||
        end - pos < total
      ) {
        // Bad input throws; a partial frame is kept for the next chunk.
        this.#check(length);
        if (end - pos < total) break;
        checkKind(kind);
      }
      const id = ((chunk[pos + 5]! << 24) | (chunk[pos + 6]! << 16) |
        (chunk[pos + 7]! << 8) | chunk[pos + 8]!) >>> 0;
      frames.push({
        kind: kind as FrameKind,
        id,
        payload: total === HEADER_BYTES
          ? EMPTY
          : new Uint8Array(buffer, base + pos + HEADER_BYTES, length - 5),
      });
      pos += total;
    }
    if (pos < end) this.#stash(chunk.subarray(pos));
    return frames;
  }

  end(): void {
    if (this.#partialLength > 0) {
      const have = this.#partialLength;
      this.#reset();
      throw new ProtocolError(
        `Cannot decode frame: stream ended inside a frame (${have} bytes buffered)`,
      );
    }
  }

  #check(length: number): void {
    if (length < 5) {
      throw new ProtocolError(
        `Cannot decode frame: length ${length} is shorter than the 5-byte kind and id`,
      );
    }
    if (length - 5 > this.#max) {
      throw new FrameTooLargeError(this.#max, length - 5);
    }
  }

  #frame(bytes: Uint8Array, pos: number, total: number): Frame {
    const kind = bytes[pos + 4]!;
    checkKind(kind);
    const id = ((bytes[pos + 5]! << 24) | (bytes[pos + 6]! << 16) |
      (bytes[pos + 7]! << 8) | bytes[pos + 8]!) >>> 0;
    // The constructor makes a view faster than subarray() on V8.
    const payload = total === HEADER_BYTES ? EMPTY : new Uint8Array(
      bytes.buffer,
      bytes.byteOffset + pos + HEADER_BYTES,
      total - HEADER_BYTES,
    );
    return { kind: kind as FrameKind, id, payload };
  }

  /** Keeps the tail of a chunk (a partial frame) in #partial. */
  #stash(tail: Uint8Array): void {
    const need = tail.length >= 4
      ? (((tail[0]! << 24) | (tail[1]! << 16) | (tail[2]! << 8) | tail[3]!) >>>
        0) + 4
      : 0;
    if (need !== 0) this.#check(need - 4);
    this.#need = need;
    this.#partial = undefined;
    this.#partialLength = 0;
    this.#append(tail);
  }

  /**
   * Appends bytes of the unfinished frame. The buffer grows with the bytes
   * that actually arrive (doubling, at most to the frame's size): a header
   * alone that announces a large frame commits no memory for it.
   */
  #append(bytes: Uint8Array): void {
    const length = this.#partialLength + bytes.length;
    let buffer = this.#partial;
    if (buffer === undefined || buffer.length < length) {
      let capacity = Math.max(
        HEADER_BYTES,
        buffer === undefined ? INITIAL_PARTIAL_BYTES : buffer.length * 2,
        length,
      );
      if (this.#need !== 0) capacity = Math.min(capacity, this.#need);
      const grown = new Uint8Array(capacity);
      if (buffer !== undefined) {
        grown.set(buffer.subarray(0, this.#partialLength));
      }
      buffer = this.#partial = grown;
    }
    buffer.set(bytes, this.#partialLength);
    this.#partialLength = length;
  }

  /** Feeds a chunk to an unfinished frame; returns where the chunk resumes, or -1. */
  #continue(chunk: Uint8Array, frames: Frame[]): number {
    let pos = 0;
    if (this.#need === 0) {
      // The length field is not complete yet.
      const take = Math.min(4 - this.#partialLength, chunk.length);
      this.#append(chunk.subarray(0, take));
      pos = take;
      if (this.#partialLength < 4) return -1;
      const buffer = this.#partial!;
      const length = ((buffer[0]! << 24) | (buffer[1]! << 16) |
        (buffer[2]! << 8) | buffer[3]!) >>> 0;
      this.#check(length);
      this.#need = length + 4;
    }
    const take = Math.min(this.#need - this.#partialLength, chunk.length - pos);
    this.#append(chunk.subarray(pos, pos + take));
    pos += take;
    if (this.#partialLength < this.#need) return -1;
    frames.push(this.#frame(this.#partial!, 0, this.#need));
    this.#reset();
    return pos;
  }

  #reset(): void {
    this.#partial = undefined;
    this.#partialLength = 0;
    this.#need = 0;
  }
}
