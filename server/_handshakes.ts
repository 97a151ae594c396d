/**
 * What a server does with the TLS handshakes its listener drops: count them,
 * log them without letting a flood of them flood the log, and emit them as
 * `error` events.
 *
 * @module
 */

import { formatAddr } from "../connection.ts";
import type { TlsHandshakeError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { ServerEventDetail } from "./server.ts";

/** Warnings logged per window at most; the rest are summed up in one line. */
const WARNINGS_PER_WINDOW = 10;
/** Milliseconds of one rate-limiting window. */
const WINDOW_MS = 1000;

/** Counts, logs (at most 10 a second) and emits failed TLS handshakes. */
export class HandshakeFailures {
  readonly #logger: Logger;
  readonly #emit: (detail: ServerEventDetail) => void;
  #count = 0;
  #windowStart = -Infinity;
  #inWindow = 0;
  #suppressed = 0;
  #flush: ReturnType<typeof setTimeout> | undefined;

  constructor(logger: Logger, emit: (detail: ServerEventDetail) => void) {
    this.#logger = logger;
    this.#emit = emit;
  }

  /** Failed handshakes since start. */
  get count(): number {
    return this.#count;
  }

  /**
   * Records one failed handshake.
   *
   * @param error What failed.
   */
  report(error: TlsHandshakeError): void {
    this.#count++;
    const remote = error.remoteAddr && formatAddr(error.remoteAddr);
    this.#warn(error, remote);
    this.#emit({
      type: "error",
      error,
      ...(remote === undefined ? {} : { remote }),
    });
  }

  #warn(error: TlsHandshakeError, remote: string | undefined): void {
    const now = performance.now();
    if (now - this.#windowStart >= WINDOW_MS) {
      this.#windowStart = now;
      this.#inWindow = 0;
    }
    if (this.#inWindow < WARNINGS_PER_WINDOW) {
      this.#inWindow++;
      this.#logger.warn("TLS handshake failed; connection closed", {
        reason: error.reason,
        ...(remote === undefined ? {} : { remote }),
        error,
      });
      return;
    }
    this.#suppressed++;
    // The summary comes when the window ends, even if no failure follows.
    this.#flush ??= setTimeout(
      () => this.#summarize(),
      WINDOW_MS - (now - this.#windowStart),
    );
  }

  #summarize(): void {
    this.#flush = undefined;
    if (this.#suppressed === 0) return;
    const suppressed = this.#suppressed;
    this.#suppressed = 0;
    this.#logger.warn(
      `${suppressed} more failed TLS handshakes suppressed (at most ${WARNINGS_PER_WINDOW} logged a second)`,
      { suppressed },
    );
  }

  /** Logs what is still suppressed and stops the timer. */
  close(): void {
    clearTimeout(this.#flush);
    this.#summarize();
  }
}
