/**
 * `Client.pipeline()`: many requests in one call, settled by one promise
 * (see `_batch.ts`). The batch goes to one session in order, so with fifo
 * correlation its replies come back in the batch's order too; a batch that
 * must wait for a session waits once, as a whole.
 *
 * Also what a single request needs while it waits for a session
 * ({@linkcode hold}), shared with `Client.request`.
 *
 * @module
 */

import { Retry } from "../_correlation.ts";
import { Batch } from "../_batch.ts";
import { callTimeout } from "../_util.ts";
import { ConnectionClosedError, NoSessionError } from "../errors.ts";
import { type Dialect, requestId } from "../session/dialect.ts";
import type { EncodedRequest, SessionImpl } from "../session/session.ts";
import type { PipelineResult, Session } from "../session/types.ts";
import type { Router } from "./router.ts";
import type { PipelineOptions } from "./types.ts";

/** What a pipeline needs from its client. */
export interface PipelineHost<T> {
  readonly dialect: Dialect<T>;
  /** The client's request timeout (ms; `Infinity` for none). */
  readonly requestTimeout: number;
  readonly router: Router<T>;
  /** The client's own session for `session` (undefined once closed). */
  own(session: Session<T>): SessionImpl<T> | undefined;
}

/**
 * A request that waits for a session, as it is now: a copy of the payload
 * (the default protocol assigns the id on the session), or, for custom
 * codecs, its bytes and correlation id.
 */
export function hold<T>(dialect: Dialect<T>, message: T): T | EncodedRequest {
  if (dialect.framed) return dialect.copy(message);
  const codec = dialect.codec;
  const id = dialect.mode === "message" ? requestId(codec, message) : undefined;
  return { bytes: codec.encode(message), id };
}

/**
 * Sends `messages` as one batch (see `Client.pipeline`). Rejects only when
 * the call itself is refused; every request's outcome is in its slot.
 */
export function pipeline<T>(
  host: PipelineHost<T>,
  messages: Iterable<T>,
  options: PipelineOptions<T> | undefined,
): Promise<PipelineResult<T>[]> {
  const list = Array.isArray(messages) ? messages as T[] : [...messages];
  const signal = options?.signal;
  const chosen = options?.session;
  let timeout: number | undefined;
  let session: SessionImpl<T> | undefined;
  try {
    timeout = callTimeout(options?.timeout);
    session = chosen !== undefined ? host.own(chosen) : host.router.pick();
  } catch (error) {
    return Promise.reject(error);
  }
  if (signal?.aborted) return Promise.reject(signal.reason);
  if (chosen !== undefined) {
    if (session === undefined) {
      return Promise.reject(
        new NoSessionError("Cannot send pipeline: that session is closed"),
      );
    }
    if (session.state === "draining") {
      return Promise.reject(
        new ConnectionClosedError(
          `Cannot send pipeline: session ${session.id} is draining`,
          { cause: session.closeReason },
        ),
      );
    }
  }
  // A session the caller chose is never left for another (as a request).
  const retry = chosen !== undefined
    ? Retry.Never
    : options?.idempotent
    ? Retry.Idempotent
    : Retry.Unprocessed;
  const batch = new Batch<T>(list.length, signal);
  if (session !== undefined) {
    session.pipelineOn(list, false, timeout, signal, retry, batch);
    return batch.promise;
  }
  waitThenSend(host, list, batch, timeout, options, retry);
  return batch.promise;
}

/**
 * No session is ready: keep the messages as they are now (the caller may
 * reuse them once `pipeline()` returns) and send them all on the first
 * session ready, within what is left of their deadline.
 */
function waitThenSend<T>(
  host: PipelineHost<T>,
  list: readonly T[],
  batch: Batch<T>,
  timeout: number | undefined,
  options: PipelineOptions<T> | undefined,
  retry: number,
): void {
  const dialect = host.dialect;
  const held: (T | EncodedRequest | undefined)[] = new Array(list.length);
  for (let i = 0; i < list.length; i++) {
    try {
      held[i] = hold(dialect, list[i] as T);
    } catch (error) {
      batch.settle(i, false, error);
    }
  }
  if (batch.done) return;
  const total = timeout ?? host.requestTimeout;
  const start = performance.now();
  const signal = options?.signal;
  host.router.wait(total, signal, options?.waitForSession).then(
    (ready) => {
      if (batch.done) return;
      const left = Math.max(0, total - (performance.now() - start));
      ready.pipelineOn(
        held as (T | EncodedRequest)[],
        !dialect.framed,
        left,
        signal,
        retry,
        batch,
      );
    },
    (error) => batch.fail(error),
  );
}
