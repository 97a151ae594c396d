/**
 * {@linkcode serveWorkers}: one server on every core. N Web Workers of this
 * process each load the handler from a module and listen on the same port
 * with `SO_REUSEPORT` (the kernel spreads new connections among them); the
 * parent starts, watches, restarts and stops them as one server.
 *
 * Threads rather than processes: on a CPU-bound handler two of either gave
 * the same speed-up here, and a worker costs less memory than a process; a
 * worker is also started, stopped and watched from the same program, with
 * no supervisor. Processes isolate better (a worker that blocks its thread
 * forever cannot be interrupted short of `terminate()`): run several
 * processes with `listenReusePort()` when that matters.
 *
 * @module
 */

import { ClosedError, TimeoutError } from "../errors.ts";
import { type Logger, safeLogger } from "../logger.ts";
import { type BackoffOptions, delay, exponentialBackoff } from "../backoff.ts";
import { countOption, timeoutOption, withResolvers } from "../_util.ts";
import { after } from "../_timeouts.ts";
import type { ServerStats } from "./server.ts";
import type { ServeOptions } from "./serve.ts";
import { newCounters } from "../session/types.ts";
import type { ShutdownOptions, ShutdownReport } from "./shutdown.ts";
import type { FromWorker, ToWorker } from "./_worker_messages.ts";
import { cwd } from "node:process";
import { requireDeno } from "../transport/_runtime.ts";

/**
 * What {@linkcode serveWorkers} hands each worker's `serve()` as data (the
 * options that cross a thread: numbers, strings, flags). Functions and
 * objects with behaviour (codec, logger, hooks) come from the module's
 * `options` export; these override it.
 */
export type WorkerServeOptions = Pick<
  ServeOptions<unknown>,
  | "maxConnections"
  | "proxyProtocol"
  | "correlation"
  | "requestTimeout"
  | "idleTimeout"
  | "frameTimeout"
  | "writeTimeout"
  | "maxConcurrentHandlers"
  | "outboundBuffer"
  | "maxWriteBytes"
  | "maxFrameBytes"
>;

/** Options of {@linkcode serveWorkers}. */
export interface ServeWorkersOptions {
  /**
   * The module each worker serves: it exports `handler` (a
   * {@linkcode ServerHandler}) and may export `options` (what `serve()`
   * takes besides where to listen: codec, limits, logger, hooks). A path is
   * taken from the current directory. Workers need read permission for it.
   */
  module: string | URL;
  /**
   * Workers to run.
   *
   * @default {navigator.hardwareConcurrency}
   */
  workers?: number;
  /**
   * Interface to listen on.
   *
   * @default {"0.0.0.0"}
   */
  hostname?: string;
  /**
   * TCP port; 0 picks a free one (the first worker's), shared by the others.
   *
   * @default {9000}
   */
  port?: number;
  /** Options of each worker's `serve()`, as data (see {@linkcode WorkerServeOptions}). */
  serveOptions?: WorkerServeOptions;
  /** Logs worker starts, crashes and restarts. */
  logger?: Logger;
  /** Aborting it shuts the workers down gracefully. */
  signal?: AbortSignal;
  /**
   * Milliseconds a worker has to load its module and listen.
   *
   * @default {10000}
   */
  startTimeout?: number;
  /** Backoff between restarts of a worker that crashed. */
  restart?: BackoffOptions;
}

/** Counters of a {@linkcode WorkerServer}: every worker's, summed. */
export interface WorkerServerStats extends ServerStats {
  /** Workers running now. */
  workers: number;
  /** Workers restarted after a crash. */
  restarts: number;
}

/** Detail of {@linkcode WorkerServer} events (`event.detail` of a `CustomEvent`). */
export type WorkerServerEventDetail =
  | { type: "crash"; worker: number; error: unknown }
  | { type: "restart"; worker: number }
  | { type: "shutdown"; report: ShutdownReport };

/** One worker thread and what it was asked and not yet answered. */
class WorkerSlot {
  readonly index: number;
  readonly worker: Worker;
  readonly listening = withResolvers<number>();
  readonly finished = withResolvers<ShutdownReport | undefined>();
  readonly stats = new Map<number, (stats: ServerStats) => void>();
  dead = false;

  constructor(
    index: number,
    onCrash: (slot: WorkerSlot, error: unknown) => void,
  ) {
    this.index = index;
    this.worker = new Worker(
      new URL("./_worker_main.ts", import.meta.url).href,
      { type: "module" },
    );
    this.listening.promise.catch(() => {});
    this.worker.addEventListener("message", (event) => {
      this.#receive((event as MessageEvent<FromWorker>).data);
    });
    this.worker.addEventListener("error", (event) => {
      // Handled here: unhandled, a worker's error would end this process.
      event.preventDefault();
      onCrash(
        this,
        (event as ErrorEvent).error ?? (event as ErrorEvent).message,
      );
    });
    this.worker.addEventListener("messageerror", () => {
      onCrash(this, new TypeError("A worker's message could not be read"));
    });
  }

  post(message: ToWorker): void {
    this.worker.postMessage(message);
  }

  #receive(message: FromWorker): void {
    switch (message.type) {
      case "listening":
        return this.listening.resolve(message.port);
      case "failed":
        return this.listening.reject(
          new Error(`Worker ${this.index} did not start: ${message.message}`),
        );
      case "stats":
        this.stats.get(message.id)?.(message.stats);
        this.stats.delete(message.id);
        return;
      case "finished":
        return this.finished.resolve(message.report);
    }
  }

  /** Ends the thread at once; whatever waits on it is answered. */
  kill(error: unknown): void {
    this.dead = true;
    this.worker.terminate();
    this.listening.reject(error);
    this.finished.resolve(undefined);
    for (const answer of this.stats.values()) answer(emptyStats());
    this.stats.clear();
  }
}

/** Guards the constructor: only {@linkcode serveWorkers} makes these. */
const INTERNAL: unique symbol = Symbol("tcpbutler.workers");

/** What `serveWorkers()` reaches inside; set by the class's static block. */
let internals: {
  start(server: WorkerServer, index: number): Promise<number>;
  bind(server: WorkerServer, port: number): void;
};

/**
 * N workers serving one port as one server. Make one with
 * {@linkcode serveWorkers}.
 *
 * Events (`addEventListener`): `crash`, `restart`, `shutdown`, each a
 * `CustomEvent` whose `detail` is a {@linkcode WorkerServerEventDetail}.
 */
export class WorkerServer extends EventTarget implements AsyncDisposable {
  #addr: Deno.NetAddr;
  readonly #options: ServeWorkersOptions & { module: string };
  readonly #logger: Logger;
  readonly #slots: WorkerSlot[] = [];
  readonly #stopping = new AbortController();
  readonly #finished = withResolvers<ShutdownReport>();
  readonly #restarting = new Set<Promise<void>>();
  #shutdown: Promise<ShutdownReport> | undefined;
  #restarts = 0;
  #statsId = 0;

  /**
   * Not for users: {@linkcode serveWorkers} makes these.
   *
   * @ignore
   */
  constructor(
    token: typeof INTERNAL,
    options: ServeWorkersOptions & { module: string },
    addr: Deno.NetAddr,
  ) {
    if (token !== INTERNAL) {
      throw new TypeError("Cannot construct WorkerServer: use serveWorkers()");
    }
    super();
    this.#options = options;
    this.#logger = safeLogger(options.logger);
    this.#addr = addr;
    this.#finished.promise.catch(() => {});
  }

  static {
    // serveWorkers() needs these; as #private members they stay off the
    // public surface, and this block is the only way out of the class body.
    internals = {
      start: (server, index) => server.#start(index),
      bind: (server, port) => {
        server.#addr = { ...server.#addr, port };
      },
    };
  }

  /** The address the workers listen on. */
  get addr(): Deno.NetAddr {
    return this.#addr;
  }

  /** The TCP port the workers listen on. */
  get port(): number {
    return this.#addr.port;
  }

  /** Resolves with the merged shutdown report once every worker stopped. */
  get finished(): Promise<ShutdownReport> {
    return this.#finished.promise;
  }

  /** Whether a shutdown has begun. */
  get isClosed(): boolean {
    return this.#shutdown !== undefined;
  }

  /** Starts a worker in slot `index`; resolves with its port once it listens. */
  async #start(index: number): Promise<number> {
    const slot = new WorkerSlot(index, (s, error) => this.#crashed(s, error));
    this.#slots[index] = slot;
    const options = this.#options;
    slot.post({
      type: "start",
      module: options.module,
      hostname: options.hostname ?? "0.0.0.0",
      port: this.#addr.port,
      options: options.serveOptions ?? {},
    });
    const timeout = options.startTimeout ?? 10_000;
    const cancel = after(timeout, () =>
      slot.kill(
        new TimeoutError(
          `Worker ${index} did not listen within ${timeout} ms`,
          {
            timeout,
          },
        ),
      ));
    try {
      return await slot.listening.promise;
    } catch (error) {
      slot.kill(error);
      throw error;
    } finally {
      cancel();
    }
  }

  #crashed(slot: WorkerSlot, error: unknown): void {
    if (slot.dead || this.#slots[slot.index] !== slot) return;
    slot.kill(error);
    this.#logger.error("Worker crashed", { worker: slot.index, error });
    this.#emit({ type: "crash", worker: slot.index, error });
    if (this.#stopping.signal.aborted) return;
    const restart = this.#restart(slot.index);
    this.#restarting.add(restart);
    restart.finally(() => this.#restarting.delete(restart));
  }

  /** Starts a crashed worker again, with backoff while it keeps failing. */
  async #restart(index: number): Promise<void> {
    const backoff = exponentialBackoff(this.#options.restart);
    const stop = this.#stopping.signal;
    for (;;) {
      try {
        await delay(backoff.next(), { signal: stop });
        await this.#start(index);
        this.#restarts++;
        this.#logger.info("Worker restarted", { worker: index });
        this.#emit({ type: "restart", worker: index });
        return;
      } catch (error) {
        if (stop.aborted) return;
        this.#logger.error("Worker restart failed", { worker: index, error });
      }
    }
  }

  #emit(detail: WorkerServerEventDetail): void {
    this.dispatchEvent(new CustomEvent(detail.type, { detail }));
  }

  /**
   * Every worker's counters, summed (each worker is asked; one that does
   * not answer within a second counts as zeros).
   *
   * @returns A snapshot.
   */
  async stats(): Promise<WorkerServerStats> {
    const live = this.#slots.filter((slot) => !slot.dead);
    const all = await Promise.all(live.map((slot) => {
      const id = ++this.#statsId;
      const { promise, resolve } = withResolvers<ServerStats>();
      slot.stats.set(id, resolve);
      const cancel = after(1000, () => {
        slot.stats.delete(id);
        resolve(emptyStats());
      });
      slot.post({ type: "stats", id });
      return promise.finally(cancel);
    }));
    const sum = emptyStats();
    for (const stats of all) {
      for (const key of Object.keys(sum) as (keyof ServerStats)[]) {
        sum[key] += stats[key] ?? 0;
      }
    }
    return { ...sum, workers: live.length, restarts: this.#restarts };
  }

  /**
   * Shuts every worker down gracefully at once (each as
   * {@linkcode Server.shutdown} with these options) and merges their
   * reports. Idempotent.
   *
   * @param options Timeout, `leaveFor` and a signal, as a server takes them.
   * @returns The merged report.
   */
  shutdown(options?: ShutdownOptions): Promise<ShutdownReport> {
    options ??= {};
    let timeout: number;
    let leaveFor: number;
    try {
      timeout = timeoutOption(options.timeout ?? 10_000, "timeout");
      leaveFor = timeoutOption(options.leaveFor ?? 0, "leaveFor");
    } catch (error) {
      return Promise.reject(error);
    }
    this.#shutdown ??= this.#runShutdown(timeout, leaveFor, options.signal);
    return this.#shutdown;
  }

  async #runShutdown(
    timeout: number,
    leaveFor: number,
    signal: AbortSignal | undefined,
  ): Promise<ShutdownReport> {
    const started = performance.now();
    this.#stopping.abort(new ClosedError("Workers are shutting down"));
    await Promise.all(this.#restarting);
    const slots = this.#slots.filter((slot) => !slot.dead);
    // A worker that is stuck gets its own timeout and then some; then it is
    // ended from here.
    const guard = after(
      leaveFor + (timeout === Infinity ? 0x7fff_ffff : timeout) + 5000,
      () => {
        for (const slot of slots) slot.kill(new ClosedError("Worker stuck"));
      },
    );
    const onSignal = () => {
      for (const slot of slots) slot.kill(signal!.reason);
    };
    signal?.addEventListener("abort", onSignal, { once: true });
    for (const slot of slots) {
      slot.post({ type: "shutdown", timeout, leaveFor });
    }
    const reports = await Promise.all(slots.map((s) => s.finished.promise));
    guard();
    signal?.removeEventListener("abort", onSignal);
    for (const slot of slots) {
      slot.dead = true;
      slot.worker.terminate();
    }
    const report = mergeReports(reports, performance.now() - started);
    this.#logger.info("Workers shut down", { ...report });
    this.#emit({ type: "shutdown", report });
    this.#finished.resolve(report);
    return report;
  }

  /** Graceful shutdown with the default timeout. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }
}

/**
 * Serves one port from N workers (threads) of this process, each with its
 * own `SO_REUSEPORT` listener (through `node:net`: no unstable flag) and
 * the handler loaded from `options.module`. Resolves once every worker
 * listens. A worker that crashes (an uncaught error) is logged and started
 * again with backoff; its connections are lost, the others' are not.
 * Linux only.
 *
 * @param options The module, how many workers, where to listen.
 * @returns The running workers, as one server.
 * @throws {RangeError} `workers` is not an integer >= 1, or a timeout is out of range.
 * @throws {Error} A worker could not load the module or listen (the others are stopped).
 * @throws {UnsupportedRuntimeError} On Node and Bun.
 *
 * @example Usage
 * ```ts ignore
 * import { serveWorkers } from "@tcpbutler/core";
 *
 * // echo.ts: export const handler = (payload: Uint8Array) => payload;
 * await using server = await serveWorkers({ module: "./echo.ts", port: 9000 });
 * Deno.addSignalListener("SIGTERM", () => server.shutdown());
 * await server.finished;
 * ```
 */
export async function serveWorkers(
  options: ServeWorkersOptions,
): Promise<WorkerServer> {
  // Workers are Deno's Web Workers, each with its own reusePort listener.
  requireDeno("serveWorkers()");
  const count = countOption(
    options.workers ?? navigator.hardwareConcurrency,
    "workers",
    1,
  );
  timeoutOption(options.startTimeout ?? 10_000, "startTimeout");
  const module = moduleUrl(options.module);
  const resolved = { ...options, module };
  const server = new WorkerServer(INTERNAL, resolved, {
    transport: "tcp",
    hostname: options.hostname ?? "0.0.0.0",
    port: options.port ?? 9000,
  });
  try {
    // The first worker binds (port 0 picks one); the others share its port.
    internals.bind(server, await internals.start(server, 0));
    for (let i = 1; i < count; i++) await internals.start(server, i);
  } catch (error) {
    await server.shutdown({ timeout: 0 });
    throw error;
  }
  const signal = options.signal;
  if (signal !== undefined) {
    const onAbort = () => server.shutdown();
    if (signal.aborted) onAbort();
    else {
      signal.addEventListener("abort", onAbort, { once: true });
      server.finished.then(() => signal.removeEventListener("abort", onAbort));
    }
  }
  return server;
}

/** A module specifier workers can import: paths are taken from the cwd. */
function moduleUrl(module: string | URL): string {
  if (module instanceof URL) return module.href;
  if (/^[a-z][a-z0-9+.-]*:/i.test(module)) return module;
  const dir = cwd().replace(/\/?$/, "/");
  return new URL(module, `file://${dir}`).href;
}

function emptyStats(): ServerStats {
  return {
    ...newCounters(),
    sessions: 0,
    accepted: 0,
    refused: 0,
    idleEvictions: 0,
    opening: 0,
    handshakeFailures: 0,
    rejected: 0,
    healthChecksFailed: 0,
    bufferedBytes: 0,
    bufferedPeak: 0,
    budgetPauses: 0,
    budgetCuts: 0,
  };
}

/** One report of many workers' shutdowns. */
function mergeReports(
  reports: readonly (ShutdownReport | undefined)[],
  durationMs: number,
): ShutdownReport {
  const merged: ShutdownReport = {
    sessions: 0,
    drained: 0,
    forced: 0,
    handlersCut: 0,
    refused: 0,
    dropped: 0,
    requestsCut: 0,
    durationMs: Math.round(durationMs),
    forcedSessions: [],
  };
  for (const report of reports) {
    if (report === undefined) continue;
    merged.sessions += report.sessions;
    merged.drained += report.drained;
    merged.forced += report.forced;
    merged.handlersCut += report.handlersCut;
    merged.refused += report.refused;
    merged.dropped += report.dropped;
    merged.requestsCut += report.requestsCut;
    merged.forcedSessions.push(...report.forcedSessions);
  }
  return merged;
}
