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
import { withResolvers } from "../_util.ts";

/** A session's state, the progress of its drain, and its idle waiters. */
export class Lifecycle {
  state: SessionState = "handshaking";
  /** Our drain (or drain answer) is queued. */
  told = false;
  /** The peer answered our drain, or drained itself (or ended). */
  drained = false;
  /** The peer ended its side. */
  ended = false;
  // Waiters are made on demand: an idle session holds none.
  #drainedWaiter: PromiseWithResolvers<void> | undefined;
  #endedWaiter: PromiseWithResolvers<void> | undefined;
  #idleWaiters: (() => void)[] | undefined;
  readonly #of: { isIdle(): boolean };

  /** `of` says whether nothing is owed (see {@linkcode whenIdle}). */
  constructor(of: { isIdle(): boolean }) {
    this.#of = of;
  }

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

  /** Resolves once the peer drained (or ended, or the session closed). */
  whenDrained(): Promise<void> {
    if (this.drained) return Promise.resolve();
    return (this.#drainedWaiter ??= withResolvers<void>()).promise;
  }

  /** The peer drained: every request it will send has arrived. */
  peerDrained(): void {
    this.drained = true;
    this.#drainedWaiter?.resolve();
  }

  /** Resolves once the peer ended its side (or the session closed). */
  whenEnded(): Promise<void> {
    if (this.ended || this.state === "closed") return Promise.resolve();
    return (this.#endedWaiter ??= withResolvers<void>()).promise;
  }

  /** The peer ended its side: it will drain nothing more either. */
  end(): void {
    this.ended = true;
    this.#endedWaiter?.resolve();
    this.peerDrained();
  }

  /** Closes; returns false when it was closed already. */
  close(): boolean {
    if (this.state === "closed") return false;
    this.state = "closed";
    this.#endedWaiter?.resolve();
    this.peerDrained();
    return true;
  }

  /**
   * Resolves once nothing is owed (no handler running, nothing to write, no
   * own request pending). Pending entries and writes settle without telling
   * the session which event it waits for: it calls {@linkcode checkIdle} on
   * each of them.
   */
  whenIdle(): Promise<void> {
    if (this.#of.isIdle()) return Promise.resolve();
    return new Promise((resolve) => (this.#idleWaiters ??= []).push(resolve));
  }

  /** Wakes the idle waiters if nothing is owed now. */
  checkIdle(): void {
    const waiters = this.#idleWaiters;
    if (waiters === undefined || !this.#of.isIdle()) return;
    this.#idleWaiters = undefined;
    for (const wake of waiters) wake();
  }
}
