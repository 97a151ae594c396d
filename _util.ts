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
