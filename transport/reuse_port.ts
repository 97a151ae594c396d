/**
 * {@linkcode listenReusePort}: a TCP listener that shares its port with
 * other listeners of this or other processes (`SO_REUSEPORT`), the kernel
 * spreading new connections among them. Built on `node:net`, which sets the
 * option without Deno's `--unstable-net` flag (`Deno.listen({ reusePort })`
 * needs it, and without it the process exits). Linux only.
 *
 * Closing one of several such listeners resets the connections queued on
 * it and not yet accepted, unless the host sets
 * `net.ipv4.tcp_migrate_req=1` (the kernel then moves them to a listener
 * that stays): see the README's "Running a fleet". Node supports the option
 * from 22.12; Bun and Deno do.
 *
 * @module
 */

import { createServer, type Socket } from "node:net";
import type { TransportListener } from "../connection.ts";
import {
  NodeListener,
  NodeSocketTransport,
  startListening,
} from "./_node_socket.ts";
import { requireReusePort } from "./_runtime.ts";

/** Options of {@linkcode listenReusePort}. */
export interface ListenReusePortOptions {
  /**
   * Interface to listen on.
   *
   * @default {"0.0.0.0"}
   */
  hostname?: string;
  /** TCP port; 0 picks a free one, which the other listeners then share. */
  port: number;
  /**
   * How many accepted connections may wait for `accept()`; more are closed.
   *
   * @default {128}
   */
  backlog?: number;
  /** Aborts listening before it started. */
  signal?: AbortSignal;
}

class ReusePortListener extends NodeListener<NodeSocketTransport> {}

/**
 * Listens on a TCP port that other listeners with this option may share.
 * Accepted connections read with backpressure and are ready for
 * `serve({ listener })`.
 *
 * @param options Where to listen, the accept backlog and a signal.
 * @returns The listener, once it listens.
 * @throws {Deno.errors.AddrInUse} The port is held by a listener without
 * the option.
 * @throws {UnsupportedRuntimeError} On Node before 22.12 (no `reusePort`).
 *
 * @example Usage
 * ```ts
 * import { dial, listenReusePort, serve } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const first = await listenReusePort({ hostname: "127.0.0.1", port: 0 });
 * const port = (first.addr as Deno.NetAddr).port;
 * const second = await listenReusePort({ hostname: "127.0.0.1", port });
 * await using a = serve({ listener: first, handler: () => new Uint8Array([1]) });
 * await using b = serve({ listener: second, handler: () => new Uint8Array([2]) });
 * await using client = await dial(`127.0.0.1:${port}`);
 * assert.equal((await client.request(new Uint8Array())).length, 1);
 * ```
 */
export async function listenReusePort(
  options: ListenReusePortOptions,
): Promise<TransportListener & Disposable> {
  const { hostname = "0.0.0.0", port, backlog = 128, signal } = options;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`Cannot listen: port ${port} is not 0 to 65535`);
  }
  if (!Number.isInteger(backlog) || backlog < 0) {
    throw new RangeError(`Cannot listen: backlog ${backlog} is not >= 0`);
  }
  requireReusePort();
  signal?.throwIfAborted();
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
  const listenOptions = { host: hostname, port, reusePort: true };
  await startListening(server, listenOptions, signal);
  const address = server.address();
  if (typeof address !== "object" || address === null) {
    server.close();
    throw new TypeError("Cannot listen: no TCP address");
  }
  const listener = new ReusePortListener(server, {
    transport: "tcp",
    hostname: address.address,
    port: address.port,
  }, backlog);
  server.on("connection", (socket: Socket) => {
    // Never let a late socket error become an uncaught exception.
    socket.on("error", () => {});
    listener.offer(new NodeSocketTransport(socket));
  });
  return listener;
}
