/**
 * What a session sends of its own accord: requests (registered in the
 * pending table, then queued) and pushes, each waiting for room in the
 * write queue when it is full.
 *
 * @module
 */

import { type Pending, type PendingOwner, Retry } from "../_correlation.ts";
import type { Batch } from "../_batch.ts";
import {
  type Dialect,
  type DirectFrames,
  Inbound,
  requestId,
} from "./dialect.ts";
import { ConnectionClosedError } from "../errors.ts";
import type { EncodedRequest, SessionConfig } from "./config.ts";
import type { Dispatcher } from "./dispatcher.ts";
import type { HandlerGate } from "./handlers.ts";
import type { WriteQueue } from "./write_queue.ts";
import { withResolvers } from "../_util.ts";

/** What the sender needs from its session (the session itself). */
export interface OutboundOwner extends PendingOwner {
  readonly id: number;
  isClosed(): boolean;
  /** Our drain (or drain answer) is queued: no request may follow it. */
  drainSent(): boolean;
  closedError(what: string): ConnectionClosedError;
  /** Sends a request the closing session cannot deliver elsewhere, if it may. */
  rescue(entry: Pending, error: unknown): boolean;
}

/** The parts of a session the sender works with. */
export interface OutboundParts<T> {
  cfg: SessionConfig<T>;
  queue: WriteQueue;
  dispatcher: Dispatcher<T>;
  gate: HandlerGate<T>;
}

/** Registers and queues a session's own requests and pushes. */
export class Outbound<T> {
  readonly #owner: OutboundOwner;
  readonly #cfg: SessionConfig<T>;
  readonly #dialect: Dialect<T>;
  readonly #queue: WriteQueue;
  readonly #dispatcher: Dispatcher<T>;
  readonly #gate: HandlerGate<T>;
  readonly #fifo: boolean;
  /** The dialect's direct encoder (requests are then built in the buffer). */
  readonly #direct: DirectFrames<T> | undefined;

  constructor(owner: OutboundOwner, parts: OutboundParts<T>) {
    this.#owner = owner;
    this.#cfg = parts.cfg;
    this.#dialect = parts.cfg.dialect;
    this.#queue = parts.queue;
    this.#dispatcher = parts.dispatcher;
    this.#gate = parts.gate;
    this.#fifo = parts.cfg.dialect.mode === "fifo";
    this.#direct = parts.cfg.dialect.mode === "assign"
      ? parts.cfg.dialect.direct
      : undefined;
  }

  /** Registers and queues a request (see `SessionImpl.requestOn`). */
  request(
    message: T,
    timeout: number | undefined,
    signal: AbortSignal | undefined,
    heartbeat: boolean,
    retry: number,
  ): Promise<T> {
    const dialect = this.#dialect;
    const correlator = this.#cfg.correlator;
    const owner = this.#owner;
    let entry: Pending;
    let wire: unknown;
    try {
      const ms = timeout ?? this.#cfg.requestTimeout;
      if (this.#direct !== undefined && !heartbeat) {
        // Encoded into the write buffer once queued, with no wire message
        // object; checked first, so a refused payload leaves no entry.
        this.#direct.size(message);
        entry = correlator.add(correlator.nextId(), owner, ms, signal);
        entry.retry = retry;
        return this.#send(entry, message, undefined, false, true);
      }
      if (dialect.mode === "assign") {
        // Build the frame first: a payload the dialect refuses must not
        // leave a pending entry behind.
        const id = correlator.nextId();
        wire = heartbeat ? dialect.ping(id) : dialect.request(message, id);
        entry = correlator.add(id, owner, ms, signal);
      } else if (dialect.mode === "fifo") {
        entry = correlator.add(undefined, owner, ms, signal);
        wire = message;
      } else {
        const id = requestId(dialect.codec, message);
        entry = correlator.add(id, owner, ms, signal);
        wire = message;
      }
    } catch (error) {
      return Promise.reject(error);
    }
    entry.retry = retry;
    return this.#send(entry, wire, undefined, heartbeat);
  }

  /**
   * Registers and queues the messages of a batch, in order (skipping the
   * slots filled already); each outcome goes to its slot of `batch` (see `_batch.ts`). A
   * message the dialect or codec refuses fills its slot with the error; the
   * others go on. `messages` holds either messages or, for custom codecs
   * that waited for a session, encoded requests.
   */
  pipeline(batch: Batch<T>): void {
    const { messages, encoded, timeout, signal, retry } = batch.requests;
    const dialect = this.#dialect;
    const correlator = this.#cfg.correlator;
    const owner = this.#owner;
    const ms = timeout ?? this.#cfg.requestTimeout;
    const mode = dialect.mode;
    const results = batch.results;
    this.#gate.recheckReading();
    for (let i = 0; i < messages.length; i++) {
      // Filled already: the batch was aborted while it waited.
      if (results[i] !== undefined) continue;
      let entry: Pending;
      let wire: unknown = undefined;
      let bytes: Uint8Array | undefined = undefined;
      let direct = false;
      try {
        if (encoded) {
          const request = messages[i] as EncodedRequest;
          bytes = request.bytes;
          entry = correlator.add(
            mode === "fifo" ? undefined : request.id,
            owner,
            ms,
            signal,
            batch,
            i,
          );
        } else if (this.#direct !== undefined) {
          // As in request(): framed in the write buffer once queued.
          wire = messages[i];
          this.#direct.size(wire as T);
          direct = true;
          entry = correlator.add(
            correlator.nextId(),
            owner,
            ms,
            signal,
            batch,
            i,
          );
        } else if (mode === "assign") {
          const id = correlator.nextId();
          wire = dialect.request(messages[i] as T, id);
          entry = correlator.add(id, owner, ms, signal, batch, i);
        } else {
          wire = messages[i];
          const id = mode === "fifo"
            ? undefined
            : requestId(dialect.codec, wire as T);
          entry = correlator.add(id, owner, ms, signal, batch, i);
        }
      } catch (error) {
        batch.settle(i, false, error);
        continue;
      }
      entry.retry = retry;
      batch.track(entry);
      if (this.#queue.hasRoom()) {
        this.#queueRequest(entry, wire, bytes, false, direct);
      } else this.#holdForRoom(entry, wire, bytes, false, direct);
    }
  }

  /** A custom-codec request encoded ahead (it waited for a session). */
  requestEncoded(
    request: EncodedRequest,
    timeout: number | undefined,
    signal: AbortSignal | undefined,
    retry: number,
  ): Promise<T> {
    let entry: Pending;
    try {
      entry = this.#cfg.correlator.add(
        this.#fifo ? undefined : request.id,
        this.#owner,
        timeout ?? this.#cfg.requestTimeout,
        signal,
      );
    } catch (error) {
      return Promise.reject(error);
    }
    entry.retry = retry;
    return this.#send(entry, undefined, request.bytes, false);
  }

  /** Takes over a request another session could not deliver (a retry). */
  adopt(entry: Pending, bytes: Uint8Array): void {
    entry.move(this.#owner);
    void this.#send(entry, undefined, bytes, false);
  }

  /**
   * Queues a registered request: its wire message, its bytes, or (`direct`)
   * the user's message that the dialect's direct encoder frames with the
   * entry's id.
   */
  #send(
    entry: Pending,
    wire: unknown,
    bytes: Uint8Array | undefined,
    heartbeat: boolean,
    direct = false,
  ): Promise<T> {
    // A handler awaiting this answer may have paused reading: resume it.
    this.#gate.recheckReading();
    if (this.#queue.hasRoom()) {
      this.#queueRequest(entry, wire, bytes, heartbeat, direct);
    } else this.#holdForRoom(entry, wire, bytes, heartbeat, direct);
    return entry.promise as Promise<T>;
  }

  /** A request's bytes, to hold or to send elsewhere (see {@linkcode #send}). */
  #encode(entry: Pending, wire: unknown, direct: boolean): Uint8Array {
    const dialect = this.#dialect;
    return dialect.codec.encode(
      direct ? dialect.request(wire as T, entry.id as number) : wire,
    );
  }

  /** Queues a registered request once the write queue has room. */
  #holdForRoom(
    entry: Pending,
    wire: unknown,
    bytes: Uint8Array | undefined,
    heartbeat: boolean,
    direct: boolean,
  ): void {
    // It waits for room: encode it now, so the caller may reuse its message
    // (and so a retry elsewhere has its bytes).
    let held: Uint8Array;
    try {
      held = bytes ??
        (direct
          ? this.#queue.holdDirect(
            this.#direct!,
            Inbound.Request,
            entry.id as number,
            wire as T,
          )
          : this.#encode(entry, wire, false));
    } catch (error) {
      return entry.fail(error);
    }
    entry.copy = held;
    const owner = this.#owner;
    this.#queue.waitForRoom((open) => {
      // A closed session handed it to a retry already (see Rescue).
      if (entry.owner !== owner) return;
      if (open) {
        return this.#queueRequest(entry, undefined, held, heartbeat, false);
      }
      // Fifo requests waiting for room are in no table: offered here.
      const error = owner.closedError("request");
      if (!owner.rescue(entry, error)) entry.fail(error);
    });
  }

  #queueRequest(
    entry: Pending,
    wire: unknown,
    bytes: Uint8Array | undefined,
    heartbeat: boolean,
    direct: boolean,
  ): void {
    const owner = this.#owner;
    if (entry.settled) return;
    if (owner.isClosed()) return entry.fail(owner.closedError("request"));
    if (owner.drainSent() && !heartbeat && this.#dialect.framed) {
      return this.#behindDrain(entry, wire, bytes, direct);
    }
    const queue = this.#queue;
    if (this.#fifo) this.#dispatcher.expect(entry);
    const start = queue.position;
    try {
      if (bytes !== undefined) queue.enqueueBytes(bytes, undefined);
      else if (direct) {
        queue.enqueueDirect(
          this.#direct!,
          Inbound.Request,
          entry.id as number,
          wire as T,
        );
      } else queue.enqueue(wire, undefined);
    } catch (error) {
      if (this.#fifo) this.#dispatcher.unexpect(entry);
      return entry.fail(error);
    }
    // Cut off for maxWriteBytes: the close failed it or sent it elsewhere.
    if (entry.settled || entry.owner !== owner || owner.isClosed()) {
      return;
    }
    entry.start = start;
    entry.end = queue.position;
    entry.copy = entry.retry === Retry.Idempotent
      ? queue.queuedBytes(start, entry.end)
      : undefined;
  }

  /**
   * Our drain (or drain answer) is already queued: a request behind it
   * breaks the promise that nothing follows. It never left: it goes
   * elsewhere when it may.
   */
  #behindDrain(
    entry: Pending,
    wire: unknown,
    bytes: Uint8Array | undefined,
    direct: boolean,
  ): void {
    const retry = this.#cfg.retry;
    if (retry !== undefined && entry.retry !== Retry.Never) {
      try {
        return retry(entry, bytes ?? this.#encode(entry, wire, direct));
      } catch (error) {
        return entry.fail(error);
      }
    }
    entry.fail(
      new ConnectionClosedError(
        `Cannot send request: session ${this.#owner.id} is draining`,
      ),
    );
  }

  /** Queues a push (its wire message, or bytes encoded ahead). */
  push(
    wire: unknown,
    bytes: Uint8Array | undefined,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const owner = this.#owner;
    if (owner.isClosed()) return Promise.reject(owner.closedError("send"));
    if (signal?.aborted) return Promise.reject(signal.reason);
    const done = withResolvers<void>();
    const queue = this.#queue;
    if (queue.hasRoom()) {
      try {
        if (bytes === undefined) queue.enqueue(wire, done);
        else queue.enqueueBytes(bytes, done);
      } catch (error) {
        return Promise.reject(error);
      }
      return done.promise;
    }
    // It waits for room: encode it now, so the caller may reuse its message.
    let held: Uint8Array;
    try {
      held = bytes ?? this.#dialect.codec.encode(wire);
    } catch (error) {
      return Promise.reject(error);
    }
    let waiting = true;
    const onAbort = () => {
      waiting = false;
      done.reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    queue.waitForRoom((open) => {
      signal?.removeEventListener("abort", onAbort);
      if (!waiting) return;
      if (!open) return done.reject(owner.closedError("send"));
      try {
        queue.enqueueBytes(held, done);
      } catch (error) {
        done.reject(error);
      }
    });
    return done.promise;
  }
}
