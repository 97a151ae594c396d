// deno-lint-ignore-file no-console -- a command-line program prints its results
/**
 * A client for the echo server: `deno task request 'hello'`.
 *
 * Sends the message once and prints the reply, or with `-n`/`--count` N
 * times with `-c`/`--concurrency` requests in flight, then prints the
 * timing. Flags: `--hostname` (127.0.0.1), `--port` (9000), `--sessions`
 * (1), `--timeout` (ms, 5000), `--ca` (PEM file to trust: TLS), `--cert` and
 * `--key` (client certificate: mTLS).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type ClientTlsOptions, dial } from "../mod.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    hostname: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "9000" },
    count: { type: "string", short: "n", default: "1" },
    concurrency: { type: "string", short: "c", default: "1" },
    sessions: { type: "string", default: "1" },
    timeout: { type: "string", default: "5000" },
    ca: { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
  },
});

const text = positionals.join(" ") || "hello";
const count = Number(values.count);
const concurrency = Math.max(1, Math.min(Number(values.concurrency), count));
const timeout = Number(values.timeout);

let tls: ClientTlsOptions | undefined;
if (values.ca !== undefined) {
  tls = { caCerts: [await Deno.readTextFile(values.ca)] };
  if (values.cert !== undefined && values.key !== undefined) {
    tls.cert = await Deno.readTextFile(values.cert);
    tls.key = await Deno.readTextFile(values.key);
  }
}

await using client = await dial(
  { hostname: values.hostname, port: Number(values.port) },
  {
    sessions: Number(values.sessions),
    connectTimeout: timeout,
    requestTimeout: timeout,
    ...(tls ? { tls } : {}),
  },
);

const payload = new TextEncoder().encode(text);
const latencies: number[] = [];
let failures = 0;
let next = 0;
const started = performance.now();

async function worker(): Promise<void> {
  while (next < count) {
    const i = next++;
    const t0 = performance.now();
    try {
      const reply = await client.request(payload);
      latencies.push(performance.now() - t0);
      if (count === 1 || i < 3) {
        console.log(`reply: ${new TextDecoder().decode(reply)}`);
      }
    } catch (error) {
      failures++;
      console.error(`request ${i} failed: ${error}`);
    }
  }
}

await Promise.all(Array.from({ length: concurrency }, worker));
const seconds = (performance.now() - started) / 1000;
latencies.sort((a, b) => a - b);
const at = (q: number) =>
  latencies.length === 0 ? 0 : latencies[
    Math.min(latencies.length - 1, Math.floor(q * latencies.length))
  ]!;
console.log(
  `${latencies.length} ok, ${failures} failed in ${seconds.toFixed(3)} s: ` +
    `${Math.round(latencies.length / seconds)} req/s, ` +
    `p50 ${at(0.5).toFixed(3)} ms, p99 ${at(0.99).toFixed(3)} ms`,
);
if (failures > 0) Deno.exitCode = 1;
