/**
 * The read loop on its own, with stand-ins for the session's parts: where
 * a read is paused (handlers at their limit, then the memory budget) does
 * not change which messages are dispatched, or how often.
 */

import assert from "node:assert/strict";
import type { FrameDecoder } from "../framing/codec.ts";
import type { Dispatcher } from "../session/dispatcher.ts";
import type { HandlerGate } from "../session/handlers.ts";
import { readLoop, type ReadLoopSession } from "../session/read_loop.ts";
import type { SlabReader } from "../session/reader.ts";
import type { Counters } from "../session/types.ts";
import type { WriteQueue } from "../session/write_queue.ts";

/** Each byte decodes to one message: the byte itself. */
const byteDecoder: FrameDecoder<unknown> = {
  decode: (bytes: Uint8Array) => Array.from(bytes),
};

/**
 * Runs one read of `chunk` through the loop. `pauseGateAt` dispatches in
 * turn make the gate pause the reading once; the first budget report made
 * after a slice (nothing left undispatched) pauses it once more.
 */
async function runOneRead(chunk: Uint8Array, pauseGateAt: number) {
  const dispatched: unknown[] = [];
  let gatePaused = false;
  let budgetPaused = false;
  const ended = Promise.withResolvers<void>();
  const session: ReadLoopSession = {
    side: "server",
    remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 1 },
    liveness: { lastReadAt: 0, lastMessageAt: 0, missed: 0 },
    isClosed: () => false,
    ended: () => ended.resolve(),
    badInput: (error) => ended.reject(error),
    reading: () => {},
    buffered: (_partial, undispatched) => {
      if (undispatched > 0 || budgetPaused) return undefined;
      budgetPaused = true;
      return Promise.resolve();
    },
  };
  let reads = 0;
  const reader = {
    read: () => Promise.resolve(reads++ === 0 ? chunk : null),
  } as unknown as SlabReader;
  const dispatcher = {
    dispatch: (message: unknown) => dispatched.push(message),
  } as unknown as Dispatcher<unknown>;
  const gate = {
    readingPaused: () => {
      if (gatePaused || dispatched.length !== pauseGateAt) return false;
      gatePaused = true;
      return true;
    },
    slotFree: () => Promise.resolve(),
  } as unknown as HandlerGate<unknown>;
  const queue = { full: false } as unknown as WriteQueue;
  const counters: Counters = {
    messagesIn: 0,
    messagesOut: 0,
    bytesIn: 0,
    bytesOut: 0,
  } as Counters;
  await readLoop(
    session,
    reader,
    byteDecoder,
    dispatcher,
    gate,
    queue,
    counters,
    { messagesIn: 0, bytesIn: 0 },
  );
  await ended.promise;
  return { dispatched, gatePaused, budgetPaused, counters };
}

Deno.test("read loop: a read paused by the handler gate and then by the memory budget dispatches each message once, in order", async () => {
  // Three slices (4 KiB each at the start); the gate pauses inside the
  // first, the budget after it.
  const chunk = new Uint8Array(10_000).map((_, i) => i & 0xff);
  const { dispatched, gatePaused, budgetPaused, counters } = await runOneRead(
    chunk,
    100,
  );
  assert.ok(gatePaused && budgetPaused, "both pauses happened");
  assert.equal(dispatched.length, chunk.length);
  assert.deepEqual(dispatched, Array.from(chunk));
  assert.equal(counters.messagesIn, chunk.length);
});

Deno.test("read loop: pauses in the last slice, or none at all, change nothing either", async () => {
  const chunk = new Uint8Array(10_000).map((_, i) => (i * 7) & 0xff);
  for (const pauseAt of [9_000, -1]) {
    const { dispatched } = await runOneRead(chunk, pauseAt);
    assert.deepEqual(dispatched, Array.from(chunk), `pause at ${pauseAt}`);
  }
});
