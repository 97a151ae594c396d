/**
 * A server's accept loop: takes connections off the listener, refuses those
 * past `maxConnections`, reads the PROXY header when one is expected, and
 * hands each connection to the server to open a session on.
 *
 * @module
 */

import type { AddressMatcher } from "../transport/_cidr.ts";
import {
  formatAddr,
  isClosedResource,
  type Transport,
  type TransportListener,
} from "../connection.ts";
import { noDelay, prepend } from "../transport/_conn.ts";
import {
  type ProxyHeader,
  readProxyHeader,
} from "../transport/proxy_protocol.ts";
import { after } from "../_timeouts.ts";
import { ClosedError, ProxyProtocolError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { Counters, ProxyInfo } from "../session/types.ts";
import type { ProxyProtocolOptions } from "./serve.ts";
import type { ServerEventDetail } from "./server.ts";
import { isHandshakingListener } from "../transport/_tls_accept.ts";
import { HandshakeFailures } from "./_handshakes.ts";

/** What the accept loop needs of its server. */
export interface AcceptHost {
  /** Sessions open now; with the connections still opening, bounded by `maxConnections`. */
  sessionCount(): number;
  /**
   * Opens a session on an accepted connection. A rejection closes only
   * that connection.
   *
   * @param conn The accepted connection.
   * @param transport What the session reads: `conn`, or `conn` with the bytes read past a PROXY header given back.
   * @param proxy What the PROXY header said.
   */
  open(
    conn: Transport,
    transport: Transport,
    proxy: ProxyInfo | undefined,
  ): Promise<void>;
  /**
   * Closes the session that has gone longest without a whole message, if
   * that is at least `minIdleMs`.
   *
   * @returns Whether a session was closed to make room.
   */
  evictIdle(minIdleMs: number): boolean;
  /** Dispatches a server event. */
  emit(detail: ServerEventDetail): void;
  /**
   * Whether the server is leaving (`shutdown({ leaveFor })`): the proxy's
   * own connections (health checks) are closed unanswered.
   */
  isLeaving(): boolean;
  /** The server's counters (a bad PROXY header counts as a protocol error). */
  readonly counters: Counters;
  /** The server's logger. */
  readonly logger: Logger;
}

/** How the accept loop treats new connections. */
export interface AcceptSettings {
  /** Open sessions at most, connections still opening included. */
  maxConnections: number;
  /** At `maxConnections`, evict a session idle this long (ms); `Infinity` = never. */
  evictIdleAfter: number;
  /** The PROXY header expected on each connection; `undefined` = none. */
  proxyProtocol: ProxyProtocolOptions | undefined;
  /** Milliseconds to wait for a PROXY header; `Infinity` = no limit. */
  proxyTimeout: number;
  /** Who may send a PROXY header; `undefined` = anyone. */
  trustedProxies: AddressMatcher | undefined;
}

/** The accept loop of one server, and its counts. */
export class Acceptor {
  readonly #listener: TransportListener;
  readonly #settings: AcceptSettings;
  readonly #host: AcceptHost;
  readonly #stop = new AbortController();
  /** Connections accepted but not yet sessions (reading a PROXY header). */
  readonly #opening = new Set<Promise<void>>();
  readonly #handshakes: HandshakeFailures;
  #loop: Promise<void> = Promise.resolve();
  #accepted = 0;
  #refused = 0;
  #evicted = 0;
  #rejected = 0;
  #healthChecksFailed = 0;

  constructor(
    listener: TransportListener,
    settings: AcceptSettings,
    host: AcceptHost,
  ) {
    this.#listener = listener;
    this.#settings = settings;
    this.#host = host;
    this.#handshakes = new HandshakeFailures(host.logger, host.emit);
  }

  /** Connections accepted since start. */
  get accepted(): number {
    return this.#accepted;
  }

  /** TLS handshakes the listener dropped (failed, timed out, plain text). */
  get handshakeFailures(): number {
    return this.#handshakes.count;
  }

  /**
   * Connections accepted but not yet sessions: in their TLS handshake or
   * reading a PROXY header.
   */
  get opening(): number {
    const listener = this.#listener;
    const handshaking = isHandshakingListener(listener)
      ? listener.handshaking
      : 0;
    return handshaking + this.#opening.size;
  }

  /** Connections refused by `maxConnections`. */
  get refused(): number {
    return this.#refused;
  }

  /** Idle sessions closed to make room for a new connection (`evictIdleAfter`). */
  get evicted(): number {
    return this.#evicted;
  }

  /** Connections closed for a bad PROXY header, a failed open or `onConnect`. */
  get rejected(): number {
    return this.#rejected;
  }

  /** The proxy's own connections closed unanswered while leaving. */
  get healthChecksFailed(): number {
    return this.#healthChecksFailed;
  }

  /** Counts a connection the server rejected after opening it (`onConnect` failed). */
  countRejected(): void {
    this.#rejected++;
  }

  /** Starts accepting. */
  start(): void {
    const listener = this.#listener;
    if (isHandshakingListener(listener)) {
      listener.onHandshakeError = (error) => this.#handshakes.report(error);
    }
    this.#loop = this.#run();
  }

  /**
   * Stops accepting and aborts PROXY header reads. Connections the
   * listener took from the operating system before that are still opened
   * (and drained with the rest): with several processes on one shared
   * socket, closing them would lose clients another process would serve.
   */
  stop(): void {
    this.#stop.abort(new ClosedError("Server is shutting down"));
    if (this.#listener.stopAccepting !== undefined) {
      this.#listener.stopAccepting();
    } else this.#closeListener();
  }

  #closeListener(): void {
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    this.#handshakes.close();
  }

  /**
   * Resolves once the loop has ended and no connection is still opening
   * (after {@linkcode stop}).
   */
  async settled(): Promise<void> {
    await this.#loop;
    await Promise.all(this.#opening);
  }

  async #run(): Promise<void> {
    const stopped = this.#stop.signal;
    for (;;) {
      let conn: Transport;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (stopped.aborted || isClosedResource(error)) {
          this.#closeListener();
          return;
        }
        // Transient accept failures (EMFILE, ECONNABORTED): log and go on.
        this.#host.logger.error("Accept failed", { error });
        this.#host.emit({ type: "error", error });
        await this.#pause(50);
        if (stopped.aborted) {
          this.#closeListener();
          return;
        }
        continue;
      }
      this.#take(conn);
    }
  }

  /** Waits `ms`, or less if the loop is stopped meanwhile. */
  #pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#stop.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  /**
   * Past `maxConnections`, makes room by evicting an idle session or
   * refuses the connection; otherwise starts opening it.
   */
  #take(conn: Transport): void {
    this.#accepted++;
    noDelay(conn);
    const { maxConnections, evictIdleAfter } = this.#settings;
    if (
      this.#host.sessionCount() + this.#opening.size >= maxConnections &&
      !this.#evict(evictIdleAfter)
    ) {
      this.#refused++;
      this.#host.logger.warn("Connection refused: maxConnections reached", {
        remote: formatAddr(conn.remoteAddr),
        maxConnections,
      });
      closeQuietly(conn);
      return;
    }
    if (this.#settings.proxyProtocol !== undefined) {
      const opening = this.#readProxy(conn, this.#settings.proxyProtocol);
      this.#opening.add(opening);
      opening.finally(() => this.#opening.delete(opening));
    } else {
      this.#openSafely(conn, conn, undefined);
    }
  }

  #evict(minIdleMs: number): boolean {
    if (minIdleMs === Infinity || !this.#host.evictIdle(minIdleMs)) {
      return false;
    }
    this.#evicted++;
    return true;
  }

  /** Reads a PROXY header, then opens the session; bad headers close the connection. */
  async #readProxy(
    conn: Transport,
    settings: ProxyProtocolOptions,
  ): Promise<void> {
    const remote = formatAddr(conn.remoteAddr);
    const timeout = this.#settings.proxyTimeout;
    const stopped = this.#stop.signal;
    const abort = new AbortController();
    const cancelTimer = after(
      timeout,
      () =>
        abort.abort(
          new ProxyProtocolError(`No PROXY header within ${timeout} ms`),
        ),
    );
    const onStop = () => abort.abort(new ClosedError("Server is closed"));
    stopped.addEventListener("abort", onStop, { once: true });
    try {
      const trusted = this.#settings.trustedProxies;
      const peer = conn.remoteAddr;
      if (
        trusted !== undefined && peer.transport === "tcp" &&
        !trusted(peer.hostname)
      ) {
        throw new ProxyProtocolError(
          `${remote} is not a trusted proxy (proxyProtocol.trusted)`,
        );
      }
      const { header, rest } = await readProxyHeader(conn, {
        signal: abort.signal,
        ...(settings.maxHeaderBytes === undefined
          ? {}
          : { maxHeaderBytes: settings.maxHeaderBytes }),
      });
      if (stopped.aborted) throw stopped.reason;
      if (this.#failedCheck(header, conn)) return;
      const proxy: ProxyInfo = {
        ...(header.source ? { source: header.source } : {}),
        ...(header.destination ? { destination: header.destination } : {}),
        peer,
      };
      this.#openSafely(conn, prepend(conn, rest), proxy);
    } catch (error) {
      closeQuietly(conn);
      if (stopped.aborted) return;
      this.#rejected++;
      this.#host.counters.protocolErrors++;
      this.#host.logger.warn("Connection rejected: bad PROXY protocol header", {
        remote,
        error,
      });
      this.#host.emit({ type: "error", error, remote });
    } finally {
      cancelTimer();
      stopped.removeEventListener("abort", onStop);
    }
  }

  /**
   * Whether `conn` is a health check to fail: the proxy's own connection
   * (no client behind its header) while the server is leaving. Failing it
   * asks the proxy to stop sending new connections here. Closes it if so.
   */
  #failedCheck(header: ProxyHeader, conn: Transport): boolean {
    if (header.transport !== "unknown" || !this.#host.isLeaving()) {
      return false;
    }
    this.#healthChecksFailed++;
    closeQuietly(conn);
    return true;
  }

  /** Opens a session; a failure (a codec whose decoder() throws) closes only that connection. */
  #openSafely(
    conn: Transport,
    transport: Transport,
    proxy: ProxyInfo | undefined,
  ): void {
    this.#host.open(conn, transport, proxy).catch((error) => {
      closeQuietly(conn);
      this.#rejected++;
      this.#host.logger.error("Cannot open session", {
        remote: formatAddr(conn.remoteAddr),
        error,
      });
      this.#host.emit({ type: "error", error });
    });
  }
}

function closeQuietly(conn: Transport): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
