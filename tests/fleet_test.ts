/**
 * The client's fleet over real loopback sockets: endpoints from discovery
 * (an async iterable, a polled function, DNS through an injected resolver
 * and through the system resolver for `localhost`), added and drained under
 * load, balancing by the power of two choices, and outlier ejection.
 *
 * @module
 */

import assert from "node:assert/strict";
import { dial } from "../client/dial.ts";
import { dnsEndpoints, type EndpointList } from "../client/discovery.ts";
import { pickOfTwo } from "../client/balance.ts";
import type { Client } from "../client/client.ts";
import type { ClientEventDetail } from "../client/types.ts";
import type { Server } from "../server/server.ts";
import { delay } from "../backoff.ts";
import { DiscoveryError } from "../errors.ts";
import {
  closedPort,
  dec,
  enc,
  EventLog,
  HOST,
  pollUntil,
  serveLoopback,
} from "./_loopback.ts";
import { prng, runLoad, violations } from "./_load.ts";

/** An async iterable of endpoint lists that a test feeds by hand. */
class Feed implements AsyncIterable<EndpointList> {
  readonly #lists: EndpointList[] = [];
  #wake: (() => void) | undefined;
  returned = false;

  push(list: EndpointList): void {
    this.#lists.push(list);
    this.#wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<EndpointList> {
    try {
      for (;;) {
        while (this.#lists.length > 0) yield this.#lists.shift()!;
        const { promise, resolve } = Promise.withResolvers<void>();
        this.#wake = resolve;
        await promise;
      }
    } finally {
      this.returned = true;
    }
  }
}

/** Echo servers that count what each served, by port. */
function echoServers(n: number, handlerMs = 0): {
  servers: Server<Uint8Array>[];
  served: Map<number, number>;
} {
  const served = new Map<number, number>();
  const servers = Array.from({ length: n }, () => {
    const server: Server<Uint8Array> = serveLoopback({
      handler: async (payload) => {
        served.set(server.port, (served.get(server.port) ?? 0) + 1);
        if (handlerMs > 0) await delay(handlerMs);
        return payload;
      },
    });
    return server;
  });
  return { servers, served };
}

function at(server: Server<Uint8Array>): string {
  return `${HOST}:${server.port}`;
}

function events(client: Client<Uint8Array>): EventLog<ClientEventDetail> {
  return new EventLog<ClientEventDetail>(client, [
    "ready",
    "reconnecting",
    "disconnect",
    "error",
    "endpoint-added",
    "endpoint-removed",
    "endpoint-ejected",
    "endpoint-returned",
  ]);
}

async function closeAll(servers: Server<Uint8Array>[]): Promise<void> {
  await Promise.all(servers.map((s) => s.shutdown({ timeout: 1000 })));
}

Deno.test("pickOfTwo() prefers the less loaded of two and spreads over all", () => {
  const random = prng(7);
  const idle = Array.from({ length: 4 }, () => ({ pendingCount: 0 }));
  const picks = new Map<object, number>();
  for (let i = 0; i < 4000; i++) {
    const s = pickOfTwo(idle, random);
    picks.set(s, (picks.get(s) ?? 0) + 1);
  }
  assert.equal(picks.size, 4);
  for (const n of picks.values()) assert.ok(n > 800 && n < 1200, `${n}`);
  // One busy member loses every draw it is in: of two distinct members one
  // is always idle.
  const busy = { pendingCount: 9 };
  const mixed = [busy, { pendingCount: 0 }, { pendingCount: 0 }];
  for (let i = 0; i < 1000; i++) {
    assert.notEqual(pickOfTwo(mixed, random), busy);
  }
  // Two members: always the less loaded one.
  const pair = [{ pendingCount: 3 }, { pendingCount: 1 }];
  for (let i = 0; i < 100; i++) assert.equal(pickOfTwo(pair, random), pair[1]);
});

Deno.test('dial() with routing "p2c" keeps new requests off the busy endpoint', async () => {
  const release = Promise.withResolvers<void>();
  const held = Promise.withResolvers<number>();
  const served = new Map<number, number>();
  const servers = Array.from({ length: 3 }, (_, i) => {
    const server: Server<Uint8Array> = serveLoopback({
      handler: async (payload) => {
        if (dec(payload) === "hold") {
          held.resolve(server.port);
          await release.promise;
        } else served.set(server.port, (served.get(server.port) ?? 0) + 1);
        return payload;
      },
    });
    return [server, i] as const;
  }).map(([s]) => s);
  try {
    await using client = await dial(servers.map(at), { routing: "p2c" });
    using log = events(client);
    await log.until(() => client.stats().sessions.ready === 3);
    const hold = client.request(enc("hold"));
    const busy = await held.promise;
    assert.equal(
      client.stats().endpoints.find((e) => e.endpoint === `${HOST}:${busy}`)!
        .pending,
      1,
    );
    // Sequential requests: the others have 0 pending, the busy one >= 1;
    // a draw that contains the busy one picks the other member.
    for (let i = 0; i < 60; i++) await client.request(enc("quick"));
    assert.equal(
      served.get(busy) ?? 0,
      0,
      "no quick request went to the busy one",
    );
    assert.equal(served.size, 2, "both idle endpoints took requests");
    release.resolve();
    assert.equal(dec(await hold), "hold");
  } finally {
    release.resolve();
    await closeAll(servers);
  }
});

Deno.test("dial() with an endpoint source adds and drains endpoints under load with no failed request", async () => {
  const { servers, served } = echoServers(3, 2);
  const [a, b, c] = servers as [
    Server<Uint8Array>,
    Server<Uint8Array>,
    Server<Uint8Array>,
  ];
  const feed = new Feed();
  feed.push([at(a), at(b)]);
  try {
    const client = await dial(feed, { sessions: 2, requestTimeout: 5000 });
    using log = events(client);
    assert.equal(client.stats().endpoints.length, 2);
    const stop = new AbortController();
    const load = runLoad(client, {
      concurrency: 16,
      timeout: 5000,
      signal: stop.signal,
      count: 20_000,
    });
    try {
      // Add c: it gets sessions, then requests.
      await pollUntil(() => (served.get(a.port) ?? 0) > 50);
      feed.push([at(a), at(b), at(c)]);
      await log.next("endpoint-added", {
        filter: (d) => d.type === "endpoint-added" && d.endpoint === at(c),
      });
      await pollUntil(() => (served.get(c.port) ?? 0) > 50);
      // Remove a while requests are in flight on it: it drains.
      feed.push([at(b), at(c)]);
      await log.next("endpoint-removed", {
        filter: (d) => d.type === "endpoint-removed" && d.endpoint === at(a),
      });
      await pollUntil(() =>
        client.stats().endpoints.every((e) => e.endpoint !== at(a)) &&
        a.sessions.length === 0
      );
      const servedByA = served.get(a.port);
      const servedByB = served.get(b.port) ?? 0;
      await pollUntil(() => (served.get(b.port) ?? 0) > servedByB + 100);
      assert.equal(served.get(a.port), servedByA, "a took nothing once gone");
      // Swap b for a again.
      feed.push([at(a), at(c)]);
      await pollUntil(() =>
        b.sessions.length === 0 && client.stats().sessions.ready === 4
      );
    } finally {
      stop.abort();
    }
    const report = await load;
    assert.deepEqual(violations(report), []);
    assert.equal(report.ok, report.requests, JSON.stringify(report.errors));
    assert.ok(report.requests > 500);
    assert.deepEqual(
      client.stats().endpoints.map((e) => e.endpoint).sort(),
      [at(a), at(c)].sort(),
    );
    await client.close();
    // The client called return(); a generator waiting in an await runs its
    // finally once it next yields.
    feed.push([at(a)]);
    await pollUntil(() => feed.returned);
  } finally {
    await closeAll(servers);
  }
});

Deno.test("dnsEndpoints() re-resolves on its interval: new addresses get sessions, gone ones are drained", async () => {
  // Two servers on one port at two loopback addresses, as two A records.
  const first = serveLoopback({ handler: (p) => p });
  let second: Server<Uint8Array> | undefined;
  try {
    second = serveLoopback({
      hostname: "127.0.0.2",
      port: first.port,
      handler: (p) => p,
    });
  } catch (error) {
    await first.shutdown({ timeout: 1000 });
    throw error;
  }
  let answer = ["127.0.0.1"];
  const asked: string[] = [];
  try {
    await using client = await dial(
      dnsEndpoints("svc.example", {
        port: first.port,
        interval: 20,
        resolve: (name) => {
          asked.push(name);
          return answer;
        },
      }),
    );
    using log = events(client);
    assert.equal(asked[0], "svc.example");
    answer = ["127.0.0.1", "127.0.0.2"];
    await log.next("endpoint-added", {
      filter: (d) =>
        d.type === "endpoint-added" && d.endpoint === `127.0.0.2:${first.port}`,
    });
    await log.until(() => client.stats().sessions.ready === 2);
    answer = ["127.0.0.2"];
    await log.next("endpoint-removed");
    await pollUntil(() => first.sessions.length === 0);
    assert.deepEqual(await client.request(enc("x")), enc("x"));
    assert.equal(second.sessions.length, 1);
    // A failing or empty answer keeps the endpoints the client has.
    const errors = client.stats().discovery.errors;
    answer = [];
    const failed = await log.next("error");
    assert.ok(
      (failed.detail as { error: unknown }).error instanceof DiscoveryError,
    );
    assert.ok(client.stats().discovery.errors > errors);
    assert.deepEqual(client.stats().endpoints.map((e) => e.endpoint), [
      `127.0.0.2:${first.port}`,
    ]);
    assert.ok(client.stats().discovery.updates >= 3);
  } finally {
    await first.shutdown({ timeout: 1000 });
    await second.shutdown({ timeout: 1000 });
  }
});

Deno.test("dnsEndpoints() resolves localhost through the system resolver", async () => {
  await using server = serveLoopback({ handler: (p) => p });
  await using client = await dial(
    dnsEndpoints("localhost", { port: server.port, family: 4 }),
  );
  assert.deepEqual(await client.request(enc("hi")), enc("hi"));
  assert.deepEqual(client.stats().endpoints.map((e) => e.endpoint), [
    `127.0.0.1:${server.port}`,
  ]);
});

Deno.test("dial() ejects an endpoint whose requests keep timing out, and takes it back after baseTime", async () => {
  let stuck = true;
  let badServed = 0;
  const stalled = new Set<() => void>();
  const { servers, served } = echoServers(2);
  const bad: Server<Uint8Array> = serveLoopback({
    handler: (payload) => {
      badServed++;
      if (!stuck) return payload;
      // Never answers while stuck; let go when the test ends.
      return new Promise<Uint8Array>((resolve) =>
        stalled.add(() => resolve(payload))
      );
    },
  });
  try {
    await using client = await dial([...servers, bad].map(at), {
      routing: "round-robin",
      requestTimeout: 100,
      ejection: { consecutiveFailures: 3, baseTime: 300 },
    });
    using log = events(client);
    await log.until(() => client.stats().sessions.ready === 3);
    const outcomes = await Promise.allSettled(
      Array.from({ length: 9 }, () => client.request(enc("x"))),
    );
    // Round-robin over three: three went to the bad one and timed out.
    assert.equal(outcomes.filter((o) => o.status === "rejected").length, 3);
    const ejected = await log.next("endpoint-ejected");
    assert.deepEqual(ejected.detail, {
      type: "endpoint-ejected",
      endpoint: at(bad),
      failures: 3,
      duration: 300,
    });
    const stats = client.stats().endpoints.find((e) => e.endpoint === at(bad))!;
    assert.equal(stats.state, "ejected");
    assert.equal(stats.ejections, 1);
    assert.ok(stats.ejectedFor > 0);
    // While ejected it takes nothing.
    const before = served.size;
    for (let i = 0; i < 20; i++) await client.request(enc("y"));
    assert.equal(served.size, before);
    stuck = false;
    for (const release of stalled) release();
    await log.next("endpoint-returned");
    assert.equal(
      client.stats().endpoints.find((e) => e.endpoint === at(bad))!.state,
      "active",
    );
    const replies = await Promise.all(
      Array.from({ length: 9 }, () => client.request(enc("z"))),
    );
    assert.equal(replies.length, 9);
    assert.ok(badServed >= 6, "it takes requests again");
  } finally {
    for (const release of stalled) release();
    await closeAll([...servers, bad]);
  }
});

Deno.test("dial() ejects an endpoint whose connections keep failing, holds its slot off, and never ejects the last one", async () => {
  await using good = serveLoopback({ handler: (p) => p });
  const dead = `${HOST}:${closedPort()}`;
  await using client = await dial([at(good), dead], {
    reconnect: { initial: 1, max: 5 },
    ejection: { consecutiveFailures: 3, baseTime: 60_000 },
  });
  using log = events(client);
  const ejected = await log.next("endpoint-ejected");
  assert.equal((ejected.detail as { endpoint: string }).endpoint, dead);
  const entry = client.stats().endpoints.find((e) => e.endpoint === dead)!;
  assert.equal(entry.state, "ejected");
  // Its slot waits out the ejection instead of its 5 ms backoff.
  const held = await log.next("reconnecting", {
    filter: (d) => d.type === "reconnecting" && d.endpoint === dead,
  });
  assert.ok((held.detail as { delay: number }).delay > 50_000);
  // The good endpoint is the last active one: it is never ejected.
  await good.shutdown({ timeout: 100 });
  await log.until(() =>
    client.stats().endpoints.find((e) => e.endpoint === at(good))!
      .connectFailures >= 5
  );
  assert.equal(
    client.stats().endpoints.find((e) => e.endpoint === at(good))!.state,
    "active",
  );
});

Deno.test("dial() with an endpoint source takes back an endpoint listed again while it still drains", async () => {
  const release = Promise.withResolvers<void>();
  const held = Promise.withResolvers<void>();
  const a = serveLoopback({
    handler: async (payload) => {
      if (dec(payload) === "hold") {
        held.resolve();
        await release.promise;
      }
      return payload;
    },
  });
  const b = serveLoopback({ handler: (p) => p });
  const feed = new Feed();
  feed.push([at(a)]);
  try {
    await using client = await dial(feed);
    using log = events(client);
    const status = client.status()[Symbol.asyncIterator]();
    const hold = client.request(enc("hold"));
    await held.promise;
    feed.push([at(b)]);
    await log.next("endpoint-removed");
    assert.equal(
      client.stats().endpoints.find((e) => e.endpoint === at(a))?.state,
      "draining",
    );
    feed.push([at(a), at(b)]);
    await log.next("endpoint-added", {
      filter: (d) => d.type === "endpoint-added" && d.endpoint === at(a),
    });
    await log.next("ready", {
      filter: (d) => d.type === "ready" && d.endpoint === at(a),
    });
    assert.equal(
      client.stats().endpoints.find((e) => e.endpoint === at(a))?.state,
      "active",
    );
    release.resolve();
    assert.equal(dec(await hold), "hold");
    // status() streams the fleet's events too.
    const seen: string[] = [];
    while (!seen.includes("endpoint-added")) {
      const next = await status.next();
      if (next.done) break;
      seen.push(next.value.type);
    }
    assert.deepEqual(
      seen.filter((type) => type.startsWith("endpoint-")),
      // The first endpoint-added came before status() was opened.
      ["endpoint-removed", "endpoint-added"],
    );
    await status.return?.();
  } finally {
    release.resolve();
    await closeAll([a, b]);
  }
});

Deno.test("dial() and dnsEndpoints() reject bad discovery settings with RangeError", async () => {
  const discover = () => ["127.0.0.1:1"];
  await assert.rejects(dial({ discover, interval: 0 }), RangeError);
  await assert.rejects(dial({ discover, interval: Infinity }), RangeError);
  assert.throws(() => dnsEndpoints("x", { port: 0 }), RangeError);
  assert.throws(() => dnsEndpoints("x", { port: 70000 }), RangeError);
  await assert.rejects(
    dial("127.0.0.1:1", { ejection: { maxPercent: 120 } }),
    RangeError,
  );
  await assert.rejects(
    dial("127.0.0.1:1", { routing: "random" as "p2c" }),
    TypeError,
  );
});
