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

/** What the loop reads from and hands to. */
export interface ReadLoopParts<T> {
  session: {
    readonly id: number;
    readonly side: "client" | "server";
    readonly remoteAddr: Deno.Addr;
    readonly liveness: { lastReadAt: number; missed: number };
  };
  reader: SlabReader;
  decoder: FrameDecoder<unknown>;
  dispatcher: Dispatcher<T>;
  gate: HandlerGate<T>;
  queue: WriteQueue;
  counters: Counters;
  stats: { messagesIn: number; bytesIn: number };
  isClosed(): boolean;
  /** The peer ended its side (called once the last batch is dispatched). */
  ended(): void;
}

/** One session's read loop. */
export class ReadLoop<T> {
  readonly #p: ReadLoopParts<T>;

  constructor(parts: ReadLoopParts<T>) {
    this.#p = parts;
  }

  /** Runs until the end of the stream or the close; rejects on bad input. */
  async run(): Promise<void> {
    const p = this.#p;
    const { decoder, stats, counters, gate, queue } = p;
    const liveness = p.session.liveness;
    for (;;) {
      const chunk = await p.reader.read();
      if (chunk === null) {
        decoder.end?.();
        break;
      }
      if (p.isClosed()) return;
      liveness.lastReadAt = coarseNow();
      liveness.missed = 0;
      stats.bytesIn += chunk.length;
      counters.bytesIn += chunk.length;
      let batch: unknown[];
      try {
        batch = decoder.decode(chunk);
      } catch (error) {
        throw this.#firstBytesError(chunk, error);
      }
      stats.messagesIn += batch.length;
      counters.messagesIn += batch.length;
      // Replies keep flowing while the handlers are at their limit; only
      // held requests stop the reading.
      let next = this.#dispatchFrom(batch, 0);
      while (next >= 0) {
        while (gate.readingPaused()) await gate.slotFree();
        next = this.#dispatchFrom(batch, next);
      }
      if (p.isClosed()) return;
      // Backpressure from our own write side: a peer that does not read
      // our replies stops being read.
      if (queue.full) await queue.room();
    }
    p.ended();
  }

  /**
   * Dispatches `batch[from]` onwards. Returns the index to go on from once
   * reading may resume, or -1 when the batch is done (or the session
   * closed). A method called once per read, not a loop inside `run`: V8
   * optimizes a function that is called early, while a loop in an async
   * function that runs for the session's whole life only by on-stack
   * replacement, late.
   */
  #dispatchFrom(batch: unknown[], from: number): number {
    const { dispatcher, gate } = this.#p;
    for (let i = from; i < batch.length; i++) {
      if (this.#p.isClosed()) return -1;
      dispatcher.dispatch(batch[i]);
      if (gate.readingPaused()) return i + 1;
    }
    return -1;
  }

  /**
   * The error for a chunk the decoder refused. When it is the session's
   * first chunk and its bytes are a foreign protocol's (TLS, HTTP, SSH), a
   * `ProtocolMismatchError` that says so, with the decoder's error as
   * `cause`; otherwise the decoder's error. Only the first chunk is sniffed:
   * later bytes do not start at the peer's first byte.
   */
  #firstBytesError(chunk: Uint8Array, error: unknown): unknown {
    const { stats, session } = this.#p;
    if (stats.messagesIn !== 0 || stats.bytesIn !== chunk.length) return error;
    const peer = formatAddr(session.remoteAddr);
    return protocolMismatch(chunk, session.side, peer, error) ?? error;
  }
}
