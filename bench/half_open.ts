/**
 * How long a client takes to notice a half-open connection: a raw peer
 * answers the connect ping, then goes silent (it keeps the socket open and
 * reads, but answers nothing, as a host whose process hung or whose network
 * path dropped). The figure is the time from the last byte the client read
 * (the peer's last pong) to the client's `disconnect` event, in heartbeat
 * intervals.
 *
 * Usage: deno run --allow-net bench/half_open.ts [--interval 200] [--trials 10]
 *
 * @module
 */

// deno-lint-ignore-file no-console
import { parseArgs } from "node:util";
import { defaultCodec, dial, FrameKind } from "../mod.ts";

const { values } = parseArgs({
  options: {
    interval: { type: "string", default: "200" },
    trials: { type: "string", default: "10" },
  },
});
const interval = Number(values.interval);
const trials = Number(values.trials);
const codec = defaultCodec();

/** One trial: returns ms from the peer's last pong to the disconnect. */
async function trial(): Promise<number> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let lastSent = 0;
  const peer = (async () => {
    const conn = await listener.accept();
    const decoder = codec.decoder();
    const buffer = new Uint8Array(64 * 1024);
    let answered = 0;
    try {
      for (;;) {
        const n = await conn.read(buffer);
        if (n === null) break;
        const frames = "decode" in decoder
          ? decoder.decode(buffer.subarray(0, n))
          : [];
        for (const frame of frames) {
          // Answer the connect ping only; then silence.
          if (frame.kind === FrameKind.Ping && answered === 0) {
            answered++;
            await conn.write(
              codec.encode({
                kind: FrameKind.Pong,
                id: frame.id,
                payload: frame.payload,
              }),
            );
            lastSent = performance.now();
          }
        }
      }
    } catch {
      // The client reset the connection.
    } finally {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
  })();
  const addr = listener.addr;
  const client = await dial(
    { hostname: addr.hostname, port: addr.port },
    {
      heartbeat: { interval },
      reconnect: { initial: 60_000, max: 60_000 },
    },
  );
  const gone = Promise.withResolvers<number>();
  client.addEventListener(
    "disconnect",
    () => gone.resolve(performance.now()),
    { once: true },
  );
  const at = await gone.promise;
  await client.close({ timeout: 0 });
  listener.close();
  await peer;
  return at - lastSent;
}

const results: number[] = [];
for (let i = 0; i < trials; i++) results.push(await trial());
results.sort((a, b) => a - b);
const mean = results.reduce((a, b) => a + b, 0) / results.length;
const fmt = (ms: number) =>
  `${ms.toFixed(0)} ms (${(ms / interval).toFixed(2)}x)`;
console.log(`heartbeat.interval ${interval} ms, ${trials} trials`);
console.log(`min ${fmt(results[0]!)}`);
console.log(`median ${fmt(results[Math.floor(results.length / 2)]!)}`);
console.log(`mean ${fmt(mean)}`);
console.log(`max ${fmt(results[results.length - 1]!)}`);
