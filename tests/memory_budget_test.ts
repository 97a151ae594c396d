/**
 * The server's memory budget: peers that make it buffer the most are paused,
 * then cut off, while a clean client keeps being served; the total the
 * library counts stays bounded.
 */

import assert from "node:assert/strict";
import { dial } from "../client/dial.ts";
import { MemoryBudgetError } from "../errors.ts";
import { serve } from "../server/serve.ts";
import type { Server } from "../server/server.ts";
import { FrameKind } from "../protocol.ts";
import { HOST } from "./_loopback.ts";
import { withTimeout } from "./_process.ts";
import { encodeFrame, frameHeader } from "./_raw_peer.ts";

const MiB = 1024 * 1024;
const LIMIT = 2 * MiB;
/** A report comes per decoded slice: the total may pass the limit by one per session. */
const SLICE = 64 * 1024;

/** A server whose handler never answers "stall" requests and echoes the rest. */
function budgetServer(limit = LIMIT, maxFrameBytes = MiB) {
  const server = serve({
    hostname: HOST,
    port: 0,
    maxFrameBytes,
    memoryBudget: limit,
    memoryBudgetGrace: 100,
    handler: (payload, { signal }) => {
      if (payload[0] !== 0x53) return payload;
      return new Promise<Uint8Array>((resolve) =>
        signal.addEventListener("abort", () => resolve(payload), { once: true })
      );
    },
  });
  const cuts: unknown[] = [];
  const cut = Promise.withResolvers<void>();
  server.addEventListener("disconnect", (event) => {
    const reason = (event as CustomEvent).detail.reason;
    if (reason instanceof MemoryBudgetError) {
      cuts.push(reason);
      if (cuts.length >= 2) cut.resolve();
    }
  });
  return { server, cuts, twoCut: cut.promise };
}

/** Peers that write `bytes` each and never read; resolves when all writes ended. */
async function hostilePeers(
  server: Server<Uint8Array>,
  n: number,
  bytes: Uint8Array,
) {
  const conns = await Promise.all(
    Array.from(
      { length: n },
      () => Deno.connect({ hostname: HOST, port: server.port }),
    ),
  );
  const writes = conns.map(async (conn) => {
    let offset = 0;
    try {
      while (offset < bytes.length) {
        offset += await conn.write(bytes.subarray(offset));
      }
    } catch {
      // Cut off by the server.
    }
  });
  return {
    done: Promise.all(writes),
    close: () =>
      conns.forEach((conn) => {
        try {
          conn.close();
        } catch {
          // Already closed.
        }
      }),
  };
}

async function cleanClientServed(server: Server<Uint8Array>): Promise<void> {
  await using client = await dial(`${HOST}:${server.port}`, {
    heartbeat: false,
  });
  for (let i = 0; i < 20; i++) {
    const reply = await client.request(new Uint8Array([i]), { timeout: 5000 });
    assert.deepEqual([...reply], [i]);
  }
}

Deno.test("serve() memoryBudget pauses then cuts peers that stall inside large frames, and keeps serving a clean client", async () => {
  const { server, cuts, twoCut } = budgetServer();
  try {
    // Six peers, each 900 KiB into a 1 MiB request: 5.4 MiB against a
    // 2 MiB budget.
    const body = new Uint8Array(9 + 900 * 1024);
    body.set(frameHeader(FrameKind.Request, 1, MiB));
    const peers = await hostilePeers(server, 6, body);
    await withTimeout(twoCut, 10_000, "the budget's cuts");
    await cleanClientServed(server);
    const stats = server.stats();
    assert.ok(stats.budgetPauses >= 2, `pauses ${stats.budgetPauses}`);
    assert.ok(stats.budgetCuts >= 2, `cuts ${stats.budgetCuts}`);
    assert.equal(stats.budgetCuts, cuts.length);
    assert.ok(
      stats.bufferedPeak <= LIMIT + 6 * SLICE,
      `peak ${stats.bufferedPeak} over ${LIMIT} + 6 slices`,
    );
    assert.ok(
      stats.bufferedBytes <= LIMIT + 6 * SLICE,
      `now ${stats.bufferedBytes}`,
    );
    peers.close();
    await peers.done;
  } finally {
    await server.close();
  }
});

Deno.test("serve() memoryBudget counts requests held for a never-answering handler: pipelining peers are paused then cut, a clean client is served", async () => {
  // Decoding goes by slices of about 512 messages, so each peer holds at
  // most ~600 decoded requests (~80 KiB counted): a small budget is
  // needed for eight of them to exceed it.
  const limit = 256 * 1024;
  const perSession = 96 * 1024;
  const { server, cuts, twoCut } = budgetServer(limit, 64 * 1024);
  try {
    // Each peer pipelines 20,000 "stall" requests: decoded but never run,
    // they are held (or wait undecoded) while the handler is at its limit.
    const one = encodeFrame(FrameKind.Request, 1, new Uint8Array([0x53]));
    const burst = new Uint8Array(one.length * 20_000);
    for (let at = 0; at < burst.length; at += one.length) burst.set(one, at);
    const peers = await hostilePeers(server, 8, burst);
    await withTimeout(twoCut, 10_000, "the budget's cuts");
    await cleanClientServed(server);
    const stats = server.stats();
    assert.ok(stats.budgetCuts >= 2, `cuts ${stats.budgetCuts}`);
    assert.equal(stats.budgetCuts, cuts.length);
    assert.ok(
      stats.bufferedPeak <= limit + 8 * perSession,
      `peak ${stats.bufferedPeak}`,
    );
    peers.close();
    await peers.done;
  } finally {
    await server.close();
  }
});

Deno.test("serve() rejects a memoryBudget below maxFrameBytes or not a count, and a memoryBudgetGrace below 1 ms", () => {
  for (const memoryBudget of [MiB, -1, NaN, 8 * MiB + 0.5]) {
    assert.throws(
      () => serve({ port: 0, maxFrameBytes: 2 * MiB, memoryBudget }),
      RangeError,
      String(memoryBudget),
    );
  }
  assert.throws(() => serve({ port: 0, memoryBudgetGrace: 0 }), RangeError);
});

Deno.test("serve() memoryBudget 0 turns the budget off: nothing is counted", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    memoryBudget: 0,
    handler: (payload) => payload,
  });
  await cleanClientServed(server);
  const stats = server.stats();
  assert.equal(stats.bufferedPeak, 0);
  assert.equal(stats.budgetPauses, 0);
});
