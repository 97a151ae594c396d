/**
 * The public types of a session: what users hold (`Session`), pass
 * (`RequestOptions`, `SendOptions`) and write (`Handler`), and the counters
 * clients and servers report.
 *
 * @module
 */

import type { PeerCertificate } from "../connection.ts";

export type { PeerCertificate };

/** Where a session is in its life. */
export type SessionState = "handshaking" | "ready" | "draining" | "closed";

/** Options of a request. */
export interface RequestOptions {
  /**
   * Milliseconds to wait for the reply (and for a session and room in the
   * write queue before it is sent).
   *
   * @default {5000} (the client's or server's `requestTimeout`)
   */
  timeout?: number;
  /** Aborts the request: it rejects with `signal.reason`. */
  signal?: AbortSignal;
}

/** Options of a fire-and-forget send. */
export interface SendOptions {
  /** Aborts the wait for room in the write queue. */
  signal?: AbortSignal;
}

/** Counters of one session. */
export interface SessionStats {
  /** Messages decoded. */
  messagesIn: number;
  /** Messages written. */
  messagesOut: number;
  /** Bytes read. */
  bytesIn: number;
  /** Bytes written. */
  bytesOut: number;
  /** Requests sent on this session and waiting for a reply. */
  pending: number;
  /** Inbound handlers running. */
  handlersRunning: number;
  /** Messages waiting in the write queue. */
  queued: number;
}

/** A PROXY protocol header's view of the original connection. */
export interface ProxyInfo {
  /** The original client's address. */
  readonly source?: Deno.Addr;
  /** The address the original client connected to. */
  readonly destination?: Deno.Addr;
  /** The connection's own peer: the proxy that sent the header. */
  readonly peer?: Deno.Addr;
}

/**
 * One live connection of a client or server.
 *
 * @typeParam T The message type users exchange.
 */
export interface Session<T> extends AsyncDisposable {
  /** Process-unique session number. */
  readonly id: number;
  /** Which end of the connection this is. */
  readonly side: "client" | "server";
  /**
   * The peer's address. Behind a PROXY protocol header it is the original
   * client's address.
   */
  readonly remoteAddr: Deno.Addr;
  /** This end's address. */
  readonly localAddr: Deno.Addr;
  /** Lifecycle state. */
  readonly state: SessionState;
  /** Resolves once the session is closed. Never rejects. */
  readonly closed: Promise<void>;
  /** Why the session closed, once it has (an Error, or undefined for a clean close). */
  readonly closeReason: unknown;
  /** The verified client certificate, on servers that require one. */
  readonly peerCertificate?: PeerCertificate | undefined;
  /** What the PROXY protocol header said, on servers that accept one. */
  readonly proxy?: ProxyInfo | undefined;
  /**
   * Sends a request on this session and waits for its reply.
   * The message is encoded (or copied) before this returns: its buffer may
   * be reused at once.
   *
   * @param message The request.
   * @param options Timeout and signal.
   * @returns The reply.
   * @throws {TimeoutError} No reply before the timeout.
   * @throws {ConnectionClosedError} The session closed first.
   * @throws {RemoteError} The peer's handler failed (default protocol).
   */
  request(message: T, options?: RequestOptions): Promise<T>;
  /**
   * Sends a message that expects no reply (a push, with the default
   * protocol). Resolves once it has been written to the socket.
   * The message is encoded (or copied) before this returns: its buffer may
   * be reused at once.
   *
   * @param message The message.
   * @param options Signal for the wait on a full write queue.
   * @throws {ConnectionClosedError} The session closed first.
   */
  send(message: T, options?: SendOptions): Promise<void>;
  /**
   * Closes at once: pending requests reject with `ConnectionClosedError`,
   * queued writes are dropped.
   *
   * @param reason Recorded as `closeReason` and used as `cause`.
   */
  close(reason?: unknown): void;
  /**
   * Counters.
   *
   * @returns A snapshot.
   */
  stats(): SessionStats;
}

/**
 * What an inbound message is: a `"request"` (the default protocol's request
 * frame: a reply is owed), a `"push"` (no reply is owed), or a custom
 * codec's `"message"` (the library cannot tell; a value the handler returns
 * is its reply).
 */
export type MessageKind = "request" | "push" | "message";

/**
 * The context an inbound handler receives with each message.
 *
 * @typeParam T The message type.
 */
export interface HandlerContext<T> {
  /** The session the message came in on; reply, push or request through it. */
  readonly session: Session<T>;
  /** Aborted when the session closes (or the server is forced to stop). */
  readonly signal: AbortSignal;
  /** What the message is. */
  readonly kind: MessageKind;
  /**
   * Whether a value the handler returns is sent back: true for requests and
   * custom-codec messages, false for pushes (push back with
   * `session.send()`).
   */
  readonly expectsReply: boolean;
}

/**
 * Handles a message that is not a reply to one of ours: a request or a push.
 * For a request (and a custom codec's message) the value it returns (sync or
 * async) is sent back on the same session: with the default protocol a
 * request always gets a response (empty when the handler returns nothing); a
 * thrown error becomes an error frame. For a push nothing is sent back.
 *
 * @typeParam T The message type.
 * @typeParam C The context (servers and clients add themselves to it).
 */
export type Handler<T, C extends HandlerContext<T> = HandlerContext<T>> = (
  message: T,
  context: C,
) => T | undefined | void | Promise<T | undefined | void>;

/** Traffic counters of a client or server (part of their `stats()`). */
export interface Counters {
  /** Messages decoded. */
  messagesIn: number;
  /** Messages written. */
  messagesOut: number;
  /** Bytes read. */
  bytesIn: number;
  /** Bytes written. */
  bytesOut: number;
  /** Replies that matched no pending request (they came too late): dropped. */
  lateReplies: number;
  /** Handler failures. */
  handlerErrors: number;
  /** Sessions closed for bad input. */
  protocolErrors: number;
}

/** Fresh counters of a client or server. @internal */
export function newCounters(): Counters {
  return {
    messagesIn: 0,
    messagesOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    lateReplies: 0,
    handlerErrors: 0,
    protocolErrors: 0,
  };
}

/**
 * The outcome of one request of a batch (`Client.pipeline`): its reply, or
 * the error it would have rejected with as a `request()`.
 *
 * @typeParam T The message type.
 */
export type PipelineResult<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly error: unknown };
