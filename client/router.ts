/**
 * The client's router: which sessions take requests, which one the next
 * request goes to, and the queue of requests waiting for one to be ready.
 *
 * @module
 */

import type { Pending, PendingOwner } from "../_correlation.ts";
import type { Timed, Timeouts } from "../_timeouts.ts";
import type { SessionImpl } from "../session/session.ts";
import { NoSessionError } from "../errors.ts";
import { pickOfTwo } from "./balance.ts";
import { withResolvers } from "../_util.ts";

/** How requests pick a ready session (see `DialOptions.routing`). */
export type Routing = "round-robin" | "least-pending" | "p2c";

/** What the router is told once, when the client is made. */
export interface RouterOptions {
  /** How requests pick a ready session. */
  routing: Routing;
  /** Whether a request waits for a session when none is ready (the default of each call). */
  waitForSession: boolean;
  /** Requests that may wait at once. */
  maxWaitingRequests: number;
  /** Where waiters' deadlines are swept (the client's, shared with its requests). */
  timeouts: Timeouts;
  /** Whether every slot gave up reconnecting: no session will come. */
  gaveUp(): boolean;
  /** Why the last connection attempt failed, as the cause of `NoSessionError`. */
  lastError(): unknown;
}

/** A request waiting for a ready session. */
interface Waiter<T> extends Timed {
  settled: boolean;
  resolve(session: SessionImpl<T>): void;
  reject(reason: unknown): void;
}

/**
 * Ready sessions and the waiting queue.
 *
 * @typeParam T The message type.
 */
export class Router<T> {
  readonly #options: RouterOptions;
  readonly #ready: SessionImpl<T>[] = [];
  /** Requests waiting for a ready session, in order (a Set: O(1) removal). */
  readonly #waiters = new Set<Waiter<T>>();
  #roundRobin = 0;
  #retried = 0;

  constructor(options: RouterOptions) {
    this.#options = options;
  }

  /** Requests waiting for a session. */
  get waiting(): number {
    return this.#waiters.size;
  }

  /** Requests sent again on another session. */
  get retried(): number {
    return this.#retried;
  }

  /** Takes requests on `session` from now on (call {@linkcode wake} after). */
  add(session: SessionImpl<T>): void {
    this.#ready.push(session);
  }

  /** Whether requests are routed to `session` now. */
  has(session: SessionImpl<T>): boolean {
    return this.#ready.includes(session);
  }

  /** Stops routing to `session` (it drains or closed); no-op if not routed. */
  remove(session: SessionImpl<T>): void {
    const i = this.#ready.indexOf(session);
    if (i >= 0) this.#ready.splice(i, 1);
  }

  /** The session the next request goes to, if any is ready. */
  pick(): SessionImpl<T> | undefined {
    const ready = this.#ready;
    const n = ready.length;
    if (n === 0) return undefined;
    if (n === 1) return ready[0];
    const routing = this.#options.routing;
    if (routing === "p2c") return pickOfTwo(ready);
    if (routing === "least-pending") {
      let best = ready[0]!;
      for (let i = 1; i < n; i++) {
        const s = ready[i]!;
        if (s.pendingCount < best.pendingCount) best = s;
      }
      return best;
    }
    const i = this.#roundRobin++ % n;
    if (this.#roundRobin >= 0x3fff_ffff) this.#roundRobin = 0;
    return ready[i];
  }

  /** A ready session other than `from`, routed as usual. */
  pickOther(from: PendingOwner): SessionImpl<T> | undefined {
    const session = this.pick();
    if (session !== from && session?.state === "ready") return session;
    return this.#ready.find((s) => s !== from && s.state === "ready");
  }

  /**
   * Sends a request again on another ready session (its own could not
   * deliver it), or waits for one within the request's own deadline. It
   * keeps its id, so its reply is matched as before.
   */
  retry(entry: Pending, bytes: Uint8Array): void {
    const from = entry.owner;
    // While it waits it stays its endpoint's: a reply from another session
    // to that endpoint still completes it (see the dispatcher).
    entry.move({
      pendingCount: 0,
      requestSettled: () => {},
      unkeyed: () => [],
      endpoint: (from as { endpoint?: unknown }).endpoint,
    } as PendingOwner);
    // Bytes from a read or write buffer: a copy of their own while they wait.
    entry.copy = bytes;
    const session = this.pickOther(from);
    if (session !== undefined) {
      this.#retried++;
      return session.adopt(entry, bytes);
    }
    const deadline = entry.deadline;
    const left = deadline < 0
      ? entry.timeout
      : Math.max(0, deadline - performance.now());
    // The wait ends with the request (its deadline, its signal).
    const gone = new AbortController();
    const end = () => gone.abort();
    entry.onSettled(end);
    this.wait(left, gone.signal, undefined).then(
      (ready) => {
        if (entry.settled) return;
        this.#retried++;
        ready.adopt(entry, bytes);
      },
      (error) => entry.fail(error),
    );
  }

  /**
   * Waits for a ready session, at most `timeout` ms, unless waiting is off
   * (`wait`, else the client's default), every slot gave up or the queue is
   * full: then it rejects at once with `NoSessionError`. `signal` takes the
   * request out of the queue with its reason.
   */
  wait(
    timeout: number,
    signal: AbortSignal | undefined,
    wait: boolean | undefined,
  ): Promise<SessionImpl<T>> {
    const refused = this.#refuse(wait);
    if (refused !== undefined) return Promise.reject(refused);
    if (signal?.aborted) return Promise.reject(signal.reason);
    const { promise, resolve, reject } = withResolvers<
      SessionImpl<T>
    >();
    const timeouts = this.#options.timeouts;
    const onAbort = () => waiter.reject(signal!.reason);
    const finish = () => {
      waiter.settled = true;
      timeouts.delete(waiter);
      signal?.removeEventListener("abort", onAbort);
      this.#waiters.delete(waiter);
    };
    const waiter: Waiter<T> = {
      deadline: performance.now() + timeout,
      tick: 0,
      settled: false,
      resolve: (session) => {
        if (waiter.settled) return;
        finish();
        resolve(session);
      },
      reject: (reason) => {
        if (waiter.settled) return;
        finish();
        reject(reason);
      },
      expire: () =>
        waiter.reject(
          new NoSessionError(
            `Cannot send request: no session became ready within ${timeout} ms`,
            { cause: this.#options.lastError() },
          ),
        ),
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    this.#waiters.add(waiter);
    timeouts.add(waiter);
    return promise;
  }

  /** Why a request may not wait for a session, if it may not. */
  #refuse(wait: boolean | undefined): NoSessionError | undefined {
    const options = this.#options;
    if ((wait ?? options.waitForSession) === false) {
      return new NoSessionError("Cannot send request: no session is ready", {
        cause: options.lastError(),
      });
    }
    if (options.gaveUp()) {
      return new NoSessionError(
        "Cannot send request: every session slot gave up reconnecting",
        { cause: options.lastError() },
      );
    }
    if (this.#waiters.size >= options.maxWaitingRequests) {
      return new NoSessionError(
        "Cannot send request: no session is ready and the waiting queue is full",
      );
    }
    return undefined;
  }

  /** Hands ready sessions to waiting requests, in order, while any is ready. */
  wake(): void {
    for (const waiter of this.#waiters) {
      const session = this.pick();
      if (session === undefined) return;
      waiter.resolve(session);
    }
  }

  /** Rejects every waiting request, each with an error of its own. */
  rejectAll(error: () => unknown): void {
    for (const waiter of [...this.#waiters]) waiter.reject(error());
  }
}
