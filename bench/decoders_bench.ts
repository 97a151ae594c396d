/**
 * Decoder throughput: each framing decoder (and the default protocol's)
 * alone and through the `decoderStream()` wrapper, for 64 B and 16 KiB
 * messages fed in 64 KiB chunks, and for 64 B messages fed one frame per
 * chunk and in 1000 B chunks (most chunks end inside a frame, so the
 * partial-frame path runs once per chunk).
 *
 * Run with `deno task bench:decoders`. Each bench name ends with the frames
 * and input bytes one iteration decodes: frames/s = iter/s × frames, MB/s =
 * iter/s × bytes / 1e6. Every iteration checks its frame count.
 *
 * @module
 */

import {
  type Codec,
  decoderStream,
  delimited,
  fixedLength,
  lengthPrefixed,
  resp,
} from "../framing/mod.ts";
import { defaultCodec, type Frame } from "../protocol.ts";

const KiB = 1024;
const CHUNK_BYTES = 64 * KiB;

interface Workload {
  readonly label: string;
  readonly chunks: readonly Uint8Array[];
  readonly frames: number;
  readonly bytes: number;
}

/** Encodes `count` messages of `size` bytes and cuts the wire into chunks. */
function workload<T>(
  codec: Codec<T>,
  size: number,
  count: number,
  perChunk: "64 KiB" | "1000 B" | "frame",
  message: (payload: Uint8Array) => T,
): Workload {
  const frame = codec.encode(message(new Uint8Array(size).fill(0x61)));
  const wire = new Uint8Array(frame.length * count);
  for (let i = 0; i < count; i++) wire.set(frame, i * frame.length);
  const step = perChunk === "frame"
    ? frame.length
    : perChunk === "1000 B"
    ? 1000
    : CHUNK_BYTES;
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < wire.length; at += step) {
    chunks.push(wire.subarray(at, at + step));
  }
  const sizeLabel = size >= KiB ? `${size / KiB} KiB` : `${size} B`;
  const chunkLabel = perChunk === "frame"
    ? "one frame per chunk"
    : `in ${perChunk} chunks`;
  return {
    label: `${sizeLabel} frames ${chunkLabel}`,
    chunks,
    frames: count,
    bytes: wire.length,
  };
}

function decodeAll<T>(
  codec: Codec<T>,
  chunks: readonly Uint8Array[],
): number {
  const decoder = codec.decoder();
  let frames = 0;
  for (let i = 0; i < chunks.length; i++) {
    frames += decoder.decode(chunks[i]!).length;
  }
  decoder.end?.();
  return frames;
}

/** A pull source that hands out one chunk per pull, like a session's read loop. */
function source(chunks: readonly Uint8Array[]): ReadableStream<Uint8Array> {
  let next = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (next < chunks.length) controller.enqueue(chunks[next++]!);
      else controller.close();
    },
  }, { highWaterMark: 0 });
}

async function decodeThroughStream<T>(
  codec: Codec<T>,
  chunks: readonly Uint8Array[],
): Promise<number> {
  const reader = source(chunks).pipeThrough(decoderStream(codec)).getReader();
  let frames = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return frames;
    frames += value.length;
  }
}

function check(workload: Workload, frames: number): void {
  if (frames !== workload.frames) {
    throw new Error(`Decoded ${frames} frames, expected ${workload.frames}`);
  }
}

const CODECS: ReadonlyArray<readonly [string, Codec<Uint8Array>]> = [
  ["lengthPrefixed", lengthPrefixed()],
  ["delimited", delimited({ delimiter: "\n" })],
];

function benchCodec<T>(name: string, codec: Codec<T>, loads: Workload[]) {
  for (const load of loads) {
    const suffix = `(${load.frames} frames, ${load.bytes} B)`;
    const group = `${name} ${load.label}`;
    Deno.bench({
      name: `${name} decoder, ${load.label} ${suffix}`,
      group,
      baseline: true,
      fn(b) {
        b.start();
        const frames = decodeAll(codec, load.chunks);
        b.end();
        check(load, frames);
      },
    });
    Deno.bench({
      name: `${name} decoderStream(), ${load.label} ${suffix}`,
      group,
      async fn(b) {
        b.start();
        const frames = await decodeThroughStream(codec, load.chunks);
        b.end();
        check(load, frames);
      },
    });
  }
}

const bytes = (payload: Uint8Array) => payload;

for (const [name, codec] of CODECS) {
  benchCodec(name, codec, [
    workload(codec, 64, 16_384, "64 KiB", bytes),
    workload(codec, 16 * KiB, 256, "64 KiB", bytes),
    workload(codec, 64, 16_384, "frame", bytes),
    workload(codec, 64, 16_384, "1000 B", bytes),
  ]);
}

{
  const codec = defaultCodec();
  const request = (payload: Uint8Array): Frame => ({ kind: 1, id: 7, payload });
  benchCodec("defaultCodec", codec, [
    workload(codec, 64, 16_384, "64 KiB", request),
    workload(codec, 16 * KiB, 256, "64 KiB", request),
    workload(codec, 64, 16_384, "frame", request),
    workload(codec, 64, 16_384, "1000 B", request),
  ]);
}

{
  // Replies that are bulk strings.
  const codec = resp();
  benchCodec("resp", codec, [
    workload(codec, 64, 16_384, "64 KiB", bytes),
    workload(codec, 16 * KiB, 256, "64 KiB", bytes),
    workload(codec, 64, 16_384, "frame", bytes),
    workload(codec, 64, 16_384, "1000 B", bytes),
  ]);
}

{
  const small = fixedLength(64);
  const large = fixedLength(16 * KiB);
  benchCodec("fixedLength", small, [
    workload(small, 64, 16_384, "64 KiB", bytes),
    workload(small, 64, 16_384, "frame", bytes),
  ]);
  // Its 16 KiB frames never span chunks (views only): more per iteration.
  benchCodec("fixedLength", large, [
    workload(large, 16 * KiB, 1024, "64 KiB", bytes),
  ]);
}
