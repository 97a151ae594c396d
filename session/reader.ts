/**
 * The read side of a session: an own `read()` loop into slabs, sized by the
 * traffic, so an idle session holds a small buffer and a busy one reads
 * whole bursts at once.
 *
 * @module
 */

import type { Transport } from "../connection.ts";

const IDLE_READ_BYTES = 1024;
const SLAB_BYTES = 256 * 1024;
const MIN_SLAB_READ = 16 * 1024;
const COPY_SLAB_BYTES = 16 * 1024;
/** Short reads in a row that move a session back to its small buffer. */
const SHORT_READS_TO_IDLE = 8;

const noop = (): undefined => undefined;

/** Resolves (to undefined) after a few microtask turns. */
function microtaskTurns(): Promise<undefined> {
  return Promise.resolve(undefined).then(noop).then(noop).then(noop).then(
    noop,
  );
}

/** A read issued ahead of the loop's next {@linkcode SlabReader.read}. */
interface Ahead {
  read: Promise<number | null>;
  slab: Uint8Array;
  start: number;
  /** Set once the read completed: the bytes it read (null at the end). */
  done?: number | null;
}

/**
 * Reads chunks from a transport. Its state, in short:
 *
 * | state | pending read holds | a chunk is |
 * | --- | --- | --- |
 * | idle (short reads) | the small 1 KiB buffer | copied into a 16 KiB slab |
 * | busy | the rest of a 256 KiB slab | a view into the slab |
 *
 * A read that fills the small buffer makes it busy; several short reads in
 * a row make it idle again. Chunks are views into slabs that are never
 * reused: a message kept by the user keeps its slab alive, nothing
 * overwrites it.
 */
export class SlabReader {
  readonly #conn: Transport;
  #small: Uint8Array | undefined;
  #slab: Uint8Array | undefined;
  #slabPos = 0;
  #copySlab: Uint8Array | undefined;
  #copyPos = 0;
  /** A read into #slab at `start` that {@linkcode read} returns next. */
  #ahead: Ahead | undefined;
  /** Short reads in a row; at SHORT_READS_TO_IDLE reads use #small. */
  #shortReads = SHORT_READS_TO_IDLE;

  constructor(conn: Transport) {
    this.#conn = conn;
  }

  /**
   * Reads one chunk; `null` at the end of the stream. Not an async
   * function: an idle session waits in the transport's read and one
   * `then()` on it, not in a suspended frame of its own as well.
   */
  read(): Promise<Uint8Array | null> {
    const ahead = this.#ahead;
    if (ahead !== undefined) {
      this.#ahead = undefined;
      return this.#readAhead(ahead);
    }
    if (this.#shortReads < SHORT_READS_TO_IDLE) return this.#readBusy();
    const small = this.#small ??= new Uint8Array(IDLE_READ_BYTES);
    return this.#conn.read(small).then((n) => this.#readSmall(small, n));
  }

  /**
   * A read issued by #readRest, into the slab it carries (releaseIdle may
   * have dropped #slab meanwhile).
   */
  async #readAhead(ahead: Ahead): Promise<Uint8Array | null> {
    const { slab, start } = ahead;
    const n = await ahead.read;
    if (n === null) return null;
    if (this.#slab === slab) this.#slabPos = start + n;
    return new Uint8Array(slab.buffer, start, n);
  }

  /** What a read into the small buffer brought. */
  #readSmall(
    small: Uint8Array,
    n: number | null,
  ): Uint8Array | null | Promise<Uint8Array> {
    if (n === null) return null;
    if (n === small.length) {
      this.#shortReads = 0;
      return this.#readRest(small);
    }
    let copy = this.#copySlab;
    if (copy === undefined || copy.length - this.#copyPos < n) {
      copy = this.#copySlab = new Uint8Array(COPY_SLAB_BYTES);
      this.#copyPos = 0;
    }
    const start = this.#copyPos;
    copy.set(small.subarray(0, n), start);
    this.#copyPos = start + n;
    return new Uint8Array(copy.buffer, start, n);
  }

  /** A read straight into the slab, while traffic is heavy. */
  async #readBusy(): Promise<Uint8Array | null> {
    let slab = this.#slab;
    if (slab === undefined || slab.length - this.#slabPos < MIN_SLAB_READ) {
      slab = this.#slab = new Uint8Array(SLAB_BYTES);
      this.#slabPos = 0;
    }
    const start = this.#slabPos;
    const n = await this.#conn.read(
      new Uint8Array(slab.buffer, start, slab.length - start),
    );
    if (n === null) return null;
    this.#slabPos = start + n;
    if (n < IDLE_READ_BYTES / 2) {
      if (++this.#shortReads === SHORT_READS_TO_IDLE) {
        // Light traffic: let the big slab go once its views are gone.
        this.#slab = undefined;
      }
    } else {
      this.#shortReads = 0;
    }
    return new Uint8Array(slab.buffer, start, n);
  }

  /**
   * A read filled the small buffer: traffic has started, and the rest of the
   * burst is most likely waiting in the socket already. Read it into the
   * slab before the first part is dispatched, unless it is not there at
   * once (then it is read next, as `#ahead`): the answers to a burst
   * dispatched in two parts go out in two writes, the peer answers those in
   * two writes too, and the burst would stay split for as long as the
   * traffic lasts.
   */
  async #readRest(small: Uint8Array): Promise<Uint8Array> {
    let slab = this.#slab;
    const n = small.length;
    if (
      slab === undefined || slab.length - this.#slabPos < MIN_SLAB_READ + n
    ) {
      slab = this.#slab = new Uint8Array(SLAB_BYTES);
      this.#slabPos = 0;
    }
    const start = this.#slabPos;
    slab.set(small, start);
    const rest = start + n;
    this.#slabPos = rest;
    const read = this.#conn.read(
      new Uint8Array(slab.buffer, rest, slab.length - rest),
    );
    // Deno completes a read of bytes already in the socket within two
    // microtask turns; no timer (its ~2 ms would be the cost when nothing
    // follows).
    const more = await Promise.race([read, microtaskTurns()]);
    if (more === undefined) {
      const ahead: Ahead = { read, slab, start: rest };
      // Seen by unread() if the session closes before reading on.
      read.then((n) => ahead.done = n, () => {});
      this.#ahead = ahead;
      return new Uint8Array(slab.buffer, start, n);
    }
    if (more === null) {
      this.#ahead = { read: Promise.resolve(null), slab, start: rest };
      return new Uint8Array(slab.buffer, start, n);
    }
    this.#slabPos = rest + more;
    return new Uint8Array(slab.buffer, start, n + more);
  }

  /**
   * The bytes of a read issued ahead and completed that {@linkcode read}
   * has not returned yet (the session closes with them unread); takes
   * them.
   */
  unread(): Uint8Array | undefined {
    const ahead = this.#ahead;
    if (ahead === undefined || typeof ahead.done !== "number") return;
    this.#ahead = undefined;
    return new Uint8Array(ahead.slab.buffer, ahead.start, ahead.done);
  }

  /** Drops the buffers of a session that has been silent. */
  releaseIdle(): void {
    this.#copySlab = undefined;
    if (this.#shortReads >= SHORT_READS_TO_IDLE) this.#slab = undefined;
  }
}
