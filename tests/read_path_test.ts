/**
 * The session's read path: small idle buffer, bursts larger than it, frames
 * that exactly fill it — every reply matched, none waiting on a timer.
 */

import assert from "node:assert/strict";
import { dial, serve } from "../mod.ts";

const HOST = "127.0.0.1";

Deno.test("Session read path answers a frame that exactly fills the 1 KiB idle buffer, after idle", async () => {
  await using server = serve({ hostname: HOST, port: 0 }, (payload) => payload);
  await using client = await dial({ hostname: HOST, port: server.port });
  // 9-byte header + 1015 bytes = 1024 bytes: one read fills the idle buffer
  // exactly and nothing follows it.
  const payload = new Uint8Array(1015).map((_, i) => i % 251);
  for (let i = 0; i < 20; i++) {
    const reply = await client.request(payload, { timeout: 2000 });
    assert.deepEqual(reply, payload);
  }
});

Deno.test("Session read path matches every reply of bursts larger than the idle buffer", async () => {
  await using server = serve({ hostname: HOST, port: 0 }, (payload) => payload);
  await using client = await dial({ hostname: HOST, port: server.port });
  for (const size of [1, 100, 1015, 1016, 3000, 70_000]) {
    const payloads = Array.from(
      { length: 64 },
      (_, i) => new Uint8Array(size).fill(i + 1),
    );
    const replies = await Promise.all(
      payloads.map((p) => client.request(p, { timeout: 5000 })),
    );
    replies.forEach((reply, i) => assert.deepEqual(reply, payloads[i]));
  }
  assert.equal(client.stats().pending, 0);
});
