/**
 * Byte helpers shared by the codec property tests: join chunks, cut a byte
 * string at arbitrary points, or into single bytes.
 *
 * @module
 */

/** Joins byte chunks into one array. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Cuts `bytes` at the given points (any numbers; duplicates give empty chunks). */
export function cut(
  bytes: Uint8Array,
  points: readonly number[],
): Uint8Array[] {
  const at = points.map((point) => point % (bytes.length + 1))
    .sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let previous = 0;
  for (const point of at) {
    chunks.push(bytes.subarray(previous, point));
    previous = point;
  }
  chunks.push(bytes.subarray(previous));
  return chunks;
}

/** One chunk per byte. */
export function bytewise(bytes: Uint8Array): Uint8Array[] {
  return Array.from(bytes, (_, i) => bytes.subarray(i, i + 1));
}
