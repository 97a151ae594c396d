/**
 * The inbound side of a session after dispatch: the gate in front of the
 * handler (held while the handshake runs or the handlers are at their
 * limit), the handler calls, and their answers — in request order for fifo
 * correlation, refused "not processed" during a forced drain.
 *
 * @module
 */

import { type Dialect, type DirectFrames, Inbound } from "./dialect.ts";
import { NOT_READY, ReplyOrder } from "./reply_order.ts";
import type { SessionConfig } from "./config.ts";
import type { Done, WriteQueue } from "./write_queue.ts";
import type { HandlerContext, MessageKind, Session } from "./types.ts";
import { withResolvers } from "../_util.ts";

/** Held requests past which reading stops even while own requests wait. */
const HELD_HARD_CAP = 1024;

/** No message held: one empty list shared by every idle session. */
const NONE_HELD: unknown[] = [];

/** What the gate needs from its session (the session itself). */
export interface GateOwner<T> extends Session<T> {
  /** The session's own requests still pending. */
  readonly pendingCount: number;
  isClosed(): boolean;
  /**
   * Why handlers should stop, once they should: the session closed, or the
   * peer ended its side (undefined while neither).
   */
  gone(): unknown;
  /** Something the session may be waiting for became true. */
  checkIdle(): void;
  /** An unexpected failure: the session closes with it. */
  fail(error: unknown): void;
}

/** A forced drain's refusals. */
interface Refusing {
  count: number;
  /** The last refusal's write. */
  written: Done;
}

/**
 * Runs inbound requests and pushes through the handler, at most
 * `maxConcurrentHandlers` at once; the rest are held in order, and past
 * that the read loop pauses (TCP pushes back on the peer).
 */
export class HandlerGate<T> {
  readonly #owner: GateOwner<T>;
  readonly #cfg: SessionConfig<T>;
  readonly #dialect: Dialect<T>;
  readonly #queue: WriteQueue;
  readonly #max: number;
  /** Fifo correlation: answers leave in request order. */
  readonly #order: ReplyOrder | undefined;
  /**
   * Requests and pushes not yet handed to the handler: held while the
   * handshake (onConnect) runs, or while the handlers are at their limit.
   * Replies keep being read meanwhile, so a handler that waits for an
   * answer from its own peer does not block reading.
   */
  #held: unknown[] = NONE_HELD;
  /** True until open(): messages for the handler are held. */
  #gated = true;
  /** Handlers running (with fifo: and answers waiting for their turn). */
  running = 0;
  #slotWaiter: PromiseWithResolvers<void> | undefined;
  /** Handler contexts by inbound kind, made on first use. */
  #contexts: (HandlerContext<T> | undefined)[] | undefined;
  /** Set once a forced drain refuses the requests it will not run. */
  #refusing: Refusing | undefined;
  /** Behind the handlers' signal, made on first use. */
  #abort: AbortController | undefined;
  /** The dialect's direct encoder: replies are built in the write buffer. */
  readonly #direct: DirectFrames<T> | undefined;

  constructor(owner: GateOwner<T>, cfg: SessionConfig<T>, queue: WriteQueue) {
    this.#owner = owner;
    this.#cfg = cfg;
    this.#dialect = cfg.dialect;
    this.#queue = queue;
    this.#max = cfg.maxConcurrentHandlers;
    this.#order = cfg.dialect.mode === "fifo" ? new ReplyOrder() : undefined;
    this.#direct = cfg.dialect.direct;
  }

  /** Messages held, not yet handed to the handler. */
  get held(): number {
    return this.#held.length;
  }

  /** Requests held (not pushes): they never ran. */
  get heldRequests(): number {
    let requests = 0;
    for (const wire of this.#held) {
      if (this.#dialect.kind(wire) !== Inbound.Push) requests++;
    }
    return requests;
  }

  /** Whether no handler runs and nothing is held. */
  get idle(): boolean {
    return this.running === 0 && this.#held.length === 0;
  }

  /** The handshake is over: held messages go to the handler now. */
  open(): void {
    this.#gated = false;
    this.release();
  }

  /** Hands a request or push to the handler, or holds it (in order). */
  handle(wire: unknown): void {
    if (this.#refusing !== undefined) return this.#refuse(wire);
    if (this.#gated || this.#held.length > 0 || this.running >= this.#max) {
      return this.#hold(wire);
    }
    this.#invoke(wire);
  }

  #hold(wire: unknown): void {
    if (this.#held === NONE_HELD) this.#held = [];
    this.#held.push(wire);
  }

  /** Runs held messages while the gate is open and slots are free. */
  release(): void {
    const held = this.#held;
    const owner = this.#owner;
    while (
      !this.#gated && held.length > 0 && this.running < this.#max &&
      !owner.isClosed()
    ) {
      this.#invoke(held.shift());
    }
    this.recheckReading();
    owner.checkIdle();
  }

  /**
   * Whether the read loop must wait: held requests reached the handler
   * limit. While the session has requests of its own pending (a handler
   * awaiting an answer from its peer), reading goes on up to a hard cap of
   * held requests, so those answers can arrive.
   */
  readingPaused(): boolean {
    const held = this.#held.length;
    const max = this.#max;
    if (held < max) return false;
    // Refusing (a forced drain): read on, to refuse what is still coming.
    if (this.#refusing !== undefined || this.#owner.isClosed()) return false;
    return this.#owner.pendingCount === 0 ||
      held >= Math.max(HELD_HARD_CAP, max);
  }

  /** Wakes a read loop paused on held requests when that may have changed. */
  recheckReading(): void {
    const waiter = this.#slotWaiter;
    if (waiter !== undefined && !this.readingPaused()) {
      this.#slotWaiter = undefined;
      waiter.resolve();
    }
  }

  /** Resolves when the read loop may go on (see {@linkcode readingPaused}). */
  slotFree(): Promise<void> {
    this.#slotWaiter ??= withResolvers<void>();
    return this.#slotWaiter.promise;
  }

  /** The session closed: nothing held runs, the read loop is let go. */
  close(): void {
    this.#held = NONE_HELD;
    this.#slotWaiter?.resolve();
    this.#slotWaiter = undefined;
  }

  /** Aborts the handlers' signal (the peer has gone, or the session closed). */
  stopHandlers(reason: unknown): void {
    this.#abort?.abort(reason);
  }

  /** The signal handlers get: aborted once the session or the peer is gone. */
  #signal(): AbortSignal {
    const abort = this.#abort ??= new AbortController();
    if (!abort.signal.aborted) {
      const gone = this.#owner.gone();
      if (gone !== undefined) abort.abort(gone);
    }
    return abort.signal;
  }

  /**
   * A forced drain: from now on every request held or arriving is answered
   * "not processed" (pushes stay held). Returns the refusals so far.
   */
  refuseAll(): Refusing {
    const refusing = this.#refusing = { count: 0, written: undefined };
    const held = this.#held;
    this.#held = NONE_HELD;
    for (const wire of held) this.handle(wire);
    this.recheckReading();
    return refusing;
  }

  /** Answers a request "not processed" (a forced drain); holds a push. */
  #refuse(wire: unknown): void {
    const refusing = this.#refusing!;
    const refusal = this.#dialect.refusal(wire);
    if (refusal === undefined || this.#owner.isClosed()) {
      return this.#hold(wire);
    }
    const written = withResolvers<void>();
    written.promise.catch(() => {});
    this.#queue.enqueue(refusal, written);
    this.#queue.queuedRefusals++;
    refusing.written = written;
    refusing.count++;
  }

  #invoke(wire: unknown): void {
    const handler = this.#cfg.handler();
    const dialect = this.#dialect;
    const message = dialect.message(wire);
    // Fifo: the answer takes its turn, and holds its handler slot until then.
    const turn = this.#order === undefined ? -1 : this.#order.take();
    if (turn >= 0) this.running++;
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
      result = handler(message, this.#context(dialect.kind(wire)));
    } catch (error) {
      return this.#answer(
        turn,
        this.#failureAnswer(error, wire, message),
        wire,
      );
    }
    if (result instanceof Promise) {
      if (turn < 0) this.running++;
      result.then(
        (value) => {
          if (turn < 0) this.running--;
          this.#reply(turn, value ?? undefined, wire, message);
          this.release();
        },
        (error) => {
          if (turn < 0) this.running--;
          this.#answer(turn, this.#failureAnswer(error, wire, message), wire);
          this.release();
        },
      ).catch((error) => this.#owner.fail(error));
    } else {
      this.#reply(turn, result ?? undefined, wire, message);
    }
  }

  /**
   * Answers a handler's value. A reply to a request of a dialect with a
   * direct encoder, not waiting for its turn, is framed straight into the
   * write buffer; the rest take the general way (a wire message, then
   * `#answer`).
   */
  #reply(turn: number, value: T | undefined, to: unknown, message: T): void {
    const direct = this.#direct;
    const dialect = this.#dialect;
    if (
      turn >= 0 || direct === undefined || value === undefined ||
      dialect.kind(to) !== Inbound.Request
    ) {
      return this.#answer(turn, this.#replyAnswer(value, to), to);
    }
    if (this.#replyDropped()) return;
    const queue = this.#queue;
    try {
      queue.enqueueDirect(
        direct,
        Inbound.Reply,
        dialect.id(to) as number,
        value,
      );
      queue.queuedReplies++;
    } catch (error) {
      // Refused before anything was queued: answered as a failure.
      const mapped = this.#failureAnswer(error, to, message);
      if (mapped !== undefined) this.#write(mapped, to);
    }
  }

  /** The context handed to handlers; its signal is made on first use. */
  #context(inbound: number): HandlerContext<T> {
    const contexts = this.#contexts ??= [];
    let context = contexts[inbound];
    if (context === undefined) {
      const kind: MessageKind = inbound === Inbound.Request
        ? "request"
        : inbound === Inbound.Push
        ? "push"
        : "message";
      context = {
        ...this.#cfg.context,
        session: this.#owner as Session<T>,
        kind,
        expectsReply: kind !== "push",
      } as HandlerContext<T>;
      Object.defineProperty(context, "signal", { get: () => this.#signal() });
      contexts[inbound] = context;
    }
    return context;
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
    const cfg = this.#cfg;
    cfg.counters.handlerErrors++;
    let reply: unknown;
    if (this.#dialect.framed) {
      reply = this.#dialect.error(error, wire);
    } else if (cfg.onHandlerError !== undefined) {
      try {
        reply = cfg.onHandlerError(error, message, this.#owner);
      } catch (mapError) {
        error = mapError;
      }
    }
    const session = this.#owner.id;
    if (reply === undefined) {
      cfg.logger.error("Handler failed", { session, error });
    } else {
      cfg.logger.debug("Handler failed; an error reply is sent", {
        session,
        error,
      });
    }
    return reply;
  }

  /**
   * Sends an answer now, or, with fifo correlation, in its turn: one that
   * finished early is encoded and held until the answers before it left.
   * After the session closed answers still take their turns (written
   * nowhere), so the count of running handlers stays right.
   */
  #answer(turn: number, answer: unknown, to: unknown): void {
    const order = this.#order;
    if (turn < 0 || order === undefined) return this.#write(answer, to);
    if (!order.isNext(turn)) {
      return order.hold(turn, this.#encodeAnswer(answer, to));
    }
    this.running--;
    this.#write(answer, to);
    for (
      let next = order.advance();
      next !== NOT_READY;
      next = order.advance()
    ) {
      this.running--;
      if (next !== undefined) this.#writeHeld(next);
    }
  }

  /** An answer's bytes, to hold for its turn (or its error mapping's). */
  #encodeAnswer(answer: unknown, to: unknown): Uint8Array | undefined {
    if (answer === undefined) return undefined;
    const codec = this.#dialect.codec;
    try {
      // A copy: a codec may reuse the buffer it encodes into.
      return codec.encode(answer).slice();
    } catch (error) {
      const mapped = this.#failureAnswer(error, to, this.#dialect.message(to));
      try {
        return mapped === undefined ? undefined : codec.encode(mapped).slice();
      } catch (encodeError) {
        this.#cfg.logger.error("Handler failed", {
          session: this.#owner.id,
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
      this.#queue.enqueue(answer, undefined);
      this.#queue.queuedReplies++;
    } catch (error) {
      if (to === undefined) {
        this.#cfg.logger.error("Handler failed", {
          session: this.#owner.id,
          error,
        });
        return;
      }
      const mapped = this.#failureAnswer(error, to, this.#dialect.message(to));
      if (mapped !== undefined) this.#write(mapped, undefined);
    }
  }

  /** Queues an answer that was encoded while it waited for its turn. */
  #writeHeld(bytes: Uint8Array): void {
    if (this.#replyDropped()) return;
    this.#queue.enqueueBytes(bytes, undefined);
    this.#queue.queuedReplies++;
  }

  #replyDropped(): boolean {
    if (!this.#owner.isClosed()) return false;
    this.#cfg.logger.debug("Dropped a reply: the session is closed", {
      session: this.#owner.id,
    });
    return true;
  }
}
