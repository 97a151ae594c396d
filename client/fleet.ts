/**
 * The client's fleet: which endpoints it has (from a fixed list or from
 * discovery), and how each is doing. An endpoint that keeps failing —
 * connection attempts, or requests that time out or lose their session — is
 * ejected as an outlier: its sessions take no requests for a while, which
 * doubles with each ejection that follows soon after the last, and its
 * slots wait as long before they try again. Endpoints that discovery no
 * longer lists are drained, not cut: in-flight requests complete.
 *
 * @module
 */

import {
  type Endpoint,
  formatEndpoint,
  parseEndpoint,
} from "../transport/connect.ts";
import type { SessionImpl } from "../session/session.ts";
import { ClosedError, ConnectionClosedError, TimeoutError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { countOption, timeoutOption } from "../_util.ts";
import { after } from "../_timeouts.ts";
import type { PoolFleet } from "./pool.ts";
import { type EndpointSource, runDiscovery, sourceName } from "./discovery.ts";
import type { Router } from "./router.ts";
import type {
  ClientEventDetail,
  EjectionOptions,
  EndpointStats,
} from "./types.ts";

/** How outliers are ejected; checked. */
export interface EjectionSettings {
  consecutiveFailures: number;
  baseTime: number;
  maxTime: number;
  maxPercent: number;
}

/**
 * Checks the `ejection` option and fills in its defaults.
 *
 * @returns The settings, or `undefined` when ejection is off.
 * @throws {RangeError} A number is out of range.
 */
export function ejectionSettings(
  options: EjectionOptions | false | undefined,
): EjectionSettings | undefined {
  if (options === false) return undefined;
  options ??= {};
  const baseTime = timeoutOption(
    options.baseTime ?? 1000,
    "ejection.baseTime",
  );
  const maxTime = timeoutOption(options.maxTime ?? 30_000, "ejection.maxTime");
  const maxPercent = options.maxPercent ?? 50;
  if (!(maxPercent >= 0 && maxPercent <= 100)) {
    throw new RangeError(
      `Cannot use ejection.maxPercent ${maxPercent}: expected 0 to 100`,
    );
  }
  return {
    consecutiveFailures: countOption(
      options.consecutiveFailures ?? 5,
      "ejection.consecutiveFailures",
      1,
    ),
    baseTime,
    maxTime: Math.max(baseTime, maxTime),
    maxPercent,
  };
}

/** What the fleet needs of its client. */
export interface FleetHost<T> {
  router: Router<T>;
  logger: Logger;
  emit(detail: ClientEventDetail): void;
  /** Milliseconds a removed endpoint's sessions may take to drain. */
  drainTimeout: number;
  /** Adds slots for a new endpoint. */
  add(endpoint: Endpoint): void;
  /** Retires an endpoint's slots and drains its sessions. */
  remove(name: string, timeout: number): Promise<void>;
  /** The ready sessions of an endpoint. */
  readySessions(name: string): SessionImpl<T>[];
  /** Every open session (each knows its endpoint). */
  sessions(): Iterable<SessionImpl<T>>;
}

/** One endpoint of the fleet and its health. */
interface Member {
  readonly endpoint: Endpoint;
  state: "active" | "ejected" | "draining";
  /** Failed connection attempts in a row. */
  connectFailures: number;
  /** Failed requests in a row. */
  requestFailures: number;
  ejections: number;
  /** Ejections in a row (each soon after the last return). */
  streak: number;
  ejectedUntil: number;
  returnedAt: number;
  cancelReturn: (() => void) | undefined;
}

/**
 * The endpoints of one client and their health.
 *
 * @typeParam T The message type.
 */
export class Fleet<T> implements PoolFleet {
  readonly #host: FleetHost<T>;
  readonly #ejection: EjectionSettings | undefined;
  readonly #source: EndpointSource | undefined;
  readonly #members = new Map<string, Member>();
  readonly #stopDiscovery = new AbortController();
  #discovering: Promise<void> = Promise.resolve();
  #updates = 0;
  #discoveryErrors = 0;
  #closed = false;

  constructor(
    host: FleetHost<T>,
    ejection: EjectionSettings | undefined,
    source: EndpointSource | undefined,
  ) {
    this.#host = host;
    this.#ejection = ejection;
    this.#source = source;
  }

  /**
   * Whether request outcomes are watched: ejection is on and there is
   * another endpoint to send requests to.
   */
  get watching(): boolean {
    return this.#ejection !== undefined && this.#members.size > 1;
  }

  /** The endpoints now in the fleet (draining ones included). */
  get size(): number {
    return this.#members.size;
  }

  /**
   * Makes the fleet exactly `list`: new endpoints get slots, endpoints no
   * longer listed are drained. Entries are parsed and deduplicated by name.
   *
   * @returns The names added and removed.
   * @throws {TypeError} An entry is not an endpoint (nothing is changed).
   */
  update(list: ReadonlyArray<string | Endpoint>): {
    added: string[];
    removed: string[];
  } {
    const wanted = new Map<string, Endpoint>();
    for (const entry of list) {
      const endpoint = parseEndpoint(entry);
      wanted.set(formatEndpoint(endpoint), endpoint);
    }
    const added: string[] = [];
    const removed: string[] = [];
    for (const [name, member] of this.#members) {
      if (!wanted.has(name) && member.state !== "draining") {
        removed.push(name);
        this.#remove(name, member);
      }
    }
    for (const [name, endpoint] of wanted) {
      // One still draining from an earlier removal is replaced: its old
      // sessions finish, new slots start at once.
      if (
        this.#members.has(name) && this.#members.get(name)!.state !== "draining"
      ) continue;
      added.push(name);
      this.#members.set(name, newMember(endpoint));
      this.#host.add(endpoint);
      this.#host.emit({ type: "endpoint-added", endpoint: name });
    }
    return { added, removed };
  }

  #remove(name: string, member: Member): void {
    member.state = "draining";
    member.cancelReturn?.();
    this.#host.emit({ type: "endpoint-removed", endpoint: name });
    this.#host.logger.info("Endpoint left the fleet: draining", {
      endpoint: name,
    });
    void this.#host.remove(name, this.#host.drainTimeout).finally(() => {
      if (this.#members.get(name) === member) this.#members.delete(name);
    });
  }

  routable(name: string): boolean {
    return this.#members.get(name)?.state === "active";
  }

  connected(name: string): void {
    const member = this.#members.get(name);
    if (member !== undefined) member.connectFailures = 0;
  }

  connectFailed(name: string): void {
    const member = this.#members.get(name);
    if (member === undefined) return;
    member.connectFailures++;
    this.#check(name, member, member.connectFailures, "connect failures");
  }

  holdOff(name: string): number {
    const member = this.#members.get(name);
    if (member?.state !== "ejected") return 0;
    return Math.max(0, member.ejectedUntil - performance.now());
  }

  /**
   * Follows a routed request to learn its endpoint's health: a reply counts
   * as a success, a timeout or a lost session as a failure; anything else
   * (the server's handler failed, the caller aborted) tells nothing.
   *
   * @returns The request's own promise, settled the same way.
   */
  watch<R>(session: SessionImpl<T>, request: Promise<R>): Promise<R> {
    const name = session.endpoint as string;
    return request.then(
      (reply) => {
        const member = this.#members.get(name);
        if (member !== undefined) member.requestFailures = 0;
        return reply;
      },
      (error) => {
        if (
          error instanceof TimeoutError ||
          error instanceof ConnectionClosedError
        ) {
          const member = this.#members.get(name);
          if (member !== undefined) {
            member.requestFailures++;
            this.#check(
              name,
              member,
              member.requestFailures,
              "failed requests",
            );
          }
        }
        throw error;
      },
    );
  }

  /** Ejects the endpoint if it failed often enough and the fleet can spare it. */
  #check(name: string, member: Member, failures: number, what: string): void {
    const ejection = this.#ejection;
    if (
      ejection === undefined || this.#closed || member.state !== "active" ||
      failures < ejection.consecutiveFailures || !this.#mayEject()
    ) return;
    const now = performance.now();
    if (now - member.returnedAt > ejection.maxTime) member.streak = 0;
    member.streak++;
    member.ejections++;
    const duration = Math.min(
      ejection.maxTime,
      ejection.baseTime * 2 ** Math.min(member.streak - 1, 30),
    );
    member.state = "ejected";
    member.ejectedUntil = now + duration;
    member.connectFailures = 0;
    member.requestFailures = 0;
    for (const session of this.#host.readySessions(name)) {
      this.#host.router.remove(session);
    }
    member.cancelReturn = after(duration, () => this.#return(name, member));
    this.#host.logger.warn("Endpoint ejected", {
      endpoint: name,
      failures,
      reason: what,
      duration,
    });
    this.#host.emit({
      type: "endpoint-ejected",
      endpoint: name,
      failures,
      duration,
    });
  }

  /**
   * Whether one more endpoint may be ejected: at least one must stay, and
   * the ejected must not pass `maxPercent` of the fleet.
   */
  #mayEject(): boolean {
    let active = 0;
    let ejected = 0;
    for (const member of this.#members.values()) {
      if (member.state === "active") active++;
      else if (member.state === "ejected") ejected++;
    }
    const total = active + ejected;
    return active > 1 &&
      (ejected + 1) * 100 <= total * this.#ejection!.maxPercent;
  }

  #return(name: string, member: Member): void {
    member.cancelReturn = undefined;
    if (member.state !== "ejected") return;
    member.state = "active";
    member.returnedAt = performance.now();
    const router = this.#host.router;
    for (const session of this.#host.readySessions(name)) {
      if (!router.has(session)) router.add(session);
    }
    router.wake();
    this.#host.logger.info("Endpoint returned", { endpoint: name });
    this.#host.emit({ type: "endpoint-returned", endpoint: name });
  }

  /** Each endpoint's state, sessions and failures. */
  stats(): EndpointStats[] {
    const now = performance.now();
    const open = new Map<unknown, { ready: number; pending: number }>();
    for (const session of this.#host.sessions()) {
      let entry = open.get(session.endpoint);
      if (entry === undefined) {
        entry = { ready: 0, pending: 0 };
        open.set(session.endpoint, entry);
      }
      if (session.state === "ready") entry.ready++;
      entry.pending += session.pendingCount;
    }
    const stats: EndpointStats[] = [];
    for (const [name, member] of this.#members) {
      const { ready, pending } = open.get(name) ?? { ready: 0, pending: 0 };
      stats.push({
        endpoint: name,
        state: member.state,
        ready,
        pending,
        connectFailures: member.connectFailures,
        requestFailures: member.requestFailures,
        ejections: member.ejections,
        ejectedFor: member.state === "ejected"
          ? Math.max(0, Math.round(member.ejectedUntil - now))
          : 0,
      });
    }
    return stats;
  }

  /** Lists applied from discovery, and discovery failures. */
  get discovery(): { updates: number; errors: number } {
    return { updates: this.#updates, errors: this.#discoveryErrors };
  }

  /**
   * Follows the endpoint source, if there is one, until {@linkcode close}:
   * each list it gives is applied.
   */
  start(): void {
    const source = this.#source;
    if (source === undefined) return;
    const name = sourceName(source);
    const { logger, emit } = this.#host;
    this.#discovering = runDiscovery(source, {
      update: (list) => {
        const { added, removed } = this.update(list);
        this.#updates++;
        if (added.length > 0 || removed.length > 0) {
          logger.info("Endpoints changed", { source: name, added, removed });
        }
      },
      failed: (error) => {
        this.#discoveryErrors++;
        logger.warn("Endpoint discovery failed", { source: name, error });
        emit({ type: "error", endpoint: name, error });
      },
    }, this.#stopDiscovery.signal);
  }

  /**
   * Stops discovery and the ejection timers (the client closes).
   *
   * @returns Resolves once the discovery loop has stopped.
   */
  close(): Promise<void> {
    this.#closed = true;
    this.#stopDiscovery.abort(new ClosedError("Client is closed"));
    for (const member of this.#members.values()) member.cancelReturn?.();
    return this.#discovering;
  }
}

function newMember(endpoint: Endpoint): Member {
  return {
    endpoint,
    state: "active",
    connectFailures: 0,
    requestFailures: 0,
    ejections: 0,
    streak: 0,
    ejectedUntil: 0,
    returnedAt: -Infinity,
    cancelReturn: undefined,
  };
}
