/**
 * A batch of requests settled by one promise (`Client.pipeline`): each
 * request's outcome goes into its slot, and the promise resolves once every
 * slot is filled. The batch's entries make no promise of their own and hold
 * no abort listener of their own: the batch listens once for all of them.
 *
 * @module
 */

import type { Pending, Sink } from "./_correlation.ts";
import type { PipelineResult } from "./session/types.ts";
import type { EncodedRequest } from "./session/config.ts";
import { withResolvers } from "./_util.ts";

/** One request's outcome in a batch: its reply, or why it has none. */
export type BatchResult<T> = PipelineResult<T>;

/** What a batch sends, and how (the options of all its requests). */
export interface BatchRequests<T> {
  /** Messages, or requests encoded ahead (custom codecs that waited). */
  messages: readonly (T | EncodedRequest)[];
  /** Whether `messages` are encoded requests. */
  encoded: boolean;
  /** Each request's timeout (ms), or undefined for the session's. */
  timeout: number | undefined;
  signal: AbortSignal | undefined;
  /** One of `Retry`. */
  retry: number;
}

/** The slots of a batch and the one promise that waits for all of them. */
export class Batch<T> implements Sink {
  /** What to send; replaced by the held copies when the batch must wait. */
  requests: BatchRequests<T>;
  readonly results: BatchResult<T>[];
  /** Resolves with `results` once every slot is filled. */
  readonly promise: Promise<BatchResult<T>[]>;
  #resolve: (results: BatchResult<T>[]) => void;
  #left: number;
  /** Its entries by index, kept only while an abort signal may fail them. */
  #entries: (Pending | undefined)[] | undefined;
  #signal: AbortSignal | undefined;
  #onAbort: (() => void) | undefined;
  /** Callbacks waiting for one slot (a request waiting to be retried). */
  #watchers: Map<number, () => void> | undefined;

  constructor(requests: BatchRequests<T>) {
    this.requests = requests;
    const size = requests.messages.length;
    const signal = requests.signal;
    this.results = new Array(size);
    this.#left = size;
    // The one place a batch needs resolving functions.
    const { promise, resolve } = withResolvers<BatchResult<T>[]>();
    this.promise = promise;
    this.#resolve = resolve;
    if (size === 0) resolve(this.results);
    else if (signal !== undefined) {
      this.#entries = new Array(size);
      this.#signal = signal;
      this.#onAbort = () => this.#abort(signal.reason);
      signal.addEventListener("abort", this.#onAbort, { once: true });
    }
  }

  /** Whether all slots are filled. */
  get done(): boolean {
    return this.#left === 0;
  }

  /** Keeps an entry, so an abort can fail it (only with a signal). */
  track(entry: Pending): void {
    if (this.#entries !== undefined) this.#entries[entry.index] = entry;
  }

  settle(index: number, ok: boolean, value: unknown): void {
    if (this.results[index] !== undefined) return;
    this.results[index] = ok
      ? { ok: true, value: value as T }
      : { ok: false, error: value };
    if (this.#entries !== undefined) this.#entries[index] = undefined;
    const watcher = this.#watchers?.get(index);
    if (watcher !== undefined) {
      this.#watchers!.delete(index);
      watcher();
    }
    if (--this.#left > 0) return;
    if (this.#onAbort !== undefined) {
      this.#signal!.removeEventListener("abort", this.#onAbort);
      this.#onAbort = undefined;
    }
    this.#resolve(this.results);
  }

  watch(index: number, fn: () => void): void {
    if (this.results[index] !== undefined) return fn();
    (this.#watchers ??= new Map()).set(index, fn);
  }

  /**
   * Fills every slot not filled yet with `error`: their entries fail (they
   * leave the pending table), the slots without an entry (not sent yet)
   * get it directly.
   */
  fail(error: unknown): void {
    const results = this.results;
    for (let i = 0; i < results.length && this.#left > 0; i++) {
      if (results[i] !== undefined) continue;
      const entry = this.#entries?.[i];
      if (entry !== undefined) entry.fail(error);
      else this.settle(i, false, error);
    }
  }

  #abort(reason: unknown): void {
    this.#onAbort = undefined;
    this.fail(reason);
  }
}
