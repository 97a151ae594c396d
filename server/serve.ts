/**
 * {@linkcode serve} and {@linkcode serveMutualTls}: their options, checked
 * and resolved before a listener is opened, and the listener they open.
 *
 * @module
 */

import { type AddressMatcher, addressMatcher } from "../transport/_cidr.ts";
import type { Codec } from "../framing/codec.ts";
import type { TransportListener } from "../connection.ts";
import { listen } from "../transport/_listen.ts";
import { listenMutualTls } from "../transport/_mutual_tls.ts";
import { codecDialect, type Dialect } from "../session/dialect.ts";
import { defaultDialect } from "../_protocol_dialect.ts";
import { countOption, deadlineMs, timeoutOption } from "../_util.ts";
import {
  checkWriteRoom,
  resolveSessionOptions,
  type SessionOptions,
  type SessionSettings,
} from "../options.ts";
import type { Session } from "../session/types.ts";
import { HEADER_BYTES } from "../protocol.ts";
import {
  type Server,
  type ServerHandler,
  type ServerHandlerContext,
  startServer,
} from "./server.ts";

/** TLS settings of a server. */
export interface ServerTlsOptions {
  /** PEM certificate chain. */
  cert: string;
  /** PEM private key. */
  key: string;
  /**
   * PEM CA certificate(s) that client certificates must chain to: mutual
   * TLS, where clients without a valid certificate are refused during the
   * handshake. Only {@linkcode serveMutualTls} takes it: its `node:tls`
   * listener starts asynchronously. {@linkcode serve} throws a
   * `TypeError` when it is set rather than serve without the check.
   */
  ca?: string | string[];
}

/**
 * Options of {@linkcode serve}.
 *
 * @typeParam T The message type.
 */
export interface ServeOptions<T>
  extends SessionOptions<T, ServerHandlerContext<T>> {
  /**
   * Interface to listen on.
   *
   * @default {"0.0.0.0"}
   */
  hostname?: string;
  /**
   * TCP port; 0 picks a free one (read it from `server.addr`).
   *
   * @default {9000}
   */
  port?: number;
  /** Listen on a Unix domain socket at this path instead of TCP. */
  path?: string;
  /** Serve connections from this listener instead (TCP, TLS, Unix, or your own). */
  listener?: Deno.Listener | TransportListener;
  /**
   * Serve TLS: connections are accepted as TCP and run their handshake
   * through `node:tls`; a connection becomes a session once its handshake
   * completed. Mutual TLS (`tls.ca`) needs {@linkcode serveMutualTls}:
   * `serve()` throws a `TypeError` when `ca` is set.
   */
  tls?: ServerTlsOptions;
  /**
   * Milliseconds a TLS client has to complete its handshake
   * (`serve({ tls })`, {@linkcode serveMutualTls}); one that has not is
   * closed (`TlsHandshakeError`, logged, `stats().handshakeFailures`). Not
   * applied to a `listener` of your own.
   *
   * @default {10000}
   */
  handshakeTimeout?: number;
  /** Aborting it shuts the server down gracefully. */
  signal?: AbortSignal;
  /** Called once listening. */
  onListen?: (addr: Deno.Addr) => void;
  /**
   * The wire format. Without it the server speaks the default protocol
   * (`Uint8Array` payloads).
   */
  codec?: Codec<T>;
  /**
   * Runs for each new session before its messages reach the handler (auth,
   * greeting, a sign-on request of the server's own: the session reads from
   * the start, so it may `await session.request()`; requests that arrive
   * meanwhile are held, up to `maxConcurrentHandlers`, then reading pauses).
   * A returned promise is awaited and its value ignored. A throw or
   * rejection closes that session.
   */
  onConnect?: (session: Session<T>) => unknown;
  /**
   * Custom codecs: tell a session's peer the server is draining (for example
   * send a "going away" message). The default protocol sends a drain frame.
   */
  onDrain?: (session: Session<T>) => void | Promise<void>;
  /**
   * Open sessions at most; connections past it are closed at once (logged),
   * unless an idle session makes room (see `evictIdleAfter`).
   *
   * @default {10000}
   */
  maxConnections?: number;
  /**
   * At `maxConnections`, a new connection takes the place of the session
   * that has gone longest without a whole message, if that is at least this
   * long (ms), so sockets an attacker holds open and silent cannot lock
   * fresh clients out. The evicted session is drained (a tcpbutler client
   * moves to a new session and loses nothing) and closed at most 1 s later;
   * evictions are counted in `stats().idleEvictions`. A tcpbutler client
   * pings after half its heartbeat interval of silence, so on the defaults
   * it is evicted only while idle for over 5 s under such pressure, and
   * reconnects. 0 or `Infinity` = never evict: refuse the new connection
   * instead.
   *
   * @default {5000}
   */
  evictIdleAfter?: number;
  /**
   * Bytes all sessions together may buffer: frames in progress, decoded
   * requests waiting for a handler slot, replies queued for peers that do
   * not read. Past it, the sessions buffering the most stop reading (TCP
   * pushes back on their peers); those still paused after
   * `memoryBudgetGrace` while it stays exceeded are cut off with
   * `MemoryBudgetError` (logged, counted in `stats().budgetCuts`), biggest
   * first. At least `maxFrameBytes`. 0 or `Infinity` = no budget.
   *
   * @default {67108864}
   */
  memoryBudget?: number;
  /**
   * Milliseconds a session paused by the memory budget is given before it
   * may be cut off, while the budget stays exceeded.
   *
   * @default {2000}
   */
  memoryBudgetGrace?: number;
  /**
   * Expect a PROXY protocol (v1 or v2) header on every connection; the
   * session's `remoteAddr` is then the original client's. A connection
   * without a valid header is closed.
   *
   * @default {false}
   */
  proxyProtocol?: boolean | ProxyProtocolOptions;
}

/** PROXY protocol settings of a server (`serve({ proxyProtocol })`). */
export interface ProxyProtocolOptions {
  /**
   * Milliseconds a new connection has to send its PROXY header; 0 or
   * `Infinity` = no limit.
   *
   * @default {5000}
   */
  timeout?: number;
  /** Largest PROXY header accepted, in bytes (as `readProxyHeader()` takes it). */
  maxHeaderBytes?: number;
  /**
   * The proxies allowed to connect: IP addresses or CIDR ranges
   * (`"10.0.0.0/8"`, `"127.0.0.1"`, `"fd00::/8"`). A connection from any
   * other address is rejected before its header is read
   * (`ProxyProtocolError`, logged, `stats().rejected`), so a direct client
   * cannot claim another client's address. Unix socket peers are local and
   * always allowed.
   *
   * @default any peer (safe only where no one but your proxies can reach the port)
   */
  trusted?: readonly string[];
}

/** A server's correlation: fifo by default when its codec has no ids. */
function serverCorrelation<T>(options: ServeOptions<T>): "id" | "fifo" {
  if (options.correlation !== undefined) return options.correlation;
  const codec = options.codec;
  return codec !== undefined && codec.correlationId === undefined
    ? "fifo"
    : "id";
}

/** The protocol view of a server's options. */
function serverDialect<T>(options: ServeOptions<T>): Dialect<T> {
  const codec = options.codec;
  if (codec === undefined) {
    return defaultDialect(options.maxFrameBytes) as unknown as Dialect<T>;
  }
  return codecDialect(codec, serverCorrelation(options) === "fifo");
}

/**
 * Starts a server. Shaped like `Deno.serve`: options (with the handler) or
 * options and a handler. Without a `codec` it speaks the default protocol
 * (`Uint8Array` payloads).
 *
 * @typeParam T The message type.
 * @param options Where to listen, codec, handler, limits — or a listener of
 *   your own (`Deno.listen(…)`, `Deno.listenTls(…)`, a {@linkcode TransportListener}).
 * @param handler The handler, if not in `options`.
 * @returns The running server; `server.addr` is known at once.
 * @throws {UnsupportedRuntimeError} On Node and Bun when asked to listen by
 *   itself (`port`, `path`): node:net binds asynchronously there, so pass a
 *   listener from `await listen({ … })`.
 *
 * @example Usage
 * ```ts
 * import { dial, serve } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0 }, (payload) => payload.toReversed());
 * await using client = await dial({ hostname: "127.0.0.1", port: server.port });
 * assert.deepEqual([...await client.request(new Uint8Array([1, 2, 3]))], [3, 2, 1]);
 * const report = await server.shutdown({ timeout: 1000 });
 * assert.equal(report.forced, 0);
 * ```
 */
export function serve<T = Uint8Array>(
  options: ServeOptions<T> | Deno.Listener | TransportListener,
  handler?: ServerHandler<T>,
): Server<T> {
  if (isListener(options)) options = { listener: options };
  const settings = resolveServeOptions(options);
  const dialect = serverDialect(options);
  const merged = handler === undefined ? options : { ...options, handler };
  let listener: TransportListener;
  if (options.listener !== undefined) {
    listener = options.listener;
  } else if (options.path !== undefined) {
    listener = listen({ path: options.path });
  } else if (options.tls?.ca !== undefined) {
    throw new TypeError(
      "Cannot serve mutual TLS synchronously: use serveMutualTls()",
    );
  } else {
    const { tls } = options;
    listener = listen({
      hostname: options.hostname ?? "0.0.0.0",
      port: options.port ?? 9000,
      ...(tls === undefined ? {} : {
        tls: {
          cert: tls.cert,
          key: tls.key,
          handshakeTimeout: settings.handshakeTimeout,
        },
      }),
    });
  }
  return startServer(listener, dialect, merged, settings);
}

function isListener<T>(
  value: ServeOptions<T> | Deno.Listener | TransportListener,
): value is TransportListener | Deno.Listener {
  return typeof (value as TransportListener).accept === "function";
}

/** What `serve()` checks before it opens a listener. */
export interface ServerSettings {
  session: SessionSettings;
  maxConnections: number;
  /** Milliseconds; `Infinity` = never evict. */
  evictIdleAfter: number;
  /** Bytes; `Infinity` = no budget. */
  memoryBudget: number;
  /** Milliseconds. */
  memoryBudgetGrace: number;
  /** The PROXY header expected on each connection; `undefined` = none. */
  proxyProtocol: ProxyProtocolOptions | undefined;
  /** `Infinity` = no limit. */
  proxyTimeout: number;
  /** Who may send a PROXY header; `undefined` = anyone. */
  trustedProxies: AddressMatcher | undefined;
  /** Milliseconds; always finite. */
  handshakeTimeout: number;
}

/** The default `memoryBudget`: 64 MiB. */
const DEFAULT_MEMORY_BUDGET = 64 * 1024 * 1024;

/** Checks `memoryBudget`; `Infinity` for none. */
function memoryBudgetOption(value: number, maxFrameBytes: number): number {
  if (value === 0 || value === Infinity) return Infinity;
  if (!Number.isSafeInteger(value) || value < maxFrameBytes) {
    throw new RangeError(
      `Cannot use memoryBudget ${
        String(value)
      }: expected an integer >= maxFrameBytes (${maxFrameBytes}), or 0 or Infinity for none`,
    );
  }
  return value;
}

function resolveServeOptions<T>(options: ServeOptions<T>): ServerSettings {
  const proxy = typeof options.proxyProtocol === "object"
    ? options.proxyProtocol
    : {};
  const session = resolveSessionOptions(options);
  if (options.codec === undefined) checkWriteRoom(session, HEADER_BYTES);
  return {
    session: { ...session, correlation: serverCorrelation(options) },
    maxConnections: countOption(
      options.maxConnections ?? 10_000,
      "maxConnections",
      1,
    ),
    evictIdleAfter: deadlineMs(
      timeoutOption(options.evictIdleAfter ?? 5000, "evictIdleAfter"),
    ),
    memoryBudget: memoryBudgetOption(
      options.memoryBudget ?? DEFAULT_MEMORY_BUDGET,
      session.maxFrameBytes,
    ),
    memoryBudgetGrace: countOption(
      options.memoryBudgetGrace ?? 2000,
      "memoryBudgetGrace",
      1,
    ),
    proxyProtocol: options.proxyProtocol ? proxy : undefined,
    proxyTimeout: deadlineMs(
      timeoutOption(proxy.timeout ?? 5000, "proxyProtocol.timeout"),
    ),
    trustedProxies: proxy.trusted === undefined
      ? undefined
      : addressMatcher(proxy.trusted),
    handshakeTimeout: countOption(
      options.handshakeTimeout ?? 10_000,
      "handshakeTimeout",
      1,
    ),
  };
}

/**
 * Starts a server that requires client certificates (mutual TLS). Resolves
 * once listening. `options.tls.ca` is the CA that client certificates must
 * chain to; `session.peerCertificate` holds the verified certificate.
 *
 * @typeParam T The message type.
 * @param options As {@linkcode serve}, with `tls` including `ca`.
 * @param handler The handler, if not in `options`.
 * @returns The running server.
 *
 * @example Usage
 * ```ts ignore
 * import { serveMutualTls } from "@tcpbutler/core";
 *
 * const server = await serveMutualTls({
 *   port: 9443,
 *   tls: { cert: serverCertPem, key: serverKeyPem, ca: clientCaPem },
 *   handler: (payload, { session }) => {
 *     console.log(session.peerCertificate?.subject);
 *     return payload;
 *   },
 * });
 * ```
 */
export async function serveMutualTls<T = Uint8Array>(
  options: ServeOptions<T> & {
    tls: ServerTlsOptions & { ca: string | string[] };
  },
  handler?: ServerHandler<T>,
): Promise<Server<T>> {
  const dialect = serverDialect(options);
  const settings = resolveServeOptions(options);
  const merged = handler === undefined ? options : { ...options, handler };
  const listener = await listenMutualTls({
    hostname: options.hostname ?? "0.0.0.0",
    port: options.port ?? 9000,
    cert: options.tls.cert,
    key: options.tls.key,
    ca: options.tls.ca,
    handshakeTimeout: settings.handshakeTimeout,
  });
  return startServer(listener, dialect, merged, settings);
}
