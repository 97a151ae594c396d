/**
 * A bounded load generator and the fault scenarios built on it, shared by
 * `tests/reliability_test.ts` (short runs, assertions) and
 * `reliability/run.ts` (`deno task reliability`, longer runs, a table).
 *
 * {@linkcode runLoad} runs N concurrent request loops against a client for a
 * duration or a count. Every request carries a unique nonce that the echo
 * server sends back, and every outcome is recorded: ok, or an error by class
 * name, its latency, and how late it settled past its own deadline. It checks
 * that each request settles exactly once, no later than its deadline plus a
 * slack, only with an allowed typed error, and that no reply ever reaches the
 * wrong request.
 *
 * {@linkcode runFaultScenario} puts a fault-injection proxy (or a child
 * process server that is killed and restarted) under that load, heals it and
 * checks that the client recovers. {@linkcode runSoak} switches random faults
 * for a while and measures RSS.
 *
 * @module
 */

import type { Client } from "../client/client.ts";
import { dial } from "../client/dial.ts";
import type { DialOptions } from "../client/types.ts";
import { serve } from "../server/serve.ts";
import type { Server } from "../server/server.ts";
import type { ShutdownReport } from "../server/shutdown.ts";
import type { Logger } from "../logger.ts";
import { delay } from "../backoff.ts";
import { type FaultProxy, startFaultProxy } from "./_fault_proxy.ts";
import { type ChildProcess, startProcess } from "./_process.ts";

/** Errors a request may end with under a network fault. */
export const NETWORK_ERRORS: readonly string[] = [
  "TimeoutError",
  "ConnectionClosedError",
  "NoSessionError",
];

/** Options of {@linkcode runLoad}. */
export interface LoadOptions {
  /**
   * Concurrent request loops.
   *
   * @default {16}
   */
  concurrency?: number;
  /** Stop issuing requests after this many milliseconds. */
  duration?: number;
  /** Stop after this many requests in total (across loops). */
  count?: number;
  /** Stops issuing requests; in-flight ones are still awaited. */
  signal?: AbortSignal;
  /**
   * Timeout of each request, in milliseconds.
   *
   * @default {1000}
   */
  timeout?: number;
  /**
   * How late past its deadline a request may settle, in milliseconds.
   *
   * @default {250}
   */
  slack?: number;
  /**
   * Size of each payload (at least 16: the nonce).
   *
   * @default {64}
   */
  payloadBytes?: number;
  /**
   * Error class names that count as a typed, expected outcome; any other is
   * a violation.
   *
   * @default {NETWORK_ERRORS}
   */
  allowedErrors?: readonly string[];
  /**
   * Milliseconds past its deadline after which a request that has not
   * settled is given up as hung (counted in `unsettled`) so the loop goes on.
   *
   * @default {5000}
   */
  hangAfter?: number;
  /** Called after each request settles, with the report so far. */
  onSettle?: (report: Readonly<LoadReport>) => void;
  /** Called for each request that failed, with its payload and error. */
  onFailure?: (payload: Uint8Array, error: unknown) => void;
}

/** What {@linkcode runLoad} saw. */
export interface LoadReport {
  /** Requests issued. */
  requests: number;
  /** Requests answered with their own payload. */
  ok: number;
  /** Failed requests by error class name. */
  errors: Record<string, number>;
  /** Replies that did not carry the request's own nonce (a reply reached the wrong request). */
  mismatches: number;
  /** Errors whose class is not in `allowedErrors` (first few, as `Name: message`). */
  unexpected: string[];
  /** Number of errors outside `allowedErrors`. */
  unexpectedCount: number;
  /** Requests that settled later than deadline + slack. */
  lateSettles: number;
  /** Largest `settledAt - deadline` over all requests (0 if none was late), ms. */
  maxLatenessMs: number;
  /** Requests that had not settled `hangAfter` past their deadline, or settled twice. */
  unsettled: number;
  /** Settlements observed beyond the first (must be 0). */
  doubleSettles: number;
  /** Latency of successful requests, ms. */
  latency: { p50: number; p99: number; max: number };
  /** Wall time of the run, ms. */
  durationMs: number;
}

/**
 * The client's pending requests once its heartbeat pings in flight have
 * settled: `stats().pending` counts those too, and each settles within half
 * an interval (answered, or the session closed). Waits at most `ms`.
 */
async function pendingOnceSettled(
  client: Client<Uint8Array>,
  ms = 2000,
): Promise<number> {
  const deadline = performance.now() + ms;
  while (client.stats().pending > 0 && performance.now() < deadline) {
    await delay(20);
  }
  return client.stats().pending;
}

/** Merges reports (sums, maxima; latency maxima only). */
export function mergeReports(...reports: LoadReport[]): LoadReport {
  const out = emptyReport();
  for (const r of reports) {
    out.requests += r.requests;
    out.ok += r.ok;
    for (const [name, n] of Object.entries(r.errors)) {
      out.errors[name] = (out.errors[name] ?? 0) + n;
    }
    out.mismatches += r.mismatches;
    out.unexpected.push(...r.unexpected.slice(0, 10 - out.unexpected.length));
    out.unexpectedCount += r.unexpectedCount;
    out.lateSettles += r.lateSettles;
    out.maxLatenessMs = Math.max(out.maxLatenessMs, r.maxLatenessMs);
    out.unsettled += r.unsettled;
    out.doubleSettles += r.doubleSettles;
    out.latency.p50 = Math.max(out.latency.p50, r.latency.p50);
    out.latency.p99 = Math.max(out.latency.p99, r.latency.p99);
    out.latency.max = Math.max(out.latency.max, r.latency.max);
    out.durationMs += r.durationMs;
  }
  return out;
}

function emptyReport(): LoadReport {
  return {
    requests: 0,
    ok: 0,
    errors: {},
    mismatches: 0,
    unexpected: [],
    unexpectedCount: 0,
    lateSettles: 0,
    maxLatenessMs: 0,
    unsettled: 0,
    doubleSettles: 0,
    latency: { p50: 0, p99: 0, max: 0 },
    durationMs: 0,
  };
}

/**
 * The invariants of a load report that hold under any fault: every request
 * settled exactly once, in time, with its own reply or an allowed error.
 *
 * @returns The violations, empty when all hold.
 */
export function violations(report: LoadReport, slack = 250): string[] {
  const out: string[] = [];
  if (report.mismatches > 0) {
    out.push(`${report.mismatches} replies reached the wrong request`);
  }
  if (report.unexpectedCount > 0) {
    out.push(
      `${report.unexpectedCount} untyped or unexpected errors: ${
        report.unexpected.join("; ")
      }`,
    );
  }
  if (report.lateSettles > 0) {
    out.push(
      `${report.lateSettles} requests settled more than ${slack} ms past their deadline (max ${
        report.maxLatenessMs.toFixed(0)
      } ms)`,
    );
  }
  if (report.unsettled > 0) {
    out.push(`${report.unsettled} requests never settled`);
  }
  if (report.doubleSettles > 0) {
    out.push(`${report.doubleSettles} requests settled twice`);
  }
  return out;
}

/** Latencies in a bounded histogram: 0.1 ms steps to 100 ms, then 10 ms steps. */
class Histogram {
  readonly #fine = new Uint32Array(1000);
  readonly #coarse = new Uint32Array(6000);
  #count = 0;
  #max = 0;

  add(ms: number): void {
    this.#count++;
    if (ms > this.#max) this.#max = ms;
    if (ms < 100) this.#fine[Math.max(0, Math.floor(ms * 10))]!++;
    else this.#coarse[Math.min(5999, Math.floor(ms / 10))]!++;
  }

  quantile(q: number): number {
    if (this.#count === 0) return 0;
    const rank = Math.ceil(q * this.#count);
    let seen = 0;
    for (let i = 0; i < this.#fine.length; i++) {
      seen += this.#fine[i]!;
      if (seen >= rank) return (i + 1) / 10;
    }
    for (let i = 0; i < this.#coarse.length; i++) {
      seen += this.#coarse[i]!;
      if (seen >= rank) return (i + 1) * 10;
    }
    return this.#max;
  }

  get max(): number {
    return this.#max;
  }
}

interface InFlight {
  deadline: number;
  settles: number;
  abandon: () => void;
}

let nonceCounter = 0;

/** A payload of `size` bytes that no other request of this process carries. */
function noncePayload(size: number, loop: number): Uint8Array {
  const payload = new Uint8Array(Math.max(16, size));
  const view = new DataView(payload.buffer);
  view.setUint32(0, ++nonceCounter);
  view.setUint32(4, loop);
  view.setUint32(8, (Math.random() * 0x1_0000_0000) >>> 0);
  view.setUint32(12, (performance.now() * 1000) >>> 0);
  for (let i = 16; i < payload.length; i++) {
    payload[i] = (payload[i & 15]! + i) & 0xff;
  }
  return payload;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function errorName(error: unknown): string {
  return error instanceof Error ? error.name : typeof error;
}

/** Lets timers and I/O run when a request failed without waiting. */
function yieldToLoop(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/**
 * Runs `concurrency` request loops against an echo server through `client`
 * until `duration` passes, `count` requests were made, or `signal` aborts;
 * then waits for every request in flight. Never rejects: every outcome is in
 * the report (check it with {@linkcode violations}).
 *
 * @param client A client of an echo server (the reply is the request's payload).
 * @param options Concurrency, bounds, timeout, slack, payload size.
 * @returns What happened to every request.
 */
export async function runLoad(
  client: Client<Uint8Array>,
  options: LoadOptions = {},
): Promise<LoadReport> {
  const {
    concurrency = 16,
    duration,
    count,
    signal,
    timeout = 1000,
    slack = 250,
    payloadBytes = 64,
    allowedErrors = NETWORK_ERRORS,
    hangAfter = 5000,
    onSettle,
    onFailure,
  } = options;
  if (duration === undefined && count === undefined && signal === undefined) {
    throw new TypeError(
      "Cannot run load: give a duration, a count or a signal",
    );
  }
  const report = emptyReport();
  const histogram = new Histogram();
  const started = performance.now();
  const stopAt = duration === undefined ? Infinity : started + duration;
  const inFlight = new Set<InFlight>();
  let issued = 0;

  // One watchdog for every loop: gives up requests that hang, so the loops
  // (and the test) always end.
  const watchdog = setInterval(() => {
    const now = performance.now();
    for (const entry of inFlight) {
      if (now > entry.deadline + hangAfter) entry.abandon();
    }
  }, 50);

  const shouldIssue = () =>
    !(signal?.aborted ?? false) && performance.now() < stopAt &&
    (count === undefined || issued < count);

  const loop = async (id: number) => {
    while (shouldIssue()) {
      issued++;
      report.requests++;
      const payload = noncePayload(payloadBytes, id);
      const start = performance.now();
      const entry: InFlight = {
        deadline: start + timeout,
        settles: 0,
        abandon: () => {},
      };
      const abandoned = new Promise<"abandoned">((resolve) => {
        entry.abandon = () => resolve("abandoned");
      });
      inFlight.add(entry);
      let failedFast = false;
      const settle = (now: number) => {
        entry.settles++;
        if (entry.settles > 1) {
          report.doubleSettles++;
          return false;
        }
        const lateness = now - entry.deadline;
        if (lateness > report.maxLatenessMs) report.maxLatenessMs = lateness;
        if (lateness > slack) report.lateSettles++;
        return true;
      };
      const outcome = client.request(payload, { timeout }).then(
        (reply) => {
          const now = performance.now();
          if (!settle(now)) return;
          if (sameBytes(reply, payload)) {
            report.ok++;
            histogram.add(now - start);
          } else {
            report.mismatches++;
          }
        },
        (error) => {
          const now = performance.now();
          if (!settle(now)) return;
          failedFast = now - start < 1;
          const name = errorName(error);
          report.errors[name] = (report.errors[name] ?? 0) + 1;
          onFailure?.(payload, error);
          if (!allowedErrors.includes(name)) {
            report.unexpectedCount++;
            if (report.unexpected.length < 10) {
              report.unexpected.push(
                `${name}: ${error instanceof Error ? error.message : error}`,
              );
            }
          }
        },
      );
      const result = await Promise.race([outcome, abandoned]);
      inFlight.delete(entry);
      onSettle?.(report);
      if (result === "abandoned") {
        // Given up as hung; if it ever settles, it counts as late.
        report.unsettled++;
        continue;
      }
      if (failedFast) await yieldToLoop();
    }
  };

  try {
    await Promise.all(Array.from({ length: concurrency }, (_, i) => loop(i)));
  } finally {
    clearInterval(watchdog);
  }
  report.latency = {
    p50: histogram.quantile(0.5),
    p99: histogram.quantile(0.99),
    max: histogram.max,
  };
  report.durationMs = performance.now() - started;
  return report;
}

// ---------------------------------------------------------------------------
// A collecting logger

/** One recorded log call. */
export interface LogRecord {
  /** The level. */
  level: "debug" | "info" | "warn" | "error";
  /** The message. */
  message: string;
  /** The properties. */
  properties: Record<string, unknown>;
}

/** A {@linkcode Logger} that keeps what it is told and lets tests wait for an entry. */
export class CollectingLogger implements Logger {
  /** Every record, oldest first (bounded: the oldest are dropped past `limit`). */
  readonly records: LogRecord[] = [];
  readonly #limit: number;
  readonly #waiters = new Set<
    { match: (r: LogRecord) => boolean; resolve: (r: LogRecord) => void }
  >();

  /** @param limit Records kept at most. */
  constructor(limit = 10_000) {
    this.#limit = limit;
  }

  #add(
    level: LogRecord["level"],
    message: string,
    properties: Record<string, unknown> = {},
  ): void {
    const record = { level, message, properties };
    this.records.push(record);
    if (this.records.length > this.#limit) this.records.shift();
    for (const waiter of [...this.#waiters]) {
      if (waiter.match(record)) {
        this.#waiters.delete(waiter);
        waiter.resolve(record);
      }
    }
  }

  /** Records a debug entry. */
  debug(message: string, properties?: Record<string, unknown>): void {
    this.#add("debug", message, properties);
  }
  /** Records an info entry. */
  info(message: string, properties?: Record<string, unknown>): void {
    this.#add("info", message, properties);
  }
  /** Records a warn entry. */
  warn(message: string, properties?: Record<string, unknown>): void {
    this.#add("warn", message, properties);
  }
  /** Records an error entry. */
  error(message: string, properties?: Record<string, unknown>): void {
    this.#add("error", message, properties);
  }

  /** Records that match. */
  find(match: (r: LogRecord) => boolean): LogRecord[] {
    return this.records.filter(match);
  }

  /**
   * Resolves with the first record, already kept or yet to come, that
   * matches; rejects with `signal.reason` if it aborts first.
   */
  waitFor(
    match: (r: LogRecord) => boolean,
    signal?: AbortSignal,
  ): Promise<LogRecord> {
    const seen = this.records.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    if (signal?.aborted) return Promise.reject(signal.reason);
    const { promise, resolve, reject } = Promise.withResolvers<LogRecord>();
    const onAbort = () => {
      this.#waiters.delete(waiter);
      reject(signal!.reason);
    };
    const waiter = {
      match,
      resolve: (r: LogRecord) => {
        signal?.removeEventListener("abort", onAbort);
        resolve(r);
      },
    };
    this.#waiters.add(waiter);
    signal?.addEventListener("abort", onAbort, { once: true });
    return promise;
  }
}

// ---------------------------------------------------------------------------
// Fault scenarios

/** The faults {@linkcode runFaultScenario} knows. */
export type FaultName =
  | "latency"
  | "fragment"
  | "reset-mid-frame"
  | "blackhole"
  | "slow-read"
  | "process-restart";

/** Every fault, in table order. */
export const FAULTS: readonly FaultName[] = [
  "latency",
  "fragment",
  "reset-mid-frame",
  "blackhole",
  "slow-read",
  "process-restart",
];

/** Options of {@linkcode runFaultScenario}. */
export interface FaultScenarioOptions {
  /**
   * Successful requests of clean load before the fault is switched on (with
   * the load still running, so the fault hits requests in flight).
   *
   * @default {64}
   */
  warmupRequests?: number;
  /**
   * Milliseconds the fault lasts (under load).
   *
   * @default {1500}
   */
  faultMs?: number;
  /**
   * Concurrent request loops.
   *
   * @default {16}
   */
  concurrency?: number;
  /**
   * Request timeout, ms.
   *
   * @default {1000}
   */
  timeout?: number;
  /**
   * Allowed lateness past a deadline, ms.
   *
   * @default {250}
   */
  slack?: number;
  /**
   * Heartbeat interval of the client, ms.
   *
   * @default {400} (4000 for `latency`, whose added round trip is longer
   * than the heartbeat's wait of half an interval)
   */
  heartbeatInterval?: number;
  /**
   * Requests per loop after the heal that must all succeed.
   *
   * @default {10}
   */
  verifyPerLoop?: number;
  /**
   * Milliseconds after the heal within which a request must succeed again.
   *
   * @default {8000}
   */
  recoverWithin?: number;
}

/** What {@linkcode runFaultScenario} found. */
export interface FaultScenarioResult {
  /** The fault. */
  name: FaultName;
  /** Load from the warmup to the heal (every request checked against the invariants). */
  load: LoadReport;
  /** Load after the heal (must be all ok). */
  verify: LoadReport;
  /** Whether requests succeeded again after the heal, all of them. */
  recovered: boolean;
  /** Milliseconds from the heal to the first successful request. */
  recoveryMs: number;
  /** `client.stats().pending` once the verification load ended. */
  pendingAfter: number;
  /** Blackhole: ms from the fault to the heartbeat closing each session open then. */
  detectionMs?: number[];
  /** Notes for the table. */
  notes: string[];
}

const ECHO_SERVER = new URL("../examples/echo_server.ts", import.meta.url);

/** A client of an echo server, possibly behind a proxy or in a child process. */
interface Rig {
  client: Client<Uint8Array>;
  proxy?: FaultProxy;
  server?: Server<Uint8Array>;
  child?: ChildProcess;
  close(): Promise<void>;
}

/** Client options used by the scenarios. */
export function scenarioClientOptions(
  heartbeatInterval: number,
  timeout: number,
): DialOptions<Uint8Array> {
  return {
    sessions: 2,
    requestTimeout: timeout,
    connectTimeout: 5000,
    heartbeat: { interval: heartbeatInterval },
    reconnect: { initial: 50, max: 500, stableAfter: 1000 },
  };
}

/**
 * Starts an in-process echo server on port 0, a fault proxy in front of it
 * and a client through the proxy.
 */
export async function startProxyRig(
  clientOptions: DialOptions<Uint8Array>,
  serverLogger?: Logger,
): Promise<Rig & { proxy: FaultProxy; server: Server<Uint8Array> }> {
  const server = serve({
    hostname: "127.0.0.1",
    port: 0,
    handler: (payload) => payload,
    ...(serverLogger === undefined ? {} : { logger: serverLogger }),
  });
  const proxy = startFaultProxy({ target: server.addr as Deno.NetAddr });
  let client: Client<Uint8Array>;
  try {
    client = await dial(
      { hostname: "127.0.0.1", port: proxy.addr.port },
      clientOptions,
    );
  } catch (error) {
    await proxy.close();
    await server.close();
    throw error;
  }
  return {
    client,
    proxy,
    server,
    async close() {
      proxy.heal();
      await client.close({ timeout: 1000 });
      await proxy.close();
      await server.shutdown({ timeout: 1000 });
    },
  };
}

function echoServerCommand(port: number): string[] {
  return [
    "deno",
    "run",
    "--allow-net=127.0.0.1",
    ECHO_SERVER.pathname,
    "--hostname",
    "127.0.0.1",
    "--port",
    String(port),
    "--log-level",
    "error",
  ];
}

async function startProcessRig(
  clientOptions: DialOptions<Uint8Array>,
): Promise<Rig & { child: ChildProcess; port: number }> {
  const child = await startProcess(echoServerCommand(0));
  const port = Number(child.match.groups!.port);
  let client: Client<Uint8Array>;
  try {
    client = await dial({ hostname: "127.0.0.1", port }, clientOptions);
  } catch (error) {
    await child.kill("SIGKILL");
    throw error;
  }
  const rig = {
    client,
    child,
    port,
    async close() {
      await client.close({ timeout: 1000 });
      await rig.child.kill("SIGTERM");
    },
  };
  return rig;
}

/**
 * Runs one fault under load: clean load until `warmupRequests` succeeded,
 * then the fault for `faultMs` under the same load, the heal, then waits for
 * a first success and runs a verification load that must succeed in full.
 *
 * @param name The fault.
 * @param options Durations, load shape, heartbeat.
 * @returns Reports, recovery and notes; it never throws for a violated
 * invariant (check with {@linkcode violations} and `recovered`).
 */
export async function runFaultScenario(
  name: FaultName,
  options: FaultScenarioOptions = {},
): Promise<FaultScenarioResult> {
  const {
    warmupRequests = 64,
    faultMs = 1500,
    concurrency = 16,
    timeout = 1000,
    slack = 250,
    heartbeatInterval = name === "latency" ? 4000 : 400,
    verifyPerLoop = 10,
    recoverWithin = 8000,
  } = options;
  const clientOptions = scenarioClientOptions(heartbeatInterval, timeout);
  const notes: string[] = [];
  const rig: Rig = name === "process-restart"
    ? await startProcessRig(clientOptions)
    : await startProxyRig(clientOptions);
  const { client } = rig;
  const detectionMs: number[] = [];
  const stop = new AbortController();
  try {
    const warmedUp = Promise.withResolvers<void>();
    const load = runLoad(client, {
      concurrency,
      timeout,
      slack,
      signal: stop.signal,
      onSettle: (report) => {
        if (report.ok >= warmupRequests) warmedUp.resolve();
      },
    });
    // Bounded: a load that cannot warm up ends the scenario as not recovered.
    const warmTimer = setTimeout(() => warmedUp.resolve(), 5000);
    await warmedUp.promise;
    clearTimeout(warmTimer);
    let faultAt = performance.now();
    const proxy = rig.proxy;
    switch (name) {
      case "latency": {
        // First a round trip within the timeout, then one beyond it.
        const low = Math.round(timeout * 0.3);
        const high = Math.round(timeout * 0.6);
        proxy!.latency(low);
        await delay(faultMs / 2);
        proxy!.latency(high);
        await delay(faultMs / 2);
        notes.push(
          `+${low} then +${high} ms each way; heartbeat ${heartbeatInterval} ms`,
        );
        break;
      }
      case "fragment":
        proxy!.fragment(true);
        await delay(faultMs);
        notes.push("1-byte writes both ways");
        break;
      case "reset-mid-frame":
        proxy!.resetMidFrame({ persistent: true });
        await delay(faultMs);
        notes.push(`${proxy!.resets} connections cut mid-chunk`);
        break;
      case "blackhole": {
        const open = new Set(client.sessions.map((s) => s.id));
        const onDisconnect = (event: Event) => {
          const detail = (event as CustomEvent<{ session: number }>).detail;
          if (open.delete(detail.session)) {
            detectionMs.push(performance.now() - faultAt);
          }
        };
        client.addEventListener("disconnect", onDisconnect);
        faultAt = performance.now();
        proxy!.blackhole(true);
        await delay(faultMs);
        client.removeEventListener("disconnect", onDisconnect);
        if (open.size > 0) {
          notes.push(`${open.size} session(s) not closed by the heartbeat`);
        }
        notes.push(
          `heartbeat ${heartbeatInterval} ms closed ${detectionMs.length} session(s) after ${
            detectionMs.map((ms) => Math.round(ms)).join("/")
          } ms`,
        );
        break;
      }
      case "slow-read":
        proxy!.slowRead(4, { intervalMs: 10, direction: "both" });
        await delay(faultMs);
        notes.push("4 B per 10 ms each way");
        break;
      case "process-restart": {
        const r = rig as Rig & { child: ChildProcess; port: number };
        await r.child.kill("SIGKILL");
        await delay(faultMs);
        const restarting = performance.now();
        r.child = await startProcess(echoServerCommand(r.port));
        notes.push(
          `SIGKILL, down ${Math.round(performance.now() - faultAt)} ms (start ${
            Math.round(performance.now() - restarting)
          } ms), same port`,
        );
        break;
      }
    }
    stop.abort();
    const faulted = await load;
    const healAt = performance.now();
    proxy?.heal();

    // Recovery: the first request that succeeds after the heal.
    let recovered = false;
    let recoveryMs = NaN;
    while (performance.now() - healAt < recoverWithin) {
      const probe = await runLoad(client, {
        concurrency: 1,
        count: 1,
        timeout,
        slack,
      });
      if (probe.ok === 1) {
        recovered = true;
        recoveryMs = performance.now() - healAt;
        break;
      }
    }
    const verify = await runLoad(client, {
      concurrency,
      timeout,
      slack,
      count: concurrency * verifyPerLoop,
    });
    const pendingAfter = await pendingOnceSettled(client);
    recovered = recovered && verify.requests > 0 &&
      verify.ok === verify.requests;
    const stats = client.stats();
    notes.push(
      `${stats.reconnects} reconnects, ${stats.lateReplies} late replies dropped`,
    );
    return {
      name,
      load: faulted,
      verify,
      recovered,
      recoveryMs,
      pendingAfter,
      ...(name === "blackhole" ? { detectionMs } : {}),
      notes,
    };
  } finally {
    stop.abort();
    await rig.close();
  }
}

// ---------------------------------------------------------------------------
// Rolling restart, forced

/** Options of {@linkcode runRollingRestart}. */
export interface RollingRestartOptions {
  /**
   * Servers the client knows, restarted one at a time.
   *
   * @default {3}
   */
  servers?: number;
  /**
   * `shutdown({ timeout })` of each server, ms: shorter than the work queued
   * on its sessions, so the shutdown is forced with handlers running.
   *
   * @default {50}
   */
  shutdownTimeout?: number;
  /**
   * How long each handler works before it answers, ms.
   *
   * @default {10}
   */
  handlerMs?: number;
  /**
   * `maxConcurrentHandlers` of each server session: requests beyond it are
   * read and held, so a forced shutdown has some it never started.
   *
   * @default {1}
   */
  maxConcurrentHandlers?: number;
  /**
   * Client sessions per server.
   *
   * @default {1}
   */
  sessions?: number;
  /**
   * Concurrent request loops.
   *
   * @default {16}
   */
  concurrency?: number;
  /**
   * Request timeout, ms.
   *
   * @default {1000}
   */
  timeout?: number;
  /**
   * Allowed lateness past a deadline, ms.
   *
   * @default {250}
   */
  slack?: number;
  /**
   * Successful requests before the first restart, and after each restarted
   * server is back, before the next one.
   *
   * @default {64}
   */
  settleRequests?: number;
  /**
   * Requests per loop after the last restart that must all succeed.
   *
   * @default {10}
   */
  verifyPerLoop?: number;
  /**
   * Bound on each wait (for sessions, for successes), ms: a wait that runs
   * out ends the scenario, reported in `notes`.
   *
   * @default {5000}
   */
  waitBound?: number;
}

/** What {@linkcode runRollingRestart} found. */
export interface RollingRestartResult {
  /** Load from the first restart's warmup to the end of the last restart. */
  load: LoadReport;
  /** Load once every server was back (must be all ok). */
  verify: LoadReport;
  /** `client.stats().retried` at the end. */
  retried: number;
  /** Every shutdown's report, in restart order. */
  reports: ShutdownReport[];
  /** Sums over the reports. */
  refused: number;
  /** Sums over the reports. */
  handlersCut: number;
  /** Sessions forced shut, summed. */
  forced: number;
  /** Sessions open at the shutdowns, summed. */
  sessions: number;
  /** Failed requests whose payload no handler ever started (must be 0). */
  lostUnstarted: number;
  /** Every server was restarted and the client reached all of them again. */
  completed: boolean;
  /** `client.stats().pending` once the verification load ended. */
  pendingAfter: number;
  /** Notes for the table. */
  notes: string[];
}

/**
 * The invariants of a forced rolling restart: the load's own invariants, no
 * more failures than handlers cut, no failed request that no handler had
 * started, a full verification load, nothing left pending.
 *
 * @returns The violations, empty when all hold.
 */
export function rollingRestartViolations(
  result: RollingRestartResult,
  slack = 250,
): string[] {
  const failed = result.load.requests - result.load.ok;
  return [
    ...violations(result.load, slack),
    ...violations(result.verify, slack).map((v) => `after restarts: ${v}`),
    ...(failed <= result.handlersCut
      ? []
      : [`${failed} requests failed, more than ${result.handlersCut} cut`]),
    ...(result.lostUnstarted === 0
      ? []
      : [`${result.lostUnstarted} failed requests were never started`]),
    ...(result.completed ? [] : ["restarts did not complete"]),
    ...(result.verify.requests > 0 &&
        result.verify.ok === result.verify.requests
      ? []
      : [
        `after restarts ${result.verify.ok}/${result.verify.requests} ok`,
      ]),
    ...(result.pendingAfter === 0
      ? []
      : [`${result.pendingAfter} requests left pending`]),
  ];
}

/** The first 16 bytes of a load payload (its nonce) as a key. */
function nonceKey(payload: Uint8Array): string {
  return Array.from(payload.subarray(0, 16), (b) => b.toString(16)).join(".");
}

/**
 * In-process echo servers on port 0, one client that knows all of them, and
 * steady load; each server in turn is shut down with a short
 * `shutdown({ timeout })` while its handlers run and more requests wait
 * (`maxConcurrentHandlers`), then served again on the same port; the next
 * restart waits until the client is back on it and requests succeed again.
 * Every handler records the nonce of what it starts, so a failed request can
 * be told apart: one that had started (cut, it may have run) or one that
 * never did (lost).
 *
 * @param options Servers, timeouts, handler work, load shape.
 * @returns Load reports, the shutdown reports and their sums, `retried`; it
 * never throws for a violated invariant (check with
 * {@linkcode rollingRestartViolations}).
 */
export async function runRollingRestart(
  options: RollingRestartOptions = {},
): Promise<RollingRestartResult> {
  const {
    servers: count = 3,
    shutdownTimeout = 50,
    handlerMs = 10,
    maxConcurrentHandlers = 1,
    sessions = 1,
    concurrency = 16,
    timeout = 1000,
    slack = 250,
    settleRequests = 64,
    verifyPerLoop = 10,
    waitBound = 5000,
  } = options;
  const started = new Set<string>();
  const running = new Set<Promise<unknown>>();
  const start = (port: number) =>
    serve({
      hostname: "127.0.0.1",
      port,
      maxConcurrentHandlers,
      handler: (payload: Uint8Array) => {
        started.add(nonceKey(payload));
        // Held until it settles, so the scenario ends with no timer left
        // behind by a handler its server cut.
        const work = delay(handlerMs).then(() => payload);
        running.add(work);
        work.finally(() => running.delete(work));
        return work;
      },
    });
  const servers: Server<Uint8Array>[] = [];
  const notes: string[] = [];
  const reports: ShutdownReport[] = [];
  const failed: Uint8Array[] = [];
  let client: Client<Uint8Array> | undefined;
  const stop = new AbortController();
  let load: Promise<LoadReport> | undefined;
  try {
    for (let i = 0; i < count; i++) servers.push(start(0));
    const ports = servers.map((s) => (s.addr as Deno.NetAddr).port);
    client = await dial(
      ports.map((port) => ({ hostname: "127.0.0.1", port })),
      {
        ...scenarioClientOptions(400, timeout),
        sessions,
        reconnect: { initial: 20, max: 100, stableAfter: 1000 },
      },
    );
    const c = client;
    const full = count * sessions;
    /** Resolves once `n` sessions are ready, false if `waitBound` passed first. */
    const readyAtLeast = async (n: number): Promise<boolean> => {
      const deadline = AbortSignal.timeout(waitBound);
      while ((c.stats().sessions.ready ?? 0) < n) {
        if (deadline.aborted) return false;
        await new Promise<void>((resolve) => {
          const done = () => {
            c.removeEventListener("ready", done);
            deadline.removeEventListener("abort", done);
            resolve();
          };
          c.addEventListener("ready", done);
          deadline.addEventListener("abort", done);
        });
      }
      return true;
    };
    if (!await readyAtLeast(full)) notes.push("not every session came up");

    // Successes counted by the load; a latch waits for the next `n` of them.
    let ok = 0;
    let waiter: { at: number; resolve: () => void } | undefined;
    const okAfter = async (n: number): Promise<boolean> => {
      const { promise, resolve } = Promise.withResolvers<void>();
      waiter = { at: ok + n, resolve };
      const timer = setTimeout(resolve, waitBound);
      await promise;
      clearTimeout(timer);
      const reached = ok >= waiter.at;
      waiter = undefined;
      return reached;
    };
    load = runLoad(client, {
      concurrency,
      timeout,
      slack,
      signal: stop.signal,
      onSettle: (report) => {
        ok = report.ok;
        if (waiter !== undefined && ok >= waiter.at) waiter.resolve();
      },
      onFailure: (payload) => failed.push(payload),
    });
    /**
     * Resolves once `sessions` new sessions to `port` are ready, false if
     * `waitBound` passed first. Called before the restart, so none is missed.
     */
    const backOn = (port: number): Promise<boolean> => {
      const { promise, resolve } = Promise.withResolvers<boolean>();
      let seen = 0;
      const onReady = (event: Event) => {
        const { endpoint } = (event as CustomEvent<{ endpoint: string }>)
          .detail;
        if (endpoint.endsWith(`:${port}`) && ++seen === sessions) done(true);
      };
      const timer = setTimeout(() => done(false), waitBound);
      const done = (value: boolean) => {
        clearTimeout(timer);
        c.removeEventListener("ready", onReady);
        resolve(value);
      };
      c.addEventListener("ready", onReady);
      return promise;
    };
    let completed = await okAfter(settleRequests);
    for (let i = 0; i < count && completed; i++) {
      const back = backOn(ports[i]!);
      reports.push(await servers[i]!.shutdown({ timeout: shutdownTimeout }));
      servers[i] = start(ports[i]!);
      completed = await back && await okAfter(settleRequests);
    }
    if (!completed) notes.push("a restart did not complete in time");
    stop.abort();
    const faulted = await load;
    load = undefined;
    const verify = await runLoad(client, {
      concurrency,
      timeout,
      slack,
      count: concurrency * verifyPerLoop,
    });
    const sum = (key: "refused" | "handlersCut" | "forced" | "sessions") =>
      reports.reduce((total, report) => total + report[key], 0);
    const lostUnstarted = failed.filter((payload) =>
      !started.has(nonceKey(payload))
    ).length;
    const result: RollingRestartResult = {
      load: faulted,
      verify,
      retried: client.stats().retried,
      reports,
      refused: sum("refused"),
      handlersCut: sum("handlersCut"),
      forced: sum("forced"),
      sessions: sum("sessions"),
      lostUnstarted,
      completed,
      pendingAfter: await pendingOnceSettled(client),
      notes,
    };
    notes.push(
      `${count} servers, shutdown timeout ${shutdownTimeout} ms, handler ${handlerMs} ms, ${maxConcurrentHandlers} at a time per session`,
      `forced ${result.forced}/${result.sessions} sessions`,
      `refused ${result.refused}, handlersCut ${result.handlersCut}, retried ${result.retried}`,
      `${lostUnstarted} failed requests never started`,
    );
    return result;
  } finally {
    stop.abort();
    await load;
    await client?.close({ timeout: 1000 });
    await Promise.all(servers.map((s) => s.shutdown({ timeout: 1000 })));
    await Promise.all([...running]);
  }
}

// ---------------------------------------------------------------------------
// Soak

/** Options of {@linkcode runSoak}. */
export interface SoakOptions {
  /**
   * Milliseconds of load.
   *
   * @default {60000}
   */
  duration?: number;
  /** Seed of the fault schedule (printed so a run can be replayed). */
  seed?: number;
  /**
   * Concurrent request loops.
   *
   * @default {16}
   */
  concurrency?: number;
  /**
   * Request timeout, ms.
   *
   * @default {1000}
   */
  timeout?: number;
  /**
   * Allowed lateness, ms.
   *
   * @default {250}
   */
  slack?: number;
  /**
   * Milliseconds of clean load before RSS is first read, so that the V8
   * heap has grown to its steady size (about 2 s here).
   *
   * @default {2000}
   */
  warmup?: number;
  /** Called at each fault switch (for progress output). */
  onFault?: (fault: string, atMs: number) => void;
}

/** What {@linkcode runSoak} found. */
export interface SoakResult {
  /** Seed used. */
  seed: number;
  /** Load over the whole soak. */
  load: LoadReport;
  /** Load after the final heal (must be all ok). */
  verify: LoadReport;
  /** Whether the client worked again after the final heal. */
  recovered: boolean;
  /** Faults applied, by name. */
  faults: Record<string, number>;
  /**
   * `Deno.memoryUsage().rss` after setup and warmup, bytes (after a full GC
   * when `gc` is exposed).
   */
  rssStart: number;
  /** Largest RSS read at a fault switch, bytes. */
  rssPeak: number;
  /** RSS at the end (before teardown), bytes. */
  rssEnd: number;
  /** V8 heap in use after the warmup, bytes. */
  heapStart: number;
  /** V8 heap in use at the end, bytes. */
  heapEnd: number;
  /** `client.stats().pending` at the end. */
  pendingAfter: number;
  /** Client reconnects over the soak. */
  reconnects: number;
}

/**
 * Runs a full garbage collection when the process was started with
 * `--v8-flags=--expose-gc` (as `deno task reliability` is); else does nothing.
 */
export function collectGarbage(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** A small seeded PRNG (mulberry32): returns floats in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SOAK_FAULTS = [
  "none",
  "latency",
  "fragment",
  "reset-mid-frame",
  "reset-all",
  "blackhole",
  "slow-read",
  "refuse",
] as const;

/**
 * Steady load through a fault proxy while a random fault (or none) is
 * switched every 0.5–2 s (each fault once per round of eight, in random
 * order), then a heal and a verification load.
 *
 * @param options Duration, seed, load shape.
 * @returns Totals, faults, RSS at start and end.
 */
export async function runSoak(options: SoakOptions = {}): Promise<SoakResult> {
  const {
    duration = 60_000,
    seed = Date.now() % 0x7fff_ffff,
    concurrency = 16,
    timeout = 1000,
    slack = 250,
    warmup = 2000,
  } = options;
  const random = prng(seed);
  const rig = await startProxyRig(scenarioClientOptions(400, timeout));
  const { client, proxy } = rig;
  try {
    // Warm up so that RSS at start includes the steady-state heap.
    await runLoad(client, { concurrency, duration: warmup, timeout });
    collectGarbage();
    const { rss: rssStart, heapUsed: heapStart } = Deno.memoryUsage();
    let rssPeak = rssStart;
    const stop = new AbortController();
    const load = runLoad(client, {
      concurrency,
      timeout,
      slack,
      signal: stop.signal,
    });
    const faults: Record<string, number> = {};
    const started = performance.now();
    // A shuffled bag: every fault comes up once per round, in random order,
    // so even a short soak sees them all.
    const bag: string[] = [];
    while (performance.now() - started < duration) {
      if (bag.length === 0) {
        bag.push(...SOAK_FAULTS);
        for (let i = bag.length - 1; i > 0; i--) {
          const j = Math.floor(random() * (i + 1));
          [bag[i], bag[j]] = [bag[j]!, bag[i]!];
        }
      }
      const fault = bag.pop()!;
      faults[fault] = (faults[fault] ?? 0) + 1;
      rssPeak = Math.max(rssPeak, Deno.memoryUsage().rss);
      options.onFault?.(fault, performance.now() - started);
      proxy.heal();
      switch (fault) {
        case "latency":
          proxy.latency(Math.round(20 + random() * 500));
          break;
        case "fragment":
          proxy.fragment(true);
          break;
        case "reset-mid-frame":
          proxy.resetMidFrame();
          break;
        case "reset-all":
          proxy.resetAll();
          break;
        case "blackhole":
          proxy.blackhole(true);
          break;
        case "slow-read":
          proxy.slowRead(16 + Math.floor(random() * 256), {
            intervalMs: 10,
            direction: "both",
          });
          break;
        case "refuse":
          proxy.refuse(true);
          proxy.resetAll();
          break;
      }
      const left = duration - (performance.now() - started);
      await delay(Math.max(0, Math.min(left, 500 + random() * 1500)));
    }
    proxy.heal();
    stop.abort();
    const soaked = await load;
    // Recovery: bounded retries until a request succeeds, then a full check.
    const healAt = performance.now();
    let recovered = false;
    while (performance.now() - healAt < 8000) {
      const probe = await runLoad(client, {
        concurrency: 1,
        count: 1,
        timeout,
      });
      if (probe.ok === 1) {
        recovered = true;
        break;
      }
    }
    const verify = await runLoad(client, {
      concurrency,
      count: concurrency * 10,
      timeout,
      slack,
    });
    recovered = recovered && verify.ok === verify.requests;
    collectGarbage();
    const { rss: rssEnd, heapUsed: heapEnd } = Deno.memoryUsage();
    return {
      seed,
      load: soaked,
      verify,
      recovered,
      faults,
      rssStart,
      rssPeak: Math.max(rssPeak, rssEnd),
      rssEnd,
      heapStart,
      heapEnd,
      pendingAfter: await pendingOnceSettled(client),
      reconnects: client.stats().reconnects,
    };
  } finally {
    await rig.close();
  }
}

// ---------------------------------------------------------------------------
// Formatting

/** `{ A: 3, B: 1 }` as `A 3, B 1` (or `-`). */
export function formatErrors(errors: Record<string, number>): string {
  const parts = Object.entries(errors).sort((a, b) => b[1] - a[1]).map((
    [name, n],
  ) => `${name} ${n}`);
  return parts.length === 0 ? "-" : parts.join(", ");
}

/** Bytes as MiB with one decimal. */
export function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}
