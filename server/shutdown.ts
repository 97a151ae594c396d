/**
 * A server's graceful shutdown (Go's `http.Server.Shutdown`): stop
 * accepting, drain every session, force what is still busy at the timeout,
 * and report what was drained and what was cut.
 *
 * @module
 */

import { formatAddr } from "../connection.ts";
import { after } from "../_timeouts.ts";
import { delay } from "../backoff.ts";
import { abortable } from "../_util.ts";
import { ClosedError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { DrainResult, SessionImpl } from "../session/session.ts";
import type { Session } from "../session/types.ts";
import type { Acceptor } from "./accept.ts";

/** Options of {@linkcode Server.shutdown}. */
export interface ShutdownOptions {
  /**
   * Milliseconds to let in-flight work finish before sessions are forced
   * shut. Unlike the other timeouts, 0 means no grace (force at once);
   * `Infinity` waits as long as it takes.
   *
   * @default {10000}
   */
  timeout?: number;
  /** Aborting forces the shutdown at once. */
  signal?: AbortSignal;
  /**
   * Milliseconds to keep serving first, while failing the health checks of
   * the load balancer in front (connections whose PROXY header carries no
   * client address — HAProxy's checks with `send-proxy-v2` — are closed
   * unanswered), so it stops sending new connections here before the
   * listener closes. Set it to at least the balancer's `fall × inter` plus
   * one `inter`. Not part of `timeout`; the signal or `close()` cuts it
   * short. 0 = no leaving phase.
   *
   * @default {0}
   */
  leaveFor?: number;
}

/** A session that a shutdown forced shut, and why. */
export interface ForcedSession {
  /** The session's id. */
  session: number;
  /** The peer's address. */
  remote: string;
  /**
   * What was still under way at the timeout, for example "the peer never
   * answered the drain", "2 handler(s) still running", "1 request(s) of
   * ours still pending", "writes not flushed (the peer is not reading)".
   */
  reasons: string[];
}

/** What a shutdown did. */
export interface ShutdownReport {
  /** Sessions open when the shutdown began. */
  sessions: number;
  /** Sessions that drained cleanly. */
  drained: number;
  /** Sessions force-closed at the timeout. */
  forced: number;
  /**
   * Requests from clients still running, waiting to run (pushes), or whose
   * replies were not written when their session was forced shut: they got
   * no answer and may have run.
   */
  handlersCut: number;
  /**
   * Requests read but never started when their session was forced shut,
   * answered "not processed" (default protocol; the refusal written):
   * tcpbutler clients send them again elsewhere.
   */
  refused: number;
  /**
   * Requests read but never started when their session was forced shut,
   * and not answered at all: held behind `maxConcurrentHandlers` or read
   * and not yet handed on, where no refusal can be sent (custom codecs),
   * or whose refusal was not written before the close (the peer was not
   * reading). They did not run. Bytes still in the kernel's socket buffer
   * were never read and are not counted.
   * `handlersCut + refused + dropped` is every request received and not
   * answered.
   */
  dropped: number;
  /** The server's own requests to clients that were still pending when forced. */
  requestsCut: number;
  /** How long the shutdown took, in milliseconds. */
  durationMs: number;
  /** The sessions forced shut, each with why. */
  forcedSessions: ForcedSession[];
}

/** What a shutdown works on: the parts of one server. */
export interface ShutdownTarget<T> {
  /** The server's accept loop, stopped first. */
  acceptor: Acceptor;
  /** The open sessions (the server's registry, read when draining starts). */
  sessions: ReadonlySet<SessionImpl<T>>;
  /** The `onDrain` option. */
  onDrain: ((session: Session<T>) => void | Promise<void>) | undefined;
  /** The server's logger. */
  logger: Logger;
  /** Stops the server's timers and its own pending requests. */
  stopTimers(): void;
}

/**
 * The leaving phase of a shutdown (`leaveFor`): keep serving, fail the
 * proxy's health checks (`setLeaving(true)`), until the time is up or the
 * shutdown is forced.
 *
 * @param options The shutdown's options.
 * @param force Aborted when the shutdown is forced.
 * @param logger The server's logger.
 * @param setLeaving Marks the server leaving, and not any more.
 */
export async function leave(
  options: ShutdownOptions,
  force: AbortSignal,
  logger: Logger,
  setLeaving: (leaving: boolean) => void,
): Promise<void> {
  const leaveFor = options.leaveFor ?? 0;
  if (leaveFor === 0 || force.aborted) return;
  setLeaving(true);
  logger.info("Leaving: failing health checks before shutdown", { leaveFor });
  const signal = options.signal === undefined
    ? force
    : AbortSignal.any([force, options.signal]);
  await delay(leaveFor, { signal }).catch(() => {});
  setLeaving(false);
}

/**
 * Runs a shutdown: stop accepting, drain every session until `force` is
 * aborted (by the timeout, `options.signal` or `close()`), then close what
 * is left.
 *
 * @typeParam T The message type.
 * @param target The server's parts.
 * @param options Timeout and a signal that forces the shutdown.
 * @param force Aborted to force every session shut at once.
 * @returns What was drained and what was cut.
 */
export async function runShutdown<T>(
  target: ShutdownTarget<T>,
  options: ShutdownOptions,
  force: AbortController,
): Promise<ShutdownReport> {
  const started = performance.now();
  const timeout = options.timeout ?? 10_000;
  const cancelTimer = after(
    timeout,
    () => force.abort(new ClosedError("Shutdown timeout passed")),
  );
  const onSignal = () => force.abort(options.signal!.reason);
  if (options.signal?.aborted) onSignal();
  options.signal?.addEventListener("abort", onSignal, { once: true });
  target.acceptor.stop();
  let sessions: SessionImpl<T>[] = [];
  let results: DrainResult[];
  try {
    // Connections still in their PROXY header are aborted by stop().
    await abortable(target.acceptor.settled(), force.signal).catch(() => {});
    sessions = [...target.sessions];
    target.logger.info("Shutting down", {
      sessions: sessions.length,
      timeout,
    });
    results = await Promise.all(
      sessions.map((session) => session.drain(force.signal, target.onDrain)),
    );
    // A forced shutdown skipped the waits above: finish them now, so the
    // port is free and no session is left once the report is out.
    await target.acceptor.settled();
    for (const session of target.sessions) {
      session.close(new ClosedError("Server closed"));
    }
  } finally {
    cancelTimer();
    options.signal?.removeEventListener("abort", onSignal);
    target.stopTimers();
  }
  const report = reportOf(sessions, results, started);
  target.logger[report.forced > 0 ? "warn" : "info"]("Shutdown complete", {
    ...report,
  });
  return report;
}

/** Sums up what each session's drain did. */
function reportOf<T>(
  sessions: readonly SessionImpl<T>[],
  results: readonly DrainResult[],
  started: number,
): ShutdownReport {
  const report: ShutdownReport = {
    sessions: sessions.length,
    drained: 0,
    forced: 0,
    handlersCut: 0,
    refused: 0,
    dropped: 0,
    requestsCut: 0,
    durationMs: Math.round(performance.now() - started),
    forcedSessions: [],
  };
  results.forEach((cut, i) => {
    if (cut.forced) {
      report.forced++;
      const session = sessions[i]!;
      report.forcedSessions.push({
        session: session.id,
        remote: formatAddr(session.remoteAddr),
        reasons: cut.reasons,
      });
    } else report.drained++;
    report.handlersCut += cut.handlers;
    report.refused += cut.refused;
    report.dropped += cut.dropped;
    report.requestsCut += cut.requests;
  });
  return report;
}
