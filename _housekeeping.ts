/**
 * One timer per client or server that checks every session for idleness,
 * missed heartbeats and stalled writes — instead of timers per session.
 *
 * @module
 */

import type { SessionImpl } from "./session/session.ts";
import { ConnectionClosedError, TimeoutError } from "./errors.ts";

/** Read silence (ms) after which a session gives back its read slabs. */
const RELEASE_BUFFERS_AFTER = 5000;

/** Liveness settings. */
export interface LivenessOptions<T> {
  /** Close a session that read no whole message for this long (ms); 0 = never. */
  idleTimeout: number;
  /**
   * Close a session whose message in progress (bytes arrived since the last
   * whole one) has not completed for this long (ms); 0 = never.
   */
  frameTimeout: number;
  /** Heartbeat interval (ms); 0 = off. */
  heartbeatInterval: number;
  /** Consecutive unanswered heartbeats that close the session. */
  maxMissed: number;
  /** Builds a heartbeat request for custom codecs; the default protocol pings. */
  heartbeatMessage: (() => T) | undefined;
  /** Cut off a peer whose write has not completed for this long (ms); 0 = never. */
  writeTimeout: number;
}

/** Runs liveness checks over a set of sessions. */
export class Housekeeper<T> {
  readonly #sessions: () => Iterable<SessionImpl<T>>;
  readonly #options: LivenessOptions<T>;
  readonly #period: number;
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(
    sessions: () => Iterable<SessionImpl<T>>,
    options: LivenessOptions<T>,
  ) {
    this.#sessions = sessions;
    this.#options = options;
    const candidates = [
      options.idleTimeout / 4,
      options.frameTimeout / 4,
      options.heartbeatInterval / 4,
      options.writeTimeout / 4,
    ].filter((ms) => ms > 0);
    this.#period = candidates.length === 0
      ? 0
      : Math.min(1000, Math.max(10, Math.min(...candidates)));
  }

  /** Starts the periodic check (no-op when every check is off). */
  start(): void {
    if (this.#period === 0 || this.#timer !== undefined) return;
    this.#timer = setInterval(() => this.#tick(), this.#period);
  }

  /** Stops it. */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #tick(): void {
    const now = performance.now();
    const { idleTimeout, frameTimeout, heartbeatInterval, writeTimeout } =
      this.#options;
    for (const session of this.#sessions()) {
      if (session.state === "closed") continue;
      const silent = now - session.liveness.lastReadAt;
      if (silent >= RELEASE_BUFFERS_AFTER) session.releaseIdleBuffers();
      if (
        idleTimeout > 0 && now - session.liveness.lastMessageAt >= idleTimeout
      ) {
        session.close(
          new ConnectionClosedError(
            `Session ${session.id} closed: no whole message read for ${idleTimeout} ms (idleTimeout)`,
          ),
        );
        continue;
      }
      const liveness = session.liveness;
      if (
        frameTimeout > 0 && liveness.lastReadAt > liveness.lastMessageAt &&
        now - liveness.lastMessageAt >= frameTimeout
      ) {
        // Bytes keep coming but no message completes: a peer trickling one
        // frame (slowloris) is not alive, however often it sends a byte.
        session.close(
          new ConnectionClosedError(
            `Session ${session.id} closed: a message has been arriving for over ${frameTimeout} ms (frameTimeout)`,
          ),
        );
        continue;
      }
      if (
        writeTimeout > 0 && session.writeStartedAt > 0 &&
        now - session.writeStartedAt >= writeTimeout
      ) {
        session.stalled(now - session.writeStartedAt);
        continue;
      }
      if (
        heartbeatInterval > 0 && !session.liveness.pinging &&
        silent >= heartbeatInterval / 2
      ) {
        this.#beat(session, heartbeatInterval / 2);
      }
    }
  }

  #beat(session: SessionImpl<T>, timeout: number): void {
    const message = this.#options.heartbeatMessage;
    let beat: T;
    try {
      beat = message === undefined ? undefined as T : message();
    } catch (error) {
      // A heartbeat that cannot be built cannot prove the link alive.
      session.close(
        new ConnectionClosedError(
          `Session ${session.id} closed: heartbeat.message() threw`,
          { cause: error },
        ),
      );
      return;
    }
    const liveness = session.liveness;
    liveness.pinging = true;
    session.requestOn(
      beat,
      timeout,
      undefined,
      message === undefined,
    ).then(
      () => {
        liveness.pinging = false;
        liveness.missed = 0;
      },
      (error) => {
        liveness.pinging = false;
        if (!(error instanceof TimeoutError)) return;
        liveness.missed++;
        if (liveness.missed >= this.#options.maxMissed) {
          session.close(
            new ConnectionClosedError(
              `Session ${session.id} closed: ${liveness.missed} heartbeats went unanswered (half-open connection)`,
            ),
          );
        }
      },
    );
  }
}
