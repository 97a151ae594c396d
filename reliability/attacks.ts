/**
 * Hostile peers for `deno task reliability`: each attack runs for a bounded
 * time against a server in a process of its own (`attack_server.ts`, on
 * `serve()`'s defaults) or, for the hostile-server attacks, against a
 * client dialled to a good server and a hostile one; meanwhile a clean
 * client sends requests. Each reports the clean client's success rate and
 * p99 latency, and the server process's RSS before and at its peak.
 *
 * @module
 */

import { type Client, delay, dial } from "../mod.ts";
import { defaultCodec, type Frame, FrameKind } from "../protocol.ts";
import { formatErrors, type LoadReport, runLoad } from "../tests/_load.ts";
import { type ChildProcess, startProcess } from "../tests/_process.ts";
import { hasOpenssl, makeTestPki } from "../tests/_certs.ts";

/** The attacks, in the order they run. */
export const ATTACKS = [
  "slowloris",
  "large-frames",
  "pipelining",
  "garbage-after-frame",
  "stalled-tls-handshakes",
  "forged-replies",
  "drain-and-stay",
  "idle-flood",
  "trickle",
] as const;

/** One attack's name. */
export type AttackName = typeof ATTACKS[number];

/** What one attack did. */
export interface AttackResult {
  name: AttackName;
  /** The attack, in words. */
  what: string;
  /** The clean client's requests during the attack. */
  load: LoadReport;
  /** The server process's RSS before the attack, bytes. */
  rssBefore: number;
  /** Its highest RSS sampled during the attack (every 50 ms), bytes. */
  rssPeak: number;
  /** What the server or the attackers saw. */
  notes: string[];
}

const HOST = "127.0.0.1";

/** The attack server's `memoryBudget` (bytes); undefined = its default. */
let memoryBudget: number | undefined;

/**
 * Runs the attack server with this `memoryBudget` instead of the default.
 *
 * @param bytes The budget; undefined for the default.
 */
export function setMemoryBudget(bytes: number | undefined): void {
  memoryBudget = bytes;
}

/** The attack server's `idleTimeout` (ms); undefined = its default (off). */
let idleTimeout: number | undefined;

/**
 * Runs the attack server with this `idleTimeout` instead of the default.
 *
 * @param ms The timeout; undefined for the default.
 */
export function setIdleTimeout(ms: number | undefined): void {
  idleTimeout = ms;
}

function serverCommand(extra: string[] = []): string[] {
  return withFdLimit([
    "deno",
    "run",
    "-A",
    SERVER.pathname,
    ...extra,
    ...(memoryBudget === undefined
      ? []
      : ["--memory-budget", String(memoryBudget)]),
    ...(idleTimeout === undefined
      ? []
      : ["--idle-timeout", String(idleTimeout)]),
  ]);
}

/**
 * A `deno` command run with its soft limit of open files raised to the
 * hard limit (Deno cannot raise it itself): the floods hold thousands of
 * sockets on both sides.
 */
function withFdLimit(cmd: string[]): string[] {
  const [program, ...args] = cmd;
  return [
    "sh",
    "-c",
    'ulimit -S -n "$(ulimit -H -n)" 2>/dev/null; exec "$@"',
    "sh",
    program === "deno" ? Deno.execPath() : program!,
    ...args,
  ];
}

/**
 * A process's limits of open files.
 *
 * @param pid The process, or "self".
 * @returns The soft and hard limits (Infinity for unlimited).
 */
export function fdLimits(pid: number | "self"): { soft: number; hard: number } {
  const limits = Deno.readTextFileSync(`/proc/${pid}/limits`);
  const match = /Max open files\s+(\S+)\s+(\S+)/.exec(limits);
  const limit = (value: string | undefined) =>
    value === undefined || value === "unlimited" ? Infinity : Number(value);
  return { soft: limit(match?.[1]), hard: limit(match?.[2]) };
}
const SERVER = new URL("./attack_server.ts", import.meta.url);
const ATTACKER = new URL("./attacker.ts", import.meta.url);
const codec = defaultCodec();

function frame(kind: number, id: number, payload: Uint8Array): Uint8Array {
  return codec.encode({ kind: kind as FrameKind, id, payload });
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function rssBytes(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)\s+kB/.exec(status)?.[1] ?? NaN) * 1024;
}

/** Samples a process's RSS every 50 ms until stopped. */
function sampleRss(
  pid: number,
): { before: number; peak: number; stop(): void } {
  const sample = {
    before: rssBytes(pid),
    peak: 0,
    stop: () => clearInterval(timer),
  };
  sample.peak = sample.before;
  const timer = setInterval(() => {
    try {
      sample.peak = Math.max(sample.peak, rssBytes(pid));
    } catch {
      // The process has gone.
    }
  }, 50);
  return sample;
}

function fdCount(pid: number): number {
  let n = 0;
  for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) n++;
  return n;
}

/** The last `stats` line the attack server printed. */
function lastStats(child: ChildProcess): Record<string, number> {
  const line = child.stdoutLines.findLast((l) => l.startsWith("stats "));
  return line === undefined ? {} : JSON.parse(line.slice(6));
}

/** Writes all of `bytes`; resolves false once the peer cut the connection. */
async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<boolean> {
  let at = 0;
  try {
    while (at < bytes.length) at += await conn.write(bytes.subarray(at));
    return true;
  } catch {
    return false;
  }
}

function closeAll(conns: Deno.Conn[]): void {
  for (const conn of conns) {
    try {
      conn.close();
    } catch {
      // Closed by the server already.
    }
  }
}

async function connectMany(port: number, n: number): Promise<Deno.Conn[]> {
  const conns: Deno.Conn[] = [];
  for (let i = 0; i < n; i += 100) {
    const batch = Math.min(100, n - i);
    conns.push(
      ...await Promise.all(
        Array.from(
          { length: batch },
          () => Deno.connect({ hostname: HOST, port }),
        ),
      ),
    );
  }
  return conns;
}

/** What an attack calls once its connections are open. */
let onReady: () => void = () => {};

/**
 * Sets what an attack calls once its connections are open (the attacker
 * process then prints its ready line).
 *
 * @param ready Called once per attack.
 */
export function whenAttacking(ready: () => void): void {
  onReady = ready;
}

/** Dials the clean client to `endpoints`. */
function cleanClient(
  endpoints: string[],
  sessions?: number,
  caCert?: string,
): Promise<Client<Uint8Array>> {
  return dial(endpoints, {
    connectTimeout: 5000,
    ...(sessions === undefined ? {} : { sessions }),
    ...(caCert === undefined ? {} : { tls: { caCerts: [caCert] } }),
  });
}

/** Runs the clean client's load for `ms`. */
function cleanRequests(
  client: Client<Uint8Array>,
  ms: number,
): Promise<LoadReport> {
  return runLoad(client, { concurrency: 4, duration: ms, timeout: 1000 });
}

/** An endpoint the clean client ejected (outlier detection), and when. */
interface Ejection {
  endpoint: string;
  /** Ms since the load began. */
  at: number;
  /** Ms it stays out. */
  duration: number;
}

/** Runs the clean client's load against `endpoints` for `ms`. */
async function cleanLoad(
  endpoints: string[],
  ms: number,
  sessions?: number,
  caCert?: string,
): Promise<{ load: LoadReport; reconnects: number; ejections: Ejection[] }> {
  await using client = await cleanClient(endpoints, sessions, caCert);
  const ejections: Ejection[] = [];
  const started = performance.now();
  const onEjected = (event: Event) => {
    const { endpoint, duration } = (event as CustomEvent<Ejection>).detail;
    ejections.push({ endpoint, at: performance.now() - started, duration });
  };
  client.addEventListener("endpoint-ejected", onEjected);
  try {
    const load = await cleanRequests(client, ms);
    return { load, reconnects: client.stats().reconnects, ejections };
  } finally {
    client.removeEventListener("endpoint-ejected", onEjected);
  }
}

/** How {@linkcode againstServer} runs an attack. */
interface AgainstServerOptions {
  /** Serve TLS with these files; the clean client trusts `caCert`. */
  tls?: { certFile: string; keyFile: string; caCert: string };
  /**
   * Dial the clean client before the attack starts (an attack that fills
   * the server's connections would leave it none), not once it runs.
   */
  cleanFirst?: boolean;
  /** Runs beside the clean load, on the server's port, for `ms`. */
  beside?: (port: number, ms: number) => Promise<string[]>;
  /** How long the attacker may take to open its connections. @default {30000} */
  readyTimeout?: number;
}

/**
 * Starts the attack server, runs `attack` beside a clean load, samples the
 * server's RSS, and stops everything.
 */
async function againstServer(
  name: AttackName,
  ms: number,
  what: string,
  options: AgainstServerOptions = {},
): Promise<AttackResult> {
  const { tls, cleanFirst = false, beside } = options;
  await using child = await startProcess(
    serverCommand(
      tls === undefined ? [] : ["--cert", tls.certFile, "--key", tls.keyFile],
    ),
  );
  const port = Number(child.match.groups!.port);
  const rss = sampleRss(child.pid);
  const endpoints = [`${HOST}:${port}`];
  let client: Client<Uint8Array> | undefined;
  try {
    if (cleanFirst) {
      client = await cleanClient(endpoints, undefined, tls?.caCert);
    }
    // The attackers run in a process of their own: their writes must not
    // slow the clean client down, only the server may.
    await using attacker = await startProcess(
      withFdLimit([
        "deno",
        "run",
        "-A",
        ATTACKER.pathname,
        name,
        String(port),
      ]),
      {
        readyLine: /^attacking$/,
        readyTimeout: options.readyTimeout ?? 30_000,
      },
    );
    client ??= await cleanClient(endpoints, undefined, tls?.caCert);
    const [load, besides] = await Promise.all([
      cleanRequests(client, ms),
      beside?.(port, ms) ?? [],
    ]);
    const fds = fdCount(child.pid);
    await attacker.kill("SIGTERM");
    const line = attacker.stdoutLines.find((l) => l.startsWith("notes "));
    const notes: string[] = line === undefined
      ? [`the attacker reported nothing: ${attacker.stderrLines.join(" ")}`]
      : JSON.parse(line.slice(6));
    const stats = lastStats(child);
    notes.push(
      `server: protocolErrors ${stats.protocolErrors ?? 0}, budget pauses ${
        stats.budgetPauses ?? 0
      }, cuts ${stats.budgetCuts ?? 0}, buffered peak ${
        ((stats.bufferedPeak ?? 0) / 1048576).toFixed(1)
      } MiB; ${fds} open descriptors before the attackers left`,
      ...besides,
    );
    if (cleanFirst) {
      const sessions = child.stdoutLines.filter((l) => l.startsWith("stats "))
        .map((l) => (JSON.parse(l.slice(6)) as { sessions: number }).sessions);
      const { soft, hard } = fdLimits(child.pid);
      notes.push(
        `server: sessions peak ${Math.max(0, ...sessions)}, ${
          stats.sessions ?? 0
        } as the attackers left, ${
          stats.refused ?? 0
        } connections refused at accept (maxConnections); open files limit ${soft}/${hard}`,
      );
    }
    return {
      name,
      what,
      load,
      rssBefore: rss.before,
      rssPeak: rss.peak,
      notes,
    };
  } finally {
    await client?.close({ timeout: 0 });
    rss.stop();
    await child.kill("SIGTERM");
  }
}

/** Resolves when `signal` aborts. */
function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

/** 1,000 connections each sending one header byte a second. */
async function slowloris(port: number, signal: AbortSignal): Promise<string[]> {
  const conns = await connectMany(port, 1000);
  onReady();
  const header = frame(FrameKind.Request, 1, new Uint8Array(1024)).subarray(
    0,
    9,
  );
  let sent = 0;
  let cut = 0;
  const alive = new Set(conns);
  const tick = () => {
    const byte = header.subarray(sent % 9, sent % 9 + 1);
    sent++;
    for (const conn of alive) {
      conn.write(byte).catch(() => {
        if (alive.delete(conn)) cut++;
      });
    }
  };
  tick();
  const timer = setInterval(tick, 1000);
  await aborted(signal);
  clearInterval(timer);
  closeAll(conns);
  return [`1000 connections, ${sent} bytes each; ${cut} cut by the server`];
}

/** 32 peers that never read, each stalling 1 byte short of an 8 MiB frame. */
async function largeFrames(
  port: number,
  signal: AbortSignal,
): Promise<string[]> {
  const conns = await connectMany(port, 32);
  onReady();
  const size = 8 * 1024 * 1024;
  const bytes = frame(FrameKind.Request, 1, new Uint8Array(size)).subarray(
    0,
    9 + size - 1,
  );
  const writes = conns.map((conn) => writeAll(conn, bytes));
  await aborted(signal);
  closeAll(conns);
  const done = await Promise.all(writes);
  const cut = done.filter((ok) => !ok).length;
  return [`32 × (8 MiB − 1 byte); ${cut} writers cut or stopped`];
}

/** 200 peers that never read, each pipelining 20,000 never-answered requests. */
async function pipelining(
  port: number,
  signal: AbortSignal,
): Promise<string[]> {
  const conns = await connectMany(port, 200);
  onReady();
  const one = frame(
    FrameKind.Request,
    1,
    new TextEncoder().encode("STALL"),
  );
  const burst = new Uint8Array(one.length * 20_000);
  for (let at = 0; at < burst.length; at += one.length) burst.set(one, at);
  const writes = conns.map((conn) => writeAll(conn, burst));
  await aborted(signal);
  closeAll(conns);
  const done = await Promise.all(writes);
  return [
    `200 × 20,000 requests into a handler that never returns; ${
      done.filter((ok) => ok).length
    } bursts fully written`,
  ];
}

/**
 * 1,000 connections to a TLS port that never send their handshake; counts
 * those the server closes.
 */
async function stalledTls(
  port: number,
  signal: AbortSignal,
): Promise<string[]> {
  const conns = await connectMany(port, 1000);
  onReady();
  let closed = 0;
  const reads = conns.map((conn) =>
    conn.read(new Uint8Array(1024)).then(
      (n) => {
        if (n === null) closed++;
      },
      () => closed++,
    )
  );
  await aborted(signal);
  const byServer = closed;
  closeAll(conns);
  await Promise.all(reads);
  return [`1000 stalled handshakes; ${byServer} closed by the server`];
}

/** Peers that send a valid request and garbage in one write, 8 at a time. */
async function garbageAfterFrame(
  port: number,
  signal: AbortSignal,
): Promise<string[]> {
  let tries = 0;
  let answered = 0;
  const wire = concat([
    frame(FrameKind.Request, 7, new TextEncoder().encode("hello")),
    frame(0xee, 8, new TextEncoder().encode("junk")),
  ]);
  onReady();
  const loop = async () => {
    while (!signal.aborted) {
      tries++;
      using conn = await Deno.connect({ hostname: HOST, port });
      await writeAll(conn, wire);
      const decoder = codec.decoder();
      const frames: Frame[] = [];
      const buffer = new Uint8Array(4096);
      for (;;) {
        const n = await conn.read(buffer).catch(() => null);
        if (n === null) break;
        frames.push(...decoder.decode(buffer.slice(0, n)));
      }
      if (frames.some((f) => f.kind === FrameKind.Response && f.id === 7)) {
        answered++;
      }
    }
  };
  await Promise.all(Array.from({ length: 8 }, loop));
  return [`request + garbage in one write: ${answered}/${tries} answered`];
}

/** What a hostile endpoint does besides answering. */
interface HostileHooks {
  /** While true for a connection and a frame it read, it answers nothing. */
  mute?: (conn: Deno.Conn, frame: Frame) => boolean;
  /** The client closed a connection (not called for those closed by close()). */
  closed?: (conn: Deno.Conn) => void;
}

/**
 * A hostile endpoint in this process, speaking the default protocol: it
 * answers pings and its own requests, and `extra` adds what it sends
 * besides.
 */
function hostileEndpoint(
  extra: (conn: Deno.Conn, frame: Frame) => Uint8Array[],
  hooks: HostileHooks = {},
): { port: number; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const conns = new Set<Deno.Conn>();
  const serving: Promise<void>[] = [];
  let closing = false;
  const serveConn = async (conn: Deno.Conn) => {
    const decoder = codec.decoder();
    const buffer = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buffer).catch(() => null);
      if (n === null) break;
      const out: Uint8Array[] = [];
      for (const f of decoder.decode(buffer.slice(0, n))) {
        if (hooks.mute?.(conn, f)) continue;
        if (f.kind === FrameKind.Ping) {
          out.push(frame(FrameKind.Pong, f.id, f.payload));
        }
        if (f.kind === FrameKind.Request) {
          out.push(frame(FrameKind.Response, f.id, f.payload));
        }
        out.push(...extra(conn, f));
      }
      if (out.length > 0 && !await writeAll(conn, concat(out))) break;
    }
    if (!closing) hooks.closed?.(conn);
    conns.delete(conn);
    try {
      conn.close();
    } catch {
      // Closed already.
    }
  };
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      serving.push(serveConn(conn));
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async close() {
      closing = true;
      listener.close();
      await accepting.catch(() => {});
      closeAll([...conns]);
      await Promise.all(serving);
    },
  };
}

/**
 * Starts the attack server as the good endpoint and runs the clean load
 * against it and `hostile` (a client of both), sampling the server's RSS.
 */
async function besideHostile(
  name: AttackName,
  what: string,
  ms: number,
  hostile: { port: number },
  sessions?: number,
): Promise<AttackResult & { reconnects: number; ejections: Ejection[] }> {
  await using child = await startProcess(serverCommand());
  const port = Number(child.match.groups!.port);
  const rss = sampleRss(child.pid);
  try {
    const { load, reconnects, ejections } = await cleanLoad(
      [
        `${HOST}:${port}`,
        `${HOST}:${hostile.port}`,
      ],
      ms,
      sessions,
    );
    return {
      name,
      what,
      load,
      rssBefore: rss.before,
      rssPeak: rss.peak,
      notes: [],
      reconnects,
      ejections,
    };
  } finally {
    rss.stop();
    await child.kill("SIGTERM");
  }
}

/** A client of a good server and a hostile one that forges replies. */
async function forgedReplies(ms: number): Promise<AttackResult> {
  let forged = 0;
  let last = 0;
  const hostile = hostileEndpoint((_conn, f) => {
    if (f.kind !== FrameKind.Request) return [];
    // With one session per endpoint, the ids below this request's that
    // never came here went to the good server: forge their replies.
    const out: Uint8Array[] = [];
    for (let id = Math.max(last + 1, f.id - 16); id < f.id; id++) {
      out.push(frame(FrameKind.Response, id, new Uint8Array(16)));
      forged++;
    }
    last = f.id;
    return out;
  });
  try {
    const result = await besideHostile(
      "forged-replies",
      "a client (one session per endpoint) of a good server and a hostile one that forges replies to the requests sent to the good one",
      ms,
      hostile,
      1,
    );
    result.notes.push(
      `${forged} forged replies sent; ${result.load.mismatches} accepted by a request`,
    );
    return result;
  } finally {
    await hostile.close();
  }
}

/** A client of a good server and a hostile one that drains and stays. */
async function drainAndStay(ms: number): Promise<AttackResult> {
  let drains = 0;
  const told = new WeakSet<Deno.Conn>();
  const hostile = hostileEndpoint((conn, f) => {
    // After the connect ping: tell the client to drain, then stay.
    if (f.kind !== FrameKind.Ping || told.has(conn)) return [];
    told.add(conn);
    drains++;
    return [frame(FrameKind.Drain, 0, new Uint8Array(0))];
  });
  try {
    const result = await besideHostile(
      "drain-and-stay",
      "a client of a good server and a hostile one that sends drain and never closes",
      ms,
      hostile,
    );
    result.notes.push(
      `${drains} drains sent by the hostile server; the client reconnected ${result.reconnects} times`,
    );
    return result;
  } finally {
    await hostile.close();
  }
}

/** Idle connections the idle flood holds at most. */
const IDLE_FLOOD = 10_000;

/** Seconds since `start`, one decimal. */
function secondsSince(start: number, at: number): string {
  return ((at - start) / 1000).toFixed(1);
}

/**
 * Up to {@linkcode IDLE_FLOOD} connections that send nothing, as many as
 * this process's limit of open files allows (less a margin for Deno's
 * own); notes when the server closes them.
 */
async function idleFlood(port: number, signal: AbortSignal): Promise<string[]> {
  const { soft, hard } = fdLimits("self");
  const wanted = Math.min(IDLE_FLOOD, soft - 64);
  const started = performance.now();
  const closedAt: number[] = [];
  let leaving = false;
  let failed = 0;
  const conns: Deno.Conn[] = [];
  const reads: Promise<void>[] = [];
  // Nothing is ever sent to these: a read ends only when the server closes.
  const unused = new Uint8Array(1);
  const closedByServer = () => {
    if (!leaving) closedAt.push(performance.now());
  };
  for (let i = 0; i < wanted && !signal.aborted; i += 100) {
    const batch = await Promise.allSettled(
      Array.from(
        { length: Math.min(100, wanted - i) },
        () => Deno.connect({ hostname: HOST, port }),
      ),
    );
    for (const result of batch) {
      if (result.status === "rejected") {
        failed++;
        continue;
      }
      const conn = result.value;
      conns.push(conn);
      reads.push(conn.read(unused).then(closedByServer, closedByServer));
    }
  }
  const open = performance.now();
  onReady();
  await aborted(signal);
  leaving = true;
  closeAll(conns);
  await Promise.all(reads);
  const at = (i: number) => secondsSince(started, closedAt[i]!);
  return [
    `open files limit ${soft}/${hard}: ${wanted} idle connections tried, ${conns.length} opened (${failed} failed), all open ${
      secondsSince(started, open)
    } s after the flood began; ${closedAt.length} closed by the server${
      closedAt.length === 0
        ? ""
        : `: first at ${at(0)} s, median ${
          at(Math.floor(closedAt.length / 2))
        } s, last ${at(closedAt.length - 1)} s`
    }`,
  ];
}

/**
 * Fresh clients, one after another (at most one per 100 ms) for `ms`: each
 * dials, makes one request and closes. Notes how many got their answer,
 * and when the failures happened.
 */
async function freshClients(port: number, ms: number): Promise<string[]> {
  const started = performance.now();
  const payload = new TextEncoder().encode("fresh");
  let ok = 0;
  const errors: Record<string, number> = {};
  const failedAt: number[] = [];
  while (performance.now() - started < ms) {
    const at = performance.now();
    let client: Client<Uint8Array> | undefined;
    try {
      client = await dial(`${HOST}:${port}`, {
        connectTimeout: 1000,
        reconnect: { maxAttempts: 1 },
      });
      await client.request(payload, { timeout: 1000 });
      ok++;
    } catch (error) {
      const name = (error as Error).name ?? "Error";
      errors[name] = (errors[name] ?? 0) + 1;
      failedAt.push(performance.now());
    } finally {
      await client?.close({ timeout: 0 });
    }
    // Pacing, not synchronisation: a fresh client per 100 ms at most.
    const rest = 100 - (performance.now() - at);
    if (rest > 0) await delay(rest);
  }
  const failed = failedAt.length;
  return [
    `fresh clients (connect + 1 request): ${ok}/${ok + failed} ok${
      failed === 0
        ? ""
        : `, ${formatErrors(errors)}, failing from ${
          secondsSince(started, failedAt[0]!)
        } s to ${secondsSince(started, failedAt.at(-1)!)} s`
    }`,
  ];
}

/** The idle flood, with fresh clients connecting beside the clean one. */
function idleFloodAttack(ms: number): Promise<AttackResult> {
  return againstServer("idle-flood", ms, SERVER_ATTACKS["idle-flood"]![0], {
    cleanFirst: true,
    beside: freshClients,
    readyTimeout: 120_000,
  });
}

/** Bytes of the reply the trickle attack never completes. */
const TRICKLED_PAYLOAD = 1024;

/**
 * A client of a good server and a hostile one that answers the connect
 * ping, then sends the bytes of a reply one a second, never completing it,
 * and answers nothing more on that connection.
 */
async function trickle(ms: number): Promise<AttackResult> {
  const trickling = new Map<
    Deno.Conn,
    { since: number; timer: ReturnType<typeof setInterval> }
  >();
  const detectedAfter: number[] = [];
  let sessions = 0;
  let unanswered = 0;
  const reply = frame(
    FrameKind.Response,
    0x7fff_ffff,
    new Uint8Array(TRICKLED_PAYLOAD),
  );
  const hostile = hostileEndpoint((conn, f) => {
    // The pong of the connect ping is queued: trickle after it.
    if (f.kind !== FrameKind.Ping || trickling.has(conn)) return [];
    let sent = 0;
    const timer = setInterval(() => {
      // Never the last byte: the reply must not complete.
      if (sent < reply.length - 1) {
        conn.write(reply.subarray(sent, sent + 1)).catch(() => {});
      }
      sent++;
    }, 1000);
    trickling.set(conn, { since: performance.now(), timer });
    sessions++;
    return [];
  }, {
    mute: (conn, f) => {
      const muted = trickling.has(conn);
      if (muted && f.kind === FrameKind.Request) unanswered++;
      return muted;
    },
    closed: (conn) => {
      const t = trickling.get(conn);
      if (t === undefined) return;
      clearInterval(t.timer);
      trickling.delete(conn);
      detectedAfter.push(performance.now() - t.since);
    },
  });
  try {
    const result = await besideHostile(
      "trickle",
      "a client of a good server and a hostile one that, after the connect ping, trickles one byte a second of a reply it never completes",
      ms,
      hostile,
    );
    const detected = detectedAfter.length === 0
      ? "none closed by the client"
      : `${detectedAfter.length} closed by the client ${
        detectedAfter.map((after) => `${(after / 1000).toFixed(1)} s`).join(
          ", ",
        )
      } after their trickle began`;
    const hostileName = `${HOST}:${hostile.port}`;
    const ejected = result.ejections.filter((e) => e.endpoint === hostileName)
      .map((e) =>
        `at ${(e.at / 1000).toFixed(1)} s for ${
          (e.duration / 1000).toFixed(1)
        } s`
      );
    result.notes.push(
      `${sessions} sessions trickled to, ${detected} (client frameTimeout: 60 s, its default); ${unanswered} requests the hostile server read left unanswered; the client ejected it ${
        ejected.length === 0 ? "never" : ejected.join(", ")
      } and scheduled ${result.reconnects} reconnects`,
    );
    return result;
  } finally {
    for (const t of trickling.values()) clearInterval(t.timer);
    await hostile.close();
  }
}

/** The attacks on a server: what each does, and the attack itself (attacker.ts runs it). */
export const SERVER_ATTACKS: Record<
  string,
  [string, (port: number, signal: AbortSignal) => Promise<string[]>]
> = {
  "slowloris": [
    "1,000 connections, each sending one header byte a second",
    slowloris,
  ],
  "large-frames": [
    "32 peers that never read, each stalling 1 byte short of an 8 MiB frame",
    largeFrames,
  ],
  "pipelining": [
    "200 peers that never read, each pipelining 20,000 requests into a handler that never returns",
    pipelining,
  ],
  "garbage-after-frame": [
    "8 loops of connect, a valid request and garbage in one write, read to the end",
    garbageAfterFrame,
  ],
  "stalled-tls-handshakes": [
    "1,000 connections to `serve({ tls })` that never send their TLS handshake",
    stalledTls,
  ],
  "idle-flood": [
    `up to ${
      IDLE_FLOOD.toLocaleString("en")
    } connections that send nothing, opened after the clean client, while fresh clients keep connecting`,
    idleFlood,
  ],
};

/** The TLS attack, with certificates made for it (needs openssl). */
async function stalledTlsAttack(ms: number): Promise<AttackResult> {
  const what = SERVER_ATTACKS["stalled-tls-handshakes"]![0];
  if (!hasOpenssl()) {
    throw new Error("The stalled-tls-handshakes attack needs openssl");
  }
  await using pki = await makeTestPki();
  const certFile = `${pki.dir}/attack_server.crt`;
  const keyFile = `${pki.dir}/attack_server.key`;
  await Deno.writeTextFile(certFile, pki.serverCert);
  await Deno.writeTextFile(keyFile, pki.serverKey);
  return await againstServer("stalled-tls-handshakes", ms, what, {
    tls: { certFile, keyFile, caCert: pki.caCert },
  });
}

/**
 * The trickle attack's least length: past the client's default
 * `frameTimeout` (60 s) and its housekeeping tick (1 s), with room for the
 * reconnect.
 */
const TRICKLE_MIN_MS = 65_000;

/**
 * Runs one attack for `ms` (drain-and-stay for at least 12 s, past the
 * client's 10 s `drainTimeout`; trickle for at least 65 s, past its 60 s
 * `frameTimeout`).
 *
 * @param name The attack.
 * @param ms How long the clean client runs beside it.
 * @returns What happened.
 */
export function runAttack(name: AttackName, ms: number): Promise<AttackResult> {
  if (name === "forged-replies") return forgedReplies(ms);
  if (name === "drain-and-stay") return drainAndStay(Math.max(ms, 12_000));
  if (name === "trickle") return trickle(Math.max(ms, TRICKLE_MIN_MS));
  if (name === "idle-flood") return idleFloodAttack(ms);
  if (name === "stalled-tls-handshakes") return stalledTlsAttack(ms);
  return againstServer(name, ms, SERVER_ATTACKS[name]![0]);
}
