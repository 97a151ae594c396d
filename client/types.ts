/**
 * The client's public types: what {@linkcode dial} takes, what a
 * {@linkcode Client} reports, and the options of its calls.
 *
 * @module
 */

import type { ClientTlsOptions, Endpoint } from "../transport/connect.ts";
import type { SessionOptions } from "../options.ts";
import type {
  Counters,
  Handler,
  HandlerContext,
  RequestOptions,
  SendOptions,
  Session,
  SessionState,
} from "../session/types.ts";
import type { BackoffOptions } from "../backoff.ts";
import type { Client } from "./client.ts";
import type { EndpointSource } from "./discovery.ts";

/**
 * Where to connect: `"host:port"`, `"unix:/path"`, an endpoint object, a
 * list of them, or a source that finds them and tells when they change
 * (DNS through `dnsEndpoints()`, a `Discovery` of your own, an async
 * iterable of lists).
 */
export type DialTarget =
  | string
  | Endpoint
  | ReadonlyArray<string | Endpoint>
  | EndpointSource;

/** Outlier ejection settings (`DialOptions.ejection`). */
export interface EjectionOptions {
  /**
   * Failures in a row that eject an endpoint: connection attempts that
   * failed, or requests that timed out or lost their session (a
   * `RemoteError` is an answer, not a failure). An integer >= 1.
   *
   * @default {5}
   */
  consecutiveFailures?: number;
  /**
   * Milliseconds of the first ejection; each ejection that follows within
   * `maxTime` of the endpoint's return lasts twice the last.
   *
   * @default {1000}
   */
  baseTime?: number;
  /**
   * Longest ejection, in milliseconds.
   *
   * @default {30000}
   */
  maxTime?: number;
  /**
   * The most endpoints, in percent of the fleet, that may be ejected at
   * once; one endpoint always stays, whatever this says.
   *
   * @default {50}
   */
  maxPercent?: number;
}

/** One endpoint of a client, in `stats().endpoints`. */
export interface EndpointStats {
  /** The endpoint, as `"host:port"` or `"unix:/path"`. */
  endpoint: string;
  /**
   * `"active"` takes requests; `"ejected"` is left alone for a while after
   * failing too often; `"draining"` left the fleet and finishes its
   * in-flight requests.
   */
  state: "active" | "ejected" | "draining";
  /** Its sessions that are ready. */
  ready: number;
  /** Requests pending on its open sessions (draining ones included). */
  pending: number;
  /** Connection attempts that failed in a row. */
  connectFailures: number;
  /** Requests that failed in a row (timed out or lost their session). */
  requestFailures: number;
  /** Times it was ejected. */
  ejections: number;
  /** Milliseconds of ejection left (0 unless ejected). */
  ejectedFor: number;
}

/** Heartbeat settings. */
export interface HeartbeatOptions<T> {
  /**
   * Heartbeat period in milliseconds. A heartbeat is sent after half of it
   * of read silence, each waits half of it for an answer, and after
   * `maxMissed` unanswered ones in a row the session is closed. With the
   * default `maxMissed` a half-open connection is found within 2 intervals:
   * 1.5 intervals of waiting (the silence before the first heartbeat, then
   * each heartbeat's wait) plus up to two housekeeping ticks (a quarter
   * interval each, at most 1 s). 0 or `Infinity` turns heartbeats off (as
   * `heartbeat: false`).
   *
   * @default {30000}
   */
  interval?: number;
  /**
   * Unanswered heartbeats in a row that close the session; an integer >= 1.
   *
   * @default {2}
   */
  maxMissed?: number;
  /**
   * Builds the heartbeat request for a custom codec (for example an ISO 8583
   * echo 0800 with a fresh STAN); its reply is matched like any request.
   * Required for custom codecs; the default protocol uses ping frames.
   */
  message?: () => T;
}

/** Reconnect settings. */
export interface ReconnectOptions extends BackoffOptions {
  /**
   * A session that stayed ready this long (ms) resets the backoff.
   *
   * @default {1000}
   */
  stableAfter?: number;
  /**
   * Give up a slot after this many failed attempts in a row (0 = never).
   *
   * @default {0}
   */
  maxAttempts?: number;
  /**
   * Called before each retry; return `false` to stop reconnecting this slot.
   */
  shouldReconnect?: (error: unknown, attempt: number) => boolean;
}

/**
 * Options of {@linkcode dial}.
 *
 * @typeParam T The message type.
 */
export interface DialOptions<T>
  extends SessionOptions<T, ClientHandlerContext<T>> {
  /**
   * Sessions per endpoint.
   *
   * @default {1}
   */
  sessions?: number;
  /** TLS (`Deno.connectTls`); with `cert` and `key`, mTLS. */
  tls?: ClientTlsOptions;
  /**
   * Milliseconds `dial()` waits for the first ready session, and each
   * connection attempt (handshake, connect ping and `onConnect` included)
   * may take. 0 or `Infinity` = no limit (`signal` can still abort).
   *
   * @default {10000}
   */
  connectTimeout?: number;
  /**
   * Milliseconds a session the server asked to drain may stay open after
   * this client finished its own requests on it and half-closed: a server
   * that still does not close it is left, so the slot reconnects. 0 or
   * `Infinity` = wait for the server.
   *
   * @default {10000}
   */
  drainTimeout?: number;
  /**
   * Which sessions' replies may complete a request: those of any session
   * to the endpoint it was sent to ("endpoint": hosts that answer on another
   * link of theirs), or of any session of this client ("any": endpoints
   * that share one correlation space, such as two front ends of one host).
   * A reply from elsewhere counts as late (`stats().lateReplies`).
   *
   * @default {"endpoint"}
   */
  acceptReplies?: "endpoint" | "any";
  /** Aborts `dial()` (the client is closed). */
  signal?: AbortSignal;
  /**
   * How requests pick a ready session: in turn (`"round-robin"`), the one
   * with the fewest pending requests (`"least-pending"`, a scan of every
   * session), or the power of two choices (`"p2c"`: of two sessions drawn
   * at random, the one with fewer pending requests — cheap at any fleet
   * size, and a slow endpoint loses most draws).
   *
   * @default {"round-robin"} for endpoints given as a list, `"p2c"` for a discovered fleet
   */
  routing?: "round-robin" | "least-pending" | "p2c";
  /**
   * Outlier ejection: an endpoint that keeps failing takes no requests for
   * a while, and its slots wait as long before they try again. It needs a
   * second endpoint to send requests to. `false` turns it off.
   *
   * @default {{}} (on, with the defaults of {@linkcode EjectionOptions})
   */
  ejection?: EjectionOptions | false;
  /**
   * Whether a request made while no session is ready waits for one (until
   * its own deadline) instead of failing at once with `NoSessionError`.
   *
   * @default {true}
   */
  waitForSession?: boolean;
  /**
   * Requests that may wait for a session at once; more fail with
   * `NoSessionError`. An integer >= 0.
   *
   * @default {10000}
   */
  maxWaitingRequests?: number;
  /**
   * Runs after each connect, before the session takes requests (sign-on,
   * auth). It may use `session.request()`. The session becomes ready once
   * the returned value (a promise is awaited) settles; the value itself is
   * ignored, so `(session) => session.request(signOn)` works as it reads.
   * A throw or rejection closes the session and the slot backs off.
   */
  onConnect?: (
    session: Session<T>,
    context: { signal: AbortSignal },
  ) => unknown;
  /** Reconnect backoff. */
  reconnect?: ReconnectOptions;
  /**
   * Heartbeat. On by default with the default protocol; custom codecs need
   * `heartbeat.message`. `false` turns it off.
   */
  heartbeat?: HeartbeatOptions<T> | false;
}

/**
 * The context a client's handler receives: the session's, and the client.
 *
 * @typeParam T The message type.
 */
export interface ClientHandlerContext<T> extends HandlerContext<T> {
  /** The client the message came to. */
  readonly client: Client<T>;
}

/**
 * Handles what the server sends that is not a reply: its pushes and its
 * requests (see {@linkcode Handler}).
 *
 * @typeParam T The message type.
 */
export type ClientHandler<T> = Handler<T, ClientHandlerContext<T>>;

/** Options of {@linkcode Client.request}. */
export interface ClientRequestOptions<T> extends RequestOptions {
  /**
   * Send on this session (from `client.sessions`) instead of routing. Such a
   * request is never sent again on another session.
   */
  session?: Session<T>;
  /** Overrides the client's `waitForSession` for this call. */
  waitForSession?: boolean;
  /**
   * The request may run twice: should its session end before the reply,
   * it is sent again on another ready session (within its deadline) even
   * when the server may have run it. Without it, only requests known not
   * to have run are sent again. Keeps a copy of the request's bytes until
   * the reply.
   *
   * @default {false}
   */
  idempotent?: boolean;
}

/**
 * Options of {@linkcode Client.pipeline}: those of a request, for every
 * request of the batch. `timeout` is each request's own deadline (they run
 * at once, so it also bounds the batch); `signal` aborts the requests not
 * answered yet.
 */
export type PipelineOptions<T> = ClientRequestOptions<T>;

/** Options of {@linkcode Client.send}. */
export interface ClientSendOptions<T> extends SendOptions {
  /** Send on this session instead of routing. */
  session?: Session<T>;
  /**
   * Milliseconds to wait for a ready session. 0 or `Infinity` = no limit.
   *
   * @default {5000} (the client's `requestTimeout`)
   */
  timeout?: number;
}

/** Options of {@linkcode Client.close}. */
export interface CloseOptions {
  /**
   * Milliseconds to let pending requests finish before sockets are forced
   * shut. Unlike the other timeouts, 0 means no grace (force at once);
   * `Infinity` waits as long as it takes.
   *
   * @default {5000}
   */
  timeout?: number;
}

/** Counters of a client. */
export interface ClientStats extends Counters {
  /** Sessions by state. */
  sessions: Record<SessionState | "connecting", number>;
  /** Requests waiting for a reply. */
  pending: number;
  /** Requests waiting for a ready session. */
  waiting: number;
  /** Requests that timed out. */
  timeouts: number;
  /** Reconnect attempts made. */
  reconnects: number;
  /**
   * Requests sent again on another session because their own could not
   * deliver them unprocessed (or, `idempotent`, at all).
   */
  retried: number;
  /** Each endpoint: its state, sessions, pending requests and failures. */
  endpoints: EndpointStats[];
  /** Endpoint discovery: lists applied, and failures (lists kept). */
  discovery: { updates: number; errors: number };
}

/** Detail of client events (`event.detail` of a `CustomEvent`). */
export type ClientEventDetail =
  | { type: "connect"; endpoint: string; session: number }
  | { type: "ready"; endpoint: string; session: number }
  | { type: "disconnect"; endpoint: string; session: number; reason: unknown }
  | { type: "reconnecting"; endpoint: string; attempt: number; delay: number }
  | { type: "drain"; endpoint: string; session: number }
  | { type: "error"; endpoint: string; error: unknown }
  | { type: "endpoint-added"; endpoint: string }
  | { type: "endpoint-removed"; endpoint: string }
  | {
    type: "endpoint-ejected";
    endpoint: string;
    failures: number;
    duration: number;
  }
  | { type: "endpoint-returned"; endpoint: string }
  | { type: "close" };
