/**
 * Every error class that tcpbutler throws or rejects with. Each sets `name`,
 * takes `(message, options?: ErrorOptions)` and carries the underlying
 * failure in `cause`.
 *
 * @module
 */

/**
 * A connection attempt failed: refused, unreachable, TLS handshake failed, or
 * `connectTimeout` passed. `cause` holds the runtime's error (for example
 * `Deno.errors.ConnectionRefused`).
 *
 * @example Usage
 * ```ts
 * import { ConnectionError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const error = new ConnectionError("Cannot connect to 127.0.0.1:1", {
 *   cause: new Deno.errors.ConnectionRefused(),
 * });
 * assert.equal(error.name, "ConnectionError");
 * ```
 */
export class ConnectionError extends Error {
  /**
   * Creates the error.
   *
   * @param message What failed.
   * @param options `cause`: the underlying error.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConnectionError";
  }
}

/**
 * The session a request or send was using closed before it completed. The
 * request was written (or may have been): it was not replayed elsewhere.
 *
 * @example Usage
 * ```ts
 * import { ConnectionClosedError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const error = new ConnectionClosedError("Session closed");
 * assert.ok(error instanceof Error);
 * ```
 */
export class ConnectionClosedError extends Error {
  /**
   * Creates the error.
   *
   * @param message What was cut.
   * @param options `cause`: why the session closed.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConnectionClosedError";
  }
}

/**
 * The peer sent bytes that do not follow the protocol (a garbage header, a
 * stream that ended inside a frame, an unknown frame kind). The session that
 * received them is closed; others are not affected.
 *
 * @example Usage
 * ```ts
 * import { ProtocolError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.equal(new ProtocolError("bad header").name, "ProtocolError");
 * ```
 */
export class ProtocolError extends Error {
  /**
   * Messages decoded before the bad bytes, in the same `decode()` call
   * (empty when there were none). A session handles them before it closes,
   * so the outcome does not depend on where reads split the stream. Custom
   * decoders that throw in the middle of a chunk set it to the messages
   * they completed first; without it those messages are lost.
   */
  decoded: unknown[] = [];
  /**
   * Creates the error.
   *
   * @param message What was wrong with the bytes.
   * @param options `cause`: the underlying error, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ProtocolError";
  }
}

/**
 * A PROXY protocol (v1 or v2) header was missing or malformed. Only the
 * connection that sent it is closed.
 *
 * @example Usage
 * ```ts
 * import { ProtocolError, ProxyProtocolError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.ok(new ProxyProtocolError("bad signature") instanceof ProtocolError);
 * ```
 */
export class ProxyProtocolError extends ProtocolError {
  /**
   * Creates the error.
   *
   * @param message What was wrong with the header.
   * @param options `cause`, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ProxyProtocolError";
  }
}

/**
 * A protocol that {@linkcode ProtocolMismatchError} recognised in a peer's
 * first bytes: a TLS record, an HTTP request or response (HTTP/2 included),
 * or an SSH banner.
 */
export type DetectedProtocol = "tls" | "http" | "ssh";

/**
 * The peer speaks another protocol: the first bytes a session received,
 * which could not be decoded, are a TLS record, an HTTP request or
 * response, or an SSH banner. Typical causes are a plain client pointed at a
 * TLS port ("The peer at 127.0.0.1:4433 speaks TLS: connect with `tls`
 * options") and a TLS or HTTP client connected to a plain port. `cause` is
 * the decoder's own error (usually a {@linkcode FrameTooLargeError}: the
 * foreign bytes read as a length header).
 *
 * `dial()` rejects with it at once instead of waiting for `connectTimeout`.
 * It is not retryable ({@linkcode isRetryableError} says `false`): the same
 * address will answer the same way until its configuration changes.
 *
 * @example Usage
 * ```ts
 * import { ProtocolError, ProtocolMismatchError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const error = new ProtocolMismatchError(
 *   "The peer at 127.0.0.1:4433 speaks TLS: connect with `tls` options",
 *   { detected: "tls" },
 * );
 * assert.ok(error instanceof ProtocolError);
 * assert.equal(error.detected, "tls");
 * ```
 */
export class ProtocolMismatchError extends ProtocolError {
  /** The protocol the peer's first bytes belong to. */
  readonly detected: DetectedProtocol;

  /**
   * Creates the error.
   *
   * @param message What the peer speaks, and what to change.
   * @param options `detected`: the peer's protocol; `cause`: the decoder's error.
   */
  constructor(
    message: string,
    options: ErrorOptions & { detected: DetectedProtocol },
  ) {
    super(message, options);
    this.name = "ProtocolMismatchError";
    this.detected = options.detected;
  }
}

/**
 * A frame header announced more than `maxFrameBytes`. Raised as soon as the
 * header is read, before anything of the frame is buffered.
 *
 * @example Usage
 * ```ts
 * import { FrameTooLargeError, ProtocolError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const error = new FrameTooLargeError(1024, 4096);
 * assert.ok(error instanceof ProtocolError);
 * assert.equal(error.maxFrameBytes, 1024);
 * ```
 */
export class FrameTooLargeError extends ProtocolError {
  /** The configured limit, in bytes. */
  readonly maxFrameBytes: number;
  /** The size the header announced (or the bytes seen so far), in bytes. */
  readonly frameBytes: number;

  /**
   * Creates the error.
   *
   * @param maxFrameBytes The configured limit.
   * @param frameBytes The announced size.
   * @param options `cause`, if any.
   */
  constructor(
    maxFrameBytes: number,
    frameBytes: number,
    options?: ErrorOptions,
  ) {
    super(
      `Cannot decode frame: ${frameBytes} bytes exceeds maxFrameBytes (${maxFrameBytes})`,
      options,
    );
    this.name = "FrameTooLargeError";
    this.maxFrameBytes = maxFrameBytes;
    this.frameBytes = frameBytes;
  }
}

/**
 * A request did not get its reply before its deadline. The pending entry has
 * been freed; a reply that arrives later is dropped and counted.
 *
 * Only the library's own deadline (the `timeout` option, or the client's or
 * server's `requestTimeout`) rejects with this class. A request aborted by
 * its `signal` rejects with `signal.reason` unchanged, and for
 * `AbortSignal.timeout()` that is a `DOMException` whose `name` is also
 * `"TimeoutError"`: `error instanceof TimeoutError` matches the library's
 * deadline only, `error.name === "TimeoutError"` matches both.
 *
 * @example Usage
 * ```ts
 * import { TimeoutError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.equal(new TimeoutError("late", { timeout: 5 }).timeout, 5);
 * ```
 *
 * @example Tell it from an `AbortSignal.timeout()` abort
 * ```ts
 * import { TimeoutError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const deadline = new TimeoutError("late", { timeout: 5 });
 * // What a request whose signal is AbortSignal.timeout(5) rejects with:
 * const aborted = new DOMException("Signal timed out.", "TimeoutError");
 *
 * assert.ok(deadline instanceof TimeoutError);
 * assert.ok(!(aborted instanceof TimeoutError));
 * assert.equal(deadline.name, "TimeoutError");
 * assert.equal(aborted.name, "TimeoutError");
 * ```
 */
export class TimeoutError extends Error {
  /** The timeout that passed, in milliseconds. */
  readonly timeout: number;

  /**
   * Creates the error.
   *
   * @param message What timed out.
   * @param options `timeout` in milliseconds and an optional `cause`.
   */
  constructor(message: string, options: ErrorOptions & { timeout: number }) {
    super(message, options);
    this.name = "TimeoutError";
    this.timeout = options.timeout;
  }
}

/**
 * No session was ready for a request: either `waitForSession` was `false`,
 * the waiting queue was full, or none became ready before the deadline.
 *
 * @example Usage
 * ```ts
 * import { NoSessionError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.equal(new NoSessionError("none ready").name, "NoSessionError");
 * ```
 */
export class NoSessionError extends Error {
  /**
   * Creates the error.
   *
   * @param message Why no session could be used.
   * @param options `cause`: the last connection error, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NoSessionError";
  }
}

/**
 * The peer's handler failed and answered with an error frame (default
 * protocol). `message` is the peer's message.
 *
 * @example Usage
 * ```ts
 * import { RemoteError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.equal(new RemoteError("boom").message, "boom");
 * ```
 */
export class RemoteError extends Error {
  /**
   * Creates the error.
   *
   * @param message The message the peer sent.
   * @param options `cause`, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "RemoteError";
  }
}

/**
 * The client, server or session is closing or closed and takes no new work.
 *
 * @example Usage
 * ```ts
 * import { ClosedError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.equal(new ClosedError("Client is closed").name, "ClosedError");
 * ```
 */
export class ClosedError extends Error {
  /**
   * Creates the error.
   *
   * @param message What is closed.
   * @param options `cause`, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ClosedError";
  }
}

/**
 * A client's endpoint discovery failed: the source threw, gave something
 * other than a list, gave an empty list, or listed a bad endpoint. The
 * client keeps the endpoints it has. `cause` holds the source's error.
 *
 * @example Usage
 * ```ts
 * import { DiscoveryError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.equal(new DiscoveryError("no endpoint").name, "DiscoveryError");
 * ```
 */
export class DiscoveryError extends Error {
  /**
   * Creates the error.
   *
   * @param message What went wrong.
   * @param options `cause`, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DiscoveryError";
  }
}

/**
 * Reconnecting stopped: the `shouldReconnect` condition said no, or
 * `maxAttempts` was reached. `cause` holds the last connection error.
 *
 * @example Usage
 * ```ts
 * import { RetryExhaustedError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.equal(new RetryExhaustedError(3).attempts, 3);
 * ```
 */
export class RetryExhaustedError extends Error {
  /** How many attempts were made. */
  readonly attempts: number;

  /**
   * Creates the error.
   *
   * @param attempts How many attempts were made.
   * @param options `cause`: the last error.
   */
  constructor(attempts: number, options?: ErrorOptions) {
    super(`Cannot connect: gave up after ${attempts} attempts`, options);
    this.name = "RetryExhaustedError";
    this.attempts = attempts;
  }
}

/**
 * A request was made with a correlation id that another pending request of
 * the same client already uses. The new request is refused; the pending one
 * is untouched.
 *
 * @example Usage
 * ```ts
 * import { DuplicateIdError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.equal(new DuplicateIdError(7).id, 7);
 * ```
 */
export class DuplicateIdError extends Error {
  /** The correlation id already in use. */
  readonly id: string | number | bigint;

  /**
   * Creates the error.
   *
   * @param id The duplicate id.
   * @param options `cause`, if any.
   */
  constructor(id: string | number | bigint, options?: ErrorOptions) {
    super(
      `Cannot send request: correlation id ${String(id)} is already pending`,
      options,
    );
    this.name = "DuplicateIdError";
    this.id = id;
  }
}

/**
 * The peer did not read what was written to it: the session's write queue
 * stayed over its byte limit, so the session was cut off.
 *
 * @example Usage
 * ```ts
 * import { SlowConsumerError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.equal(new SlowConsumerError("stuck").name, "SlowConsumerError");
 * ```
 */
export class SlowConsumerError extends Error {
  /**
   * Creates the error.
   *
   * @param message What was exceeded.
   * @param options `cause`, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SlowConsumerError";
  }
}

/**
 * The server's memory budget (`serve({ memoryBudget })`) stayed exhausted,
 * and this session was among those buffering the most: its reading was
 * paused, and it was cut off once the budget had been over for
 * `memoryBudgetGrace`. Other sessions are not affected.
 *
 * @example Usage
 * ```ts
 * import { MemoryBudgetError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.equal(new MemoryBudgetError("over").name, "MemoryBudgetError");
 * ```
 */
export class MemoryBudgetError extends Error {
  /**
   * Creates the error.
   *
   * @param message Who was cut, and how much it held.
   * @param options `cause`, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "MemoryBudgetError";
  }
}

/** Why a server dropped a connection during its TLS handshake. */
export type TlsHandshakeFailure = "timeout" | "plaintext" | "failed";

/** Options of {@linkcode TlsHandshakeError}. */
export interface TlsHandshakeErrorOptions extends ErrorOptions {
  /** Why the handshake did not complete. */
  reason: TlsHandshakeFailure;
  /** The client's address, when known. */
  remoteAddr?: Deno.NetAddr;
}

/**
 * A client's TLS handshake with a server did not complete, so the server
 * closed the connection before it became a session: it did not finish
 * within `handshakeTimeout` (`reason: "timeout"`), sent plain text to the
 * TLS port (`"plaintext"`), or failed the handshake (`"failed"`: no common
 * cipher, a bad or missing client certificate on mutual TLS, a reset; the
 * runtime's error is the `cause`). The server logs it (rate-limited),
 * counts it in `stats().handshakeFailures` and emits it as an `error`
 * event.
 *
 * @example Usage
 * ```ts
 * import { TlsHandshakeError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const error = new TlsHandshakeError("too slow", { reason: "timeout" });
 * assert.equal(error.name, "TlsHandshakeError");
 * assert.equal(error.reason, "timeout");
 * ```
 */
export class TlsHandshakeError extends Error {
  /** Why the handshake did not complete. */
  readonly reason: TlsHandshakeFailure;
  /** The client's address, when known. */
  readonly remoteAddr?: Deno.NetAddr;

  /**
   * Creates the error.
   *
   * @param message What happened.
   * @param options The reason, the client's address and the `cause`.
   */
  constructor(message: string, options: TlsHandshakeErrorOptions) {
    super(message, options.cause === undefined ? {} : { cause: options.cause });
    this.name = "TlsHandshakeError";
    this.reason = options.reason;
    if (options.remoteAddr !== undefined) this.remoteAddr = options.remoteAddr;
  }
}

/**
 * A feature the runtime this code runs on cannot offer (for example
 * `serve()` binding its own port synchronously, which `node:net` cannot do
 * on Node and Bun, or `serveWorkers()` outside Deno). The README's runtime
 * table lists them, with what to use instead.
 *
 * @example Usage
 * ```ts
 * import { UnsupportedRuntimeError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const error = new UnsupportedRuntimeError("Cannot fly", {
 *   runtime: "node",
 *   feature: "flying",
 * });
 * assert.equal(error.runtime, "node");
 * ```
 */
export class UnsupportedRuntimeError extends Error {
  /** The runtime: `"deno"`, `"node"` or `"bun"`. */
  readonly runtime: string;
  /** The feature it lacks. */
  readonly feature: string;

  /**
   * Creates the error.
   *
   * @param message What cannot be done here, and what to use instead.
   * @param options The runtime, the feature, and `cause` if any.
   */
  constructor(
    message: string,
    options: ErrorOptions & { runtime: string; feature: string },
  ) {
    super(message, options);
    this.name = "UnsupportedRuntimeError";
    this.runtime = options.runtime;
    this.feature = options.feature;
  }
}

/**
 * Tells whether an error is worth retrying on another session or later: a
 * connection that failed or closed, a missing session, or a timeout. Remote
 * (handler) errors, protocol errors and closed clients are not, nor is a
 * {@linkcode ProtocolMismatchError}, or a connection error whose `cause` is
 * one (a request cut off because its session met a peer of another
 * protocol): the same address answers the same way until it is fixed.
 *
 * @param error Any thrown value.
 * @returns `true` when a retry may succeed.
 *
 * @example Usage
 * ```ts
 * import { ConnectionClosedError, isRetryableError, RemoteError } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.ok(isRetryableError(new ConnectionClosedError("gone")));
 * assert.ok(!isRetryableError(new RemoteError("bad request")));
 * ```
 */
export function isRetryableError(error: unknown): boolean {
  if (
    error instanceof ProtocolMismatchError ||
    ((error instanceof ConnectionError ||
      error instanceof ConnectionClosedError) &&
      error.cause instanceof ProtocolMismatchError)
  ) {
    return false;
  }
  return error instanceof ConnectionError ||
    error instanceof ConnectionClosedError ||
    error instanceof NoSessionError ||
    error instanceof TimeoutError ||
    (error instanceof Error && RETRYABLE_NETWORK_ERRORS.has(error.name));
}

/**
 * Network failures a retry may get past, by name: the `Deno.errors` classes
 * on Deno, the same-named classes the transports throw on Node and Bun.
 */
const RETRYABLE_NETWORK_ERRORS: ReadonlySet<string> = new Set([
  "ConnectionRefused",
  "ConnectionReset",
  "ConnectionAborted",
  "BrokenPipe",
  "TimedOut",
]);
