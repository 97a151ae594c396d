/**
 * A server-wide budget for the bytes its sessions buffer: frames in
 * progress, decoded messages waiting for a handler slot, queued writes.
 * Per-session limits multiply with the number of peers; this bounds their
 * sum. When it is exceeded, the sessions buffering the most stop reading
 * (TCP pushes back on their peers). They read again once the total has
 * fallen to half the budget; those paused for longer than the grace period
 * while it has not are cut off, biggest first, until it has.
 *
 * Sessions report what they hold at their own pace (after each decoded
 * slice of a read, and when they close); the budget's timer, armed only
 * while some session is paused, asks paused ones again.
 *
 * @module
 */

import { MemoryBudgetError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { withResolvers } from "../_util.ts";

/** A session as the budget sees it. */
export interface BudgetUser {
  readonly id: number;
  /** Bytes last reported (see {@linkcode MemoryBudget.report}). */
  accounted: number;
  /** `performance.now()` when the budget paused its reading; 0 = reading. */
  pausedAt: number;
  /** Measures what it holds now and reports it. */
  remeasure(): void;
  /** Its reading may go on. */
  resumeReading(): void;
  /** Closes it with `reason`. */
  close(reason: unknown): void;
}

/** The session an account belongs to. */
export interface AccountOwner {
  readonly id: number;
  isClosed(): boolean;
  close(reason: unknown): void;
}

/**
 * One session's share of the budget: what its read side last said it
 * buffers, with its held requests and queued writes. Made when a session
 * of a server with a budget first reads.
 */
export class BudgetAccount implements BudgetUser {
  accounted = 0;
  pausedAt = 0;
  readonly #budget: MemoryBudget;
  readonly #session: AccountOwner;
  readonly #gate: { readonly held: number };
  readonly #queue: { readonly bytes: number };
  #partial = 0;
  #undispatched = 0;
  #perMessage = 0;
  /** The read loop waits on it while the budget pauses it. */
  #resume: PromiseWithResolvers<void> | undefined;

  constructor(
    budget: MemoryBudget,
    session: AccountOwner,
    gate: { readonly held: number },
    queue: { readonly bytes: number },
  ) {
    this.#budget = budget;
    this.#session = session;
    this.#gate = gate;
    this.#queue = queue;
  }

  get id(): number {
    return this.#session.id;
  }

  /**
   * The read side buffers `partial` bytes of a message in progress and
   * `undispatched` decoded messages of `perMessage` bytes each (0: as
   * before). Returns a promise to wait on while the budget pauses reading.
   */
  report(
    partial: number,
    undispatched: number,
    perMessage: number,
  ): Promise<void> | undefined {
    this.#partial = partial;
    this.#undispatched = undispatched;
    if (perMessage > 0) this.#perMessage = perMessage;
    if (!this.#budget.report(this, this.#measure())) return undefined;
    return (this.#resume ??= withResolvers<void>()).promise;
  }

  #measure(): number {
    return this.#partial +
      (this.#gate.held + this.#undispatched) * this.#perMessage +
      this.#queue.bytes;
  }

  remeasure(): void {
    if (!this.#session.isClosed()) {
      this.#budget.report(this, this.#measure());
    }
  }

  resumeReading(): void {
    const resume = this.#resume;
    this.#resume = undefined;
    resume?.resolve();
  }

  close(reason: unknown): void {
    this.#session.close(reason);
  }

  /** The session closed: it holds nothing, and its read loop is let go. */
  leave(): void {
    this.#budget.leave(this);
    this.resumeReading();
  }
}

/** Paused sessions read again once the total falls to this share of the limit. */
const RESUME_SHARE = 0.5;
/**
 * While the budget is exceeded, a session that buffers more than this
 * share of it (at most {@linkcode PAUSE_FLOOR_BYTES}) stops reading when it
 * next reports; below it (a client in plain request/reply) it reads on.
 */
const PAUSE_FLOOR_SHARE = 1 / 32;
const PAUSE_FLOOR_BYTES = 64 * 1024;

/** What {@linkcode MemoryBudget.stats} reports. */
export interface BudgetStats {
  /** Bytes buffered by all sessions now (as last reported). */
  bufferedBytes: number;
  /** The most ever buffered at once. */
  bufferedPeak: number;
  /** Times a session's reading was paused by the budget. */
  budgetPauses: number;
  /** Sessions cut off by the budget. */
  budgetCuts: number;
}

/** The budget shared by the sessions of one server. */
export class MemoryBudget {
  readonly limit: number;
  readonly #floor: number;
  readonly #grace: number;
  readonly #logger: Logger;
  /** Sessions holding bytes (accounted > 0). */
  readonly #users = new Set<BudgetUser>();
  readonly #paused = new Set<BudgetUser>();
  #used = 0;
  /** Of #used, what paused sessions hold. */
  #pausedBytes = 0;
  #peak = 0;
  #pauses = 0;
  #cuts = 0;
  #timer: ReturnType<typeof setInterval> | undefined;

  /**
   * @param limit Bytes all sessions may buffer together.
   * @param grace Milliseconds a paused session is given before it may be
   * cut off, while the budget stays exceeded.
   */
  constructor(limit: number, grace: number, logger: Logger) {
    this.limit = limit;
    this.#floor = Math.min(PAUSE_FLOOR_BYTES, limit * PAUSE_FLOOR_SHARE);
    this.#grace = grace;
    this.#logger = logger;
  }

  /** Bytes buffered now, as last reported. */
  get used(): number {
    return this.#used;
  }

  stats(): BudgetStats {
    return {
      bufferedBytes: this.#used,
      bufferedPeak: this.#peak,
      budgetPauses: this.#pauses,
      budgetCuts: this.#cuts,
    };
  }

  /**
   * A session holds `bytes` now. Returns whether it must pause its reading
   * (the budget is exceeded and it is among the biggest users).
   */
  report(user: BudgetUser, bytes: number): boolean {
    const delta = bytes - user.accounted;
    if (delta !== 0) {
      user.accounted = bytes;
      this.#used += delta;
      if (user.pausedAt > 0) this.#pausedBytes += delta;
      if (bytes === 0) this.#users.delete(user);
      else if (bytes === delta) this.#users.add(user);
      if (this.#used > this.#peak) this.#peak = this.#used;
    }
    if (this.#used > this.limit) this.#overLimit(user);
    else if (this.#paused.size > 0) this.#maybeResume();
    return user.pausedAt > 0;
  }

  /** A session closed: it holds nothing any more. */
  leave(user: BudgetUser): void {
    if (user.pausedAt > 0) {
      this.#pausedBytes -= user.accounted;
      this.#paused.delete(user);
      user.pausedAt = 0;
    }
    this.#used -= user.accounted;
    user.accounted = 0;
    this.#users.delete(user);
    if (this.#paused.size === 0) this.#stopTimer();
    else this.#maybeResume();
  }

  /** Stops the timer (the server has stopped). */
  close(): void {
    this.#stopTimer();
  }

  /**
   * The budget is exceeded: the reporting session stops reading if it
   * buffers more than the floor, and so does every bigger one, so that
   * the total stops growing while sessions that buffer little (plain
   * request/reply) read on.
   */
  #overLimit(user: BudgetUser): void {
    if (user.pausedAt > 0 || user.accounted <= this.#floor) return;
    const now = performance.now();
    for (const other of this.#users) {
      if (other.pausedAt > 0 || other.accounted < user.accounted) continue;
      other.pausedAt = now;
      this.#paused.add(other);
      this.#pausedBytes += other.accounted;
      this.#pauses++;
      this.#logger.debug("Pausing a session's reading: memory budget", {
        session: other.id,
        buffered: other.accounted,
        total: this.#used,
        limit: this.limit,
      });
    }
    this.#timer ??= setInterval(
      () => this.#tick(),
      Math.max(10, Math.min(1000, this.#grace / 4)),
    );
  }

  /** Lets paused sessions read again once the total is low enough. */
  #maybeResume(): void {
    if (this.#used > this.limit * RESUME_SHARE) return;
    for (const user of [...this.#paused]) {
      this.#paused.delete(user);
      this.#pausedBytes -= user.accounted;
      user.pausedAt = 0;
      user.resumeReading();
    }
    this.#stopTimer();
  }

  /**
   * While paused sessions remain: measure them again; if the total has not
   * fallen to where they may resume, cut those paused for longer than the
   * grace period, biggest first, until it has (a paused peer inside a
   * large frame cannot finish it, so waiting would not help).
   */
  #tick(): void {
    for (const user of [...this.#paused]) user.remeasure();
    const resumeAt = this.limit * RESUME_SHARE;
    if (this.#used <= resumeAt) return this.#maybeResume();
    const now = performance.now();
    const due = [...this.#paused].filter((user) =>
      now - user.pausedAt >= this.#grace
    );
    due.sort((a, b) => b.accounted - a.accounted);
    for (const user of due) {
      if (this.#used <= resumeAt) break;
      const error = new MemoryBudgetError(
        `Cutting off session ${user.id}: it buffers ${user.accounted} bytes, and the server's memory budget (${this.limit} bytes) has been exhausted for ${this.#grace} ms`,
      );
      this.#cuts++;
      this.#logger.warn(error.message, {
        session: user.id,
        buffered: user.accounted,
        total: this.#used,
        limit: this.limit,
      });
      user.close(error);
    }
  }

  #stopTimer(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
