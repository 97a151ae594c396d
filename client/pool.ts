/**
 * The client's pool: its slots (one reconnecting session each), the
 * sessions they opened, and whether the client has had a ready session yet.
 * The slots report here; the pool routes ready sessions, counts and names
 * what happened, and turns it into client events.
 *
 * @module
 */

import { type Endpoint, formatEndpoint } from "../transport/connect.ts";
import type { SessionConfig, SessionImpl } from "../session/session.ts";
import type { Logger } from "../logger.ts";
import {
  ClosedError,
  NoSessionError,
  type ProtocolMismatchError,
  type RetryExhaustedError,
} from "../errors.ts";
import type { Router } from "./router.ts";
import { Slot, type SlotHost } from "./slot.ts";
import type { ClientEventDetail, DialOptions } from "./types.ts";

/** What the pool is made of. */
export interface PoolOptions<T> {
  endpoints: readonly Endpoint[];
  sessionsPerEndpoint: number;
  /** Milliseconds (`Infinity` = none). */
  connectTimeout: number;
  framed: boolean;
  /** The user's options: `tls`, `onConnect`, `reconnect`. */
  options: DialOptions<T>;
  config: SessionConfig<T>;
  logger: Logger;
  router: Router<T>;
  emit(detail: ClientEventDetail): void;
}

/**
 * The slots of a client and the sessions they opened.
 *
 * @typeParam T The message type.
 */
export class Pool<T> implements SlotHost<T> {
  readonly config: SessionConfig<T>;
  readonly logger: Logger;
  readonly tls: SlotHost<T>["tls"];
  readonly connectTimeout: number;
  readonly framed: boolean;
  readonly onConnect: SlotHost<T>["onConnect"];
  readonly reconnect: SlotHost<T>["reconnect"];
  readonly #stop = new AbortController();
  readonly #slots: Slot<T>[] = [];
  /** Sessions open (handshaking, ready or draining). */
  readonly #sessions = new Set<SessionImpl<T>>();
  readonly #firstReady = Promise.withResolvers<void>();
  readonly #router: Router<T>;
  readonly #emit: (detail: ClientEventDetail) => void;
  #reconnects = 0;

  constructor(options: PoolOptions<T>) {
    this.config = options.config;
    this.logger = options.logger;
    this.tls = options.options.tls;
    this.connectTimeout = options.connectTimeout;
    this.framed = options.framed;
    this.onConnect = options.options.onConnect;
    this.reconnect = options.options.reconnect ?? {};
    this.#router = options.router;
    this.#emit = options.emit;
    this.#firstReady.promise.catch(() => {});
    for (const endpoint of options.endpoints) {
      for (let i = 0; i < options.sessionsPerEndpoint; i++) {
        this.#slots.push(new Slot(endpoint, this));
      }
    }
  }

  /** Aborts when the pool closes: the slots stop. */
  get stop(): AbortSignal {
    return this.#stop.signal;
  }

  /** The sessions open now. */
  get sessions(): ReadonlySet<SessionImpl<T>> {
    return this.#sessions;
  }

  /**
   * Resolves once a session is ready; rejects when a peer speaks another
   * protocol, every slot gave up, or the pool closed first.
   */
  get firstReady(): Promise<void> {
    return this.#firstReady.promise;
  }

  /** Reconnect attempts made. */
  get reconnects(): number {
    return this.#reconnects;
  }

  /** Slots opening a connection (no session yet). */
  get connecting(): number {
    let n = 0;
    for (const slot of this.#slots) if (slot.state === "connecting") n++;
    return n;
  }

  /** Whether every slot gave up reconnecting. */
  allStopped(): boolean {
    return this.#slots.every((slot) => slot.state === "stopped");
  }

  /** Why the first slot that failed last failed, if one did. */
  lastError(): unknown {
    for (const slot of this.#slots) {
      if (slot.lastError !== undefined) return slot.lastError;
    }
    return undefined;
  }

  /** Starts the slots. */
  start(): void {
    for (const slot of this.#slots) slot.start();
  }

  /**
   * Stops the slots and fails whatever waits for a session. The sessions
   * stay open: the client drains them.
   */
  close(): void {
    this.#stop.abort(new ClosedError("Client is closed"));
    this.#router.rejectAll(() =>
      new ClosedError("Cannot send request: client is closed")
    );
    this.#firstReady.reject(new ClosedError("Client is closed"));
  }

  /** Resolves once every slot stopped. */
  async done(): Promise<void> {
    await Promise.all(this.#slots.map((slot) => slot.done));
  }

  /** The server asked a session to drain: say so. */
  drained(session: SessionImpl<T>): void {
    const slot = this.#slots.find((s) => s.session === session);
    this.#emit({
      type: "drain",
      endpoint: slot?.name ?? formatEndpointOf(session),
      session: session.id,
    });
  }

  /** A session closed: forget it, and say so. */
  sessionClosed(session: SessionImpl<T>): void {
    this.#sessions.delete(session);
    const slot = this.#slots.find((s) => s.session === session);
    this.logger.info("Session closed", {
      session: session.id,
      reason: session.closeReason,
    });
    this.#emit({
      type: "disconnect",
      endpoint: slot?.name ?? formatEndpointOf(session),
      session: session.id,
      reason: session.closeReason,
    });
  }

  opened(slot: Slot<T>, session: SessionImpl<T>): void {
    this.#sessions.add(session);
    this.#emit({ type: "connect", endpoint: slot.name, session: session.id });
  }

  ready(slot: Slot<T>, session: SessionImpl<T>): void {
    this.#router.add(session);
    this.#emit({ type: "ready", endpoint: slot.name, session: session.id });
    this.#firstReady.resolve();
    this.#router.wake();
  }

  failed(
    slot: Slot<T>,
    error: unknown,
    mismatch: ProtocolMismatchError | undefined,
  ): void {
    this.#emit({ type: "error", endpoint: slot.name, error });
    if (mismatch !== undefined) this.#firstReady.reject(mismatch);
  }

  reconnecting(slot: Slot<T>, attempt: number, delay: number): void {
    this.#reconnects++;
    this.#emit({
      type: "reconnecting",
      endpoint: slot.name,
      attempt,
      delay,
    });
  }

  stopped(slot: Slot<T>, error: RetryExhaustedError): void {
    this.#emit({ type: "error", endpoint: slot.name, error });
    if (!this.allStopped()) return;
    this.#firstReady.reject(error);
    this.#router.rejectAll(() =>
      new NoSessionError("Cannot send request: every slot gave up", {
        cause: error,
      })
    );
  }
}

function formatEndpointOf<T>(session: SessionImpl<T>): string {
  const addr = session.remoteAddr;
  return addr.transport === "tcp"
    ? formatEndpoint(addr)
    : addr.transport === "unix"
    ? `unix:${addr.path}`
    : "unknown";
}
