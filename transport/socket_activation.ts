/**
 * Listening sockets a process inherits, such as those of systemd socket
 * activation (`LISTEN_FDS`), served through `node:net` because `Deno.listen`
 * cannot adopt a file descriptor. Accepted connections implement the
 * {@linkcode Transport} interface that `Deno.Conn` satisfies, so
 * `serve({ listener })` takes them as they are.
 *
 * What this relies on in Deno 2.9.6 (checked by
 * tests/socket_activation_test.ts):
 * - `server.listen({ fd })` adopts an inherited listening socket, TCP or
 *   Unix; `server.address()` gives the TCP address (`null` for Unix).
 *
 * @module
 */

import { createServer, type Server as NetServer, type Socket } from "node:net";
import { env, pid } from "node:process";

import type { Transport, TransportListener } from "../connection.ts";
import {
  NodeListener,
  NodeSocketTransport,
  startListening,
} from "./_node_socket.ts";
import { BadResource } from "./_runtime.ts";

/** A connection accepted by {@linkcode listenInherited}. */
export interface InheritedTransport extends Transport, Disposable {
  /** This end's address; `{ transport: "unix", path: "" }` on a Unix socket. */
  readonly localAddr: Deno.NetAddr | Deno.UnixAddr;
  /** The peer's address; `{ transport: "unix", path: "" }` on a Unix socket. */
  readonly remoteAddr: Deno.NetAddr | Deno.UnixAddr;
}

/** The listener returned by {@linkcode listenInherited} and {@linkcode systemdListeners}. */
export interface InheritedListener
  extends TransportListener, AsyncIterable<InheritedTransport>, Disposable {
  /**
   * The address listened on: a `Deno.NetAddr` for TCP, `{ transport:
   * "unix", path: "" }` for a Unix socket (the runtime does not tell its
   * path).
   */
  readonly addr: Deno.NetAddr | Deno.UnixAddr;
  /** The inherited file descriptor. */
  readonly fd: number;
  /** The socket's name from `LISTEN_FDNAMES` (systemd `FileDescriptorName=`), if any. */
  readonly name?: string;
  /**
   * Waits for the next connection.
   *
   * @returns The accepted transport.
   * @throws {Deno.errors.BadResource} When the listener is (or gets) closed.
   */
  accept(): Promise<InheritedTransport>;
  /**
   * Iterates accepted transports until the listener is closed.
   *
   * @returns The iterator.
   */
  [Symbol.asyncIterator](): AsyncIterator<InheritedTransport>;
  /** Connections closed because `backlog` connections were already waiting for `accept()`. */
  readonly dropped: number;
  /**
   * Resolves once the listening socket is closed and every connection
   * accepted from it has ended. `close()` starts closing; this tells when
   * the descriptor is released.
   */
  readonly closed: Promise<void>;
}

/** Options of {@linkcode listenInherited}. */
export interface ListenInheritedOptions {
  /**
   * The inherited listening socket's file descriptor.
   *
   * @default {3}
   */
  fd?: number;
  /**
   * How many accepted connections may wait for `accept()`; more are closed
   * and counted in `dropped`.
   *
   * @default {128}
   */
  backlog?: number;
  /** Aborts listening before it started. */
  signal?: AbortSignal;
}

class InheritedNodeListener extends NodeListener<NodeSocketTransport>
  implements InheritedListener {
  declare readonly addr: Deno.NetAddr | Deno.UnixAddr;
  readonly fd: number;
  readonly name?: string;

  constructor(
    server: NetServer,
    addr: Deno.NetAddr | Deno.UnixAddr,
    fd: number,
    name: string | undefined,
    backlog: number,
  ) {
    super(server, addr, backlog);
    this.fd = fd;
    if (name !== undefined) this.name = name;
    server.on("connection", (socket: Socket) => {
      // Never let a late socket error become an uncaught exception.
      socket.on("error", () => {});
      this.offer(new NodeSocketTransport(socket));
    });
  }
}

function checkBacklog(backlog: number): void {
  if (!Number.isInteger(backlog) || backlog < 0) {
    throw new RangeError(
      `Cannot listen: backlog ${backlog} is not an integer >= 0`,
    );
  }
}

async function listenOnFd(
  fd: number,
  name: string | undefined,
  backlog: number,
  signal: AbortSignal | undefined,
): Promise<InheritedListener> {
  signal?.throwIfAborted();
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
  try {
    await startListening(server, { fd }, signal);
  } catch (error) {
    const code = (error as { code?: unknown } | null)?.code;
    if (code === "EBADF" || code === "EINVAL" || code === "ENOTSOCK") {
      throw new BadResource(
        `Cannot listen on fd ${fd}: not an open listening socket (${code})`,
        { cause: error },
      );
    }
    throw error;
  }
  const address = server.address();
  const addr: Deno.NetAddr | Deno.UnixAddr =
    typeof address === "object" && address !== null
      ? { transport: "tcp", hostname: address.address, port: address.port }
      : { transport: "unix", path: typeof address === "string" ? address : "" };
  return new InheritedNodeListener(server, addr, fd, name, backlog);
}

/**
 * Serves a listening socket this process inherited as file descriptor `fd`
 * (TCP or Unix stream), for example from a supervisor that bound the port.
 * Built on `node:net` `server.listen({ fd })`, because `Deno.listen` cannot
 * adopt a descriptor. Accepted connections read with backpressure (nothing
 * is read until `read()` is called) and are ready for `serve({ listener })`.
 *
 * The socket must already be listening (systemd: `Accept=no`, the default).
 * Closing the listener closes the descriptor.
 *
 * @param options The descriptor (default 3), accept backlog and a signal.
 * @returns The listener, once it listens.
 * @throws {RangeError} When `fd` or `backlog` is not a non-negative integer.
 * @throws {Deno.errors.BadResource} When `fd` is not an open listening socket.
 *
 * @example Usage
 * ```ts ignore
 * import { listenInherited, serve } from "@tcpbutler/core";
 *
 * // Started with a listening socket as fd 3.
 * const listener = await listenInherited({ fd: 3 });
 * await using server = serve({ listener, handler: (payload) => payload });
 * await server.finished;
 * ```
 */
export function listenInherited(
  options?: ListenInheritedOptions,
): Promise<InheritedListener> {
  const { fd = 3, backlog = 128, signal } = options ?? {};
  if (!Number.isInteger(fd) || fd < 0) {
    return Promise.reject(
      new RangeError(`Cannot listen: fd ${fd} is not an integer >= 0`),
    );
  }
  try {
    checkBacklog(backlog);
  } catch (error) {
    return Promise.reject(error);
  }
  return listenOnFd(fd, undefined, backlog, signal);
}

/** The first file descriptor systemd passes (`SD_LISTEN_FDS_START`). */
const LISTEN_FDS_START = 3;

/** Options of {@linkcode systemdListeners}. */
export interface SystemdListenersOptions {
  /**
   * How many accepted connections may wait for `accept()` on each listener.
   *
   * @default {128}
   */
  backlog?: number;
  /** Aborts listening before it started. */
  signal?: AbortSignal;
}

/**
 * The listening sockets systemd passed to this process (socket activation):
 * one listener per descriptor from 3 on, as `LISTEN_FDS` counts them, each
 * named from `LISTEN_FDNAMES` when set. `LISTEN_PID` must be this process
 * (`process.pid`), as `sd_listen_fds()` requires. Needs `--allow-env`.
 *
 * @param options Accept backlog and a signal.
 * @returns The listeners, in descriptor order.
 * @throws {TypeError} When the process is not socket-activated (`LISTEN_FDS`
 *   or `LISTEN_PID` missing, malformed or meant for another process).
 * @throws {Deno.errors.BadResource} When a descriptor is not a listening socket
 *   (the listeners opened before it are closed).
 * @throws {Deno.errors.NotCapable} Without permission to read the environment.
 *
 * @example Usage
 * ```ts ignore
 * import { serve, systemdListeners } from "@tcpbutler/core";
 *
 * // Run by systemd from a .socket unit (ListenStream=9000).
 * const [listener] = await systemdListeners();
 * await using server = serve({ listener, handler: (payload) => payload });
 * Deno.addSignalListener("SIGTERM", () => server.shutdown());
 * await server.finished;
 * ```
 */
export async function systemdListeners(
  options?: SystemdListenersOptions,
): Promise<InheritedListener[]> {
  const { backlog = 128, signal } = options ?? {};
  checkBacklog(backlog);
  const pidText = env.LISTEN_PID;
  const countText = env.LISTEN_FDS;
  if (pidText === undefined || countText === undefined) {
    throw new TypeError(
      "Cannot use systemd sockets: the process is not socket-activated (LISTEN_PID and LISTEN_FDS are not set)",
    );
  }
  if (!/^\d+$/.test(pidText) || Number(pidText) !== pid) {
    throw new TypeError(
      `Cannot use systemd sockets: LISTEN_PID ${pidText} is not this process (${pid})`,
    );
  }
  if (!/^\d+$/.test(countText) || Number(countText) < 1) {
    throw new TypeError(
      `Cannot use systemd sockets: LISTEN_FDS "${countText}" is not a count of 1 or more`,
    );
  }
  const count = Number(countText);
  const names = env.LISTEN_FDNAMES?.split(":");
  const listeners: InheritedListener[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const name = names?.[i];
      listeners.push(
        await listenOnFd(
          LISTEN_FDS_START + i,
          name === "" ? undefined : name,
          backlog,
          signal,
        ),
      );
    }
  } catch (error) {
    for (const listener of listeners) listener.close();
    throw error;
  }
  return listeners;
}
