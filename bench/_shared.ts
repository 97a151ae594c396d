/**
 * Shared pieces of the Deno side of the benchmark: the raw read loop (own
 * `conn.read()` into a slab, frames as `subarray` views), the coalescing
 * writer (frames encoded straight into a growable, double-buffered
 * `Uint8Array`, one `conn.write` per microtask flush), the load generator's
 * bookkeeping (latency samples, the warm-up / measure / drain phases) and
 * small `/proc` readers.
 *
 * Wire format of the baselines and of tcpbutler's "plain" codec: a 4-byte
 * big-endian length of the body, then the body: a u32 big-endian request id
 * followed by the payload.
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";

/** Size of a read slab once data flows. */
export const SLAB_BYTES = 256 * 1024;
/** Size of the first read buffer of a connection (what an idle one holds). */
export const FIRST_READ_BYTES = 1024;
/** The first size of a connection's write buffer (it doubles as needed). */
export const FIRST_WRITE_BYTES = 16 * 1024;
/** A new slab is taken when less than this much room is left in the current one. */
export const MIN_READ_ROOM = 8 * 1024;

/** Reads a u32 big-endian at `offset`. */
export function readU32(buf: Uint8Array, offset: number): number {
  return ((buf[offset]! << 24) | (buf[offset + 1]! << 16) |
    (buf[offset + 2]! << 8) | buf[offset + 3]!) >>> 0;
}

/** Writes a u32 big-endian at `offset`. */
export function writeU32(buf: Uint8Array, offset: number, value: number) {
  buf[offset] = value >>> 24;
  buf[offset + 1] = value >>> 16;
  buf[offset + 2] = value >>> 8;
  buf[offset + 3] = value;
}

/**
 * Reads length-prefixed frames from `conn` until EOF or error, handing each
 * body to `onFrame` as a view into the current slab. A connection starts with
 * a small buffer and moves to a 256 KiB slab when data flows; a new slab is
 * taken when the rest of the current one is short (the unparsed tail is
 * copied over). Slabs are never reused, so views stay valid.
 *
 * @param conn The connection.
 * @param onFrame Called synchronously for every complete frame body.
 * @param onBatch Called after the frames of one read were handed out.
 */
export async function readFrames(
  conn: Deno.Conn,
  onFrame: (body: Uint8Array) => void,
  onBatch?: () => void,
): Promise<void> {
  let buf = new Uint8Array(FIRST_READ_BYTES);
  let start = 0;
  let end = 0;
  let need = 0; // bytes the current partial frame needs in total, from `start`
  try {
    for (;;) {
      const short = buf.length - end < MIN_READ_ROOM && end > 0;
      if (short || start + need > buf.length) {
        const pending = end - start;
        const size = Math.max(SLAB_BYTES, need + MIN_READ_ROOM);
        const next = new Uint8Array(size);
        if (pending > 0) next.set(buf.subarray(start, end));
        buf = next;
        start = 0;
        end = pending;
      }
      const n = await conn.read(buf.subarray(end));
      if (n === null) return;
      end += n;
      need = 0;
      while (end - start >= 4) {
        const len = readU32(buf, start);
        if (end - start - 4 < len) {
          need = len + 4;
          break;
        }
        onFrame(buf.subarray(start + 4, start + 4 + len));
        start += 4 + len;
      }
      onBatch?.();
    }
  } catch (error) {
    if (!isCloseError(error)) throw error;
  }
}

/** Whether an error only says the connection went away. */
export function isCloseError(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.Interrupted ||
    error instanceof Deno.errors.NotConnected;
}

const EMPTY = new Uint8Array(0);

/**
 * Queues encoded frames and writes everything queued so far with one
 * `conn.write` per microtask flush; frames queued while a write is in flight
 * go out together in the next one (two buffers swap roles).
 */
export class FrameWriter {
  #conn: Deno.Conn;
  // Allocated on first use: an idle connection holds no write buffer.
  #buf = EMPTY;
  #spare = EMPTY;
  #len = 0;
  #scheduled = false;
  #writing = false;
  #closed = false;

  /** @param conn The connection to write to. */
  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  /**
   * Makes room for `n` bytes and returns the buffer and the offset to write
   * them at; the bytes count as queued right away.
   */
  reserve(n: number): [Uint8Array, number] {
    const offset = this.#len;
    if (offset + n > this.#buf.length) {
      const next = new Uint8Array(
        Math.max(FIRST_WRITE_BYTES, this.#buf.length * 2, offset + n),
      );
      next.set(this.#buf.subarray(0, offset));
      this.#buf = next;
    }
    this.#len = offset + n;
    if (!this.#scheduled && !this.#writing) {
      this.#scheduled = true;
      queueMicrotask(this.#flush);
    }
    return [this.#buf, offset];
  }

  /** Queues one frame: the 4-byte length, then `body`. */
  writeFrame(body: Uint8Array): void {
    const [buf, offset] = this.reserve(4 + body.length);
    writeU32(buf, offset, body.length);
    buf.set(body, offset + 4);
  }

  /** Stops writing. */
  close(): void {
    this.#closed = true;
  }

  #flush = async () => {
    this.#scheduled = false;
    if (this.#writing) return;
    this.#writing = true;
    try {
      while (this.#len > 0 && !this.#closed) {
        const out = this.#buf;
        const n = this.#len;
        this.#buf = this.#spare;
        this.#spare = out;
        this.#len = 0;
        let off = 0;
        while (off < n) off += await this.#conn.write(out.subarray(off, n));
      }
    } catch (error) {
      this.#closed = true;
      if (!isCloseError(error)) throw error;
    } finally {
      this.#writing = false;
    }
  };
}

let replyNow = -1;
const forgetReplyNow = () => {
  replyNow = -1;
};

/**
 * `performance.now()` read once per burst of replies, for the promise-based
 * load generators. The callback clients read the clock once per read (at its
 * first frame), not once per reply; a reply handed back through a promise
 * resumes its awaiting loop in a microtask, and the replies of one read
 * resume in the same run of microtasks, so the first of them reads the clock
 * and the rest share it (a microtask queued behind them forgets it). Both
 * kinds of client then pay the same for timing: one reading per request
 * sent, one per read. (`performance.now()` is an op call, ~0.1 µs on Deno.)
 */
export function replyClock(): number {
  if (replyNow < 0) {
    replyNow = performance.now();
    queueMicrotask(forgetReplyNow);
  }
  return replyNow;
}

/** Options every load generator takes (from the command line). */
export interface ClientOptions {
  hostname: string;
  port: number;
  /** Connections (sessions). */
  sessions: number;
  /** Requests kept in flight in total, spread over the sessions. */
  inflight: number;
  /** Payload bytes per request (after the 4-byte id). */
  payload: number;
  /** Warm-up before measuring, in ms. */
  warmup: number;
  /** Measurement window, in ms. */
  duration: number;
  /** The server's pid, to read its CPU time over the window (0: in-process). */
  serverPid: number;
  /** Run the server inside the client process. */
  inproc: boolean;
  /** Which server `--inproc` starts, where a client offers a choice (`raw`). */
  server: string;
  /** Open this many idle connections, report, then wait for stdin EOF. */
  idle: number;
  /** Extra variant flag (codec for tcpbutler). */
  variant: string;
}

/** Parses the load generator's command line. */
export function parseClientArgs(args: string[]): ClientOptions {
  const { values } = parseArgs({
    args,
    options: {
      hostname: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "0" },
      sessions: { type: "string", default: "1" },
      inflight: { type: "string", default: "1" },
      payload: { type: "string", default: "64" },
      warmup: { type: "string", default: "500" },
      duration: { type: "string", default: "3000" },
      "server-pid": { type: "string", default: "0" },
      inproc: { type: "boolean", default: false },
      server: { type: "string", default: "" },
      idle: { type: "string", default: "0" },
      variant: { type: "string", default: "" },
    },
  });
  return {
    hostname: values.hostname,
    port: Number(values.port),
    sessions: Number(values.sessions),
    inflight: Number(values.inflight),
    payload: Number(values.payload),
    warmup: Number(values.warmup),
    duration: Number(values.duration),
    serverPid: Number(values["server-pid"]),
    inproc: values.inproc,
    server: values.server,
    idle: Number(values.idle),
    variant: values.variant,
  };
}

/** What a load generator prints (one `RESULT {json}` line). */
export interface ClientResult {
  requests: number;
  seconds: number;
  reqPerSec: number;
  /** Payload bytes per second one way (the same flows back), in MB (1e6). */
  mbPerSec: number;
  /** Latency percentiles, µs. */
  p50: number;
  p99: number;
  p999: number;
  mean: number;
  max: number;
  /** CPU time over the window, µs (user + system). */
  clientCpuUs: number;
  /** `null` when the server runs in the client process (counted in the client's). */
  serverCpuUs: number | null;
  /** CPU µs per request, client + server. */
  cpuUsPerReq: number;
  errors: number;
}

/** Total CPU time (user + system) of a process from `/proc/<pid>/stat`, µs. */
export function procCpuUs(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state): utime is field 14, stime field 15.
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks * (1e6 / CLOCK_TICKS);
}

/** Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux). */
export const CLOCK_TICKS = 100;

/** VmRSS of a process, KiB. */
export function procRssKiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const match = /VmRSS:\s+(\d+)\s+kB/.exec(status);
  return match ? Number(match[1]) : NaN;
}

function cpuUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/**
 * Latency samples and the phases of one load run: warm-up, measure, drain.
 * The generator calls {@linkcode Recorder.record} for every reply and asks
 * {@linkcode Recorder.sending} before issuing the next request.
 */
export class Recorder {
  #samples = new Float64Array(1 << 20);
  #count = 0;
  #phase: "warmup" | "measure" | "drain" = "warmup";
  #t0 = 0;
  #t1 = 0;
  #cpu0 = 0;
  #cpu1 = 0;
  #srv0 = 0;
  #srv1 = 0;
  #opts: ClientOptions;
  #done = Promise.withResolvers<void>();
  errors = 0;

  /** @param opts The run's options. */
  constructor(opts: ClientOptions) {
    this.#opts = opts;
  }

  /** Whether new requests should still be issued. */
  get sending(): boolean {
    return this.#phase !== "drain";
  }

  /** Whether replies are being counted. */
  get measuring(): boolean {
    return this.#phase === "measure";
  }

  /** Records one reply's latency (ms, as `performance.now()` differences). */
  record(latencyMs: number): void {
    if (this.#phase !== "measure") return;
    if (this.#count === this.#samples.length) {
      const next = new Float64Array(this.#samples.length * 2);
      next.set(this.#samples);
      this.#samples = next;
    }
    this.#samples[this.#count++] = latencyMs;
  }

  /**
   * Starts the warm-up and the measurement timers; resolves when the window
   * has closed (the generator then drains its in-flight requests).
   */
  run(): Promise<void> {
    setTimeout(() => {
      this.#phase = "measure";
      this.#cpu0 = cpuUs();
      this.#srv0 = this.#opts.serverPid ? procCpuUs(this.#opts.serverPid) : 0;
      this.#t0 = performance.now();
      setTimeout(() => {
        this.#t1 = performance.now();
        this.#cpu1 = cpuUs();
        this.#srv1 = this.#opts.serverPid ? procCpuUs(this.#opts.serverPid) : 0;
        this.#phase = "drain";
        this.#done.resolve();
      }, this.#opts.duration);
    }, this.#opts.warmup);
    return this.#done.promise;
  }

  /** The figures of the window. */
  result(): ClientResult {
    const n = this.#count;
    const sorted = this.#samples.subarray(0, n).sort();
    const pct = (p: number) =>
      n === 0 ? NaN : sorted[Math.min(n - 1, Math.floor(p * n))]! * 1000;
    let sum = 0;
    for (let i = 0; i < n; i++) sum += sorted[i]!;
    const seconds = (this.#t1 - this.#t0) / 1000;
    const clientCpuUs = this.#cpu1 - this.#cpu0;
    const serverCpuUs = this.#opts.serverPid ? this.#srv1 - this.#srv0 : null;
    return {
      requests: n,
      seconds,
      reqPerSec: n / seconds,
      mbPerSec: (n * this.#opts.payload) / seconds / 1e6,
      p50: pct(0.5),
      p99: pct(0.99),
      p999: pct(0.999),
      mean: n === 0 ? NaN : (sum / n) * 1000,
      max: n === 0 ? NaN : sorted[n - 1]! * 1000,
      clientCpuUs,
      serverCpuUs,
      cpuUsPerReq: (clientCpuUs + (serverCpuUs ?? 0)) / n,
      errors: this.errors,
    };
  }
}

/** How many requests session `i` of `sessions` keeps in flight. */
export function inflightOf(i: number, sessions: number, total: number) {
  return Math.floor(total / sessions) + (i < total % sessions ? 1 : 0);
}

/** A payload of `n` bytes with a recognisable pattern. */
export function makePayload(n: number): Uint8Array {
  const p = new Uint8Array(n);
  for (let i = 0; i < n; i++) p[i] = (i * 31 + 7) & 0xff;
  return p;
}

/** Prints the result line the orchestrator reads. */
export function printResult(result: ClientResult): void {
  // deno-lint-ignore no-console
  console.log(`RESULT ${JSON.stringify(result)}`);
}

/** Resolves when stdin reaches EOF (the orchestrator closed it or died). */
export async function stdinClosed(): Promise<void> {
  const buf = new Uint8Array(256);
  try {
    for (;;) {
      const n = await Deno.stdin.read(buf);
      if (n === null) break;
      // "gc": the orchestrator measures memory next (run with --expose-gc).
      if (new TextDecoder().decode(buf.subarray(0, n)).includes("gc")) {
        (globalThis as { gc?: () => void }).gc?.();
      }
    }
  } catch { /* stdin gone */ }
}

/** Opens `count` idle connections (a few hundred at a time). */
export async function openIdle(
  hostname: string,
  port: number,
  count: number,
): Promise<Deno.Conn[]> {
  const conns: Deno.Conn[] = [];
  const batch = 250;
  for (let i = 0; i < count; i += batch) {
    const n = Math.min(batch, count - i);
    conns.push(
      ...await Promise.all(
        Array.from({ length: n }, () => Deno.connect({ hostname, port })),
      ),
    );
  }
  return conns;
}
