/**
 * The server: its public API, the session registry, the handler and push.
 * The accept loop is in `accept.ts`, the shutdown in `shutdown.ts`, and
 * `serve()` in `serve.ts`.
 *
 * @module
 */

import {
  formatAddr,
  type PeerCertificate,
  type Transport,
  type TransportListener,
} from "../connection.ts";
import { Correlator } from "../_correlation.ts";
import type { Dialect } from "../session/dialect.ts";
import { Housekeeper } from "../_housekeeping.ts";
import { deadlineMs, timeoutOption, withResolvers } from "../_util.ts";
import type { SessionSettings } from "../options.ts";
import { type SessionConfig, SessionImpl } from "../session/session.ts";
import { MemoryBudget } from "../session/budget.ts";
import {
  type Counters,
  type Handler,
  type HandlerContext,
  newCounters,
  type ProxyInfo,
  type Session,
} from "../session/types.ts";
import { type Logger, safeLogger } from "../logger.ts";
import { ClosedError } from "../errors.ts";
import { Acceptor } from "./accept.ts";
import { evictIdlest } from "./evict.ts";
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
import type { ServeOptions, ServerSettings } from "./serve.ts";
import {
  leave,
  runShutdown,
  type ShutdownOptions,
  type ShutdownReport,
} from "./shutdown.ts";

/**
 * The context a server's handler receives: the session's, and the server
 * (so a handler may broadcast without referring to a variable that holds
 * the server it is part of).
 *
 * @typeParam T The message type.
 */
export interface ServerHandlerContext<T> extends HandlerContext<T> {
  /** The server the message came to. */
  readonly server: Server<T>;
}

/**
 * Handles requests and pushes from clients (see {@linkcode Handler}).
 *
 * @typeParam T The message type.
 */
export type ServerHandler<T> = Handler<T, ServerHandlerContext<T>>;

/** Counters of a server. */
export interface ServerStats extends Counters {
  /** Open sessions. */
  sessions: number;
  /** Connections accepted since start. */
  accepted: number;
  /** Connections refused by `maxConnections`. */
  refused: number;
  /**
   * Idle sessions closed to make room for a new connection at
   * `maxConnections` (`evictIdleAfter`).
   */
  idleEvictions: number;
  /**
   * Connections accepted but not yet sessions: in their TLS handshake, or
   * reading their PROXY header.
   */
  opening: number;
  /**
   * TLS connections closed before they became sessions: the handshake
   * failed, did not complete within `handshakeTimeout`, or the client sent
   * plain text ({@linkcode TlsHandshakeError}, logged and emitted as an
   * `error` event).
   */
  handshakeFailures: number;
  /** Connections closed for a bad PROXY header or failed `onConnect`. */
  rejected: number;
  /**
   * Connections from the proxy itself (a PROXY header with no client
   * address: health checks) closed unanswered while the server was leaving
   * (`shutdown({ leaveFor })`).
   */
  healthChecksFailed: number;
  /**
   * Bytes the sessions buffer now, as counted by the memory budget
   * (`memoryBudget`): frames in progress, decoded requests waiting for a
   * handler slot, queued writes. 0 without a budget.
   */
  bufferedBytes: number;
  /** The most {@linkcode ServerStats.bufferedBytes} has been. */
  bufferedPeak: number;
  /** Times the memory budget paused a session's reading. */
  budgetPauses: number;
  /** Sessions cut off by the memory budget (`MemoryBudgetError`). */
  budgetCuts: number;
}

const NO_BUDGET = Object.freeze({
  bufferedBytes: 0,
  bufferedPeak: 0,
  budgetPauses: 0,
  budgetCuts: 0,
});

/** Detail of server events (`event.detail` of a `CustomEvent`). */
export type ServerEventDetail =
  | { type: "connect"; session: number; remote: string }
  | { type: "disconnect"; session: number; reason: unknown }
  | { type: "error"; error: unknown; remote?: string }
  | { type: "shutdown"; report: ShutdownReport };

/** What `server.status()` yields: events, and what a slow reader lost. */
export type ServerStatus = ServerEventDetail | StatusDropped;

const STATUS_EVENTS = ["connect", "disconnect", "error", "shutdown"] as const;

/** Guards the constructor: only this module makes servers. */
const INTERNAL: unique symbol = Symbol("tcpbutler.server");

/** Starts a server's accept loop; set by the class's static block. */
let startAccepting: <T>(server: Server<T>) => void;

/**
 * A running server. Make one with {@linkcode serve}.
 *
 * Events (`addEventListener`): `connect`, `disconnect`, `error`, `shutdown`,
 * each a `CustomEvent` whose `detail` is a {@linkcode ServerEventDetail}.
 *
 * @typeParam T The message type (`Uint8Array` payloads with the default protocol).
 */
export class Server<T> extends EventTarget implements AsyncDisposable {
  /** The address the server listens on. */
  readonly addr: Deno.Addr;
  readonly #options: ServeOptions<T>;
  readonly #settings: SessionSettings;
  readonly #acceptor: Acceptor;
  readonly #config: SessionConfig<T>;
  readonly #sessions = new Set<SessionImpl<T>>();
  readonly #correlator = new Correlator();
  readonly #counters: Counters = newCounters();
  readonly #housekeeper: Housekeeper<T>;
  readonly #budget: MemoryBudget | undefined;
  readonly #logger: Logger;
  readonly #finished = withResolvers<ShutdownReport>();
  #handler: ServerHandler<T> | undefined;
  /** Made by the first messages() call. */
  #streams: InboundStreams<T> | undefined;
  #shutdown: Promise<ShutdownReport> | undefined;
  #leaving = false;
  #forceNow: AbortController | undefined;

  /**
   * Not for users: {@linkcode serve} makes servers.
   *
   * @ignore
   */
  constructor(
    token: typeof INTERNAL,
    listener: TransportListener,
    dialect: Dialect<T>,
    options: ServeOptions<T>,
    settings: ServerSettings,
  ) {
    if (token !== INTERNAL) {
      throw new TypeError("Cannot construct Server: use serve()");
    }
    super();
    this.addr = listener.addr;
    this.#options = options;
    this.#settings = settings.session;
    this.#handler = options.handler;
    this.#logger = safeLogger(options.logger);
    this.#finished.promise.catch(() => {});
    this.#budget = budgetOf(settings, this.#logger);
    this.#config = sessionConfigOf(this, dialect, options, settings, {
      correlator: this.#correlator,
      counters: this.#counters,
      logger: this.#logger,
      budget: this.#budget,
      // An open message stream stands in for the handler (streams/inbound.ts).
      handler: () =>
        this.#streams?.handler ?? this.#handler as Handler<T> | undefined,
      onClose: (session) => this.#sessionClosed(session),
    });
    this.#housekeeper = housekeeperOf(this.#sessions, settings.session);
    this.#acceptor = new Acceptor(listener, settings, {
      sessionCount: () => this.#sessions.size,
      open: (conn, transport, proxy) => this.#open(conn, transport, proxy),
      evictIdle: (minIdleMs) =>
        evictIdlest(
          this.#sessions,
          minIdleMs,
          this.#logger,
          this.#options.onDrain,
        ),
      emit: (detail) => this.#emit(detail),
      isLeaving: () => this.#leaving,
      counters: this.#counters,
      logger: this.#logger,
    });
  }

  static {
    // serve() needs this; as a #private member it stays off the public
    // surface, and this block is the only way out of the class body.
    startAccepting = (server) => server.#start();
  }

  /** Starts accepting. */
  #start(): void {
    this.#housekeeper.start();
    this.#acceptor.start();
    const signal = this.#options.signal;
    if (signal !== undefined) {
      if (signal.aborted) this.shutdown();
      else {
        const onAbort = () => this.shutdown();
        signal.addEventListener("abort", onAbort, { once: true });
        // A long-lived shared signal must not keep finished servers alive.
        this.#finished.promise.then(() =>
          signal.removeEventListener("abort", onAbort)
        );
      }
    }
  }

  /**
   * The TCP port listened on (handy with `port: 0`).
   *
   * @throws {TypeError} The server listens on a Unix socket.
   */
  get port(): number {
    const addr = this.addr;
    if (addr.transport !== "tcp") {
      throw new TypeError(
        `Cannot read port: the server listens on ${addr.transport}`,
      );
    }
    return addr.port;
  }

  /** The open sessions. */
  get sessions(): readonly Session<T>[] {
    return [...this.#sessions];
  }

  /**
   * The handler of requests and pushes from clients (the `handler` option
   * or `serve()`'s second argument). Assigning replaces it for every
   * session at once, for example to swap it at run time: each message goes
   * to the handler set when it is dispatched (requests held behind
   * `maxConcurrentHandlers` included), calls already running finish in the
   * old one. With none set, a message counts as a handler failure: a
   * default-protocol request gets an error reply (`RemoteError`), anything
   * else is logged and counted in `stats().handlerErrors`.
   */
  get handler(): ServerHandler<T> | undefined {
    return this.#handler;
  }

  set handler(handler: ServerHandler<T> | undefined) {
    this.#handler = handler;
  }

  /**
   * Clients' requests and pushes as a stream (async-iterable), instead of
   * the `handler`: one session's with `options.session`, else every
   * session's that has no stream of its own. While a stream is open it
   * takes those messages; once it is cancelled the handler takes them
   * again. Backpressure is the handler's: each message holds one of its
   * session's `maxConcurrentHandlers` slots until it is read (a push) or
   * answered with `respond()`/`fail()` (a request), and past that the
   * session stops reading that client. Cancelling lets go: unread requests
   * are answered as failed handlers (`RemoteError` at the client), unread
   * pushes are dropped (logged). A session's stream ends when the session
   * closes, or errors with its failure (bad input, a slow consumer); the
   * server-wide one ends when the server has shut down.
   *
   * @param options A session to read alone, and a signal.
   * @returns The stream of inbound messages.
   * @throws {TypeError} A stream is open for the same sessions already, or
   * the session is not this server's.
   *
   * @example One stream per session
   * ```ts
   * import { dial, serve, type Session } from "@tcpbutler/core";
   * import assert from "node:assert/strict";
   *
   * await using server = serve({
   *   hostname: "127.0.0.1",
   *   port: 0,
   *   onConnect: (session: Session<Uint8Array>) => {
   *     void (async () => {
   *       for await (const inbound of server.messages({ session })) {
   *         inbound.respond(inbound.message); // echo
   *       }
   *     })();
   *   },
   * });
   * await using client = await dial(`127.0.0.1:${server.port}`);
   * const reply = await client.request(new TextEncoder().encode("hi"));
   * assert.equal(new TextDecoder().decode(reply), "hi");
   * ```
   */
  messages(options?: MessagesOptions<T>): ReadableStream<InboundMessage<T>> {
    const session = options?.session;
    if (
      session !== undefined && session.state !== "closed" &&
      !this.#sessions.has(session as SessionImpl<T>)
    ) {
      throw new TypeError(
        "Cannot read messages: the session does not belong to this server",
      );
    }
    this.#streams ??= new InboundStreams(
      () => this.#handler as Handler<T> | undefined,
      this.#logger,
      this.#finished.promise,
    );
    return this.#streams.open(options);
  }

  /**
   * The server's events as a stream (async-iterable): `connect`,
   * `disconnect`, `error`, and `shutdown` (with the report), after which it
   * ends. A reader that falls `buffer` events behind loses the oldest, and
   * reads a `{ type: "dropped", count }` entry in their place.
   *
   * @param options The buffer size and a signal.
   * @returns The stream of events.
   * @throws {RangeError} `buffer` is not an integer >= 1.
   */
  status(options?: StatusOptions): ReadableStream<ServerStatus> {
    return statusStream<ServerEventDetail>(
      this,
      STATUS_EVENTS,
      "shutdown",
      this.#finished.promise,
      options,
    );
  }

  /**
   * The shared options this server runs with (see {@linkcode SessionOptions}),
   * defaults filled in; a client given the same options reports the same.
   */
  get settings(): SessionSettings {
    return this.#settings;
  }

  /** Resolves with the shutdown report once the server has stopped. */
  get finished(): Promise<ShutdownReport> {
    return this.#finished.promise;
  }

  /**
   * Whether the server is leaving: a shutdown with `leaveFor` has begun and
   * the server still serves, but fails its load balancer's health checks.
   */
  get isLeaving(): boolean {
    return this.#leaving;
  }

  /** Whether a shutdown has begun. */
  get isClosed(): boolean {
    return this.#shutdown !== undefined;
  }

  /**
   * Pushes a message to every ready session without waiting (a session whose
   * write queue is over `maxWriteBytes` is cut off, not buffered forever).
   * The message is encoded before this returns: its buffer may be reused at
   * once.
   *
   * @param message The message.
   * @returns The number of sessions it was queued for.
   */
  broadcast(message: T): number {
    let n = 0;
    for (const session of this.#sessions) {
      if (session.state === "ready" && session.pushNow(message)) n++;
    }
    return n;
  }

  /**
   * Counters and gauges.
   *
   * @returns A snapshot.
   */
  stats(): ServerStats {
    return {
      ...this.#counters,
      sessions: this.#sessions.size,
      accepted: this.#acceptor.accepted,
      refused: this.#acceptor.refused,
      idleEvictions: this.#acceptor.evicted,
      opening: this.#acceptor.opening,
      handshakeFailures: this.#acceptor.handshakeFailures,
      rejected: this.#acceptor.rejected,
      healthChecksFailed: this.#acceptor.healthChecksFailed,
      ...(this.#budget?.stats() ?? NO_BUDGET),
    };
  }

  #emit(detail: ServerEventDetail): void {
    this.dispatchEvent(new CustomEvent(detail.type, { detail }));
  }

  async #open(
    conn: Transport,
    transport: Transport,
    proxy: ProxyInfo | undefined,
  ): Promise<void> {
    const session = new SessionImpl(transport, this.#config);
    const certificate = (conn as { peerCertificate?: PeerCertificate })
      .peerCertificate;
    session.identify(proxy, certificate);
    this.#sessions.add(session);
    this.#emit({
      type: "connect",
      session: session.id,
      remote: formatAddr(session.remoteAddr),
    });
    this.#logger.debug("Session opened", {
      session: session.id,
      remote: formatAddr(session.remoteAddr),
    });
    // Read from the start: onConnect may make requests of its own.
    session.start();
    const onConnect = this.#options.onConnect;
    if (onConnect !== undefined) {
      try {
        await onConnect(session);
      } catch (error) {
        this.#acceptor.countRejected();
        this.#logger.warn("Session rejected by onConnect", {
          session: session.id,
          error,
        });
        session.close(error);
        return;
      }
    }
    session.markReady();
  }

  #sessionClosed(session: SessionImpl<T>): void {
    this.#sessions.delete(session);
    this.#logger.debug("Session closed", {
      session: session.id,
      reason: session.closeReason,
    });
    this.#emit({
      type: "disconnect",
      session: session.id,
      reason: session.closeReason,
    });
  }

  /**
   * Graceful shutdown, as Go's `http.Server.Shutdown`: stop accepting; tell
   * every peer to drain (default protocol: a drain frame, which clients
   * acknowledge once they have stopped sending requests here; custom codecs:
   * `onDrain`); let running handlers finish and their replies flush; wait for
   * the server's own pending requests; half-close; close once the peer has
   * closed. Sessions still busy at `timeout` are forced shut and reported.
   * Idempotent: a second call returns the same report.
   *
   * @param options Timeout and a signal that forces the shutdown.
   * @returns What was drained and what was cut.
   */
  shutdown(options?: ShutdownOptions): Promise<ShutdownReport> {
    options ??= {};
    try {
      timeoutOption(options.timeout ?? 10_000, "timeout");
      timeoutOption(options.leaveFor ?? 0, "leaveFor");
    } catch (error) {
      return Promise.reject(error);
    }
    this.#shutdown ??= this.#runShutdown(options);
    return this.#shutdown;
  }

  async #runShutdown(options: ShutdownOptions): Promise<ShutdownReport> {
    // Set before the first await, so close() right after shutdown() finds it.
    const force = this.#forceNow = new AbortController();
    await leave(options, force.signal, this.#logger, (leaving) => {
      this.#leaving = leaving;
    });
    return runShutdown(
      {
        acceptor: this.#acceptor,
        sessions: this.#sessions,
        onDrain: this.#options.onDrain,
        logger: this.#logger,
        stopTimers: () => {
          this.#housekeeper.stop();
          this.#correlator.close();
          this.#budget?.close();
        },
      },
      options,
      force,
    ).then((report) => {
      this.#emit({ type: "shutdown", report });
      this.#finished.resolve(report);
      return report;
    });
  }

  /**
   * Stops at once: closes the listener and every session (pending requests
   * reject, running handlers' replies are dropped).
   *
   * @returns The shutdown report.
   */
  close(): Promise<ShutdownReport> {
    const report = this.shutdown({ timeout: 0 });
    this.#forceNow?.abort(new ClosedError("Server closed"));
    return report;
  }

  /** Graceful shutdown with the default timeout; resolves when finished. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }
}

/** What every session of a server shares (see {@linkcode SessionConfig}). */
function sessionConfigOf<T>(
  server: Server<T>,
  dialect: Dialect<T>,
  options: ServeOptions<T>,
  settings: ServerSettings,
  parts:
    & Pick<
      SessionConfig<T>,
      "correlator" | "counters" | "logger" | "handler" | "onClose"
    >
    & { budget: MemoryBudget | undefined },
): SessionConfig<T> {
  const { budget, ...shared } = parts;
  return {
    ...shared,
    side: "server",
    dialect,
    context: { server },
    retry: undefined,
    replies: "session",
    onHandlerError: options.onHandlerError,
    maxConcurrentHandlers: settings.session.maxConcurrentHandlers,
    highWaterMark: settings.session.outboundBuffer,
    maxWriteBytes: settings.session.maxWriteBytes,
    requestTimeout: deadlineMs(settings.session.requestTimeout),
    ...(budget === undefined ? {} : { budget }),
    onPeerDrain: () => {},
  };
}

/**
 * The server's timer over its sessions: idle, frame and write deadlines (a
 * server sends no heartbeats: its clients do).
 */
function housekeeperOf<T>(
  sessions: Set<SessionImpl<T>>,
  settings: SessionSettings,
): Housekeeper<T> {
  return new Housekeeper(() => sessions, {
    idleTimeout: settings.idleTimeout,
    frameTimeout: settings.frameTimeout,
    heartbeatInterval: 0,
    maxMissed: 2,
    heartbeatMessage: undefined,
    writeTimeout: settings.writeTimeout,
  });
}

/** The server's memory budget, unless it has none. */
function budgetOf(
  settings: ServerSettings,
  logger: Logger,
): MemoryBudget | undefined {
  if (settings.memoryBudget === Infinity) return undefined;
  return new MemoryBudget(
    settings.memoryBudget,
    settings.memoryBudgetGrace,
    logger,
  );
}

/**
 * Makes a server on an open listener and starts it: what {@linkcode serve}
 * and {@linkcode serveMutualTls} end with.
 *
 * @typeParam T The message type.
 * @param listener The listener, already bound.
 * @param dialect The protocol view of the options.
 * @param options The options, handler included.
 * @param settings The options, checked and resolved.
 * @returns The running server.
 */
export function startServer<T>(
  listener: TransportListener,
  dialect: Dialect<T>,
  options: ServeOptions<T>,
  settings: ServerSettings,
): Server<T> {
  const server = new Server<T>(INTERNAL, listener, dialect, options, settings);
  startAccepting(server);
  options.onListen?.(server.addr);
  return server;
}
