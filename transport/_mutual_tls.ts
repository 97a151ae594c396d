/**
 * A TLS listener that requires and verifies client certificates (mutual TLS),
 * built on `node:tls` because `Deno.listenTls` cannot ask for client
 * certificates. Accepted connections implement the same minimal
 * {@linkcode Transport} interface that `Deno.Conn` satisfies.
 *
 * What this relies on in Deno 2.9.6 (checked by tests/node_tls_test.ts):
 * - `createServer({ requestCert: true, rejectUnauthorized: true, ca })`
 *   verifies client certificates (rustls underneath); clients without one or
 *   from another CA fail the handshake and surface as `tlsClientError`.
 * - `socket.pause()` stops 'data' events but not the TLS layer's reads from
 *   TCP, which then buffers without bound; pausing also stops the TCP handle
 *   (see `tcpHandleOf`).
 * - node:net/node:tls handles are not in Deno's resource table: the test
 *   sanitizers cannot see a listener or socket left open.
 *
 * @module
 */

import { createPrivateKey, X509Certificate } from "node:crypto";
import {
  createServer,
  type Server as TlsServer,
  type TLSSocket,
} from "node:tls";

import type { Socket } from "node:net";
import { TlsHandshakeError } from "../errors.ts";
import type { HandshakingListener } from "./_tls_accept.ts";
import {
  NodeListener,
  NodeSocketTransport,
  type ReadControl,
  startListening,
} from "./_node_socket.ts";
import type {
  PeerCertificate,
  Transport,
  TransportListener,
} from "../connection.ts";

/** A connection accepted by {@linkcode listenMutualTls}. */
export interface MutualTlsTransport extends Transport, Disposable {
  /** The verified client certificate; absent only when the client sent none and `requireClientCert` is `false`. */
  readonly peerCertificate?: PeerCertificate;
  /** The local address. */
  readonly localAddr: Deno.NetAddr;
  /** The peer's address. */
  readonly remoteAddr: Deno.NetAddr;
}

/** The listener returned by {@linkcode listenMutualTls}. */
export interface MutualTlsListener
  extends TransportListener, AsyncIterable<MutualTlsTransport>, Disposable {
  /** The address listened on. */
  readonly addr: Deno.NetAddr;
  /**
   * Waits for the next connection that completed the handshake with a valid
   * client certificate.
   *
   * @returns The accepted transport.
   * @throws {Deno.errors.BadResource} When the listener is (or gets) closed.
   */
  accept(): Promise<MutualTlsTransport>;
  /**
   * Iterates accepted transports until the listener is closed.
   *
   * @returns The iterator.
   */
  [Symbol.asyncIterator](): AsyncIterator<MutualTlsTransport>;
  /** Connections dropped because their TLS handshake or certificate check failed. */
  readonly rejected: number;
  /** Verified connections closed because `backlog` connections were already waiting for `accept()`. */
  readonly dropped: number;
}

/** Options of {@linkcode listenMutualTls}. */
export interface ListenMutualTlsOptions {
  /**
   * The address to listen on.
   *
   * @default {"0.0.0.0"}
   */
  hostname?: string;
  /** The port to listen on; `0` picks a free one. */
  port: number;
  /** The server certificate chain (PEM). */
  cert: string;
  /** The server private key (PEM). */
  key: string;
  /** The CA certificate(s) (PEM) that client certificates must chain to. */
  ca: string | string[];
  /**
   * Whether a client without a certificate is refused. When `false`, a client
   * may connect without one (no `peerCertificate`); a client that does send a
   * certificate must still send a valid one.
   *
   * @default {true}
   */
  requireClientCert?: boolean;
  /**
   * How many verified connections may wait for `accept()`; more are closed
   * and counted in `dropped`.
   *
   * @default {128}
   */
  backlog?: number;
  /**
   * Milliseconds a client has to complete the TLS handshake.
   *
   * @default {10000}
   */
  handshakeTimeout?: number;
  /** Aborts listening before it started. */
  signal?: AbortSignal;
}

class NodeTlsTransport extends NodeSocketTransport
  implements MutualTlsTransport {
  declare readonly localAddr: Deno.NetAddr;
  declare readonly remoteAddr: Deno.NetAddr;
  readonly peerCertificate?: PeerCertificate;

  constructor(socket: TLSSocket, peerCertificate: PeerCertificate | undefined) {
    // Pausing stops the TCP handle too: `pause()` alone leaves the TLS layer
    // reading the TCP socket without bound, so a peer that writes to a
    // session that stopped reading would fill memory instead of stalling.
    super(socket, { readControl: tcpHandleOf });
    if (peerCertificate) this.peerCertificate = peerCertificate;
  }
}

/**
 * The TCP handle under a `node:tls` socket, where this runtime exposes it
 * (Deno 2.9: `socket._handle._nativeTcpHandle`, the handle whose reads feed
 * the TLS layer). Looked up on each use: it is cleared when the socket
 * closes. `undefined` on runtimes without it; pausing then relies on
 * `socket.pause()` alone.
 *
 * @param socket The TLS socket.
 * @returns The handle's read switch, if any.
 */
function tcpHandleOf(socket: Socket): ReadControl | undefined {
  const tcp = (socket as unknown as {
    _handle?: { _nativeTcpHandle?: Partial<ReadControl> | null } | null;
  })._handle?._nativeTcpHandle;
  return typeof tcp?.readStart === "function" &&
      typeof tcp.readStop === "function"
    ? tcp as ReadControl
    : undefined;
}

/** The peer's address, as {@linkcode TlsHandshakeError} options. */
function remoteOf(socket: TLSSocket): { remoteAddr?: Deno.NetAddr } {
  const { remoteAddress, remotePort } = socket;
  return remoteAddress === undefined ? {} : {
    remoteAddr: {
      transport: "tcp",
      hostname: remoteAddress,
      port: remotePort ?? 0,
    },
  };
}

/**
 * What a `tlsClientError` means: a handshake past `handshakeTimeout`, plain
 * text (the TLS layer reports a record that is not TLS), or another failure.
 */
function handshakeFailure(error: Error, socket: TLSSocket): TlsHandshakeError {
  const code = (error as { code?: unknown }).code;
  const text = `${String(code)} ${error.message}`;
  const reason = /TIMEOUT|timed? ?out/i.test(text)
    ? "timeout"
    : /InvalidContentType|http request|wrong version|corrupt message|not tls/i
        .test(text)
    ? "plaintext"
    : "failed";
  return new TlsHandshakeError(`TLS handshake failed: ${error.message}`, {
    reason,
    ...remoteOf(socket),
    cause: error,
  });
}

function peerCertificateOf(socket: TLSSocket): PeerCertificate | undefined {
  const raw = socket.getPeerCertificate()?.raw;
  if (!raw || raw.length === 0) return undefined;
  const x509 = new X509Certificate(raw);
  return {
    subject: x509.subject,
    issuer: x509.issuer,
    fingerprint256: x509.fingerprint256,
    raw: new Uint8Array(raw),
  };
}

class NodeTlsListener extends NodeListener<NodeTlsTransport>
  implements MutualTlsListener, HandshakingListener {
  declare readonly addr: Deno.NetAddr;
  onHandshakeError: ((error: TlsHandshakeError) => void) | undefined;
  #rejected = 0;
  /** TCP sockets whose handshake is running, closed with the listener. */
  readonly #handshaking = new Set<Socket>();

  constructor(
    server: TlsServer,
    addr: Deno.NetAddr,
    requireClientCert: boolean,
    backlog: number,
  ) {
    super(server, addr, backlog);
    server.on("connection", (raw: Socket) => {
      this.#handshaking.add(raw);
      raw.once("close", () => this.#handshaking.delete(raw));
    });
    server.on("tlsClientError", (error: Error, socket: TLSSocket) => {
      this.#handshaken(socket);
      this.#reject(socket, handshakeFailure(error, socket));
    });
    server.on("secureConnection", (socket: TLSSocket) => {
      this.#handshaken(socket);
      this.#onSecureConnection(socket, requireClientCert);
    });
  }

  /**
   * Takes a socket's TCP socket (`_parent`, in Node and Deno) off the
   * handshaking list.
   */
  #handshaken(socket: TLSSocket): void {
    const raw = (socket as unknown as { _parent?: Socket })._parent;
    if (raw !== undefined) this.#handshaking.delete(raw);
  }

  /** Also closes the connections still in their handshake. */
  override close(): void {
    super.close();
    for (const raw of this.#handshaking) raw.destroy();
    this.#handshaking.clear();
  }

  get rejected(): number {
    return this.#rejected;
  }

  get handshaking(): number {
    return this.#handshaking.size;
  }

  #reject(socket: TLSSocket, error: TlsHandshakeError): void {
    this.#rejected++;
    const closed = this.isClosed;
    socket.destroy();
    if (!closed) this.onHandshakeError?.(error);
  }

  #onSecureConnection(socket: TLSSocket, requireClientCert: boolean): void {
    // Never let a late socket error become an uncaught exception.
    socket.on("error", () => {});
    if (this.isClosed) {
      socket.destroy();
      return;
    }
    let certificate: PeerCertificate | undefined;
    try {
      certificate = peerCertificateOf(socket);
    } catch {
      certificate = undefined;
    }
    const verified = socket.authorized === true && certificate !== undefined;
    if (!verified && (requireClientCert || certificate !== undefined)) {
      const why = socket.authorizationError ?? "no client certificate";
      this.#reject(
        socket,
        new TlsHandshakeError(
          `TLS client certificate refused: ${String(why)}`,
          { reason: "failed", ...remoteOf(socket), cause: why },
        ),
      );
      return;
    }
    this.offer(new NodeTlsTransport(socket, certificate));
  }
}

/**
 * Checks the numeric options of {@linkcode listenMutualTls}.
 *
 * @throws {RangeError} When `port`, `backlog` or `handshakeTimeout` is out of range.
 */
function checkLimits(
  port: number,
  backlog: number,
  handshakeTimeout: number,
): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`Cannot listen: port ${port} is not in 0..65535`);
  }
  if (!Number.isInteger(backlog) || backlog < 0) {
    throw new RangeError(
      `Cannot listen: backlog ${backlog} is not an integer >= 0`,
    );
  }
  if (!(handshakeTimeout > 0)) {
    throw new RangeError(
      `Cannot listen: handshakeTimeout ${handshakeTimeout} is not > 0`,
    );
  }
}

/**
 * Checks that `cert`, `key` and `ca` parse as PEM.
 *
 * @returns The trusted CAs as a list.
 * @throws {TypeError} When one is missing or not PEM.
 */
function checkPem(
  cert: string,
  key: string,
  ca: ListenMutualTlsOptions["ca"],
): string[] {
  if (typeof cert !== "string" || typeof key !== "string") {
    throw new TypeError("Cannot listen: cert and key must be PEM strings");
  }
  const cas = typeof ca === "string" ? [ca] : ca;
  if (!Array.isArray(cas) || cas.length === 0) {
    throw new TypeError("Cannot listen: ca must be one or more PEM strings");
  }
  try {
    createPrivateKey(key);
    new X509Certificate(cert);
  } catch (cause) {
    throw new TypeError("Cannot listen: cert or key is not valid PEM", {
      cause,
    });
  }
  for (const pem of cas) {
    try {
      new X509Certificate(pem);
    } catch (cause) {
      throw new TypeError("Cannot listen: ca is not a PEM certificate", {
        cause,
      });
    }
  }
  return cas;
}

/**
 * Listens for TLS connections whose clients must present a certificate signed
 * by `ca` (mutual TLS). Clients that fail the handshake or the certificate
 * check are dropped silently and counted in `rejected`; they are never
 * returned by `accept()`.
 *
 * Built on `node:tls` (`requestCert`, `rejectUnauthorized`), because
 * `Deno.listenTls` cannot ask for client certificates. The accepted
 * transports read with backpressure: the socket is paused while received
 * bytes wait for a `read()`.
 *
 * @param options Address, certificate, key, trusted CA(s) and limits.
 * @returns The listener, once it is bound.
 * @throws {TypeError} When `cert`, `key` or `ca` is missing or not PEM.
 * @throws {RangeError} When `port`, `backlog` or `handshakeTimeout` is out of range.
 * @throws {Deno.errors.AddrInUse} When the address is taken (other bind errors likewise).
 *
 * @example Usage
 * ```ts ignore
 * import { listenMutualTls } from "./_mutual_tls.ts";
 *
 * const pem = (file: string) => Deno.readTextFileSync(file);
 * using listener = await listenMutualTls({
 *   hostname: "127.0.0.1",
 *   port: 0,
 *   cert: pem("server.pem"),
 *   key: pem("server.key"),
 *   ca: pem("ca.pem"),
 * });
 * for await (const conn of listener) {
 *   console.log("client", conn.peerCertificate?.subject);
 *   conn.close();
 * }
 * ```
 */
export async function listenMutualTls(
  options: ListenMutualTlsOptions,
): Promise<MutualTlsListener> {
  const {
    hostname = "0.0.0.0",
    port,
    cert,
    key,
    ca,
    requireClientCert = true,
    backlog = 128,
    handshakeTimeout = 10_000,
    signal,
  } = options;
  checkLimits(port, backlog, handshakeTimeout);
  const cas = checkPem(cert, key, ca);
  signal?.throwIfAborted();
  const server = createServer({
    cert,
    key,
    ca: cas,
    requestCert: true,
    rejectUnauthorized: requireClientCert,
    allowHalfOpen: true,
    handshakeTimeout,
  });
  await startListening(server, { port, host: hostname }, signal);
  const address = server.address();
  const addr: Deno.NetAddr = typeof address === "object" && address !== null
    ? { transport: "tcp", hostname: address.address, port: address.port }
    : { transport: "tcp", hostname, port };
  return new NodeTlsListener(server, addr, requireClientCert, backlog);
}
