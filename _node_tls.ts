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

import type { Transport, TransportListener } from "./_transport.ts";
import type { PeerCertificate } from "./session.ts";

export type { PeerCertificate, Transport, TransportListener };

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

class NodeTlsTransport implements MutualTlsTransport {
  readonly localAddr: Deno.NetAddr;
  readonly remoteAddr: Deno.NetAddr;
  readonly peerCertificate?: PeerCertificate;

  #socket: TLSSocket;
  /** Bytes received but not yet read; the socket is paused while non-empty. */
  #buffered: Uint8Array[] = [];
  #reader:
    | {
      p: Uint8Array;
      resolve: (n: number | null) => void;
      reject: (error: unknown) => void;
    }
    | null = null;
  #eof = false;
  #error: unknown = null;
  #closed = false;
  #ending: Promise<void> | null = null;
  #tcpStopped = false;

  constructor(socket: TLSSocket, peerCertificate: PeerCertificate | undefined) {
    this.#socket = socket;
    if (peerCertificate) this.peerCertificate = peerCertificate;
    this.localAddr = {
      transport: "tcp",
      hostname: socket.localAddress ?? "",
      port: socket.localPort ?? 0,
    };
    this.remoteAddr = {
      transport: "tcp",
      hostname: socket.remoteAddress ?? "",
      port: socket.remotePort ?? 0,
    };
    socket.on("data", (chunk: Uint8Array) => this.#onData(chunk));
    socket.on("end", () => {
      this.#eof = true;
      this.#settleReader(null);
    });
    socket.on("error", (error: Error) => {
      this.#error ??= error;
      this.#failReader(error);
    });
    socket.on("close", () => {
      // Closed without 'end' or 'error' (destroyed): nothing more will come.
      this.#eof = true;
      this.#settleReader(null);
    });
  }

  #onData(chunk: Uint8Array): void {
    const reader = this.#reader;
    if (reader) {
      this.#reader = null;
      const n = Math.min(chunk.length, reader.p.length);
      reader.p.set(chunk.subarray(0, n));
      if (n < chunk.length) {
        this.#buffered.push(chunk.subarray(n));
        this.#pause();
      }
      reader.resolve(n);
    } else {
      this.#buffered.push(chunk);
      this.#pause();
    }
  }

  /**
   * Stops 'data' events and, through the TLS socket's TCP handle, reading
   * from the kernel. On Deno 2.9 `pause()` alone is not enough: the TLS layer
   * keeps reading the TCP socket and buffers without bound (measured: 128 MiB
   * taken in while paused), so the TCP handle is stopped as well.
   */
  #pause(): void {
    this.#socket.pause();
    if (!this.#tcpStopped) {
      const tcp = tcpHandleOf(this.#socket);
      if (tcp) {
        tcp.readStop();
        this.#tcpStopped = true;
      }
    }
  }

  #resume(): void {
    if (this.#tcpStopped) {
      this.#tcpStopped = false;
      if (!this.#socket.destroyed) tcpHandleOf(this.#socket)?.readStart();
    }
    this.#socket.resume();
  }

  #settleReader(value: null): void {
    const reader = this.#reader;
    if (reader && this.#buffered.length === 0) {
      this.#reader = null;
      reader.resolve(value);
    }
  }

  #failReader(error: unknown): void {
    const reader = this.#reader;
    if (reader) {
      this.#reader = null;
      reader.reject(error);
    }
  }

  read(p: Uint8Array): Promise<number | null> {
    if (this.#closed) {
      return Promise.reject(
        new Deno.errors.BadResource("Cannot read: transport is closed"),
      );
    }
    if (this.#reader) {
      return Promise.reject(
        new Deno.errors.Busy("Cannot read: another read is pending"),
      );
    }
    if (this.#buffered.length > 0) {
      let n = 0;
      while (n < p.length && this.#buffered.length > 0) {
        const chunk = this.#buffered[0]!;
        const take = Math.min(chunk.length, p.length - n);
        p.set(chunk.subarray(0, take), n);
        n += take;
        if (take === chunk.length) this.#buffered.shift();
        else this.#buffered[0] = chunk.subarray(take);
      }
      if (this.#buffered.length === 0 && !this.#eof) this.#resume();
      return Promise.resolve(n);
    }
    if (this.#error) return Promise.reject(this.#error);
    if (this.#eof || p.length === 0) {
      return Promise.resolve(this.#eof ? null : 0);
    }
    const { promise, resolve, reject } = Promise.withResolvers<
      number | null
    >();
    this.#reader = { p, resolve, reject };
    this.#resume();
    return promise;
  }

  write(p: Uint8Array): Promise<number> {
    if (this.#closed) {
      return Promise.reject(
        new Deno.errors.BadResource("Cannot write: transport is closed"),
      );
    }
    if (this.#ending) {
      return Promise.reject(
        new Deno.errors.BrokenPipe("Cannot write: writing side is closed"),
      );
    }
    if (this.#error) return Promise.reject(this.#error);
    if (p.length === 0) return Promise.resolve(0);
    const { promise, resolve, reject } = Promise.withResolvers<number>();
    this.#socket.write(p, (error?: Error | null) => {
      if (error) reject(error);
      else resolve(p.length);
    });
    return promise;
  }

  closeWrite(): Promise<void> {
    if (this.#closed) {
      return Promise.reject(
        new Deno.errors.BadResource(
          "Cannot close writing side: transport is closed",
        ),
      );
    }
    if (!this.#ending) {
      const { promise, resolve, reject } = Promise.withResolvers<void>();
      const onError = (error: Error) => reject(error);
      this.#socket.once("error", onError);
      this.#socket.end(() => {
        this.#socket.off("error", onError);
        resolve();
      });
      this.#ending = promise;
    }
    return this.#ending;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#buffered = [];
    this.#failReader(new Deno.errors.Interrupted("operation canceled"));
    this.#socket.destroy();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The read switch of a native stream handle. */
interface ReadControl {
  readStart(): unknown;
  readStop(): unknown;
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
function tcpHandleOf(socket: TLSSocket): ReadControl | undefined {
  const tcp = (socket as unknown as {
    _handle?: { _nativeTcpHandle?: Partial<ReadControl> | null } | null;
  })._handle?._nativeTcpHandle;
  return typeof tcp?.readStart === "function" &&
      typeof tcp.readStop === "function"
    ? tcp as ReadControl
    : undefined;
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

class NodeTlsListener implements MutualTlsListener {
  readonly addr: Deno.NetAddr;
  #server: TlsServer;
  #backlog: number;
  #ready: NodeTlsTransport[] = [];
  #waiters: PromiseWithResolvers<MutualTlsTransport>[] = [];
  #closed = false;
  #rejected = 0;
  #dropped = 0;

  constructor(
    server: TlsServer,
    addr: Deno.NetAddr,
    requireClientCert: boolean,
    backlog: number,
  ) {
    this.#server = server;
    this.addr = addr;
    this.#backlog = backlog;
    server.on("tlsClientError", (_error: Error, socket: TLSSocket) => {
      this.#rejected++;
      socket.destroy();
    });
    server.on("secureConnection", (socket: TLSSocket) => {
      this.#onSecureConnection(socket, requireClientCert);
    });
    // After listening, errors come from accepting (EMFILE, …): hand them to
    // the accept() calls waiting now, as Deno.Listener.accept() would.
    server.on("error", (error: Error) => {
      for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
    });
  }

  get rejected(): number {
    return this.#rejected;
  }

  get dropped(): number {
    return this.#dropped;
  }

  #onSecureConnection(socket: TLSSocket, requireClientCert: boolean): void {
    // Never let a late socket error become an uncaught exception.
    socket.on("error", () => {});
    if (this.#closed) {
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
      this.#rejected++;
      socket.destroy();
      return;
    }
    const transport = new NodeTlsTransport(socket, certificate);
    const waiter = this.#waiters.shift();
    if (waiter) {
      waiter.resolve(transport);
    } else if (this.#ready.length < this.#backlog) {
      this.#ready.push(transport);
    } else {
      this.#dropped++;
      transport.close();
    }
  }

  accept(): Promise<MutualTlsTransport> {
    if (this.#closed) {
      return Promise.reject(
        new Deno.errors.BadResource("Listener has been closed"),
      );
    }
    const ready = this.#ready.shift();
    if (ready) return Promise.resolve(ready);
    const waiter = Promise.withResolvers<MutualTlsTransport>();
    this.#waiters.push(waiter);
    return waiter.promise;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#server.close();
    for (const transport of this.#ready.splice(0)) transport.close();
    for (const waiter of this.#waiters.splice(0)) {
      waiter.reject(new Deno.errors.BadResource("Listener has been closed"));
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<MutualTlsTransport> {
    while (true) {
      try {
        yield await this.accept();
      } catch (error) {
        if (this.#closed && error instanceof Deno.errors.BadResource) return;
        throw error;
      }
    }
  }
}

/**
 * Maps a `node:net` bind error (`code: "EADDRINUSE"`, …) to the matching
 * `Deno.errors` class, keeping the original as `cause`.
 *
 * @param error The error `server.listen()` emitted.
 * @returns The error to throw.
 */
function toDenoError(error: unknown): unknown {
  const code = (error as { code?: unknown } | null)?.code;
  const message = error instanceof Error ? error.message : String(error);
  switch (code) {
    case "EADDRINUSE":
      return new Deno.errors.AddrInUse(message, { cause: error });
    case "EADDRNOTAVAIL":
      return new Deno.errors.AddrNotAvailable(message, { cause: error });
    case "EACCES":
    case "EPERM":
      return new Deno.errors.PermissionDenied(message, { cause: error });
    default:
      return error;
  }
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
 * import { listenMutualTls } from "./_node_tls.ts";
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
  const { promise, resolve, reject } = Promise.withResolvers<void>();
  const onError = (error: Error) => reject(error);
  const onAbort = () => reject(signal?.reason);
  server.once("error", onError);
  signal?.addEventListener("abort", onAbort, { once: true });
  server.listen({ port, host: hostname }, () => resolve());
  try {
    await promise;
  } catch (error) {
    server.close();
    throw toDenoError(error);
  } finally {
    server.off("error", onError);
    signal?.removeEventListener("abort", onAbort);
  }
  const address = server.address();
  const addr: Deno.NetAddr = typeof address === "object" && address !== null
    ? { transport: "tcp", hostname: address.address, port: address.port }
    : { transport: "tcp", hostname, port };
  return new NodeTlsListener(server, addr, requireClientCert, backlog);
}
