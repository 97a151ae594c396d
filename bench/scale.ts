// deno-lint-ignore-file no-console -- a command-line program prints its results
/**
 * Scale figures: `deno task bench:scale`.
 *
 * 1. Workers: requests/s of `serveWorkers()` with 1 and with 2 workers on a
 *    server-bound load (`--work-us`, 200 µs of CPU per request by default,
 *    so the client's own work is small beside it), client in this process,
 *    server in a child; runs alternate, median of `--runs` (3). The ratio is
 *    what matters; on a machine with few cores the client competes with the
 *    workers for them, which holds the ratio down.
 * 2. Idle sessions: `--idle` (10,000) sessions to one server: the server's
 *    RSS per session (from `/proc/<pid>/status`) and how fast they were all
 *    accepted and ready.
 * 3. A client of `--endpoints` (50) endpoints: its RSS per endpoint (after a
 *    GC, with `--v8-flags=--expose-gc`), and how evenly `routing: "p2c"`
 *    spread 20,000 requests over them.
 *
 * `--only workers|idle|fleet` runs one part.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { dial } from "../mod.ts";
import { procRssKiB } from "./_shared.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "3" },
    duration: { type: "string", default: "3000" },
    idle: { type: "string", default: "10000" },
    endpoints: { type: "string", default: "50" },
    "work-us": { type: "string", default: "200" },
    only: { type: "string" },
  },
});
const runs = Number(values.runs);
const duration = Number(values.duration);
const workUs = Number(values["work-us"]);

interface Child {
  pid: number;
  ports: number[];
  stop(): Promise<void>;
}

/** Starts `_scale_server.ts` with `args`; resolves once it printed its ports. */
async function startServer(args: string[]): Promise<Child> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("./_scale_server.ts", import.meta.url).pathname,
      ...args,
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream())
    .getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await lines.read();
    if (done) throw new Error("The server exited before listening");
    text += value;
  }
  const ports = text.split("\n")[0]!.replace("ports ", "").split(",")
    .map(Number);
  return {
    pid: child.pid,
    ports,
    async stop() {
      child.kill("SIGTERM");
      await lines.cancel();
      await child.status;
    },
  };
}

/** Requests/s through `sessions` sessions with `concurrency` in flight. */
async function throughput(port: number): Promise<number> {
  await using client = await dial(`127.0.0.1:${port}`, { sessions: 8 });
  const payload = new Uint8Array(64);
  new DataView(payload.buffer).setUint32(0, workUs);
  let done = 0;
  const until = performance.now() + duration;
  const warm = performance.now() + 500;
  let counted = 0;
  let started = 0;
  await Promise.all(Array.from({ length: 64 }, async () => {
    while (performance.now() < until) {
      await client.request(payload);
      done++;
      if (started === 0 && performance.now() >= warm) {
        started = performance.now();
        counted = done;
      }
    }
  }));
  return (done - counted) / ((performance.now() - started) / 1000);
}

function median(values: number[]): number {
  const sorted = values.toSorted((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function workers(): Promise<void> {
  const results: Record<number, number[]> = { 1: [], 2: [] };
  for (let run = 0; run < runs; run++) {
    for (const n of [1, 2]) {
      const server = await startServer(["--workers", String(n)]);
      try {
        results[n]!.push(await throughput(server.ports[0]!));
      } finally {
        await server.stop();
      }
    }
  }
  const one = median(results[1]!);
  const two = median(results[2]!);
  console.log(
    `workers (${navigator.hardwareConcurrency} cores, ${workUs} µs CPU/request, 64 in flight over 8 sessions):`,
  );
  console.log(`  1 worker:  ${Math.round(one)} req/s`);
  console.log(
    `  2 workers: ${Math.round(two)} req/s (${(two / one).toFixed(2)}×, ${
      Math.round(two / 2)
    } req/s per worker)`,
  );
}

async function idle(): Promise<void> {
  const count = Number(values.idle);
  const server = await startServer(["--servers", "1"]);
  try {
    const before = procRssKiB(server.pid);
    const started = performance.now();
    await using client = await dial(`127.0.0.1:${server.ports[0]}`, {
      sessions: count,
      heartbeat: false,
      connectTimeout: 120_000,
    });
    while (client.stats().sessions.ready < count) {
      await new Promise((resolve) =>
        client.addEventListener("ready", resolve, { once: true })
      );
    }
    const seconds = (performance.now() - started) / 1000;
    const after = procRssKiB(server.pid);
    console.log(`idle sessions (${count} to one server):`);
    console.log(
      `  server RSS ${Math.round(before / 1024)} → ${
        Math.round(after / 1024)
      } MiB: ${((after - before) / count).toFixed(1)} KiB per session`,
    );
    console.log(
      `  all ready in ${seconds.toFixed(1)} s: ${
        Math.round(count / seconds)
      } sessions/s (connect, accept and handshake ping)`,
    );
    await client.close({ timeout: 10_000 });
  } finally {
    await server.stop();
  }
}

async function fleet(): Promise<void> {
  const count = Number(values.endpoints);
  const server = await startServer(["--servers", String(count)]);
  try {
    gc();
    const before = Deno.memoryUsage().rss;
    await using client = await dial(
      server.ports.map((port) => `127.0.0.1:${port}`),
      { routing: "p2c" },
    );
    while (client.stats().sessions.ready < count) {
      await new Promise((resolve) =>
        client.addEventListener("ready", resolve, { once: true })
      );
    }
    gc();
    const after = Deno.memoryUsage().rss;
    const served = new Map<number, number>();
    const payload = new Uint8Array(16);
    let left = 20_000;
    await Promise.all(Array.from({ length: 64 }, async () => {
      while (left-- > 0) {
        const reply = await client.request(payload);
        const port = (reply[0]! << 8) | reply[1]!;
        served.set(port, (served.get(port) ?? 0) + 1);
      }
    }));
    const counts = [...served.values()];
    const mean = 20_000 / count;
    console.log(`client with ${count} endpoints (p2c, 64 in flight):`);
    console.log(
      `  client RSS +${
        ((after - before) / 1024 / count).toFixed(1)
      } KiB per endpoint (one session each)`,
    );
    console.log(
      `  20,000 requests: ${served.size} endpoints used, per endpoint min ${
        Math.min(...counts)
      } / mean ${mean} / max ${Math.max(...counts)}`,
    );
  } finally {
    await server.stop();
  }
}

/** A full GC when the flag allows it. */
function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

const only = values.only;
if (only === undefined || only === "workers") await workers();
if (only === undefined || only === "idle") await idle();
if (only === undefined || only === "fleet") await fleet();
