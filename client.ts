/**
 * The client: a pool of persistent sessions over one or more endpoints, with
 * reconnect, routing, request/response and pushes from the server.
 *
 * @module
 */

import type { Codec } from "./framing/codec.ts";
import {
  type ClientTlsOptions,
  connect,
  type Endpoint,
  formatEndpoint,
  parseEndpoint,
} from "./transport/connect.ts";
import type { Transport } from "./connection.ts";
import {
  Correlator,
  type Pending,
  type PendingOwner,
  Retry,
} from "./_correlation.ts";
import {
  codecDialect,
  defaultDialect,
  type Dialect,
  requestId,
} from "./_dialect.ts";
import {
  abortable,
  callTimeout,
  countOption,
  deadlineMs,
  timeoutOption,
} from "./_util.ts";
import {
  resolveSessionOptions,
  type SessionOptions,
  type SessionSettings,
} from "./options.ts";
import { after, type Timed } from "./_timeouts.ts";
import { Housekeeper } from "./_housekeeping.ts";
import {
  type EncodedRequest,
  type SessionConfig,
  SessionImpl,
} from "./session/session.ts";
import {
  type Counters,
  type Handler,
  type HandlerContext,
  newCounters,
  type RequestOptions,
  type SendOptions,
  type Session,
  type SessionState,
} from "./session/types.ts";
import { type BackoffOptions, delay, exponentialBackoff } from "./backoff.ts";
import { type Logger, safeLogger } from "./logger.ts";
import {
  ClosedError,
  ConnectionError,
  NoSessionError,
  ProtocolMismatchError,
  RetryExhaustedError,
} from "./errors.ts";

/** Where to connect: `"host:port"`, `"unix:/path"`, an endpoint object, or a list of them. */
export type DialTarget = string | Endpoint | ReadonlyArray<string | Endpoint>;

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
  /** Aborts `dial()` (the client is closed). */
  signal?: AbortSignal;
  /**
   * How requests pick a session: in turn, or the one with the fewest
   * pending requests.
   *
   * @default {"round-robin"}
   */
  routing?: "round-robin" | "least-pending";
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
}

/** Detail of client events (`event.detail` of a `CustomEvent`). */
export type ClientEventDetail =
  | { type: "connect"; endpoint: string; session: number }
  | { type: "ready"; endpoint: string; session: number }
  | { type: "disconnect"; endpoint: string; session: number; reason: unknown }
  | { type: "reconnecting"; endpoint: string; attempt: number; delay: number }
  | { type: "error"; endpoint: string; error: unknown }
  | { type: "close" };

/** Guards the constructor: only this module makes clients. */
const INTERNAL: unique symbol = Symbol("tcpbutler.client");

/** What dial() reaches inside a client; set by the class's static block. */
let clientInternals: {
  start<T>(client: Client<T>): void;
  firstReady<T>(client: Client<T>): Promise<void>;
  lastError<T>(client: Client<T>): unknown;
};

interface Slot {
  endpoint: Endpoint;
  name: string;
  session: SessionImpl<unknown> | undefined;
  connecting: boolean;
  stopped: boolean;
  lastError: unknown;
  done: Promise<void>;
}

interface Waiter extends Timed {
  settled: boolean;
  resolve(session: SessionImpl<unknown>): void;
  reject(reason: unknown): void;
}

/**
 * A pool of persistent sessions. Make one with {@linkcode dial}.
 *
 * Events (`addEventListener`): `connect`, `ready`, `disconnect`,
 * `reconnecting`, `error`, `close`, each a `CustomEvent` whose `detail` is a
 * {@linkcode ClientEventDetail}.
 *
 * @typeParam T The message type (`Uint8Array` payloads with the default protocol).
 */
export class Client<T> extends EventTarget implements AsyncDisposable {
  readonly #options: DialOptions<T>;
  readonly #settings: SessionSettings;
  readonly #connectTimeout: number;
  readonly #dialect: Dialect<T>;
  readonly #correlator = new Correlator();
  readonly #counters: Counters = newCounters();
  readonly #slots: Slot[] = [];
  readonly #ready: SessionImpl<T>[] = [];
  readonly #all = new Set<SessionImpl<T>>();
  /** Requests waiting for a ready session, in order (a Set: O(1) removal). */
  readonly #waiters = new Set<Waiter>();
  readonly #stop = new AbortController();
  readonly #config: SessionConfig<T>;
  readonly #housekeeper: Housekeeper<T>;
  readonly #logger: Logger;
  readonly #closed = Promise.withResolvers<void>();
  #handler: ClientHandler<T> | undefined;
  #roundRobin = 0;
  #reconnects = 0;
  #retried = 0;
  /** The owner of retried requests between two sessions. */
  readonly #inTransit: PendingOwner = {
    pendingCount: 0,
    requestSettled: () => {},
    unkeyed: () => [],
  };
  #closing: Promise<void> | undefined;
  #firstReady = Promise.withResolvers<void>();

  /**
   * Not for users: {@linkcode dial} makes clients.
   *
   * @ignore
   */
  constructor(
    token: typeof INTERNAL,
    endpoints: Endpoint[],
    dialect: Dialect<T>,
    options: DialOptions<T>,
  ) {
    if (token !== INTERNAL) {
      throw new TypeError("Cannot construct Client: use dial()");
    }
    super();
    const settings = resolveSessionOptions(options);
    this.#settings = settings;
    this.#options = options;
    this.#dialect = dialect;
    this.#logger = safeLogger(options.logger);
    this.#handler = options.handler;
    this.#firstReady.promise.catch(() => {});
    this.#connectTimeout = deadlineMs(timeoutOption(
      options.connectTimeout ?? 10_000,
      "connectTimeout",
    ));
    countOption(options.maxWaitingRequests ?? 10_000, "maxWaitingRequests", 0);
    this.#config = {
      side: "client",
      dialect,
      correlator: this.#correlator,
      counters: this.#counters,
      logger: this.#logger,
      handler: () => this.#handler as Handler<T> | undefined,
      context: { client: this },
      retry: (entry, bytes) => this.#retry(entry, bytes),
      onHandlerError: options.onHandlerError,
      maxConcurrentHandlers: settings.maxConcurrentHandlers,
      highWaterMark: settings.outboundBuffer,
      maxWriteBytes: settings.maxWriteBytes,
      requestTimeout: deadlineMs(settings.requestTimeout),
      onClose: (session) => this.#sessionClosed(session),
      onPeerDrain: (session) => this.#unroute(session),
    };
    const heartbeat = options.heartbeat === false
      ? undefined
      : options.heartbeat ?? (dialect.framed ? {} : undefined);
    const interval = heartbeat === undefined ? 0 : timeoutOption(
      heartbeat.interval ?? 30_000,
      "heartbeat.interval",
    );
    const maxMissed = countOption(
      heartbeat?.maxMissed ?? 2,
      "heartbeat.maxMissed",
      1,
    );
    if (
      heartbeat !== undefined && interval !== 0 && interval !== Infinity &&
      !dialect.framed && heartbeat.message === undefined
    ) {
      throw new TypeError(
        "Cannot use heartbeat: a custom codec needs heartbeat.message",
      );
    }
    this.#housekeeper = new Housekeeper(() => this.#all, {
      idleTimeout: settings.idleTimeout,
      heartbeatInterval: interval === Infinity ? 0 : interval,
      maxMissed,
      heartbeatMessage: heartbeat?.message,
      writeTimeout: settings.writeTimeout,
    });
    const perEndpoint = countOption(options.sessions ?? 1, "sessions", 1);
    for (const endpoint of endpoints) {
      for (let i = 0; i < perEndpoint; i++) {
        this.#slots.push({
          endpoint,
          name: formatEndpoint(endpoint),
          session: undefined,
          connecting: false,
          stopped: false,
          lastError: undefined,
          done: Promise.resolve(),
        });
      }
    }
  }

  static {
    // dial() needs these; as #private members they stay off the public
    // surface, and this block is the only way out of the class body.
    clientInternals = {
      start: (client) => client.#start(),
      firstReady: (client) => client.#firstReady.promise,
      lastError: (client) => client.#lastError(),
    };
  }

  /** Starts the slots. */
  #start(): void {
    this.#housekeeper.start();
    for (const slot of this.#slots) {
      // A slot loop never rejects on purpose; should it, log it rather than
      // leave an unhandled rejection.
      slot.done = this.#runSlot(slot).catch((error) => {
        slot.stopped = true;
        this.#logger.error("Session slot stopped", {
          endpoint: slot.name,
          error,
        });
      });
    }
  }

  /** The sessions currently open (ready, handshaking or draining). */
  get sessions(): readonly Session<T>[] {
    return [...this.#all];
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
      const session = this.#pick();
      if (session !== undefined) {
        return session.requestOn(
          message,
          undefined,
          undefined,
          false,
          Retry.Unprocessed,
        );
      }
      options = {};
    }
    let session: SessionImpl<T> | undefined;
    let callTimeoutMs: number | undefined;
    try {
      callTimeoutMs = callTimeout(options.timeout);
      session = options.session !== undefined
        ? this.#own(options.session)
        : this.#pick();
    } catch (error) {
      return Promise.reject(error);
    }
    const retry = options.idempotent ? Retry.Idempotent : Retry.Unprocessed;
    if (session !== undefined) {
      if (options.session !== undefined) {
        return session.request(message, options);
      }
      return session.requestOn(
        message,
        callTimeoutMs,
        options.signal,
        false,
        retry,
      );
    }
    if (options.session !== undefined) {
      return Promise.reject(
        new NoSessionError("Cannot send request: that session is closed"),
      );
    }
    const timeout = callTimeoutMs ?? this.#config.requestTimeout;
    const start = performance.now();
    // It waits for a session: keep it as it is now (the caller may reuse
    // its message as soon as request() returns).
    let held: T | EncodedRequest;
    try {
      held = this.#hold(message);
    } catch (error) {
      return Promise.reject(error);
    }
    const signal = options.signal;
    return this.#waitForSession(
      timeout,
      signal,
      options.waitForSession,
    ).then((ready) => {
      const left = Math.max(0, timeout - (performance.now() - start));
      return this.#dialect.framed
        ? ready.requestOn(held as T, left, signal, false, retry)
        : ready.requestEncoded(held as EncodedRequest, left, signal, retry);
    });
  }

  /**
   * Sends a request again on another ready session (its own could not
   * deliver it), or waits for one within the request's own deadline. It
   * keeps its id, so its reply is matched as before.
   */
  #retry(entry: Pending, bytes: Uint8Array): void {
    if (this.#closing !== undefined) {
      return entry.fail(
        new ClosedError("Cannot retry request: client is closed"),
      );
    }
    const from = entry.owner;
    entry.move(this.#inTransit);
    // Bytes from a read or write buffer: a copy of their own while they wait.
    entry.copy = bytes;
    const session = this.#pickOther(from);
    if (session !== undefined) {
      this.#retried++;
      return session.adopt(entry, bytes);
    }
    const deadline = entry.deadline;
    const left = deadline < 0
      ? entry.timeout
      : Math.max(0, deadline - performance.now());
    // The wait ends with the request (its deadline, its signal).
    const gone = new AbortController();
    const end = () => gone.abort();
    entry.promise.then(end, end);
    this.#waitForSession(left, gone.signal, undefined).then(
      (ready) => {
        if (entry.settled) return;
        this.#retried++;
        ready.adopt(entry, bytes);
      },
      (error) => entry.fail(error),
    );
  }

  /** A ready session other than `from`, routed as usual. */
  #pickOther(from: PendingOwner): SessionImpl<T> | undefined {
    const session = this.#pick();
    if (session !== from && session?.state === "ready") return session;
    return this.#ready.find((s) => s !== from && s.state === "ready");
  }

  /**
   * A request that waits for a session, as it is now: a copy of the payload
   * (the default protocol assigns the id on the session), or, for custom
   * codecs, its bytes and correlation id.
   */
  #hold(message: T): T | EncodedRequest {
    const dialect = this.#dialect;
    if (dialect.framed) return dialect.copy(message);
    const codec = dialect.codec;
    const id = dialect.mode === "message"
      ? requestId(codec, message)
      : undefined;
    return { bytes: codec.encode(message), id };
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
      : this.#pick();
    if (session === undefined) {
      if (options.session !== undefined) {
        throw new NoSessionError("Cannot send: that session is closed");
      }
      // It waits for a session: encode it now (the caller may reuse its
      // message as soon as send() returns).
      const bytes = this.#dialect.codec.encode(this.#dialect.push(message));
      const ready = await this.#waitForSession(
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
    if (!this.#all.has(impl)) {
      throw new TypeError(
        "Cannot use session: it does not belong to this client",
      );
    }
    return impl.state === "closed" ? undefined : impl;
  }

  #pick(): SessionImpl<T> | undefined {
    const ready = this.#ready;
    const n = ready.length;
    if (n === 0) return undefined;
    if (n === 1) return ready[0];
    if (this.#options.routing === "least-pending") {
      let best = ready[0]!;
      for (let i = 1; i < n; i++) {
        const s = ready[i]!;
        if (s.pendingCount < best.pendingCount) best = s;
      }
      return best;
    }
    const i = this.#roundRobin++ % n;
    if (this.#roundRobin >= 0x3fff_ffff) this.#roundRobin = 0;
    return ready[i];
  }

  #waitForSession(
    timeout: number,
    signal: AbortSignal | undefined,
    wait: boolean | undefined,
  ): Promise<SessionImpl<T>> {
    if ((wait ?? this.#options.waitForSession ?? true) === false) {
      return Promise.reject(
        new NoSessionError("Cannot send request: no session is ready", {
          cause: this.#lastError(),
        }),
      );
    }
    if (this.#slots.every((slot) => slot.stopped)) {
      return Promise.reject(
        new NoSessionError(
          "Cannot send request: every session slot gave up reconnecting",
          { cause: this.#lastError() },
        ),
      );
    }
    if (this.#waiters.size >= (this.#options.maxWaitingRequests ?? 10_000)) {
      return Promise.reject(
        new NoSessionError(
          "Cannot send request: no session is ready and the waiting queue is full",
        ),
      );
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    const { promise, resolve, reject } = Promise.withResolvers<
      SessionImpl<T>
    >();
    const onAbort = () => waiter.reject(signal!.reason);
    const waiter: Waiter = {
      deadline: performance.now() + timeout,
      tick: 0,
      settled: false,
      resolve: (session) => {
        if (waiter.settled) return;
        finish();
        resolve(session as SessionImpl<T>);
      },
      reject: (reason) => {
        if (waiter.settled) return;
        finish();
        reject(reason);
      },
      expire: () =>
        waiter.reject(
          new NoSessionError(
            `Cannot send request: no session became ready within ${timeout} ms`,
            { cause: this.#lastError() },
          ),
        ),
    };
    const finish = () => {
      waiter.settled = true;
      this.#correlator.timeouts.delete(waiter);
      signal?.removeEventListener("abort", onAbort);
      this.#waiters.delete(waiter);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    this.#waiters.add(waiter);
    this.#correlator.timeouts.add(waiter);
    return promise;
  }

  #wakeWaiters(): void {
    for (const waiter of this.#waiters) {
      const session = this.#pick();
      if (session === undefined) return;
      waiter.resolve(session as SessionImpl<unknown>);
    }
  }

  #lastError(): unknown {
    for (const slot of this.#slots) {
      if (slot.lastError !== undefined) return slot.lastError;
    }
    return undefined;
  }

  #emit(detail: ClientEventDetail): void {
    this.dispatchEvent(new CustomEvent(detail.type, { detail }));
  }

  async #runSlot(slot: Slot): Promise<void> {
    const reconnect = this.#options.reconnect ?? {};
    const backoff = exponentialBackoff(reconnect);
    const stableAfter = reconnect.stableAfter ?? 1000;
    const connectTimeout = this.#connectTimeout;
    let failures = 0;
    while (!this.#stop.signal.aborted) {
      let session: SessionImpl<T> | undefined;
      let readyAt = 0;
      const attempt = new AbortController();
      const cancelTimer = after(
        connectTimeout,
        () =>
          attempt.abort(
            new ConnectionError(
              `Cannot connect to ${slot.name}: no ready session within ${connectTimeout} ms`,
            ),
          ),
      );
      const onStop = () => attempt.abort(this.#stop.signal.reason);
      this.#stop.signal.addEventListener("abort", onStop, { once: true });
      let conn: Transport | undefined;
      try {
        slot.connecting = true;
        conn = await connect(
          slot.endpoint,
          this.#options.tls,
          attempt.signal,
        );
        session = new SessionImpl(conn, this.#config);
        slot.session = session as SessionImpl<unknown>;
        this.#all.add(session);
        this.#emit({
          type: "connect",
          endpoint: slot.name,
          session: session.id,
        });
        session.start();
        if (this.#options.onConnect !== undefined) {
          await abortable(
            Promise.resolve(
              this.#options.onConnect(session, { signal: attempt.signal }),
            ),
            attempt.signal,
          );
        }
        if (this.#dialect.framed) {
          // One ping round trip proves the peer speaks the protocol, and
          // surfaces a TLS 1.3 client-certificate refusal (which only shows
          // on the first read) as a failed connect instead of a ready session.
          await session.requestOn(
            undefined as T,
            connectTimeout,
            attempt.signal,
            true,
          );
        }
        attempt.signal.throwIfAborted();
        if (session.state !== "handshaking") {
          throw session.closeReason ?? new ConnectionError(
            `Cannot connect to ${slot.name}: the session closed during the handshake`,
          );
        }
        cancelTimer();
        this.#stop.signal.removeEventListener("abort", onStop);
        slot.connecting = false;
        session.markReady();
        readyAt = performance.now();
        failures = 0;
        slot.lastError = undefined;
        this.#ready.push(session);
        this.#logger.info("Session ready", {
          endpoint: slot.name,
          session: session.id,
        });
        this.#emit({ type: "ready", endpoint: slot.name, session: session.id });
        this.#firstReady.resolve();
        this.#wakeWaiters();
        await session.closed;
        slot.lastError = session.closeReason;
        if (session.closeReason instanceof ProtocolMismatchError) {
          this.#logger.error(
            "Session failed: the peer speaks another protocol",
            {
              endpoint: slot.name,
              session: session.id,
              error: session.closeReason,
            },
          );
        }
      } catch (caught) {
        // The ping (or onConnect) only saw the session close; the session's
        // close reason says why, and a mismatch is the one that matters.
        const mismatch = session?.closeReason instanceof ProtocolMismatchError
          ? session.closeReason
          : undefined;
        const error = mismatch ?? caught;
        slot.lastError = error;
        if (session !== undefined) session.close(error);
        else closeQuietly(conn); // the session could not be made (a codec's decoder() threw)
        if (!this.#stop.signal.aborted) {
          // A peer that speaks another protocol is a configuration error,
          // not a network fault: dial() fails with it at once, and once the
          // client is up it is logged as an error while the slot backs off.
          this.#logger[mismatch === undefined ? "warn" : "error"](
            "Connection attempt failed",
            { endpoint: slot.name, error },
          );
          this.#emit({ type: "error", endpoint: slot.name, error });
          if (mismatch !== undefined) this.#firstReady.reject(mismatch);
        }
      } finally {
        cancelTimer();
        this.#stop.signal.removeEventListener("abort", onStop);
        slot.connecting = false;
        slot.session = undefined;
      }
      if (session !== undefined) await session.closed;
      if (this.#stop.signal.aborted) break;
      if (readyAt > 0 && performance.now() - readyAt >= stableAfter) {
        backoff.reset();
      }
      failures++;
      if (
        (reconnect.maxAttempts !== undefined && reconnect.maxAttempts > 0 &&
          failures >= reconnect.maxAttempts) ||
        !this.#mayReconnect(reconnect, slot, failures)
      ) {
        this.#giveUp(slot, failures);
        return;
      }
      const wait = backoff.next();
      this.#reconnects++;
      this.#emit({
        type: "reconnecting",
        endpoint: slot.name,
        attempt: failures,
        delay: wait,
      });
      try {
        await delay(wait, { signal: this.#stop.signal });
      } catch {
        break;
      }
    }
  }

  /** Asks the user's `shouldReconnect`; a throw counts as "no" and is logged. */
  #mayReconnect(
    reconnect: ReconnectOptions,
    slot: Slot,
    failures: number,
  ): boolean {
    if (reconnect.shouldReconnect === undefined) return true;
    try {
      return reconnect.shouldReconnect(slot.lastError, failures) !== false;
    } catch (error) {
      this.#logger.error("shouldReconnect threw; the slot stops", {
        endpoint: slot.name,
        error,
      });
      return false;
    }
  }

  #giveUp(slot: Slot, attempts: number): void {
    slot.stopped = true;
    const error = new RetryExhaustedError(attempts, { cause: slot.lastError });
    this.#logger.error("Stopped reconnecting", {
      endpoint: slot.name,
      attempts,
    });
    this.#emit({ type: "error", endpoint: slot.name, error });
    if (this.#slots.every((s) => s.stopped)) {
      this.#firstReady.reject(error);
      for (const waiter of [...this.#waiters]) {
        waiter.reject(
          new NoSessionError("Cannot send request: every slot gave up", {
            cause: error,
          }),
        );
      }
    }
  }

  #unroute(session: SessionImpl<T>): void {
    const i = this.#ready.indexOf(session);
    if (i >= 0) this.#ready.splice(i, 1);
  }

  #sessionClosed(session: SessionImpl<T>): void {
    this.#unroute(session);
    this.#all.delete(session);
    const slot = this.#slots.find((s) => s.session === session);
    this.#logger.info("Session closed", {
      session: session.id,
      reason: session.closeReason,
    });
    this.#emit({
      type: "disconnect",
      endpoint: slot?.name ?? formatEndpointOf(session),
      session: session.id,
      reason: session.closeReason,
    });
  }

  /**
   * Counters and gauges.
   *
   * @returns A snapshot.
   */
  stats(): ClientStats {
    const sessions = {
      connecting: 0,
      handshaking: 0,
      ready: 0,
      draining: 0,
      closed: 0,
    };
    for (const slot of this.#slots) {
      if (slot.session === undefined && slot.connecting) sessions.connecting++;
    }
    for (const session of this.#all) sessions[session.state]++;
    return {
      ...this.#counters,
      sessions,
      pending: this.#correlator.count,
      waiting: this.#waiters.size,
      timeouts: this.#correlator.timedOut,
      reconnects: this.#reconnects,
      retried: this.#retried,
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
    this.#stop.abort(new ClosedError("Client is closed"));
    for (const waiter of [...this.#waiters]) {
      waiter.reject(new ClosedError("Cannot send request: client is closed"));
    }
    this.#firstReady.reject(new ClosedError("Client is closed"));
    const grace = new AbortController();
    const cancelTimer = after(
      timeout,
      () => grace.abort(new ClosedError("Client close timeout")),
    );
    try {
      await Promise.all(
        [...this.#all].map((session) => session.drain(grace.signal)),
      );
      await Promise.all(this.#slots.map((slot) => slot.done));
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

function formatEndpointOf<T>(session: SessionImpl<T>): string {
  const addr = session.remoteAddr;
  return addr.transport === "tcp"
    ? formatEndpoint(addr)
    : addr.transport === "unix"
    ? `unix:${addr.path}`
    : "unknown";
}

function closeQuietly(conn: Transport | undefined): void {
  try {
    conn?.close();
  } catch {
    // Already closed.
  }
}

/**
 * Connects a client speaking the default protocol (`Uint8Array` payloads).
 * Resolves once the first session is ready; the other slots keep
 * connecting in the background.
 *
 * @param target Where to connect.
 * @param options Pool, TLS, timeouts, handler, reconnect, heartbeat.
 * @returns The client.
 * @throws {ConnectionError} No session became ready within `connectTimeout`.
 * @throws {ProtocolMismatchError} A peer answered in another protocol (TLS,
 * HTTP, SSH) before any session was ready: at once, whatever
 * `connectTimeout`, even if other endpoints might work, since the
 * configuration is wrong. Once the client is up, a slot that meets one logs
 * it at error level and keeps reconnecting with backoff (`shouldReconnect`
 * can stop it).
 *
 * @example Usage
 * ```ts
 * import { dial, serve } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0, handler: (payload) => payload });
 * await using client = await dial(`127.0.0.1:${server.port}`, { sessions: 2 });
 * const reply = await client.request(new TextEncoder().encode("hello"));
 * assert.equal(new TextDecoder().decode(reply), "hello");
 * ```
 */
export function dial(
  target: DialTarget,
  options?: DialOptions<Uint8Array>,
): Promise<Client<Uint8Array>>;
/**
 * Connects a client speaking a custom codec.
 *
 * @typeParam T The message type.
 * @param target Where to connect.
 * @param codec How messages cross the wire (with `correlationId` unless `correlation: "fifo"`).
 * @param options Pool, TLS, timeouts, handler, reconnect, heartbeat.
 * @returns The client.
 * @throws {ConnectionError} No session became ready within `connectTimeout`.
 * @throws {ProtocolMismatchError} A peer answered in another protocol (TLS,
 * HTTP, SSH) before any session was ready: at once, whatever
 * `connectTimeout`, even if other endpoints might work, since the
 * configuration is wrong. Once the client is up, a slot that meets one logs
 * it at error level and keeps reconnecting with backoff (`shouldReconnect`
 * can stop it).
 */
export function dial<T>(
  target: DialTarget,
  codec: Codec<T>,
  options?: DialOptions<T>,
): Promise<Client<T>>;
export async function dial<T>(
  target: DialTarget,
  codecOrOptions?: Codec<T> | DialOptions<T>,
  maybeOptions?: DialOptions<T>,
): Promise<Client<T>> {
  const isCodec = codecOrOptions !== undefined &&
    typeof (codecOrOptions as Codec<T>).decoder === "function";
  const options = (isCodec ? maybeOptions : codecOrOptions) as
    | DialOptions<T>
    | undefined ?? {};
  const targets = Array.isArray(target) ? target : [target];
  if (targets.length === 0) {
    throw new TypeError("Cannot dial: no endpoint given");
  }
  const endpoints = targets.map((t) => parseEndpoint(t as string | Endpoint));
  const dialect = isCodec
    ? codecDialect(codecOrOptions as Codec<T>, options.correlation === "fifo")
    : defaultDialect(options.maxFrameBytes) as unknown as Dialect<T>;
  if (
    isCodec && options.correlation !== "fifo" &&
    (codecOrOptions as Codec<T>).correlationId === undefined
  ) {
    throw new TypeError(
      'Cannot dial: the codec has no correlationId; give one or use correlation: "fifo"',
    );
  }
  const client = new Client<T>(INTERNAL, endpoints, dialect, options);
  clientInternals.start(client);
  // Checked by the constructor.
  const timeout = deadlineMs(options.connectTimeout ?? 10_000);
  const failed = Promise.withResolvers<never>();
  const cancelTimer = after(
    timeout,
    () =>
      failed.reject(
        new ConnectionError(
          `Cannot connect to ${
            endpoints.map(formatEndpoint).join(", ")
          }: no session ready within ${timeout} ms`,
          { cause: clientInternals.lastError(client) },
        ),
      ),
  );
  const signal = options.signal;
  const onAbort = () => failed.reject(signal!.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    signal?.throwIfAborted();
    await Promise.race([clientInternals.firstReady(client), failed.promise]);
    return client;
  } catch (error) {
    await client.close({ timeout: 0 });
    if (error instanceof RetryExhaustedError) {
      throw new ConnectionError(
        `Cannot connect to ${
          endpoints.map(formatEndpoint).join(", ")
        }: ${error.message}`,
        { cause: error },
      );
    }
    throw error;
  } finally {
    cancelTimer();
    signal?.removeEventListener("abort", onAbort);
  }
}
