/**
 * A fault-injection TCP proxy for reliability tests: it sits between a client
 * and a server on loopback and can add latency, split writes into single
 * bytes, cut connections in the middle of a frame, swallow traffic (a
 * half-open link), read slowly (backpressure) or refuse connections. Faults
 * are switched at run time and apply to open and new connections alike.
 *
 * Every internal loop is tracked: {@linkcode FaultProxy.close} closes the
 * listener and every connection, clears every timer and resolves once all of
 * it has stopped, so Deno's op and resource sanitizers pass.
 *
 * @module
 */

import { ClosedError } from "../errors.ts";

/** Where the proxy forwards its connections to. */
export interface FaultProxyTarget {
  /** Host of the upstream server, e.g. `"127.0.0.1"`. */
  hostname: string;
  /** Port of the upstream server. */
  port: number;
}

/** Options of {@linkcode startFaultProxy}. */
export interface FaultProxyOptions {
  /** The upstream server every accepted connection is forwarded to. */
  target: FaultProxyTarget;
  /**
   * The loopback address to listen on (always port 0).
   *
   * @default {"127.0.0.1"}
   */
  hostname?: "127.0.0.1";
}

/**
 * Which way data flows: `"up"` is client → server (read from the downstream
 * connection, written upstream), `"down"` is server → client.
 */
export type FaultDirection = "up" | "down";

/** Options of {@linkcode FaultProxy.slowRead}. */
export interface SlowReadOptions {
  /**
   * Milliseconds between two reads.
   *
   * @default {5}
   */
  intervalMs?: number;
  /**
   * Which side is read slowly: `"up"` reads slowly from the client (the
   * downstream connection), `"down"` from the server, `"both"` from both.
   *
   * @default {"up"}
   */
  direction?: FaultDirection | "both";
}

/** Options of {@linkcode FaultProxy.resetMidFrame}. */
export interface ResetMidFrameOptions {
  /**
   * Also cut every connection opened later, at its first chunk, until
   * {@linkcode FaultProxy.heal} is called. By default only the connections
   * open now are cut.
   *
   * @default {false}
   */
  persistent?: boolean;
}

/** Options of the waiting methods of {@linkcode FaultProxy}. */
export interface FaultProxyWaitOptions {
  /** Stops waiting: the promise rejects with `signal.reason`. */
  signal?: AbortSignal;
}

/** Bytes the proxy has written, per direction. */
export interface BytesForwarded {
  /** Client → server bytes written upstream. */
  up: number;
  /** Server → client bytes written downstream. */
  down: number;
}

/**
 * A running fault-injection proxy, made by {@linkcode startFaultProxy}.
 *
 * Every fault setter takes effect at once on open connections (at their next
 * chunk) and on new ones. {@linkcode FaultProxy.heal} clears them all.
 */
export interface FaultProxy extends AsyncDisposable {
  /**
   * The address the proxy listens on (127.0.0.1, a port chosen by the OS),
   * ready to pass to `Deno.connect`.
   */
  readonly addr: Deno.NetAddr & { transport: "tcp" };
  /** Connections being forwarded now (cut or closed ones are not counted). */
  readonly connections: number;
  /** Connections accepted since the start, refused ones included. */
  readonly accepted: number;
  /** Connections closed at once because {@linkcode FaultProxy.refuse} was on. */
  readonly refused: number;
  /** Connections cut by {@linkcode FaultProxy.resetMidFrame} or {@linkcode FaultProxy.resetAll}. */
  readonly resets: number;
  /** A snapshot of the bytes written so far, per direction. */
  readonly bytesForwarded: BytesForwarded;
  /** Whether {@linkcode FaultProxy.close} was called. */
  readonly isClosed: boolean;

  /**
   * Delays every forwarded chunk by `ms` milliseconds after it was read,
   * keeping the order. Chunks already waiting pick up the new value.
   *
   * @param ms The delay; 0 turns it off.
   * @throws {RangeError} If `ms` is negative or not finite.
   */
  latency(ms: number): void;
  /**
   * Forwards every chunk in 1-byte writes.
   *
   * @param enabled Whether to fragment.
   */
  fragment(enabled?: boolean): void;
  /**
   * Cuts each open connection at its next chunk, in either direction: half
   * of that chunk is forwarded, then both sides are closed.
   *
   * @param options `persistent`: cut new connections too, until `heal()`.
   */
  resetMidFrame(options?: ResetMidFrameOptions): void;
  /** Closes every open connection now, on both sides. */
  resetAll(): void;
  /**
   * Forwards nothing in either direction while keeping connections open (a
   * half-open link). The proxy stops reading, so bytes wait in the kernel's
   * buffers and one chunk at most in the proxy; `heal()` or
   * `blackhole(false)` delivers them all, in order.
   *
   * @param enabled Whether to swallow traffic.
   */
  blackhole(enabled?: boolean): void;
  /**
   * Reads at most `bytesPerTick` bytes per read, one read every
   * `intervalMs`, so the sender feels TCP backpressure.
   *
   * @param bytesPerTick Bytes per read; 0 turns it off.
   * @param options `intervalMs` and `direction` (`"up"`: the client side).
   * @throws {RangeError} If `bytesPerTick` is not a non-negative integer or
   * `intervalMs` is negative.
   */
  slowRead(bytesPerTick: number, options?: SlowReadOptions): void;
  /**
   * Accepts and closes new connections at once. Open ones are not touched.
   *
   * @param enabled Whether to refuse.
   */
  refuse(enabled?: boolean): void;
  /** Clears every fault, including armed resets: clean forwarding again. */
  heal(): void;

  /**
   * Resolves when the next connection is established (accepted and
   * connected upstream) after this call.
   *
   * @param options `signal` to stop waiting.
   * @returns A promise that resolves on the next connection.
   * @throws {ClosedError} If the proxy is or gets closed first.
   */
  onConnection(options?: FaultProxyWaitOptions): Promise<void>;
  /**
   * Resolves when at least `n` connections are being forwarded at once; at
   * once if that is already the case.
   *
   * @param n How many open connections to wait for.
   * @param options `signal` to stop waiting.
   * @returns A promise that resolves when `connections >= n`.
   * @throws {ClosedError} If the proxy is or gets closed first.
   */
  waitForConnections(n: number, options?: FaultProxyWaitOptions): Promise<void>;

  /**
   * Closes the listener and every connection, clears every timer and waits
   * for every internal loop to end. Idempotent.
   *
   * @returns A promise that resolves once everything has stopped.
   */
  close(): Promise<void>;
}

/**
 * Starts a fault-injection proxy on 127.0.0.1, port 0, forwarding each
 * accepted connection to its own new connection to `options.target`.
 *
 * @param options The target to forward to.
 * @returns The running proxy; close it with `await using` or `close()`.
 * @throws {RangeError} If the target port is not a valid port number.
 *
 * @example Usage
 * ```ts
 * import { startFaultProxy } from "./_fault_proxy.ts";
 * import assert from "node:assert/strict";
 *
 * // An upstream server that answers one connection with "hi".
 * using server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const answered = server.accept().then(async (conn) => {
 *   await conn.write(new TextEncoder().encode("hi"));
 *   conn.close();
 * });
 *
 * await using proxy = startFaultProxy({ target: server.addr });
 * proxy.fragment(true);
 * using client = await Deno.connect(proxy.addr);
 * const buffer = new Uint8Array(2);
 * let received = 0;
 * while (received < 2) {
 *   const n = await client.read(buffer.subarray(received));
 *   if (n === null) break;
 *   received += n;
 * }
 * await answered;
 * assert.equal(new TextDecoder().decode(buffer), "hi");
 * ```
 */
export function startFaultProxy(options: FaultProxyOptions): FaultProxy {
  const { target } = options;
  if (
    !Number.isInteger(target.port) || target.port < 1 || target.port > 65535
  ) {
    throw new RangeError(
      `Cannot start fault proxy: target port ${target.port} is not a valid port`,
    );
  }
  return new FaultProxyImpl(options);
}

// ---------------------------------------------------------------------------
// Internals

const CHUNK_BYTES = 16 * 1024;

interface SlowRead {
  bytes: number;
  intervalMs: number;
  direction: FaultDirection | "both";
}

/** Faults, counters and the wake-up list shared by the proxy and its pairs. */
class State {
  latencyMs = 0;
  fragment = false;
  blackhole = false;
  slowRead: SlowRead | undefined = undefined;
  refuse = false;
  resetPersistent = false;
  resets = 0;
  bytes: BytesForwarded = { up: 0, down: 0 };
  #wakers = new Set<() => void>();

  /** Wakes every loop waiting on a change or pausing. */
  wake(): void {
    const wakers = [...this.#wakers];
    this.#wakers.clear();
    for (const wake of wakers) wake();
  }

  /** Resolves at the next {@linkcode State.wake}. */
  changed(): Promise<void> {
    return new Promise((resolve) => this.#wakers.add(resolve));
  }

  /**
   * Waits `ms` or until the next wake-up, whichever is first; the timer is
   * always cleared. Resolves `true` if the full time passed.
   */
  pause(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(id);
        resolve(false);
      };
      const id = setTimeout(() => {
        this.#wakers.delete(wake);
        resolve(true);
      }, ms);
      this.#wakers.add(wake);
    });
  }

  slowReadFor(direction: FaultDirection): SlowRead | undefined {
    const slow = this.slowRead;
    if (slow === undefined) return undefined;
    return slow.direction === "both" || slow.direction === direction
      ? slow
      : undefined;
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

/** One downstream connection and its upstream connection. */
class Pair {
  readonly #state: State;
  readonly #down: Deno.TcpConn;
  readonly #up: Deno.TcpConn;
  readonly #onAbort: (pair: Pair) => void;
  #aborted = false;
  /** Cut at the next chunk (one-shot `resetMidFrame`). */
  resetArmed = false;
  /** Resolves when both pumps have ended and both connections are closed. */
  readonly done: Promise<void>;

  constructor(
    state: State,
    down: Deno.TcpConn,
    up: Deno.TcpConn,
    onAbort: (pair: Pair) => void,
  ) {
    this.#state = state;
    this.#down = down;
    this.#up = up;
    this.#onAbort = onAbort;
    this.done = Promise.all([
      this.#pump(down, up, "up"),
      this.#pump(up, down, "down"),
    ]).then(() => {
      closeQuietly(this.#down);
      closeQuietly(this.#up);
    });
  }

  get aborted(): boolean {
    return this.#aborted;
  }

  /** Closes both sides at once; pending reads and writes end. */
  abort(): void {
    if (this.#aborted) return;
    this.#aborted = true;
    closeQuietly(this.#down);
    closeQuietly(this.#up);
    this.#onAbort(this);
    this.#state.wake();
  }

  #cutRequested(): boolean {
    return this.resetArmed || this.#state.resetPersistent;
  }

  #cut(): void {
    this.#state.resets++;
    this.abort();
  }

  async #pump(
    src: Deno.TcpConn,
    dst: Deno.TcpConn,
    direction: FaultDirection,
  ): Promise<void> {
    const state = this.#state;
    const buffer = new Uint8Array(CHUNK_BYTES);
    try {
      while (!this.#aborted) {
        if (state.blackhole) {
          await state.changed();
          continue;
        }
        let size = buffer.length;
        const slow = state.slowReadFor(direction);
        if (slow !== undefined) {
          size = Math.min(slow.bytes, buffer.length);
          if (!(await state.pause(slow.intervalMs))) continue;
          if (this.#aborted) break;
        }
        const n = await src.read(buffer.subarray(0, size));
        if (this.#aborted) break;
        if (n === null) {
          // Hold the EOF like data: not through a blackhole, cut if armed.
          while (state.blackhole && !this.#aborted) await state.changed();
          if (this.#aborted) break;
          if (this.#cutRequested()) {
            this.#cut();
            break;
          }
          await dst.closeWrite();
          return;
        }
        await this.#deliver(buffer.subarray(0, n), dst, direction);
      }
    } catch {
      // A read or write failed (reset by a peer, or closed by abort()).
      this.abort();
    }
  }

  /** Writes one chunk, honouring latency, blackhole, fragment and reset. */
  async #deliver(
    chunk: Uint8Array,
    dst: Deno.TcpConn,
    direction: FaultDirection,
  ): Promise<void> {
    const state = this.#state;
    const readAt = performance.now();
    let offset = 0;
    while (offset < chunk.length && !this.#aborted) {
      if (state.blackhole) {
        await state.changed();
        continue;
      }
      const wait = readAt + state.latencyMs - performance.now();
      if (wait > 0) {
        await state.pause(wait);
        continue;
      }
      if (this.#cutRequested()) {
        const half = offset + Math.floor((chunk.length - offset) / 2);
        while (offset < half && !this.#aborted) {
          const n = await dst.write(chunk.subarray(offset, half));
          offset += n;
          state.bytes[direction] += n;
        }
        this.#cut();
        return;
      }
      const end = state.fragment ? offset + 1 : chunk.length;
      const n = await dst.write(chunk.subarray(offset, end));
      offset += n;
      state.bytes[direction] += n;
    }
  }
}

interface Waiter {
  ready(): boolean;
  resolve(): void;
  reject(reason: unknown): void;
}

class FaultProxyImpl implements FaultProxy {
  readonly #target: FaultProxyTarget;
  readonly #listener: Deno.TcpListener;
  readonly #state = new State();
  readonly #pairs = new Set<Pair>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #waiters = new Set<Waiter>();
  #accepted = 0;
  #refused = 0;
  #established = 0;
  #closing: Promise<void> | undefined;

  constructor(options: FaultProxyOptions) {
    this.#target = {
      hostname: options.target.hostname,
      port: options.target.port,
    };
    this.#listener = Deno.listen({
      hostname: options.hostname ?? "127.0.0.1",
      port: 0,
      transport: "tcp",
    });
    this.#track(this.#acceptLoop());
  }

  get addr(): Deno.NetAddr & { transport: "tcp" } {
    return { ...this.#listener.addr, transport: "tcp" };
  }

  get connections(): number {
    return this.#pairs.size;
  }

  get accepted(): number {
    return this.#accepted;
  }

  get refused(): number {
    return this.#refused;
  }

  get resets(): number {
    return this.#state.resets;
  }

  get bytesForwarded(): BytesForwarded {
    return { ...this.#state.bytes };
  }

  get isClosed(): boolean {
    return this.#closing !== undefined;
  }

  latency(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) {
      throw new RangeError(
        `Cannot set latency: ${ms} is not a non-negative number of milliseconds`,
      );
    }
    this.#state.latencyMs = ms;
    this.#state.wake();
  }

  fragment(enabled = true): void {
    this.#state.fragment = enabled;
    this.#state.wake();
  }

  resetMidFrame(options: ResetMidFrameOptions = {}): void {
    for (const pair of this.#pairs) pair.resetArmed = true;
    this.#state.resetPersistent = options.persistent ?? false;
    this.#state.wake();
  }

  resetAll(): void {
    for (const pair of [...this.#pairs]) {
      this.#state.resets++;
      pair.abort();
    }
  }

  blackhole(enabled = true): void {
    this.#state.blackhole = enabled;
    this.#state.wake();
  }

  slowRead(bytesPerTick: number, options: SlowReadOptions = {}): void {
    const { intervalMs = 5, direction = "up" } = options;
    if (!Number.isInteger(bytesPerTick) || bytesPerTick < 0) {
      throw new RangeError(
        `Cannot read slowly: ${bytesPerTick} bytes per tick is not a non-negative integer`,
      );
    }
    if (!Number.isFinite(intervalMs) || intervalMs < 0) {
      throw new RangeError(
        `Cannot read slowly: interval ${intervalMs} ms is not a non-negative number`,
      );
    }
    this.#state.slowRead = bytesPerTick === 0
      ? undefined
      : { bytes: bytesPerTick, intervalMs, direction };
    this.#state.wake();
  }

  refuse(enabled = true): void {
    this.#state.refuse = enabled;
  }

  heal(): void {
    const state = this.#state;
    state.latencyMs = 0;
    state.fragment = false;
    state.blackhole = false;
    state.slowRead = undefined;
    state.refuse = false;
    state.resetPersistent = false;
    for (const pair of this.#pairs) pair.resetArmed = false;
    state.wake();
  }

  onConnection(options: FaultProxyWaitOptions = {}): Promise<void> {
    const target = this.#established + 1;
    return this.#wait(() => this.#established >= target, options.signal);
  }

  waitForConnections(
    n: number,
    options: FaultProxyWaitOptions = {},
  ): Promise<void> {
    if (!Number.isInteger(n) || n < 0) {
      return Promise.reject(
        new RangeError(`Cannot wait for ${n} connections: not a count`),
      );
    }
    return this.#wait(() => this.#pairs.size >= n, options.signal);
  }

  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #shutdown(): Promise<void> {
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    for (const pair of [...this.#pairs]) pair.abort();
    this.#state.wake();
    const error = new ClosedError("Cannot wait: the fault proxy is closed");
    for (const waiter of [...this.#waiters]) waiter.reject(error);
    while (this.#tasks.size > 0) {
      await Promise.allSettled([...this.#tasks]);
    }
  }

  #wait(ready: () => boolean, signal: AbortSignal | undefined): Promise<void> {
    if (this.isClosed) {
      return Promise.reject(
        new ClosedError("Cannot wait: the fault proxy is closed"),
      );
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (ready()) return Promise.resolve();
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    const onAbort = () => waiter.reject(signal?.reason);
    const settle = () => {
      this.#waiters.delete(waiter);
      signal?.removeEventListener("abort", onAbort);
    };
    const waiter: Waiter = {
      ready,
      resolve: () => {
        settle();
        resolve();
      },
      reject: (reason) => {
        settle();
        reject(reason);
      },
    };
    this.#waiters.add(waiter);
    signal?.addEventListener("abort", onAbort, { once: true });
    return promise;
  }

  #checkWaiters(): void {
    for (const waiter of [...this.#waiters]) {
      if (waiter.ready()) waiter.resolve();
    }
  }

  #track(task: Promise<void>): void {
    const tracked = task.finally(() => this.#tasks.delete(tracked));
    this.#tasks.add(tracked);
  }

  async #acceptLoop(): Promise<void> {
    while (!this.isClosed) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        // The listener was closed (or failed): stop accepting.
        return;
      }
      this.#accepted++;
      if (this.isClosed || this.#state.refuse) {
        if (!this.isClosed) this.#refused++;
        closeQuietly(conn);
        continue;
      }
      this.#track(this.#forward(conn));
    }
  }

  async #forward(down: Deno.TcpConn): Promise<void> {
    let up: Deno.TcpConn;
    try {
      up = await Deno.connect({ ...this.#target, transport: "tcp" });
    } catch {
      // The target is down: the client sees its connection closed.
      closeQuietly(down);
      return;
    }
    if (this.isClosed) {
      closeQuietly(down);
      closeQuietly(up);
      return;
    }
    const pair = new Pair(
      this.#state,
      down,
      up,
      (cut) => this.#pairs.delete(cut),
    );
    this.#pairs.add(pair);
    this.#established++;
    this.#checkWaiters();
    await pair.done;
    this.#pairs.delete(pair);
  }
}
