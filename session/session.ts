/**
 * One connection: read pipeline, dispatcher, write queue, drain.
 *
 * The pipeline: an own `read()` loop into a slab (a 1 KiB buffer while idle),
 * decoded synchronously per read into one batch of messages, handed to the
 * dispatcher; replies, pushes and requests go to a bounded queue that is
 * encoded into one buffer and written with one `write()` per burst (flushed
 * from a microtask).
 *
 * @module
 */

import type { Codec, CorrelationId, FrameDecoder } from "../framing/codec.ts";
import { formatAddr, type Transport, writesAreExact } from "../connection.ts";
import { protocolMismatch } from "../_sniff.ts";
import {
  type Correlator,
  type Pending,
  type PendingOwner,
  Retry,
} from "../_correlation.ts";
import { NOT_READY, ReplyOrder } from "../_reply_order.ts";
import { type Dialect, Inbound, requestId } from "../_dialect.ts";
import { after, coarseNow } from "../_timeouts.ts";
import { abortPromise, callTimeout, describeError } from "../_util.ts";
import {
  ClosedError,
  ConnectionClosedError,
  RemoteError,
  SlowConsumerError,
} from "../errors.ts";
import type { Logger } from "../logger.ts";
import type {
  Counters,
  Handler,
  HandlerContext,
  MessageKind,
  PeerCertificate,
  ProxyInfo,
  RequestOptions,
  SendOptions,
  Session,
  SessionState,
  SessionStats,
} from "./types.ts";

/** A custom-codec request encoded ahead of its session. @internal */
export interface EncodedRequest {
  /** Its wire bytes. */
  bytes: Uint8Array;
  /** Its correlation id (undefined for fifo correlation). */
  id: CorrelationId | undefined;
}

/** What a drain did. @internal */
export interface DrainResult {
  /** The timeout (or a forced stop) closed the session. */
  forced: boolean;
  /** Requests from the peer that got no answer (they may have run). */
  handlers: number;
  /** Requests from the peer refused unprocessed (never run). */
  refused: number;
  /** Our own requests still pending. */
  requests: number;
  /** Why it was forced: what was still under way (empty when not forced). */
  reasons: string[];
}

/** What a session needs from its client or server. @internal */
export interface SessionConfig<T> {
  side: "client" | "server";
  dialect: Dialect<T>;
  correlator: Correlator;
  counters: Counters;
  logger: Logger;
  handler(): Handler<T> | undefined;
  /** Added to every handler context (`{ server }` or `{ client }`). */
  context: Readonly<Record<string, unknown>>;
  /**
   * Takes over a request of a routed kind that this session cannot deliver
   * but knows was not processed (or that is idempotent): it sends `bytes`
   * again elsewhere. Absent where nothing is retried (servers).
   */
  retry: ((entry: Pending, bytes: Uint8Array) => void) | undefined;
  onHandlerError:
    | ((error: unknown, message: T, session: Session<T>) => T | undefined)
    | undefined;
  maxConcurrentHandlers: number;
  highWaterMark: number;
  maxWriteBytes: number;
  requestTimeout: number;
  /** Called once when the session has closed. */
  onClose(session: SessionImpl<T>): void;
  /** Called when the peer asked us to stop sending requests. */
  onPeerDrain(session: SessionImpl<T>): void;
}

const IDLE_READ_BYTES = 1024;
const SLAB_BYTES = 256 * 1024;
const MIN_SLAB_READ = 16 * 1024;
const COPY_SLAB_BYTES = 16 * 1024;
/** Short reads in a row that move a session back to its small buffer. */
const SHORT_READS_TO_IDLE = 8;
const RETAIN_WRITE_BYTES = 4 * 1024 * 1024;
/**
 * How long a forced drain goes on refusing what the peer sent before its
 * drain answer, and waits for the refusals to be written.
 */
const REFUSAL_MS = 200;
/** Held requests past which reading stops even while own requests wait. */
const HELD_HARD_CAP = 1024;

let nextSessionId = 1;

/** The session implementation shared by client and server. @internal */
export class SessionImpl<T> implements Session<T>, PendingOwner {
  readonly id: number = nextSessionId++;
  readonly side: "client" | "server";
  readonly localAddr: Deno.Addr;
  remoteAddr: Deno.Addr;
  peerCertificate?: PeerCertificate;
  proxy?: ProxyInfo;
  /** Requests sent on this session and not settled yet. */
  pendingCount = 0;
  readonly closed: Promise<void>;
  closeReason: unknown = undefined;
  /** `performance.now()` of the last read. */
  lastReadAt: number = performance.now();
  /** `performance.now()` when the write in flight started, or 0. */
  writeStartedAt = 0;
  /** Heartbeats sent without an answer. */
  missedHeartbeats = 0;
  heartbeatInFlight = false;

  #state: SessionState = "handshaking";
  readonly #conn: Transport;
  readonly #cfg: SessionConfig<T>;
  // Read on every message: kept here rather than behind #cfg.
  readonly #dialect: Dialect<T>;
  readonly #codec: Codec<unknown>;
  readonly #correlator: Correlator;
  readonly #counters: Counters;
  readonly #highWaterMark: number;
  readonly #maxWriteBytes: number;
  readonly #maxHandlers: number;
  readonly #decoder: FrameDecoder<unknown>;
  readonly #resolveClosed: () => void;
  /**
   * Handler contexts by inbound kind, made on first use: idle sessions do
   * not pay for them.
   */
  #contexts: (HandlerContext<T> | undefined)[] = [];
  /** Fifo correlation: answers leave in request order. */
  readonly #order: ReplyOrder | undefined;
  #abort: AbortController | undefined;

  // read side
  #small: Uint8Array | undefined;
  #slab: Uint8Array | undefined;
  #slabPos = 0;
  #copySlab: Uint8Array | undefined;
  #copyPos = 0;
  /** A read into #slab at #slabPos that #readChunk returns next. */
  #ahead:
    | { read: Promise<number | null>; slab: Uint8Array; start: number }
    | undefined;
  /** Short reads in a row; at SHORT_READS_TO_IDLE reads use #small. */
  #shortReads = SHORT_READS_TO_IDLE;
  #eof = false;
  /** Waiters for the peer's end of stream (drain), made on demand. */
  #eofWaiter: PromiseWithResolvers<void> | undefined;
  #handlersRunning = 0;
  #slotWaiter: PromiseWithResolvers<void> | undefined;
  /**
   * Inbound requests and pushes not yet handed to the handler: held while
   * the handshake (onConnect) runs, or while the handlers are at their
   * limit. Replies keep being read meanwhile, so a handler that waits for an
   * answer from its own peer does not block reading.
   */
  #held: unknown[] = [];
  /** True until markReady(): messages for the handler are held. */
  #gated = true;
  /** FIFO correlation: requests in the order they were written. */
  readonly #fifo: Pending[] = [];
  #fifoHead = 0;

  // write side: messages are encoded when queued, into #out; a flush writes
  // #out while the next messages go into the other buffer.
  /** The buffer queued messages are encoded into (the next write). */
  #out: Uint8Array | undefined;
  /** Bytes in #out. */
  #outLength = 0;
  /** Messages in #out. */
  #queued = 0;
  /** A free write buffer (the last one written), reused by the next batch. */
  #spare: Uint8Array | undefined;
  /** Sends in the queue waiting to hear they were written. */
  #queueNotify: PromiseWithResolvers<void>[] = [];
  /** Handler replies in the queue, and in the write in flight. */
  #queuedReplies = 0;
  #writingReplies = 0;
  #writing = false;
  #flushScheduled = false;
  /** Bytes of the write in flight; with #outLength, what maxWriteBytes bounds. */
  #writingBytes = 0;
  /**
   * Positions in the outbound byte stream: #out starts at #outBase, the
   * write in flight (#writingBuffer) at #writingBase, and the socket has
   * taken everything before #written. They place a request's bytes, to tell
   * whether it left and to send it again if it did not.
   */
  #outBase = 0;
  #writingBase = 0;
  #written = 0;
  #writingBuffer: Uint8Array | undefined;
  /**
   * Requests of a closed session whose bytes were in the write in flight:
   * they are sent again or failed once that write settles and #written is
   * known (see #rescue).
   */
  #inFlight: { entries: Pending[]; error: unknown } | undefined;
  /**
   * Callers waiting for room in the write queue, in order. Each is called
   * once: with `true` when it may enqueue (it must do so synchronously), or
   * `false` when the session closed.
   */
  #roomWaiters: ((open: boolean) => void)[] = [];
  #idleWaiters: (() => void)[] = [];

  // drain
  #drainSent = false;
  /** Set once a forced drain refuses the requests it will not run. */
  #refusing:
    | { count: number; written: PromiseWithResolvers<void> | undefined }
    | undefined;
  #peerDrainedDone = false;
  #peerDrainedWaiter: PromiseWithResolvers<void> | undefined;
  #flushTask: (() => void) | undefined;
  /** The codec lacks encodedLength/encodeInto: it encodes into its own buffer. */
  readonly #preEncoded: boolean;

  #stats = { messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0 };

  constructor(conn: Transport, cfg: SessionConfig<T>) {
    this.#conn = conn;
    this.#cfg = cfg;
    this.#dialect = cfg.dialect;
    this.#codec = cfg.dialect.codec;
    this.#correlator = cfg.correlator;
    this.#counters = cfg.counters;
    this.#highWaterMark = cfg.highWaterMark;
    this.#maxWriteBytes = cfg.maxWriteBytes;
    this.#maxHandlers = cfg.maxConcurrentHandlers;
    this.side = cfg.side;
    this.localAddr = conn.localAddr;
    this.remoteAddr = conn.remoteAddr;
    this.#decoder = cfg.dialect.codec.decoder();
    const codec = cfg.dialect.codec;
    this.#preEncoded = codec.encodedLength === undefined ||
      codec.encodeInto === undefined;
    this.#order = cfg.dialect.mode === "fifo" ? new ReplyOrder() : undefined;
    const { promise, resolve } = Promise.withResolvers<void>();
    this.closed = promise;
    this.#resolveClosed = resolve;
  }

  /** The context handed to handlers; its signal is made on first use. */
  #handlerContext(inbound: number): HandlerContext<T> {
    let context = this.#contexts[inbound];
    if (context === undefined) {
      const kind: MessageKind = inbound === Inbound.Request
        ? "request"
        : inbound === Inbound.Push
        ? "push"
        : "message";
      context = {
        ...this.#cfg.context,
        session: this as Session<T>,
        kind,
        expectsReply: kind !== "push",
      } as HandlerContext<T>;
      Object.defineProperty(context, "signal", {
        get: () => this.#handlerSignal(),
      });
      this.#contexts[inbound] = context;
    }
    return context;
  }

  /** Resolves once the peer ended its side (or the session closed). */
  #eofSeen(): Promise<void> {
    if (this.#eof || this.#state === "closed") return Promise.resolve();
    return (this.#eofWaiter ??= Promise.withResolvers<void>()).promise;
  }

  /** Resolves once the peer answered our drain (or ended, or we closed). */
  #peerDrained(): Promise<void> {
    if (this.#peerDrainedDone) return Promise.resolve();
    return (this.#peerDrainedWaiter ??= Promise.withResolvers<void>()).promise;
  }

  #markPeerDrained(): void {
    this.#peerDrainedDone = true;
    this.#peerDrainedWaiter?.resolve();
  }

  #markEof(): void {
    this.#eof = true;
    this.#eofWaiter?.resolve();
  }

  #handlerSignal(): AbortSignal {
    this.#abort ??= new AbortController();
    if (!this.#abort.signal.aborted) {
      if (this.#state === "closed") this.#abort.abort(this.closeReason);
      else if (this.#eof) this.#abort.abort(this.#peerGone());
    }
    return this.#abort.signal;
  }

  #peerGone(): ConnectionClosedError {
    return new ConnectionClosedError(
      `Session ${this.id}: the peer closed its side`,
    );
  }

  get state(): SessionState {
    return this.#state;
  }

  /** Re-reads the state after an await (defeats narrowing). */
  #isClosed(): boolean {
    return this.#state === "closed";
  }

  /** Its fifo requests not answered yet (they have no id). */
  unkeyed(): Iterable<Pending> {
    return this.#fifo.slice(this.#fifoHead);
  }

  /** Starts reading. Inbound messages flow from now on. */
  start(): void {
    this.#run().catch((error) => this.#fail(error));
  }

  /** Marks the session ready for routing (after the handshake). */
  markReady(): void {
    if (this.#state === "closed") return;
    if (this.#state === "handshaking") this.#state = "ready";
    // Messages that came in during the handshake go to the handler now
    // (also when a drain began meanwhile: they were accepted).
    this.#gated = false;
    this.#releaseHeld();
  }

  stats(): SessionStats {
    return {
      ...this.#stats,
      pending: this.pendingCount,
      handlersRunning: this.#handlersRunning,
      queued: this.#queued,
    };
  }

  // ---- outbound -------------------------------------------------------

  request(message: T, options?: RequestOptions): Promise<T> {
    if (this.#state === "closed" || this.#state === "draining") {
      return Promise.reject(
        new ConnectionClosedError(
          `Cannot send request: session ${this.id} is ${this.#state}`,
          { cause: this.closeReason },
        ),
      );
    }
    // No default `{}`: an object per call.
    let timeout: number | undefined;
    try {
      timeout = callTimeout(options?.timeout);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.requestOn(message, timeout, options?.signal, false);
  }

  /**
   * Registers and writes a request. Used by the client router too; it may
   * route to a draining session only when `force` (heartbeats). `retry`
   * says whether the request may be sent again elsewhere (see
   * {@linkcode Retry}).
   */
  requestOn(
    message: T,
    timeout: number | undefined,
    signal: AbortSignal | undefined,
    heartbeat: boolean,
    retry: number = Retry.Never,
  ): Promise<T> {
    const dialect = this.#dialect;
    const correlator = this.#correlator;
    let entry: Pending;
    let wire: unknown;
    try {
      const ms = timeout ?? this.#cfg.requestTimeout;
      if (dialect.mode === "assign") {
        // Build the frame first: a payload the dialect refuses must not
        // leave a pending entry behind.
        const id = correlator.nextId();
        wire = heartbeat ? dialect.ping(id) : dialect.request(message, id);
        entry = correlator.add(id, this, ms, signal);
      } else if (dialect.mode === "fifo") {
        entry = correlator.add(undefined, this, ms, signal);
        wire = message;
      } else {
        const id = requestId(dialect.codec, message);
        entry = correlator.add(id, this, ms, signal);
        wire = message;
      }
    } catch (error) {
      return Promise.reject(error);
    }
    entry.retry = retry;
    return this.#sendRequest(entry, wire, undefined, heartbeat);
  }

  /**
   * Sends a request of a custom codec that was encoded ahead (it waited for
   * a session: see `Client.request`). Used by the client router.
   */
  requestEncoded(
    request: EncodedRequest,
    timeout: number | undefined,
    signal: AbortSignal | undefined,
    retry: number = Retry.Never,
  ): Promise<T> {
    let entry: Pending;
    try {
      entry = this.#correlator.add(
        this.#dialect.mode === "fifo" ? undefined : request.id,
        this,
        timeout ?? this.#cfg.requestTimeout,
        signal,
      );
    } catch (error) {
      return Promise.reject(error);
    }
    entry.retry = retry;
    return this.#sendRequest(entry, undefined, request.bytes, false);
  }

  /**
   * Takes over a request another session could not deliver (a retry): it
   * keeps its id, deadline and signal, and is sent as `bytes`.
   */
  adopt(entry: Pending, bytes: Uint8Array): void {
    entry.move(this);
    void this.#sendRequest(entry, undefined, bytes, false);
  }

  /** Queues a registered request (its wire message, or its bytes). */
  #sendRequest(
    entry: Pending,
    wire: unknown,
    bytes: Uint8Array | undefined,
    heartbeat: boolean,
  ): Promise<T> {
    // A handler awaiting this answer may have paused reading: resume it.
    if (this.#slotWaiter !== undefined) this.#recheckReading();
    if (this.#hasRoom()) {
      this.#enqueueRequest(entry, wire, bytes, heartbeat);
      return entry.promise as Promise<T>;
    }
    // It waits for room: encode it now, so the caller may reuse its message
    // (and so a retry elsewhere has its bytes).
    let held: Uint8Array;
    try {
      held = bytes ?? this.#codec.encode(wire);
    } catch (error) {
      entry.fail(error);
      return entry.promise as Promise<T>;
    }
    entry.copy = held;
    this.#roomWaiters.push((open) => {
      // A closed session handed it to a retry already (see #rescue).
      if (entry.owner !== this) return;
      if (open) this.#enqueueRequest(entry, undefined, held, heartbeat);
      else {
        // Fifo requests waiting for room are in no table: offered here.
        const error = this.#closedError("request");
        if (!this.#rescue(entry, error)) entry.fail(error);
      }
    });
    return entry.promise as Promise<T>;
  }

  #enqueueRequest(
    entry: Pending,
    wire: unknown,
    bytes: Uint8Array | undefined,
    heartbeat: boolean,
  ): void {
    if (entry.settled) return;
    if (this.#state === "closed") {
      entry.fail(this.#closedError("request"));
      return;
    }
    if (this.#drainSent && !heartbeat && this.#dialect.framed) {
      // Our drain (or drain answer) is already queued: a request behind it
      // breaks the promise that nothing follows. It never left: it goes
      // elsewhere when it may.
      const retry = this.#cfg.retry;
      if (retry !== undefined && entry.retry !== Retry.Never) {
        try {
          return retry(entry, bytes ?? this.#codec.encode(wire));
        } catch (error) {
          return entry.fail(error);
        }
      }
      entry.fail(
        new ConnectionClosedError(
          `Cannot send request: session ${this.id} is draining`,
        ),
      );
      return;
    }
    const fifo = this.#dialect.mode === "fifo";
    if (fifo) this.#fifo.push(entry);
    const start = this.#outBase + this.#outLength;
    try {
      if (bytes === undefined) this.#enqueue(wire, undefined);
      else this.#enqueueBytes(bytes, undefined);
    } catch (error) {
      if (fifo && this.#fifo.at(-1) === entry) this.#fifo.pop();
      entry.fail(error);
      return;
    }
    // Cut off for maxWriteBytes: the close failed it or sent it elsewhere.
    if (entry.settled || entry.owner !== this || this.#isClosed()) {
      return;
    }
    entry.start = start;
    entry.end = this.#outBase + this.#outLength;
    entry.copy = entry.retry === Retry.Idempotent
      ? this.#out!.slice(start - this.#outBase, entry.end - this.#outBase)
      : undefined;
  }

  /** Whether a new message may be queued now (waiters go first). */
  #hasRoom(): boolean {
    return this.#queued < this.#highWaterMark &&
      this.#roomWaiters.length === 0;
  }

  send(message: T, options?: SendOptions): Promise<void> {
    let wire: unknown;
    try {
      wire = this.#dialect.push(message);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#sendPush(wire, undefined, options?.signal);
  }

  /**
   * Sends a push encoded ahead (it waited for a session: see
   * `Client.send`). Used by the client router.
   */
  sendEncoded(
    bytes: Uint8Array,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    return this.#sendPush(undefined, bytes, signal);
  }

  #sendPush(
    wire: unknown,
    bytes: Uint8Array | undefined,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    if (this.#state === "closed") {
      return Promise.reject(this.#closedError("send"));
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    const done = Promise.withResolvers<void>();
    if (this.#hasRoom()) {
      try {
        if (bytes === undefined) this.#enqueue(wire, done);
        else this.#enqueueBytes(bytes, done);
      } catch (error) {
        return Promise.reject(error);
      }
      return done.promise;
    }
    // It waits for room: encode it now, so the caller may reuse its message.
    let held: Uint8Array;
    try {
      held = bytes ?? this.#codec.encode(wire);
    } catch (error) {
      return Promise.reject(error);
    }
    let waiting = true;
    const onAbort = () => {
      waiting = false;
      done.reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    this.#roomWaiters.push((open) => {
      signal?.removeEventListener("abort", onAbort);
      if (!waiting) return;
      if (!open) return done.reject(this.#closedError("send"));
      try {
        this.#enqueueBytes(held, done);
      } catch (error) {
        done.reject(error);
      }
    });
    return done.promise;
  }

  /** Resolves when the write queue has room (or the session closed). */
  #room(): Promise<void> {
    if (this.#hasRoom() || this.#state === "closed") return Promise.resolve();
    return new Promise((resolve) => this.#roomWaiters.push(() => resolve()));
  }

  /** Queues a push without waiting (broadcast); cuts off a peer over the byte limit. */
  pushNow(message: T): boolean {
    if (this.#state === "closed") return false;
    // A message the codec refuses throws to the caller (broadcast) before
    // anything is queued.
    this.#enqueue(this.#dialect.push(message), undefined);
    return true;
  }

  #closedError(what: string): ConnectionClosedError {
    return new ConnectionClosedError(
      `Cannot ${what}: session ${this.id} is closed`,
      { cause: this.closeReason },
    );
  }

  /**
   * Queues a message for the next write. It is encoded at once, into the
   * buffer of the next write: the caller may reuse its buffer as soon as
   * `request`/`send` returns, a message the codec refuses throws to the
   * caller with nothing queued, and no message is kept (a reply that is a
   * view of a read slab does not hold the slab). `maxWriteBytes` holds for
   * every codec. Codecs without `encodedLength`/`encodeInto` encode into a
   * buffer of their own, which is copied in.
   */
  #enqueue(wire: unknown, done: PromiseWithResolvers<void> | undefined): void {
    const codec = this.#codec;
    if (this.#preEncoded) return this.#enqueueBytes(codec.encode(wire), done);
    const size = codec.encodedLength!(wire);
    if (!this.#admit(size, done)) return;
    const at = this.#outLength;
    this.#queuedAt(at + codec.encodeInto!(wire, this.#reserve(size), at), done);
  }

  /** Queues bytes encoded already (see #enqueue). */
  #enqueueBytes(
    bytes: Uint8Array,
    done: PromiseWithResolvers<void> | undefined,
  ): void {
    if (!this.#admit(bytes.length, done)) return;
    const at = this.#outLength;
    this.#reserve(bytes.length).set(bytes, at);
    this.#queuedAt(at + bytes.length, done);
  }

  /**
   * Whether `size` more bytes fit under maxWriteBytes; cuts the peer off if
   * not. The refused message's send then fails with the queued ones.
   */
  #admit(
    size: number,
    done: PromiseWithResolvers<void> | undefined,
  ): boolean {
    const queued = this.#outLength + this.#writingBytes + size;
    if (queued <= this.#maxWriteBytes) return true;
    if (done !== undefined) this.#queueNotify.push(done);
    this.#cutOff(
      `write queue holds ${queued} bytes, over maxWriteBytes (${this.#maxWriteBytes})`,
    );
    return false;
  }

  /** Counts the message just encoded into #out, which now ends at `end`. */
  #queuedAt(
    end: number,
    done: PromiseWithResolvers<void> | undefined,
  ): void {
    this.#outLength = end;
    this.#queued++;
    if (done !== undefined) this.#queueNotify.push(done);
    if (!this.#writing && !this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(this.#flushTask ??= () => void this.#flush());
    }
  }

  /** Closes a peer that does not read what it is sent. */
  #cutOff(why: string): void {
    const error = new SlowConsumerError(
      `Cutting off session ${this.id} (${formatAddr(this.remoteAddr)}): ${why}`,
    );
    this.#cfg.logger.warn(error.message, { session: this.id });
    this.close(error);
  }

  /** Called by the housekeeping tick when a write stalled too long. */
  stalled(ms: number): void {
    this.#cutOff(`a write has not completed for ${Math.round(ms)} ms`);
  }

  async #flush(): Promise<void> {
    this.#flushScheduled = false;
    if (this.#writing || this.#state === "closed") return;
    this.#writing = true;
    /** Sends in the batch being written: they settle with this write. */
    let notify: PromiseWithResolvers<void>[] | undefined;
    try {
      while (this.#queued > 0 && !this.#isClosed()) {
        const buffer = this.#out!;
        const bytes = buffer.subarray(0, this.#outLength);
        const count = this.#queued;
        notify = this.#queueNotify.length > 0 ? this.#queueNotify : undefined;
        // Messages queued during the write go into the other buffer.
        this.#out = this.#spare;
        this.#spare = undefined;
        this.#outLength = 0;
        this.#queued = 0;
        this.#writingBytes = bytes.length;
        this.#writingBuffer = bytes;
        this.#writingBase = this.#outBase;
        this.#outBase += bytes.length;
        if (notify !== undefined) this.#queueNotify = [];
        this.#writingReplies = this.#queuedReplies;
        this.#queuedReplies = 0;
        this.#wakeRoom();
        this.writeStartedAt = coarseNow();
        let offset = 0;
        while (offset < bytes.length) {
          offset += await this.#conn.write(bytes.subarray(offset));
          this.#written = this.#writingBase + offset;
        }
        this.#writingBuffer = undefined;
        this.writeStartedAt = 0;
        this.#writingReplies = 0;
        this.#writingBytes = 0;
        this.#stats.messagesOut += count;
        this.#stats.bytesOut += bytes.length;
        this.#counters.messagesOut += count;
        this.#counters.bytesOut += bytes.length;
        // Busy sessions keep their write buffers (a fresh zero-filled MiB
        // per flush costs more than the copy it saves); a huge one is not
        // kept, and silent sessions give theirs back (releaseIdleBuffers).
        if (buffer.length <= RETAIN_WRITE_BYTES) this.#spare = buffer;
        if (notify !== undefined) {
          for (const done of notify) done.resolve();
          notify = undefined;
        }
      }
    } catch (error) {
      this.writeStartedAt = 0;
      const failure = error instanceof SlowConsumerError
        ? error
        : new ConnectionClosedError(
          `Session ${this.id} write failed: ${describeError(error)}`,
          { cause: error },
        );
      this.#fail(failure);
      // The sends of the batch that failed: never written, or not known to be.
      if (notify !== undefined) {
        const reason = this.closeReason instanceof ConnectionClosedError
          ? this.closeReason
          : failure;
        for (const done of notify) done.reject(reason);
      }
    } finally {
      this.#writing = false;
      if (this.#inFlight !== undefined) this.#settleInFlight();
      this.#checkIdle();
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

  /** Lets waiters in, in order, while there is room (all of them, failed, once closed). */
  #wakeRoom(): void {
    const waiters = this.#roomWaiters;
    const open = this.#state !== "closed";
    while (
      waiters.length > 0 &&
      (!open || this.#queued < this.#highWaterMark)
    ) {
      waiters.shift()!(open);
    }
  }

  // ---- inbound --------------------------------------------------------

  /**
   * Reads one chunk. While traffic is light the pending read holds only a
   * small reused buffer (idle sessions stay small) and what it returns is
   * copied into a 16 KiB slab; once a read fills that buffer, reads go
   * straight into a 256 KiB slab until several short reads in a row. Chunks
   * are views into the slabs, which are never reused: a message kept by the
   * user keeps its slab alive, nothing overwrites it.
   */
  async #readChunk(): Promise<Uint8Array | null> {
    const ahead = this.#ahead;
    if (ahead !== undefined) {
      // A read issued by the small-buffer path below, into #slab.
      // (It carries its own slab: releaseIdleBuffers may drop #slab.)
      this.#ahead = undefined;
      const { slab, start } = ahead;
      const n = await ahead.read;
      if (n === null) return null;
      if (this.#slab === slab) this.#slabPos = start + n;
      return new Uint8Array(slab.buffer, start, n);
    }
    if (this.#shortReads < SHORT_READS_TO_IDLE) {
      let slab = this.#slab;
      if (slab === undefined || slab.length - this.#slabPos < MIN_SLAB_READ) {
        slab = this.#slab = new Uint8Array(SLAB_BYTES);
        this.#slabPos = 0;
      }
      const start = this.#slabPos;
      const n = await this.#conn.read(
        new Uint8Array(slab.buffer, start, slab.length - start),
      );
      if (n === null) return null;
      this.#slabPos = start + n;
      if (n < IDLE_READ_BYTES / 2) {
        if (++this.#shortReads === SHORT_READS_TO_IDLE) {
          // Light traffic: let the big slab go once its views are gone.
          this.#slab = undefined;
        }
      } else {
        this.#shortReads = 0;
      }
      return new Uint8Array(slab.buffer, start, n);
    }
    const small = this.#small ??= new Uint8Array(IDLE_READ_BYTES);
    const n = await this.#conn.read(small);
    if (n === null) return null;
    if (n === small.length) {
      this.#shortReads = 0;
      return await this.#readRest(small);
    }
    let copy = this.#copySlab;
    if (copy === undefined || copy.length - this.#copyPos < n) {
      copy = this.#copySlab = new Uint8Array(COPY_SLAB_BYTES);
      this.#copyPos = 0;
    }
    const start = this.#copyPos;
    copy.set(n === small.length ? small : small.subarray(0, n), start);
    this.#copyPos = start + n;
    return new Uint8Array(copy.buffer, start, n);
  }

  /**
   * A read filled the small buffer: traffic has started, and the rest of the
   * burst is most likely waiting in the socket already. Read it into the
   * slab before the first part is dispatched, unless it is not there at
   * once (then it is read next, as `#ahead`).
   *
   * Why: the answers to a burst dispatched in two parts go out in two
   * writes, and the peer answers those in two writes too: the burst stays
   * split for as long as the traffic lasts (measured, 64 requests in flight
   * over one session: half the messages per write, one process 874k ->
   * 1.31M req/s).
   */
  async #readRest(small: Uint8Array): Promise<Uint8Array> {
    let slab = this.#slab;
    const n = small.length;
    if (
      slab === undefined || slab.length - this.#slabPos < MIN_SLAB_READ + n
    ) {
      slab = this.#slab = new Uint8Array(SLAB_BYTES);
      this.#slabPos = 0;
    }
    const start = this.#slabPos;
    slab.set(small, start);
    const rest = start + n;
    this.#slabPos = rest;
    const read = this.#conn.read(
      new Uint8Array(slab.buffer, rest, slab.length - rest),
    );
    // Deno completes a read of bytes already in the socket within two
    // microtask turns; no timer (its ~2 ms would be the cost when nothing
    // follows).
    const more = await Promise.race([read, microtaskTurns()]);
    if (more === undefined) {
      // The rest has not come: the next #readChunk awaits this read.
      this.#ahead = { read, slab, start: rest };
      return new Uint8Array(slab.buffer, start, n);
    }
    if (more === null) {
      this.#ahead = { read: Promise.resolve(null), slab, start: rest };
      return new Uint8Array(slab.buffer, start, n);
    }
    this.#slabPos = rest + more;
    return new Uint8Array(slab.buffer, start, n + more);
  }

  /** Drops read buffers of a session that has been silent (housekeeping). */
  releaseIdleBuffers(): void {
    this.#copySlab = undefined;
    this.#spare = undefined;
    if (this.#queued === 0) this.#out = undefined;
    if (this.#shortReads >= SHORT_READS_TO_IDLE) this.#slab = undefined;
  }

  /**
   * The read loop: read a chunk, decode its messages as one batch, dispatch
   * them. Reading waits while the handlers are at their limit or the write
   * queue is full, so TCP pushes back on the peer.
   *
   * DESIGN.md draws a `ReadableStream` between the read loop and the
   * dispatcher. Measured here (`deno task bench`, 5,000 idle sessions), a
   * pull-based stream over this loop held 14.2 KiB per idle session against
   * 10.8 KiB without it (its controller, reader, queue and the read request
   * left pending), over the 12 KiB target; so the loop decodes in place and
   * hands each batch straight to the dispatcher. The batching `TransformStream`
   * (`decoderStream`) stays exported for users' own byte streams.
   */
  async #run(): Promise<void> {
    const decoder = this.#decoder;
    const stats = this.#stats;
    const counters = this.#counters;
    for (;;) {
      const chunk = await this.#readChunk();
      if (chunk === null) {
        decoder.end?.();
        break;
      }
      if (this.#isClosed()) return;
      this.lastReadAt = coarseNow();
      this.missedHeartbeats = 0;
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
        while (this.#readingPaused()) await this.#slotFree();
        next = this.#dispatchFrom(batch, next);
      }
      if (this.#isClosed()) return;
      // Backpressure from our own write side: a peer that does not read
      // our replies stops being read.
      if (this.#queued >= this.#highWaterMark) {
        await this.#room();
      }
    }
    this.#onEof();
  }

  /**
   * The error for a chunk the decoder refused. When it is the session's
   * first chunk and its bytes are a foreign protocol's (TLS, HTTP, SSH), a
   * `ProtocolMismatchError` that says so, with the decoder's error as
   * `cause`; otherwise the decoder's error. Only the first chunk is sniffed:
   * later bytes do not start at the peer's first byte.
   */
  #firstBytesError(chunk: Uint8Array, error: unknown): unknown {
    if (this.#stats.messagesIn !== 0 || this.#stats.bytesIn !== chunk.length) {
      return error;
    }
    return protocolMismatch(
      chunk,
      this.side,
      formatAddr(this.remoteAddr),
      error,
    ) ?? error;
  }

  /**
   * Dispatches `batch[from]` onwards. Returns the index to go on from once
   * reading may resume, or -1 when the batch is done (or the session
   * closed).
   *
   * Not inlined into `#run`: a loop in an async function that runs for the
   * session's whole life is entered once and only resumed, so V8 optimizes
   * it late (by on-stack replacement); a method called once per read is
   * optimized early. Measured (callgrind, bench/session_micro.ts, client
   * plain): 4,929 -> 4,305 instructions per request over the first 40,000
   * requests, 3,846 -> 3,771 once both are warm (after 200,000).
   */
  #dispatchFrom(batch: unknown[], from: number): number {
    for (let i = from; i < batch.length; i++) {
      if (this.#state === "closed") return -1;
      this.#dispatch(batch[i]);
      if (this.#readingPaused()) return i + 1;
    }
    return -1;
  }

  /**
   * Whether the read loop must wait: held requests reached the handler
   * limit. While this session has requests of its own pending (a handler
   * awaiting an answer from its peer), reading goes on up to a hard cap of
   * held requests, so those answers can arrive.
   */
  #readingPaused(): boolean {
    if (this.#state === "closed") return false;
    const held = this.#held.length;
    const max = this.#maxHandlers;
    if (held < max) return false;
    // Refusing (a forced drain): read on, to refuse what is still coming.
    if (this.#refusing !== undefined) return false;
    return this.pendingCount === 0 || held >= Math.max(HELD_HARD_CAP, max);
  }

  /** Wakes a read loop paused on held requests when that may have changed. */
  #recheckReading(): void {
    const waiter = this.#slotWaiter;
    if (waiter !== undefined && !this.#readingPaused()) {
      this.#slotWaiter = undefined;
      waiter.resolve();
    }
  }

  #slotFree(): Promise<void> {
    this.#slotWaiter ??= Promise.withResolvers<void>();
    return this.#slotWaiter.promise;
  }

  #dispatch(wire: unknown): void {
    const dialect = this.#dialect;
    const correlator = this.#correlator;
    switch (dialect.kind(wire)) {
      case Inbound.Reply:
      case Inbound.Pong: {
        const id = dialect.id(wire)!;
        const entry = this.#pendingFor(correlator.get(id));
        if (entry === undefined) return this.#late(id);
        entry.succeed(dialect.message(wire));
        return;
      }
      case Inbound.Error: {
        const id = dialect.id(wire)!;
        const entry = this.#pendingFor(correlator.get(id));
        if (entry === undefined) return this.#late(id);
        entry.fail(new RemoteError(dialect.errorText(wire)));
        return;
      }
      case Inbound.Request:
      case Inbound.Push:
        return this.#handle(wire);
      case Inbound.Ping:
        this.#enqueue(dialect.pong(wire), undefined);
        return;
      case Inbound.Drain:
        return this.#onDrainFrame();
      case Inbound.Refused: {
        const id = dialect.id(wire)!;
        const entry = this.#pendingFor(correlator.get(id));
        if (entry === undefined) return this.#late(id);
        return this.#refused(entry, wire);
      }
      default:
        return this.#dispatchMessage(wire);
    }
  }

  /** A custom-codec message: a reply if it matches, else for the handler. */
  #dispatchMessage(wire: unknown): void {
    const dialect = this.#dialect;
    if (dialect.mode === "fifo") {
      if (this.#fifoHead < this.#fifo.length) {
        const entry = this.#fifo[this.#fifoHead]!;
        this.#fifo[this.#fifoHead++] = undefined as unknown as Pending;
        if (this.#fifoHead > 1024 && this.#fifoHead * 2 > this.#fifo.length) {
          this.#fifo.splice(0, this.#fifoHead);
          this.#fifoHead = 0;
        }
        if (entry.settled) return this.#late(undefined);
        return this.#settle(entry, wire);
      }
      return this.#handle(wire);
    }
    const correlator = this.#correlator;
    // Nothing pending and no late reply to drop (a server that sends no
    // requests of its own): the message is for the handler, its id unread.
    if (correlator.count === 0 && !correlator.remembersExpired()) {
      return this.#handle(wire);
    }
    const id = dialect.id(wire);
    if (id !== undefined) {
      const entry = this.#pendingFor(correlator.get(id));
      if (entry !== undefined) return this.#settle(entry, wire);
      if (correlator.isExpired(id)) {
        correlator.forgetExpired(id);
        return this.#late(id);
      }
    }
    this.#handle(wire);
  }

  /**
   * The entry a reply may complete. A client's replies may come back on any
   * of its sessions (one table for all); a server's table spans all its
   * clients, so there a reply only counts on the session that was asked —
   * one client cannot answer a request made to another.
   */
  #pendingFor(entry: Pending | undefined): Pending | undefined {
    if (entry === undefined || this.side === "client") return entry;
    return entry.owner === this ? entry : undefined;
  }

  /** Completes a custom-codec request; the codec may call the reply a failure. */
  #settle(entry: Pending, wire: unknown): void {
    const error = this.#codec.replyError?.(wire);
    if (error === undefined) entry.succeed(wire);
    else entry.fail(error);
  }

  /**
   * The peer read our request but will not run it (it is shutting down):
   * send it again elsewhere when it may go anywhere, else fail it as a
   * closed connection whose request is known not to have run.
   */
  #refused(entry: Pending, wire: unknown): void {
    const retry = this.#cfg.retry;
    if (retry !== undefined && entry.retry !== Retry.Never) {
      try {
        return retry(entry, this.#codec.encode(this.#dialect.resend(wire)));
      } catch (error) {
        return entry.fail(error);
      }
    }
    entry.fail(
      new ConnectionClosedError(
        `Session ${this.id}: the peer is shutting down and refused the request unprocessed (it did not run)`,
      ),
    );
  }

  #late(id: unknown): void {
    this.#counters.lateReplies++;
    this.#correlator.lateReplies++;
    this.#cfg.logger.debug("Dropped a reply that matched no pending request", {
      session: this.id,
      id: id === undefined ? undefined : String(id),
    });
  }

  /** Hands a request or push to the handler, or holds it (in order). */
  #handle(wire: unknown): void {
    if (this.#refusing !== undefined) return this.#refuse(wire);
    if (
      this.#gated || this.#held.length > 0 ||
      this.#handlersRunning >= this.#maxHandlers
    ) {
      this.#held.push(wire);
      return;
    }
    this.#invoke(wire);
  }

  /** Runs held messages while the handshake is over and slots are free. */
  #releaseHeld(): void {
    const held = this.#held;
    const max = this.#maxHandlers;
    while (
      !this.#gated && held.length > 0 && this.#handlersRunning < max &&
      this.#state !== "closed"
    ) {
      this.#invoke(held.shift());
    }
    const waiter = this.#slotWaiter;
    if (waiter !== undefined && !this.#readingPaused()) {
      this.#slotWaiter = undefined;
      waiter.resolve();
    }
    this.#checkIdle();
  }

  #invoke(wire: unknown): void {
    const handler = this.#cfg.handler();
    const dialect = this.#dialect;
    const message = dialect.message(wire);
    // Fifo: the answer takes its turn, and holds its handler slot until then.
    const turn = this.#order === undefined ? -1 : this.#order.take();
    if (turn >= 0) this.#handlersRunning++;
    if (handler === undefined) {
      const error = new Error("No handler is set for inbound messages");
      return this.#answer(
        turn,
        this.#failureAnswer(error, wire, message),
        wire,
      );
    }
    let result;
    try {
      result = handler(message, this.#handlerContext(dialect.kind(wire)));
    } catch (error) {
      return this.#answer(
        turn,
        this.#failureAnswer(error, wire, message),
        wire,
      );
    }
    if (result instanceof Promise) {
      if (turn < 0) this.#handlersRunning++;
      result.then(
        (value) => {
          if (turn < 0) this.#handlersRunning--;
          this.#answer(turn, this.#replyAnswer(value ?? undefined, wire), wire);
          this.#releaseHeld();
        },
        (error) => {
          if (turn < 0) this.#handlersRunning--;
          this.#answer(turn, this.#failureAnswer(error, wire, message), wire);
          this.#releaseHeld();
        },
      ).catch((error) => this.#fail(error));
    } else {
      this.#answer(turn, this.#replyAnswer(result ?? undefined, wire), wire);
    }
  }

  /** The wire answer for a handler's value (undefined: nothing to send). */
  #replyAnswer(value: T | undefined, to: unknown): unknown {
    try {
      return this.#dialect.reply(value, to);
    } catch (error) {
      return this.#failureAnswer(error, to, this.#dialect.message(to));
    }
  }

  /**
   * The wire answer for a failed handler: the default protocol's error
   * frame, or what `onHandlerError` maps it to. Counted; logged when it
   * gets no answer.
   */
  #failureAnswer(error: unknown, wire: unknown, message: T): unknown {
    this.#counters.handlerErrors++;
    const dialect = this.#dialect;
    let reply: unknown;
    if (dialect.framed) {
      reply = dialect.error(error, wire);
    } else if (this.#cfg.onHandlerError !== undefined) {
      try {
        reply = this.#cfg.onHandlerError(error, message, this);
      } catch (mapError) {
        error = mapError;
      }
    }
    if (reply === undefined) {
      this.#cfg.logger.error("Handler failed", { session: this.id, error });
    } else {
      this.#cfg.logger.debug("Handler failed; an error reply is sent", {
        session: this.id,
        error,
      });
    }
    return reply;
  }

  /**
   * Sends an answer now, or, with fifo correlation, in its turn: one that
   * finished early is encoded and held until the answers before it left.
   */
  #answer(turn: number, answer: unknown, to: unknown): void {
    const order = this.#order;
    if (turn < 0 || order === undefined) return this.#write(answer, to);
    if (!order.isNext(turn)) {
      return order.hold(turn, this.#encodeAnswer(answer, to));
    }
    this.#handlersRunning--;
    this.#write(answer, to);
    for (
      let next = order.advance();
      next !== NOT_READY;
      next = order.advance()
    ) {
      this.#handlersRunning--;
      if (next !== undefined) this.#writeHeld(next);
    }
  }

  /** An answer's bytes, to hold for its turn (or its error mapping's). */
  #encodeAnswer(answer: unknown, to: unknown): Uint8Array | undefined {
    if (answer === undefined) return undefined;
    try {
      // A copy: a codec may reuse the buffer it encodes into.
      return this.#codec.encode(answer).slice();
    } catch (error) {
      const mapped = this.#failureAnswer(error, to, this.#dialect.message(to));
      try {
        return mapped === undefined
          ? undefined
          : this.#codec.encode(mapped).slice();
      } catch (encodeError) {
        this.#cfg.logger.error("Handler failed", {
          session: this.id,
          error: encodeError,
        });
        return undefined;
      }
    }
  }

  /**
   * Queues an answer. One the codec refuses (too large, unencodable) is
   * answered as a handler failure of `to` (or logged, without `to`).
   */
  #write(answer: unknown, to: unknown): void {
    if (answer === undefined || this.#replyDropped()) return;
    try {
      this.#enqueue(answer, undefined);
      this.#queuedReplies++;
    } catch (error) {
      if (to === undefined) {
        this.#cfg.logger.error("Handler failed", { session: this.id, error });
        return;
      }
      const mapped = this.#failureAnswer(error, to, this.#dialect.message(to));
      if (mapped !== undefined) this.#write(mapped, undefined);
    }
  }

  /** Queues an answer that was encoded while it waited for its turn. */
  #writeHeld(bytes: Uint8Array): void {
    if (this.#replyDropped()) return;
    this.#enqueueBytes(bytes, undefined);
    this.#queuedReplies++;
  }

  #replyDropped(): boolean {
    if (this.#state !== "closed") return false;
    this.#cfg.logger.debug("Dropped a reply: the session is closed", {
      session: this.id,
    });
    return true;
  }

  // ---- lifecycle ------------------------------------------------------

  #onEof(): void {
    this.#eof = true;
    this.#eofWaiter?.resolve();
    this.#markPeerDrained();
    if (this.#state === "closed") return;
    // As Go's net/http: handlers learn that the peer has gone. Their replies
    // are still written if the peer only half-closed.
    this.#abort?.abort(this.#peerGone());
    // The peer will send nothing more: its replies cannot come.
    this.#correlator.failOwner(
      this,
      new ConnectionClosedError(
        `Session ${this.id} ended: the peer closed the connection`,
      ),
      // Only idempotent requests: what is still queued is written to a
      // peer that may have only half-closed, and may run there.
      (entry) => this.#rescueIdempotent(entry),
    );
    // Finish what we owe the peer (handlers, queued writes), then close.
    this.#whenIdle().then(() =>
      this.close(
        this.#state === "draining" ? undefined : new ConnectionClosedError(
          `Session ${this.id} ended: the peer closed the connection`,
        ),
      )
    );
  }

  #fail(error: unknown): void {
    if (this.#state === "closed") return;
    if (
      error instanceof Deno.errors.BadResource ||
      error instanceof Deno.errors.Interrupted
    ) {
      error = new ConnectionClosedError(`Session ${this.id} was closed`, {
        cause: error,
      });
    } else if (
      !(error instanceof ConnectionClosedError) &&
      !(error instanceof SlowConsumerError)
    ) {
      const protocol = error instanceof Error &&
        (error.name === "ProtocolError" ||
          error.name === "FrameTooLargeError" ||
          error.name === "ProxyProtocolError" ||
          error.name === "ProtocolMismatchError");
      if (protocol) {
        this.#counters.protocolErrors++;
        this.#cfg.logger.warn("Closing session: bad input from peer", {
          session: this.id,
          remote: formatAddr(this.remoteAddr),
          error,
        });
      } else {
        error = new ConnectionClosedError(
          `Session ${this.id} failed: ${describeError(error)}`,
          { cause: error },
        );
      }
    }
    this.close(error);
  }

  close(reason?: unknown): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.closeReason = reason;
    try {
      this.#conn.close();
    } catch {
      // Already closed by the runtime.
    }
    const error = reason instanceof ConnectionClosedError
      ? reason
      : new ConnectionClosedError(`Session ${this.id} closed`, {
        cause: reason,
      });
    this.#correlator.failOwner(
      this,
      error,
      (entry) => this.#rescue(entry, error),
    );
    this.#fifo.length = 0;
    this.#fifoHead = 0;
    this.#held = [];
    if (this.#inFlight === undefined) this.#writingBuffer = undefined;
    for (const done of this.#queueNotify) done.reject(error);
    this.#out = this.#spare = undefined;
    this.#outLength = this.#queued = 0;
    this.#queueNotify = [];
    this.#wakeRoom();
    this.#slotWaiter?.resolve();
    this.#slotWaiter = undefined;
    this.#eofWaiter?.resolve();
    this.#markPeerDrained();
    this.#abort?.abort(reason ?? new ClosedError("Session closed"));
    this.#checkIdle();
    this.#cfg.onClose(this);
    this.#resolveClosed();
  }

  /**
   * Hands a request of this closing session to a retry when it cannot have
   * run: its bytes were never handed to the socket (still in #out), or it
   * was never queued (it waited for room: its copy). A request in the write
   * in flight is decided once that write settles (#settleInFlight), where
   * the transport can say exactly what it took. An idempotent request goes
   * again whatever happened. Not used at the peer's end of stream: the
   * queued bytes are still written to a peer that only half-closed.
   */
  #rescue(entry: Pending, error: unknown): boolean {
    const retry = this.#cfg.retry;
    if (retry === undefined || entry.retry === Retry.Never) return false;
    if (entry.start < 0) {
      if (entry.copy === undefined) return false;
      retry(entry, entry.copy);
      return true;
    }
    if (entry.start >= this.#outBase && this.#out !== undefined) {
      retry(
        entry,
        this.#out.slice(entry.start - this.#outBase, entry.end - this.#outBase),
      );
      return true;
    }
    if (
      entry.end > this.#written && this.#writingBuffer !== undefined &&
      entry.start >= this.#writingBase && writesAreExact(this.#conn)
    ) {
      const inFlight = this.#inFlight ??= { entries: [], error };
      inFlight.entries.push(entry);
      return true;
    }
    return this.#rescueIdempotent(entry);
  }

  /** Sends an idempotent request again, whatever happened to it here. */
  #rescueIdempotent(entry: Pending): boolean {
    const retry = this.#cfg.retry;
    if (
      retry === undefined || entry.retry !== Retry.Idempotent ||
      entry.copy === undefined
    ) return false;
    retry(entry, entry.copy);
    return true;
  }

  /**
   * The write in flight when the session closed has settled: requests whose
   * bytes the socket did not take whole go again, the others fail (they
   * may have run), idempotent ones go again in any case.
   */
  #settleInFlight(): void {
    const inFlight = this.#inFlight;
    const writing = this.#writingBuffer;
    this.#inFlight = undefined;
    this.#writingBuffer = undefined;
    if (inFlight === undefined || writing === undefined) return;
    const retry = this.#cfg.retry!;
    for (const entry of inFlight.entries) {
      if (entry.settled || entry.owner !== this) continue;
      if (entry.end > this.#written) {
        retry(
          entry,
          writing.slice(
            entry.start - this.#writingBase,
            entry.end - this.#writingBase,
          ),
        );
      } else if (!this.#rescueIdempotent(entry)) entry.fail(inFlight.error);
    }
  }

  /** Resolves when nothing is owed: no handler running, nothing to write, no own request pending. */
  #whenIdle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #isIdle(): boolean {
    return this.#state === "closed" ||
      (this.#handlersRunning === 0 && this.#held.length === 0 &&
        !this.#writing && this.#queued === 0 &&
        !this.#flushScheduled && this.pendingCount === 0);
  }

  #checkIdle(): void {
    if (this.#idleWaiters.length === 0) return;
    // Pending entries leave `pending` without telling us: poll on each event.
    if (!this.#isIdle()) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const wake of waiters) wake();
  }

  /** A pending request of this session settled (called by the client/server). */
  requestSettled(): void {
    this.#checkIdle();
  }

  #onDrainFrame(): void {
    if (this.#drainSent) {
      // Our drain was acknowledged: every request the peer sent has arrived.
      this.#markPeerDrained();
      return;
    }
    // The peer is going away: stop sending it requests and acknowledge.
    if (this.#state === "ready" || this.#state === "handshaking") {
      this.#state = "draining";
    }
    this.#drainSent = true;
    this.#enqueue(this.#dialect.drain(), undefined);
    this.#markPeerDrained();
    this.#cfg.onPeerDrain(this);
  }

  /**
   * Graceful close: stop taking requests, tell the peer (drain frame, or the
   * `onDrain` hook), let handlers finish and replies flush, wait for our own
   * pending requests, half-close, wait for the peer to close, then close.
   * When `signal` aborts first, the session is closed at once.
   *
   * @returns What was cut by the abort (zeros on a clean drain).
   */
  async drain(
    signal: AbortSignal,
    onDrain?: (session: Session<T>) => void | Promise<void>,
  ): Promise<DrainResult> {
    if (this.#state === "closed") {
      return drained();
    }
    if (this.#state !== "draining") this.#state = "draining";
    const forced = abortPromise(signal);
    try {
      if (this.#dialect.framed) {
        if (!this.#drainSent) {
          this.#drainSent = true;
          this.#enqueue(this.#dialect.drain(), undefined);
        }
        await Promise.race([this.#peerDrained(), forced.promise]);
      } else if (onDrain !== undefined) {
        // A failing hook is logged; the drain goes on.
        const told = Promise.resolve().then(() => onDrain(this)).catch(
          (error) =>
            this.#cfg.logger.error("onDrain failed", {
              session: this.id,
              error,
            }),
        );
        await Promise.race([told, forced.promise]);
      }
      await Promise.race([this.#whenIdle(), forced.promise]);
      if (!this.#isClosed() && !signal.aborted) {
        try {
          await this.#conn.closeWrite();
        } catch {
          // The peer may already be gone.
        }
        await Promise.race([this.#eofSeen(), forced.promise]);
      }
      this.close();
      return drained();
    } catch {
      // Requests never started are answered "not processed", so their
      // requesters may send them elsewhere; the rest (handlers still
      // running, replies not yet written) get no answer.
      const refused = await this.#refuseUnstarted();
      const reasons = this.#busyWith();
      if (refused > 0) {
        reasons.push(`${refused} request(s) not started, refused unprocessed`);
      }
      const cut = {
        forced: true,
        handlers: this.#handlersRunning + this.#held.length +
          this.#queuedReplies + this.#writingReplies,
        refused,
        requests: this.pendingCount,
        reasons,
      };
      this.close(
        new ClosedError(
          `Session ${this.id} was force-closed: the drain timeout passed (${
            reasons.join("; ")
          })`,
          { cause: signal.reason },
        ),
      );
      return cut;
    } finally {
      forced.dispose();
    }
  }

  /** What a drain is still waiting for, in words (for the shutdown report). */
  #busyWith(): string[] {
    const reasons: string[] = [];
    if (this.#dialect.framed && !this.#peerDrainedDone) {
      reasons.push("the peer never answered the drain");
    }
    const running = this.#handlersRunning;
    if (running > 0) reasons.push(`${running} handler(s) still running`);
    const held = this.#held.length;
    if (held > 0) reasons.push(`${held} request(s) not started`);
    const pending = this.pendingCount;
    if (pending > 0) {
      reasons.push(`${pending} request(s) of ours still pending`);
    }
    if (this.#queued > 0 || this.#writing) {
      reasons.push("writes not flushed (the peer is not reading)");
    }
    if (reasons.length === 0) reasons.push("the peer did not close its side");
    return reasons;
  }

  /**
   * A forced drain: answers every request read but not started, and every
   * request the peer sent before its drain answer, with a refusal (they
   * will not run: the requester may send them elsewhere), then waits, for
   * REFUSAL_MS at most, until the peer's drain answer is read and the
   * refusals are written. Returns how many requests were refused.
   */
  async #refuseUnstarted(): Promise<number> {
    if (this.#state === "closed" || !this.#dialect.framed) return 0;
    this.#refusing = { count: 0, written: undefined };
    const held = this.#held;
    this.#held = [];
    for (const wire of held) this.#handle(wire);
    // Reading resumes: what the peer sent before its drain answer is refused.
    this.#recheckReading();
    const gaveUp = Promise.withResolvers<void>();
    const cancel = after(REFUSAL_MS, gaveUp.resolve);
    try {
      await Promise.race([this.#peerDrained(), gaveUp.promise]);
      const written = this.#refusing.written?.promise;
      if (written !== undefined) await Promise.race([written, gaveUp.promise]);
    } catch {
      // The write failed: the peer is gone.
    } finally {
      cancel();
    }
    return this.#refusing.count;
  }

  /** Answers a request "not processed" (a forced drain); holds a push. */
  #refuse(wire: unknown): void {
    const refusing = this.#refusing!;
    const refusal = this.#dialect.refusal(wire);
    if (refusal === undefined || this.#state === "closed") {
      this.#held.push(wire);
      return;
    }
    const written = Promise.withResolvers<void>();
    written.promise.catch(() => {});
    this.#enqueue(refusal, written);
    refusing.written = written;
    refusing.count++;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#state === "closed") return;
    const grace = new AbortController();
    const cancelTimer = after(
      this.#cfg.requestTimeout,
      () => grace.abort(new ClosedError("Session drain timeout")),
    );
    try {
      await this.drain(grace.signal);
    } finally {
      cancelTimer();
    }
  }
}

const noop = (): undefined => undefined;

/** Resolves (to undefined) after a few microtask turns. */
function microtaskTurns(): Promise<undefined> {
  return Promise.resolve(undefined).then(noop).then(noop).then(noop).then(
    noop,
  );
}

/** What a drain that cut nothing reports. */
function drained(): DrainResult {
  return { forced: false, handlers: 0, refused: 0, requests: 0, reasons: [] };
}
