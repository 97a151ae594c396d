/**
 * The pending-request table: one per client (replies may come back on any of
 * its sessions) or per server. Each entry settles exactly once: reply, error,
 * timeout, abort, or the death of its session.
 *
 * Deadlines cost nothing per request: one timer is armed for the earliest
 * deadline; when it fires it scans the pending entries, expires those due
 * and re-arms for the next. With steady traffic and one timeout value that
 * is one scan per timeout period, over the requests then in flight. A
 * request's own timer would cost a `setTimeout`/`clearTimeout` pair: on Deno a
 * timer per request costs more than the request's own work.
 *
 * @module
 */

import type { CorrelationId } from "./framing/codec.ts";
import { DuplicateIdError, TimeoutError } from "./errors.ts";
import { MAX_TIMER_DELAY, Timeouts } from "./_timeouts.ts";

/** What a pending entry needs from the session that sent it. */
export interface PendingOwner {
  /** Entries sent on this session and not yet settled. */
  pendingCount: number;
  /** Told after one of its entries settled. */
  requestSettled(): void;
  /** Its unsettled entries that have no id (fifo correlation). */
  unkeyed(): Iterable<Pending>;
}

/**
 * The requests made in one run of synchronous work (a burst) share one clock
 * reading, taken in a microtask queued behind them: see `Correlator.add`.
 */
class Burst {
  /** `performance.now()` when the burst ended, or -1 until then. */
  start = -1;
  /** The table of its requests (kept here, not in each entry). */
  readonly table: Correlator;

  constructor(table: Correlator) {
    this.table = table;
  }
}

/** A request's abort signal and the listener it holds on it. */
interface AbortLink {
  readonly signal: AbortSignal;
  listener: (() => void) | undefined;
}

/** Whether a request may be sent again on another session. */
export const Retry = {
  /** Never: it was sent on a session the caller chose (or is a heartbeat). */
  Never: 0,
  /** Only when it is known that the peer did not process it. */
  Unprocessed: 1,
  /** Also when it may have run: the caller marked it idempotent. */
  Idempotent: 2,
} as const;

/**
 * Where the outcomes of a batch's requests go (see `_batch.ts`): its entries
 * make no promise of their own.
 */
export interface Sink {
  /** The request at `index` of the batch settled. */
  settle(index: number, ok: boolean, value: unknown): void;
  /** Calls `fn` once the request at `index` has settled. */
  watch(index: number, fn: () => void): void;
}

/** One request waiting for its reply. */
export class Pending {
  /** Index in the correlator's list of entries without an id, or -1. */
  slot = -1;
  settled = false;
  /** One of {@linkcode Retry}. */
  retry = 0;
  /**
   * Where its bytes are in its session's outbound byte stream (from `start`
   * to `end`), or -1 while they are not queued: bytes the socket never took
   * whole did not reach the peer whole, so the request did not run.
   */
  start = -1;
  end = -1;
  /** Its wire bytes, kept only while it waits for room or when idempotent. */
  copy: Uint8Array | undefined = undefined;
  /** Its deadline counts from the end of this burst. */
  readonly burst: Burst;
  readonly id: CorrelationId | undefined;
  /** The session it is sent on (it moves when the request is retried). */
  owner: PendingOwner;
  readonly timeout: number;
  resolve: ((value: unknown) => void) | undefined = undefined;
  reject: ((reason: unknown) => void) | undefined = undefined;
  /** Its reply; undefined for a batch's entry (its outcome goes to `sink`). */
  readonly promise: Promise<unknown> | undefined;
  /** The batch it is one of, or undefined. */
  readonly sink: Sink | undefined;
  /** Its place in its batch. */
  readonly index: number;
  /** Only for requests with a signal: one field, not two, in every entry. */
  #abort: AbortLink | undefined;

  constructor(
    burst: Burst,
    id: CorrelationId | undefined,
    owner: PendingOwner,
    timeout: number,
    signal: AbortSignal | undefined,
    sink: Sink | undefined,
    index: number,
  ) {
    this.burst = burst;
    this.id = id;
    this.owner = owner;
    this.timeout = timeout;
    this.sink = sink;
    this.index = index;
    if (sink !== undefined) {
      // One promise serves the whole batch: none per entry.
      this.promise = undefined;
      if (signal !== undefined) this.#abort = { signal, listener: undefined };
      return;
    }
    // The executor stores the functions into this (young) entry. Handing
    // them over through module variables would spare the executor's closure
    // but store two young functions into an old object, the module's
    // context: two write-barrier calls per request, which cost more than the
    // closure they would save. No `Promise.withResolvers()` either: its
    // result object is one more allocation.
    this.promise = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    if (signal !== undefined) this.#abort = { signal, listener: undefined };
  }

  /** Calls `fn` once it has settled (either way). */
  onSettled(fn: () => void): void {
    if (this.promise !== undefined) this.promise.then(fn, fn);
    else this.sink!.watch(this.index, fn);
  }

  /** Starts listening to its signal (once it is in the table). */
  listen(): void {
    const link = this.#abort!;
    link.listener = () => this.fail(link.signal.reason);
    link.signal.addEventListener("abort", link.listener, { once: true });
  }

  /**
   * `performance.now()` ms after which it times out; -1 while its burst
   * has not been stamped.
   */
  get deadline(): number {
    const start = this.burst.start;
    return start < 0 ? -1 : start + this.timeout;
  }

  /** Moves to another owner (a retry), keeping its id, deadline and signal. */
  move(owner: PendingOwner): void {
    const from = this.owner;
    from.pendingCount--;
    from.requestSettled();
    owner.pendingCount++;
    this.owner = owner;
    this.start = this.end = -1;
  }

  /** Deadline passed. */
  expire(): void {
    if (this.settled) return;
    this.burst.table.timedOut++;
    this.#finish();
    this.burst.table.rememberExpired(this.id);
    this.#rejectWith(
      new TimeoutError(
        `Request ${
          this.id === undefined ? "" : `${String(this.id)} `
        }timed out after ${this.timeout} ms`,
        { timeout: this.timeout },
      ),
    );
  }

  /** Completes with a reply. */
  succeed(value: unknown): void {
    if (this.settled) return;
    this.#finish();
    const sink = this.sink;
    if (sink === undefined) this.resolve!(value);
    else sink.settle(this.index, true, value);
  }

  /** Completes with an error. */
  fail(reason: unknown): void {
    if (this.settled) return;
    this.#finish();
    const signal = this.#abort?.signal;
    if (signal?.aborted && reason === signal.reason) {
      this.burst.table.rememberExpired(this.id);
    }
    this.#rejectWith(reason);
  }

  #rejectWith(reason: unknown): void {
    const sink = this.sink;
    if (sink === undefined) this.reject!(reason);
    else sink.settle(this.index, false, reason);
  }

  #finish(): void {
    this.settled = true;
    this.burst.table.release(this);
    this.owner.pendingCount--;
    this.owner.requestSettled();
    const link = this.#abort;
    if (link?.listener !== undefined) {
      link.signal.removeEventListener("abort", link.listener);
      link.listener = undefined;
    }
  }
}

/**
 * Pending entries by id. Unsigned 32-bit integer ids (the default protocol's,
 * and most codecs') live in an open-addressing table of plain slots; other ids
 * in a `Map`.
 *
 * Why not a `Map` for all: a `Map` that sees one insert and one delete per
 * request rehashes every few dozen requests, and V8 links each retired table
 * to its successor (for live iterators). Once one retired table has been
 * promoted, that chain keeps every later table, and the entries and replies
 * they held, alive through scavenges: much of what a request allocates is
 * then promoted and left to the mark-compactor, which becomes a large share
 * of the client's CPU. Slots cleared on delete hold nothing once an entry is
 * gone.
 */
export class IdTable {
  #slots: (Pending | undefined)[] = new Array(16).fill(undefined);
  #shift = 28;
  #mask = 15;
  #count = 0;
  #other: Map<CorrelationId, Pending> | undefined;

  #home(id: number): number {
    return Math.imul(id, 0x9e37_79b1) >>> this.#shift;
  }

  get(id: CorrelationId): Pending | undefined {
    if (typeof id === "number" && id >>> 0 === id) {
      const slots = this.#slots;
      const mask = this.#mask;
      for (let i = this.#home(id);; i = (i + 1) & mask) {
        const entry = slots[i];
        if (entry === undefined) return undefined;
        if (entry.id === id) return entry;
      }
    }
    return this.#other?.get(id);
  }

  /**
   * Adds an entry, unless an entry with its id is in the table: then it
   * adds nothing and returns false. (One probe does both.)
   */
  add(entry: Pending): boolean {
    const id = entry.id!;
    if (typeof id !== "number" || id >>> 0 !== id) {
      const other = this.#other ??= new Map();
      if (other.has(id)) return false;
      other.set(id, entry);
      return true;
    }
    if ((this.#count + 1) * 2 > this.#slots.length) {
      this.#resize(this.#slots.length * 2);
    }
    const slots = this.#slots;
    const mask = this.#mask;
    for (let i = this.#home(id);; i = (i + 1) & mask) {
      const found = slots[i];
      if (found === undefined) {
        slots[i] = entry;
        this.#count++;
        return true;
      }
      if (found.id === id) return false;
    }
  }

  #place(entry: Pending, id: number): void {
    const slots = this.#slots;
    const mask = this.#mask;
    let i = this.#home(id);
    while (slots[i] !== undefined) i = (i + 1) & mask;
    slots[i] = entry;
  }

  /** Removes this entry (not another one with the same id). */
  delete(entry: Pending): void {
    const id = entry.id!;
    if (typeof id !== "number" || id >>> 0 !== id) {
      if (this.#other?.get(id) === entry) this.#other.delete(id);
      return;
    }
    const slots = this.#slots;
    const mask = this.#mask;
    let i = this.#home(id);
    for (;; i = (i + 1) & mask) {
      const found = slots[i];
      if (found === undefined) return;
      if (found === entry) break;
    }
    // Backward-shift deletion: pull later entries of the probe run into
    // the hole when their home slot allows it.
    for (let j = (i + 1) & mask;; j = (j + 1) & mask) {
      const next = slots[j];
      if (next === undefined) break;
      const home = this.#home(next.id as number);
      const stays = i <= j ? i < home && home <= j : i < home || home <= j;
      if (!stays) {
        slots[i] = next;
        i = j;
      }
    }
    slots[i] = undefined;
    this.#count--;
    if (this.#slots.length > 1024 && this.#count * 8 < this.#slots.length) {
      this.#resize(this.#slots.length / 2);
    }
  }

  #resize(capacity: number): void {
    const old = this.#slots;
    this.#slots = new Array(capacity).fill(undefined);
    this.#mask = capacity - 1;
    this.#shift = 32 - Math.log2(capacity);
    for (const entry of old) {
      if (entry !== undefined) this.#place(entry, entry.id as number);
    }
  }

  /** A snapshot of the entries. */
  values(): Pending[] {
    const out: Pending[] = [];
    for (const entry of this.#slots) if (entry !== undefined) out.push(entry);
    if (this.#other !== undefined) out.push(...this.#other.values());
    return out;
  }
}

/** Queued entries first, in stream order; then those never queued. */
function byQueueOrder(a: Pending, b: Pending): number {
  if (a.start < 0 || b.start < 0) {
    return (a.start < 0 ? 1 : 0) - (b.start < 0 ? 1 : 0);
  }
  return a.start - b.start;
}

/** How late (ms) a sweep may run to spare re-arming the timer. */
const SWEEP_SLACK = 10;

/** Size of the memory of recently expired ids (late replies are dropped). */
const EXPIRED_MEMORY = 10_000;

/** The table of pending requests keyed by correlation id. */
export class Correlator {
  /** Deadlines of other waits (requests waiting for a session). */
  readonly timeouts: Timeouts = new Timeouts();
  readonly #byId = new IdTable();
  /**
   * Entries without an id (fifo correlation), each at its `slot`. An array
   * with swap-removal, not a `Set`: see {@linkcode IdTable} for what a
   * `Set`'s retired tables cost.
   */
  readonly #unkeyed: Pending[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #armedFor = Infinity;
  #closed = false;
  readonly #expired = new Set<CorrelationId>();
  #nextId = 1;
  /** The burst requests are added to, until its stamp runs. */
  #burst: Burst | undefined;
  /** The shortest timeout of the requests of #burst. */
  #burstTimeout = Infinity;
  /** Requests that timed out. */
  timedOut = 0;
  /** Replies that came after their request had settled. */
  lateReplies = 0;

  /** Pending requests (fifo ones included). */
  count = 0;

  /** A fresh u32 id not used by a pending request. */
  nextId(): number {
    for (;;) {
      const id = this.#nextId;
      this.#nextId = id === 0xffff_ffff ? 1 : id + 1;
      if (this.#byId.get(id) === undefined) return id;
    }
  }

  /**
   * Registers a request. `id` undefined = fifo (matched by order by the
   * session). Throws {@linkcode DuplicateIdError} when the id is pending.
   */
  add(
    id: CorrelationId | undefined,
    owner: PendingOwner,
    timeout: number,
    signal: AbortSignal | undefined,
    sink?: Sink,
    index = 0,
  ): Pending {
    if (signal?.aborted) throw signal.reason;
    // The deadline counts from a clock reading taken after the request was
    // made: one reading for the requests of a burst, in a microtask queued
    // behind them (`performance.now()` is an op call on Deno, not free). A
    // reading from before the request (a cached clock) would let a burst of
    // synchronous work shorten deadlines; this one can only lengthen them,
    // by the rest of the burst. Entries share the burst's reading, so
    // stamping costs nothing per request.
    let burst = this.#burst;
    if (burst === undefined) {
      burst = this.#burst = new Burst(this);
      queueMicrotask(this.#stamp);
    }
    if (timeout < this.#burstTimeout) this.#burstTimeout = timeout;
    const entry = new Pending(
      burst,
      id,
      owner,
      timeout,
      signal,
      sink,
      index,
    );
    if (id !== undefined) {
      if (!this.#byId.add(entry)) throw new DuplicateIdError(id);
      if (this.#expired.size > 0) this.#expired.delete(id);
    } else {
      entry.slot = this.#unkeyed.length;
      this.#unkeyed.push(entry);
    }
    // A batch listens once for all its entries (see `_batch.ts`).
    if (signal !== undefined && sink === undefined) entry.listen();
    owner.pendingCount++;
    this.count++;
    return entry;
  }

  /** Ends the current burst: its requests' deadlines count from now. */
  #stamp = (): void => {
    const burst = this.#burst!;
    this.#burst = undefined;
    burst.start = performance.now();
    const earliest = burst.start + this.#burstTimeout;
    this.#burstTimeout = Infinity;
    // Re-arm only for a deadline clearly earlier than the armed one: the
    // sweep may then run up to one granule late, never early.
    if (earliest < this.#armedFor - SWEEP_SLACK) this.#arm(earliest);
  };

  /** The pending entry for an id, if any. */
  get(id: CorrelationId): Pending | undefined {
    return this.#byId.get(id);
  }

  /** Whether a reply with this id would be a late one. */
  isExpired(id: CorrelationId): boolean {
    return this.#expired.has(id);
  }

  /** Whether any id is remembered as expired (see {@linkcode isExpired}). */
  remembersExpired(): boolean {
    return this.#expired.size > 0;
  }

  /** Drops an id from the expired memory (its late reply arrived). */
  forgetExpired(id: CorrelationId): void {
    this.#expired.delete(id);
  }

  /** Forgets a settled entry. */
  release(entry: Pending): void {
    const id = entry.id;
    if (id === undefined) {
      const unkeyed = this.#unkeyed;
      const last = unkeyed.pop()!;
      if (last !== entry) {
        unkeyed[entry.slot] = last;
        last.slot = entry.slot;
      }
      entry.slot = -1;
    } else this.#byId.delete(entry);
    this.count--;
  }

  #arm(deadline: number): void {
    if (this.#closed) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#armedFor = deadline;
    const wait = Math.min(
      MAX_TIMER_DELAY,
      Math.max(0, deadline - performance.now()),
    );
    this.#timer = setTimeout(this.#sweep, wait);
  }

  /** Expires what is due and arms the timer for the next deadline. */
  #sweep = (): void => {
    this.#timer = undefined;
    this.#armedFor = Infinity;
    const now = performance.now();
    const due: Pending[] = [];
    let next = Infinity;
    for (const entries of [this.#byId.values(), this.#unkeyed.slice()]) {
      for (const entry of entries) {
        const deadline = entry.deadline;
        // Unstamped (-1): its stamp arms the timer.
        if (deadline < 0) continue;
        if (deadline <= now) due.push(entry);
        else if (deadline < next) next = deadline;
      }
    }
    for (const entry of due) entry.expire();
    if (next !== Infinity && next < this.#armedFor) this.#arm(next);
  };

  /** Remembers an id whose request gave up, to drop its late reply. */
  rememberExpired(id: CorrelationId | undefined): void {
    if (id === undefined) return;
    this.#expired.add(id);
    if (this.#expired.size > EXPIRED_MEMORY) {
      const oldest = this.#expired.values().next().value;
      if (oldest !== undefined) this.#expired.delete(oldest);
    }
  }

  /**
   * Fails every entry of an owner (its session died), except those `rescue`
   * takes over (it sends them again elsewhere). They are offered in the
   * order they were queued, so a retried fifo pipeline keeps its order.
   */
  failOwner(
    owner: PendingOwner,
    reason: unknown,
    rescue?: (entry: Pending) => boolean,
  ): void {
    if (owner.pendingCount === 0) return;
    const doomed: Pending[] = [];
    for (const entry of this.#byId.values()) {
      if (entry.owner === owner) doomed.push(entry);
    }
    for (const entry of owner.unkeyed()) {
      if (!entry.settled && entry.owner === owner) doomed.push(entry);
    }
    if (rescue !== undefined) doomed.sort(byQueueOrder);
    for (const entry of doomed) {
      if (rescue === undefined || !rescue(entry)) entry.fail(reason);
    }
  }

  /** Stops the sweep timer. */
  close(): void {
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.timeouts.close();
  }
}
