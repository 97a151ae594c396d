/**
 * Baseline (a): a raw Deno echo server. `Deno.listen`, one own `conn.read()`
 * loop per connection into a slab (1 KiB first buffer), frames parsed in place
 * as views, replies encoded straight into a growable buffer and written with
 * one `conn.write` per microtask flush.
 *
 * Run: `deno run -A bench/raw_server.ts` — prints `LISTENING <port>`, exits
 * when stdin closes.
 *
 * @module
 */

import { FrameWriter, readFrames, stdinClosed } from "./_shared.ts";

/** A running echo server. */
export interface BenchServer {
  port: number;
  close(): Promise<void>;
}

/** Starts the raw echo server on an ephemeral port. */
export function startRawServer(hostname = "127.0.0.1"): BenchServer {
  const listener = Deno.listen({ hostname, port: 0 });
  const conns = new Set<Deno.TcpConn>();
  const serveConn = async (conn: Deno.TcpConn) => {
    conns.add(conn);
    conn.setNoDelay(true);
    const writer = new FrameWriter(conn);
    // The handler: echo the body (id + payload) back as the reply body.
    await readFrames(conn, (body) => writer.writeFrame(body));
    writer.close();
    conns.delete(conn);
    try {
      conn.close();
    } catch { /* already closed */ }
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) serveConn(conn);
    } catch { /* listener closed */ }
  })();
  return {
    port: listener.addr.port,
    async close() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* already closed */ }
      }
      await accepting;
    },
  };
}

if (import.meta.main) {
  const server = startRawServer();
  // deno-lint-ignore no-console
  console.log(`LISTENING ${server.port}`);
  await stdinClosed();
  await server.close();
  Deno.exit(0);
}
