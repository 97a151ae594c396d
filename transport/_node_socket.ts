/**
 * The adapter from a `node:net` socket (or a `node:tls` one, see
 * `_mutual_tls.ts`) to a {@linkcode Transport}, and the accept queue that
 * the listeners built on `node:net` and `node:tls` share.
 *
 * What this relies on in Deno 2.9.6 (checked by
 * tests/socket_activation_test.ts and tests/node_tls_test.ts):
 * - With `pauseOnConnect`, an accepted socket reads nothing until resumed,
 *   and `socket.pause()` stops reading from the kernel once Node's stream
 *   buffer is full: a peer writing to an unread connection stalls.
 * - node:net handles are not in Deno's resource table: the test sanitizers
 *   cannot see a listener or socket left open.
 *
 * @module
 */

import type { Server as NetServer, Socket } from "node:net";

import type { Transport, TransportListener } from "../connection.ts";
import { withResolvers } from "../_util.ts";
import {
  BadResource,
  BrokenPipe,
  Busy,
  fromNodeError,
  Interrupted,
} from "./_runtime.ts";

/** The read switch of a native stream handle. */
export interface ReadControl {
  /** Starts reading from the kernel. */
  readStart(): unknown;
  /** Stops reading from the kernel. */
  readStop(): unknown;
}

/** Options of {@linkcode NodeSocketTransport}. */
export interface NodeSocketTransportOptions {
  /**
   * A handle to stop as well when pausing, for sockets whose `pause()` does
   * not stop reading from the kernel (`node:tls` on Deno 2.9). Looked up on
   * each use; `undefined` means `pause()` is enough.
   */
  readControl?: (socket: Socket) => ReadControl | undefined;
  /**
   * The addresses to report, for sockets that run over a stream rather than
   * a socket of their own (TLS over a `Deno.Conn`). Default: the socket's.
   */
  addrs?: {
    localAddr: Deno.NetAddr | Deno.UnixAddr;
    remoteAddr: Deno.NetAddr | Deno.UnixAddr;
  };
}

/**
 * A `node:net` socket (or a `node:tls` one) as a {@linkcode Transport}:
 * `read()` with backpressure (the socket is paused while received bytes wait
 * for a read), `null` at end of stream, `write()` resolving once the bytes
 * are flushed, `closeWrite()` as `end()`, `close()` as `destroy()`.
 */
export class NodeSocketTransport implements Transport, Disposable {
  /** This end's address (`transport: "unix"`, `path: ""` for Unix sockets). */
  readonly localAddr: Deno.NetAddr | Deno.UnixAddr;
  /** The peer's address (`transport: "unix"`, `path: ""` for Unix sockets). */
  readonly remoteAddr: Deno.NetAddr | Deno.UnixAddr;

  #socket: Socket;
  #readControl: ((socket: Socket) => ReadControl | undefined) | undefined;
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
  #handleStopped = false;

  /**
   * Adapts `socket`; it should be paused (`pauseOnConnect`) or fresh, and
   * nobody else should read from it.
   *
   * @param socket The accepted socket.
   * @param options A handle to stop with the socket, if any.
   */
  constructor(socket: Socket, options: NodeSocketTransportOptions = {}) {
    this.#socket = socket;
    this.#readControl = options.readControl;
    this.localAddr = options.addrs?.localAddr ??
      addrOf(socket.localAddress, socket.localPort);
    this.remoteAddr = options.addrs?.remoteAddr ??
      addrOf(socket.remoteAddress, socket.remotePort);
    socket.on("data", (chunk: Uint8Array) => this.#onData(chunk));
    socket.on("end", () => {
      this.#eof = true;
      this.#settleReader(null);
    });
    socket.on("error", (error: Error) => {
      const mapped = fromNodeError(error);
      this.#error ??= mapped;
      this.#failReader(mapped);
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

  /** Stops 'data' events and, where a read control is given, kernel reads. */
  #pause(): void {
    this.#socket.pause();
    if (!this.#handleStopped && this.#readControl) {
      const handle = this.#readControl(this.#socket);
      if (handle) {
        handle.readStop();
        this.#handleStopped = true;
      }
    }
  }

  #resume(): void {
    if (this.#handleStopped) {
      this.#handleStopped = false;
      if (!this.#socket.destroyed) {
        this.#readControl?.(this.#socket)?.readStart();
      }
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

  /**
   * Sets `TCP_NODELAY` (no effect on Unix sockets).
   *
   * @param on Whether to turn Nagle's algorithm off.
   */
  setNoDelay(on: boolean): void {
    this.#socket.setNoDelay(on);
  }

  /**
   * Reads into `p`.
   *
   * @param p Where to put the bytes.
   * @returns The number of bytes read, or `null` at end of stream.
   * @throws {Deno.errors.BadResource} When the transport is closed.
   * @throws {Deno.errors.Busy} When another read is pending.
   * @throws {Deno.errors.Interrupted} When `close()` ends a pending read.
   */
  read(p: Uint8Array): Promise<number | null> {
    if (this.#closed) {
      return Promise.reject(
        new BadResource("Cannot read: transport is closed"),
      );
    }
    if (this.#reader) {
      return Promise.reject(
        new Busy("Cannot read: another read is pending"),
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
    const { promise, resolve, reject } = withResolvers<
      number | null
    >();
    this.#reader = { p, resolve, reject };
    this.#resume();
    return promise;
  }

  /**
   * Writes all of `p`; resolves once it is flushed to the kernel, so `p`
   * may be reused then.
   *
   * @param p The bytes.
   * @returns `p.length`.
   * @throws {Deno.errors.BadResource} When the transport is closed.
   * @throws {Deno.errors.BrokenPipe} After `closeWrite()`.
   */
  write(p: Uint8Array): Promise<number> {
    if (this.#closed) {
      return Promise.reject(
        new BadResource("Cannot write: transport is closed"),
      );
    }
    if (this.#ending) {
      return Promise.reject(
        new BrokenPipe("Cannot write: writing side is closed"),
      );
    }
    if (this.#error) return Promise.reject(this.#error);
    if (p.length === 0) return Promise.resolve(0);
    const { promise, resolve, reject } = withResolvers<number>();
    this.#socket.write(p, (error?: Error | null) => {
      if (error) reject(error);
      else resolve(p.length);
    });
    return promise;
  }

  /**
   * Half-closes: sends FIN once queued writes are flushed; reads go on.
   *
   * @returns Resolves when the end is flushed.
   * @throws {Deno.errors.BadResource} When the transport is closed.
   */
  closeWrite(): Promise<void> {
    if (this.#closed) {
      return Promise.reject(
        new BadResource(
          "Cannot close writing side: transport is closed",
        ),
      );
    }
    if (!this.#ending) {
      const { promise, resolve, reject } = withResolvers<void>();
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

  /** Closes both directions at once (idempotent); a pending read rejects. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#buffered = [];
    this.#failReader(new Interrupted("operation canceled"));
    this.#socket.destroy();
  }

  /** Same as {@linkcode NodeSocketTransport.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

function addrOf(
  hostname: string | undefined,
  port: number | undefined,
): Deno.NetAddr | Deno.UnixAddr {
  return hostname === undefined
    ? { transport: "unix", path: "" }
    : { transport: "tcp", hostname, port: port ?? 0 };
}

/**
 * The accept queue over a `node:net` (or `node:tls`) server: transports
 * offered by the server's connection events wait here for `accept()`, at
 * most `backlog` of them.
 *
 * @typeParam C The transport type handed out.
 */
export class NodeListener<C extends Transport>
  implements TransportListener, AsyncIterable<C>, Disposable {
  /** The address listened on. */
  readonly addr: Deno.Addr;
  #server: NetServer;
  #backlog: number;
  #ready: C[] = [];
  #waiters: PromiseWithResolvers<C>[] = [];
  #closed = false;
  #stopping = false;
  #dropped = 0;
  #finished = withResolvers<void>();

  /**
   * Wraps a listening server.
   *
   * @param server The server, already listening.
   * @param addr Its address.
   * @param backlog How many transports may wait for `accept()`.
   */
  constructor(server: NetServer, addr: Deno.Addr, backlog: number) {
    this.#server = server;
    this.addr = addr;
    this.#backlog = backlog;
    server.once("close", () => this.#finished.resolve());
    // After listening, errors come from accepting (EMFILE, …): hand them to
    // the accept() calls waiting now, as Deno.Listener.accept() would.
    server.on("error", (error: Error) => {
      for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
    });
  }

  /** Transports closed because `backlog` were already waiting for `accept()`. */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * Resolves once the listening socket is closed and every connection
   * accepted from it has ended (the server's 'close' event): the port is
   * free then. `close()` starts this; it does not wait for it.
   */
  get closed(): Promise<void> {
    return this.#finished.promise;
  }

  /** Whether {@linkcode NodeListener.close} was called. */
  get isClosed(): boolean {
    return this.#closed;
  }

  /**
   * Hands a new transport to a waiting `accept()`, queues it, or closes it
   * when the queue is full or the listener closed.
   *
   * @param transport The accepted transport.
   */
  offer(transport: C): void {
    if (this.#closed) {
      transport.close();
      return;
    }
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

  /**
   * Waits for the next connection.
   *
   * @returns The accepted transport.
   * @throws {Deno.errors.BadResource} When the listener is (or gets) closed.
   */
  accept(): Promise<C> {
    if (this.#closed) {
      return Promise.reject(
        new BadResource("Listener has been closed"),
      );
    }
    const ready = this.#ready.shift();
    if (ready) return Promise.resolve(ready);
    if (this.#stopping) {
      return Promise.reject(
        new BadResource("Listener has stopped accepting"),
      );
    }
    const waiter = withResolvers<C>();
    this.#waiters.push(waiter);
    return waiter.promise;
  }

  /**
   * Stops listening; transports already taken from the operating system
   * stay for `accept()`, which rejects once they are out.
   */
  stopAccepting(): void {
    if (this.#closed || this.#stopping) return;
    this.#stopping = true;
    this.#server.close();
    for (const waiter of this.#waiters.splice(0)) {
      waiter.reject(
        new BadResource("Listener has stopped accepting"),
      );
    }
  }

  /** Stops listening; queued transports are closed, waiting `accept()`s reject. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.#stopping) this.#server.close();
    for (const transport of this.#ready.splice(0)) transport.close();
    for (const waiter of this.#waiters.splice(0)) {
      waiter.reject(new BadResource("Listener has been closed"));
    }
  }

  /** Same as {@linkcode NodeListener.close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * Iterates accepted transports until the listener is closed.
   *
   * @returns The iterator.
   */
  async *[Symbol.asyncIterator](): AsyncIterator<C> {
    while (true) {
      try {
        yield await this.accept();
      } catch (error) {
        if (this.#closed && error instanceof BadResource) return;
        throw error;
      }
    }
  }
}

/**
 * Starts `server` listening with `listen(arguments)` and waits until it is,
 * or fails (the server is then closed).
 *
 * @param server The server.
 * @param listenOptions What `server.listen()` takes.
 * @param signal Aborts the wait.
 * @returns Resolves once listening.
 * @throws The runtime error for a bind error (`AddrInUse`, …).
 */
export async function startListening(
  server: NetServer,
  listenOptions: { port?: number; host?: string; fd?: number; path?: string },
  signal: AbortSignal | undefined,
): Promise<void> {
  const { promise, resolve, reject } = withResolvers<void>();
  const onError = (error: Error) => reject(error);
  const onAbort = () => reject(signal?.reason);
  server.once("error", onError);
  signal?.addEventListener("abort", onAbort, { once: true });
  server.listen(listenOptions, () => resolve());
  try {
    await promise;
  } catch (error) {
    server.close();
    throw fromNodeError(error);
  } finally {
    server.off("error", onError);
    signal?.removeEventListener("abort", onAbort);
  }
}
