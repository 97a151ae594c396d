// Shared pieces of the Node side of the benchmark (Node 20 runs plain JS):
// the frame writer, the load generator's bookkeeping and /proc readers. The
// Deno side's twin is _shared.ts; keep the two in step.
// deno-lint-ignore-file no-console

import { readFileSync } from "node:fs";
import process from "node:process";
import { parseArgs } from "node:util";

export const SLAB_BYTES = 256 * 1024;
export const OUT_SLAB_BYTES = 64 * 1024;
const EMPTY = Buffer.alloc(0);

/**
 * Parses frames out of a socket's `data` chunks: complete frames are handed
 * to `onFrame` as views into the chunk; a frame split across chunks is
 * assembled in a buffer of its exact size (only its own bytes are copied).
 */
export function frameParser(onFrame, onBatch) {
  let header = null; // allocated when a header is split across chunks
  let partial = null; // the frame being assembled (header included), once its size is known
  let have = 0; // bytes of the split frame received so far (header included)
  return (chunk) => {
    let start = 0;
    const end = chunk.length;
    if (have > 0) {
      if (partial === null) {
        const take = Math.min(4 - have, end);
        chunk.copy(header, have, 0, take);
        have += take;
        start = take;
        if (have < 4) return;
        partial = Buffer.allocUnsafe(4 + header.readUInt32BE(0));
        header.copy(partial, 0, 0, 4);
      }
      const take = Math.min(partial.length - have, end - start);
      chunk.copy(partial, have, start, start + take);
      have += take;
      start += take;
      if (have < partial.length) return;
      onFrame(partial.subarray(4));
      partial = null;
      have = 0;
    }
    while (end - start >= 4) {
      const len = chunk.readUInt32BE(start);
      if (end - start - 4 < len) break;
      onFrame(chunk.subarray(start + 4, start + 4 + len));
      start += 4 + len;
    }
    if (start < end) {
      have = end - start;
      if (have < 4) {
        header ??= Buffer.allocUnsafe(4);
        chunk.copy(header, 0, start, end);
      } else {
        partial = Buffer.allocUnsafe(4 + chunk.readUInt32BE(start));
        chunk.copy(partial, 0, start, end);
      }
    }
    onBatch?.();
  };
}

/**
 * Frames encoded straight into a slab and written with one `socket.write`
 * per microtask flush. Written bytes are never overwritten (Node may keep the
 * buffer until the kernel takes it): the next frames go after them, and a new
 * slab is taken when the rest is short.
 */
export class BatchWriter {
  #socket;
  #buf = EMPTY; // a slab is taken on first use: idle sockets hold none
  #start = 0;
  #end = 0;
  #scheduled = false;

  constructor(socket) {
    this.#socket = socket;
  }

  /** Returns [buffer, offset] with room for n bytes, counted as queued. */
  reserve(n) {
    if (this.#end + n > this.#buf.length) {
      const next = Buffer.allocUnsafe(
        Math.max(OUT_SLAB_BYTES, (this.#end - this.#start + n) * 2),
      );
      this.#buf.copy(next, 0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
      this.#buf = next;
    }
    const offset = this.#end;
    this.#end += n;
    if (!this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(this.#flush);
    }
    return [this.#buf, offset];
  }

  writeFrame(body) {
    const [buf, offset] = this.reserve(4 + body.length);
    buf.writeUInt32BE(body.length, offset);
    body.copy(buf, offset + 4);
  }

  #flush = () => {
    this.#scheduled = false;
    if (this.#end === this.#start || this.#socket.destroyed) return;
    this.#socket.write(this.#buf.subarray(this.#start, this.#end));
    this.#start = this.#end;
  };
}

/**
 * One `socket.write` per frame between `cork()` and an `uncork()` on the next
 * tick: Node gathers them into one writev. What many Node users hand-write.
 */
export class CorkWriter {
  #socket;
  #corked = false;

  constructor(socket) {
    this.#socket = socket;
  }

  #cork() {
    if (this.#corked) return;
    this.#corked = true;
    this.#socket.cork();
    process.nextTick(() => {
      this.#corked = false;
      this.#socket.uncork();
    });
  }

  reserve(n) {
    this.#cork();
    const buf = Buffer.allocUnsafe(n);
    this.#socket.write(buf); // filled in synchronously by the caller, before uncork
    return [buf, 0];
  }

  writeFrame(body) {
    this.#cork();
    const frame = Buffer.allocUnsafe(4 + body.length);
    frame.writeUInt32BE(body.length, 0);
    body.copy(frame, 4);
    this.#socket.write(frame);
  }
}

export function makeWriter(socket, variant) {
  return variant === "cork" ? new CorkWriter(socket) : new BatchWriter(socket);
}

export function parseClientArgs(args) {
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
    idle: Number(values.idle),
    variant: values.variant,
  };
}

const CLOCK_TICKS = 100;

export function procCpuUs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * (1e6 / CLOCK_TICKS);
}

function cpuUs() {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/** Latency samples and the warm-up / measure / drain phases (see _shared.ts). */
export class Recorder {
  #samples = new Float64Array(1 << 20);
  #count = 0;
  #phase = "warmup";
  #t0 = 0;
  #t1 = 0;
  #cpu0 = 0;
  #cpu1 = 0;
  #srv0 = 0;
  #srv1 = 0;
  #opts;
  errors = 0;

  constructor(opts) {
    this.#opts = opts;
  }

  get sending() {
    return this.#phase !== "drain";
  }

  record(latencyMs) {
    if (this.#phase !== "measure") return;
    if (this.#count === this.#samples.length) {
      const next = new Float64Array(this.#samples.length * 2);
      next.set(this.#samples);
      this.#samples = next;
    }
    this.#samples[this.#count++] = latencyMs;
  }

  run() {
    return new Promise((resolve) => {
      setTimeout(() => {
        this.#phase = "measure";
        this.#cpu0 = cpuUs();
        this.#srv0 = this.#opts.serverPid ? procCpuUs(this.#opts.serverPid) : 0;
        this.#t0 = performance.now();
        setTimeout(() => {
          this.#t1 = performance.now();
          this.#cpu1 = cpuUs();
          this.#srv1 = this.#opts.serverPid
            ? procCpuUs(this.#opts.serverPid)
            : 0;
          this.#phase = "drain";
          resolve();
        }, this.#opts.duration);
      }, this.#opts.warmup);
    });
  }

  result() {
    const n = this.#count;
    const sorted = this.#samples.subarray(0, n).sort();
    const pct = (p) =>
      n === 0 ? NaN : sorted[Math.min(n - 1, Math.floor(p * n))] * 1000;
    let sum = 0;
    for (let i = 0; i < n; i++) sum += sorted[i];
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
      max: n === 0 ? NaN : sorted[n - 1] * 1000,
      clientCpuUs,
      serverCpuUs,
      cpuUsPerReq: (clientCpuUs + (serverCpuUs ?? 0)) / n,
      errors: this.errors,
    };
  }
}

export function inflightOf(i, sessions, total) {
  return Math.floor(total / sessions) + (i < total % sessions ? 1 : 0);
}

export function makePayload(n) {
  const p = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) p[i] = (i * 31 + 7) & 0xff;
  return p;
}

export function printResult(result) {
  console.log(`RESULT ${JSON.stringify(result)}`);
}

/** Resolves when stdin reaches EOF (the orchestrator closed it or died). */
export function stdinClosed() {
  return new Promise((resolve) => {
    process.stdin.on("data", (data) => {
      // "gc": the orchestrator measures memory next (run with --expose-gc).
      if (String(data).includes("gc")) globalThis.gc?.();
    });
    process.stdin.on("end", resolve);
    process.stdin.on("error", resolve);
    process.stdin.on("close", resolve);
  });
}
