/**
 * `Client.pipeline()`: one promise for a batch of requests, each outcome in
 * its slot in the batch's order, with id and fifo correlation, its timeout,
 * its signal, a session lost mid-batch, and the write queue's bound.
 */

import assert from "node:assert/strict";
import {
  type Client,
  ClosedError,
  ConnectionClosedError,
  dial,
  NoSessionError,
  type PipelineResult,
  RemoteError,
  TimeoutError,
} from "../mod.ts";
import { lengthPrefixed } from "../framing/mod.ts";
import {
  autoAnswer,
  dec,
  enc,
  EventLog,
  HOST,
  portOf,
  rawPeer,
  response,
  serveLoopback,
} from "./_loopback.ts";

const FAST_RECONNECT = { initial: 10, max: 50 } as const;

/** Makes `await using` close at once (raw peers do not answer a drain). */
function forceOnDispose<T>(client: Client<T>): Client<T> {
  Object.defineProperty(client, Symbol.asyncDispose, {
    value: () => client.close({ timeout: 0 }),
  });
  return client;
}

/** The replies as text, an error as its class name. */
function outcomes(results: PipelineResult<Uint8Array>[]): string[] {
  return results.map((r) =>
    r.ok ? dec(r.value) : (r.error as Error).constructor.name
  );
}

Deno.test("Client.pipeline() returns the replies in the batch's order when they arrive in another", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, { heartbeat: false }),
  );
  const conn = await accepted;
  const batch = client.pipeline(["a", "b", "c", "d"].map(enc));
  const requests = [];
  for (let i = 0; i < 4; i++) requests.push((await conn.read())!);
  assert.deepEqual(requests.map((f) => dec(f.payload)), ["a", "b", "c", "d"]);
  // Answered last first.
  await conn.write(
    ...requests.reverse().map((f) =>
      response(f.id, enc(`re ${dec(f.payload)}`))
    ),
  );
  assert.deepEqual(outcomes(await batch), ["re a", "re b", "re c", "re d"]);
  assert.equal(client.stats().pending, 0);
});

Deno.test("Client.pipeline() puts each request's error in its slot and the others' replies in theirs", async () => {
  await using server = serveLoopback({
    handler: (payload) => {
      if (dec(payload) === "bad") throw new Error("refused");
      return payload;
    },
  });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: false,
  });
  const results = await client.pipeline([
    enc("one"),
    enc("bad"),
    "not bytes" as unknown as Uint8Array,
    enc("four"),
  ]);
  assert.deepEqual(outcomes(results), [
    "one",
    "RemoteError",
    "TypeError",
    "four",
  ]);
  const remote = results[1]!;
  assert.ok(!remote.ok && remote.error instanceof RemoteError);
  assert.deepEqual(await client.pipeline([]), []);
});

Deno.test("Client.pipeline() fills the slots of requests not answered by their timeout with TimeoutError", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, { heartbeat: false }),
  );
  const conn = await accepted;
  // Answers "fast" only.
  const answering = autoAnswer(
    conn,
    (p) => dec(p) === "fast" ? p : undefined,
  );
  const results = await client.pipeline(
    [enc("fast"), enc("slow"), enc("fast")],
    { timeout: 50 },
  );
  assert.deepEqual(outcomes(results), ["fast", "TimeoutError", "fast"]);
  const slow = results[1]!;
  assert.ok(!slow.ok && slow.error instanceof TimeoutError);
  assert.equal(client.stats().timeouts, 1);
  await client.close({ timeout: 0 });
  await answering;
});

Deno.test("Client.pipeline() with a signal: an abort fills the unanswered slots with signal.reason; an aborted signal rejects the call", async () => {
  await using peer = rawPeer();
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, { heartbeat: false }),
  );
  const conn = await accepted;
  const controller = new AbortController();
  const batch = client.pipeline(["a", "b", "c"].map(enc), {
    signal: controller.signal,
  });
  const first = (await conn.read())!;
  await conn.read();
  await conn.read();
  await conn.write(response(first.id, enc("re a")));
  // The reply is in once a request behind it is answered.
  const probe = client.request(enc("probe"));
  const probeFrame = (await conn.read())!;
  await conn.write(response(probeFrame.id, probeFrame.payload));
  await probe;
  const reason = new Error("enough");
  controller.abort(reason);
  const results = await batch;
  const answered = results[0]!;
  assert.ok(answered.ok);
  assert.equal(dec(answered.value), "re a");
  for (const slot of results.slice(1)) {
    assert.ok(!slot.ok && slot.error === reason);
  }
  assert.equal(client.stats().pending, 0);
  await assert.rejects(
    client.pipeline([enc("late")], { signal: controller.signal }),
    (error) => error === reason,
  );
});

Deno.test('Client.pipeline() with correlation: "fifo" matches the replies in order', async () => {
  const codec = lengthPrefixed();
  await using peer = rawPeer(codec);
  const accepted = peer.accept();
  await using client = forceOnDispose(
    await dial(peer.target, codec, { correlation: "fifo" }),
  );
  const conn = await accepted;
  const batch = client.pipeline(["a", "b", "c"].map(enc));
  const got: string[] = [];
  for (let i = 0; i < 3; i++) got.push(dec((await conn.read())!));
  assert.deepEqual(got, ["a", "b", "c"]);
  await conn.write(enc("ra"), enc("rb"), enc("rc"));
  assert.deepEqual(outcomes(await batch), ["ra", "rb", "rc"]);
  assert.equal(client.stats().pending, 0);
});

Deno.test("Client.pipeline() when its session is lost mid-batch: the unanswered slots get ConnectionClosedError, or with idempotent the requests go again on the next session", async (t) => {
  for (const idempotent of [false, true]) {
    await t.step(`idempotent: ${idempotent}`, async () => {
      await using peer = rawPeer();
      let accepted = peer.accept();
      await using client = forceOnDispose(
        await dial(peer.target, {
          heartbeat: false,
          reconnect: FAST_RECONNECT,
        }),
      );
      const first = await accepted;
      accepted = peer.accept();
      const batch = client.pipeline(["a", "b", "c", "d"].map(enc), {
        idempotent,
      });
      const requests = [];
      for (let i = 0; i < 4; i++) requests.push((await first.read())!);
      await first.write(
        ...requests.slice(0, 2).map((f) => response(f.id, f.payload)),
      );
      // Both replies are in once a request behind them is answered.
      const probe = client.request(enc("probe"));
      const probeFrame = (await first.read())!;
      await first.write(response(probeFrame.id, probeFrame.payload));
      await probe;
      first.close();
      if (!idempotent) {
        assert.deepEqual(outcomes(await batch), [
          "a",
          "b",
          "ConnectionClosedError",
          "ConnectionClosedError",
        ]);
        const lost = (await batch)[2]!;
        assert.ok(!lost.ok && lost.error instanceof ConnectionClosedError);
        // The client reconnects meanwhile.
        (await accepted).close();
        return;
      }
      const second = await accepted;
      const answering = autoAnswer(second);
      assert.deepEqual(outcomes(await batch), ["a", "b", "c", "d"]);
      await client.close({ timeout: 0 });
      await answering;
    });
  }
});

Deno.test("Client.pipeline() queues at most outboundBuffer messages at once; the rest of the batch waits for room, in order", async () => {
  await using server = serveLoopback({ handler: (p) => p });
  await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
    heartbeat: false,
    outboundBuffer: 3,
  });
  const messages = Array.from({ length: 20 }, (_, i) => enc(`m${i}`));
  const batch = client.pipeline(messages);
  assert.equal(client.sessions[0]!.stats().queued, 3);
  // Encoded before pipeline() returned: the caller may reuse its buffers.
  for (const message of messages) message.fill(0);
  assert.deepEqual(
    outcomes(await batch),
    messages.map((_, i) => `m${i}`),
  );
  assert.equal(client.stats().pending, 0);
});

Deno.test("Client.pipeline() waits for a session as a whole; without one it fills the slots with NoSessionError; a closed client rejects with ClosedError", async () => {
  await using peer = rawPeer();
  let accepted = peer.accept();
  const client = await dial(peer.target, {
    heartbeat: false,
    reconnect: FAST_RECONNECT,
  });
  using log = new EventLog(client, ["reconnecting"]);
  (await accepted).close();
  accepted = peer.accept();
  await log.next("reconnecting");
  const refused = await client.pipeline([enc("x"), enc("y")], {
    waitForSession: false,
  });
  assert.deepEqual(outcomes(refused), ["NoSessionError", "NoSessionError"]);
  const none = refused[0]!;
  assert.ok(!none.ok && none.error instanceof NoSessionError);
  const messages = [enc("later"), enc("still")];
  const batch = client.pipeline(messages, { timeout: 5000 });
  messages[0]!.fill(0);
  const answering = autoAnswer(await accepted);
  assert.deepEqual(outcomes(await batch), ["later", "still"]);
  await client.close({ timeout: 0 });
  await answering;
  await assert.rejects(client.pipeline([enc("z")]), ClosedError);
});
