/**
 * Small internal helpers.
 *
 * @module
 */

/**
 * The message of any thrown value, for logs and error frames. Never throws
 * (a thrown `Object.create(null)` has no `toString`).
 */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  try {
    return String(error);
  } catch {
    return Object.prototype.toString.call(error);
  }
}

/**
 * Checks a timeout option: a number of milliseconds, at least 0, not `NaN`
 * (`Infinity` allowed). What 0 means is up to the option (see the module
 * doc).
 *
 * @param value The value given.
 * @param name The option's name, for the error message.
 * @returns The value unchanged.
 * @throws {RangeError} Negative, `NaN` or not a number.
 */
export function timeoutOption(value: number, name: string): number {
  if (typeof value !== "number" || !(value >= 0)) {
    throw new RangeError(
      `Cannot use ${name} ${
        String(value)
      }: expected milliseconds >= 0 (0 or Infinity = none)`,
    );
  }
  return value;
}

/**
 * Checks a per-call deadline (`{ timeout }` of a request or send) and turns
 * "none" (0) into `Infinity`, the form deadlines are computed with.
 *
 * @param value The value given, or undefined for the default.
 * @param name The option's name, for the error message.
 * @returns undefined, or the deadline in milliseconds (`Infinity` = none).
 * @throws {RangeError} Negative, `NaN` or not a number.
 */
export function callTimeout(
  value: number | undefined,
  name = "timeout",
): number | undefined {
  if (value === undefined) return undefined;
  return deadlineMs(timeoutOption(value, name));
}

/**
 * A checked deadline option in the form timers take: 0 ("none") becomes
 * `Infinity`.
 *
 * @param ms Milliseconds, 0 or `Infinity` for none.
 * @returns The milliseconds, `Infinity` for none.
 */
export function deadlineMs(ms: number): number {
  return ms === 0 ? Infinity : ms;
}

/**
 * Checks a count option: an integer of at least `min`.
 *
 * @param value The value given.
 * @param name The option's name, for the error message.
 * @param min The smallest value allowed.
 * @returns The value unchanged.
 * @throws {RangeError} Not an integer, or below `min`.
 */
export function countOption(value: number, name: string, min: number): number {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(
      `Cannot use ${name} ${String(value)}: expected an integer >= ${min}`,
    );
  }
  return value;
}

/** A promise that rejects when the signal aborts, with cleanup. */
export function abortPromise(
  signal: AbortSignal,
): { promise: Promise<never>; dispose(): void } {
  const { promise, reject } = withResolvers<never>();
  promise.catch(() => {});
  if (signal.aborted) {
    reject(signal.reason);
    return { promise, dispose() {} };
  }
  const onAbort = () => reject(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  return {
    promise,
    dispose: () => signal.removeEventListener("abort", onAbort),
  };
}

/** Races a promise with an optional signal; rejects with `signal.reason`. */
export async function abortable<R>(
  promise: Promise<R>,
  signal: AbortSignal | undefined,
): Promise<R> {
  if (signal === undefined) return await promise;
  const abort = abortPromise(signal);
  try {
    return await Promise.race([promise, abort.promise]);
  } finally {
    abort.dispose();
  }
}

/** A promise with its resolve and reject functions, as from {@link withResolvers}. */
export interface Resolvers<T> {
  /** The promise that `resolve` and `reject` settle. */
  promise: Promise<T>;
  /** Fulfils `promise`. */
  resolve: (value: T | PromiseLike<T>) => void;
  /** Rejects `promise`. */
  reject: (reason?: unknown) => void;
}

/**
 * `Promise.withResolvers()` for every runtime the package supports: Node 20
 * does not have it, so library code calls this instead.
 */
export function withResolvers<T>(): Resolvers<T> {
  let resolve!: (value: T | PromiseLike<T>) => void;
  let reject!: (reason?: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
