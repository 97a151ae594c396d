// Baseline (b): a Node `net` load generator, the twin of raw_client.ts:
// keeps --inflight requests in flight over --sessions sockets, matches
// replies by id, prints one `RESULT {json}` line. `--inproc` runs the Node
// server in this process; `--variant cork` uses cork/uncork writes per frame.

import net from "node:net";
import process from "node:process";
import {
  frameParser,
  inflightOf,
  makePayload,
  makeWriter,
  parseClientArgs,
  printResult,
  Recorder,
  stdinClosed,
} from "./_node_shared.mjs";
import { startNodeServer } from "./node_server.mjs";

const RING = 1 << 20;
const MASK = RING - 1;

function connect(hostname, port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(
      { host: hostname, port, noDelay: true },
      () => resolve(socket),
    );
    socket.once("error", reject);
  });
}

const opts = parseClientArgs(process.argv.slice(2));
// The orchestrator keeps stdin open while it waits for the result: if it
// dies, stop at once.
stdinClosed().then(() => process.exit(2));
const variant = opts.variant || "batch";
const server = opts.inproc
  ? await startNodeServer(opts.hostname, variant)
  : undefined;
const port = server ? server.port : opts.port;
if (server) opts.serverPid = 0;

const rec = new Recorder(opts);
const payload = makePayload(opts.payload);
const frameBytes = 8 + opts.payload;
const sendTimes = new Float64Array(RING);
let nextId = 0;
let inflight = 0;
let drained;

const sockets = await Promise.all(
  Array.from({ length: opts.sessions }, () => connect(opts.hostname, port)),
);
sockets.forEach((socket, i) => {
  socket.setNoDelay(true);
  socket.on("error", () => {});
  const writer = makeWriter(socket, variant);
  const send = () => {
    const id = nextId;
    nextId = (nextId + 1) >>> 0;
    const [buf, off] = writer.reserve(frameBytes);
    buf.writeUInt32BE(frameBytes - 4, off);
    buf.writeUInt32BE(id, off + 4);
    payload.copy(buf, off + 8);
    sendTimes[id & MASK] = performance.now();
    inflight++;
  };
  let now = -1;
  socket.on(
    "data",
    frameParser((body) => {
      if (now < 0) now = performance.now();
      if (body.length !== frameBytes - 4) rec.errors++;
      const id = body.readUInt32BE(0);
      rec.record(now - sendTimes[id & MASK]);
      inflight--;
      if (rec.sending) send();
      else if (inflight === 0) drained?.();
    }, () => {
      now = -1;
    }),
  );
  for (let k = 0; k < inflightOf(i, opts.sessions, opts.inflight); k++) send();
});

await rec.run();
if (inflight > 0) {
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, 5000);
    drained = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}
const result = rec.result();
for (const s of sockets) s.destroy();
await server?.close();
printResult(result);
process.exit(0);
