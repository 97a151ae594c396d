/**
 * Baseline (a): a raw Deno load generator. `Deno.connect`, the same slab read
 * loop and coalescing writer as the raw server; keeps `--inflight` requests in
 * flight over `--sessions` connections (closed loop: each reply sends the
 * next request on its connection), matches replies by id.
 *
 * Run: `deno run -A bench/raw_client.ts --port P --server-pid PID
 * --sessions S --inflight N --payload BYTES --warmup MS --duration MS`
 * (`--variant promise`: a promise per request, awaited by `--inflight`
 * loops; `--inproc` starts the raw server in this process; `--idle N` opens N
 * idle connections, prints `IDLE READY`, waits for stdin EOF).
 * Prints one `RESULT {json}` line.
 *
 * @module
 */

import {
  type ClientOptions,
  FrameWriter,
  inflightOf,
  makePayload,
  openIdle,
  parseClientArgs,
  printResult,
  readFrames,
  readU32,
  Recorder,
  replyClock,
  stdinClosed,
  writeU32,
} from "./_shared.ts";
import { type BenchServer, startRawServer } from "./raw_server.ts";

const RING = 1 << 20;
const MASK = RING - 1;

async function idle(hostname: string, port: number, count: number) {
  const conns = await openIdle(hostname, port, count);
  // deno-lint-ignore no-console
  console.log("IDLE READY");
  await stdinClosed();
  for (const conn of conns) conn.close();
}

async function main() {
  const opts = parseClientArgs(Deno.args);
  if (opts.idle > 0) return await idle(opts.hostname, opts.port, opts.idle);
  // The orchestrator keeps stdin open while it waits for the result: if it
  // dies, stop at once.
  stdinClosed().then(() => Deno.exit(2));
  const server = opts.inproc ? startRawServer(opts.hostname) : undefined;
  const port = server ? server.port : opts.port;
  if (server) opts.serverPid = 0;

  const rec = new Recorder(opts);
  const payload = makePayload(opts.payload);
  const frameBytes = 8 + opts.payload;
  const sendTimes = new Float64Array(RING);
  let nextId = 0;
  let inflight = 0;
  let drained: PromiseWithResolvers<void> | undefined;

  const conns = await Promise.all(
    Array.from(
      { length: opts.sessions },
      () => Deno.connect({ hostname: opts.hostname, port }),
    ),
  );
  if (opts.variant === "promise") {
    return await promiseLoops(opts, conns, rec, payload, server);
  }
  const loops = conns.map((conn, i) => {
    conn.setNoDelay(true);
    const writer = new FrameWriter(conn);
    const send = () => {
      const id = nextId;
      nextId = (nextId + 1) >>> 0;
      const [buf, off] = writer.reserve(frameBytes);
      writeU32(buf, off, frameBytes - 4);
      writeU32(buf, off + 4, id);
      buf.set(payload, off + 8);
      sendTimes[id & MASK] = performance.now();
      inflight++;
    };
    let now = -1;
    const reading = readFrames(conn, (body) => {
      if (now < 0) now = performance.now();
      if (body.length !== frameBytes - 4) rec.errors++;
      const id = readU32(body, 0);
      rec.record(now - sendTimes[id & MASK]!);
      inflight--;
      if (rec.sending) send();
      else if (inflight === 0) drained?.resolve();
    }, () => {
      now = -1;
    });
    for (let k = 0; k < inflightOf(i, opts.sessions, opts.inflight); k++) {
      send();
    }
    return { conn, writer, reading };
  });

  await rec.run();
  if (inflight > 0) {
    drained = Promise.withResolvers<void>();
    const timer = setTimeout(() => drained?.resolve(), 5000);
    await drained.promise;
    clearTimeout(timer);
  }
  const result = rec.result();
  for (const { conn, writer } of loops) {
    writer.close();
    conn.close();
  }
  await Promise.all(loops.map((l) => l.reading));
  await server?.close();
  printResult(result);
}

/** Hands a promise's resolve function over without a closure per request. */
let capturedResolve: ((reply: Uint8Array) => void) | undefined;
function capture(resolve: (reply: Uint8Array) => void): void {
  capturedResolve = resolve;
}

/**
 * `--variant promise`: the same wire work, but through a request/response
 * API: a promise per request (its resolve function kept in a slot indexed by
 * the id: ids are sequential and fewer than the slots are in flight), and
 * `--inflight` async loops each awaiting its reply before sending the next.
 * What the leanest promise-based client pays: a yardstick for tcpbutler's
 * client, which also keeps a timeout and a session per request.
 */
async function promiseLoops(
  opts: ClientOptions,
  conns: Deno.TcpConn[],
  rec: Recorder,
  payload: Uint8Array,
  server: BenchServer | undefined,
) {
  const frameBytes = 8 + opts.payload;
  const slots = Math.max(1024, 2 ** Math.ceil(Math.log2(opts.inflight * 2)));
  const mask = slots - 1;
  const pending: (((reply: Uint8Array) => void) | undefined)[] = new Array(
    slots,
  ).fill(undefined);
  let nextId = 0;
  const sessions = conns.map((conn) => {
    conn.setNoDelay(true);
    const writer = new FrameWriter(conn);
    const reading = readFrames(conn, (body) => {
      const slot = readU32(body, 0) & mask;
      const resolve = pending[slot];
      if (resolve === undefined) return void rec.errors++;
      pending[slot] = undefined;
      resolve(body);
    });
    return { conn, writer, reading };
  });
  const request = (writer: FrameWriter): Promise<Uint8Array> => {
    const id = nextId;
    nextId = (nextId + 1) >>> 0;
    const [buf, off] = writer.reserve(frameBytes);
    writeU32(buf, off, frameBytes - 4);
    writeU32(buf, off + 4, id);
    buf.set(payload, off + 8);
    const promise = new Promise(capture);
    pending[id & mask] = capturedResolve;
    return promise;
  };
  const loop = async (k: number) => {
    const { writer } = sessions[k % sessions.length]!;
    while (rec.sending) {
      const t = performance.now();
      const reply = await request(writer);
      rec.record(replyClock() - t);
      if (reply.length !== frameBytes - 4) rec.errors++;
    }
  };
  const loops = Array.from({ length: opts.inflight }, (_, k) => loop(k));
  await rec.run();
  await Promise.all(loops);
  const result = rec.result();
  for (const { conn, writer } of sessions) {
    writer.close();
    conn.close();
  }
  await Promise.all(sessions.map((s) => s.reading));
  await server?.close();
  printResult(result);
}

if (import.meta.main) {
  await main();
  Deno.exit(0);
}
