/**
 * What a session is given by its client or server, and what a drain
 * reports back.
 *
 * @module
 */

import type { CorrelationId } from "../framing/codec.ts";
import type { Correlator, Pending } from "../_correlation.ts";
import type { Dialect } from "./dialect.ts";
import type { Logger } from "../logger.ts";
import type { MemoryBudget } from "./budget.ts";
import type { Counters, Handler, Session } from "./types.ts";
import type { SessionImpl } from "./session.ts";

/** What a session needs from its client or server. @internal */
export interface SessionConfig<T> {
  side: "client" | "server";
  dialect: Dialect<T>;
  correlator: Correlator;
  counters: Counters;
  logger: Logger;
  handler(): Handler<T> | undefined;
  /** Added to every handler context (`{ server }` or `{ client }`). */
  context: Readonly<Record<string, unknown>>;
  /**
   * Takes over a request of a routed kind that this session cannot deliver
   * but knows was not processed (or that is idempotent): it sends `bytes`
   * again elsewhere. Absent where nothing is retried (servers).
   */
  retry: ((entry: Pending, bytes: Uint8Array) => void) | undefined;
  onHandlerError:
    | ((error: unknown, message: T, session: Session<T>) => T | undefined)
    | undefined;
  /**
   * Which sessions' replies may complete a request: only its own session's
   * (servers), those of any session to the same endpoint (clients, by
   * default), or any session of the client.
   */
  replies: "session" | "endpoint" | "any";
  maxConcurrentHandlers: number;
  highWaterMark: number;
  maxWriteBytes: number;
  requestTimeout: number;
  /** The server's memory budget, shared by its sessions (none on clients). */
  budget?: MemoryBudget;
  /** Called once when the session has closed. */
  onClose(session: SessionImpl<T>): void;
  /** Called when the peer asked us to stop sending requests. */
  onPeerDrain(session: SessionImpl<T>): void;
}

/** A custom-codec request encoded ahead of its session. @internal */
export interface EncodedRequest {
  /** Its wire bytes. */
  bytes: Uint8Array;
  /** Its correlation id (undefined for fifo correlation). */
  id: CorrelationId | undefined;
}

/** What a drain did. @internal */
export interface DrainResult {
  /** The timeout (or a forced stop) closed the session. */
  forced: boolean;
  /** Requests from the peer that got no answer (they may have run). */
  handlers: number;
  /** Requests from the peer refused unprocessed (never run), refusal written. */
  refused: number;
  /**
   * Requests from the peer read but never started nor answered: held at
   * the handler limit where no refusal can be sent, read and not yet
   * dispatched, or refused without the refusal written.
   */
  dropped: number;
  /** Our own requests still pending. */
  requests: number;
  /** Why it was forced: what was still under way (empty when not forced). */
  reasons: string[];
}

/** What a drain that cut nothing reports. */
export function drained(): DrainResult {
  return {
    forced: false,
    handlers: 0,
    refused: 0,
    dropped: 0,
    requests: 0,
    reasons: [],
  };
}
