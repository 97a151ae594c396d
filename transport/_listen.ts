/**
 * {@linkcode listen}: every `Deno.listen*` call of the library, the server's
 * counterpart of `connect()`. TLS runs its handshake through `node:tls` over
 * an accepted TCP connection (`_tls_accept.ts`); mutual TLS listens through
 * `node:tls` (`_mutual_tls.ts`), inherited sockets through `node:net`
 * (`socket_activation.ts`).
 *
 * @module
 */

import type { TransportListener } from "../connection.ts";
import { listenTls } from "./_tls_accept.ts";

/** Where to listen: a TCP address (plain or TLS) or a Unix socket path. */
export type ListenTarget =
  | { path: string }
  | {
    hostname: string;
    port: number;
    /**
     * PEM certificate chain and private key, and the milliseconds a client
     * has to complete its handshake: TLS through `listenTls()`.
     */
    tls?: { cert: string; key: string; handshakeTimeout: number };
  };

/**
 * Opens a listener.
 *
 * @param target Where to listen.
 * @returns The listener, bound at once.
 * @throws {Deno.errors.AddrInUse} When the address is taken (other bind errors likewise).
 */
export function listen(target: ListenTarget): TransportListener {
  if ("path" in target) {
    return Deno.listen({ transport: "unix", path: target.path });
  }
  const { hostname, port, tls } = target;
  if (tls !== undefined) {
    return listenTls({ hostname, port, ...tls });
  }
  return Deno.listen({ hostname, port });
}
