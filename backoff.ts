import { withResolvers } from "./_util.ts";
/**
 * Exponential backoff with full jitter, and an abortable {@linkcode delay}.
 *
 * The client uses these to space out reconnect attempts of a session slot;
 * they are exported for users' own retry loops.
 *
 * @module
 */

/**
 * Options of {@linkcode exponentialBackoff}. Every value is in milliseconds
 * except `multiplier`.
 */
export interface BackoffOptions {
  /**
   * The ceiling of the first delay (attempt 0), in milliseconds. Must be a
   * finite number, at least 0 and at most `max`.
   *
   * @default {100}
   */
  initial?: number | undefined;
  /**
   * The cap on every delay, in milliseconds. Must be a finite number, at
   * least 0.
   *
   * @default {30000}
   */
  max?: number | undefined;
  /**
   * The growth factor of the ceiling from one attempt to the next. Must be a
   * finite number, at least 1.
   *
   * @default {2}
   */
  multiplier?: number | undefined;
  /**
   * `"full"`: each delay is drawn uniformly from `[0, ceiling]` (AWS's "full
   * jitter", which spreads reconnecting clients apart). `"none"`: each delay
   * is the ceiling itself.
   *
   * @default {"full"}
   */
  jitter?: "full" | "none" | undefined;
  /**
   * The source of randomness for `jitter: "full"`: returns a number in
   * `[0, 1]`. Inject a fixed sequence in tests.
   *
   * @default {Math.random}
   */
  random?: (() => number) | undefined;
}

/**
 * A sequence of retry delays. Call {@linkcode Backoff.next} before each retry
 * and {@linkcode Backoff.reset} after a success.
 */
export interface Backoff {
  /**
   * Returns the delay to wait before the next attempt, in milliseconds, and
   * counts the attempt.
   *
   * @returns A finite delay, at least 0 and at most the configured `max`.
   * @throws {RangeError} When the injected `random` returns a value outside
   * `[0, 1]`.
   */
  next(): number;
  /** Starts the sequence over: the next delay is that of attempt 0 again. */
  reset(): void;
  /** How many delays {@linkcode Backoff.next} returned since the last reset. */
  readonly attempt: number;
}

/**
 * Makes an exponential backoff: the delay of attempt `n` (0-based) has the
 * ceiling `min(max, initial * multiplier ** n)`; with full jitter (the
 * default) the delay is `random() * ceiling`, without jitter it is the ceiling.
 *
 * The exponent is clamped once the ceiling reaches `max`, so delays stay finite
 * after any number of attempts.
 *
 * @param options Initial delay, cap, multiplier, jitter and random source.
 * @returns A fresh backoff at attempt 0.
 * @throws {RangeError} When a number option is negative, NaN or infinite,
 * when `initial` exceeds `max`, or when `multiplier` is below 1.
 * @throws {TypeError} When `jitter` or `random` has the wrong type.
 *
 * @example Usage
 * ```ts
 * import { exponentialBackoff } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const backoff = exponentialBackoff({ initial: 100, max: 1_000, jitter: "none" });
 * assert.deepEqual(
 *   [backoff.next(), backoff.next(), backoff.next(), backoff.next(), backoff.next()],
 *   [100, 200, 400, 800, 1_000],
 * );
 * assert.equal(backoff.attempt, 5);
 * backoff.reset();
 * assert.equal(backoff.next(), 100);
 * ```
 *
 * @example Full jitter (the default)
 * ```ts
 * import { exponentialBackoff } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const backoff = exponentialBackoff({ initial: 100, max: 30_000 });
 * for (let n = 0; n < 1_000; n++) {
 *   const delay = backoff.next();
 *   assert.ok(delay >= 0 && delay <= Math.min(30_000, 100 * 2 ** n));
 * }
 * ```
 */
export function exponentialBackoff(options?: BackoffOptions): Backoff {
  options ??= {};
  const initial = options.initial ?? 100;
  const max = options.max ?? 30_000;
  const multiplier = options.multiplier ?? 2;
  const jitter = options.jitter ?? "full";
  const random = options.random ?? Math.random;
  checkDuration("initial", initial);
  checkDuration("max", max);
  if (initial > max) {
    throw new RangeError(
      `Cannot create backoff: initial (${initial}) exceeds max (${max})`,
    );
  }
  if (!(Number.isFinite(multiplier) && multiplier >= 1)) {
    throw new RangeError(
      `Cannot create backoff: multiplier must be a finite number >= 1, got ${multiplier}`,
    );
  }
  if (jitter !== "full" && jitter !== "none") {
    throw new TypeError(
      `Cannot create backoff: jitter must be "full" or "none", got ${
        String(jitter)
      }`,
    );
  }
  if (typeof random !== "function") {
    throw new TypeError("Cannot create backoff: random must be a function");
  }
  return new ExponentialBackoff(initial, max, multiplier, jitter, random);
}

class ExponentialBackoff implements Backoff {
  readonly #initial: number;
  readonly #max: number;
  readonly #multiplier: number;
  readonly #jitter: "full" | "none";
  readonly #random: () => number;
  /** Beyond this exponent the ceiling is `max` for sure. */
  readonly #maxExponent: number;
  #attempt = 0;

  constructor(
    initial: number,
    max: number,
    multiplier: number,
    jitter: "full" | "none",
    random: () => number,
  ) {
    this.#initial = initial;
    this.#max = max;
    this.#multiplier = multiplier;
    this.#jitter = jitter;
    this.#random = random;
    // initial * multiplier ** e >= max once e >= log(max / initial) / log(m);
    // one more step absorbs rounding. With initial 0 or multiplier 1 the
    // ceiling never grows.
    this.#maxExponent = initial === 0 || multiplier === 1 || initial === max
      ? 0
      : Math.ceil(Math.log(max / initial) / Math.log(multiplier)) + 1;
  }

  get attempt(): number {
    return this.#attempt;
  }

  next(): number {
    const exponent = Math.min(this.#attempt, this.#maxExponent);
    if (this.#attempt < Number.MAX_SAFE_INTEGER) this.#attempt++;
    const raw = this.#initial * this.#multiplier ** exponent;
    // Never NaN: exponent > 0 implies initial > 0, so an overflow of a huge
    // multiplier gives Infinity, which the cap below turns into max.
    const ceiling = raw < this.#max ? raw : this.#max;
    if (this.#jitter === "none") return ceiling;
    const r = this.#random();
    if (!(r >= 0 && r <= 1)) {
      throw new RangeError(
        `Cannot compute backoff delay: random() returned ${r}, expected a number in [0, 1]`,
      );
    }
    return r * ceiling;
  }

  reset(): void {
    this.#attempt = 0;
  }
}

function checkDuration(name: string, value: number): void {
  if (!(typeof value === "number" && Number.isFinite(value) && value >= 0)) {
    throw new RangeError(
      `Cannot create backoff: ${name} must be a finite number >= 0, got ${
        String(value)
      }`,
    );
  }
}

/** Options of {@linkcode delay}. */
export interface DelayOptions {
  /**
   * Aborting it rejects the pending delay at once with `signal.reason` and
   * clears its timer.
   */
  signal?: AbortSignal | undefined;
}

/** setTimeout wraps around above 2^31 - 1 ms; longer delays are chained. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Waits `ms` milliseconds. The timer is cleared and the abort listener removed
 * on every outcome, so an aborted or finished delay leaves nothing behind.
 * Durations above setTimeout's limit (2^31 - 1 ms, about 24.8 days) are
 * chained rather than wrapped around.
 *
 * @param ms How long to wait, in milliseconds: a finite number, at least 0.
 * @param options `signal` to cancel the wait.
 * @returns A promise that resolves after `ms`, or rejects with
 * `signal.reason` unchanged as soon as the signal aborts (at once when it was
 * aborted before the call).
 * @throws {RangeError} (as a rejection) When `ms` is negative, NaN or infinite.
 *
 * @example Usage
 * ```ts
 * import { delay } from "@tcpbutler/core";
 *
 * await delay(1);
 * ```
 *
 * @example Abort a delay
 * ```ts
 * import { delay } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const controller = new AbortController();
 * const waiting = delay(60_000, { signal: controller.signal });
 * const reason = new Error("shutting down");
 * controller.abort(reason);
 * await assert.rejects(waiting, (error) => error === reason);
 * ```
 */
export function delay(ms: number, options?: DelayOptions): Promise<void> {
  const { signal } = options ?? {};
  if (!(typeof ms === "number" && Number.isFinite(ms) && ms >= 0)) {
    return Promise.reject(
      new RangeError(
        `Cannot delay: ms must be a finite number >= 0, got ${String(ms)}`,
      ),
    );
  }
  if (signal?.aborted) return Promise.reject(signal.reason);
  const { promise, resolve, reject } = withResolvers<void>();
  let remaining = ms;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const onAbort = (): void => {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
    reject(signal?.reason);
  };
  const arm = (): void => {
    const step = Math.min(remaining, MAX_TIMER_MS);
    remaining -= step;
    timer = setTimeout(onTimer, step);
  };
  const onTimer = (): void => {
    if (remaining > 0) {
      arm();
      return;
    }
    signal?.removeEventListener("abort", onAbort);
    resolve();
  };
  arm();
  signal?.addEventListener("abort", onAbort, { once: true });
  return promise;
}
