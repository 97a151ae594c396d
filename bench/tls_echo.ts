// deno-lint-ignore-file no-console -- a bench reports on stdout
/**
 * Raw TLS echo through the two server-side TLS listeners: `Deno.listenTls`
 * (rustls) and the listener of `serve({ tls })` (`node:tls` over a
 * `Deno.listen` connection, transport/_tls_accept.ts). Each run measures
 * one of them: 4 `Deno.connectTls` clients in the same process send a
 * message and wait for its echo, `rounds` times each.
 *
 * Run: `deno run -A bench/tls_echo.ts <deno|node> <bytes> <rounds>`, e.g.
 * `deno run -A bench/tls_echo.ts node 16384 1000`. Prints the round trips a
 * second, MB/s and the process's CPU time (user + system) per round trip.
 * Run both listeners in turn, several times: on a shared machine one pair
 * of runs tells little.
 *
 * @module
 */

import process from "node:process";
import { listenTls } from "../transport/_tls_accept.ts";
import { makeTestPki } from "../tests/_certs.ts";

const CONNS = 4;

const [mode, bytesArg = "64", roundsArg = "3000"] = Deno.args;
if (mode !== "deno" && mode !== "node") {
  throw new TypeError("Usage: tls_echo.ts <deno|node> <bytes> <rounds>");
}
const bytes = Number(bytesArg);
const rounds = Number(roundsArg);

await using pki = await makeTestPki();
const options = {
  hostname: "127.0.0.1",
  port: 0,
  cert: pki.serverCert,
  key: pki.serverKey,
};
const listener = mode === "deno"
  ? Deno.listenTls(options)
  : listenTls({ ...options, handshakeTimeout: 10_000 });
const port = (listener.addr as Deno.NetAddr).port;

const echo = async (
  conn: Deno.Conn | Awaited<ReturnType<typeof listener.accept>>,
) => {
  const buffer = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      let written = 0;
      while (written < n) {
        written += await conn.write(buffer.subarray(written, n));
      }
    }
  } catch {
    // The client went away.
  } finally {
    conn.close();
  }
};
const serving = (async () => {
  for (;;) {
    let conn;
    try {
      conn = await listener.accept();
    } catch {
      return;
    }
    echo(conn);
  }
})();

const cpuBefore = process.cpuUsage();
const start = performance.now();
await Promise.all(Array.from({ length: CONNS }, async () => {
  const conn = await Deno.connectTls({
    hostname: "127.0.0.1",
    port,
    caCerts: [pki.caCert],
  });
  const message = new Uint8Array(bytes).fill(1);
  const buffer = new Uint8Array(64 * 1024);
  for (let i = 0; i < rounds; i++) {
    await conn.write(message);
    let got = 0;
    while (got < bytes) {
      const n = await conn.read(buffer);
      if (n === null) throw new Error("The server closed the connection");
      got += n;
    }
  }
  conn.close();
}));
const ms = performance.now() - start;
const cpu = process.cpuUsage(cpuBefore);
const total = CONNS * rounds;
console.log(
  mode,
  bytes,
  `${(total / ms * 1000).toFixed(0)} round trips/s`,
  `${(total * bytes / ms / 1000).toFixed(1)} MB/s`,
  `${((cpu.user + cpu.system) / total).toFixed(1)} µs CPU/round trip`,
);
listener.close();
await serving;
