/**
 * Helpers over a transport that is already open: the socket option every
 * TCP connection gets, and a wrapper that gives back bytes read ahead.
 *
 * @module
 */

import type { Transport } from "../connection.ts";

/**
 * Turns Nagle's algorithm off (`TCP_NODELAY`) where the connection offers
 * it: TCP connections (`Deno.TcpConn`, node sockets). Deno does not set it by
 * default, and with Nagle on, a small write made while an earlier one is not
 * acknowledged waits for that ACK, which the peer may delay by up to 40 ms.
 * `Deno.TlsConn` has no such option.
 */
export function noDelay(conn: Transport): void {
  const tcp = conn as Transport & { setNoDelay?: (on: boolean) => void };
  if (typeof tcp.setNoDelay !== "function") return;
  try {
    tcp.setNoDelay(true);
  } catch {
    // The connection is already closed: its session will find out.
  }
}

/**
 * A transport whose first reads return `head` (bytes already read from
 * `conn`, for example past a PROXY header or by a protocol sniffer).
 */
export function prepend(conn: Transport, head: Uint8Array): Transport {
  if (head.length === 0) return conn;
  let rest: Uint8Array | undefined = head;
  const wrapped: Transport & { peerCertificate?: unknown } = {
    read(p) {
      if (rest === undefined) return conn.read(p);
      const n = Math.min(p.length, rest.length);
      p.set(rest.subarray(0, n));
      rest = n === rest.length ? undefined : rest.subarray(n);
      return Promise.resolve(n);
    },
    write: (p) => conn.write(p),
    closeWrite: () => conn.closeWrite(),
    close: () => conn.close(),
    get localAddr() {
      return conn.localAddr;
    },
    get remoteAddr() {
      return conn.remoteAddr;
    },
  };
  const certificate = (conn as { peerCertificate?: unknown }).peerCertificate;
  if (certificate !== undefined) wrapped.peerCertificate = certificate;
  return wrapped;
}
