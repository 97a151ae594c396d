/**
 * Making room at `maxConnections`: the session that has gone longest
 * without a whole message gives its place to a new connection.
 *
 * @module
 */

import { after } from "../_timeouts.ts";
import { ConnectionClosedError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { SessionImpl } from "../session/session.ts";
import type { Session } from "../session/types.ts";

/**
 * How long an evicted session may take to drain. A tcpbutler client answers
 * the drain frame at once and moves to a new session, so a request that
 * crossed the eviction on the wire is still answered; a peer that answers
 * nothing (an attacker's silent socket) is closed when it runs out.
 */
const EVICTION_GRACE_MS = 1000;

/**
 * Drains the session of `sessions` that has read no whole message for the
 * longest time, if that is at least `minIdleMs`, and closes it within
 * {@linkcode EVICTION_GRACE_MS}. One pass over the sessions: it runs only
 * when the server is full, and a scan of 10,000 sessions costs less than the
 * accept it makes room for. Sessions already draining are skipped, so each
 * new connection evicts another.
 *
 * @param sessions The server's sessions.
 * @param minIdleMs How long a session must have been idle to be evicted.
 * @param logger Where the eviction is logged (debug: a flood evicts many).
 * @param onDrain The server's `onDrain` hook, for custom codecs.
 * @returns Whether a session was evicted.
 */
export function evictIdlest<T>(
  sessions: Iterable<SessionImpl<T>>,
  minIdleMs: number,
  logger: Logger,
  onDrain?: (session: Session<T>) => void | Promise<void>,
): boolean {
  let idlest: SessionImpl<T> | undefined;
  let oldest = Infinity;
  for (const session of sessions) {
    if (session.state === "closed" || session.state === "draining") continue;
    const at = session.liveness.lastMessageAt;
    if (at < oldest) {
      oldest = at;
      idlest = session;
    }
  }
  const idleFor = performance.now() - oldest;
  if (idlest === undefined || idleFor < minIdleMs) return false;
  const evicted = idlest;
  logger.debug("Idle session evicted to make room (evictIdleAfter)", {
    session: evicted.id,
    idleMs: Math.round(idleFor),
  });
  const grace = new AbortController();
  const cancel = after(
    EVICTION_GRACE_MS,
    () =>
      grace.abort(
        new ConnectionClosedError(
          `Session ${evicted.id} closed: no whole message for ${
            Math.round(idleFor)
          } ms when a new connection needed its place at maxConnections (evictIdleAfter)`,
        ),
      ),
  );
  evicted.closed.then(cancel);
  evicted.drain(grace.signal, onDrain).finally(cancel);
  return true;
}
