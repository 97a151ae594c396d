/**
 * The Redis workload: GET/SET (half each, random keys), 64 commands in
 * flight over 4 connections, against one `redis-server`, through tcpbutler
 * (`resp()` codec, fifo correlation) and through ioredis (4 clients, round
 * robin; with and without its auto-pipelining), in turns, in one run.
 *
 * ```sh
 * deno run -A --no-lock bench/redis_bench.ts [--port 6379] [--duration 5000] [--rounds 3]
 * ```
 *
 * Without `--port` it starts its own `redis-server` on a free port. Prints
 * ops/s (median of the rounds), latency percentiles and the client's CPU
 * time per operation for each driver, and the ratios to ioredis.
 *
 * @module
 */

// A command-line program: it prints.
// deno-lint-ignore-file no-console

import process from "node:process";
import { parseArgs } from "node:util";
import { Redis } from "npm:ioredis@5.11.1";
import { type Client, dial } from "../mod.ts";
import { command, resp, type RespValue } from "../framing/resp.ts";
import { type RedisServer, startRedis } from "../tests/_redis.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    port: { type: "string" },
    duration: { type: "string", default: "5000" },
    warmup: { type: "string", default: "1000" },
    rounds: { type: "string", default: "3" },
    concurrency: { type: "string", default: "64" },
    sessions: { type: "string", default: "4" },
    keys: { type: "string", default: "1000" },
    "value-bytes": { type: "string", default: "64" },
  },
});

const duration = Number(values.duration);
const warmup = Number(values.warmup);
const rounds = Number(values.rounds);
const concurrency = Number(values.concurrency);
const sessions = Number(values.sessions);
const keys = Array.from(
  { length: Number(values.keys) },
  (_, i) => `bench:key:${i}`,
);
const value = "v".repeat(Number(values["value-bytes"]));

interface Driver {
  readonly name: string;
  get(key: string): Promise<unknown>;
  set(key: string, value: string): Promise<unknown>;
  close(): Promise<void>;
}

async function tcpbutler(port: number): Promise<Driver> {
  const client: Client<RespValue> = await dial(
    { hostname: "127.0.0.1", port },
    resp(),
    { correlation: "fifo", sessions, requestTimeout: 30_000 },
  );
  await new Promise<void>((resolve) => {
    const check = () => {
      if (client.stats().sessions.ready >= sessions) {
        client.removeEventListener("ready", check);
        resolve();
      }
    };
    client.addEventListener("ready", check);
    check();
  });
  return {
    name: "tcpbutler",
    get: (key) => client.request(command("GET", key)),
    set: (key, value) => client.request(command("SET", key, value)),
    close: () => client.close(),
  };
}

async function ioredis(port: number, auto: boolean): Promise<Driver> {
  const clients = Array.from(
    { length: sessions },
    () =>
      new Redis({
        host: "127.0.0.1",
        port,
        lazyConnect: true,
        enableAutoPipelining: auto,
        maxRetriesPerRequest: 0,
      }),
  );
  await Promise.all(clients.map((client) => client.connect()));
  let next = 0;
  const pick = () => clients[next++ % sessions]!;
  return {
    name: auto ? "ioredis (autopipelining)" : "ioredis",
    get: (key) => pick().get(key),
    set: (key, value) => pick().set(key, value),
    close: async () => {
      await Promise.all(clients.map((client) => client.quit()));
    },
  };
}

interface Result {
  opsPerSecond: number;
  p50: number;
  p99: number;
  cpuMicrosPerOp: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function measure(driver: Driver): Promise<Result> {
  let stop = false;
  let measuring = false;
  let ops = 0;
  let n = 0;
  const latencies: number[] = [];
  const worker = async () => {
    while (!stop) {
      const key = keys[Math.floor(Math.random() * keys.length)]!;
      const t0 = performance.now();
      if (n++ & 1) await driver.get(key);
      else await driver.set(key, value);
      if (measuring) {
        ops++;
        if ((ops & 15) === 0) latencies.push(performance.now() - t0);
      }
    }
  };
  const workers = Array.from({ length: concurrency }, worker);
  await sleep(warmup);
  measuring = true;
  ops = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await sleep(duration);
  const elapsed = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const counted = ops;
  measuring = false;
  stop = true;
  await Promise.all(workers);
  latencies.sort((a, b) => a - b);
  const at = (q: number) =>
    latencies[
      Math.min(latencies.length - 1, Math.floor(q * latencies.length))
    ]!;
  return {
    opsPerSecond: counted / elapsed * 1000,
    p50: at(0.5),
    p99: at(0.99),
    cpuMicrosPerOp: (cpu.user + cpu.system) / counted,
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

let server: RedisServer | undefined;
let port: number;
if (values.port !== undefined) port = Number(values.port);
else {
  server = await startRedis();
  port = server.port;
}

const version = new TextDecoder().decode(
  new Deno.Command("redis-server", { args: ["--version"] }).outputSync().stdout,
).trim();
console.log(
  `Redis GET/SET, ${concurrency} in flight, ${sessions} connections, ${value.length} B values, ${keys.length} keys; ` +
    `${rounds} rounds of ${duration} ms (+${warmup} ms warm-up) per driver, in turns`,
);
console.log(
  `Deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} CPUs; ${version}`,
);

const drivers = [
  await tcpbutler(port),
  await ioredis(port, false),
  await ioredis(port, true),
];
const results = new Map<string, Result[]>(drivers.map((d) => [d.name, []]));
try {
  for (let round = 1; round <= rounds; round++) {
    for (const driver of drivers) {
      const result = await measure(driver);
      results.get(driver.name)!.push(result);
      console.log(
        `  round ${round} ${driver.name.padEnd(26)} ${
          Math.round(result.opsPerSecond).toString().padStart(8)
        } ops/s`,
      );
    }
  }
} finally {
  for (const driver of drivers) await driver.close();
  await server?.[Symbol.asyncDispose]();
}

const summary = drivers.map((driver) => {
  const rs = results.get(driver.name)!;
  return {
    name: driver.name,
    opsPerSecond: median(rs.map((r) => r.opsPerSecond)),
    p50: median(rs.map((r) => r.p50)),
    p99: median(rs.map((r) => r.p99)),
    cpuMicrosPerOp: median(rs.map((r) => r.cpuMicrosPerOp)),
  };
});
const base = summary[0]!;
console.log("");
console.log(
  "driver                       ops/s (median)   p50 ms   p99 ms   client CPU µs/op   tcpbutler ÷ this",
);
for (const s of summary) {
  console.log(
    `${s.name.padEnd(28)} ${
      Math.round(s.opsPerSecond).toString().padStart(14)
    } ${s.p50.toFixed(3).padStart(8)} ${s.p99.toFixed(3).padStart(8)} ${
      s.cpuMicrosPerOp.toFixed(2).padStart(18)
    } ${(base.opsPerSecond / s.opsPerSecond).toFixed(2).padStart(18)}`,
  );
}
