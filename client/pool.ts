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
import { after } from "../_timeouts.ts";
import type { Router } from "./router.ts";
import { Slot, type SlotHost } from "./slot.ts";
import type { ClientEventDetail } from "./types.ts";
import type { ClientSetup } from "./client.ts";
import { Fleet } from "./fleet.ts";
import { withResolvers } from "../_util.ts";

/**
 * What the pool asks of the client's fleet (`fleet.ts`): whether an
 * endpoint takes requests, and what happened to its connections.
 */
export interface PoolFleet {
  /** Whether requests may go to the endpoint (false while it is ejected). */
  routable(name: string): boolean;
  /** A session to the endpoint became ready. */
  connected(name: string): void;
  /** A connection attempt to the endpoint failed. */
  connectFailed(name: string): void;
  /** Milliseconds the endpoint is to be left alone (ejected). */
  holdOff(name: string): number;
}

/** What the pool is made of. */
export interface PoolOptions<T> {
  /** The client's resolved options. */
  setup: ClientSetup<T>;
  config: SessionConfig<T>;
  router: Router<T>;
  emit(detail: ClientEventDetail): void;
  /** Every slot gave up reconnecting: `error` is what the waiting get. */
  gaveUp(error: NoSessionError): void;
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
  /** The endpoints, their health, and where they come from. */
  readonly fleet: Fleet<T>;
  readonly #stop = new AbortController();
  readonly #slots: Slot<T>[] = [];
  /** Sessions open (handshaking, ready or draining). */
  readonly #sessions = new Set<SessionImpl<T>>();
  readonly #firstReady = withResolvers<void>();
  readonly #router: Router<T>;
  readonly #emit: (detail: ClientEventDetail) => void;
  readonly #gaveUp: (error: NoSessionError) => void;
  readonly #sessionsPerEndpoint: number;
  #started = false;
  #reconnects = 0;

  constructor(options: PoolOptions<T>) {
    const { setup, router, emit } = options;
    this.config = options.config;
    this.logger = setup.logger;
    this.tls = setup.options.tls;
    this.connectTimeout = setup.connectTimeout;
    this.framed = setup.dialect.framed;
    this.onConnect = setup.options.onConnect;
    this.reconnect = setup.options.reconnect ?? {};
    this.#router = router;
    this.#emit = emit;
    this.#gaveUp = options.gaveUp;
    this.#sessionsPerEndpoint = setup.sessionsPerEndpoint;
    this.#firstReady.promise.catch(() => {});
    this.fleet = new Fleet<T>(
      {
        router,
        logger: setup.logger,
        emit,
        drainTimeout: setup.drainTimeout,
        add: (endpoint) => this.addEndpoint(endpoint),
        remove: (name, timeout) => this.removeEndpoint(name, timeout),
        readySessions: (name) => this.readySessions(name),
        sessions: () => this.#sessions,
      },
      setup.ejection,
      setup.source,
    );
    this.fleet.update(setup.endpoints);
  }

  /**
   * Adds `sessionsPerEndpoint` slots for `endpoint` (started at once if the
   * pool is).
   */
  addEndpoint(endpoint: Endpoint): void {
    for (let i = 0; i < this.#sessionsPerEndpoint; i++) {
      const slot = new Slot(endpoint, this);
      this.#slots.push(slot);
      if (this.#started) slot.start();
    }
  }

  /**
   * Retires the slots of the endpoint named `name`: they stop connecting,
   * their sessions take no new requests and drain (in-flight requests
   * complete), closed at the latest after `timeout` ms.
   *
   * @returns Resolves once every session of the endpoint has closed.
   */
  async removeEndpoint(name: string, timeout: number): Promise<void> {
    const leaving = this.#slots.filter((slot) => slot.name === name);
    const reason = new ClosedError(`Endpoint ${name} left the fleet`);
    const grace = new AbortController();
    const cancelTimer = after(timeout, () => grace.abort(reason));
    try {
      await Promise.all(leaving.map(async (slot) => {
        const session = slot.session;
        slot.retire(reason);
        if (session !== undefined) {
          this.#router.remove(session);
          await session.drain(grace.signal);
        }
        await slot.done;
      }));
    } finally {
      cancelTimer();
      for (const slot of leaving) {
        const i = this.#slots.indexOf(slot);
        if (i >= 0) this.#slots.splice(i, 1);
      }
    }
  }

  /** The sessions to the endpoint named `name` that passed their handshake. */
  readySessions(name: string): SessionImpl<T>[] {
    const ready: SessionImpl<T>[] = [];
    for (const slot of this.#slots) {
      const session = slot.session;
      if (
        slot.name === name && slot.state === "ready" && session !== undefined &&
        session.state === "ready"
      ) ready.push(session);
    }
    return ready;
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

  /**
   * Whether every slot gave up reconnecting. A pool without slots (its
   * discovery has found nothing yet) has not: endpoints may come.
   */
  allStopped(): boolean {
    return this.#slots.length > 0 &&
      this.#slots.every((slot) => slot.state === "stopped");
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
    this.#started = true;
    for (const slot of this.#slots) slot.start();
    this.fleet.start();
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
    this.fleet.connected(slot.name);
    // An ejected endpoint's session waits for the endpoint's return.
    if (this.fleet.routable(slot.name)) this.#router.add(session);
    this.#emit({ type: "ready", endpoint: slot.name, session: session.id });
    this.#firstReady.resolve();
    this.#router.wake();
  }

  holdOff(slot: Slot<T>): number {
    return this.fleet.holdOff(slot.name);
  }

  failed(
    slot: Slot<T>,
    error: unknown,
    mismatch: ProtocolMismatchError | undefined,
  ): void {
    this.fleet.connectFailed(slot.name);
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
    const noSession = () =>
      new NoSessionError("Cannot send request: every slot gave up", {
        cause: error,
      });
    this.#router.rejectAll(noSession);
    this.#gaveUp(noSession());
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
