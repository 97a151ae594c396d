/**
 * `Client.pipeline()`: many requests in one call, settled by one promise
 * (see `_batch.ts`). The batch goes to one session in order, so with fifo
 * correlation its replies come back in the batch's order too; a batch that
 * must wait for a session waits once, as a whole.
 *
 * Also what a single request does while it waits for a session
 * ({@linkcode requestWhenReady}).
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
import type { ClientRequestOptions, PipelineOptions } from "./types.ts";

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
  const batch = new Batch<T>({
    messages: list,
    encoded: false,
    timeout,
    signal,
    retry,
  });
  if (session !== undefined) session.pipelineOn(batch);
  else waitThenSend(host, batch, options?.waitForSession);
  return batch.promise;
}

/**
 * No session is ready: keep the messages as they are now (the caller may
 * reuse them once `pipeline()` returns) and send them all on the first
 * session ready, within what is left of their deadline.
 */
function waitThenSend<T>(
  host: PipelineHost<T>,
  batch: Batch<T>,
  waitForSession: boolean | undefined,
): void {
  const dialect = host.dialect;
  const requests = batch.requests;
  const list = requests.messages as readonly T[];
  const held: (T | EncodedRequest | undefined)[] = new Array(list.length);
  for (let i = 0; i < list.length; i++) {
    try {
      held[i] = hold(dialect, list[i] as T);
    } catch (error) {
      batch.settle(i, false, error);
    }
  }
  if (batch.done) return;
  const total = requests.timeout ?? host.requestTimeout;
  const start = performance.now();
  host.router.wait(total, requests.signal, waitForSession).then(
    (ready) => {
      if (batch.done) return;
      batch.requests = {
        ...requests,
        // Filled slots are skipped: their holes are never read.
        messages: held as (T | EncodedRequest)[],
        encoded: !dialect.framed,
        timeout: Math.max(0, total - (performance.now() - start)),
      };
      ready.pipelineOn(batch);
    },
    (error) => batch.fail(error),
  );
}

/**
 * A request made while no session is ready (see `Client.request`): it
 * waits for one, held as it is now (the caller may reuse its message as
 * soon as `request()` returns), within its deadline.
 */
export function requestWhenReady<T>(
  host: PipelineHost<T>,
  message: T,
  options: ClientRequestOptions<T>,
  callTimeoutMs: number | undefined,
  retry: number,
): Promise<T> {
  const timeout = callTimeoutMs ?? host.requestTimeout;
  const start = performance.now();
  let held: T | EncodedRequest;
  try {
    held = hold(host.dialect, message);
  } catch (error) {
    return Promise.reject(error);
  }
  const signal = options.signal;
  return host.router.wait(timeout, signal, options.waitForSession).then(
    (ready) => {
      const left = Math.max(0, timeout - (performance.now() - start));
      return host.dialect.framed
        ? ready.requestOn(held as T, left, signal, false, retry)
        : ready.requestEncoded(held as EncodedRequest, left, signal, retry);
    },
  );
}
