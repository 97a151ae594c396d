/**
 * Fixed-length framing: every frame has the same size and no header.
 *
 * @module
 */

import { ProtocolError } from "../errors.ts";
import type { Codec, CorrelationId, FrameDecoder } from "./codec.ts";
import { PartialFrame } from "./_buffer.ts";

/** Options of {@linkcode fixedLength}. */
export interface FixedLengthOptions {
  /**
   * Finds a message's correlation id; becomes the codec's `correlationId`.
   * When absent, the codec has no `correlationId`.
   */
  correlationId?: (frame: Uint8Array) => CorrelationId | undefined;
}

class FixedLengthDecoder implements FrameDecoder<Uint8Array> {
  readonly #size: number;
  /** The frame that spans chunks (no header: its size is known). */
  readonly #partial: PartialFrame;

  constructor(size: number) {
    this.#size = size;
    this.#partial = new PartialFrame(0, 0, () => size);
  }

  decode(chunk: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    const partial = this.#partial;
    const size = this.#size;
    const length = chunk.length;
    let pos = 0;
    if (partial.active) {
      pos = partial.feed(chunk, 0);
      if (pos < 0) return out;
      out.push(partial.take());
    }
    // The constructor makes a view faster than subarray() on V8.
    const buffer = chunk.buffer;
    const base = chunk.byteOffset;
    while (length - pos >= size) {
      out.push(new Uint8Array(buffer, base + pos, size));
      pos += size;
    }
    if (pos < length) partial.feed(chunk, pos);
    return out;
  }

  end(): void {
    const partial = this.#partial;
    if (!partial.active) return;
    const filled = partial.received;
    partial.clear();
    throw new ProtocolError(
      `Cannot decode frame: stream ended inside a frame (${filled} of ${this.#size} bytes)`,
    );
  }
}

/**
 * Makes a codec for fixed-length frames: every message is exactly `size`
 * bytes, with no header or delimiter.
 *
 * Decoded messages are `subarray` views of the chunks given to `decode` when
 * a frame lies wholly inside one chunk (no copy); frames that span chunks are
 * copied into a buffer of their own. A view keeps its chunk's memory alive:
 * copy messages you keep for long.
 *
 * @param size The size of every message, in bytes (at least 1).
 * @param options The correlation id.
 * @returns The codec. Its `encode`, `encodedLength` and `encodeInto` throw
 * `RangeError` for a message that is not `size` bytes long, and `encodeInto`
 * also when `target` has no room. Its decoders throw `ProtocolError` from
 * `end()` when the stream stopped inside a frame.
 * @throws {RangeError} When `size` is not a positive safe integer.
 *
 * @example Usage
 * ```ts
 * import { fixedLength } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * const codec = fixedLength(2);
 * const decoder = codec.decoder();
 * assert.deepEqual(decoder.decode(new Uint8Array([1, 2, 3])), [new Uint8Array([1, 2])]);
 * assert.deepEqual(decoder.decode(new Uint8Array([4])), [new Uint8Array([3, 4])]);
 * assert.throws(() => codec.encode(new Uint8Array(3)), RangeError);
 * ```
 */
export function fixedLength(
  size: number,
  options?: FixedLengthOptions,
): Codec<Uint8Array> {
  options ??= {};
  if (!Number.isSafeInteger(size) || size < 1) {
    throw new RangeError(
      `Cannot create codec: size must be a positive integer, got ${size}`,
    );
  }
  const check = (message: Uint8Array): number => {
    if (message.length !== size) {
      throw new RangeError(
        `Cannot encode frame: ${message.length} bytes, expected ${size}`,
      );
    }
    return size;
  };
  const codec: Codec<Uint8Array> = {
    decoder: () => new FixedLengthDecoder(size),
    encode(message) {
      check(message);
      return message.slice();
    },
    encodedLength: check,
    encodeInto(message, target, at) {
      check(message);
      if (!(at >= 0 && at + size <= target.length)) {
        throw new RangeError(
          `Cannot encode frame: ${size} bytes do not fit in target at offset ${at}`,
        );
      }
      target.set(message, at);
      return size;
    },
  };
  if (options.correlationId !== undefined) {
    codec.correlationId = options.correlationId;
  }
  return codec;
}
