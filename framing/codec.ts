/**
 * The codec contract: how messages become bytes and bytes become messages.
 *
 * @module
 */

/** A correlation id: what matches a reply to its request. */
export type CorrelationId = string | number | bigint;

/**
 * A synchronous, stateful decoder: bytes in, complete messages out. Partial
 * frames are kept between calls. A decoder belongs to one byte stream (one
 * session); make a fresh one per stream with {@linkcode Codec.decoder}.
 *
 * Messages may be views (`subarray`) into the chunks passed to `decode`:
 * callers must not reuse a chunk's memory after handing it over.
 *
 * @typeParam T The message type.
 */
export interface FrameDecoder<T> {
  /**
   * Decodes as many complete messages as `chunk` finishes.
   *
   * @param chunk The next bytes of the stream. Owned by the decoder from now on.
   * @returns The completed messages, in order; often empty.
   * @throws {ProtocolError} When the bytes break the framing. Messages the
   * chunk completed before the bad bytes go in the error's `decoded`
   * (`ProtocolError.decoded`), so that they are still handled:
   * the built-in decoders do so, and a custom decoder should too.
   * @throws {FrameTooLargeError} When a frame announces more than the limit.
   */
  decode(chunk: Uint8Array): T[];
  /**
   * Tells the decoder the stream ended.
   *
   * @throws {ProtocolError} When the stream ended inside a frame.
   */
  end?(): void;
}

/**
 * How one kind of message crosses the wire: a decoder factory, an encoder, and
 * optionally how to find a message's correlation id.
 *
 * @typeParam T The message type.
 */
export interface Codec<T> {
  /**
   * Makes a fresh decoder for one byte stream.
   *
   * @returns A new decoder with empty state.
   */
  decoder(): FrameDecoder<T>;
  /**
   * Encodes one message into its wire bytes, framing included.
   *
   * @param message The message.
   * @returns The bytes to write.
   */
  encode(message: T): Uint8Array;
  /**
   * The size {@linkcode Codec.encodeInto} will write for `message`. Codecs that
   * provide both let the session encode straight into its write buffer
   * without a copy per message.
   *
   * @param message The message.
   * @returns Its encoded size in bytes.
   */
  encodedLength?(message: T): number;
  /**
   * Encodes `message` into `target` at `offset`; `target` has at least
   * {@linkcode Codec.encodedLength} bytes of room there.
   *
   * @param message The message.
   * @param target The buffer to write into.
   * @param offset Where to start.
   * @returns The number of bytes written.
   */
  encodeInto?(message: T, target: Uint8Array, offset: number): number;
  /**
   * The correlation id of a request or of a reply; `undefined` means the
   * message is not correlated (a push, a heartbeat).
   *
   * @param message The message.
   * @returns Its id, or `undefined`.
   */
  correlationId?(message: T): CorrelationId | undefined;
  /**
   * Tells whether a reply is a failure: the error to reject the request
   * with, or `undefined` to resolve it with the reply (for example a Redis
   * `-ERR` reply).
   *
   * @param message A reply.
   * @returns The error, or `undefined`.
   */
  replyError?(message: T): unknown;
}

/**
 * Wraps a {@linkcode FrameDecoder} in a `TransformStream` that emits the
 * messages completed by each chunk as one array (one batch per chunk, never
 * one stream chunk per message), so a decoder works on any byte stream: a
 * file, a pipe, `conn.readable`. Empty batches are not emitted. At the end of
 * the input it calls the decoder's `end()`, so a stream that stops inside a
 * frame errors with `ProtocolError`. When a chunk holds bad bytes, the
 * messages before them (the error's `decoded`) are emitted first, then the
 * stream errors.
 *
 * @typeParam T The message type.
 * @param decoder A fresh decoder (or a codec, whose `decoder()` is called).
 * @returns The transform stream.
 *
 * @example Usage
 * ```ts
 * import { decoderStream, delimited } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * const bytes = new TextEncoder().encode("a\nbc\nd\n");
 * const batches = await Array.fromAsync(
 *   ReadableStream.from([bytes.subarray(0, 3), bytes.subarray(3)])
 *     .pipeThrough(decoderStream(delimited({ delimiter: "\n" }))),
 * );
 * const text = batches.flat().map((frame) => new TextDecoder().decode(frame));
 * assert.deepEqual(text, ["a", "bc", "d"]);
 * ```
 */
export function decoderStream<T>(
  decoder: FrameDecoder<T> | Codec<T>,
): TransformStream<Uint8Array, T[]> {
  const state: FrameDecoder<T> = "decode" in decoder
    ? decoder
    : decoder.decoder();
  // Set when a chunk held bad bytes after some messages: those are emitted
  // first, the error with the next chunk or the end (erroring at once would
  // drop a batch that is still queued).
  let failed: { error: unknown } | undefined;
  return new TransformStream<Uint8Array, T[]>({
    transform(chunk, controller) {
      if (failed !== undefined) throw failed.error;
      let batch: T[];
      try {
        batch = state.decode(chunk);
      } catch (error) {
        const decoded = (error as { decoded?: unknown } | null)?.decoded;
        if (!Array.isArray(decoded) || decoded.length === 0) throw error;
        failed = { error };
        controller.enqueue(decoded as T[]);
        return;
      }
      if (batch.length > 0) controller.enqueue(batch);
    },
    flush() {
      if (failed !== undefined) throw failed.error;
      state.end?.();
    },
  });
}
