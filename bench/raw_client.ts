/**
 * Baseline (a): a raw Deno load generator. `Deno.connect`, the same slab read
 * loop and coalescing writer as the raw server; keeps `--inflight` requests in
 * flight over `--sessions` connections (closed loop: each reply sends the
 * next request on its connection), matches replies by id.
 *
 * Run: `deno run -A bench/raw_client.ts --port P --server-pid PID
 * --sessions S --inflight N --payload BYTES --warmup MS --duration MS`
 * (`--inproc` starts the raw server in this process instead; `--idle N`
 * opens N idle connections, prints `IDLE READY`, waits for stdin EOF).
 * Prints one `RESULT {json}` line.
 *
 * @module
 */

import {
  FrameWriter,
  inflightOf,
  makePayload,
  openIdle,
  parseClientArgs,
  printResult,
  readFrames,
  readU32,
  Recorder,
  stdinClosed,
  writeU32,
} from "./_shared.ts";
import { startRawServer } from "./raw_server.ts";

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

if (import.meta.main) {
  await main();
  Deno.exit(0);
}
