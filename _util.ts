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

/** Checks a positive, finite option. @throws {RangeError} */
export function positive(value: number, name: string): number {
  if (!(value > 0) || !Number.isFinite(value)) {
    throw new RangeError(
      `Cannot use ${name} ${value}: expected a positive number`,
    );
  }
  return value;
}

/** Checks a non-negative, finite option. @throws {RangeError} */
export function nonNegative(value: number, name: string): number {
  if (!(value >= 0) || !Number.isFinite(value)) {
    throw new RangeError(
      `Cannot use ${name} ${value}: expected a non-negative number`,
    );
  }
  return value;
}
