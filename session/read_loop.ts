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

/**
 * A read is decoded in slices of about this many messages (by the size of
 * the messages decoded last), each dispatched before the next is decoded:
 * a session whose reading pauses mid-read (its handlers are at their limit,
 * or the memory budget is exceeded) holds at most one slice's messages
 * decoded, the rest as bytes.
 */
const SLICE_MESSAGES = 512;
const MIN_SLICE_BYTES = 4 * 1024;
/** As large as a read: large messages are not cut (which would copy them). */
const MAX_SLICE_BYTES = 256 * 1024;

/** The estimated cost of a decoded message beyond its wire bytes (objects, views). */
const MESSAGE_OVERHEAD_BYTES = 128;

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
  /**
   * The peer sent bad bytes (the error the decoder threw); the messages
   * before them have been dispatched. Reading has stopped.
   */
  badInput(error: unknown): void;
  /**
   * The loop's state, made at its first read: what a paused loop holds
   * read but not dispatched (see {@linkcode unreadMessages}).
   */
  reading(state: SliceState): void;
  /**
   * What the read side buffers now, for the memory budget: `partial` bytes
   * of a message in progress, `undispatched` decoded messages not yet
   * dispatched, each estimated at `perMessage` bytes. Returns a promise to
   * wait on when the budget paused this session's reading.
   */
  buffered(
    partial: number,
    undispatched: number,
    perMessage: number,
  ): Promise<void> | undefined;
}

/**
 * Runs one session's read loop until the end of the stream or the close;
 * rejects on bad input. A function, not an object: its arguments live in
 * the loop's own frame, which every idle session holds anyway (so the work
 * on a chunk is done in other functions, whose locals are not kept in that
 * frame while the session waits).
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
  // Made at the first read: a session that never reads holds none.
  let loop: ChunkLoop<T> | undefined;
  for (;;) {
    const chunk = await reader.read();
    if (chunk === null) {
      // Ended inside a frame: the decoder throws, and the session closes
      // at once (the peer is gone, there is nothing to finish for it).
      decoder.end?.();
      return session.ended();
    }
    if (session.isClosed()) return;
    loop ??= {
      session,
      decoder,
      dispatcher,
      gate,
      counters,
      stats,
      state: firstRead(session),
    };
    const liveness = session.liveness;
    loop.state.now = liveness.lastReadAt = coarseNow();
    liveness.missed = 0;
    stats.bytesIn += chunk.length;
    counters.bytesIn += chunk.length;
    let goOn = consume(loop, chunk, 0);
    if (goOn !== true && goOn !== false) goOn = await goOn;
    if (!goOn) return;
    // Backpressure from our own write side: a peer that does not read
    // our replies stops being read.
    if (queue.full) await queue.room();
  }
}

/** The loop's state at its first read. */
function firstRead(session: ReadLoopSession): SliceState {
  const state: SliceState = {
    partial: 0,
    sliceBytes: MIN_SLICE_BYTES,
    perMessage: 0,
    batch: undefined,
    next: 0,
    rest: undefined,
    now: 0,
  };
  session.reading(state);
  return state;
}

/** What the work on one chunk needs of the loop. */
interface ChunkLoop<T> {
  session: ReadLoopSession;
  decoder: FrameDecoder<unknown>;
  dispatcher: Dispatcher<T>;
  gate: HandlerGate<T>;
  counters: Counters;
  stats: { messagesIn: number; bytesIn: number };
  state: SliceState;
}

/**
 * Decodes and dispatches `chunk` from `start`, slice by slice. Returns
 * whether the loop reads on (false: the session closed or sent bad bytes),
 * or a promise of that once reading had to pause (the handlers at their
 * limit, the memory budget exceeded): synchronous until then, so a read
 * that needs no pause costs no promise.
 */
function consume<T>(
  loop: ChunkLoop<T>,
  chunk: Uint8Array,
  start: number,
): boolean | Promise<boolean> {
  const { session, state, stats, counters } = loop;
  while (start < chunk.length) {
    const end = Math.min(chunk.length, start + state.sliceBytes);
    const slice = end - start === chunk.length
      ? chunk
      : chunk.subarray(start, end);
    start = end;
    const batch = decodeSlice(
      session,
      loop.decoder,
      state,
      stats,
      chunk,
      slice,
    );
    const count = batch.length;
    stats.messagesIn += count;
    counters.messagesIn += count;
    // Idle means no whole message: bytes that never finish a frame (a
    // peer trickling, a slowloris) must not keep a session for ever.
    if (count > 0) session.liveness.lastMessageAt = state.now;
    // Replies keep flowing while the handlers are at their limit; only
    // held requests stop the reading.
    const next = dispatchFrom(session, loop.dispatcher, loop.gate, batch, 0);
    if (next >= 0) return consumePaused(loop, chunk, start, batch, next);
    const goOn = afterSlice(loop, chunk, start);
    if (goOn !== true) return goOn;
  }
  return true;
}

/**
 * After a slice was dispatched: stops on a close or bad bytes, waits while
 * the memory budget is exceeded, then goes on with the chunk.
 */
function afterSlice<T>(
  loop: ChunkLoop<T>,
  chunk: Uint8Array,
  start: number,
): boolean | Promise<boolean> {
  const { session, state } = loop;
  if (session.isClosed()) return false;
  if (state.bad !== undefined) {
    session.badInput(state.bad.error);
    return false;
  }
  const budget = session.buffered(state.partial, 0, state.perMessage);
  if (budget === undefined) return true;
  return consumeAfterBudget(loop, chunk, start, budget);
}

/** The rest of a chunk whose batch paused the reading mid-dispatch. */
async function consumePaused<T>(
  loop: ChunkLoop<T>,
  chunk: Uint8Array,
  start: number,
  batch: unknown[],
  next: number,
): Promise<boolean> {
  const state = loop.state;
  state.rest = chunk.subarray(start);
  await dispatchRest(
    loop.session,
    loop.dispatcher,
    loop.gate,
    batch,
    next,
    state,
  );
  state.rest = undefined;
  const after = afterSlice(loop, chunk, start);
  // A promise is the budget's wait, which goes on with the chunk itself.
  if (after !== true) return await after;
  return await consume(loop, chunk, start);
}

/** The rest of a chunk once the memory budget lets the session read on. */
async function consumeAfterBudget<T>(
  loop: ChunkLoop<T>,
  chunk: Uint8Array,
  start: number,
  budget: Promise<void>,
): Promise<boolean> {
  const state = loop.state;
  state.rest = chunk.subarray(start);
  await budget;
  state.rest = undefined;
  if (loop.session.isClosed()) return false;
  return await consume(loop, chunk, start);
}

/**
 * Dispatches the rest of a batch whose dispatch paused the reading: waits
 * for a handler slot (and for the memory budget) before each part.
 */
async function dispatchRest<T>(
  session: ReadLoopSession,
  dispatcher: Dispatcher<T>,
  gate: HandlerGate<T>,
  batch: unknown[],
  next: number,
  state: SliceState,
): Promise<void> {
  while (next >= 0) {
    const budget = session.buffered(
      state.partial,
      batch.length - next,
      state.perMessage,
    );
    state.batch = batch;
    state.next = next;
    while (gate.readingPaused()) await gate.slotFree();
    if (budget !== undefined) await budget;
    state.batch = undefined;
    next = dispatchFrom(session, dispatcher, gate, batch, next);
  }
}

/** What the read loop keeps between the slices it decodes. */
export interface SliceState {
  /** Bytes fed to the decoder since it last completed a message. */
  partial: number;
  /** The size of the next slice. */
  sliceBytes: number;
  /** The estimated bytes a decoded message holds (for the memory budget). */
  perMessage: number;
  /** Set when the decoder refused the bytes. */
  bad?: { error: unknown };
  /** While paused mid-batch: the batch, dispatched up to `next`. */
  batch: unknown[] | undefined;
  next: number;
  /** While paused mid-read: the read's bytes not decoded yet. */
  rest: Uint8Array | undefined;
  /** `coarseNow()` at the read being decoded. */
  now: number;
}

/**
 * The messages a session read but never dispatched: the rest of the batch
 * and of the read its loop is paused in, and `ahead`, bytes read after
 * them. Decodes them with the session's decoder, so only once the loop will
 * never go on (the session is closing); takes them, so they count once.
 */
export function unreadMessages(
  state: SliceState | undefined,
  decoder: FrameDecoder<unknown>,
  ahead: Uint8Array | undefined,
): unknown[] {
  if (state === undefined) return [];
  const messages = state.batch?.slice(state.next) ?? [];
  const bytes = [state.rest, ahead];
  state.batch = undefined;
  state.rest = undefined;
  for (const chunk of bytes) {
    if (chunk === undefined || chunk.length === 0) continue;
    let decoded: unknown[];
    try {
      decoded = decoder.decode(chunk);
    } catch (error) {
      // Bad bytes: the messages before them were still received.
      for (const message of decodedBefore(error)) messages.push(message);
      break;
    }
    for (const message of decoded) messages.push(message);
  }
  return messages;
}

/**
 * Decodes one slice; on bad bytes, returns the messages before them and
 * sets `state.bad`. Sizes the next slice by the messages decoded.
 */
function decodeSlice(
  session: ReadLoopSession,
  decoder: FrameDecoder<unknown>,
  state: SliceState,
  stats: { messagesIn: number; bytesIn: number },
  chunk: Uint8Array,
  slice: Uint8Array,
): unknown[] {
  let batch: unknown[];
  try {
    batch = decoder.decode(slice);
  } catch (error) {
    batch = decodedBefore(error);
    state.bad = {
      error: badBytes(session, stats, chunk, slice, batch, error),
    };
  }
  const count = batch.length;
  if (count === 0) {
    state.partial += slice.length;
    return batch;
  }
  const wire = (state.partial + slice.length) / count;
  state.perMessage = wire + MESSAGE_OVERHEAD_BYTES;
  state.sliceBytes = Math.min(
    MAX_SLICE_BYTES,
    Math.max(MIN_SLICE_BYTES, Math.ceil(wire * SLICE_MESSAGES)),
  );
  state.partial = 0;
  return batch;
}

/**
 * The messages a decoder's error says it completed before the bad bytes
 * (see `ProtocolError.decoded`): they are still handled, so that where
 * reads split the stream does not change what runs.
 */
function decodedBefore(error: unknown): unknown[] {
  const decoded = (error as { decoded?: unknown } | null)?.decoded;
  return Array.isArray(decoded) ? decoded : [];
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
 * The error for a slice the decoder refused. When it starts the session's
 * first chunk, decoded nothing, and its bytes are a foreign protocol's
 * (TLS, HTTP, SSH), a
 * `ProtocolMismatchError` that says so, with the decoder's error as
 * `cause`; otherwise the decoder's error. Only the first chunk is sniffed:
 * later bytes do not start at the peer's first byte.
 */
function badBytes(
  session: ReadLoopSession,
  stats: { messagesIn: number; bytesIn: number },
  chunk: Uint8Array,
  slice: Uint8Array,
  decoded: unknown[],
  error: unknown,
): unknown {
  if (
    stats.messagesIn !== 0 || stats.bytesIn !== chunk.length ||
    decoded.length > 0 || slice.byteOffset !== chunk.byteOffset
  ) return error;
  const peer = formatAddr(session.remoteAddr);
  return protocolMismatch(chunk, session.side, peer, error) ?? error;
}
