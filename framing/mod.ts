/**
 * Framing: how a byte stream is cut into messages and how messages are put on
 * the wire. Each factory builds a {@linkcode Codec} whose decoders are
 * synchronous, keep partial frames between chunks and return the frames of a
 * chunk as `subarray` views where a frame lies wholly inside it;
 * {@linkcode decoderStream} runs a decoder over any byte stream.
 *
 * - {@linkcode lengthPrefixed}: a 1, 2, 4 or 8-byte length field (either byte
 *   order) or ASCII digits, with an optional prefix before it.
 * - {@linkcode delimited}: frames ended by a byte sequence (`"\n"`, `"\r\n"`),
 *   with an optional start marker (HL7 MLLP).
 * - {@linkcode fixedLength}: frames of one fixed size.
 * - {@linkcode resp}: RESP2 (Redis) replies and commands; {@linkcode command},
 *   {@linkcode respCall}.
 *
 * Every codec limits frames to `maxFrameBytes` (8 MiB by default):
 * `FrameTooLargeError` as soon as a frame is known to be larger, before it is
 * buffered.
 *
 * @example Usage
 * ```ts
 * import { decoderStream, lengthPrefixed } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * const codec = lengthPrefixed({ headerBytes: 2 });
 * const hello = new TextEncoder().encode("hello");
 * const wire = new Uint8Array([...codec.encode(hello), ...codec.encode(new Uint8Array())]);
 * assert.equal(wire.length, 2 + 5 + 2);
 *
 * // Any split of the bytes gives the same frames.
 * const decoder = codec.decoder();
 * const frames = [...decoder.decode(wire.subarray(0, 1)), ...decoder.decode(wire.subarray(1))];
 * decoder.end?.(); // throws ProtocolError if the stream stopped inside a frame
 * assert.deepEqual(frames, [hello, new Uint8Array()]);
 *
 * // The same through a TransformStream: one batch of frames per chunk.
 * const batches = await Array.fromAsync(
 *   ReadableStream.from([wire.subarray(0, 4), wire.subarray(4)]).pipeThrough(decoderStream(codec)),
 * );
 * assert.deepEqual(batches.flat(), [hello, new Uint8Array()]);
 * ```
 *
 * @module
 */

export { decoderStream } from "./codec.ts";
export type { Codec, CorrelationId, FrameDecoder } from "./codec.ts";
export { lengthPrefixed } from "./length_prefixed.ts";
export type { LengthPrefixedOptions } from "./length_prefixed.ts";
export { delimited } from "./delimited.ts";
export type { DelimitedOptions } from "./delimited.ts";
export { fixedLength } from "./fixed_length.ts";
export type { FixedLengthOptions } from "./fixed_length.ts";
export { command, resp, respCall, RespError } from "./resp.ts";
export type {
  RespArgument,
  RespCallOptions,
  RespCodec,
  RespOptions,
  RespRequester,
  RespValue,
} from "./resp.ts";
