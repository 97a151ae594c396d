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

import { dial } from "../mod.ts";
import { defaultCodec, type Frame, FrameKind } from "../protocol.ts";
import { type LoadReport, runLoad } from "../tests/_load.ts";
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

function serverCommand(extra: string[] = []): string[] {
  return [
    "deno",
    "run",
    "-A",
    SERVER.pathname,
    ...extra,
    ...(memoryBudget === undefined
      ? []
      : ["--memory-budget", String(memoryBudget)]),
  ];
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

/** Runs the clean client's load against `endpoints` for `ms`. */
async function cleanLoad(
  endpoints: string[],
  ms: number,
  sessions?: number,
  caCert?: string,
): Promise<{ load: LoadReport; reconnects: number }> {
  await using client = await dial(endpoints, {
    connectTimeout: 5000,
    ...(sessions === undefined ? {} : { sessions }),
    ...(caCert === undefined ? {} : { tls: { caCerts: [caCert] } }),
  });
  const load = await runLoad(client, {
    concurrency: 4,
    duration: ms,
    timeout: 1000,
  });
  return { load, reconnects: client.stats().reconnects };
}

/**
 * Starts the attack server, runs `attack` beside a clean load, samples the
 * server's RSS, and stops everything.
 */
async function againstServer(
  name: AttackName,
  ms: number,
  what: string,
  tls?: { certFile: string; keyFile: string; caCert: string },
): Promise<AttackResult> {
  await using child = await startProcess(
    serverCommand(
      tls === undefined ? [] : ["--cert", tls.certFile, "--key", tls.keyFile],
    ),
  );
  const port = Number(child.match.groups!.port);
  const rss = sampleRss(child.pid);
  try {
    // The attackers run in a process of their own: their writes must not
    // slow the clean client down, only the server may.
    await using attacker = await startProcess([
      "deno",
      "run",
      "-A",
      ATTACKER.pathname,
      name,
      String(port),
    ], { readyLine: /^attacking$/, readyTimeout: 30_000 });
    const { load } = await cleanLoad(
      [`${HOST}:${port}`],
      ms,
      undefined,
      tls?.caCert,
    );
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
    );
    return {
      name,
      what,
      load,
      rssBefore: rss.before,
      rssPeak: rss.peak,
      notes,
    };
  } finally {
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

/**
 * A hostile endpoint in this process, speaking the default protocol: it
 * answers pings and its own requests, and `extra` adds what it sends
 * besides.
 */
function hostileEndpoint(
  extra: (conn: Deno.Conn, frame: Frame) => Uint8Array[],
): { port: number; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const conns = new Set<Deno.Conn>();
  const serving: Promise<void>[] = [];
  const serveConn = async (conn: Deno.Conn) => {
    const decoder = codec.decoder();
    const buffer = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buffer).catch(() => null);
      if (n === null) break;
      const out: Uint8Array[] = [];
      for (const f of decoder.decode(buffer.slice(0, n))) {
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
): Promise<AttackResult & { reconnects: number }> {
  await using child = await startProcess(serverCommand());
  const port = Number(child.match.groups!.port);
  const rss = sampleRss(child.pid);
  try {
    const { load, reconnects } = await cleanLoad(
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
    certFile,
    keyFile,
    caCert: pki.caCert,
  });
}

/**
 * Runs one attack for `ms` (the hostile-server ones for at least 12 s, past
 * the client's 10 s `drainTimeout`).
 *
 * @param name The attack.
 * @param ms How long the clean client runs beside it.
 * @returns What happened.
 */
export function runAttack(name: AttackName, ms: number): Promise<AttackResult> {
  if (name === "forged-replies") return forgedReplies(ms);
  if (name === "drain-and-stay") return drainAndStay(Math.max(ms, 12_000));
  if (name === "stalled-tls-handshakes") return stalledTlsAttack(ms);
  return againstServer(name, ms, SERVER_ATTACKS[name]![0]);
}
