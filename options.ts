/**
 * The options clients ({@linkcode dial}) and servers ({@linkcode serve})
 * share, defined once: their documentation, defaults and validation.
 *
 * Every timeout is a number of milliseconds. For the deadlines and liveness
 * checks (`requestTimeout`, a request's `timeout`, `connectTimeout`,
 * `writeTimeout`, `idleTimeout`, `heartbeat.interval`,
 * `proxyProtocol.timeout`) `0` and `Infinity` both mean "no timeout". The
 * grace periods of `client.close({ timeout })` and
 * `server.shutdown({ timeout })` differ on purpose: `0` there means "no
 * grace, force at once", and `Infinity` "wait as long as it takes". A
 * negative number, `NaN` or a non-number is a `RangeError` thrown by the
 * call that received it (`dial()` and per-call methods reject with it).
 *
 * @module
 */

import type { Handler, HandlerContext, Session } from "./session/types.ts";
import type { Logger } from "./logger.ts";
import { countOption, timeoutOption } from "./_util.ts";

/**
 * Options both {@linkcode dial} and {@linkcode serve} take, with the same
 * meaning and default on either side.
 *
 * @typeParam T The message type.
 * @typeParam C The handler's context (a server's or a client's).
 */
export interface SessionOptions<
  T,
  C extends HandlerContext<T> = HandlerContext<T>,
> {
  /**
   * Handles the peer's requests and pushes. What it returns for a request
   * (or a custom codec's message) is the reply; for a push nothing is sent
   * back (push with `session.send()`). Its context says which it got, and
   * carries the session and the server or client. Replaceable later
   * through `client.handler` or `server.handler`.
   */
  handler?: Handler<T, C>;
  /**
   * Custom codecs: turns a handler error into a reply message; without it
   * the error is logged.
   */
  onHandlerError?: (
    error: unknown,
    message: T,
    session: Session<T>,
  ) => T | undefined;
  /**
   * Custom codecs: match replies to this end's requests by the codec's
   * `correlationId` ("id"), or by order on each session ("fifo", for
   * Redis-like protocols). With "fifo" a server also writes its replies in
   * the order the requests arrived, whatever order its handlers finish in
   * (they still run concurrently; an answer ready early holds its handler
   * slot until its turn).
   *
   * @default {"id"}; a server whose codec has no `correlationId` uses "fifo"
   */
  correlation?: "id" | "fifo";
  /**
   * Milliseconds a request made by this end (`client.request`,
   * `session.request`) waits for its reply when the call gives no
   * `timeout`. 0 or `Infinity` = no timeout.
   *
   * @default {5000}
   */
  requestTimeout?: number;
  /**
   * Close a session that read no whole message for this long (ms): bytes
   * that never finish a frame (a peer trickling one) do not count, so a
   * single message must arrive within it. 0 or `Infinity` = never.
   *
   * @default {0}
   */
  idleTimeout?: number;
  /**
   * Close a session whose message in progress has not completed for this
   * long (ms) while its bytes keep coming: a peer trickling one frame a
   * byte at a time (slowloris) is not taken as alive. Raise it for very
   * large messages on slow links. 0 or `Infinity` = never.
   *
   * @default {60000}
   */
  frameTimeout?: number;
  /**
   * A write that does not complete in this long (ms) cuts the session off
   * with `SlowConsumerError`: the peer stopped reading. 0 or `Infinity` =
   * never.
   *
   * @default {30000}
   */
  writeTimeout?: number;
  /**
   * Inbound handlers running at once per session; further requests are
   * held in order, and reading pauses once as many are held.
   *
   * @default {64}
   */
  maxConcurrentHandlers?: number;
  /**
   * Messages waiting in a session's write queue before `request`/`send`
   * wait (and a server stops reading that peer). Queued bytes are bounded
   * apart from this (`maxWriteBytes`, and a server's `memoryBudget`); the
   * count sets how many requests one write can carry, so it should not be
   * below the requests you keep in flight on one session.
   *
   * @default {1024}
   */
  outboundBuffer?: number;
  /**
   * Bytes queued for writing to one session before it is cut off as a slow
   * consumer (`SlowConsumerError`). With the default protocol it must hold
   * one largest frame, `maxFrameBytes` + 9 header bytes (`RangeError`
   * otherwise).
   *
   * @default {67108864}
   */
  maxWriteBytes?: number;
  /**
   * Default protocol: largest payload accepted (and sent); a larger frame
   * closes the session with `FrameTooLargeError`.
   *
   * @default {8388608}
   */
  maxFrameBytes?: number;
  /** Where logs go; structurally compatible with LogTape. The default logs nothing. */
  logger?: Logger;
}

/**
 * The values of the shared {@linkcode SessionOptions} a client or server
 * runs with: the options given, defaults filled in (`client.settings`,
 * `server.settings`).
 */
export interface SessionSettings {
  /** See {@linkcode SessionOptions.correlation}. */
  readonly correlation: "id" | "fifo";
  /** See {@linkcode SessionOptions.requestTimeout}; 0 = none. */
  readonly requestTimeout: number;
  /** See {@linkcode SessionOptions.idleTimeout}; 0 = never. */
  readonly idleTimeout: number;
  /** See {@linkcode SessionOptions.frameTimeout}; 0 = never. */
  readonly frameTimeout: number;
  /** See {@linkcode SessionOptions.writeTimeout}; 0 = never. */
  readonly writeTimeout: number;
  /** See {@linkcode SessionOptions.maxConcurrentHandlers}. */
  readonly maxConcurrentHandlers: number;
  /** See {@linkcode SessionOptions.outboundBuffer}. */
  readonly outboundBuffer: number;
  /** See {@linkcode SessionOptions.maxWriteBytes}. */
  readonly maxWriteBytes: number;
  /** See {@linkcode SessionOptions.maxFrameBytes}. */
  readonly maxFrameBytes: number;
}

/** The defaults of the shared options, the same for clients and servers. */
export const SESSION_DEFAULTS: SessionSettings = Object.freeze({
  correlation: "id",
  requestTimeout: 5000,
  idleTimeout: 0,
  frameTimeout: 60_000,
  writeTimeout: 30_000,
  maxConcurrentHandlers: 64,
  outboundBuffer: 1024,
  maxWriteBytes: 64 * 1024 * 1024,
  maxFrameBytes: 8 * 1024 * 1024,
});

/**
 * Validates the shared options and fills in their defaults. Clients and
 * servers both call it before they open anything, so a bad value throws
 * before a socket exists. `Infinity` timeouts are reported as 0 (none).
 *
 * @typeParam T The message type.
 * @param options The options given to `dial()` or `serve()`.
 * @returns The settings to run with.
 * @throws {RangeError} A value out of range (negative, `NaN`, a fraction
 * where a count is expected).
 * @throws {TypeError} `correlation` is neither "id" nor "fifo".
 */
export function resolveSessionOptions<T, C extends HandlerContext<T>>(
  options: SessionOptions<T, C>,
): SessionSettings {
  const correlation = options.correlation ?? SESSION_DEFAULTS.correlation;
  if (correlation !== "id" && correlation !== "fifo") {
    throw new TypeError(
      `Cannot use correlation ${String(correlation)}: expected "id" or "fifo"`,
    );
  }
  return {
    correlation,
    requestTimeout: noneAsZero(timeoutOption(
      options.requestTimeout ?? SESSION_DEFAULTS.requestTimeout,
      "requestTimeout",
    )),
    idleTimeout: noneAsZero(timeoutOption(
      options.idleTimeout ?? SESSION_DEFAULTS.idleTimeout,
      "idleTimeout",
    )),
    frameTimeout: noneAsZero(timeoutOption(
      options.frameTimeout ?? SESSION_DEFAULTS.frameTimeout,
      "frameTimeout",
    )),
    writeTimeout: noneAsZero(timeoutOption(
      options.writeTimeout ?? SESSION_DEFAULTS.writeTimeout,
      "writeTimeout",
    )),
    maxConcurrentHandlers: countOption(
      options.maxConcurrentHandlers ?? SESSION_DEFAULTS.maxConcurrentHandlers,
      "maxConcurrentHandlers",
      1,
    ),
    outboundBuffer: countOption(
      options.outboundBuffer ?? SESSION_DEFAULTS.outboundBuffer,
      "outboundBuffer",
      1,
    ),
    maxWriteBytes: countOption(
      options.maxWriteBytes ?? SESSION_DEFAULTS.maxWriteBytes,
      "maxWriteBytes",
      1,
    ),
    maxFrameBytes: countOption(
      options.maxFrameBytes ?? SESSION_DEFAULTS.maxFrameBytes,
      "maxFrameBytes",
      0,
    ),
  };
}

/**
 * Checks that the largest frame the default protocol sends fits in one
 * session's write queue: with `maxWriteBytes` below `maxFrameBytes` plus the
 * frame header, one legitimate reply would cut its own session off as a slow
 * consumer.
 *
 * @param settings The resolved settings.
 * @param headerBytes The protocol's frame header size.
 * @throws {RangeError} When `maxWriteBytes` is too small.
 */
export function checkWriteRoom(
  settings: SessionSettings,
  headerBytes: number,
): void {
  const needed = settings.maxFrameBytes + headerBytes;
  if (settings.maxWriteBytes < needed) {
    throw new RangeError(
      `Cannot use maxWriteBytes ${settings.maxWriteBytes}: it must hold one largest frame, maxFrameBytes (${settings.maxFrameBytes}) + ${headerBytes} header bytes = ${needed}`,
    );
  }
}

function noneAsZero(ms: number): number {
  return ms === Infinity ? 0 : ms;
}
