/**
 * Which requests of a closing session go again on another one: those that
 * cannot have run, and idempotent ones. The rest fail as may-have-run.
 *
 * @module
 */

import { type Pending, type PendingOwner, Retry } from "../_correlation.ts";
import { type Transport, writesAreExact } from "../connection.ts";
import type { WriteQueue } from "./write_queue.ts";

/** Where a request that cannot be delivered here is sent again. */
export type RetryHook = (entry: Pending, bytes: Uint8Array) => void;

/** Decides, for one session, what its undelivered requests become. */
export class Rescue {
  readonly #owner: PendingOwner;
  readonly #queue: WriteQueue;
  readonly #retry: RetryHook | undefined;
  /** Whether a pending or failed write of the transport took nothing. */
  readonly #exact: boolean;
  /**
   * Requests whose bytes were in the write in flight when the session
   * closed: decided once that write settles (see {@linkcode settle}).
   */
  #inFlight: { entries: Pending[]; error: unknown } | undefined;

  constructor(
    owner: PendingOwner,
    conn: Transport,
    queue: WriteQueue,
    retry: RetryHook | undefined,
  ) {
    this.#owner = owner;
    this.#queue = queue;
    this.#retry = retry;
    this.#exact = writesAreExact(conn);
  }

  /** Whether requests wait for the write in flight to settle. */
  get waiting(): boolean {
    return this.#inFlight !== undefined;
  }

  /**
   * At close: sends a request again when it cannot have run — its bytes
   * were never handed to the socket (still queued), or it was never queued
   * (it waited for room: its copy). One in the write in flight is decided
   * once that write settles, where the transport can say what it took. An
   * idempotent request goes again whatever happened. Returns whether it
   * took the request over.
   */
  atClose(entry: Pending, error: unknown): boolean {
    const retry = this.#retry;
    if (retry === undefined || entry.retry === Retry.Never) return false;
    if (entry.start < 0) {
      if (entry.copy === undefined) return false;
      retry(entry, entry.copy);
      return true;
    }
    const queue = this.#queue;
    const queued = queue.queuedBytes(entry.start, entry.end);
    if (queued !== undefined) {
      retry(entry, queued);
      return true;
    }
    if (
      this.#exact && entry.end > queue.written &&
      queue.writingBuffer !== undefined && entry.start >= queue.writingBase
    ) {
      const inFlight = this.#inFlight ??= { entries: [], error };
      inFlight.entries.push(entry);
      return true;
    }
    return this.idempotent(entry);
  }

  /** Sends an idempotent request again, whatever happened to it here. */
  idempotent(entry: Pending): boolean {
    const retry = this.#retry;
    if (
      retry === undefined || entry.retry !== Retry.Idempotent ||
      entry.copy === undefined
    ) return false;
    retry(entry, entry.copy);
    return true;
  }

  /**
   * The write in flight when the session closed has settled: requests whose
   * bytes the socket did not take whole go again, the others fail (they
   * may have run), idempotent ones go again in any case.
   */
  settle(): void {
    const inFlight = this.#inFlight;
    const queue = this.#queue;
    const writing = queue.writingBuffer;
    this.#inFlight = undefined;
    queue.writingBuffer = undefined;
    if (inFlight === undefined || writing === undefined) return;
    for (const entry of inFlight.entries) {
      if (entry.settled || entry.owner !== this.#owner) continue;
      if (entry.end > queue.written) {
        const at = queue.writingBase;
        this.#retry!(entry, writing.slice(entry.start - at, entry.end - at));
      } else if (!this.idempotent(entry)) entry.fail(inFlight.error);
    }
  }
}
