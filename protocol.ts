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
import { PartialFrame, readU32BE, withDecoded } from "./framing/_buffer.ts";
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
/** Size of the length field, the header that {@linkcode PartialFrame} reads. */
const LENGTH_BYTES = 4;

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
  const encodeInto = (frame: Frame, target: Uint8Array, offset: number) =>
    encodeFrameInto(frame.kind, frame.id, frame.payload, target, offset);
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

/**
 * Writes one frame at `offset` of `target` (which has room for it); returns
 * its size. @internal
 */
export function encodeFrameInto(
  kind: number,
  id: number,
  payload: Uint8Array,
  target: Uint8Array,
  offset: number,
): number {
  const length = payload.length + 5;
  target[offset] = length >>> 24;
  target[offset + 1] = length >>> 16;
  target[offset + 2] = length >>> 8;
  target[offset + 3] = length;
  target[offset + 4] = kind;
  target[offset + 5] = id >>> 24;
  target[offset + 6] = id >>> 16;
  target[offset + 7] = id >>> 8;
  target[offset + 8] = id;
  target.set(payload, offset + HEADER_BYTES);
  return HEADER_BYTES + payload.length;
}

function checkKind(kind: number): void {
  if (kind < 1 || kind > MAX_KIND) {
    throw new ProtocolError(`Cannot decode frame: unknown kind ${kind}`);
  }
}

/**
 * Checks a length field: what follows it must hold the kind and the id, and
 * the payload must be within `max`.
 *
 * @returns The bytes after the length field.
 */
function afterLength(length: number, max: number): number {
  if (length < 5) {
    throw new ProtocolError(
      `Cannot decode frame: length ${length} is shorter than the 5-byte kind and id`,
    );
  }
  if (length - 5 > max) throw new FrameTooLargeError(max, length - 5);
  return length;
}

/**
 * The default protocol's decoder: length-prefixed framing (a 4-byte
 * big-endian length field) whose body starts with the kind and the id.
 * Frames that span chunks go through the same {@linkcode PartialFrame} as
 * `lengthPrefixed()`; whole frames are read by a loop of their own, with the
 * header read inline, because that loop runs once per message of every
 * session.
 */
class DefaultDecoder implements FrameDecoder<Frame> {
  readonly #max: number;
  /**
   * The frame that spans chunks, from its kind on; made when one first does
   * (an idle session's decoder holds nothing).
   */
  #partial: PartialFrame | undefined;

  constructor(max: number) {
    this.#max = max;
  }

  decode(chunk: Uint8Array): Frame[] {
    const frames: Frame[] = [];
    try {
      this.#decodeInto(chunk, frames);
    } catch (error) {
      throw withDecoded(error, frames);
    }
    return frames;
  }

  /** The body of decode(): messages go into `frames` (kept when it throws). */
  #decodeInto(chunk: Uint8Array, frames: Frame[]): void {
    const partial = this.#partial;
    let pos = 0;
    if (partial !== undefined && partial.active) {
      pos = partial.feed(chunk, 0);
      if (pos < 0) return;
      frames.push(toFrame(partial.take()));
    }
    const end = chunk.length;
    // The constructor makes a view faster than subarray() on V8.
    const buffer = chunk.buffer;
    const base = chunk.byteOffset;
    const max = this.#max;
    while (end - pos >= HEADER_BYTES) {
      const length = readU32BE(chunk, pos);
      const kind = chunk[pos + 4]!;
      const total = length + LENGTH_BYTES;
      if (
        length < 5 || length - 5 > max || kind < 1 || kind > MAX_KIND ||
        end - pos < total
      ) {
        // Bad input throws; a frame the chunk does not finish goes to
        // #partial, its kind checked once it is whole.
        afterLength(length, max);
        if (end - pos < total) break;
        checkKind(kind);
      }
      frames.push({
        kind: kind as FrameKind,
        id: readU32BE(chunk, pos + 5),
        payload: total === HEADER_BYTES
          ? EMPTY
          : new Uint8Array(buffer, base + pos + HEADER_BYTES, length - 5),
      });
      pos += total;
    }
    if (pos < end) {
      (this.#partial ??= new PartialFrame(
        LENGTH_BYTES,
        0,
        (header, at) => afterLength(readU32BE(header, at), max),
      )).feed(chunk, pos);
    }
  }

  end(): void {
    const partial = this.#partial;
    if (partial === undefined || !partial.active) return;
    const have = partial.received;
    partial.clear();
    throw new ProtocolError(
      `Cannot decode frame: stream ended inside a frame (${have} bytes buffered)`,
    );
  }
}

/** Reads a frame assembled across chunks: its bytes after the length field. */
function toFrame(bytes: Uint8Array): Frame {
  const kind = bytes[0]!;
  checkKind(kind);
  const payload = bytes.length === 5
    ? EMPTY
    : new Uint8Array(bytes.buffer, bytes.byteOffset + 5, bytes.length - 5);
  return { kind: kind as FrameKind, id: readU32BE(bytes, 1), payload };
}
