/**
 * The server: listeners, accept loop, session registry, handler, push and a
 * graceful shutdown that loses nothing in flight.
 *
 * @module
 */

import type { Codec } from "./framing/codec.ts";
import {
  formatAddr,
  isClosedResource,
  type PeerCertificate,
  type Transport,
  type TransportListener,
} from "./connection.ts";
import { noDelay, prepend } from "./transport/_conn.ts";
import { Correlator } from "./_correlation.ts";
import { codecDialect, defaultDialect, type Dialect } from "./_dialect.ts";
import { Housekeeper } from "./_housekeeping.ts";
import { abortable, countOption, deadlineMs, timeoutOption } from "./_util.ts";
import {
  resolveSessionOptions,
  type SessionOptions,
  type SessionSettings,
} from "./options.ts";
import { after } from "./_timeouts.ts";
import { type SessionConfig, SessionImpl } from "./session/session.ts";
import {
  type Counters,
  type Handler,
  type HandlerContext,
  newCounters,
  type ProxyInfo,
  type Session,
} from "./session/types.ts";
import { type Logger, safeLogger } from "./logger.ts";
import { ClosedError, ProxyProtocolError } from "./errors.ts";
import { readProxyHeader } from "./transport/proxy_protocol.ts";
import { listenMutualTls } from "./transport/_mutual_tls.ts";
import { listen } from "./transport/_listen.ts";

/** TLS settings of a server. */
export interface ServerTlsOptions {
  /** PEM certificate chain. */
  cert: string;
  /** PEM private key. */
  key: string;
  /**
   * PEM CA certificate(s) that client certificates must chain to: mutual
   * TLS, where clients without a valid certificate are refused during the
   * handshake. Only {@linkcode serveMutualTls} takes it: it serves through
   * `node:tls`, since `Deno.listenTls` cannot request client certificates,
   * and that listener starts asynchronously. {@linkcode serve} throws a
   * `TypeError` when it is set rather than serve without the check.
   */
  ca?: string | string[];
}

/**
 * Options of {@linkcode serve}.
 *
 * @typeParam T The message type.
 */
export interface ServeOptions<T>
  extends SessionOptions<T, ServerHandlerContext<T>> {
  /**
   * Interface to listen on.
   *
   * @default {"0.0.0.0"}
   */
  hostname?: string;
  /**
   * TCP port; 0 picks a free one (read it from `server.addr`).
   *
   * @default {9000}
   */
  port?: number;
  /** Listen on a Unix domain socket at this path instead of TCP. */
  path?: string;
  /** Serve connections from this listener instead (TCP, TLS, Unix, or your own). */
  listener?: Deno.Listener | TransportListener;
  /**
   * TLS through `Deno.listenTls`. Mutual TLS (`tls.ca`) needs
   * {@linkcode serveMutualTls}: `serve()` throws a `TypeError` when `ca` is
   * set.
   */
  tls?: ServerTlsOptions;
  /** Aborting it shuts the server down gracefully. */
  signal?: AbortSignal;
  /** Called once listening. */
  onListen?: (addr: Deno.Addr) => void;
  /**
   * The wire format. Without it the server speaks the default protocol
   * (`Uint8Array` payloads).
   */
  codec?: Codec<T>;
  /**
   * Runs for each new session before its messages reach the handler (auth,
   * greeting, a sign-on request of the server's own: the session reads from
   * the start, so it may `await session.request()`; requests that arrive
   * meanwhile are held, up to `maxConcurrentHandlers`, then reading pauses).
   * A returned promise is awaited and its value ignored. A throw or
   * rejection closes that session.
   */
  onConnect?: (session: Session<T>) => unknown;
  /**
   * Custom codecs: tell a session's peer the server is draining (for example
   * send a "going away" message). The default protocol sends a drain frame.
   */
  onDrain?: (session: Session<T>) => void | Promise<void>;
  /**
   * Open sessions at most; connections past it are closed at once (logged).
   *
   * @default {10000}
   */
  maxConnections?: number;
  /**
   * Expect a PROXY protocol (v1 or v2) header on every connection; the
   * session's `remoteAddr` is then the original client's. A connection
   * without a valid header is closed.
   *
   * @default {false}
   */
  proxyProtocol?: boolean | ProxyProtocolOptions;
}

/** PROXY protocol settings of a server (`serve({ proxyProtocol })`). */
export interface ProxyProtocolOptions {
  /**
   * Milliseconds a new connection has to send its PROXY header; 0 or
   * `Infinity` = no limit.
   *
   * @default {5000}
   */
  timeout?: number;
  /** Largest PROXY header accepted, in bytes (as `readProxyHeader()` takes it). */
  maxHeaderBytes?: number;
}

/** Options of {@linkcode Server.shutdown}. */
export interface ShutdownOptions {
  /**
   * Milliseconds to let in-flight work finish before sessions are forced
   * shut. Unlike the other timeouts, 0 means no grace (force at once);
   * `Infinity` waits as long as it takes.
   *
   * @default {10000}
   */
  timeout?: number;
  /** Aborting forces the shutdown at once. */
  signal?: AbortSignal;
}

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

/** A session that a shutdown forced shut, and why. */
export interface ForcedSession {
  /** The session's id. */
  session: number;
  /** The peer's address. */
  remote: string;
  /**
   * What was still under way at the timeout, for example "the peer never
   * answered the drain", "2 handler(s) still running", "1 request(s) of
   * ours still pending", "writes not flushed (the peer is not reading)".
   */
  reasons: string[];
}

/** What a shutdown did. */
export interface ShutdownReport {
  /** Sessions open when the shutdown began. */
  sessions: number;
  /** Sessions that drained cleanly. */
  drained: number;
  /** Sessions force-closed at the timeout. */
  forced: number;
  /**
   * Requests from clients still running, waiting to run (pushes), or whose
   * replies were not written when their session was forced shut: they got
   * no answer and may have run.
   */
  handlersCut: number;
  /**
   * Requests read but never started when their session was forced shut,
   * answered "not processed" (default protocol): tcpbutler clients send
   * them again elsewhere.
   */
  refused: number;
  /** The server's own requests to clients that were still pending when forced. */
  requestsCut: number;
  /** How long the shutdown took, in milliseconds. */
  durationMs: number;
  /** The sessions forced shut, each with why. */
  forcedSessions: ForcedSession[];
}

/** Counters of a server. */
export interface ServerStats extends Counters {
  /** Open sessions. */
  sessions: number;
  /** Connections accepted since start. */
  accepted: number;
  /** Connections refused by `maxConnections`. */
  refused: number;
  /** Connections closed for a bad PROXY header or failed `onConnect`. */
  rejected: number;
}

/** Detail of server events (`event.detail` of a `CustomEvent`). */
export type ServerEventDetail =
  | { type: "connect"; session: number; remote: string }
  | { type: "disconnect"; session: number; reason: unknown }
  | { type: "error"; error: unknown; remote?: string }
  | { type: "shutdown"; report: ShutdownReport };

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
  readonly #listener: TransportListener;
  readonly #options: ServeOptions<T>;
  readonly #settings: SessionSettings;
  readonly #proxyTimeout: number;
  readonly #config: SessionConfig<T>;
  readonly #sessions = new Set<SessionImpl<T>>();
  readonly #correlator = new Correlator();
  readonly #counters: Counters = newCounters();
  readonly #housekeeper: Housekeeper<T>;
  readonly #logger: Logger;
  readonly #finished = Promise.withResolvers<ShutdownReport>();
  readonly #stopAccepting = new AbortController();
  /** Connections accepted but not yet sessions (reading a PROXY header). */
  readonly #opening = new Set<Promise<void>>();
  readonly #maxConnections: number;
  #acceptLoop: Promise<void> = Promise.resolve();
  #handler: ServerHandler<T> | undefined;
  #shutdown: Promise<ShutdownReport> | undefined;
  #accepted = 0;
  #refused = 0;
  #rejected = 0;
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
    this.#listener = listener;
    this.addr = listener.addr;
    this.#options = options;
    this.#settings = settings.session;
    this.#proxyTimeout = settings.proxyTimeout;
    this.#handler = options.handler;
    this.#logger = safeLogger(options.logger);
    this.#finished.promise.catch(() => {});
    this.#maxConnections = settings.maxConnections;
    this.#config = {
      side: "server",
      dialect,
      correlator: this.#correlator,
      counters: this.#counters,
      logger: this.#logger,
      handler: () => this.#handler as Handler<T> | undefined,
      context: { server: this },
      retry: undefined,
      onHandlerError: options.onHandlerError,
      maxConcurrentHandlers: settings.session.maxConcurrentHandlers,
      highWaterMark: settings.session.outboundBuffer,
      maxWriteBytes: settings.session.maxWriteBytes,
      requestTimeout: deadlineMs(settings.session.requestTimeout),
      onClose: (session) => this.#sessionClosed(session),
      onPeerDrain: () => {},
    };
    this.#housekeeper = new Housekeeper(() => this.#sessions, {
      idleTimeout: settings.session.idleTimeout,
      heartbeatInterval: 0,
      maxMissed: 2,
      heartbeatMessage: undefined,
      writeTimeout: settings.session.writeTimeout,
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
    this.#acceptLoop = this.#accept();
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
      accepted: this.#accepted,
      refused: this.#refused,
      rejected: this.#rejected,
    };
  }

  #emit(detail: ServerEventDetail): void {
    this.dispatchEvent(new CustomEvent(detail.type, { detail }));
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Transport;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (this.#stopAccepting.signal.aborted) return;
        if (isClosedResource(error)) return;
        // Transient accept failures (EMFILE, ECONNABORTED): log and go on.
        this.#logger.error("Accept failed", { error });
        this.#emit({ type: "error", error });
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 50);
          this.#stopAccepting.signal.addEventListener("abort", () => {
            clearTimeout(timer);
            resolve();
          }, { once: true });
        });
        if (this.#stopAccepting.signal.aborted) return;
        continue;
      }
      if (this.#stopAccepting.signal.aborted) {
        conn.close();
        return;
      }
      this.#accepted++;
      noDelay(conn);
      if (this.#sessions.size + this.#opening.size >= this.#maxConnections) {
        this.#refused++;
        this.#logger.warn("Connection refused: maxConnections reached", {
          remote: formatAddr(conn.remoteAddr),
          maxConnections: this.#maxConnections,
        });
        try {
          conn.close();
        } catch {
          // Already closed.
        }
        continue;
      }
      if (this.#options.proxyProtocol) {
        const opening = this.#readProxy(conn);
        this.#opening.add(opening);
        opening.finally(() => this.#opening.delete(opening));
      } else {
        this.#openSafely(conn, conn, undefined);
      }
    }
  }

  /** Reads a PROXY header, then opens the session; bad headers close the connection. */
  async #readProxy(conn: Transport): Promise<void> {
    const remote = formatAddr(conn.remoteAddr);
    const proxyOptions = this.#options.proxyProtocol;
    const settings = typeof proxyOptions === "object" ? proxyOptions : {};
    const timeout = this.#proxyTimeout;
    const abort = new AbortController();
    const cancelTimer = after(
      timeout,
      () =>
        abort.abort(
          new ProxyProtocolError(`No PROXY header within ${timeout} ms`),
        ),
    );
    const onStop = () => abort.abort(new ClosedError("Server is closed"));
    this.#stopAccepting.signal.addEventListener("abort", onStop, {
      once: true,
    });
    try {
      const { header, rest } = await readProxyHeader(conn, {
        signal: abort.signal,
        ...(settings.maxHeaderBytes === undefined
          ? {}
          : { maxHeaderBytes: settings.maxHeaderBytes }),
      });
      if (this.#stopAccepting.signal.aborted) {
        throw this.#stopAccepting.signal.reason;
      }
      const proxy: ProxyInfo = {
        ...(header.source ? { source: header.source } : {}),
        ...(header.destination ? { destination: header.destination } : {}),
      };
      this.#openSafely(conn, prepend(conn, rest), proxy);
    } catch (error) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
      if (this.#stopAccepting.signal.aborted) return;
      this.#rejected++;
      this.#counters.protocolErrors++;
      this.#logger.warn("Connection rejected: bad PROXY protocol header", {
        remote,
        error,
      });
      this.#emit({ type: "error", error, remote });
    } finally {
      cancelTimer();
      this.#stopAccepting.signal.removeEventListener("abort", onStop);
    }
  }

  /** Opens a session; a failure (a codec whose decoder() throws) closes only that connection. */
  #openSafely(
    conn: Transport,
    transport: Transport,
    proxy: ProxyInfo | undefined,
  ): void {
    this.#open(conn, transport, proxy).catch((error) => {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
      this.#rejected++;
      this.#logger.error("Cannot open session", {
        remote: formatAddr(conn.remoteAddr),
        error,
      });
      this.#emit({ type: "error", error });
    });
  }

  async #open(
    conn: Transport,
    transport: Transport,
    proxy: ProxyInfo | undefined,
  ): Promise<void> {
    const session = new SessionImpl(transport, this.#config);
    if (proxy !== undefined) {
      session.proxy = proxy;
      if (proxy.source !== undefined) session.remoteAddr = proxy.source;
    }
    const certificate = (conn as { peerCertificate?: PeerCertificate })
      .peerCertificate;
    if (certificate !== undefined) session.peerCertificate = certificate;
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
        this.#rejected++;
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
    } catch (error) {
      return Promise.reject(error);
    }
    this.#shutdown ??= this.#runShutdown(options);
    return this.#shutdown;
  }

  async #runShutdown(options: ShutdownOptions): Promise<ShutdownReport> {
    // Everything up to the first await runs inside shutdown(), so close()
    // right after it finds #forceNow.
    const started = performance.now();
    const timeout = options.timeout ?? 10_000;
    const force = this.#forceNow = new AbortController();
    const cancelTimer = after(
      timeout,
      () => force.abort(new ClosedError("Shutdown timeout passed")),
    );
    const onSignal = () => force.abort(options.signal!.reason);
    if (options.signal?.aborted) onSignal();
    options.signal?.addEventListener("abort", onSignal, { once: true });
    this.#stopAccepting.abort(new ClosedError("Server is shutting down"));
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    let sessions: SessionImpl<T>[] = [];
    let results;
    try {
      // Connections still in their PROXY header are aborted by #stopAccepting.
      await abortable(
        Promise.all([this.#acceptLoop, ...this.#opening]),
        force.signal,
      ).catch(() => {});
      sessions = [...this.#sessions];
      this.#logger.info("Shutting down", {
        sessions: sessions.length,
        timeout,
      });
      results = await Promise.all(
        sessions.map((session) =>
          session.drain(force.signal, this.#options.onDrain)
        ),
      );
      // A forced shutdown skipped the waits above: finish them now, so the
      // port is free and no session is left once the report is out.
      await this.#acceptLoop;
      await Promise.all(this.#opening);
      for (const session of this.#sessions) {
        session.close(new ClosedError("Server closed"));
      }
    } finally {
      cancelTimer();
      options.signal?.removeEventListener("abort", onSignal);
      this.#housekeeper.stop();
      this.#correlator.close();
    }
    const report: ShutdownReport = {
      sessions: sessions.length,
      drained: 0,
      forced: 0,
      handlersCut: 0,
      refused: 0,
      requestsCut: 0,
      durationMs: Math.round(performance.now() - started),
      forcedSessions: [],
    };
    results.forEach((cut, i) => {
      if (cut.forced) {
        report.forced++;
        const session = sessions[i]!;
        report.forcedSessions.push({
          session: session.id,
          remote: formatAddr(session.remoteAddr),
          reasons: cut.reasons,
        });
      } else report.drained++;
      report.handlersCut += cut.handlers;
      report.refused += cut.refused;
      report.requestsCut += cut.requests;
    });
    const log = report.forced > 0 ? "warn" : "info";
    this.#logger[log]("Shutdown complete", { ...report });
    this.#emit({ type: "shutdown", report });
    this.#finished.resolve(report);
    return report;
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

/** A server's correlation: fifo by default when its codec has no ids. */
function serverCorrelation<T>(options: ServeOptions<T>): "id" | "fifo" {
  if (options.correlation !== undefined) return options.correlation;
  const codec = options.codec;
  return codec !== undefined && codec.correlationId === undefined
    ? "fifo"
    : "id";
}

/** The protocol view of a server's options. */
function serverDialect<T>(options: ServeOptions<T>): Dialect<T> {
  const codec = options.codec;
  if (codec === undefined) {
    return defaultDialect(options.maxFrameBytes) as unknown as Dialect<T>;
  }
  return codecDialect(codec, serverCorrelation(options) === "fifo");
}

/**
 * Starts a server. Shaped like `Deno.serve`: options (with the handler) or
 * options and a handler. Without a `codec` it speaks the default protocol
 * (`Uint8Array` payloads).
 *
 * @typeParam T The message type.
 * @param options Where to listen, codec, handler, limits — or a listener of
 *   your own (`Deno.listen(…)`, `Deno.listenTls(…)`, a {@linkcode TransportListener}).
 * @param handler The handler, if not in `options`.
 * @returns The running server; `server.addr` is known at once.
 *
 * @example Usage
 * ```ts
 * import { dial, serve } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0 }, (payload) => payload.toReversed());
 * await using client = await dial({ hostname: "127.0.0.1", port: server.port });
 * assert.deepEqual([...await client.request(new Uint8Array([1, 2, 3]))], [3, 2, 1]);
 * const report = await server.shutdown({ timeout: 1000 });
 * assert.equal(report.forced, 0);
 * ```
 */
export function serve<T = Uint8Array>(
  options: ServeOptions<T> | Deno.Listener | TransportListener,
  handler?: ServerHandler<T>,
): Server<T> {
  if (isListener(options)) options = { listener: options };
  const settings = resolveServeOptions(options);
  const dialect = serverDialect(options);
  const merged = handler === undefined ? options : { ...options, handler };
  let listener: TransportListener;
  if (options.listener !== undefined) {
    listener = options.listener;
  } else if (options.path !== undefined) {
    listener = listen({ path: options.path });
  } else if (options.tls?.ca !== undefined) {
    throw new TypeError(
      "Cannot serve mutual TLS synchronously: use serveMutualTls()",
    );
  } else {
    const { tls } = options;
    listener = listen({
      hostname: options.hostname ?? "0.0.0.0",
      port: options.port ?? 9000,
      ...(tls === undefined ? {} : { tls: { cert: tls.cert, key: tls.key } }),
    });
  }
  return startServer(listener, dialect, merged, settings);
}

function isListener<T>(
  value: ServeOptions<T> | Deno.Listener | TransportListener,
): value is TransportListener {
  return typeof (value as TransportListener).accept === "function";
}

/** What `serve()` checks before it opens a listener. */
interface ServerSettings {
  session: SessionSettings;
  maxConnections: number;
  /** `Infinity` = no limit. */
  proxyTimeout: number;
}

function resolveServeOptions<T>(options: ServeOptions<T>): ServerSettings {
  const proxy = typeof options.proxyProtocol === "object"
    ? options.proxyProtocol
    : {};
  return {
    session: {
      ...resolveSessionOptions(options),
      correlation: serverCorrelation(options),
    },
    maxConnections: countOption(
      options.maxConnections ?? 10_000,
      "maxConnections",
      1,
    ),
    proxyTimeout: deadlineMs(
      timeoutOption(proxy.timeout ?? 5000, "proxyProtocol.timeout"),
    ),
  };
}

function startServer<T>(
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

/**
 * Starts a server that requires client certificates (mutual TLS). Resolves
 * once listening. `options.tls.ca` is the CA that client certificates must
 * chain to; `session.peerCertificate` holds the verified certificate.
 *
 * @typeParam T The message type.
 * @param options As {@linkcode serve}, with `tls` including `ca`.
 * @param handler The handler, if not in `options`.
 * @returns The running server.
 *
 * @example Usage
 * ```ts ignore
 * import { serveMutualTls } from "@tcpbutler/core";
 *
 * const server = await serveMutualTls({
 *   port: 9443,
 *   tls: { cert: serverCertPem, key: serverKeyPem, ca: clientCaPem },
 *   handler: (payload, { session }) => {
 *     console.log(session.peerCertificate?.subject);
 *     return payload;
 *   },
 * });
 * ```
 */
export async function serveMutualTls<T = Uint8Array>(
  options: ServeOptions<T> & {
    tls: ServerTlsOptions & { ca: string | string[] };
  },
  handler?: ServerHandler<T>,
): Promise<Server<T>> {
  const dialect = serverDialect(options);
  const settings = resolveServeOptions(options);
  const merged = handler === undefined ? options : { ...options, handler };
  const listener = await listenMutualTls({
    hostname: options.hostname ?? "0.0.0.0",
    port: options.port ?? 9000,
    cert: options.tls.cert,
    key: options.tls.key,
    ca: options.tls.ca,
  });
  return startServer(listener, dialect, merged, settings);
}
