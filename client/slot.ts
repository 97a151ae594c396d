/**
 * One place in the client's pool: it keeps one session to one endpoint
 * alive. Its life is a loop of small steps — connect, set up the session,
 * handshake (`onConnect` and the readiness ping), serve until the session
 * closes, then back off and go again, or give up.
 *
 * @module
 */

import {
  type ClientTlsOptions,
  connect,
  type Endpoint,
  formatEndpoint,
} from "../transport/connect.ts";
import type { Transport } from "../connection.ts";
import { abortable } from "../_util.ts";
import { after } from "../_timeouts.ts";
import { type SessionConfig, SessionImpl } from "../session/session.ts";
import type { Session } from "../session/types.ts";
import { delay, exponentialBackoff } from "../backoff.ts";
import type { Logger } from "../logger.ts";
import {
  ConnectionError,
  ProtocolMismatchError,
  RetryExhaustedError,
} from "../errors.ts";
import type { ReconnectOptions } from "./types.ts";

/**
 * Where a slot is in its life:
 *
 * - `idle`: not started yet.
 * - `connecting`: opening the connection (no session yet).
 * - `handshaking`: its session runs `onConnect` and the readiness ping.
 * - `ready`: its session takes requests until it closes.
 * - `waiting`: between two attempts (the last one ended; backing off).
 * - `stopped`: gave up reconnecting; it never connects again.
 * - `closed`: the client closed.
 */
export type SlotState =
  | "idle"
  | "connecting"
  | "handshaking"
  | "ready"
  | "waiting"
  | "stopped"
  | "closed";

/** What a slot needs from its client: settings, and whom to tell what. */
export interface SlotHost<T> {
  /** Aborts when the client closes: the slot stops. */
  readonly stop: AbortSignal;
  readonly config: SessionConfig<T>;
  readonly logger: Logger;
  readonly tls: ClientTlsOptions | undefined;
  /** Milliseconds one attempt may take until its session is ready. */
  readonly connectTimeout: number;
  /** The default protocol: a ping proves the peer speaks it. */
  readonly framed: boolean;
  readonly onConnect:
    | ((session: Session<T>, context: { signal: AbortSignal }) => unknown)
    | undefined;
  readonly reconnect: ReconnectOptions;
  /** A session exists (not ready yet). */
  opened(slot: Slot<T>, session: SessionImpl<T>): void;
  /** The session passed its handshake: route requests to it. */
  ready(slot: Slot<T>, session: SessionImpl<T>): void;
  /** An attempt failed while the client is open. */
  failed(
    slot: Slot<T>,
    error: unknown,
    mismatch: ProtocolMismatchError | undefined,
  ): void;
  /**
   * Milliseconds the slot's endpoint is to be left alone (it is ejected as
   * an outlier); the next attempt waits at least this long.
   */
  holdOff?(slot: Slot<T>): number;
  /** The slot waits `delay` ms before its next attempt. */
  reconnecting(slot: Slot<T>, attempt: number, delay: number): void;
  /** The slot gave up reconnecting. */
  stopped(slot: Slot<T>, error: RetryExhaustedError): void;
}

/**
 * One reconnecting session to one endpoint.
 *
 * @typeParam T The message type.
 */
export class Slot<T> {
  readonly endpoint: Endpoint;
  /** The endpoint as events and logs name it. */
  readonly name: string;
  readonly #host: SlotHost<T>;
  /** Aborted by {@linkcode retire}: this slot alone stops. */
  readonly #retire = new AbortController();
  /** Aborts when the client closes or the slot is retired. */
  readonly #stop: AbortSignal;
  #state: SlotState = "idle";
  #session: SessionImpl<T> | undefined;
  #lastError: unknown;
  #done: Promise<void> = Promise.resolve();

  constructor(endpoint: Endpoint, host: SlotHost<T>) {
    this.endpoint = endpoint;
    this.name = formatEndpoint(endpoint);
    this.#host = host;
    this.#stop = AbortSignal.any([host.stop, this.#retire.signal]);
  }

  /**
   * Stops this slot for good (its endpoint left the fleet): an attempt
   * under way is aborted, no new one starts. A ready session is not
   * touched: whoever retires the slot drains it.
   *
   * @param reason Why, as the abort reason of the attempt under way.
   */
  retire(reason: unknown): void {
    this.#retire.abort(reason);
  }

  /** Where the slot is in its life. */
  get state(): SlotState {
    return this.#state;
  }

  /** The session of the current attempt, from set-up until the attempt ends. */
  get session(): SessionImpl<T> | undefined {
    return this.#session;
  }

  /** Why the last attempt failed or the last session closed; undefined once ready. */
  get lastError(): unknown {
    return this.#lastError;
  }

  /** Resolves once the slot stopped for good. */
  get done(): Promise<void> {
    return this.#done;
  }

  /** Starts the loop. */
  start(): void {
    // The loop never rejects on purpose; should it, log it rather than
    // leave an unhandled rejection.
    this.#done = this.#run().catch((error) => {
      this.#state = "stopped";
      this.#host.logger.error("Session slot stopped", {
        endpoint: this.name,
        error,
      });
    });
  }

  async #run(): Promise<void> {
    const stop = this.#stop;
    const reconnect = this.#host.reconnect;
    const backoff = exponentialBackoff(reconnect);
    const stableAfter = reconnect.stableAfter ?? 1000;
    let failures = 0;
    while (!stop.aborted) {
      const readyAt = await this.#attempt();
      if (readyAt > 0) failures = 0;
      if (stop.aborted) break;
      if (readyAt > 0 && performance.now() - readyAt >= stableAfter) {
        backoff.reset();
      }
      failures++;
      if (!this.#mayReconnect(failures)) {
        this.#giveUp(failures);
        return;
      }
      if (!await this.#backOff(backoff.next(), failures)) break;
    }
    this.#state = "closed";
  }

  /**
   * One connection, from connect until its session closed or the attempt
   * failed. Resolves with when the session became ready, 0 if it never did.
   */
  async #attempt(): Promise<number> {
    const attempt = attemptSignal(
      this.#stop,
      this.#host.connectTimeout,
      this.name,
    );
    let conn: Transport | undefined;
    let session: SessionImpl<T> | undefined;
    let readyAt = 0;
    try {
      this.#state = "connecting";
      conn = await connect(this.endpoint, this.#host.tls, attempt.signal);
      session = this.#setUp(conn);
      await this.#handshake(session, attempt.signal);
      attempt.end();
      readyAt = this.#ready(session);
      await this.#serve(session);
    } catch (caught) {
      this.#failed(caught, session, conn);
    } finally {
      attempt.end();
      this.#state = "waiting";
      this.#session = undefined;
    }
    if (session !== undefined) await session.closed;
    return readyAt;
  }

  /** Makes the session over a fresh connection and starts it reading. */
  #setUp(conn: Transport): SessionImpl<T> {
    const session = new SessionImpl(conn, this.#host.config);
    // By name: the same endpoint given twice, or spelt two ways that format
    // alike, is one endpoint for the replies its sessions may carry.
    session.endpoint = this.name;
    this.#session = session;
    this.#state = "handshaking";
    this.#host.opened(this, session);
    session.start();
    return session;
  }

  /** Runs `onConnect`, then proves the peer speaks the protocol. */
  async #handshake(
    session: SessionImpl<T>,
    signal: AbortSignal,
  ): Promise<void> {
    const { onConnect, framed, connectTimeout } = this.#host;
    if (onConnect !== undefined) {
      await abortable(
        Promise.resolve(onConnect(session, { signal })),
        signal,
      );
    }
    if (framed) {
      // One ping round trip proves the peer speaks the protocol, and
      // surfaces a TLS 1.3 client-certificate refusal (which only shows
      // on the first read) as a failed connect instead of a ready session.
      await session.requestOn(undefined as T, connectTimeout, signal, true);
    }
    signal.throwIfAborted();
    if (session.state !== "handshaking") {
      throw session.closeReason ?? new ConnectionError(
        `Cannot connect to ${this.name}: the session closed during the handshake`,
      );
    }
  }

  /** Opens the session to requests. Returns when it became ready. */
  #ready(session: SessionImpl<T>): number {
    session.markReady();
    const readyAt = performance.now();
    this.#state = "ready";
    this.#lastError = undefined;
    this.#host.logger.info("Session ready", {
      endpoint: this.name,
      session: session.id,
    });
    this.#host.ready(this, session);
    return readyAt;
  }

  /** Waits until the session closes, and keeps why. */
  async #serve(session: SessionImpl<T>): Promise<void> {
    await session.closed;
    this.#lastError = session.closeReason;
    if (session.closeReason instanceof ProtocolMismatchError) {
      this.#host.logger.error(
        "Session failed: the peer speaks another protocol",
        {
          endpoint: this.name,
          session: session.id,
          error: session.closeReason,
        },
      );
    }
  }

  /** Ends a failed attempt: closes what it opened, and says why. */
  #failed(
    caught: unknown,
    session: SessionImpl<T> | undefined,
    conn: Transport | undefined,
  ): void {
    // The ping (or onConnect) only saw the session close; the session's
    // close reason says why, and a mismatch is the one that matters.
    const mismatch = session?.closeReason instanceof ProtocolMismatchError
      ? session.closeReason
      : undefined;
    const error = mismatch ?? caught;
    this.#lastError = error;
    if (session !== undefined) session.close(error);
    else closeQuietly(conn); // the session could not be made (a codec's decoder() threw)
    if (this.#stop.aborted) return;
    // A peer that speaks another protocol is a configuration error, not a
    // network fault: dial() fails with it at once, and once the client is
    // up it is logged as an error while the slot backs off.
    this.#host.logger[mismatch === undefined ? "warn" : "error"](
      "Connection attempt failed",
      { endpoint: this.name, error },
    );
    this.#host.failed(this, error, mismatch);
  }

  /**
   * Whether to try again after `failures` failed attempts in a row:
   * `maxAttempts`, then the user's `shouldReconnect` (a throw counts as
   * "no" and is logged).
   */
  #mayReconnect(failures: number): boolean {
    const { maxAttempts, shouldReconnect } = this.#host.reconnect;
    if (
      maxAttempts !== undefined && maxAttempts > 0 && failures >= maxAttempts
    ) {
      return false;
    }
    if (shouldReconnect === undefined) return true;
    try {
      return shouldReconnect(this.#lastError, failures) !== false;
    } catch (error) {
      this.#host.logger.error("shouldReconnect threw; the slot stops", {
        endpoint: this.name,
        error,
      });
      return false;
    }
  }

  #giveUp(attempts: number): void {
    this.#state = "stopped";
    const error = new RetryExhaustedError(attempts, {
      cause: this.#lastError,
    });
    this.#host.logger.error("Stopped reconnecting", {
      endpoint: this.name,
      attempts,
    });
    this.#host.stopped(this, error);
  }

  /** Waits `wait` ms before the next attempt; false if the client closed meanwhile. */
  async #backOff(wait: number, attempt: number): Promise<boolean> {
    wait = Math.max(wait, this.#host.holdOff?.(this) ?? 0);
    this.#host.reconnecting(this, attempt, wait);
    try {
      await delay(wait, { signal: this.#stop });
      return true;
    } catch {
      return false;
    }
  }
}

/**
 * The signal of one attempt: aborts at the connect timeout or when the
 * client closes. `end()` lets go of both (idempotent).
 */
function attemptSignal(
  stop: AbortSignal,
  connectTimeout: number,
  name: string,
): { signal: AbortSignal; end(): void } {
  const attempt = new AbortController();
  const cancelTimer = after(
    connectTimeout,
    () =>
      attempt.abort(
        new ConnectionError(
          `Cannot connect to ${name}: no ready session within ${connectTimeout} ms`,
        ),
      ),
  );
  const onStop = () => attempt.abort(stop.reason);
  stop.addEventListener("abort", onStop, { once: true });
  return {
    signal: attempt.signal,
    end() {
      cancelTimer();
      stop.removeEventListener("abort", onStop);
    },
  };
}

function closeQuietly(conn: Transport | undefined): void {
  try {
    conn?.close();
  } catch {
    // Already closed.
  }
}
