/**
 * How a request picks among ready sessions when routing is `"p2c"`: the
 * power of two choices (Mitzenmacher). Two sessions drawn at random, the
 * one with fewer pending requests wins. It needs no shared counter and no
 * scan, keeps a slow or overloaded endpoint from piling up work (it loses
 * most draws), and unlike "least pending" over all sessions it does not
 * send every request of a burst to the same momentarily idle session.
 *
 * @module
 */

/** What the balancer reads of a session. */
export interface Balanced {
  /** Requests sent on it and not answered yet. */
  readonly pendingCount: number;
}

/**
 * Picks by the power of two choices: of two distinct members drawn at
 * random, the one with fewer pending requests (the first drawn on a tie).
 *
 * @param ready The candidates; at least two.
 * @param random A number in [0, 1) (`Math.random` outside tests).
 * @returns The chosen one.
 */
export function pickOfTwo<S extends Balanced>(
  ready: readonly S[],
  random: () => number = Math.random,
): S {
  const n = ready.length;
  const i = Math.floor(random() * n);
  // The second draw skips the first, so the two are always distinct.
  let j = Math.floor(random() * (n - 1));
  if (j >= i) j++;
  const a = ready[i]!;
  const b = ready[j]!;
  return b.pendingCount < a.pendingCount ? b : a;
}
