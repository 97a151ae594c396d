/**
 * The contract between the socket edge (`transport/`) and the sessions that
 * run on it: a session is handed a {@linkcode Transport} and never opens one,
 * so this module sits below both and imports neither.
 *
 * Besides the types, the few facts both sides read off a transport: how its
 * address is written in logs, whether its failed writes are exact, and which
 * errors mean it was closed under a pending call.
 *
 * @module
 */

/** The byte pipe a session runs on. `Deno.Conn` satisfies it. */
export interface Transport {
  /** Reads into `p`; `null` at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes some of `p`; resolves with the number of bytes written. */
  write(p: Uint8Array): Promise<number>;
  /** Half-closes: no more writes, reads go on. */
  closeWrite(): Promise<void>;
  /** Closes both directions at once. */
  close(): void;
  /** This end's address. */
  readonly localAddr: Deno.Addr;
  /** The peer's address. */
  readonly remoteAddr: Deno.Addr;
}

/** A source of accepted transports. `Deno.Listener` satisfies it. */
export interface TransportListener extends AsyncIterable<Transport> {
  /** The address it listens on. */
  readonly addr: Deno.Addr;
  /** Waits for the next connection. */
  accept(): Promise<Transport>;
  /** Stops listening. */
  close(): void;
  /**
   * Stops taking connections from the operating system but lets
   * `accept()` hand out those already taken, then reject as if closed;
   * `close()` still ends it. A server calls it in place of `close()` when it
   * shuts down, so no connection this process took is lost. Listeners that
   * take connections only inside `accept()` (as `Deno.Listener`) omit it.
   */
  stopAccepting?(): void;
}

/** A verified peer certificate. */
export interface PeerCertificate {
  /** Subject distinguished name. */
  readonly subject: string;
  /** Issuer distinguished name. */
  readonly issuer: string;
  /** SHA-256 fingerprint, colon-separated hex. */
  readonly fingerprint256: string;
  /** DER bytes. */
  readonly raw: Uint8Array;
}

/** Renders a host and port, with brackets around an IPv6 address. */
export function formatHostPort(hostname: string, port: number): string {
  return hostname.includes(":")
    ? `[${hostname}]:${port}`
    : `${hostname}:${port}`;
}

/** Renders a `Deno.Addr` for logs. */
export function formatAddr(addr: Deno.Addr): string {
  if (addr.transport === "tcp" || addr.transport === "udp") {
    return formatHostPort(addr.hostname, addr.port);
  }
  if (addr.transport === "unix" || addr.transport === "unixpacket") {
    return `unix:${addr.path}`;
  }
  return addr.transport;
}

/**
 * Whether a write of this transport that is pending when the connection
 * closes, or that rejects, has written nothing of its buffer: true of
 * Deno's own TCP and Unix connections (a write resolves with what the
 * kernel took). Other transports (node:net sockets resolve once flushed,
 * TLS buffers) cannot say what a failed write sent.
 */
export function writesAreExact(conn: Transport): boolean {
  const kind = conn.constructor?.name;
  return kind === "TcpConn" || kind === "UnixConn";
}

/**
 * Whether an error of `read`, `write` or `accept` means the transport or
 * listener was closed, here or under the pending call (`BadResource`,
 * `Interrupted`), rather than that the network failed.
 */
export function isClosedResource(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.Interrupted;
}
