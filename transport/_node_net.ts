/**
 * Connecting and listening through `node:net` and `node:tls`: the socket
 * edge on Node and Bun, where `Deno.connect` and `Deno.listen` do not
 * exist. Sockets become {@linkcode NodeSocketTransport}s and listeners
 * {@linkcode NodeListener}s, as for socket activation and `reusePort` on
 * Deno.
 *
 * @module
 */

import {
  connect as netConnect,
  createServer as createNetServer,
  isIP,
  type Server as NetServer,
  type Socket,
} from "node:net";
import {
  connect as tlsConnect,
  type ConnectionOptions,
  createServer as createTlsServer,
  type TLSSocket,
} from "node:tls";

import type { Transport, TransportListener } from "../connection.ts";
import { withResolvers } from "../_util.ts";
import {
  NodeListener,
  NodeSocketTransport,
  startListening,
} from "./_node_socket.ts";
import { fromNodeError } from "./_runtime.ts";

/** Where {@linkcode connectNode} connects. */
export type NodeConnectTarget =
  | { path: string }
  | { hostname: string; port: number };

/** TLS settings of {@linkcode connectNode}, as `ClientTlsOptions`. */
export interface NodeConnectTls {
  caCerts?: string[];
  cert?: string;
  key?: string;
  serverName?: string;
  alpnProtocols?: string[];
}

/**
 * Opens a connection through `node:net` (TCP, Unix) or `node:tls`. TCP and
 * TLS connections get `TCP_NODELAY`; all are half-open capable, as
 * `Deno.Conn` is (a peer's FIN ends reads, not writes).
 *
 * @param target Where to connect.
 * @param tls TLS settings; `undefined` for plain TCP.
 * @returns The connected transport, after the TLS handshake if any.
 * @throws {TypeError} When only one of `tls.cert` and `tls.key` is given.
 * @throws The runtime error for the failure (`ConnectionRefused`, …) with
 *   node's error as `cause`; node's TLS errors as they are.
 */
export async function connectNode(
  target: NodeConnectTarget,
  tls: NodeConnectTls | undefined,
): Promise<Transport> {
  if (tls && (tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("Cannot use TLS options: cert and key go together");
  }
  let socket: Socket;
  let event: "connect" | "secureConnect" = "connect";
  if ("path" in target) {
    socket = netConnect({ path: target.path, allowHalfOpen: true });
  } else if (tls === undefined) {
    socket = netConnect({
      host: target.hostname,
      port: target.port,
      allowHalfOpen: true,
    });
  } else {
    // Node verifies an IP address against the certificate's IP SANs when no
    // server name is sent (and warns when an IP is sent as one).
    const serverName = tls.serverName ??
      (isIP(target.hostname) === 0 ? target.hostname : undefined);
    const options: ConnectionOptions & { allowHalfOpen: boolean } = {
      host: target.hostname,
      port: target.port,
      // Not in @types/node's ConnectionOptions, but node:tls passes it on
      // to the TLSSocket.
      allowHalfOpen: true,
      ...(serverName === undefined ? {} : { servername: serverName }),
      ...(tls.caCerts ? { ca: tls.caCerts } : {}),
      ...(tls.cert !== undefined ? { cert: tls.cert } : {}),
      ...(tls.key !== undefined ? { key: tls.key } : {}),
      ...(tls.alpnProtocols ? { ALPNProtocols: tls.alpnProtocols } : {}),
    };
    socket = tlsConnect(options);
    event = "secureConnect";
  }
  const { promise, resolve, reject } = withResolvers<void>();
  const onError = (error: Error) => reject(error);
  socket.once("error", onError);
  socket.once(event, () => resolve());
  try {
    await promise;
  } catch (error) {
    socket.destroy();
    throw fromNodeError(error);
  } finally {
    socket.off("error", onError);
  }
  const transport = new NodeSocketTransport(socket);
  if (!("path" in target)) transport.setNoDelay(true);
  return transport;
}

/** Where {@linkcode listenNode} listens. */
export type NodeListenTarget =
  | { path: string }
  | {
    hostname: string;
    port: number;
    /** `handshakeTimeout` in ms; `Infinity` = none (node:tls's own 120 s then). */
    tls?: { cert: string; key: string; handshakeTimeout?: number };
  };

/**
 * Listens through `node:net` (TCP, Unix) or `node:tls` (TLS without client
 * certificates; `_mutual_tls.ts` asks for them). Accepted connections read
 * with backpressure; at most `backlog` wait for `accept()`, more are closed.
 *
 * @param target Where to listen.
 * @param backlog How many accepted connections may wait for `accept()`.
 * @param signal Aborts the wait for the bind.
 * @returns The listener, once bound.
 * @throws The runtime error for a bind error (`AddrInUse`, …).
 */
export async function listenNode(
  target: NodeListenTarget,
  backlog: number,
  signal: AbortSignal | undefined,
): Promise<TransportListener & Disposable> {
  let server: NetServer;
  const tls = "path" in target ? undefined : target.tls;
  if (tls === undefined) {
    server = createNetServer({ allowHalfOpen: true, pauseOnConnect: true });
  } else {
    const timeout = tls.handshakeTimeout;
    server = createTlsServer({
      cert: tls.cert,
      key: tls.key,
      allowHalfOpen: true,
      // A client that never finishes its handshake is closed (tlsClientError).
      ...(timeout !== undefined && Number.isFinite(timeout)
        ? { handshakeTimeout: timeout }
        : {}),
    });
  }
  await startListening(
    server,
    "path" in target
      ? { path: target.path }
      : { host: target.hostname, port: target.port },
    signal,
  );
  const address = server.address();
  const listener = new NodeListener<NodeSocketTransport>(
    server,
    "path" in target
      ? { transport: "unix", path: target.path }
      : typeof address === "object" && address !== null
      ? { transport: "tcp", hostname: address.address, port: address.port }
      : { transport: "tcp", hostname: target.hostname, port: target.port },
    backlog,
  );
  const offer = (socket: Socket) => {
    // Never let a late socket error become an uncaught exception.
    socket.on("error", () => {});
    listener.offer(new NodeSocketTransport(socket));
  };
  if (tls === undefined) {
    server.on("connection", offer);
  } else {
    server.on("secureConnection", (socket: TLSSocket) => offer(socket));
    server.on("tlsClientError", (_error: Error, socket: TLSSocket) => {
      socket.destroy();
    });
  }
  return listener;
}
