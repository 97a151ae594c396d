/**
 * The write side of a session: messages are encoded when queued, into the
 * buffer of the next write, and each burst leaves in one `write()` (flushed
 * from a microtask) while the next messages go into the other buffer.
 *
 * @module
 */

import type { Codec } from "../framing/codec.ts";
import type { DirectFrames } from "./dialect.ts";
import type { Transport } from "../connection.ts";
import { coarseNow } from "../_timeouts.ts";

/** Write buffers larger than this are not kept for the next burst. */
const RETAIN_WRITE_BYTES = 4 * 1024 * 1024;
/** The size of an arena that messages waiting for room are encoded into. */
const HOLD_ARENA_BYTES = 16 * 1024;
/** Messages larger than this that wait for room get a buffer of their own. */
const MAX_ARENA_MESSAGE = 4 * 1024;

/** What the queue tells its session. */
export interface WriteQueueOwner {
  /** Whether the session has closed (the flush loop stops). */
  isClosed(): boolean;
  /** More than `maxWriteBytes` would be queued: the peer is cut off. */
  overLimit(why: string): void;
  /** A batch was written. */
  wrote(messages: number, bytes: number): void;
  /**
   * A write failed: the session closes. Returns the error the sends of the
   * failed batch (never written, or not known to be) reject with.
   */
  writeFailed(error: unknown): unknown;
  /** The flush loop stopped (nothing left to write, or it failed). */
  flushEnded(): void;
}

/** A send's promise, settled once its bytes are written (or not). */
export type Done = PromiseWithResolvers<void> | undefined;

/**
 * A bounded queue of encoded messages and the loop that writes them.
 *
 * It also keeps positions in the session's outbound byte stream: the queued
 * bytes start at `outBase`, the write in flight at `writingBase`, and the
 * socket has taken everything before `written`. They place a request's
 * bytes, to tell whether it left and to send it again if it did not.
 */
export class WriteQueue {
  readonly #conn: Transport;
  readonly #codec: Codec<unknown>;
  readonly #owner: WriteQueueOwner;
  readonly #highWaterMark: number;
  readonly #maxWriteBytes: number;
  /** The codec lacks encodedLength/encodeInto: it encodes into its own buffer. */
  readonly #preEncoded: boolean;
  /** The buffer queued messages are encoded into (the next write). */
  #out: Uint8Array | undefined;
  /** Bytes in #out. */
  #outLength = 0;
  /** Messages in #out. */
  #queued = 0;
  /** A free write buffer (the last one written), reused by the next batch. */
  #spare: Uint8Array | undefined;
  /**
   * Where frames waiting for room are encoded (see {@linkcode holdDirect}),
   * and the offset of its free space.
   */
  #holdArena: Uint8Array | undefined;
  #holdPos = 0;
  /** Sends in the queue waiting to hear they were written. */
  #notify: PromiseWithResolvers<void>[] | undefined;
  #writing = false;
  #flushScheduled = false;
  #flushTask: (() => void) | undefined;
  /** Bytes of the write in flight; with #outLength, what maxWriteBytes bounds. */
  #writingBytes = 0;
  /**
   * Callers waiting for room, in order. Each is called once: with `true`
   * when it may enqueue (it must do so synchronously), or `false` when the
   * session closed.
   */
  #roomWaiters: ((open: boolean) => void)[] | undefined;
  outBase = 0;
  writingBase = 0;
  written = 0;
  /** The write in flight's bytes (kept after a close until it settles). */
  writingBuffer: Uint8Array | undefined;
  /** Handler replies in the queue, and in the write in flight. */
  queuedReplies = 0;
  writingReplies = 0;
  /** A forced drain's refusals in the queue, and in the write in flight. */
  queuedRefusals = 0;
  writingRefusals = 0;
  /** `performance.now()` when the write in flight started, or 0. */
  writeStartedAt = 0;

  constructor(
    conn: Transport,
    codec: Codec<unknown>,
    owner: WriteQueueOwner,
    highWaterMark: number,
    maxWriteBytes: number,
  ) {
    this.#conn = conn;
    this.#codec = codec;
    this.#owner = owner;
    this.#highWaterMark = highWaterMark;
    this.#maxWriteBytes = maxWriteBytes;
    this.#preEncoded = codec.encodedLength === undefined ||
      codec.encodeInto === undefined;
  }

  /** Messages waiting for the next write. */
  get queued(): number {
    return this.#queued;
  }

  /** Bytes queued and being written. */
  get bytes(): number {
    return this.#outLength + this.#writingBytes;
  }

  /** The stream position the next queued byte will have. */
  get position(): number {
    return this.outBase + this.#outLength;
  }

  /** Whether nothing is queued or being written. */
  get idle(): boolean {
    return !this.#writing && this.#queued === 0 && !this.#flushScheduled;
  }

  /** Whether a write is in flight. */
  get writing(): boolean {
    return this.#writing;
  }

  /** Whether the queue is at its high-water mark. */
  get full(): boolean {
    return this.#queued >= this.#highWaterMark;
  }

  /** Whether a new message may be queued now (waiters go first). */
  hasRoom(): boolean {
    return this.#queued < this.#highWaterMark &&
      (this.#roomWaiters === undefined || this.#roomWaiters.length === 0);
  }

  /** Calls `waiter` once there is room (true) or the session closed (false). */
  waitForRoom(waiter: (open: boolean) => void): void {
    (this.#roomWaiters ??= []).push(waiter);
  }

  /** Resolves when there is room (or the session closed). */
  room(): Promise<void> {
    if (this.hasRoom() || this.#owner.isClosed()) return Promise.resolve();
    return new Promise((resolve) => this.waitForRoom(() => resolve()));
  }

  /**
   * Queues a message. It is encoded at once, into the buffer of the next
   * write: the caller may reuse its buffer as soon as this returns, a
   * message the codec refuses throws with nothing queued, and no message is
   * kept (a reply that is a view of a read slab does not hold the slab).
   * `maxWriteBytes` holds for every codec. Codecs without
   * `encodedLength`/`encodeInto` encode into a buffer of their own, which is
   * copied in.
   */
  enqueue(wire: unknown, done: Done): void {
    const codec = this.#codec;
    if (this.#preEncoded) return this.enqueueBytes(codec.encode(wire), done);
    const size = codec.encodedLength!(wire);
    if (!this.#admit(size, done)) return;
    const at = this.#outLength;
    this.#queuedAt(at + codec.encodeInto!(wire, this.#reserve(size), at), done);
  }

  /**
   * Queues a frame of `kind` and `id` carrying `message`, encoded by the
   * dialect straight into the next write's buffer (see
   * {@linkcode enqueue}; nobody waits to hear it was written).
   */
  enqueueDirect<T>(
    direct: DirectFrames<T>,
    kind: number,
    id: number,
    message: T,
  ): void {
    const size = direct.size(message);
    if (!this.#admit(size, undefined)) return;
    const at = this.#outLength;
    const end = at + direct.write(kind, id, message, this.#reserve(size), at);
    this.#queuedAt(end, undefined);
  }

  /**
   * Encodes a frame that must wait for room (as {@linkcode enqueueDirect}
   * would) and returns its bytes, for {@linkcode enqueueBytes} once there is
   * room. Small frames share an arena, each a view of it: on Deno a buffer
   * of its own per frame costs several times the copy. An arena is never
   * written twice, so a view stays valid for as long as it is kept.
   */
  holdDirect<T>(
    direct: DirectFrames<T>,
    kind: number,
    id: number,
    message: T,
  ): Uint8Array {
    const size = direct.size(message);
    if (size > MAX_ARENA_MESSAGE) {
      const own = new Uint8Array(size);
      direct.write(kind, id, message, own, 0);
      return own;
    }
    let arena = this.#holdArena;
    if (arena === undefined || arena.length - this.#holdPos < size) {
      arena = this.#holdArena = new Uint8Array(HOLD_ARENA_BYTES);
      this.#holdPos = 0;
    }
    const at = this.#holdPos;
    const n = direct.write(kind, id, message, arena, at);
    this.#holdPos = at + n;
    return new Uint8Array(arena.buffer, at, n);
  }

  /** Queues bytes encoded already (see {@linkcode enqueue}). */
  enqueueBytes(bytes: Uint8Array, done: Done): void {
    if (!this.#admit(bytes.length, done)) return;
    const at = this.#outLength;
    this.#reserve(bytes.length).set(bytes, at);
    this.#queuedAt(at + bytes.length, done);
  }

  /**
   * A copy of queued bytes from stream position `start` to `end`, or
   * undefined when they are no longer queued (handed to a write).
   */
  queuedBytes(start: number, end: number): Uint8Array | undefined {
    if (start < this.outBase || this.#out === undefined) return undefined;
    return this.#out.slice(start - this.outBase, end - this.outBase);
  }

  /**
   * Whether `size` more bytes fit under maxWriteBytes; cuts the peer off if
   * not. The refused message's send then fails with the queued ones.
   */
  #admit(size: number, done: Done): boolean {
    const queued = this.#outLength + this.#writingBytes + size;
    if (queued <= this.#maxWriteBytes) return true;
    if (done !== undefined) (this.#notify ??= []).push(done);
    this.#owner.overLimit(
      `write queue holds ${queued} bytes, over maxWriteBytes (${this.#maxWriteBytes})`,
    );
    return false;
  }

  /** Counts the message just encoded into #out, which now ends at `end`. */
  #queuedAt(end: number, done: Done): void {
    this.#outLength = end;
    this.#queued++;
    if (done !== undefined) (this.#notify ??= []).push(done);
    if (!this.#writing && !this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(this.#flushTask ??= () => void this.#flush());
    }
  }

  /** #out, with room for `size` more bytes (grown by doubling). */
  #reserve(size: number): Uint8Array {
    const out = this.#out;
    const length = this.#outLength;
    if (out !== undefined && out.length - length >= size) return out;
    let capacity = out === undefined ? 4096 : out.length * 2;
    while (capacity < length + size) capacity *= 2;
    const grown = new Uint8Array(capacity);
    if (length > 0) grown.set(out!.subarray(0, length));
    return this.#out = grown;
  }

  async #flush(): Promise<void> {
    this.#flushScheduled = false;
    const owner = this.#owner;
    if (this.#writing || owner.isClosed()) return;
    this.#writing = true;
    /** Sends in the batch being written: they settle with this write. */
    let notify: PromiseWithResolvers<void>[] | undefined;
    try {
      while (this.#queued > 0 && !owner.isClosed()) {
        const buffer = this.#out!;
        const bytes = buffer.subarray(0, this.#outLength);
        const count = this.#queued;
        // Sends queued by the room waiters #startBatch lets in belong to the
        // next batch: take this batch's list first.
        notify = this.#notify;
        this.#notify = undefined;
        this.#startBatch(bytes);
        let offset = 0;
        while (offset < bytes.length) {
          offset += await this.#conn.write(bytes.subarray(offset));
          this.written = this.writingBase + offset;
        }
        this.writingBuffer = undefined;
        this.writeStartedAt = 0;
        this.writingReplies = 0;
        this.writingRefusals = 0;
        this.#writingBytes = 0;
        owner.wrote(count, bytes.length);
        // Busy sessions keep their write buffers (a fresh zero-filled MiB
        // per flush costs more than the copy it saves); a huge one is not
        // kept, and silent sessions give theirs back (releaseIdle).
        if (buffer.length <= RETAIN_WRITE_BYTES) this.#spare = buffer;
        if (notify !== undefined) {
          for (const done of notify) done.resolve();
          notify = undefined;
        }
      }
    } catch (error) {
      this.writeStartedAt = 0;
      const reason = owner.writeFailed(error);
      if (notify !== undefined) {
        for (const done of notify) done.reject(reason);
      }
    } finally {
      this.#writing = false;
      owner.flushEnded();
    }
  }

  /** Hands the queued bytes to the write; new messages go to the spare. */
  #startBatch(bytes: Uint8Array): void {
    this.#out = this.#spare;
    this.#spare = undefined;
    this.#outLength = 0;
    this.#queued = 0;
    this.#writingBytes = bytes.length;
    this.writingBuffer = bytes;
    this.writingBase = this.outBase;
    this.outBase += bytes.length;
    this.writingReplies = this.queuedReplies;
    this.queuedReplies = 0;
    this.writingRefusals = this.queuedRefusals;
    this.queuedRefusals = 0;
    this.#wakeRoom(true);
    this.writeStartedAt = coarseNow();
  }

  /** Lets waiters in, in order, while there is room (all of them, failed, once closed). */
  #wakeRoom(open: boolean): void {
    const waiters = this.#roomWaiters;
    if (waiters === undefined) return;
    while (
      waiters.length > 0 && (!open || this.#queued < this.#highWaterMark)
    ) {
      waiters.shift()!(open);
    }
  }

  /**
   * The session closed: queued sends fail with `error`, room waiters hear
   * `false`, buffers go. The write in flight's bytes stay while `keepWriting`
   * (requests in them are decided once it settles).
   */
  clear(error: unknown, keepWriting: boolean): void {
    const notify = this.#notify;
    this.#notify = undefined;
    if (notify !== undefined) { for (const done of notify) done.reject(error); }
    this.#out = this.#spare = this.#holdArena = undefined;
    this.#outLength = this.#queued = 0;
    if (!keepWriting) this.writingBuffer = undefined;
    this.#wakeRoom(false);
  }

  /** Gives back the buffers of a silent session. */
  releaseIdle(): void {
    this.#spare = this.#holdArena = undefined;
    if (this.#queued === 0) this.#out = undefined;
  }
}
