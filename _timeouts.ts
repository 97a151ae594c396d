/**
 * Deadlines kept in coarse buckets and swept by one timer, so a request
 * costs a Set insert and delete instead of a `setTimeout`/`clearTimeout`
 * pair: on Deno a timer per request costs more than the request's own work.
 * Deadlines fire within one granule (10 ms) after they pass.
 *
 * @module
 */

/** The longest delay `setTimeout` honours (longer ones fire at once). */
export const MAX_TIMER_DELAY = 0x7fff_ffff;

/**
 * Calls `fn` after `ms` milliseconds; `Infinity` never does. Delays past
 * what `setTimeout` takes are chained. Returns the canceller.
 */
export function after(ms: number, fn: () => void): () => void {
  if (ms === Infinity) return () => {};
  let timer: ReturnType<typeof setTimeout>;
  const deadline = performance.now() + ms;
  const arm = (wait: number) => {
    timer = setTimeout(() => {
      const left = deadline - performance.now();
      if (left > 1) arm(left);
      else fn();
    }, Math.min(MAX_TIMER_DELAY, Math.max(0, wait)));
  };
  arm(ms);
  return () => clearTimeout(timer);
}

let cachedNow = -1;
const invalidate = () => {
  cachedNow = -1;
};

/**
 * `performance.now()`, read once per burst of microtasks: requests made in
 * one burst share one reading (on Deno each reading is an op call). Good
 * enough for deadlines swept in 10 ms granules and for idle checks.
 */
export function coarseNow(): number {
  if (cachedNow < 0) {
    cachedNow = performance.now();
    queueMicrotask(invalidate);
  }
  return cachedNow;
}

/** Something with a deadline. */
export interface Timed {
  /** Absolute deadline, `performance.now()` milliseconds. */
  deadline: number;
  /** Bucket key; owned by {@linkcode Timeouts}. */
  tick: number;
  /** Called once when the deadline has passed (the item is already removed). */
  expire(): void;
}

/** A set of deadlines swept by a single timer. */
export class Timeouts {
  readonly #granule: number;
  readonly #buckets = new Map<number, Set<Timed>>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #armedTick = Infinity;
  #closed = false;

  /** @param granule Bucket width in milliseconds. */
  constructor(granule = 10) {
    this.#granule = granule;
  }

  /** Adds an item; `item.deadline` must be set. */
  add(item: Timed): void {
    const tick = Math.ceil(item.deadline / this.#granule);
    item.tick = tick;
    let bucket = this.#buckets.get(tick);
    if (bucket === undefined) {
      bucket = new Set();
      this.#buckets.set(tick, bucket);
    }
    bucket.add(item);
    if (tick < this.#armedTick && !this.#closed) this.#arm(tick);
  }

  /** Removes an item before its deadline. The timer is left to lapse. */
  delete(item: Timed): void {
    const bucket = this.#buckets.get(item.tick);
    if (bucket === undefined) return;
    bucket.delete(item);
    if (bucket.size === 0) this.#buckets.delete(item.tick);
  }

  /** Clears the timer; items left are dropped without expiring. */
  close(): void {
    this.#closed = true;
    this.#buckets.clear();
    this.#disarm();
  }

  #arm(tick: number): void {
    this.#disarm();
    this.#armedTick = tick;
    const wait = Math.min(
      MAX_TIMER_DELAY,
      Math.max(0, tick * this.#granule - performance.now()),
    );
    this.#timer = setTimeout(() => this.#sweep(), wait);
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#armedTick = Infinity;
  }

  #sweep(): void {
    this.#timer = undefined;
    this.#armedTick = Infinity;
    const now = Math.floor(performance.now() / this.#granule);
    let next = Infinity;
    const due: Set<Timed>[] = [];
    for (const [tick, bucket] of this.#buckets) {
      if (tick <= now) {
        due.push(bucket);
        this.#buckets.delete(tick);
      } else if (tick < next) {
        next = tick;
      }
    }
    for (const bucket of due) {
      for (const item of bucket) item.expire();
    }
    if (this.#closed) return;
    // expire() may have added items; find the earliest again if so.
    for (const tick of this.#buckets.keys()) if (tick < next) next = tick;
    if (next !== Infinity) this.#arm(next);
  }
}
