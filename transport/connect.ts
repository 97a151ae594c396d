/**
 * Where a client connects (endpoints, their parsing and rendering) and
 * {@linkcode connect}: every `Deno.connect*` call of the library. Sessions
 * see the {@linkcode Transport} it returns, which `Deno.Conn` satisfies, so
 * a test double can stand in.
 *
 * @module
 */

import { ConnectionError } from "../errors.ts";
import { describeError, withResolvers } from "../_util.ts";
import { formatHostPort, type Transport } from "../connection.ts";
import { noDelay } from "./_conn.ts";

/** A TCP endpoint. */
export interface TcpEndpoint {
  /** Host name or IP address. */
  hostname: string;
  /** TCP port. */
  port: number;
}

/** A Unix domain socket endpoint. */
export interface UnixEndpoint {
  /** Filesystem path of the socket. */
  path: string;
}

/** Where a client connects. */
export type Endpoint = TcpEndpoint | UnixEndpoint;

/** TLS settings of a client connection. */
export interface ClientTlsOptions {
  /** PEM CA certificates to trust instead of the system roots. */
  caCerts?: string[];
  /** PEM client certificate chain, for mTLS (with `key`). */
  cert?: string;
  /** PEM private key of `cert`. */
  key?: string;
  /**
   * The name to verify the server certificate against, when it differs from
   * the host connected to. Not combinable with a client certificate (the
   * runtime offers no such option).
   */
  serverName?: string;
  /** ALPN protocols to offer. */
  alpnProtocols?: string[];
}

/** Parses `"host:port"`, `"[::1]:port"`, `"unix:/path"` or an object. */
export function parseEndpoint(target: string | Endpoint): Endpoint {
  if (typeof target !== "string") {
    if ("path" in target) {
      if (typeof target.path !== "string" || target.path === "") {
        throw new TypeError("Cannot use endpoint: path must be a string");
      }
      return { path: target.path };
    }
    checkPort(target.port);
    return { hostname: target.hostname, port: target.port };
  }
  if (target.startsWith("unix:")) return { path: target.slice(5) };
  if (target.startsWith("/") || target.startsWith("./")) {
    return { path: target };
  }
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(target);
  if (!match) {
    throw new TypeError(
      `Cannot parse endpoint "${target}": expected "host:port" or "unix:/path"`,
    );
  }
  const port = Number(match[3]);
  checkPort(port);
  return { hostname: (match[1] ?? match[2])!, port };
}

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`Cannot use port ${port}: expected 0 to 65535`);
  }
}

/** Renders an endpoint for logs and errors. */
export function formatEndpoint(endpoint: Endpoint): string {
  if ("path" in endpoint) return `unix:${endpoint.path}`;
  return formatHostPort(endpoint.hostname, endpoint.port);
}

/**
 * Opens one connection. Rejects with {@linkcode ConnectionError} (cause: the
 * runtime error) on failure, or with `signal.reason` when aborted; a
 * connection that completes after the abort is closed.
 */
export async function connect(
  endpoint: Endpoint,
  tls: ClientTlsOptions | undefined,
  signal: AbortSignal,
): Promise<Transport> {
  signal.throwIfAborted();
  let pending: Promise<Transport>;
  if ("path" in endpoint) {
    pending = Deno.connect({ transport: "unix", path: endpoint.path });
  } else if (!tls) {
    pending = Deno.connect({ hostname: endpoint.hostname, port: endpoint.port })
      .then((conn) => {
        noDelay(conn);
        return conn;
      });
  } else {
    pending = connectTls(endpoint, tls);
  }
  const { promise: aborted, reject } = withResolvers<never>();
  const onAbort = () => reject(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    return await Promise.race([pending, aborted]);
  } catch (error) {
    if (signal.aborted && error === signal.reason) {
      pending.then((conn) => conn.close(), () => {});
      throw error;
    }
    throw new ConnectionError(
      `Cannot connect to ${formatEndpoint(endpoint)}: ${describeError(error)}`,
      { cause: error },
    );
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

async function connectTls(
  endpoint: TcpEndpoint,
  tls: ClientTlsOptions,
): Promise<Transport> {
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("Cannot use TLS options: cert and key go together");
  }
  let conn: Deno.TlsConn;
  if (tls.serverName !== undefined && tls.serverName !== endpoint.hostname) {
    if (tls.cert !== undefined) {
      throw new TypeError(
        "Cannot use TLS options: serverName cannot be combined with a client certificate",
      );
    }
    const tcp = await Deno.connect(endpoint);
    try {
      conn = await Deno.startTls(tcp, {
        hostname: tls.serverName,
        ...(tls.caCerts ? { caCerts: tls.caCerts } : {}),
        ...(tls.alpnProtocols ? { alpnProtocols: tls.alpnProtocols } : {}),
      });
    } catch (error) {
      tcp.close();
      throw error;
    }
  } else {
    conn = await Deno.connectTls({
      hostname: endpoint.hostname,
      port: endpoint.port,
      ...(tls.caCerts ? { caCerts: tls.caCerts } : {}),
      ...(tls.alpnProtocols ? { alpnProtocols: tls.alpnProtocols } : {}),
      ...(tls.cert !== undefined && tls.key !== undefined
        ? { cert: tls.cert, key: tls.key }
        : {}),
    });
  }
  try {
    await conn.handshake();
  } catch (error) {
    conn.close();
    throw error;
  }
  return conn;
}
