/**
 * {@linkcode listen}: every `Deno.listen*` call of the library, the server's
 * counterpart of `connect()`. Mutual TLS listens through `node:tls` instead
 * (`_mutual_tls.ts`), inherited sockets through `node:net`
 * (`socket_activation.ts`).
 *
 * @module
 */

import type { TransportListener } from "../connection.ts";

/** Where to listen: a TCP address (plain or TLS) or a Unix socket path. */
export type ListenTarget =
  | { path: string }
  | {
    hostname: string;
    port: number;
    /** PEM certificate chain and private key: TLS through `Deno.listenTls`. */
    tls?: { cert: string; key: string };
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
    return Deno.listenTls({ hostname, port, cert: tls.cert, key: tls.key });
  }
  return Deno.listen({ hostname, port });
}
