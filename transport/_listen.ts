/**
 * {@linkcode listen} and {@linkcode listenAsync}: every `Deno.listen*` call
 * of the library, the server's counterpart of `connect()`, and on Node and
 * Bun the `node:net`/`node:tls` listeners in their place. On Deno, TLS runs
 * its handshake through `node:tls` over an accepted TCP connection
 * (`_tls_accept.ts`); mutual TLS listens through `node:tls` on every runtime
 * (`_mutual_tls.ts`), inherited sockets through `node:net`
 * (`socket_activation.ts`).
 *
 * @module
 */

import type { TransportListener } from "../connection.ts";
import { UnsupportedRuntimeError } from "../errors.ts";
import { listenNode } from "./_node_net.ts";
import { IS_DENO, RUNTIME } from "./_runtime.ts";
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
 * Opens a listener, bound when this returns: Deno only, since `node:net`
 * binds asynchronously (use {@linkcode listenAsync} there).
 *
 * @param target Where to listen.
 * @returns The listener, bound at once.
 * @throws {Deno.errors.AddrInUse} When the address is taken (other bind errors likewise).
 * @throws {UnsupportedRuntimeError} On Node and Bun.
 */
export function listen(target: ListenTarget): TransportListener {
  if (!IS_DENO) {
    throw new UnsupportedRuntimeError(
      `Cannot listen synchronously on ${RUNTIME}: node:net binds asynchronously; pass \`await listen({ … })\` to serve() instead`,
      { runtime: RUNTIME, feature: "synchronous listen" },
    );
  }
  if ("path" in target) {
    return Deno.listen({ transport: "unix", path: target.path });
  }
  const { hostname, port, tls } = target;
  if (tls !== undefined) {
    return listenTls({ hostname, port, ...tls });
  }
  return Deno.listen({ hostname, port });
}

/**
 * Opens a listener on any runtime: Deno's own listeners on Deno,
 * `node:net`/`node:tls` ones elsewhere.
 *
 * @param target Where to listen.
 * @param backlog On Node and Bun, how many accepted connections may wait
 *   for `accept()` (Deno's listeners take connections only in `accept()`).
 * @param signal Aborts the wait for the bind.
 * @returns The listener, once bound.
 * @throws {Deno.errors.AddrInUse} When the address is taken (other bind
 *   errors likewise; a same-named class outside Deno).
 */
export async function listenAsync(
  target: ListenTarget,
  backlog: number,
  signal: AbortSignal | undefined,
): Promise<TransportListener & Disposable> {
  signal?.throwIfAborted();
  if (IS_DENO) return listen(target) as TransportListener & Disposable;
  return await listenNode(target, backlog, signal);
}
