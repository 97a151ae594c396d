/**
 * A session's graceful close, and what a forced one cut.
 *
 * @module
 */

import { after } from "../_timeouts.ts";
import { abortPromise, withResolvers } from "../_util.ts";
import { ClosedError, ConnectionClosedError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { drained, type DrainResult, type SessionConfig } from "./config.ts";
import type { Pending } from "../_correlation.ts";
import type { Transport } from "../connection.ts";
import type { SessionImpl } from "./session.ts";
import type { HandlerGate } from "./handlers.ts";
import type { Lifecycle } from "./lifecycle.ts";
import type { Session } from "./types.ts";
import type { WriteQueue } from "./write_queue.ts";

/**
 * How long a forced drain goes on refusing what the peer sent before its
 * drain answer, and waits for the refusals to be written.
 */
const REFUSAL_MS = 200;

/** The parts of a session a drain works with. */
export interface Draining<T> {
  readonly session: Session<T>;
  readonly life: Lifecycle;
  readonly gate: HandlerGate<T>;
  readonly queue: WriteQueue;
  readonly logger: Logger;
  /** The default protocol: drain frames and refusals. */
  readonly framed: boolean;
  /** The session's own requests still pending. */
  pending(): number;
  /** The drain frame of the protocol. */
  drainFrame(): unknown;
  /** The peer asked us to stop sending requests (client: unroute). */
  peerDraining(): void;
  /**
   * Fails the session's pending requests (the peer ended: no reply can
   * come), except idempotent ones, which go elsewhere.
   */
  failPending(reason: unknown): void;
  /** Resolves when nothing is owed (handlers, writes, own requests). */
  whenIdle(): Promise<void>;
  closeWrite(): Promise<void>;
  close(reason?: unknown): void;
  /** The running drain (see {@linkcode drainOnce}). */
  run?: Promise<DrainResult>;
  /** What forces it: every caller's signal. */
  force?: AbortController;
}

/**
 * Runs the session's one drain: a later caller joins the running one, and
 * its signal forces it too (the earlier deadline wins).
 */
export function drainOnce<T>(
  s: Draining<T>,
  signal: AbortSignal,
  onDrain?: (session: Session<T>) => void | Promise<void>,
  endWithin?: number,
): Promise<DrainResult> {
  const force = s.force ??= new AbortController();
  const link = () => force.abort(signal.reason);
  if (signal.aborted) link();
  else signal.addEventListener("abort", link, { once: true });
  s.run ??= drain(s, force.signal, onDrain, endWithin);
  return s.run.finally(() => signal.removeEventListener("abort", link));
}

/** A session's parts as its drain sees them. */
export function drainingOf<T>(
  session: SessionImpl<T>,
  life: Lifecycle,
  gate: HandlerGate<T>,
  queue: WriteQueue,
  conn: Transport,
  cfg: SessionConfig<T>,
  idempotent: (entry: Pending) => boolean,
): Draining<T> {
  return {
    session,
    life,
    gate,
    queue,
    logger: cfg.logger,
    framed: cfg.dialect.framed,
    pending: () => session.pendingCount,
    drainFrame: () => cfg.dialect.drain(),
    peerDraining: () => cfg.onPeerDrain(session),
    failPending: (reason) =>
      cfg.correlator.failOwner(session, reason, idempotent),
    whenIdle: () => life.whenIdle(),
    closeWrite: () => conn.closeWrite(),
    close: (reason) => session.close(reason),
  };
}

/** Queues our drain frame (or drain answer), once. */
export function tell<T>(s: Draining<T>): void {
  if (s.life.told) return;
  s.life.told = true;
  s.queue.enqueue(s.drainFrame(), undefined);
}

/** The peer sent a drain frame: an answer to ours, or its own drain. */
export function peerDrained<T>(s: Draining<T>): void {
  const life = s.life;
  if (life.told) {
    // Our drain was acknowledged: every request the peer sent has arrived.
    return life.peerDrained();
  }
  // The peer is going away: stop sending it requests and acknowledge.
  life.drain();
  tell(s);
  life.peerDrained();
  s.peerDraining();
}

/**
 * The peer ended its side. Handlers learn that it has gone (as in Go's
 * net/http; their replies are still written if it only half-closed), our
 * pending requests fail (their replies cannot come), and once we owe
 * nothing more the session closes.
 */
export function peerEnded<T>(s: Draining<T>): void {
  const life = s.life;
  life.end();
  if (life.state === "closed") return;
  const id = s.session.id;
  s.gate.stopHandlers(
    new ConnectionClosedError(`Session ${id}: the peer closed its side`),
  );
  const ended = () =>
    new ConnectionClosedError(
      `Session ${id} ended: the peer closed the connection`,
    );
  s.failPending(ended());
  s.whenIdle().then(() =>
    s.close(life.state === "draining" ? undefined : ended())
  );
}

/** How long handlers get to answer what came before a peer's bad bytes. */
const BAD_INPUT_GRACE_MS = 5000;

/**
 * The peer sent bad bytes, and reading has stopped. What it sent before
 * them is still handled: handlers finish and their answers are written
 * (for at most {@linkcode BAD_INPUT_GRACE_MS}), then the session closes
 * with `reason`. No new request of ours goes out on it, and those pending
 * fail at once (no reply can be read).
 */
export function finishThenClose<T>(s: Draining<T>, reason: unknown): void {
  // Nothing owed: close at once, as any failure does.
  if (s.gate.idle && s.queue.idle) return s.close(reason);
  if (!s.life.drain()) return;
  s.failPending(
    reason instanceof ConnectionClosedError
      ? reason
      : new ConnectionClosedError(
        `Session ${s.session.id} closed: the peer sent bad input`,
        { cause: reason },
      ),
  );
  const cancel = after(BAD_INPUT_GRACE_MS, () => s.close(reason));
  s.whenIdle().then(() => {
    cancel();
    s.close(reason);
  });
}

/**
 * Graceful close: stop taking requests, tell the peer (drain frame, or the
 * `onDrain` hook), let handlers finish and replies flush, wait for our own
 * pending requests, half-close, wait for the peer to close, then close.
 * When `signal` aborts first, the session is closed at once, after
 * refusing what it never started.
 *
 * @returns What was cut by the abort (zeros on a clean drain).
 */
async function drain<T>(
  s: Draining<T>,
  signal: AbortSignal,
  onDrain?: (session: Session<T>) => void | Promise<void>,
  endWithin = Infinity,
): Promise<DrainResult> {
  if (!s.life.drain()) return drained();
  const forced = abortPromise(signal);
  try {
    if (s.framed) {
      tell(s);
      await Promise.race([s.life.whenDrained(), forced.promise]);
    } else if (onDrain !== undefined) {
      // A failing hook is logged; the drain goes on.
      const told = Promise.resolve().then(() => onDrain(s.session)).catch(
        (error) =>
          s.logger.error("onDrain failed", { session: s.session.id, error }),
      );
      await Promise.race([told, forced.promise]);
    }
    await Promise.race([s.whenIdle(), forced.promise]);
    if (s.life.state !== "closed" && !signal.aborted) {
      try {
        await s.closeWrite();
      } catch {
        // The peer may already be gone.
      }
      if (!await endedWithin(s, endWithin, forced.promise)) {
        s.close(
          new ClosedError(
            `Session ${s.session.id}: the peer kept the session open ${endWithin} ms after the drain`,
          ),
        );
        return drained();
      }
    }
    s.close();
    return drained();
  } catch {
    return await forceClose(s, signal);
  } finally {
    forced.dispose();
  }
}

/**
 * Whether the peer closes its side (after our half-close) within `ms`;
 * rejects when the drain is forced first.
 */
async function endedWithin<T>(
  s: Draining<T>,
  ms: number,
  forced: Promise<never>,
): Promise<boolean> {
  const late = withResolvers<boolean>();
  const cancel = after(ms, () => late.resolve(false));
  try {
    return await Promise.race([
      s.life.whenEnded().then(() => true),
      late.promise,
      forced,
    ]);
  } finally {
    cancel();
  }
}

/**
 * The drain's time is up. Requests never started are answered "not
 * processed", so their requesters may send them elsewhere; the rest
 * (handlers still running, replies not yet written) get no answer.
 */
async function forceClose<T>(
  s: Draining<T>,
  signal: AbortSignal,
): Promise<DrainResult> {
  const refused = await refuseUnstarted(s);
  const reasons = busyWith(s);
  if (refused > 0) {
    reasons.push(`${refused} request(s) not started, refused unprocessed`);
  }
  const cut: DrainResult = {
    forced: true,
    handlers: s.gate.running + s.gate.held + s.queue.queuedReplies +
      s.queue.writingReplies,
    refused,
    requests: s.pending(),
    reasons,
  };
  s.close(
    new ClosedError(
      `Session ${s.session.id} was force-closed: the drain timeout passed (${
        reasons.join("; ")
      })`,
      { cause: signal.reason },
    ),
  );
  return cut;
}

/** What a drain is still waiting for, in words (for the shutdown report). */
function busyWith<T>(s: Draining<T>): string[] {
  const reasons: string[] = [];
  if (s.framed && !s.life.drained) {
    reasons.push("the peer never answered the drain");
  }
  const running = s.gate.running;
  if (running > 0) reasons.push(`${running} handler(s) still running`);
  const held = s.gate.held;
  if (held > 0) reasons.push(`${held} request(s) not started`);
  const pending = s.pending();
  if (pending > 0) reasons.push(`${pending} request(s) of ours still pending`);
  if (s.queue.queued > 0 || s.queue.writing) {
    reasons.push("writes not flushed (the peer is not reading)");
  }
  if (reasons.length === 0) reasons.push("the peer did not close its side");
  return reasons;
}

/**
 * Answers every request read but not started, and every request the peer
 * sent before its drain answer, with a refusal (they will not run), then
 * waits, for REFUSAL_MS at most, until the peer's drain answer is read and
 * the refusals are written. Returns how many requests were refused.
 */
async function refuseUnstarted<T>(s: Draining<T>): Promise<number> {
  if (s.life.state === "closed" || !s.framed) return 0;
  const refusing = s.gate.refuseAll();
  const gaveUp = withResolvers<void>();
  const cancel = after(REFUSAL_MS, gaveUp.resolve);
  try {
    await Promise.race([s.life.whenDrained(), gaveUp.promise]);
    const written = refusing.written?.promise;
    if (written !== undefined) await Promise.race([written, gaveUp.promise]);
  } catch {
    // The write failed: the peer is gone.
  } finally {
    cancel();
  }
  return refusing.count;
}
