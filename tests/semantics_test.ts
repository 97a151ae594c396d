/**
 * The semantics table's newer promises: in-order serving with fifo
 * correlation, request vs push in the handler, and the transparent retry of
 * requests the peer never processed.
 */

import assert from "node:assert/strict";
import { dial } from "../client/dial.ts";
import { ConnectionClosedError } from "../errors.ts";
import { delimited } from "../framing/delimited.ts";
import { serve } from "../server/serve.ts";
import type { HandlerContext } from "../session/types.ts";
import {
  dec,
  enc,
  HOST,
  pollUntil,
  rawPeer,
  serveLoopback,
} from "./_loopback.ts";
import { FrameKind } from "../protocol.ts";
import { readExactly } from "./_bytes.ts";
import { latch } from "./_raw_peer.ts";

const lines = () => delimited({ delimiter: "\n" });

/** A handler that parks "slow" until released, and answers the rest at once. */
function slowFirst() {
  const release = Promise.withResolvers<void>();
  const answered = latch(2);
  return {
    release: release.resolve,
    answered: answered.promise,
    handler: async (line: Uint8Array) => {
      const text = dec(line);
      if (text === "slow") await release.promise;
      if (text === "boom") {
        answered.count();
        throw new Error("boom");
      }
      if (text !== "slow") answered.count();
      return enc(`${text}!`);
    },
  };
}

Deno.test("serve() with fifo correlation writes replies in request order, whatever order handlers finish in", async () => {
  const { release, answered, handler } = slowFirst();
  await using server = serve({
    hostname: HOST,
    port: 0,
    codec: lines(),
    correlation: "fifo",
    handler,
    onHandlerError: (error) => enc(`ERR ${(error as Error).message}`),
  });
  await using client = await dial(`${HOST}:${server.port}`, lines(), {
    correlation: "fifo",
    heartbeat: false,
  });
  const replies = ["slow", "boom", "fast"].map((line) =>
    client.request(enc(line))
  );
  // Both later handlers have finished before the first one is let go.
  await answered;
  release();
  const got = (await Promise.all(replies)).map(dec);
  assert.deepEqual(got, ["slow!", "ERR boom", "fast!"]);
});

Deno.test("serve() with a codec that has no correlationId keeps request order by default (line protocol)", async () => {
  const { release, answered, handler } = slowFirst();
  await using server = serve({
    hostname: HOST,
    port: 0,
    codec: lines(),
    handler,
    onHandlerError: () => enc("ERR"),
  });
  using conn = await Deno.connect({ hostname: HOST, port: server.port });
  await conn.write(enc("slow\nboom\nfast\n"));
  await answered;
  release();
  const expected = "slow!\nERR\nfast!\n";
  const got = dec(await readExactly(conn, expected.length));
  assert.equal(got, expected);
});

Deno.test("serve() with fifo correlation keeps the place of a handler that throws at once or answers nothing", async () => {
  const release = Promise.withResolvers<void>();
  const started = Promise.withResolvers<void>();
  await using server = serve({
    hostname: HOST,
    port: 0,
    codec: lines(),
    correlation: "fifo",
    handler: (line) => {
      const text = dec(line);
      if (text === "throw") throw new Error("at once");
      if (text === "quiet") return undefined;
      if (text === "slow") {
        started.resolve();
        return release.promise.then(() => enc("slow!"));
      }
      return enc(`${text}!`);
    },
    onHandlerError: (error) => enc(`ERR ${(error as Error).message}`),
  });
  using conn = await Deno.connect({ hostname: HOST, port: server.port });
  await conn.write(enc("slow\nthrow\nquiet\nfast\n"));
  await started.promise;
  release.resolve();
  const expected = "slow!\nERR at once\nfast!\n";
  assert.equal(dec(await readExactly(conn, expected.length)), expected);
});

Deno.test("serve() with fifo correlation holds at most maxConcurrentHandlers answers waiting for their turn", async () => {
  const release = Promise.withResolvers<void>();
  let running = 0;
  let peak = 0;
  const started = latch(3);
  await using server = serve({
    hostname: HOST,
    port: 0,
    codec: lines(),
    correlation: "fifo",
    maxConcurrentHandlers: 3,
    handler: async (line) => {
      running++;
      peak = Math.max(peak, running);
      started.count();
      if (dec(line) === "0") await release.promise;
      running--;
      return enc(dec(line));
    },
  });
  await using client = await dial(`${HOST}:${server.port}`, lines(), {
    correlation: "fifo",
    heartbeat: false,
  });
  const replies = Array.from(
    { length: 10 },
    (_, i) => client.request(enc(`${i}`)),
  );
  await started.promise;
  // "1" and "2" finished, but their answers wait for "0": no fourth handler
  // may start meanwhile.
  const stats = server.stats();
  assert.equal(peak <= 3, true);
  assert.equal(stats.messagesIn, 10);
  release.resolve();
  assert.deepEqual(
    (await Promise.all(replies)).map(dec),
    Array.from({ length: 10 }, (_, i) => String(i)),
  );
  assert.equal(peak <= 3, true);
});

Deno.test("Handler context tells a request from a push, and a value returned for a push is not sent back", async () => {
  const seen: { kind: string; expectsReply: boolean }[] = [];
  await using server = serveLoopback({
    handler: (payload, context) => {
      seen.push({ kind: context.kind, expectsReply: context.expectsReply });
      return payload;
    },
  });
  const pushes: Uint8Array[] = [];
  await using client = await dial(`${HOST}:${server.port}`, {
    handler: (push) => void pushes.push(push),
  });
  await client.send(enc("fire and forget"));
  // Replies on one session keep order: had the push been echoed, it would
  // have arrived before this reply.
  assert.equal(dec(await client.request(enc("ask"))), "ask");
  assert.deepEqual(seen, [
    { kind: "push", expectsReply: false },
    { kind: "request", expectsReply: true },
  ]);
  assert.deepEqual(pushes, []);
});

Deno.test("Handler context: custom-codec messages are 'message' and a returned value is their reply", async () => {
  const kinds: HandlerContext<Uint8Array>["kind"][] = [];
  await using server = serve({
    hostname: HOST,
    port: 0,
    codec: lines(),
    handler: (line, { kind, expectsReply }) => {
      kinds.push(kind);
      assert.equal(expectsReply, true);
      return line;
    },
  });
  await using client = await dial(`${HOST}:${server.port}`, lines(), {
    correlation: "fifo",
    heartbeat: false,
  });
  assert.equal(dec(await client.request(enc("x"))), "x");
  assert.deepEqual(kinds, ["message"]);
});

Deno.test("Server handler context carries the server: a handler broadcasts without a self-reference", async () => {
  await using server = serveLoopback({
    handler: (payload, { server }) => {
      server.broadcast(payload);
      return enc("ok");
    },
  });
  const pushed = Promise.withResolvers<Uint8Array>();
  await using client = await dial(`${HOST}:${server.port}`, {
    handler: (push) => pushed.resolve(push),
  });
  assert.equal(dec(await client.request(enc("hi all"))), "ok");
  assert.equal(dec(await pushed.promise), "hi all");
});

Deno.test("Client.request() is retried on another session when a closing server refuses it unprocessed", async () => {
  const release = Promise.withResolvers<void>();
  const firstRunning = Promise.withResolvers<void>();
  let ranOnLeaving = 0;
  const leaving = serveLoopback({
    maxConcurrentHandlers: 1,
    handler: async (payload) => {
      ranOnLeaving++;
      firstRunning.resolve();
      await release.promise;
      return payload;
    },
  });
  await using staying = serveLoopback({ handler: (payload) => payload });
  await using client = await dial(
    [`${HOST}:${leaving.port}`, `${HOST}:${staying.port}`],
    { requestTimeout: 10_000 },
  );
  await readyCount(client, 2);
  // Round robin over the two sessions: six go to each server.
  const requests = Array.from(
    { length: 12 },
    (_, i) =>
      client.request(enc(`r${i}`)).then(
        (reply) => ({ ok: dec(reply) }),
        (error) => ({ error }),
      ),
  );
  await firstRunning.promise;
  const report = await leaving.shutdown({ timeout: 100 });
  release.resolve();
  const results = await Promise.all(requests);
  // The one that was running may have had effects: it fails. The five the
  // server held and never started were refused, and ran on the other server.
  const failed = results.filter((r) => "error" in r) as { error: unknown }[];
  assert.equal(failed.length, 1);
  assert.ok(failed[0]!.error instanceof ConnectionClosedError);
  assert.equal(results.filter((r) => "ok" in r).length, 11);
  assert.equal(ranOnLeaving, 1);
  assert.equal(report.forced, 1);
  assert.equal(report.handlersCut, 1);
  assert.equal(report.refused, 5);
  assert.equal(client.stats().retried, 5);
});

Deno.test("Client.request({ idempotent: true }) is retried even when it may have run", async () => {
  const release = Promise.withResolvers<void>();
  const running = Promise.withResolvers<void>();
  const leaving = serveLoopback({
    handler: async (payload) => {
      running.resolve();
      await release.promise;
      return payload;
    },
  });
  await using staying = serveLoopback({ handler: (payload) => payload });
  await using client = await dial(
    [`${HOST}:${leaving.port}`, `${HOST}:${staying.port}`],
  );
  await readyCount(client, 2);
  // One to each server.
  const replies = ["a", "b"].map((text) =>
    client.request(enc(text), { idempotent: true })
  );
  await running.promise;
  const report = await leaving.shutdown({ timeout: 50 });
  release.resolve();
  assert.deepEqual((await Promise.all(replies)).map(dec), ["a", "b"]);
  assert.equal(report.handlersCut, 1);
  assert.equal(client.stats().retried, 1);
});

Deno.test("Client.request() still queued when its session dies is retried on another session", async () => {
  // A peer that answers the connect ping, then reads nothing: the client's
  // writes fill the socket buffers and the rest wait in its queue.
  await using pair = await stuckAndStaying((payload) => payload);
  const { conn, client } = pair;
  // Round robin: 64 to each; 16 MiB cannot all fit in the loopback socket
  // buffers of the peer that does not read.
  const payload = new Uint8Array(256 * 1024);
  const results = Array.from({ length: 128 }, (_, i) => {
    payload[0] = i;
    return client.request(payload).then(
      (reply) => ({ ok: reply[0]! }),
      (error) => ({ error }),
    );
  });
  conn.close();
  const settled = await Promise.all(results);
  const ok = settled.filter((r) => "ok" in r) as { ok: number }[];
  const failed = settled.filter((r) => "error" in r) as { error: unknown }[];
  for (const f of failed) assert.ok(f.error instanceof ConnectionClosedError);
  const retried = client.stats().retried;
  assert.ok(retried > 0, "some requests were still queued and retried");
  assert.equal(ok.length, 64 + retried);
  // Each request got its own reply (its first byte is its index).
  assert.equal(new Set(ok.map((r) => r.ok)).size, ok.length);
});

/**
 * A client of two endpoints, both sessions ready: a raw peer that answers
 * the connect ping and then reads nothing unless told (`conn`), and a
 * server with `handler`. Disposing closes the client, then the server,
 * then the peer.
 */
async function stuckAndStaying(
  handler: (payload: Uint8Array) => Uint8Array,
) {
  const stuck = rawPeer();
  const staying = serveLoopback({ handler });
  const accepted = stuck.accept();
  const clientPromise = dial(
    [`${HOST}:${stuck.port}`, `${HOST}:${staying.port}`],
    { requestTimeout: 10_000, heartbeat: false },
  );
  // accept() answers the connect ping.
  const conn = await accepted;
  const client = await clientPromise;
  await readyCount(client, 2);
  return {
    conn,
    client,
    async [Symbol.asyncDispose]() {
      await client[Symbol.asyncDispose]();
      await staying[Symbol.asyncDispose]();
      await stuck[Symbol.asyncDispose]();
    },
  };
}

async function readyCount(
  client: { stats(): { sessions: Record<string, number> } } & EventTarget,
  n: number,
): Promise<void> {
  while ((client.stats().sessions.ready ?? 0) < n) {
    await new Promise<void>((resolve) =>
      client.addEventListener("ready", () => resolve(), { once: true })
    );
  }
}

Deno.test("Client.request() still queued when its peer only half-closes is not sent elsewhere too (no double delivery)", async () => {
  const ranOnStaying = new Set<number>();
  await using pair = await stuckAndStaying((payload) => {
    ranOnStaying.add(payload[0]! * 256 + payload[1]!);
    return payload.subarray(0, 2);
  });
  const { conn, client } = pair;
  const payload = new Uint8Array(256 * 1024);
  const results = Array.from({ length: 128 }, (_, i) => {
    payload[0] = i >> 8;
    payload[1] = i & 255;
    return client.request(payload).then(() => "ok", (error) => error);
  });
  // The peer stops sending but still reads, and would run, all it gets.
  await conn.conn.closeWrite();
  const ranOnStuck = new Set<number>();
  await conn.drainAll((frame) => {
    if (frame.kind === FrameKind.Request) {
      ranOnStuck.add(frame.payload[0]! * 256 + frame.payload[1]!);
    }
  });
  await Promise.all(results);
  const twice = [...ranOnStuck].filter((i) => ranOnStaying.has(i));
  assert.deepEqual(twice, []);
});

Deno.test("Client.request() retried and waiting for a session leaves no waiter behind once it is aborted", async () => {
  await using stuck = rawPeer();
  const accepted = stuck.accept();
  const clientPromise = dial(`${HOST}:${stuck.port}`, {
    requestTimeout: 60_000,
    heartbeat: false,
    reconnect: { initial: 30_000, max: 60_000 },
  });
  const conn = await accepted;
  await using client = await clientPromise;
  const controller = new AbortController();
  const payload = new Uint8Array(256 * 1024);
  const results = Array.from(
    { length: 64 },
    () =>
      client.request(payload, { signal: controller.signal }).catch((e) => e),
  );
  conn.close();
  // Requests that never left wait for a session to be sent again.
  await pollUntil(() => client.stats().waiting > 0);
  controller.abort(new Error("give up"));
  await Promise.all(results);
  assert.equal(client.stats().waiting, 0);
  await client.close({ timeout: 0 });
});
