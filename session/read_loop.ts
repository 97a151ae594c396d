/**
 * The read loop of a session: read a chunk, decode its messages as one
 * batch, dispatch them; pause while the handler gate or the write queue is
 * full, so TCP pushes back on the peer.
 *
 * The loop decodes in place and hands each batch straight to the
 * dispatcher, with no `ReadableStream` between (its controller, reader,
 * queue and pending read cost several KiB per idle session); the batching
 * `TransformStream` (`decoderStream`) stays exported for users' own byte
 * streams.
 *
 * @module
 */

import type { FrameDecoder } from "../framing/codec.ts";
import { formatAddr } from "../connection.ts";
import { protocolMismatch } from "../_sniff.ts";
import { coarseNow } from "../_timeouts.ts";
import type { Dispatcher } from "./dispatcher.ts";
import type { HandlerGate } from "./handlers.ts";
import type { SlabReader } from "./reader.ts";
import type { Counters } from "./types.ts";
import type { WriteQueue } from "./write_queue.ts";

/** The session, as the loop sees it. */
export interface ReadLoopSession {
  readonly side: "client" | "server";
  readonly remoteAddr: Deno.Addr;
  readonly liveness: {
    lastReadAt: number;
    lastMessageAt: number;
    missed: number;
  };
  isClosed(): boolean;
  /** The peer ended its side (called once the last batch is dispatched). */
  ended(): void;
}

/**
 * Runs one session's read loop until the end of the stream or the close;
 * rejects on bad input. A function, not an object: its arguments live in
 * the loop's own frame, which every idle session holds anyway.
 */
export async function readLoop<T>(
  session: ReadLoopSession,
  reader: SlabReader,
  decoder: FrameDecoder<unknown>,
  dispatcher: Dispatcher<T>,
  gate: HandlerGate<T>,
  queue: WriteQueue,
  counters: Counters,
  stats: { messagesIn: number; bytesIn: number },
): Promise<void> {
  const liveness = session.liveness;
  for (;;) {
    const chunk = await reader.read();
    if (chunk === null) {
      decoder.end?.();
      break;
    }
    if (session.isClosed()) return;
    const now = coarseNow();
    liveness.lastReadAt = now;
    liveness.missed = 0;
    stats.bytesIn += chunk.length;
    counters.bytesIn += chunk.length;
    let batch: unknown[];
    try {
      batch = decoder.decode(chunk);
    } catch (error) {
      throw firstBytesError(session, stats, chunk, error);
    }
    stats.messagesIn += batch.length;
    counters.messagesIn += batch.length;
    // Idle means no whole message: bytes that never finish a frame (a peer
    // trickling, a slowloris) must not keep a session for ever.
    if (batch.length > 0) liveness.lastMessageAt = now;
    // Replies keep flowing while the handlers are at their limit; only
    // held requests stop the reading.
    let next = dispatchFrom(session, dispatcher, gate, batch, 0);
    while (next >= 0) {
      while (gate.readingPaused()) await gate.slotFree();
      next = dispatchFrom(session, dispatcher, gate, batch, next);
    }
    if (session.isClosed()) return;
    // Backpressure from our own write side: a peer that does not read
    // our replies stops being read.
    if (queue.full) await queue.room();
  }
  session.ended();
}

/**
 * Dispatches `batch[from]` onwards. Returns the index to go on from once
 * reading may resume, or -1 when the batch is done (or the session closed).
 * A function called once per read, not a loop inside `readLoop`: V8
 * optimizes a function that is called early, while a loop in an async
 * function that runs for the session's whole life only by on-stack
 * replacement, late.
 */
function dispatchFrom<T>(
  session: ReadLoopSession,
  dispatcher: Dispatcher<T>,
  gate: HandlerGate<T>,
  batch: unknown[],
  from: number,
): number {
  for (let i = from; i < batch.length; i++) {
    if (session.isClosed()) return -1;
    dispatcher.dispatch(batch[i]);
    if (gate.readingPaused()) return i + 1;
  }
  return -1;
}

/**
 * The error for a chunk the decoder refused. When it is the session's first
 * chunk and its bytes are a foreign protocol's (TLS, HTTP, SSH), a
 * `ProtocolMismatchError` that says so, with the decoder's error as
 * `cause`; otherwise the decoder's error. Only the first chunk is sniffed:
 * later bytes do not start at the peer's first byte.
 */
function firstBytesError(
  session: ReadLoopSession,
  stats: { messagesIn: number; bytesIn: number },
  chunk: Uint8Array,
  error: unknown,
): unknown {
  if (stats.messagesIn !== 0 || stats.bytesIn !== chunk.length) return error;
  const peer = formatAddr(session.remoteAddr);
  return protocolMismatch(chunk, session.side, peer, error) ?? error;
}
