/**
 * Two checkouts of the library, one process: the client's request path of
 * each (a client session of the default protocol, `--inflight` loops each
 * awaiting `session.request()` of a `--payload`-byte payload, over an
 * in-memory transport whose peer turns every request frame into its
 * response in place, so the peer costs next to nothing and no socket or
 * scheduler enters the figure). Chunks of requests alternate between the
 * two, in turn first, so drift in the machine's load hits both alike;
 * prints the median CPU ns per request of each and B/A.
 *
 * `--alloc` measures instead the bytes each allocates per request: windows of
 * `--requests` requests run after a full collection (start Deno with
 * `--v8-flags=--expose-gc,--min-semi-space-size=128,--max-semi-space-size=128`
 * so that no scavenge runs inside a window). Unlike CPU time, that figure
 * does not move with the machine's load.
 *
 * Run from a checkout, with two project roots (for example a `git archive`
 * of main and one of your branch):
 * `deno run -A bench/client_ab.ts --a /tmp/main --b /tmp/branch --chunks 40`.
 * As with `server_ab.ts`, run it both ways round and take both ratios.
 *
 * @module
 */
// deno-lint-ignore-file no-console

import process from "node:process";
import { parseArgs } from "node:util";
import type { Transport } from "../connection.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    a: { type: "string" },
    b: { type: "string" },
    chunks: { type: "string", default: "40" },
    requests: { type: "string", default: "100000" },
    inflight: { type: "string", default: "64" },
    payload: { type: "string", default: "64" },
    alloc: { type: "boolean", default: false },
  },
});
if (flags.a === undefined || flags.b === undefined) {
  throw new TypeError("Usage: client_ab.ts --a ROOT --b ROOT");
}

const INFLIGHT = Number(flags.inflight);
const PAYLOAD = Number(flags.payload);
/** The default protocol's request and response kinds (byte 4 of a frame). */
const RESPONSE = 2;

/** Answers every request frame it reads with the same frame as a response. */
async function respond(peer: Transport): Promise<void> {
  let buffer = new Uint8Array(1 << 20);
  let have = 0;
  for (;;) {
    if (have === buffer.length) {
      const grown = new Uint8Array(buffer.length * 2);
      grown.set(buffer);
      buffer = grown;
    }
    const n = await peer.read(buffer.subarray(have));
    if (n === null) return;
    have += n;
    let pos = 0;
    while (have - pos >= 4) {
      const length = ((buffer[pos]! << 24) | (buffer[pos + 1]! << 16) |
        (buffer[pos + 2]! << 8) | buffer[pos + 3]!) >>> 0;
      if (have - pos < length + 4) break;
      buffer[pos + 4] = RESPONSE;
      pos += length + 4;
    }
    if (pos > 0) await peer.write(buffer.subarray(0, pos));
    buffer.copyWithin(0, pos, have);
    have -= pos;
  }
}

/** A client session from `root`; returns a function that runs `count` requests. */
async function setup(root: string): Promise<(count: number) => Promise<void>> {
  const { SessionImpl } = await import(`${root}/session/session.ts`);
  const { Correlator } = await import(`${root}/_correlation.ts`);
  const { defaultDialect } = await import(`${root}/_protocol_dialect.ts`);
  const { noopLogger } = await import(`${root}/logger.ts`);
  const { newCounters } = await import(`${root}/session/types.ts`);
  const { memoryPair } = await import(`${root}/tests/_memory_transport.ts`);
  const [mine, peer] = memoryPair();
  const session = new SessionImpl(mine, {
    side: "client",
    dialect: defaultDialect(),
    correlator: new Correlator(),
    counters: newCounters(),
    logger: noopLogger,
    handler: () => undefined,
    context: {},
    retry: undefined,
    replies: "endpoint",
    onHandlerError: undefined,
    maxConcurrentHandlers: 64,
    highWaterMark: Math.max(100, INFLIGHT),
    maxWriteBytes: 64 * 1024 * 1024,
    requestTimeout: 5000,
    onClose: () => {},
    onPeerDrain: () => {},
  });
  session.start();
  session.markReady();
  void respond(peer);
  const payload = new Uint8Array(PAYLOAD).fill(7);
  return async (count) => {
    let left = count;
    const loop = async () => {
      while (left > 0) {
        left--;
        const reply: Uint8Array = await session.request(payload);
        if (reply.length !== PAYLOAD) throw new Error("Wrong reply");
      }
    };
    await Promise.all(Array.from({ length: INFLIGHT }, loop));
  };
}

const sides = [await setup(flags.a), await setup(flags.b)];
for (const run of sides) await run(300_000);
const chunks = Number(flags.chunks);
const count = Number(flags.requests);
const perRequest: number[][] = [[], []];
const gc = (globalThis as { gc?: () => void }).gc;
if (flags.alloc && gc === undefined) {
  throw new TypeError("--alloc needs --v8-flags=--expose-gc");
}
for (let c = 0; c < chunks; c++) {
  for (const side of c % 2 === 0 ? [0, 1] : [1, 0]) {
    if (flags.alloc) {
      gc!();
      const before = process.memoryUsage().heapUsed;
      await sides[side]!(count);
      perRequest[side]!.push(
        (process.memoryUsage().heapUsed - before) / count,
      );
    } else {
      const start = process.cpuUsage();
      await sides[side]!(count);
      const used = process.cpuUsage(start);
      perRequest[side]!.push((used.user + used.system) * 1000 / count);
    }
  }
}
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;
const a = median(perRequest[0]!);
const b = median(perRequest[1]!);
const unit = flags.alloc ? "heap bytes" : "ns CPU";
console.log(
  `A ${a.toFixed(1)} ${unit}/request, B ${b.toFixed(1)} ${unit}/request, ` +
    `B/A ${
      (b / a).toFixed(3)
    } (medians of ${chunks} chunks of ${count} requests)`,
);
Deno.exit(0);
