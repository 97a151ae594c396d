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

/** Reads exactly `n` bytes; throws on end of stream before that. */
export async function readExactly(
  conn: { read(p: Uint8Array): Promise<number | null> },
  n: number,
): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let filled = 0; filled < n;) {
    const read = await conn.read(out.subarray(filled));
    if (read === null) throw new Error(`EOF after ${filled} of ${n} bytes`);
    filled += read;
  }
  return out;
}

/** Writes all of `bytes` (`Deno.Conn.write()` may take only part). */
export async function writeAll(
  conn: { write(p: Uint8Array): Promise<number> },
  bytes: Uint8Array,
): Promise<void> {
  for (let offset = 0; offset < bytes.length;) {
    offset += await conn.write(bytes.subarray(offset));
  }
}

/** `length` bytes of a fixed pattern, as seen from stream position `offset`. */
export function pattern(offset: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = ((offset + i) * 7) % 251;
  return bytes;
}
