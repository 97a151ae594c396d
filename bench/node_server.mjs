// Baseline (b): a Node `net` echo server, what a Node user would hand-write:
// frames parsed from each `data` chunk in place, replies encoded into a slab
// and written once per microtask flush (`--variant cork`: one write per frame
// between cork() and uncork() on the next tick).
// Run: `node bench/node_server.mjs [--variant batch|cork]` — prints
// `LISTENING <port>`, exits when stdin closes.
// deno-lint-ignore-file no-console

import net from "node:net";
import process from "node:process";
import { pathToFileURL } from "node:url";
import { frameParser, makeWriter, stdinClosed } from "./_node_shared.mjs";

export function startNodeServer(hostname = "127.0.0.1", variant = "batch") {
  const sockets = new Set();
  const server = net.createServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    const writer = makeWriter(socket, variant);
    socket.on("data", frameParser((body) => writer.writeFrame(body)));
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: hostname, port: 0 }, () => {
      resolve({
        port: server.address().port,
        close() {
          for (const s of sockets) s.destroy();
          return new Promise((r) => server.close(() => r()));
        },
      });
    });
  });
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const i = process.argv.indexOf("--variant");
  const variant = i > 0 ? process.argv[i + 1] : "batch";
  const server = await startNodeServer("127.0.0.1", variant);
  console.log(`LISTENING ${server.port}`);
  await stdinClosed();
  await server.close();
  process.exit(0);
}
