/**
 * Two checkouts of the library, one process: the server's request path of
 * each (a `serve()` server with an echo handler, fed 64 pipelined 64-byte
 * default-protocol requests at a time over an in-memory transport, so no
 * socket or scheduler enters the figure). Chunks of requests alternate
 * between the two, in turn first, so drift in the machine's load hits both
 * alike; prints the median CPU ns per request of each and B/A.
 *
 * Run from a checkout, with two project roots (for example a
 * `git archive main` and one of your branch):
 * `deno run -A bench/server_ab.ts --a /tmp/main --b /tmp/branch --chunks 20`.
 * Whichever goes second tends to read a few per cent faster: run it both
 * ways round and take both ratios.
 *
 * @module
 */
// deno-lint-ignore-file no-console

import process from "node:process";
import { parseArgs } from "node:util";
import type { Transport, TransportListener } from "../connection.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    a: { type: "string" },
    b: { type: "string" },
    chunks: { type: "string", default: "20" },
    requests: { type: "string", default: "20000" },
  },
});
if (flags.a === undefined || flags.b === undefined) {
  throw new TypeError("Usage: server_ab.ts --a ROOT --b ROOT");
}

const PIPELINE = 64;
const PAYLOAD = 64;
const FRAME = 9 + PAYLOAD;

/** 64 request frames of the default protocol, ids 1 to 64. */
function requests(): Uint8Array {
  const batch = new Uint8Array(PIPELINE * FRAME);
  const view = new DataView(batch.buffer);
  for (let i = 0; i < PIPELINE; i++) {
    view.setUint32(i * FRAME, 5 + PAYLOAD);
    batch[i * FRAME + 4] = 1;
    view.setUint32(i * FRAME + 5, i + 1);
  }
  return batch;
}

/** A listener that hands out one connection, then none. */
function oneConnection(conn: Transport): TransportListener {
  let given = false;
  const accept = (): Promise<Transport> => {
    if (given) return new Promise<Transport>(() => {});
    given = true;
    return Promise.resolve(conn);
  };
  return {
    addr: { transport: "tcp", hostname: "127.0.0.1", port: 1 },
    accept,
    close() {},
    async *[Symbol.asyncIterator]() {
      yield await accept();
    },
  };
}

/** Serves from `root`; returns a function that runs `rounds` batches. */
async function setup(root: string): Promise<(rounds: number) => Promise<void>> {
  const { serve } = await import(`${root}/mod.ts`);
  const { memoryPair } = await import(`${root}/tests/_memory_transport.ts`);
  const [serverEnd, clientEnd] = memoryPair();
  serve({
    listener: oneConnection(serverEnd),
    handler: (payload: Uint8Array) => payload,
  });
  const batch = requests();
  const buffer = new Uint8Array(1 << 20);
  return async (rounds) => {
    for (let r = 0; r < rounds; r++) {
      await clientEnd.write(batch);
      for (let got = 0; got < batch.length;) {
        const n = await clientEnd.read(buffer);
        if (n === null) throw new Error("The server closed");
        got += n;
      }
    }
  };
}

const sides = [await setup(flags.a), await setup(flags.b)];
for (const run of sides) await run(2000);
const chunks = Number(flags.chunks);
const rounds = Math.ceil(Number(flags.requests) / PIPELINE);
const nsPerRequest: number[][] = [[], []];
for (let c = 0; c < chunks; c++) {
  for (const side of c % 2 === 0 ? [0, 1] : [1, 0]) {
    const start = process.cpuUsage();
    await sides[side]!(rounds);
    const used = process.cpuUsage(start);
    nsPerRequest[side]!.push(
      (used.user + used.system) * 1000 / (rounds * PIPELINE),
    );
  }
}
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;
const a = median(nsPerRequest[0]!);
const b = median(nsPerRequest[1]!);
console.log(
  `A ${a.toFixed(1)} ns/request, B ${b.toFixed(1)} ns/request, B/A ${
    (b / a).toFixed(3)
  } (medians of ${chunks} chunks of ${rounds * PIPELINE} requests)`,
);
Deno.exit(0);
