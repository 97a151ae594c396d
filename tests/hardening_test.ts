/**
 * Peers that misbehave on purpose: each case closes only what it must and
 * never leaves a client or server stuck.
 */

import assert from "node:assert/strict";
import { dial } from "../client/dial.ts";
import { serve } from "../server/serve.ts";
import { FrameKind } from "../protocol.ts";
import { HOST, pollUntil, rawPeer } from "./_loopback.ts";
import { withTimeout } from "./_process.ts";

Deno.test("dial() client leaves a server that asked to drain and stays connected after drainTimeout, and reconnects", async () => {
  await using peer = rawPeer();
  const first = peer.accept();
  await using client = await dial(peer.target, {
    heartbeat: false,
    drainTimeout: 100,
    reconnect: { initial: 10, max: 10 },
  });
  const conn = await first;
  const second = peer.accept();
  await conn.write({ kind: FrameKind.Drain, id: 0, payload: new Uint8Array() });
  // The client answers the drain, and after drainTimeout gives up on a peer
  // that never closes: its slot connects again.
  const answer = await conn.read();
  assert.equal(answer?.kind, FrameKind.Drain);
  await withTimeout(second, 5000, "the reconnect");
  assert.ok(client.stats().reconnects >= 1);
});

Deno.test("serve() idleTimeout counts whole messages: a peer trickling a frame one byte at a time is closed (slowloris)", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    idleTimeout: 200,
    handler: (payload) => payload,
  });
  using conn = await Deno.connect({ hostname: HOST, port: server.port });
  // A header announcing 1 KiB, sent a byte at a time, never finished.
  const bytes = [0, 0, 4, 5, FrameKind.Request, 0, 0, 0, 1];
  let sent = 0;
  const trickle = setInterval(() => {
    conn.write(new Uint8Array([bytes[sent++ % bytes.length]!])).catch(() => {});
  }, 20);
  try {
    const closed = conn.read(new Uint8Array(16)).catch(() => null);
    assert.equal(await withTimeout(closed, 5000, "the server's close"), null);
  } finally {
    clearInterval(trickle);
  }
  assert.equal(server.stats().sessions, 0);
});

Deno.test("dial() heartbeat counts whole messages: a server trickling bytes without answering pings is left (half-open)", async () => {
  await using peer = rawPeer();
  const first = peer.accept();
  await using client = await dial(peer.target, {
    heartbeat: { interval: 100 },
    reconnect: { initial: 10, max: 10 },
  });
  const conn = await first;
  const second = peer.accept();
  // A response announcing 64 KiB, its payload sent a byte at a time.
  await conn.conn.write(
    new Uint8Array([0, 1, 0, 5, FrameKind.Response, 0, 0, 0, 9]),
  );
  const trickle = setInterval(() => {
    conn.conn.write(new Uint8Array([0])).catch(() => {});
  }, 10);
  try {
    await withTimeout(second, 5000, "the reconnect");
  } finally {
    clearInterval(trickle);
  }
  assert.ok(client.stats().reconnects >= 1);
});

Deno.test("dial() takes a reply only from the endpoint its request went to: another endpoint's forged replies count as late", async () => {
  const release = Promise.withResolvers<void>();
  const running = Promise.withResolvers<void>();
  await using good = serve({
    hostname: HOST,
    port: 0,
    handler: async (payload) => {
      running.resolve();
      await release.promise;
      return payload;
    },
  });
  await using hostile = rawPeer();
  const accepted = hostile.accept();
  await using client = await dial(
    [`${HOST}:${good.port}`, hostile.target],
    { heartbeat: false },
  );
  const forger = await accepted;
  await pollUntil(() => client.stats().sessions.ready === 2, { interval: 5 });
  const onGood = client.sessions.find((s) =>
    (s.remoteAddr as Deno.NetAddr).port === good.port
  )!;
  const reply = client.request(new TextEncoder().encode("real"), {
    session: onGood,
  });
  await running.promise;
  // Ids are sequential: answer every small id with a forged reply.
  for (let id = 1; id <= 64; id++) {
    await forger.write({
      kind: FrameKind.Response,
      id,
      payload: new TextEncoder().encode("forged"),
    });
  }
  await pollUntil(() => client.stats().lateReplies >= 64, { interval: 5 });
  release.resolve();
  assert.equal(new TextDecoder().decode(await reply), "real");
  // A peer that would never answer the client's drain at disposal.
  forger.close();
});
