/**
 * {@linkcode listen}: a listener for `serve()` that opens the same way on
 * Deno, Node and Bun.
 *
 * @module
 */

import type { TransportListener } from "../connection.ts";
import { countOption } from "../_util.ts";
import { listenAsync } from "./_listen.ts";

/** Options of {@linkcode listen}. */
export type ListenOptions =
  & {
    /**
     * How many accepted connections may wait for the server to take them
     * (Node and Bun; Deno's listeners take connections only when asked).
     *
     * @default {128}
     */
    backlog?: number;
    /** Aborts the wait for the bind. */
    signal?: AbortSignal;
  }
  & (
    | {
      /** Filesystem path of a Unix socket. */
      path: string;
    }
    | {
      /**
       * Interface to listen on.
       *
       * @default {"0.0.0.0"}
       */
      hostname?: string;
      /** TCP port; 0 picks a free one. */
      port: number;
      /**
       * PEM certificate chain and private key: TLS. A client that has not
       * completed its handshake within `handshakeTimeout` ms (default
       * 10,000) is closed.
       */
      tls?: { cert: string; key: string; handshakeTimeout?: number };
    }
  );

/**
 * Opens a listener, on any runtime, to pass to `serve()`: `Deno.listen` or
 * `Deno.listenTls` on Deno, `node:net` or `node:tls` on Node and Bun. There
 * `serve({ port })` cannot bind by itself (node:net binds asynchronously,
 * and `serve()` returns a server whose address is known), so this is the
 * portable way to start a server.
 *
 * @param options Where to listen (a TCP address, with `tls` for TLS, or a
 *   Unix socket `path`), the accept backlog, a signal.
 * @returns The listener, once bound: `listener.addr` holds the port.
 * @throws {RangeError} When `port` or `backlog` is out of range.
 * @throws {Deno.errors.AddrInUse} When the address is taken (other bind
 *   errors likewise; an error of the same name on Node and Bun).
 *
 * @example Usage
 * ```ts
 * import { dial, listen, serve } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const listener = await listen({ hostname: "127.0.0.1", port: 0 });
 * await using server = serve(listener, (payload) => payload);
 * await using client = await dial({ hostname: "127.0.0.1", port: server.port });
 * assert.equal((await client.request(new Uint8Array([7])))[0], 7);
 * ```
 */
export async function listen(
  options: ListenOptions,
): Promise<TransportListener & Disposable> {
  const { backlog = 128, signal } = options;
  if (!Number.isInteger(backlog) || backlog < 0) {
    throw new RangeError(`Cannot listen: backlog ${backlog} is not >= 0`);
  }
  if ("path" in options) {
    return await listenAsync({ path: options.path }, backlog, signal);
  }
  const { hostname = "0.0.0.0", port, tls } = options;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`Cannot listen: port ${port} is not 0 to 65535`);
  }
  const secure = tls === undefined ? undefined : {
    cert: tls.cert,
    key: tls.key,
    handshakeTimeout: countOption(
      tls.handshakeTimeout ?? 10_000,
      "tls.handshakeTimeout",
      1,
    ),
  };
  return await listenAsync(
    { hostname, port, ...(secure === undefined ? {} : { tls: secure }) },
    backlog,
    signal,
  );
}
