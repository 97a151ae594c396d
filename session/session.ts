/**
 * One connection: the lifecycle over a reader, a dispatcher, a handler gate
 * and a write queue, each its own file.
 *
 * The pipeline: an own `read()` loop into slabs (reader.ts), decoded
 * synchronously per read into one batch of messages, each handed to the
 * dispatcher (dispatcher.ts): replies complete pending requests, requests
 * and pushes go through the handler gate (handlers.ts); answers, pushes and
 * requests (outbound.ts) go to a bounded queue encoded into one buffer and
 * written with one `write()` per burst (write_queue.ts). The state is in
 * lifecycle.ts; a graceful close in drain.ts; what a closing session's
 * requests become in rescue.ts.
 *
 * @module
 */

import type { FrameDecoder } from "../framing/codec.ts";
import { formatAddr, type Transport } from "../connection.ts";
import { type Pending, type PendingOwner, Retry } from "../_correlation.ts";
import { after, coarseNow } from "../_timeouts.ts";
import type { Batch } from "../_batch.ts";
import { callTimeout, describeError, withResolvers } from "../_util.ts";
import {
  ClosedError,
  ConnectionClosedError,
  SlowConsumerError,
} from "../errors.ts";
import type { DrainResult, EncodedRequest, SessionConfig } from "./config.ts";
import { Dispatcher, type DispatchOwner } from "./dispatcher.ts";
import {
  type Draining,
  drainingOf,
  drainOnce,
  finishThenClose,
  peerDrained,
  peerEnded,
} from "./drain.ts";
import { BudgetAccount } from "./budget.ts";
import { type GateOwner, HandlerGate } from "./handlers.ts";
import { Lifecycle } from "./lifecycle.ts";
import { Outbound, type OutboundOwner } from "./outbound.ts";
import { SlabReader } from "./reader.ts";
import { Rescue } from "./rescue.ts";
import type {
  PeerCertificate,
  ProxyInfo,
  RequestOptions,
  SendOptions,
  Session,
  SessionState,
  SessionStats,
} from "./types.ts";
import { WriteQueue, type WriteQueueOwner } from "./write_queue.ts";
import { readLoop } from "./read_loop.ts";
import { failure } from "./failure.ts";

export type { DrainResult, EncodedRequest, SessionConfig } from "./config.ts";

let nextSessionId = 1;

/** What housekeeping knows of a session's liveness. */
export interface Liveness {
  /** `coarseNow()` of the last read (any bytes: the peer is sending). */
  lastReadAt: number;
  /**
   * `coarseNow()` when a read last finished a message: what `idleTimeout`
   * counts from, so bytes that never finish a frame keep no session.
   */
  lastMessageAt: number;
  /** Heartbeats sent without an answer, in a row. */
  missed: number;
  /** A heartbeat is out. */
  pinging: boolean;
}

/**
 * The session implementation shared by client and server. @internal
 *
 * It wires its parts and holds the lifecycle; the parts call back into it
 * through the small methods at the end ("for the session's parts") rather
 * than through adapter objects, whose objects and closures every idle
 * connection would pay for.
 */
export class SessionImpl<T>
  implements
    Session<T>,
    PendingOwner,
    WriteQueueOwner,
    GateOwner<T>,
    OutboundOwner,
    DispatchOwner {
  readonly id: number = nextSessionId++;
  readonly side: "client" | "server";
  readonly localAddr: Deno.Addr;
  readonly closed: Promise<void>;
  /** Requests sent on this session and not settled yet. */
  pendingCount = 0;
  /** The endpoint a client session was dialled to (set by its slot). */
  endpoint: unknown = undefined;
  closeReason: unknown = undefined;
  /** Read and written by the housekeeping tick only. */
  readonly liveness: Liveness = {
    lastReadAt: coarseNow(),
    lastMessageAt: coarseNow(),
    missed: 0,
    pinging: false,
  };
  #remoteAddr: Deno.Addr;
  #peerCertificate: PeerCertificate | undefined;
  #proxy: ProxyInfo | undefined;
  readonly #life: Lifecycle = new Lifecycle(this);
  readonly #conn: Transport;
  readonly #cfg: SessionConfig<T>;
  readonly #decoder: FrameDecoder<unknown>;
  readonly #reader: SlabReader;
  readonly #queue: WriteQueue;
  readonly #gate: HandlerGate<T>;
  readonly #dispatcher: Dispatcher<T>;
  readonly #outbound: Outbound<T>;
  /** Made when a closing session first decides what its requests become. */
  #rescue: Rescue | undefined;
  readonly #resolveClosed: () => void;
  /** Made when a drain (either side's) or the peer's end first needs it. */
  #draining: Draining<T> | undefined;
  #stats = { messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0 };
  /** Its share of the server's memory budget, made when it first reads. */
  #account: BudgetAccount | undefined;

  constructor(conn: Transport, cfg: SessionConfig<T>) {
    this.#conn = conn;
    this.#cfg = cfg;
    this.side = cfg.side;
    this.localAddr = conn.localAddr;
    this.#remoteAddr = conn.remoteAddr;
    this.#decoder = cfg.dialect.codec.decoder();
    this.#reader = new SlabReader(conn);
    // The parts call back into the session itself (its methods under "for
    // the session's parts"), not through adapter objects: every object and
    // closure here is paid by each idle connection.
    const queue = this.#queue = new WriteQueue(
      conn,
      cfg.dialect.codec,
      this,
      cfg.highWaterMark,
      cfg.maxWriteBytes,
    );
    const gate = this.#gate = new HandlerGate<T>(this, cfg, queue);
    const dispatcher = this.#dispatcher = new Dispatcher<T>(
      this,
      cfg,
      gate,
      queue,
    );
    this.#outbound = new Outbound<T>(this, {
      cfg,
      queue,
      dispatcher,
      gate,
    });
    const { promise, resolve } = withResolvers<void>();
    this.closed = promise;
    this.#resolveClosed = resolve;
  }

  get state(): SessionState {
    return this.#life.state;
  }

  get remoteAddr(): Deno.Addr {
    return this.#remoteAddr;
  }

  get peerCertificate(): PeerCertificate | undefined {
    return this.#peerCertificate;
  }

  get proxy(): ProxyInfo | undefined {
    return this.#proxy;
  }

  /** `performance.now()` when the write in flight started, or 0. */
  get writeStartedAt(): number {
    return this.#queue.writeStartedAt;
  }

  /**
   * What the server learnt of the peer before the session starts: the
   * PROXY header (whose source becomes `remoteAddr`) and the verified
   * client certificate.
   */
  identify(
    proxy: ProxyInfo | undefined,
    certificate: PeerCertificate | undefined,
  ): void {
    this.#proxy = proxy;
    if (proxy?.source !== undefined) this.#remoteAddr = proxy.source;
    this.#peerCertificate = certificate;
  }

  /** Its fifo requests not answered yet (they have no id). */
  unkeyed(): Iterable<Pending> {
    return this.#dispatcher.unanswered();
  }

  /** Starts reading. Inbound messages flow from now on. */
  start(): void {
    readLoop(
      this,
      this.#reader,
      this.#decoder,
      this.#dispatcher,
      this.#gate,
      this.#queue,
      this.#cfg.counters,
      this.#stats,
    ).catch((error) => this.#fail(error));
  }

  /** Marks the session ready for routing (after the handshake). */
  markReady(): void {
    if (this.#life.state === "closed") return;
    this.#life.ready();
    // Messages that came in during the handshake go to the handler now
    // (also when a drain began meanwhile: they were accepted).
    this.#gate.open();
  }

  stats(): SessionStats {
    return {
      ...this.#stats,
      pending: this.pendingCount,
      handlersRunning: this.#gate.running,
      queued: this.#queue.queued,
    };
  }

  request(message: T, options?: RequestOptions): Promise<T> {
    const state = this.#life.state;
    if (state === "closed" || state === "draining") {
      return Promise.reject(
        new ConnectionClosedError(
          `Cannot send request: session ${this.id} is ${state}`,
          { cause: this.closeReason },
        ),
      );
    }
    let timeout: number | undefined;
    try {
      timeout = callTimeout(options?.timeout);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.requestOn(message, timeout, options?.signal, false);
  }

  /**
   * Registers and writes a request. Used by the client router and the
   * heartbeat too (a heartbeat may go on a draining session). `retry` says
   * whether the request may be sent again elsewhere (see {@linkcode Retry}).
   */
  requestOn(
    message: T,
    timeout: number | undefined,
    signal: AbortSignal | undefined,
    heartbeat: boolean,
    retry: number = Retry.Never,
  ): Promise<T> {
    return this.#outbound.request(message, timeout, signal, heartbeat, retry);
  }

  /** Registers and writes a batch's requests (see `Outbound.pipeline`). */
  pipelineOn(batch: Batch<T>): void {
    this.#outbound.pipeline(batch);
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
    return this.#outbound.requestEncoded(request, timeout, signal, retry);
  }

  /**
   * Takes over a request another session could not deliver (a retry): it
   * keeps its id, deadline and signal, and is sent as `bytes`.
   */
  adopt(entry: Pending, bytes: Uint8Array): void {
    this.#outbound.adopt(entry, bytes);
  }

  send(message: T, options?: SendOptions): Promise<void> {
    let wire: unknown;
    try {
      wire = this.#cfg.dialect.push(message);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#outbound.push(wire, undefined, options?.signal);
  }

  /** Sends a push encoded ahead (it waited for a session: see `Client.send`). */
  sendEncoded(
    bytes: Uint8Array,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    return this.#outbound.push(undefined, bytes, signal);
  }

  /** Queues a push without waiting (broadcast); cuts off a peer over the byte limit. */
  pushNow(message: T): boolean {
    if (this.#life.state === "closed") return false;
    // A message the codec refuses throws to the caller (broadcast) before
    // anything is queued.
    this.#queue.enqueue(this.#cfg.dialect.push(message), undefined);
    return true;
  }

  /** Called by the housekeeping tick when a write stalled too long. */
  stalled(ms: number): void {
    this.#cutOff(`a write has not completed for ${Math.round(ms)} ms`);
  }

  /** Drops the buffers of a session that has been silent (housekeeping). */
  releaseIdleBuffers(): void {
    this.#reader.releaseIdle();
    this.#queue.releaseIdle();
  }

  /** A pending request of this session settled (called by its entry). */
  requestSettled(): void {
    this.#life.checkIdle();
  }

  /** @internal What the read side buffers (see read_loop.ts). */
  buffered(
    partial: number,
    undispatched: number,
    perMessage: number,
  ): Promise<void> | undefined {
    const budget = this.#cfg.budget;
    if (budget === undefined) return undefined;
    this.#account ??= new BudgetAccount(budget, this, this.#gate, this.#queue);
    return this.#account.report(partial, undispatched, perMessage);
  }

  /** @internal The peer sent bad bytes: finish what came before, then close. */
  badInput(error: unknown): void {
    if (this.#life.state === "closed") return;
    const reason = failure(
      error,
      this.id,
      formatAddr(this.#remoteAddr),
      this.#cfg,
    );
    finishThenClose(this.#drainParts(), reason);
  }

  #fail(error: unknown): void {
    if (this.#life.state === "closed") return;
    this.close(
      failure(error, this.id, formatAddr(this.#remoteAddr), this.#cfg),
    );
  }

  close(reason?: unknown): void {
    if (!this.#life.close()) return;
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
    const rescue = this.#rescuer();
    this.#cfg.correlator.failOwner(
      this,
      error,
      (entry) => rescue.atClose(entry, error),
    );
    this.#dispatcher.clear();
    this.#gate.close();
    this.#queue.clear(error, rescue.waiting);
    // Last: an abort listener that sends meets a queue already closed.
    this.#gate.stopHandlers(reason ?? new ClosedError("Session closed"));
    this.#life.checkIdle();
    this.#account?.leave();
    this.#cfg.onClose(this);
    this.#resolveClosed();
  }

  /** Closes a peer that does not read what it is sent. */
  #cutOff(why: string): void {
    const error = new SlowConsumerError(
      `Cutting off session ${this.id} (${
        formatAddr(this.#remoteAddr)
      }): ${why}`,
    );
    this.#cfg.logger.warn(error.message, { session: this.id });
    this.close(error);
  }

  /**
   * Graceful close (see drain.ts): stop taking requests, tell the peer, let
   * in-flight work finish, half-close, close. When `signal` aborts first,
   * the session is closed at once.
   *
   * @returns What was cut by the abort (zeros on a clean drain).
   */
  drain(
    signal: AbortSignal,
    onDrain?: (session: Session<T>) => void | Promise<void>,
    endWithin?: number,
  ): Promise<DrainResult> {
    return drainOnce(this.#drainParts(), signal, onDrain, endWithin);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#life.state === "closed") return;
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

  // ---- for the session's parts (internal) ------------------------------

  /** @internal Whether the session has closed. */
  isClosed(): boolean {
    return this.#life.state === "closed";
  }

  /** @internal Nothing is owed: no handler, no write, no own request. */
  isIdle(): boolean {
    return this.#life.state === "closed" ||
      (this.#gate.idle && this.#queue.idle && this.pendingCount === 0);
  }

  /** @internal Something the session may be waiting for became true. */
  checkIdle(): void {
    this.#life.checkIdle();
  }

  /** @internal An unexpected failure: the session closes with it. */
  fail(error: unknown): void {
    this.#fail(error);
  }

  /** @internal The write queue would pass maxWriteBytes. */
  overLimit(why: string): void {
    this.#cutOff(why);
  }

  /** @internal A batch was written. */
  wrote(messages: number, bytes: number): void {
    const stats = this.#stats;
    const counters = this.#cfg.counters;
    stats.messagesOut += messages;
    stats.bytesOut += bytes;
    counters.messagesOut += messages;
    counters.bytesOut += bytes;
  }

  /** @internal A write failed: closes; what the failed batch's sends reject with. */
  writeFailed(error: unknown): unknown {
    const closing = error instanceof SlowConsumerError
      ? error
      : new ConnectionClosedError(
        `Session ${this.id} write failed: ${describeError(error)}`,
        { cause: error },
      );
    this.#fail(closing);
    return this.closeReason instanceof ConnectionClosedError
      ? this.closeReason
      : closing;
  }

  /** @internal The write loop stopped. */
  flushEnded(): void {
    if (this.#rescue?.waiting) this.#rescue.settle();
    this.#life.checkIdle();
  }

  /** @internal Why handlers should stop (closed, or the peer ended), once they should. */
  gone(): unknown {
    const life = this.#life;
    if (life.state === "closed") {
      return this.closeReason ?? new ClosedError("Session closed");
    }
    if (!life.ended) return undefined;
    return new ConnectionClosedError(
      `Session ${this.id}: the peer closed its side`,
    );
  }

  /** @internal The peer sent a drain frame. */
  drainFrame(): void {
    peerDrained(this.#drainParts());
  }

  /** @internal The peer ended its side. */
  ended(): void {
    peerEnded(this.#drainParts());
  }

  /** @internal Sends a request of this closing session elsewhere, if it may. */
  rescue(entry: Pending, error: unknown): boolean {
    return this.#rescuer().atClose(entry, error);
  }

  #rescuer(): Rescue {
    return this.#rescue ??= new Rescue(
      this,
      this.#conn,
      this.#queue,
      this.#cfg.retry,
    );
  }

  /** @internal Our drain (or drain answer) is queued. */
  drainSent(): boolean {
    return this.#life.told;
  }

  /** @internal The error for an operation on a closed session. */
  closedError(what: string): ConnectionClosedError {
    return new ConnectionClosedError(
      `Cannot ${what}: session ${this.id} is closed`,
      { cause: this.closeReason },
    );
  }

  #drainParts(): Draining<T> {
    return this.#draining ??= drainingOf(
      this,
      this.#life,
      this.#gate,
      this.#queue,
      this.#conn,
      this.#cfg,
      (entry) => this.#rescuer().idempotent(entry),
    );
  }
}
