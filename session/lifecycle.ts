/**
 * Where a session is in its life, in one place.
 *
 * | state | entered when | own requests | inbound messages | next |
 * | --- | --- | --- | --- | --- |
 * | handshaking | connected | only the handshake's | held | ready, draining, closed |
 * | ready | the handshake is over | routed to it | run | draining, closed |
 * | draining | either end began a drain | none new | run (what came before) | closed |
 * | closed | `close()` | fail | dropped | — |
 *
 * A drain moves through three facts, each set once: we `told` the peer
 * (our drain frame, or our answer to its drain, is queued: no request of
 * ours may follow), the peer `drained` (its drain answer or its own drain
 * arrived: every request it will send has arrived), and the peer `ended`
 * its side (end of stream).
 *
 * @module
 */

import type { SessionState } from "./types.ts";

/** A fact that is false until it becomes true once, with waiters. */
class Latch {
  done = false;
  #waiter: PromiseWithResolvers<void> | undefined;

  /** Resolves once the fact holds. */
  wait(): Promise<void> {
    if (this.done) return Promise.resolve();
    return (this.#waiter ??= Promise.withResolvers<void>()).promise;
  }

  set(): void {
    this.done = true;
    this.#waiter?.resolve();
  }
}

/** A session's state and the progress of its drain. */
export class Lifecycle {
  state: SessionState = "handshaking";
  /** Our drain (or drain answer) is queued. */
  told = false;
  /** The peer answered our drain, or drained itself (or ended). */
  readonly drained: Latch = new Latch();
  /** The peer ended its side. */
  readonly ended: Latch = new Latch();

  /** The handshake is over (unless a drain or close came first). */
  ready(): void {
    if (this.state === "handshaking") this.state = "ready";
  }

  /** A drain began, ours or the peer's. Returns false once closed. */
  drain(): boolean {
    if (this.state === "closed") return false;
    this.state = "draining";
    return true;
  }

  /** The peer ended its side: it will drain nothing more either. */
  end(): void {
    this.ended.set();
    this.drained.set();
  }

  /** Closes; returns false when it was closed already. */
  close(): boolean {
    if (this.state === "closed") return false;
    this.state = "closed";
    this.ended.set();
    this.drained.set();
    return true;
  }
}

/**
 * Waiters for "nothing is owed" (no handler running, nothing to write, no
 * own request pending). Pending entries and writes settle without telling
 * the session which event it waits for: it checks on each of them.
 */
export class IdleWatch {
  readonly #idle: () => boolean;
  #waiters: (() => void)[] = [];

  constructor(idle: () => boolean) {
    this.#idle = idle;
  }

  /** Resolves once idle. */
  wait(): Promise<void> {
    if (this.#idle()) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Wakes the waiters if idle now. */
  check(): void {
    if (this.#waiters.length === 0 || !this.#idle()) return;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }
}
