// Internal helpers shared by the framing codecs. Not exported from mod.ts.

import { ProtocolError } from "../errors.ts";

/** The default `maxFrameBytes` of every framing codec: 8 MiB. */
export const DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024;

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
 * Reads an unsigned 32-bit big-endian integer (bounds not checked).
 *
 * @param bytes The bytes.
 * @param at Where the integer starts.
 * @returns Its value, from 0 to 2^32 − 1.
 */
export function readU32BE(bytes: Uint8Array, at: number): number {
  return ((bytes[at]! << 24) | (bytes[at + 1]! << 16) |
    (bytes[at + 2]! << 8) | bytes[at + 3]!) >>> 0;
}

/**
 * Gives a decoder's error the messages that the failing `decode` call
 * completed before the bad bytes (see `ProtocolError.decoded`), so that they
 * are not lost with the error.
 *
 * @param error What the decoding threw.
 * @param decoded The messages completed so far in that call.
 * @returns `error`.
 */
export function withDecoded(error: unknown, decoded: unknown[]): unknown {
  if (decoded.length > 0 && error instanceof ProtocolError) {
    error.decoded = decoded;
  }
  return error;
}

const EMPTY = new Uint8Array(0);
/** The smallest buffer allocated for a partial frame that may need that much. */
const MIN_CAPACITY = 256;
/** A buffer larger than this is dropped rather than kept for the next frame. */
const RETAIN_BYTES = 4096;

/**
 * The bytes of a frame that spans chunks: the one place where the decoders
 * keep bytes between calls. The buffer grows with the bytes that arrive: to
 * twice what must fit (so a frame sent in many pieces is copied a few times,
 * not once per piece), never past the cap its caller gives (the frame's
 * announced size where it is known). A header that announces a large frame
 * thus pins no memory for it, and a frame whose first half came in one chunk
 * gets its whole buffer at once.
 */
export class PartialBytes {
  #buffer: Uint8Array = EMPTY;
  #length = 0;

  /** How many bytes are held. */
  get length(): number {
    return this.#length;
  }

  /** The buffer; its first {@linkcode PartialBytes.length} bytes are held. */
  get buffer(): Uint8Array {
    return this.#buffer;
  }

  /**
   * Appends `source[from, to)`.
   *
   * @param source The bytes to copy from.
   * @param from The first byte to copy.
   * @param to The end of the bytes to copy.
   * @param cap The most bytes the frame can need; the buffer does not grow
   * past it (nor past what must fit).
   */
  append(source: Uint8Array, from: number, to: number, cap: number): void {
    if (to <= from) return;
    const length = this.#length;
    const needed = length + to - from;
    let buffer = this.#buffer;
    if (buffer.length < needed) {
      const doubled = Math.max(needed * 2, MIN_CAPACITY);
      const next = new Uint8Array(Math.max(needed, Math.min(cap, doubled)));
      if (length > 0) next.set(buffer.subarray(0, length));
      buffer = this.#buffer = next;
    }
    buffer.set(
      from === 0 && to === source.length ? source : source.subarray(from, to),
      length,
    );
    this.#length = needed;
  }

  /**
   * Hands out the first `count` bytes held and starts empty: the caller owns
   * that memory from now on.
   *
   * @param count How many bytes to hand out.
   * @returns A view of them.
   */
  take(count: number = this.#length): Uint8Array {
    const buffer = this.#buffer;
    this.#buffer = EMPTY;
    this.#length = 0;
    return count === buffer.length ? buffer : buffer.subarray(0, count);
  }

  /** Drops the bytes held; a small buffer is kept for the next frame. */
  clear(): void {
    this.#length = 0;
    if (this.#buffer.length > RETAIN_BYTES) this.#buffer = EMPTY;
  }
}

/**
 * The frame that spans chunks, for framings whose header tells the frame's
 * size (a length prefix, or a fixed size with no header): a two-state
 * machine, reading the header then reading the body. The header is checked
 * as soon as it is whole, before any of the body is buffered; the frame is
 * then gathered in {@linkcode PartialBytes} sized to it, so that completing
 * it hands out a buffer of its own without a further copy.
 */
export class PartialFrame {
  readonly #headerBytes: number;
  /**
   * A header split across chunks, made when one first is: a decoder whose
   * frames arrive whole (or an idle session's) holds no buffer.
   */
  #header: Uint8Array | undefined;
  /** Bytes of #header held while reading the header. */
  #headerLength = 0;
  /** How many leading header bytes belong to the frame handed out. */
  readonly #keep: number;
  readonly #bodySize: (header: Uint8Array, at: number) => number;
  /** The kept header bytes and the body (made on first use, as #header). */
  #bytes: PartialBytes | undefined;
  /** Their whole size once the header is read; -1 while reading the header. */
  #size = -1;

  /**
   * Creates an empty partial frame.
   *
   * @param headerBytes The size of the header (0 for none).
   * @param keep How many of the header's first bytes the frame handed out
   * starts with (a message type before the length field); the rest of the
   * header is dropped.
   * @param bodySize Reads the whole header at `header[at]` and returns the
   * size of the body after it; throws when the header is bad.
   */
  constructor(
    headerBytes: number,
    keep: number,
    bodySize: (header: Uint8Array, at: number) => number,
  ) {
    this.#headerBytes = headerBytes;
    this.#keep = keep;
    this.#bodySize = bodySize;
  }

  /** Whether a frame is in progress. */
  get active(): boolean {
    return this.#headerLength > 0 || this.#size >= 0;
  }

  /** How many bytes of the frame have arrived, the whole header included. */
  get received(): number {
    return this.#size < 0
      ? this.#headerLength
      : this.#headerBytes - this.#keep + this.#bytes!.length;
  }

  /**
   * The size of the frame to hand out (kept header bytes and body); -1 while
   * reading the header.
   */
  get size(): number {
    return this.#size;
  }

  /**
   * Feeds `chunk[pos..]` to the frame in progress (or starts one there).
   *
   * @param chunk The bytes.
   * @param pos Where the frame's next bytes start.
   * @returns Where the chunk goes on after the frame when this completed it
   * (then {@linkcode PartialFrame.take} it), else -1: the chunk is used up.
   * @throws What the `bodySize` callback throws, once the header is whole.
   */
  feed(chunk: Uint8Array, pos: number): number {
    const bytes = this.#bytes ??= new PartialBytes();
    const end = chunk.length;
    let size = this.#size;
    if (size < 0) {
      const headerBytes = this.#headerBytes;
      const keep = this.#keep;
      let source = chunk;
      let at = pos;
      if (this.#headerLength > 0 || end - pos < headerBytes) {
        const count = Math.min(end - pos, headerBytes - this.#headerLength);
        const header = this.#header ??= new Uint8Array(headerBytes);
        header.set(chunk.subarray(pos, pos + count), this.#headerLength);
        this.#headerLength += count;
        pos += count;
        if (this.#headerLength < headerBytes) return -1;
        this.#headerLength = 0;
        source = header;
        at = 0;
      } else {
        pos += headerBytes;
      }
      size = keep + this.#bodySize(source, at);
      bytes.append(source, at, at + keep, size);
      this.#size = size;
    }
    const to = Math.min(end, pos + size - bytes.length);
    bytes.append(chunk, pos, to, size);
    return bytes.length === size ? to : -1;
  }

  /**
   * Hands out the completed frame (kept header bytes and body) and starts
   * over.
   *
   * @returns The frame's bytes; the caller owns them.
   */
  take(): Uint8Array {
    this.#size = -1;
    return this.#bytes!.take();
  }

  /** Forgets the frame in progress. */
  clear(): void {
    this.#size = -1;
    this.#headerLength = 0;
    this.#bytes?.clear();
  }
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
