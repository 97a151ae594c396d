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
  using _trickle = trickle(
    (byte) => conn.write(byte),
    20,
    () => bytes[sent++ % bytes.length]!,
  );
  const closed = conn.read(new Uint8Array(16)).catch(() => null);
  assert.equal(await withTimeout(closed, 5000, "the server's close"), null);
  assert.equal(server.stats().sessions, 0);
});

Deno.test("dial() heartbeat keeps a session whose server sends one large reply slowly: bytes arriving are alive", async () => {
  await using peer = rawPeer();
  const first = peer.accept();
  await using client = await dial(peer.target, {
    heartbeat: { interval: 100 },
  });
  const conn = await first;
  const reply = client.request(new Uint8Array([1]), { timeout: 20_000 });
  const request = await conn.read();
  const size = 256 * 1024;
  const header = new Uint8Array(9);
  new DataView(header.buffer).setUint32(0, size + 5);
  header[4] = FrameKind.Response;
  new DataView(header.buffer).setUint32(5, request!.id);
  await conn.conn.write(header);
  // 8 pieces 50 ms apart: the reply takes 4 heartbeat intervals to arrive.
  const piece = new Uint8Array(size / 8);
  for (let i = 0; i < 8; i++) {
    await conn.conn.write(piece);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal((await reply).length, size);
  conn.close();
});

Deno.test("serve() frameTimeout (on by default) closes a peer trickling one frame, without idleTimeout", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    frameTimeout: 200,
    handler: (payload) => payload,
  });
  using conn = await Deno.connect({ hostname: HOST, port: server.port });
  // A push announcing 1 KiB first, then its payload a byte at a time.
  await conn.write(new Uint8Array([0, 0, 4, 5, FrameKind.Push, 0, 0, 0, 0]));
  using _trickle = trickle((byte) => conn.write(byte), 20);
  const closed = conn.read(new Uint8Array(16)).catch(() => null);
  assert.equal(await withTimeout(closed, 5000, "the server's close"), null);
});

Deno.test("dial() frameTimeout leaves a server that trickles bytes of a reply that never completes", async () => {
  await using peer = rawPeer();
  const first = peer.accept();
  await using client = await dial(peer.target, {
    heartbeat: { interval: 10_000 },
    frameTimeout: 200,
    reconnect: { initial: 10, max: 10 },
  });
  const conn = await first;
  const second = peer.accept();
  // A response announcing 64 KiB, its payload sent a byte at a time.
  await conn.conn.write(
    new Uint8Array([0, 1, 0, 5, FrameKind.Response, 0, 0, 0, 9]),
  );
  using _trickle = trickle((byte) => conn.conn.write(byte), 10);
  await withTimeout(second, 5000, "the reconnect");
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

Deno.test("dial() drainTimeout counts only after the client's own requests: a slow request of a gracefully stopping server completes", async () => {
  const running = Promise.withResolvers<void>();
  const finish = Promise.withResolvers<void>();
  await using server = serve({
    hostname: HOST,
    port: 0,
    handler: async (payload) => {
      running.resolve();
      await finish.promise;
      return payload;
    },
  });
  await using client = await dial(`${HOST}:${server.port}`, {
    heartbeat: false,
    drainTimeout: 50,
  });
  const reply = client.request(new Uint8Array([7]), { timeout: 5000 });
  await running.promise;
  const report = server.shutdown({ timeout: 5000 });
  // The client has answered the drain; its request is still running well
  // past drainTimeout before the handler finishes.
  await new Promise((resolve) => setTimeout(resolve, 200));
  finish.resolve();
  assert.deepEqual([...await reply], [7]);
  assert.equal((await report).forced, 0);
});

/**
 * Writes one byte (`next()`, else 0) every `ms` until disposed: a peer that
 * keeps a frame arriving without ever finishing it.
 */
function trickle(
  write: (byte: Uint8Array) => Promise<unknown>,
  ms: number,
  next: () => number = () => 0,
): Disposable {
  const timer = setInterval(() => {
    write(new Uint8Array([next()])).catch(() => {});
  }, ms);
  return { [Symbol.dispose]: () => clearInterval(timer) };
}
