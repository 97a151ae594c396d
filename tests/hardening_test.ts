/**
 * Peers that misbehave on purpose: each case closes only what it must and
 * never leaves a client or server stuck.
 */

import assert from "node:assert/strict";
import { dial } from "../client/dial.ts";
import { serve } from "../server/serve.ts";
import { FrameKind } from "../protocol.ts";
import { ConnectionError } from "../errors.ts";
import { autoAnswer, HOST, pollUntil, rawPeer } from "./_loopback.ts";
import { withTimeout } from "./_process.ts";
import { nextEvents } from "./_raw_peer.ts";

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

Deno.test("serve() idleTimeout reaps an idle flood that holds every maxConnections slot: fresh clients connect again, a client with a heartbeat stays", async () => {
  const FLOOD = 500;
  await using server = serve({
    hostname: HOST,
    port: 0,
    // Long enough that the whole flood is in before any of it is reaped,
    // on a loaded machine too.
    idleTimeout: 2000,
    maxConnections: FLOOD + 1,
    // This test is about idleTimeout alone.
    evictIdleAfter: 0,
    handler: (payload) => payload,
  });
  const target = `${HOST}:${server.port}`;
  // Pings after 200 ms of silence: never idle for 2000 ms, and a busy
  // server has 200 ms to answer each ping before the client gives up.
  await using client = await dial(target, { heartbeat: { interval: 400 } });
  const accepted = nextEvents(server, "connect", FLOOD);
  const flood: Deno.Conn[] = [];
  try {
    for (let i = 0; i < FLOOD; i += 100) {
      flood.push(
        ...await Promise.all(
          Array.from(
            { length: 100 },
            () => Deno.connect({ hostname: HOST, port: server.port }),
          ),
        ),
      );
    }
    // Nothing is sent on them: a read ends only when the server closes.
    const reaped = flood.map((conn) =>
      conn.read(new Uint8Array(1)).catch(() => null)
    );
    await withTimeout(accepted, 5000, "the flood accepted");
    // Every slot is taken: a fresh client is turned away.
    await assert.rejects(
      dial(target, { connectTimeout: 500, reconnect: { maxAttempts: 1 } }),
      ConnectionError,
    );
    const ends = await withTimeout(
      Promise.all(reaped),
      5000,
      "the idle connections reaped",
    );
    assert.ok(ends.every((n) => n === null));
    await using fresh = await dial(target, { connectTimeout: 2000 });
    assert.deepEqual([...await fresh.request(new Uint8Array([1]))], [1]);
    assert.deepEqual([...await client.request(new Uint8Array([2]))], [2]);
    assert.equal(client.stats().reconnects, 0);
  } finally {
    for (const conn of flood) {
      try {
        conn.close();
      } catch {
        // Closed already.
      }
    }
  }
});

Deno.test("dial() of a good server and one trickling a reply: frameTimeout closes the trickling session, the slot reconnects, and idempotent requests meanwhile all succeed", async () => {
  const FRAME_TIMEOUT = 300;
  await using good = serve({
    hostname: HOST,
    port: 0,
    handler: (payload) => payload,
  });
  await using hostile = rawPeer();
  const first = hostile.accept();
  // The deadline runs from the session's last whole message (its connect
  // ping's answer), which comes after this.
  const dialed = performance.now();
  await using client = await dial([`${HOST}:${good.port}`, hostile.target], {
    frameTimeout: FRAME_TIMEOUT,
    reconnect: { initial: 10, max: 10 },
  });
  // Its connect ping answered: the hostile session is ready too.
  const conn = await withTimeout(first, 5000, "the hostile session");
  // The slot's next connection there gets a peer that answers.
  const second = hostile.accept();
  const answering = second.then(autoAnswer);
  const began = performance.now();
  // A response announcing 64 KiB, then a byte every 10 ms, never finished.
  await conn.conn.write(
    new Uint8Array([0, 1, 0, 5, FrameKind.Response, 0x7f, 0, 0, 0]),
  );
  using _trickle = trickle((byte) => conn.conn.write(byte), 10);
  // What the trickling server reads until the client closes it.
  const requestsRead = (async () => {
    let requests = 0;
    for (
      let frame = await conn.read();
      frame !== null;
      frame = await conn.read()
    ) {
      if (frame.kind === FrameKind.Request) requests++;
    }
    const now = performance.now();
    return { requests, after: now - began, afterDial: now - dialed };
  })();
  const loops = Array.from({ length: 4 }, async (_, loop) => {
    for (let i = 0; i < 50; i++) {
      const payload = new Uint8Array([loop, i]);
      const reply = await client.request(payload, {
        timeout: 5000,
        idempotent: true,
      });
      assert.deepEqual([...reply], [loop, i]);
    }
  });
  await withTimeout(Promise.all(loops), 10_000, "200 requests");
  const closed = await withTimeout(requestsRead, 5000, "the client's close");
  assert.ok(closed.requests > 0, "no request went to the trickling server");
  assert.ok(
    closed.afterDial >= FRAME_TIMEOUT && closed.after < FRAME_TIMEOUT + 2000,
    `closed ${closed.after} ms after the trickle began, ${closed.afterDial} ms after dial()`,
  );
  await withTimeout(second, 5000, "the reconnect");
  assert.ok(client.stats().reconnects >= 1);
  await client.close();
  await withTimeout(answering, 5000, "the reconnected session's end");
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

Deno.test("serve() at maxConnections evicts the idlest session for a new connection (evictIdleAfter, on by default): an idle flood cannot lock fresh clients out; with 0 they are refused", async () => {
  const FLOOD = 100;
  for (const evictIdleAfter of [1, 0]) {
    await using server = serve({
      hostname: HOST,
      port: 0,
      maxConnections: FLOOD,
      evictIdleAfter,
      handler: (payload) => payload,
    });
    const target = `${HOST}:${server.port}`;
    const accepted = nextEvents(server, "connect", FLOOD);
    const flood = await Promise.all(
      Array.from(
        { length: FLOOD },
        () => Deno.connect({ hostname: HOST, port: server.port }),
      ),
    );
    try {
      // Nothing is sent on them: what they read is the server's drain
      // frame, then the end once the server closes them.
      const ends = flood.map((conn) => readToEnd(conn));
      await withTimeout(accepted, 5000, "the flood accepted");
      const fresh = dial(target, {
        connectTimeout: 2000,
        reconnect: { maxAttempts: 1 },
      });
      if (evictIdleAfter === 0) {
        await assert.rejects(fresh, ConnectionError);
        assert.equal(server.stats().idleEvictions, 0);
        assert.ok(server.stats().refused >= 1);
        continue;
      }
      await using client = await fresh;
      assert.deepEqual([...await client.request(new Uint8Array([7]))], [7]);
      // The fresh client's session is the one that is not idle: it stays.
      assert.equal(server.stats().idleEvictions, 1);
      // The evicted one was drained (the default protocol's drain frame:
      // length 5, kind Drain), then closed since it never answered.
      const read = await withTimeout(
        Promise.race(ends),
        5000,
        "one idle connection evicted",
      );
      assert.equal(read[4], FrameKind.Drain);
      await pollUntil(() => server.sessions.length === FLOOD);
    } finally {
      for (const conn of flood) {
        try {
          conn.close();
        } catch {
          // Closed already.
        }
      }
    }
  }
});

/** Everything `conn` reads until the end (or an error). */
async function readToEnd(conn: Deno.Conn): Promise<number[]> {
  const got: number[] = [];
  const buffer = new Uint8Array(64);
  for (;;) {
    const n = await conn.read(buffer).catch(() => null);
    if (n === null) return got;
    got.push(...buffer.subarray(0, n));
  }
}
