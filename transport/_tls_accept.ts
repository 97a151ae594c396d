/**
 * {@linkcode listenTls}: the TLS listener of `serve({ tls })`. It accepts
 * plain TCP with `Deno.listen` and runs the TLS handshake through
 * `node:tls`, over a stream that owns the accepted `Deno.Conn`.
 *
 * Why not `Deno.listenTls`: in Deno 2.9.6 its handshake runs in a task of
 * its own that keeps the socket's descriptor until the handshake ends, even
 * after `close()`, so clients that never finish their handshake pin a
 * descriptor each until the process runs out. Here the handshake is ours:
 * a connection that has not finished it within `handshakeTimeout` (or fails
 * it) is closed, and closing the `Deno.Conn` frees its descriptor. Binding
 * stays synchronous, as `serve()` promises `server.addr` at once.
 *
 * @module
 */

import { createSecureContext, type SecureContext, TLSSocket } from "node:tls";
import { Duplex } from "node:stream";

import type { Transport, TransportListener } from "../connection.ts";
import { TlsHandshakeError } from "../errors.ts";
import { withResolvers } from "../_util.ts";
import { NodeSocketTransport, type ReadControl } from "./_node_socket.ts";

/** Options of {@linkcode listenTls}. */
export interface ListenTlsOptions {
  /** The address to listen on. */
  hostname: string;
  /** The port to listen on; `0` picks a free one. */
  port: number;
  /** The server certificate chain (PEM). */
  cert: string;
  /** The server private key (PEM). */
  key: string;
  /** Milliseconds a client has to complete the TLS handshake. */
  handshakeTimeout: number;
  /**
   * How many connections that completed their handshake may wait for
   * `accept()`; more are closed.
   *
   * @default {128}
   */
  backlog?: number;
}

/**
 * A listener whose connections have completed their TLS handshake when
 * `accept()` returns them. Failed handshakes are reported, not returned.
 */
export interface HandshakingListener extends TransportListener {
  /** Connections accepted whose handshake is still running. */
  readonly handshaking: number;
  /**
   * Called for each connection dropped because its TLS handshake failed,
   * timed out, or was not TLS. Set by the server that serves the listener.
   */
  onHandshakeError: ((error: TlsHandshakeError) => void) | undefined;
}

/** Whether `listener` reports handshakes ({@linkcode HandshakingListener}). */
export function isHandshakingListener(
  listener: TransportListener,
): listener is HandshakingListener {
  return "onHandshakeError" in listener &&
    typeof (listener as HandshakingListener).handshaking === "number";
}

/** The first byte of every TLS handshake record. */
const TLS_HANDSHAKE_RECORD = 0x16;

/**
 * A fatal decode_error alert record: what rustls (`Deno.listenTls`) answers
 * to bytes that are not TLS. A plain-text client (`dial()` without `tls`
 * among them) recognises a TLS server by this alert, where a bare close
 * looks like a dropped connection worth retrying.
 */
const TLS_DECODE_ERROR_ALERT = Uint8Array.of(
  0x15, // content type: alert
  0x03,
  0x03, // record version: TLS 1.2, as TLS 1.3 records say too
  0x00,
  0x02, // length
  0x02, // level: fatal
  0x32, // description: decode_error
);

/**
 * The buffer of the first read, before any TLS state exists: a connection
 * that sends nothing costs this, its `Deno.Conn` and a timer.
 */
const FIRST_READ_BYTES = 1024;

/**
 * The read buffer of a connection in TLS starts at this size and doubles,
 * up to {@linkcode MAX_READ_BYTES}, each time a read fills it: a client that
 * stalls mid-handshake or a quiet session holds the small one.
 */
const MIN_READ_BYTES = 4 * 1024;
const MAX_READ_BYTES = 64 * 1024;

/**
 * A `node:stream` Duplex over a `Deno.Conn`, for `node:tls` to run TLS on.
 * Reads pull from the connection only while the TLS layer asks for more and
 * {@linkcode ConnStream.readStop} has not been called, so a paused session
 * stops reading from the kernel.
 */
class ConnStream extends Duplex implements ReadControl {
  readonly #conn: Deno.Conn;
  #head: Uint8Array | undefined;
  #buffer = new Uint8Array(MIN_READ_BYTES);
  #pumping = false;
  #stopped = false;
  #wanted = false;

  /**
   * @param conn The connection, which the stream owns from now on.
   * @param head Bytes already read from `conn`, read first.
   */
  constructor(conn: Deno.Conn, head: Uint8Array) {
    super({ allowHalfOpen: true });
    this.#conn = conn;
    this.#head = head;
  }

  override _read(): void {
    this.#wanted = true;
    const head = this.#head;
    if (head !== undefined) {
      this.#head = undefined;
      this.#wanted = this.push(head);
    }
    if (this.#wanted && !this.#pumping && !this.#stopped) this.#pump();
  }

  async #pump(): Promise<void> {
    this.#pumping = true;
    try {
      while (this.#wanted && !this.#stopped) {
        const buffer = this.#buffer;
        const n = await this.#conn.read(buffer);
        if (n === null) {
          this.push(null);
          return;
        }
        if (n === buffer.length && n < MAX_READ_BYTES) {
          this.#buffer = new Uint8Array(n * 2);
        }
        this.#wanted = this.push(buffer.slice(0, n));
      }
    } catch (error) {
      this.destroy(error as Error);
    } finally {
      this.#pumping = false;
    }
  }

  override _write(
    chunk: Uint8Array,
    _encoding: string,
    callback: (error?: Error | null) => void,
  ): void {
    writeAll(this.#conn, chunk).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#conn.closeWrite().then(() => callback(), () => callback());
  }

  override _destroy(
    error: Error | null,
    callback: (error?: Error | null) => void,
  ): void {
    closeQuietly(this.#conn);
    callback(error);
  }

  readStop(): void {
    this.#stopped = true;
  }

  readStart(): void {
    this.#stopped = false;
    if (this.#wanted && !this.#pumping) this.#pump();
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    written += await conn.write(bytes.subarray(written));
  }
}

/** A TLS connection served over a `Deno.Conn`. */
class TlsTransport extends NodeSocketTransport {
  readonly #conn: Deno.TcpConn;

  constructor(socket: TLSSocket, stream: ConnStream, conn: Deno.TcpConn) {
    super(socket, {
      readControl: () => stream,
      addrs: { localAddr: conn.localAddr, remoteAddr: conn.remoteAddr },
    });
    this.#conn = conn;
  }

  /**
   * Sets `TCP_NODELAY` on the TCP connection underneath: a `TLSSocket` over
   * a stream has no socket of its own to set it on.
   *
   * @param on Whether to turn Nagle's algorithm off.
   */
  override setNoDelay(on: boolean): void {
    this.#conn.setNoDelay(on);
  }
}

class TlsListener implements HandshakingListener, Disposable {
  readonly addr: Deno.NetAddr;
  onHandshakeError: ((error: TlsHandshakeError) => void) | undefined;
  readonly #tcp: Deno.Listener<Deno.TcpConn, Deno.NetAddr>;
  readonly #context: SecureContext;
  readonly #timeout: number;
  readonly #backlog: number;
  readonly #pending = new Set<() => void>();
  #ready: Transport[] = [];
  #waiters: PromiseWithResolvers<Transport>[] = [];
  #closed = false;
  #error: unknown = null;
  #retry: ReturnType<typeof setTimeout> | undefined;

  constructor(
    tcp: Deno.Listener<Deno.TcpConn, Deno.NetAddr>,
    context: SecureContext,
    timeout: number,
    backlog: number,
  ) {
    this.#tcp = tcp;
    this.addr = tcp.addr;
    this.#context = context;
    this.#timeout = timeout;
    this.#backlog = backlog;
    this.#run();
  }

  get handshaking(): number {
    return this.#pending.size;
  }

  async #run(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#tcp.accept();
      } catch (error) {
        if (this.#closed) return;
        // EMFILE and the like: hand them to accept(), as Deno.listen would.
        this.#failWaiters(error);
        await new Promise<void>((resolve) => {
          this.#retry = setTimeout(resolve, 50);
        });
        if (this.#closed) return;
        continue;
      }
      this.#handshake(conn);
    }
  }

  #failWaiters(error: unknown): void {
    const waiters = this.#waiters.splice(0);
    if (waiters.length === 0) this.#error ??= error;
    for (const waiter of waiters) waiter.reject(error);
  }

  /**
   * Waits for the client's first bytes, then runs the TLS handshake on
   * them, all within the handshake timeout. No TLS state exists before the
   * first bytes, and none at all for a client whose first byte cannot start
   * a handshake: it gets an alert and the close.
   */
  #handshake(conn: Deno.TcpConn): void {
    if (this.#closed) {
      conn.close();
      return;
    }
    const remote = conn.remoteAddr;
    let tls: { stream: ConnStream; socket: TLSSocket } | undefined;
    const fail = (reason: TlsHandshakeError["reason"], cause?: unknown) => {
      done();
      if (tls === undefined) closeQuietly(conn);
      else {
        tls.socket.destroy();
        tls.stream.destroy();
      }
      if (this.#closed) return;
      const error = new TlsHandshakeError(
        reason === "timeout"
          ? `TLS handshake not completed within ${this.#timeout} ms`
          : reason === "plaintext"
          ? "Client sent plain text to a TLS port"
          : `TLS handshake failed: ${describe(cause)}`,
        { reason, remoteAddr: remote, cause },
      );
      this.onHandshakeError?.(error);
    };
    const timer = setTimeout(() => fail("timeout"), this.#timeout);
    // Closing the listener ends the handshakes still running, unreported.
    const cancel = () => fail("failed", new Error("listener closed"));
    const running = () => this.#pending.has(cancel);
    const done = () => {
      clearTimeout(timer);
      this.#pending.delete(cancel);
      tls?.socket.off("error", onError);
    };
    const onError = (error: Error) => fail("failed", error);
    const onEnd = () => {
      if (running()) {
        fail("failed", new Error("closed by the client before the handshake"));
      }
    };
    this.#pending.add(cancel);
    const head = new Uint8Array(FIRST_READ_BYTES);
    conn.read(head).then((n) => {
      if (!running()) return;
      if (n === null) return onEnd();
      if (head[0] !== TLS_HANDSHAKE_RECORD) {
        // Nothing was written on this connection, so the send buffer has
        // room and this write does not wait on the peer.
        const refuse = () => {
          if (running()) fail("plaintext");
        };
        conn.write(TLS_DECODE_ERROR_ALERT).then(refuse, refuse);
        return;
      }
      const stream = new ConnStream(conn, head.subarray(0, n));
      const socket = new TLSSocket(stream as never, {
        isServer: true,
        secureContext: this.#context,
      });
      tls = { stream, socket };
      socket.on("error", onError);
      stream.once("end", onEnd);
      socket.once("close", onEnd);
      socket.once("secure", () => {
        done();
        socket.on("error", () => {});
        this.#offer(new TlsTransport(socket, stream, conn));
      });
    }, (error) => {
      if (running()) fail("failed", error);
    });
  }

  #offer(transport: Transport): void {
    if (this.#closed) {
      transport.close();
      return;
    }
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve(transport);
    else if (this.#ready.length < this.#backlog) this.#ready.push(transport);
    else transport.close();
  }

  accept(): Promise<Transport> {
    if (this.#closed) {
      return Promise.reject(
        new Deno.errors.BadResource("Listener has been closed"),
      );
    }
    const ready = this.#ready.shift();
    if (ready) return Promise.resolve(ready);
    if (this.#error !== null) {
      const error = this.#error;
      this.#error = null;
      return Promise.reject(error);
    }
    const waiter = withResolvers<Transport>();
    this.#waiters.push(waiter);
    return waiter.promise;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retry);
    this.#tcp.close();
    for (const cancel of [...this.#pending]) cancel();
    for (const transport of this.#ready.splice(0)) transport.close();
    for (const waiter of this.#waiters.splice(0)) {
      waiter.reject(new Deno.errors.BadResource("Listener has been closed"));
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Transport> {
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

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Listens for TLS connections: binds at once (bind errors throw), then
 * returns from `accept()` only connections that completed the handshake.
 * Connections that fail it, send plain text, or have not finished it within
 * `handshakeTimeout` are closed and reported to `onHandshakeError`.
 *
 * @param options Address, certificate, key and limits.
 * @returns The listener, bound.
 * @throws {Deno.errors.AddrInUse} When the address is taken (other bind errors likewise).
 * @throws {Error} When `cert` or `key` is not valid PEM.
 */
export function listenTls(options: ListenTlsOptions): HandshakingListener {
  const { hostname, port, cert, key, handshakeTimeout, backlog = 128 } =
    options;
  const context = createSecureContext({ cert, key });
  const tcp = Deno.listen({ hostname, port });
  return new TlsListener(tcp, context, handshakeTimeout, backlog);
}
