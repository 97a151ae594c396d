/**
 * The library's own CPU per request, without sockets: sessions run over an
 * in-memory transport, so no system call, kernel or scheduler noise enters
 * the figure and small changes to the hot path can be told apart (the
 * loopback benchmark moves by ±5 % between identical runs here).
 *
 * - `--side client` (default): a tcpbutler client session whose transport
 *   echoes every written byte back (a peer that costs nothing), `--inflight`
 *   loops each awaiting `session.request()` before the next.
 * - `--side both`: a client session and a server session (echo handler)
 *   joined by an in-memory pipe.
 * - `--side lean`: the same echo transport under the leanest promise client
 *   (a promise and a slot per request, no timeouts): the floor.
 * - `--side server`: that lean client against a tcpbutler server session:
 *   minus `--side lean`, what the server costs (for `--codec default` the
 *   lean client speaks the default protocol's 9-byte header).
 *
 * `--codec plain` (default: the baselines' wire format through
 * `lengthPrefixed()`, the id in the first 4 payload bytes) or `default` (the
 * default protocol). Runs `--requests N` requests after `--warmup N`, `--runs
 * K` times, and prints the median and the spread of CPU ns per request.
 *
 * Run: `deno run -A bench/session_micro.ts --side client --runs 7`
 *
 * @module
 */
// deno-lint-ignore-file no-console

import process from "node:process";
import { parseArgs } from "node:util";
import { SessionImpl } from "../session/session.ts";
import { Correlator } from "../_correlation.ts";
import { MemoryBudget } from "../session/budget.ts";
import { codecDialect, type Dialect } from "../session/dialect.ts";
import { defaultDialect } from "../_protocol_dialect.ts";
import { noopLogger } from "../logger.ts";
import { newCounters } from "../session/types.ts";
import type { Transport } from "../connection.ts";
import { plainCodec } from "./tcpbutler_server.ts";
import { makePayload, readU32, writeU32 } from "./_shared.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    side: { type: "string", default: "client" },
    codec: { type: "string", default: "plain" },
    inflight: { type: "string", default: "64" },
    payload: { type: "string", default: "64" },
    requests: { type: "string", default: "2000000" },
    warmup: { type: "string", default: "500000" },
    runs: { type: "string", default: "5" },
  },
});
const inflight = Number(flags.inflight);
const payloadBytes = Number(flags.payload);
const plain = flags.codec === "plain";
const ADDR: Deno.NetAddr = { transport: "tcp", hostname: "127.0.0.1", port: 1 };

/**
 * One direction of an in-memory byte pipe: writes are copied in, reads take
 * them out (a read waits for the next write). Completion is in microtasks,
 * as fast as a transport can be.
 */
class Pipe {
  #chunks: Uint8Array[] = [];
  #waiting: { buf: Uint8Array; resolve: (n: number | null) => void } | null =
    null;
  #closed = false;

  push(bytes: Uint8Array): void {
    const copy = bytes.slice();
    const reader = this.#waiting;
    if (reader !== null) {
      this.#waiting = null;
      reader.resolve(this.#take(copy, reader.buf));
    } else this.#chunks.push(copy);
  }

  #take(chunk: Uint8Array, buf: Uint8Array): number {
    const n = Math.min(chunk.length, buf.length);
    buf.set(n === chunk.length ? chunk : chunk.subarray(0, n));
    if (n < chunk.length) this.#chunks.unshift(chunk.subarray(n));
    return n;
  }

  read(buf: Uint8Array): Promise<number | null> {
    const chunk = this.#chunks.shift();
    if (chunk !== undefined) return Promise.resolve(this.#take(chunk, buf));
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => this.#waiting = { buf, resolve });
  }

  close(): void {
    this.#closed = true;
    const reader = this.#waiting;
    this.#waiting = null;
    reader?.resolve(null);
  }
}

function transport(inbound: Pipe, outbound: Pipe): Transport {
  return {
    read: (p) => inbound.read(p),
    write: (p) => {
      outbound.push(p);
      return Promise.resolve(p.length);
    },
    closeWrite: () => Promise.resolve(outbound.close()),
    close: () => {
      inbound.close();
      outbound.close();
    },
    localAddr: ADDR,
    remoteAddr: ADDR,
  };
}

function session(
  side: "client" | "server",
  conn: Transport,
): SessionImpl<Uint8Array> {
  const dialect =
    (plain ? codecDialect(plainCodec(), false) : defaultDialect()) as Dialect<
      Uint8Array
    >;
  const s = new SessionImpl<Uint8Array>(conn, {
    side,
    dialect,
    correlator: new Correlator(),
    counters: newCounters(),
    logger: noopLogger,
    handler: () => (message: Uint8Array) => message,
    context: {},
    retry: undefined,
    replies: side === "server" ? "session" : "endpoint",
    onHandlerError: undefined,
    maxConcurrentHandlers: 64,
    highWaterMark: 100,
    maxWriteBytes: 64 * 1024 * 1024,
    requestTimeout: 5000,
    // A server runs with its memory budget on by default: measure it.
    ...(side === "server"
      ? { budget: new MemoryBudget(64 * 1024 * 1024, 2000, noopLogger) }
      : {}),
    onClose: () => {},
    onPeerDrain: () => {},
  });
  s.start();
  s.markReady();
  return s;
}

/** Runs `count` requests over `inflight` loops; resolves when all are done. */
function drive(
  request: (frame: Uint8Array) => Promise<Uint8Array>,
  count: number,
): Promise<unknown> {
  let left = count;
  let nextId = 0;
  const payload = makePayload(payloadBytes);
  const loop = async () => {
    const frame = plain ? new Uint8Array(4 + payloadBytes) : payload;
    if (plain) frame.set(payload, 4);
    while (left > 0) {
      left--;
      const id = nextId++ >>> 0;
      if (plain) writeU32(frame, 0, id);
      const reply = await request(frame);
      if (plain && readU32(reply, 0) !== id) throw new Error("wrong reply");
    }
  };
  return Promise.all(Array.from({ length: inflight }, loop));
}

/**
 * The leanest promise client (the floor). Over the echo transport it reads
 * its own requests back as replies; against a server session (`framed`,
 * the default protocol) it writes request frames and reads response frames.
 */
function leanClient(
  conn: Transport,
  framed = false,
): (frame: Uint8Array) => Promise<Uint8Array> {
  // The default protocol: 4-byte length, kind, u32 id; plain: 4-byte length.
  const header = framed ? 9 : 4;
  let capture: ((reply: Uint8Array) => void) | undefined;
  const executor = (resolve: (reply: Uint8Array) => void) => {
    capture = resolve;
  };
  const slots: (((reply: Uint8Array) => void) | undefined)[] = new Array(1024)
    .fill(undefined);
  // Room for every request in flight: a flush writes them all at once.
  const out = new Uint8Array(
    Math.max(64 * 1024, inflight * (header + payloadBytes + (framed ? 0 : 4))),
  );
  let nextId = 0;
  let outLength = 0;
  let scheduled = false;
  const flush = async () => {
    scheduled = false;
    // The pipe copies what is written before write() returns.
    const bytes = out.subarray(0, outLength);
    outLength = 0;
    await conn.write(bytes);
  };
  (async () => {
    // Replies are views into the slab, read by their loops a microtask
    // later: the slab is never rewritten (as in the session), a new one
    // takes over when less than 64 KiB is left, with the partial tail.
    let buf = new Uint8Array(256 * 1024);
    let start = 0;
    let have = 0;
    for (;;) {
      const n = await conn.read(buf.subarray(have));
      if (n === null) return;
      have += n;
      let pos = start;
      while (have - pos >= 4) {
        const length = readU32(buf, pos);
        if (have - pos - 4 < length) break;
        const body = buf.subarray(pos + header, pos + 4 + length);
        const slot = readU32(framed ? buf : body, framed ? pos + 5 : 0) & 1023;
        const resolve = slots[slot]!;
        slots[slot] = undefined;
        resolve(body);
        pos += 4 + length;
      }
      start = pos;
      if (buf.length - have < 64 * 1024) {
        const next = new Uint8Array(Math.max(256 * 1024, 2 * (have - pos)));
        next.set(buf.subarray(pos, have));
        buf = next;
        have -= pos;
        start = 0;
      }
    }
  })();
  return (frame) => {
    let id: number;
    if (framed) {
      id = nextId;
      nextId = (nextId + 1) >>> 0;
      writeU32(out, outLength, frame.length + 5);
      out[outLength + 4] = 1; // a request
      writeU32(out, outLength + 5, id);
    } else {
      id = readU32(frame, 0);
      writeU32(out, outLength, frame.length);
    }
    out.set(frame, outLength + header);
    outLength += header + frame.length;
    if (!scheduled) {
      scheduled = true;
      queueMicrotask(flush);
    }
    const promise = new Promise(executor);
    slots[id & 1023] = capture;
    return promise;
  };
}

function setup(): {
  request: (f: Uint8Array) => Promise<Uint8Array>;
  close(): void;
} {
  if (flags.side === "lean") {
    if (!plain) throw new TypeError("--side lean needs --codec plain");
    const pipe = new Pipe();
    const conn = transport(pipe, pipe);
    return { request: leanClient(conn), close: () => conn.close() };
  }
  if (flags.side === "server") {
    const up = new Pipe();
    const down = new Pipe();
    const server = session("server", transport(up, down));
    const conn = transport(down, up);
    return {
      request: leanClient(conn, !plain),
      close: () => {
        conn.close();
        server.close();
      },
    };
  }
  if (flags.side === "both") {
    const up = new Pipe();
    const down = new Pipe();
    const client = session("client", transport(down, up));
    const server = session("server", transport(up, down));
    return {
      request: (frame) => client.request(frame),
      close: () => {
        client.close();
        server.close();
      },
    };
  }
  // An echo: the client reads back what it wrote, as replies.
  const pipe = new Pipe();
  const client = session("client", transport(pipe, pipe));
  return {
    request: (frame) => client.request(frame),
    close: () => client.close(),
  };
}

const cpuNs = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) * 1000;
};

const { request, close } = setup();
await drive(request, Number(flags.warmup));
const figures: number[] = [];
for (let run = 0; run < Number(flags.runs); run++) {
  const count = Number(flags.requests);
  const t0 = cpuNs();
  await drive(request, count);
  figures.push((cpuNs() - t0) / count);
}
close();
figures.sort((a, b) => a - b);
const median = figures[figures.length >> 1]!;
console.log(
  `${flags.side} ${flags.codec} ${payloadBytes}B ${inflight} in flight: ` +
    `${median.toFixed(0)} ns CPU/request (median of ${figures.length}; ` +
    `${figures[0]!.toFixed(0)}–${figures.at(-1)!.toFixed(0)})`,
);
Deno.exit(0);
