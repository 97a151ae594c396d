/**
 * The client users hold: requests, sends, the handler of what the server
 * sends, stats, events and close. Its pool (`pool.ts`) keeps sessions
 * alive, and requests go where the router (`router.ts`) says.
 *
 * @module
 */

import type { Endpoint } from "../transport/connect.ts";
import { Correlator, type Pending, Retry } from "../_correlation.ts";
import type { Dialect } from "../session/dialect.ts";
import {
  callTimeout,
  deadlineMs,
  timeoutOption,
  withResolvers,
} from "../_util.ts";
import type { SessionSettings } from "../options.ts";
import { after } from "../_timeouts.ts";
import { Housekeeper, type LivenessOptions } from "../_housekeeping.ts";
import type { SessionConfig, SessionImpl } from "../session/session.ts";
import {
  type Counters,
  type Handler,
  newCounters,
  type PipelineResult,
  type Session,
} from "../session/types.ts";
import type { Logger } from "../logger.ts";
import { ClosedError, NoSessionError } from "../errors.ts";
import { Pool } from "./pool.ts";
import {
  type InboundMessage,
  InboundStreams,
  type MessagesOptions,
} from "../streams/inbound.ts";
import {
  type StatusDropped,
  type StatusOptions,
  statusStream,
} from "../streams/status.ts";
import { SendStream } from "../streams/writable.ts";
import type { EjectionSettings, Fleet } from "./fleet.ts";
import type { EndpointSource } from "./discovery.ts";
import { Router, type Routing } from "./router.ts";
import { pipeline, type PipelineHost, requestWhenReady } from "./pipeline.ts";
import type {
  ClientEventDetail,
  ClientHandler,
  ClientRequestOptions,
  ClientSendOptions,
  ClientStats,
  CloseOptions,
  DialOptions,
  PipelineOptions,
} from "./types.ts";

/** What `client.status()` yields: events, and what a slow reader lost. */
export type ClientStatus = ClientEventDetail | StatusDropped;

const STATUS_EVENTS = [
  "connect",
  "ready",
  "disconnect",
  "reconnecting",
  "drain",
  "error",
  "endpoint-added",
  "endpoint-removed",
  "endpoint-ejected",
  "endpoint-returned",
  "close",
] as const;

/** Guards the constructor: only `dial()` makes clients. */
export const INTERNAL: unique symbol = Symbol("tcpbutler.client");

/** A client's options, checked and resolved by `dial()`. */
export interface ClientSetup<T> {
  endpoints: Endpoint[];
  /** Where endpoints come from when they change; `endpoints` is empty then. */
  source: EndpointSource | undefined;
  /** Outlier ejection; `undefined` = off. */
  ejection: EjectionSettings | undefined;
  dialect: Dialect<T>;
  /** The user's options, for what needs no resolving (hooks, TLS). */
  options: DialOptions<T>;
  settings: SessionSettings;
  logger: Logger;
  /** Milliseconds (`Infinity` = none). */
  connectTimeout: number;
  drainTimeout: number;
  acceptReplies: "endpoint" | "any";
  sessionsPerEndpoint: number;
  routing: Routing;
  waitForSession: boolean;
  maxWaitingRequests: number;
  liveness: LivenessOptions<T>;
}

/** What `dial()` reaches inside a client; set by the class's static block. */
export let clientInternals: {
  start<T>(client: Client<T>): void;
  firstReady<T>(client: Client<T>): Promise<void>;
  lastError<T>(client: Client<T>): unknown;
};

/**
 * A pool of persistent sessions. Make one with {@linkcode dial}.
 *
 * Events (`addEventListener`): `connect`, `ready`, `disconnect`,
 * `reconnecting`, `drain`, `error`, `close`, and for its fleet
 * `endpoint-added`, `endpoint-removed`, `endpoint-ejected`,
 * `endpoint-returned`; each a `CustomEvent` whose `detail` is a
 * {@linkcode ClientEventDetail}; {@linkcode Client.status} reads them as a
 * stream.
 *
 * @typeParam T The message type (`Uint8Array` payloads with the default protocol).
 */
export class Client<T> extends EventTarget implements AsyncDisposable {
  readonly #settings: SessionSettings;
  readonly #dialect: Dialect<T>;
  readonly #correlator = new Correlator();
  readonly #counters: Counters = newCounters();
  readonly #router: Router<T>;
  readonly #pool: Pool<T>;
  readonly #fleet: Fleet<T>;
  readonly #config: SessionConfig<T>;
  readonly #housekeeper: Housekeeper<T>;
  readonly #closed = withResolvers<void>();
  #handler: ClientHandler<T> | undefined;
  #closing: Promise<void> | undefined;
  /** Made on first use. */
  #streams: InboundStreams<T> | undefined;
  #writable: SendStream<T> | undefined;
  #calls: PipelineHost<T> | undefined;

  /**
   * Not for users: {@linkcode dial} makes clients.
   *
   * @ignore
   */
  constructor(token: typeof INTERNAL, setup: ClientSetup<T>) {
    if (token !== INTERNAL) {
      throw new TypeError("Cannot construct Client: use dial()");
    }
    super();
    const { dialect, options, settings, logger } = setup;
    this.#settings = settings;
    this.#dialect = dialect;
    this.#handler = options.handler;
    this.#config = {
      side: "client",
      dialect,
      correlator: this.#correlator,
      counters: this.#counters,
      logger,
      // An open message stream stands in for the handler (streams/inbound.ts).
      handler: () =>
        this.#streams?.handler ?? this.#handler as Handler<T> | undefined,
      context: { client: this },
      retry: (entry, bytes) => this.#retry(entry, bytes),
      replies: setup.acceptReplies,
      onHandlerError: options.onHandlerError,
      maxConcurrentHandlers: settings.maxConcurrentHandlers,
      highWaterMark: settings.outboundBuffer,
      maxWriteBytes: settings.maxWriteBytes,
      requestTimeout: deadlineMs(settings.requestTimeout),
      onClose: (session) => {
        this.#router.remove(session);
        this.#pool.sessionClosed(session);
      },
      onPeerDrain: (session) => {
        this.#router.remove(session);
        this.#pool.drained(session);
        this.#leave(session, setup.drainTimeout);
      },
    };
    this.#router = new Router({
      routing: setup.routing,
      waitForSession: setup.waitForSession,
      maxWaitingRequests: setup.maxWaitingRequests,
      timeouts: this.#correlator.timeouts,
      gaveUp: () => this.#pool.allStopped(),
      lastError: () => this.#pool.lastError(),
    });
    this.#pool = new Pool({
      setup,
      config: this.#config,
      router: this.#router,
      emit: (detail) => this.#emit(detail),
      gaveUp: (error) => this.#streams?.fail(error),
    });
    this.#fleet = this.#pool.fleet;
    this.#housekeeper = new Housekeeper(
      () => this.#pool.sessions,
      setup.liveness,
    );
  }

  static {
    // dial() needs these; as #private members they stay off the public
    // surface, and this block is the only way out of the class body.
    clientInternals = {
      start: (client) => client.#start(),
      firstReady: (client) => client.#pool.firstReady,
      lastError: (client) => client.#pool.lastError(),
    };
  }

  /** Starts the liveness checks and the slots. */
  #start(): void {
    this.#housekeeper.start();
    this.#pool.start();
  }

  /** The sessions currently open (ready, handshaking or draining). */
  get sessions(): readonly Session<T>[] {
    return [...this.#pool.sessions];
  }

  /** Whether `close()` has been called. */
  get isClosed(): boolean {
    return this.#closing !== undefined;
  }

  /** Resolves once the client is fully closed. */
  get closed(): Promise<void> {
    return this.#closed.promise;
  }

  /**
   * The handler of pushes and requests from the server (the `handler`
   * option). Assigning replaces it for every session at once: each message
   * goes to the handler set when it is dispatched (requests held behind
   * `maxConcurrentHandlers` included), calls already running finish in the
   * old one. With none set, a message counts as a handler failure: a
   * default-protocol request gets an error reply (`RemoteError`), anything
   * else is logged and counted in `stats().handlerErrors`.
   */
  get handler(): ClientHandler<T> | undefined {
    return this.#handler;
  }

  set handler(handler: ClientHandler<T> | undefined) {
    this.#handler = handler;
  }

  /**
   * The server's pushes and requests as a stream that stands in for the
   * `handler` while open; each holds a handler slot of its session until
   * read (a push) or answered (a request: {@linkcode InboundMessage}), so a
   * slow reader pauses the server. Ends when the client (or the session
   * given) closes; errors with `NoSessionError` once every slot gave up
   * reconnecting (`reconnect.maxAttempts`). See the README's "Streams".
   *
   * @param options A session to read alone, and a signal.
   * @returns The stream of inbound messages.
   * @throws {TypeError} One is open for the same sessions, or the session
   * is not this client's.
   */
  messages(options?: MessagesOptions<T>): ReadableStream<InboundMessage<T>> {
    const session = options?.session;
    if (session !== undefined && session.state !== "closed") {
      this.#own(session);
    }
    const handler = () => this.#handler as Handler<T> | undefined;
    const logger = this.#config.logger;
    this.#streams ??= new InboundStreams(handler, logger, this.closed);
    const stream = this.#streams.open(options);
    if (this.#pool.allStopped()) {
      this.#streams.fail(
        new NoSessionError("Cannot read messages: every slot gave up"),
      );
    }
    return stream;
  }

  /**
   * The client's events (see {@linkcode ClientEventDetail}) as a stream,
   * like nats.js `status()`; it ends after `close`. A reader `buffer`
   * events behind loses the oldest, counted in a `dropped` entry.
   *
   * @param options The buffer size and a signal.
   * @returns The stream of events.
   * @throws {RangeError} `buffer` is not an integer >= 1.
   */
  status(options?: StatusOptions): ReadableStream<ClientStatus> {
    return statusStream(this, STATUS_EVENTS, "close", this.closed, options);
  }

  /**
   * Fire-and-forget sends ({@linkcode Client.send}) as a stream, for
   * `pipeTo()`: a write resolves while fewer than `outboundBuffer` of its
   * messages wait to be written; a failed send errors it. The same stream
   * until it is closed or errored, then a new one.
   */
  get writable(): WritableStream<T> {
    const window = this.#settings.outboundBuffer;
    if (this.#writable?.open !== true) {
      this.#writable = new SendStream((message) => this.send(message), window);
    }
    return this.#writable.stream;
  }

  /**
   * The shared options this client runs with (see {@linkcode SessionOptions}),
   * defaults filled in; a server given the same options reports the same.
   */
  get settings(): SessionSettings {
    return this.#settings;
  }

  /**
   * Sends a request and waits for its reply, on the next ready session.
   * The message is encoded (or copied) before this returns: its buffer may
   * be reused at once.
   *
   * @param message The request (payload bytes with the default protocol).
   * @param options Timeout, signal, a session to use, whether to wait for one.
   * @returns The reply.
   * @throws {TimeoutError} No reply before the timeout. A request aborted by
   * `AbortSignal.timeout()` rejects with that signal's `DOMException` (also
   * named `"TimeoutError"`) instead: tell them apart with `instanceof`.
   * @throws {NoSessionError} No session became ready in time (or at once, with `waitForSession: false`).
   * @throws {ConnectionClosedError} The session closed while the request was pending.
   * @throws {RemoteError} The server's handler failed (default protocol).
   * @throws {DuplicateIdError} Custom codecs: the id is already pending.
   * @throws {ClosedError} The client is closing or closed.
   *
   * @example Abort a request
   * ```ts
   * import { dial, serve } from "@tcpbutler/core";
   * import assert from "node:assert/strict";
   *
   * await using server = serve({ hostname: "127.0.0.1", port: 0, handler: () => new Promise(() => {}) });
   * await using client = await dial({ hostname: "127.0.0.1", port: server.port });
   * const controller = new AbortController();
   * const reply = client.request(new Uint8Array([1]), { signal: controller.signal });
   * controller.abort(new Error("changed my mind"));
   * await assert.rejects(reply, { message: "changed my mind" });
   * await server.shutdown({ timeout: 100 });
   * ```
   */
  request(message: T, options?: ClientRequestOptions<T>): Promise<T> {
    if (this.#closing !== undefined) {
      return Promise.reject(
        new ClosedError("Cannot send request: client is closed"),
      );
    }
    if (options === undefined) {
      // The common call: no options object to allocate and read.
      const session = this.#router.pick();
      if (session !== undefined) {
        const reply = session.requestOn(
          message,
          undefined,
          undefined,
          false,
          Retry.Unprocessed,
        );
        return this.#fleet.watching ? this.#fleet.watch(session, reply) : reply;
      }
      options = {};
    }
    let session: SessionImpl<T> | undefined;
    let callTimeoutMs: number | undefined;
    try {
      callTimeoutMs = callTimeout(options.timeout);
      session = options.session !== undefined
        ? this.#own(options.session)
        : this.#router.pick();
    } catch (error) {
      return Promise.reject(error);
    }
    const retry = options.idempotent ? Retry.Idempotent : Retry.Unprocessed;
    if (session !== undefined) {
      if (options.session !== undefined) {
        return session.request(message, options);
      }
      const reply = session.requestOn(
        message,
        callTimeoutMs,
        options.signal,
        false,
        retry,
      );
      return this.#fleet.watching ? this.#fleet.watch(session, reply) : reply;
    }
    if (options.session !== undefined) {
      return Promise.reject(
        new NoSessionError("Cannot send request: that session is closed"),
      );
    }
    return requestWhenReady(
      this.#host(),
      message,
      options,
      callTimeoutMs,
      retry,
    );
  }

  /** A draining server's session: finish, half-close, leave after `ms`. */
  #leave(session: SessionImpl<T>, ms: number): void {
    void session.drain(new AbortController().signal, undefined, ms);
  }

  /** The session could not deliver a request: the router sends it again. */
  #retry(entry: Pending, bytes: Uint8Array): void {
    if (this.#closing !== undefined) {
      return entry.fail(
        new ClosedError("Cannot retry request: client is closed"),
      );
    }
    this.#router.retry(entry, bytes);
  }

  /**
   * Sends many requests at once, on one session, and waits for all their
   * replies: one promise for the batch, each outcome in the slot of its
   * request (replies may arrive in any order; the results are in the
   * batch's). Cheaper per request than `request()` when a caller has many
   * requests ready at once (a Redis-style pipeline, a burst of market data
   * or telemetry); `request()` suits requests that come one by one, or
   * whose replies are each wanted as soon as they arrive. The messages are
   * encoded (or copied) before this returns; past `outboundBuffer` the rest
   * of the batch waits, in order, for room in the write queue.
   *
   * @param messages The requests, in order.
   * @param options As for {@linkcode Client.request}, for each request of the batch.
   * @returns One result per message, in the batch's order: `{ ok: true,
   * value }` or `{ ok: false, error }` with the error `request()` would have
   * rejected with (`TimeoutError`, `RemoteError`, `signal.reason`, …).
   * @throws {ClosedError} The client is closing or closed.
   * @throws {NoSessionError} `session` is closed.
   * @throws {ConnectionClosedError} `session` is draining.
   *
   * @example Usage
   * ```ts
   * import { dial, serve } from "@tcpbutler/core";
   * import assert from "node:assert/strict";
   *
   * await using server = serve({ hostname: "127.0.0.1", port: 0, handler: (m) => m });
   * await using client = await dial({ hostname: "127.0.0.1", port: server.port });
   * const results = await client.pipeline([new Uint8Array([1]), new Uint8Array([2])]);
   * assert.deepEqual(results.map((r) => r.ok ? [...r.value] : r.error), [[1], [2]]);
   * ```
   */
  pipeline(
    messages: Iterable<T>,
    options?: PipelineOptions<T>,
  ): Promise<PipelineResult<T>[]> {
    if (this.#closing !== undefined) {
      return Promise.reject(
        new ClosedError("Cannot send pipeline: client is closed"),
      );
    }
    return pipeline(this.#host(), messages, options);
  }

  /** What a pipeline, or a request waiting for a session, needs. */
  #host(): PipelineHost<T> {
    return this.#calls ??= {
      dialect: this.#dialect,
      requestTimeout: this.#config.requestTimeout,
      router: this.#router,
      own: (session) => this.#own(session),
    };
  }

  /**
   * Sends a message that expects no reply (a push with the default
   * protocol). Resolves once written to the socket.
   * The message is encoded (or copied) before this returns: its buffer may
   * be reused at once.
   *
   * @param message The message.
   * @param options Signal, session, timeout for finding a session.
   * @throws {NoSessionError} No session became ready in time.
   * @throws {ConnectionClosedError} The session closed before the write.
   * @throws {ClosedError} The client is closing or closed.
   */
  async send(message: T, options?: ClientSendOptions<T>): Promise<void> {
    options ??= {};
    if (this.#closing !== undefined) {
      throw new ClosedError("Cannot send: client is closed");
    }
    const timeout = callTimeout(options.timeout);
    const session = options.session !== undefined
      ? this.#own(options.session)
      : this.#router.pick();
    if (session === undefined) {
      if (options.session !== undefined) {
        throw new NoSessionError("Cannot send: that session is closed");
      }
      // It waits for a session: encode it now (the caller may reuse its
      // message as soon as send() returns).
      const bytes = this.#dialect.codec.encode(this.#dialect.push(message));
      const ready = await this.#router.wait(
        timeout ?? this.#config.requestTimeout,
        options.signal,
        undefined,
      ) as SessionImpl<T>;
      return ready.sendEncoded(bytes, options.signal);
    }
    return session.send(message, options);
  }

  #own(session: Session<T>): SessionImpl<T> | undefined {
    const impl = session as SessionImpl<T>;
    if (!this.#pool.sessions.has(impl)) {
      throw new TypeError(
        "Cannot use session: it does not belong to this client",
      );
    }
    return impl.state === "closed" ? undefined : impl;
  }

  #emit(detail: ClientEventDetail): void {
    this.dispatchEvent(new CustomEvent(detail.type, { detail }));
  }

  /**
   * Counters and gauges.
   *
   * @returns A snapshot.
   */
  stats(): ClientStats {
    const sessions = {
      connecting: this.#pool.connecting,
      handshaking: 0,
      ready: 0,
      draining: 0,
      closed: 0,
    };
    for (const session of this.#pool.sessions) sessions[session.state]++;
    return {
      ...this.#counters,
      sessions,
      pending: this.#correlator.count,
      waiting: this.#router.waiting,
      timeouts: this.#correlator.timedOut,
      reconnects: this.#pool.reconnects,
      retried: this.#router.retried,
      endpoints: this.#fleet.stats(),
      discovery: this.#fleet.discovery,
    };
  }

  /**
   * Closes the client gracefully: new requests fail with `ClosedError`,
   * pending requests get `timeout` ms to complete, then sockets close
   * (forced at the timeout). Idempotent; resolves when closed.
   *
   * @param options The grace period.
   * @throws {RangeError} `timeout` is negative or `NaN` (the client is not
   * closed then).
   */
  close(options?: CloseOptions): Promise<void> {
    let timeout: number;
    try {
      timeout = timeoutOption(options?.timeout ?? 5000, "timeout");
    } catch (error) {
      return Promise.reject(error);
    }
    this.#closing ??= this.#close(timeout);
    return this.#closing;
  }

  async #close(timeout: number): Promise<void> {
    const discovering = this.#fleet.close();
    this.#pool.close();
    const grace = new AbortController();
    const cancelTimer = after(
      timeout,
      () => grace.abort(new ClosedError("Client close timeout")),
    );
    try {
      await Promise.all(
        [...this.#pool.sessions].map((session) => session.drain(grace.signal)),
      );
      await this.#pool.done();
      await discovering;
    } finally {
      cancelTimer();
      this.#housekeeper.stop();
      this.#correlator.close();
    }
    this.#emit({ type: "close" });
    this.#closed.resolve();
  }

  /** Same as `close()`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
