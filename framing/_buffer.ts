// Internal helpers shared by the framing codecs. Not exported from mod.ts.

/** The default `maxFrameBytes` of every framing codec: 8 MiB. */
export const DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024;

/**
 * Below this size a partial frame's buffer is allocated at its full size at
 * once; above it the buffer starts here and doubles as bytes arrive, so a peer
 * that announces a big frame and stalls does not pin its whole size.
 */
const EAGER_BYTES = 64 * 1024;

/**
 * Checks a `maxFrameBytes` option.
 *
 * @param value The option, possibly undefined.
 * @returns The limit to use.
 * @throws {RangeError} When it is not a non-negative safe integer.
 */
export function maxFrameBytesOption(value: number | undefined): number {
  if (value === undefined) return DEFAULT_MAX_FRAME_BYTES;
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(
      `Cannot create codec: maxFrameBytes must be a non-negative safe integer, got ${value}`,
    );
  }
  return value;
}

/**
 * Turns a marker option (`"\n"`, `[0x1c, 0x0d]`) into bytes.
 *
 * @param value The option.
 * @param name The option's name, for the error message.
 * @returns A private copy of the bytes.
 * @throws {TypeError} When it is neither a string nor a Uint8Array.
 * @throws {RangeError} When it is empty.
 */
export function markerOption(value: unknown, name: string): Uint8Array {
  let bytes: Uint8Array;
  if (typeof value === "string") bytes = new TextEncoder().encode(value);
  else if (value instanceof Uint8Array) bytes = value.slice();
  else {
    throw new TypeError(
      `Cannot create codec: ${name} must be a string or a Uint8Array`,
    );
  }
  if (bytes.length === 0) {
    throw new RangeError(`Cannot create codec: ${name} must not be empty`);
  }
  return bytes;
}

/**
 * The capacity to allocate for a partial frame of known size.
 *
 * @param size The frame's full size.
 * @param needed The bytes that must fit now.
 * @returns A capacity between `needed` and `size`.
 */
export function initialCapacity(size: number, needed: number): number {
  return size <= EAGER_BYTES ? size : Math.max(needed, EAGER_BYTES);
}

/**
 * Grows a buffer so that `needed` bytes fit, doubling but never past `cap`.
 * The first `used` bytes are kept.
 *
 * @param buffer The current buffer, or undefined.
 * @param used How many of its bytes are in use.
 * @param needed The size that must fit (at most `cap`).
 * @param cap The largest capacity allowed.
 * @returns `buffer` when it is big enough, else a larger copy.
 */
export function grow(
  buffer: Uint8Array | undefined,
  used: number,
  needed: number,
  cap: number,
): Uint8Array {
  if (buffer !== undefined && buffer.length >= needed) return buffer;
  const doubled = buffer === undefined ? 256 : buffer.length * 2;
  const next = new Uint8Array(Math.min(cap, Math.max(needed, doubled)));
  if (buffer !== undefined && used > 0) next.set(buffer.subarray(0, used));
  return next;
}

/**
 * Tells whether `needle` occurs in `hay` at `at` (bounds checked).
 *
 * @param hay The bytes to look in.
 * @param at Where to look.
 * @param needle The bytes to look for.
 * @param from The first byte of `needle` to compare (the earlier ones are known
 * to match).
 * @returns `true` on a match.
 */
export function matchesAt(
  hay: Uint8Array,
  at: number,
  needle: Uint8Array,
  from = 0,
): boolean {
  if (at + needle.length > hay.length) return false;
  for (let i = from; i < needle.length; i++) {
    if (hay[at + i] !== needle[i]) return false;
  }
  return true;
}

/**
 * Finds the first complete occurrence of `needle` in `hay` from `from`,
 * searching for its first byte with `indexOf`.
 *
 * @param hay The bytes to search.
 * @param needle The non-empty bytes to find.
 * @param from Where to start.
 * @returns The index of the occurrence, or -1.
 */
export function indexOfBytes(
  hay: Uint8Array,
  needle: Uint8Array,
  from: number,
): number {
  const first = needle[0]!;
  const m = needle.length;
  if (m === 1) return hay.indexOf(first, from);
  const last = hay.length - m;
  let i = from;
  while (i <= last) {
    i = hay.indexOf(first, i);
    if (i < 0 || i > last) return -1;
    if (matchesAt(hay, i, needle, 1)) return i;
    i++;
  }
  return -1;
}
