/**
 * Option validation and defaults shared by clients and servers: every
 * timeout and limit is checked at the call that receives it, with the same
 * rules and the same defaults on both sides.
 */

import assert from "node:assert/strict";
import {
  type Client,
  dial,
  type DialOptions,
  type ServeOptions,
  type Server,
  TimeoutError,
} from "../mod.ts";
import { HOST, serveLoopback } from "./_loopback.ts";

const BAD_VALUES = [-1, -0.5, Number.NaN, -Infinity];

/** Options both sides take, with a value path to set. */
const SHARED: string[] = [
  "requestTimeout",
  "idleTimeout",
  "frameTimeout",
  "writeTimeout",
  "maxConcurrentHandlers",
  "outboundBuffer",
  "maxWriteBytes",
  "maxFrameBytes",
];
const CLIENT_ONLY = [
  "connectTimeout",
  "sessions",
  "maxWaitingRequests",
  "heartbeat.interval",
  "heartbeat.maxMissed",
];
const SERVER_ONLY = ["maxConnections", "proxyProtocol.timeout"];

function withOption(name: string, value: unknown): Record<string, unknown> {
  const [head, tail] = name.split(".") as [string, string | undefined];
  return tail === undefined ? { [head]: value } : { [head]: { [tail]: value } };
}

/** serve() must throw; a server it started anyway is closed before failing. */
function assertServeThrows(options: ServeOptions<Uint8Array>): void {
  let server: Server<Uint8Array> | undefined;
  try {
    server = serveLoopback(options);
  } catch (error) {
    assert.ok(error instanceof RangeError, `got ${error}`);
    return;
  }
  server.close();
  assert.fail(`serve() accepted ${JSON.stringify(options)}`);
}

/** dial() must reject; a client it made anyway is closed before failing. */
async function assertDialRejects(
  port: number,
  options: DialOptions<Uint8Array>,
): Promise<void> {
  let client: Client<Uint8Array>;
  try {
    client = await dial({ hostname: HOST, port }, options);
  } catch (error) {
    assert.ok(error instanceof RangeError, `got ${error}`);
    return;
  }
  await client.close({ timeout: 0 });
  assert.fail(`dial() accepted ${String(Object.values(options)[0])}`);
}

Deno.test("dial() and serve() reject a negative or NaN option with RangeError before they open a socket", async (t) => {
  await using server = serveLoopback({ handler: (payload) => payload });
  for (const name of [...SHARED, ...CLIENT_ONLY]) {
    for (const value of BAD_VALUES) {
      await t.step(
        `dial ${name}: ${value}`,
        () => assertDialRejects(server.port, withOption(name, value)),
      );
    }
  }
  for (const name of [...SHARED, ...SERVER_ONLY]) {
    for (const value of BAD_VALUES) {
      await t.step(
        `serve ${name}: ${value}`,
        () => assertServeThrows(withOption(name, value)),
      );
    }
  }
  await t.step("counts must be integers", async () => {
    await assertDialRejects(server.port, { sessions: 1.5 });
    assertServeThrows({ maxConnections: 2.5 });
    assertServeThrows({ maxConcurrentHandlers: 0 });
  });
});

Deno.test("dial() and serve() reject a maxWriteBytes that cannot hold one largest frame of the default protocol", async () => {
  await using server = serveLoopback({ handler: (payload) => payload });
  // maxFrameBytes + the 9-byte header is the least that works.
  for (
    const options of [{ maxWriteBytes: 1024 * 1024 }, {
      maxWriteBytes: 4096 + 8,
      maxFrameBytes: 4096,
    }]
  ) {
    assertServeThrows(options);
    await assertDialRejects(server.port, options);
  }
  assert.throws(
    () => serveLoopback({ maxWriteBytes: 1000, maxFrameBytes: 4096 }),
    /maxWriteBytes 1000: it must hold one largest frame, maxFrameBytes \(4096\) \+ 9 header bytes = 4105/,
  );
  await using exact = serveLoopback({
    maxWriteBytes: 4096 + 9,
    maxFrameBytes: 4096,
    handler: (payload) => payload,
  });
  await using client = await dial({ hostname: HOST, port: exact.port }, {
    maxWriteBytes: 4096 + 9,
    maxFrameBytes: 4096,
  });
  const largest = new Uint8Array(4096).fill(7);
  assert.deepEqual(await client.request(largest), largest);
});

Deno.test("dial() and serve() with a custom codec take any maxWriteBytes: maxFrameBytes belongs to the default protocol", async () => {
  const codec = {
    decoder: () => ({ decode: (chunk: Uint8Array) => [chunk], end() {} }),
    encode: (message: Uint8Array) => message,
  };
  await using server = serveLoopback({
    codec,
    correlation: "fifo",
    maxWriteBytes: 1024,
  });
  assert.equal(server.settings.maxWriteBytes, 1024);
});

Deno.test("Client.request(), Session.request(), Client.send(), Client.close() and Server.shutdown() reject a negative or NaN timeout with RangeError", async (t) => {
  await using server = serveLoopback({ handler: (payload) => payload });
  await using client = await dial({ hostname: HOST, port: server.port });
  const session = client.sessions[0]!;
  const payload = new Uint8Array([1]);
  for (const timeout of BAD_VALUES) {
    await t.step(`timeout ${timeout}`, async () => {
      await assert.rejects(client.request(payload, { timeout }), RangeError);
      await assert.rejects(
        client.request(payload, { timeout, session }),
        RangeError,
      );
      await assert.rejects(session.request(payload, { timeout }), RangeError);
      await assert.rejects(client.send(payload, { timeout }), RangeError);
      await assert.rejects(client.close({ timeout }), RangeError);
      await assert.rejects(server.shutdown({ timeout }), RangeError);
    });
  }
  // The rejected calls changed nothing: both ends still work.
  assert.equal(client.isClosed, false);
  assert.equal(server.isClosed, false);
  assert.deepEqual([...await client.request(payload)], [1]);
});

Deno.test("Client.settings and Server.settings report the same defaults for the shared options", async () => {
  await using server = serveLoopback({ handler: (payload) => payload });
  await using client = await dial({ hostname: HOST, port: server.port });
  const expected = {
    correlation: "id",
    requestTimeout: 5000,
    idleTimeout: 0,
    frameTimeout: 60_000,
    writeTimeout: 30_000,
    maxConcurrentHandlers: 64,
    outboundBuffer: 1024,
    maxWriteBytes: 64 * 1024 * 1024,
    maxFrameBytes: 8 * 1024 * 1024,
  };
  assert.deepEqual({ ...client.settings }, expected);
  assert.deepEqual({ ...server.settings }, expected);
});

Deno.test("Client.settings and Server.settings echo the same values for the same options, Infinity reported as 0", async () => {
  const shared = {
    requestTimeout: Infinity,
    idleTimeout: 60_000,
    frameTimeout: Infinity,
    writeTimeout: 0,
    maxConcurrentHandlers: 8,
    outboundBuffer: 10,
    maxWriteBytes: 1024 * 1024,
    maxFrameBytes: 4096,
  };
  await using server = serveLoopback({
    ...shared,
    handler: (payload) => payload,
  });
  await using client = await dial({ hostname: HOST, port: server.port }, {
    ...shared,
  });
  assert.deepEqual(client.settings, server.settings);
  assert.equal(client.settings.requestTimeout, 0);
  assert.equal(client.settings.maxFrameBytes, 4096);
});

Deno.test("Client.request() with timeout 0 or Infinity never times out", async () => {
  const release = Promise.withResolvers<void>();
  await using server = serveLoopback({
    handler: async (payload) => {
      if (payload[0] === 0) return payload;
      await release.promise;
      return payload;
    },
  });
  await using client = await dial({ hostname: HOST, port: server.port });
  const none = client.request(new Uint8Array([1]), { timeout: 0 });
  const infinite = client.request(new Uint8Array([2]), { timeout: Infinity });
  // A request with a short deadline, held by the same handler, times out
  // first: by then a 0 deadline would have fired too.
  await assert.rejects(
    client.request(new Uint8Array([3]), { timeout: 20 }),
    TimeoutError,
  );
  release.resolve();
  assert.deepEqual([...await none], [1]);
  assert.deepEqual([...await infinite], [2]);
});

Deno.test("dial() with requestTimeout 0 makes requests without a deadline", async () => {
  const release = Promise.withResolvers<void>();
  await using server = serveLoopback({
    handler: async (payload) => {
      await release.promise;
      return payload;
    },
  });
  await using client = await dial({ hostname: HOST, port: server.port }, {
    requestTimeout: 0,
  });
  const none = client.request(new Uint8Array([1]));
  await assert.rejects(
    client.request(new Uint8Array([2]), { timeout: 20 }),
    TimeoutError,
  );
  release.resolve();
  assert.deepEqual([...await none], [1]);
});
