/**
 * What each inbound message means: a reply (or error, pong, refusal) that
 * completes a pending request, a control frame, or a request or push for
 * the handler. Fifo correlation is tracked here: requests in the order they
 * were written, each reply completing the oldest.
 *
 * @module
 */

import type { Codec } from "../framing/codec.ts";
import {
  type Correlator,
  type Pending,
  type PendingOwner,
  Retry,
} from "../_correlation.ts";
import { type Dialect, Inbound } from "./dialect.ts";
import { ConnectionClosedError, RemoteError } from "../errors.ts";
import type { SessionConfig } from "./config.ts";
import type { HandlerGate } from "./handlers.ts";
import type { WriteQueue } from "./write_queue.ts";

/** What the dispatcher needs from its session (the session itself). */
export interface DispatchOwner extends PendingOwner {
  /** The endpoint a client session was dialled to. */
  readonly endpoint: unknown;
  /** The session's number, for logs. */
  readonly id: number;
  /** The peer sent a drain frame. */
  drainFrame(): void;
}

const NO_FIFO: Pending[] = [];

/** Routes each decoded message of one session. */
export class Dispatcher<T> {
  readonly #owner: DispatchOwner;
  readonly #cfg: SessionConfig<T>;
  readonly #dialect: Dialect<T>;
  readonly #codec: Codec<unknown>;
  readonly #correlator: Correlator;
  readonly #gate: HandlerGate<T>;
  readonly #queue: WriteQueue;
  /** Whose replies count: 0 its own session's, 1 its endpoint's, 2 any. */
  readonly #replies: number;
  /**
   * Fifo correlation: requests in the order they were written (other
   * dialects share one empty list: nothing is ever added to it).
   */
  readonly #fifo: Pending[];
  #fifoHead = 0;

  constructor(
    owner: DispatchOwner,
    cfg: SessionConfig<T>,
    gate: HandlerGate<T>,
    queue: WriteQueue,
  ) {
    this.#owner = owner;
    this.#cfg = cfg;
    this.#dialect = cfg.dialect;
    this.#codec = cfg.dialect.codec;
    this.#correlator = cfg.correlator;
    this.#gate = gate;
    this.#queue = queue;
    // Anything but the two wider rules keeps the narrowest.
    this.#replies = cfg.replies === "any"
      ? 2
      : cfg.replies === "endpoint"
      ? 1
      : 0;
    this.#fifo = cfg.dialect.mode === "fifo" ? [] : NO_FIFO;
  }

  /** A fifo request was queued: the next reply not matched is its. */
  expect(entry: Pending): void {
    this.#fifo.push(entry);
  }

  /** Takes back the last expected request (it could not be queued). */
  unexpect(entry: Pending): void {
    if (this.#fifo.at(-1) === entry) this.#fifo.pop();
  }

  /** Fifo requests not answered yet (they have no id). */
  unanswered(): Pending[] {
    return this.#fifo.slice(this.#fifoHead);
  }

  /** The session closed: no reply will come. */
  clear(): void {
    this.#fifo.length = 0;
    this.#fifoHead = 0;
  }

  /**
   * How many of `wires`, read after everything dispatched so far, are
   * requests for the handler (not replies, pushes or control frames),
   * without dispatching them: what a session closed before dispatching
   * them leaves unanswered.
   */
  requestsAmong(wires: readonly unknown[]): number {
    const dialect = this.#dialect;
    let fifoReplies = this.#fifo.length - this.#fifoHead;
    let requests = 0;
    for (const wire of wires) {
      const kind = dialect.kind(wire);
      if (kind === Inbound.Request) requests++;
      else if (kind !== Inbound.Message) continue;
      else if (dialect.mode === "fifo") {
        if (fifoReplies > 0) fifoReplies--;
        else requests++;
      } else {
        const id = dialect.id(wire);
        const reply = id !== undefined &&
          (this.#pendingFor(this.#correlator.get(id)) !== undefined ||
            this.#correlator.isExpired(id));
        if (!reply) requests++;
      }
    }
    return requests;
  }

  dispatch(wire: unknown): void {
    const dialect = this.#dialect;
    switch (dialect.kind(wire)) {
      case Inbound.Reply:
      case Inbound.Pong: {
        const entry = this.#pending(wire);
        if (entry !== undefined) entry.succeed(dialect.message(wire));
        return;
      }
      case Inbound.Error: {
        const entry = this.#pending(wire);
        if (entry !== undefined) {
          entry.fail(new RemoteError(dialect.errorText(wire)));
        }
        return;
      }
      case Inbound.Request:
      case Inbound.Push:
        return this.#gate.handle(wire);
      case Inbound.Ping:
        this.#queue.enqueue(dialect.pong(wire), undefined);
        return;
      case Inbound.Drain:
        return this.#owner.drainFrame();
      case Inbound.Refused: {
        const entry = this.#pending(wire);
        if (entry !== undefined) this.#refused(entry, wire);
        return;
      }
      default:
        return this.#message(wire);
    }
  }

  /** The pending request a framed answer completes (or it is late). */
  #pending(wire: unknown): Pending | undefined {
    const id = this.#dialect.id(wire)!;
    const entry = this.#pendingFor(this.#correlator.get(id));
    if (entry === undefined) this.#late(id);
    return entry;
  }

  /** A custom-codec message: a reply if it matches, else for the handler. */
  #message(wire: unknown): void {
    if (this.#dialect.mode === "fifo") {
      if (this.#fifoHead < this.#fifo.length) return this.#fifoReply(wire);
      return this.#gate.handle(wire);
    }
    const correlator = this.#correlator;
    // Nothing pending and no late reply to drop (a server that sends no
    // requests of its own): the message is for the handler, its id unread.
    if (correlator.count === 0 && !correlator.remembersExpired()) {
      return this.#gate.handle(wire);
    }
    const id = this.#dialect.id(wire);
    if (id !== undefined) {
      const entry = this.#pendingFor(correlator.get(id));
      if (entry !== undefined) return this.#settle(entry, wire);
      if (correlator.isExpired(id)) {
        correlator.forgetExpired(id);
        return this.#late(id);
      }
    }
    this.#gate.handle(wire);
  }

  /** The reply to the oldest fifo request. */
  #fifoReply(wire: unknown): void {
    const entry = this.#fifo[this.#fifoHead]!;
    this.#fifo[this.#fifoHead++] = undefined as unknown as Pending;
    if (this.#fifoHead > 1024 && this.#fifoHead * 2 > this.#fifo.length) {
      this.#fifo.splice(0, this.#fifoHead);
      this.#fifoHead = 0;
    }
    if (entry.settled) return this.#late(undefined);
    this.#settle(entry, wire);
  }

  /**
   * The entry a reply may complete. A client's replies may come back on
   * another of its sessions to the same endpoint (hosts that answer on
   * another link), but not from another endpoint, which could otherwise
   * answer requests it was never sent; a server's table spans all its
   * clients, so there a reply only counts on the session that was asked.
   */
  #pendingFor(entry: Pending | undefined): Pending | undefined {
    if (entry === undefined) return undefined;
    const owner = entry.owner;
    if (owner === this.#owner || this.#replies === 2) return entry;
    if (this.#replies === 0) return undefined;
    const endpoint = (owner as { endpoint?: unknown }).endpoint;
    return endpoint !== undefined && endpoint === this.#owner.endpoint
      ? entry
      : undefined;
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
        `Session ${this.#owner.id}: the peer is shutting down and refused the request unprocessed (it did not run)`,
      ),
    );
  }

  #late(id: unknown): void {
    this.#cfg.counters.lateReplies++;
    this.#correlator.lateReplies++;
    this.#cfg.logger.debug("Dropped a reply that matched no pending request", {
      session: this.#owner.id,
      id: id === undefined ? undefined : String(id),
    });
  }
}
