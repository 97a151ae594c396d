/**
 * The conformance suite: what the library must do alike on Deno, Node and
 * Bun, over real sockets on loopback. Importing this module registers the
 * cases (see `_harness.ts`).
 *
 * @module
 */

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import {
  type Codec,
  ConnectionError,
  defaultCodec,
  dial,
  type FrameDecoder,
  FrameKind,
  isRetryableError,
  listen,
  listenReusePort,
  serve,
  serveMutualTls,
  serveWorkers,
  TimeoutError,
  UnsupportedRuntimeError,
} from "../../mod.ts";
import { delimited } from "../../framing/mod.ts";
import { type CaseContext, conformance } from "./_harness.ts";
import {
  dec,
  enc,
  HOST,
  latch,
  makePki,
  rawPeer,
  startServer,
  until,
} from "./_support.ts";

conformance("dial() and serve() make a round trip", async (t) => {
  const server = await startServer(t, { handler: (p) => p.toReversed() });
  const client = await dial({ hostname: HOST, port: server.port });
  t.defer(() => client.close());
  assert.deepEqual([...await client.request(enc("abc"))], [...enc("cba")]);
  assert.equal(dec(await client.request(enc("xy"))), "yx");
});

conformance(
  "A pool of sessions reconnects after the server restarts on its port",
  async (t) => {
    const first = await startServer(t, { handler: () => enc("first") });
    const port = first.port;
    const client = await dial({ hostname: HOST, port }, {
      sessions: 2,
      reconnect: { initial: 10, max: 50 },
    });
    t.defer(() => client.close());
    const ready = () =>
      client.sessions.filter((s) => s.state === "ready").length === 2;
    await until(client, "ready", ready);
    assert.equal(dec(await client.request(enc("?"))), "first");
    await first.shutdown({ timeout: 1000 });
    const second = await startServer(t, { handler: () => enc("second") }, {
      port,
    });
    // Requests wait for a session within their deadline while slots reconnect.
    assert.equal(
      dec(await client.request(enc("?"), { timeout: 5000 })),
      "second",
    );
    await until(client, "ready", ready);
    assert.equal(second.port, port);
  },
);

conformance(
  "Client.request() times out, and rejects with the reason when aborted",
  async (t) => {
    const hold = latch();
    const server = await startServer(t, {
      handler: async (p) => {
        await hold.wait;
        return p;
      },
    });
    t.defer(() => hold.open());
    const client = await dial({ hostname: HOST, port: server.port });
    t.defer(() => client.close());
    await assert.rejects(
      client.request(enc("slow"), { timeout: 50 }),
      TimeoutError,
    );
    const controller = new AbortController();
    const pending = client.request(enc("slow"), { signal: controller.signal });
    const reason = new Error("changed my mind");
    controller.abort(reason);
    await assert.rejects(pending, (error) => error === reason);
    hold.open();
    assert.equal(dec(await client.request(enc("fast"))), "fast");
  },
);

conformance("A server pushes to a client and sends it requests", async (t) => {
  const pushed = latch();
  let pushedText = "";
  const server = await startServer(t, {
    handler: async (p, { session }) => {
      await session.send(enc("news"));
      const answer = await session.request(enc("who?"));
      return enc(`${dec(p)}:${dec(answer)}`);
    },
  });
  const client = await dial({ hostname: HOST, port: server.port }, {
    handler: (message, { kind }) => {
      if (kind === "push") {
        pushedText = dec(message);
        pushed.open();
        return;
      }
      return enc("client");
    },
  });
  t.defer(() => client.close());
  assert.equal(dec(await client.request(enc("hi"))), "hi:client");
  await pushed.wait;
  assert.equal(pushedText, "news");
});

conformance(
  "fifo correlation answers in request order whatever order handlers finish in",
  async (t) => {
    const lines = () => delimited({ delimiter: "\n" });
    const slowStarted = latch();
    const release = latch();
    const server = await startServer(t, {
      codec: lines(),
      correlation: "fifo",
      handler: async (line) => {
        const text = dec(line);
        if (text === "slow") {
          slowStarted.open();
          await release.wait;
        }
        return enc(`${text}!`);
      },
    });
    t.defer(() => release.open());
    const client = await dial({ hostname: HOST, port: server.port }, lines(), {
      correlation: "fifo",
      heartbeat: false,
    });
    t.defer(() => client.close());
    const slow = client.request(enc("slow"));
    await slowStarted.wait;
    const fast = client.request(enc("fast"));
    const order: string[] = [];
    const done = [slow, fast].map((p) => p.then((r) => order.push(dec(r))));
    release.open();
    await Promise.all(done);
    assert.deepEqual(order, ["slow!", "fast!"]);
  },
);

/**
 * A server whose handler holds each request until `release` opens (and
 * says so with `started`), and a client of it; both closed after the case.
 */
async function heldRequest(
  t: CaseContext,
) {
  const started = latch();
  const release = latch();
  const server = await startServer(t, {
    handler: async (p) => {
      started.open();
      await release.wait;
      return p;
    },
  });
  t.defer(() => release.open());
  const client = await dial({ hostname: HOST, port: server.port });
  t.defer(() => client.close());
  return { server, client, started, release };
}

conformance(
  "Server.shutdown() lets a request in flight finish and reports nothing forced",
  async (t) => {
    const { server, client, started, release } = await heldRequest(t);
    const reply = client.request(enc("in flight"), { timeout: 5000 });
    await started.wait;
    const shutdown = server.shutdown({ timeout: 5000 });
    release.open();
    assert.equal(dec(await reply), "in flight");
    const report = await shutdown;
    assert.equal(report.forced, 0);
    await server.finished;
  },
);

conformance(
  "A closing client drains: requests in flight complete",
  async (t) => {
    const { client, started, release } = await heldRequest(t);
    const reply = client.request(enc("last"), { timeout: 5000 });
    await started.wait;
    const drained = client[Symbol.asyncDispose]();
    release.open();
    assert.equal(dec(await reply), "last");
    await drained;
    await assert.rejects(client.request(enc("late")));
  },
);

conformance(
  "TLS: a client that trusts the CA talks to a TLS server",
  async (t) => {
    const pki = makePki();
    const server = await startServer(t, { handler: (p) => p }, {
      tls: { cert: pki.serverCert, key: pki.serverKey },
    });
    const client = await dial({ hostname: HOST, port: server.port }, {
      tls: { caCerts: [pki.caCert] },
    });
    t.defer(() => client.close());
    assert.equal(dec(await client.request(enc("secret"))), "secret");
  },
  { needsOpenssl: true },
);

conformance(
  "mTLS: serveMutualTls() sees the client certificate; a client without one fails",
  async (t) => {
    const pki = makePki();
    const server = await serveMutualTls({
      hostname: HOST,
      port: 0,
      tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert },
      handler: (_p, { session }) => enc(session.peerCertificate?.subject ?? ""),
    });
    t.defer(() => server.shutdown({ timeout: 0 }));
    const client = await dial({ hostname: HOST, port: server.port }, {
      tls: { caCerts: [pki.caCert], cert: pki.clientCert, key: pki.clientKey },
    });
    t.defer(() => client.close());
    assert.match(dec(await client.request(enc("me?"))), /conformance client/);
    await assert.rejects(
      dial({ hostname: HOST, port: server.port }, {
        tls: { caCerts: [pki.caCert] },
        connectTimeout: 5000,
        reconnect: { maxAttempts: 1 },
      }),
    );
  },
  { needsOpenssl: true },
);

conformance(
  "PROXY protocol: the session sees the client address from the header",
  async (t) => {
    const server = await startServer(t, {
      proxyProtocol: true,
      handler: (_p, { session }) => {
        const addr = session.remoteAddr;
        return enc(
          addr.transport === "tcp" ? `${addr.hostname}:${addr.port}` : "?",
        );
      },
    });
    const peer = await rawPeer(t, server.port);
    const codec = defaultCodec();
    peer.write(enc("PROXY TCP4 203.0.113.7 127.0.0.1 40000 9000\r\n"));
    peer.write(
      codec.encode({ kind: FrameKind.Request, id: 7, payload: enc("") }),
    );
    const header = await peer.read(9);
    const length = new DataView(header.buffer).getUint32(0) - 5;
    const frames = codec.decoder().decode(
      new Uint8Array([...header, ...await peer.read(length)]),
    );
    assert.equal(frames.length, 1);
    assert.equal(frames[0]!.kind, FrameKind.Response);
    assert.equal(frames[0]!.id, 7);
    assert.equal(dec(frames[0]!.payload), "203.0.113.7:40000");
  },
);

/** Messages `"<id> <text>"`, one per line, correlated by id. */
function idLines(): Codec<{ id: number; text: string }> {
  const lines = delimited({ delimiter: "\n" });
  return {
    decoder(): FrameDecoder<{ id: number; text: string }> {
      const inner = lines.decoder();
      return {
        decode: (chunk) =>
          inner.decode(chunk).map((line) => {
            const text = dec(line);
            const space = text.indexOf(" ");
            return {
              id: Number(text.slice(0, space)),
              text: text.slice(space + 1),
            };
          }),
        end: () => inner.end?.(),
      };
    },
    encode: (message) => lines.encode(enc(`${message.id} ${message.text}`)),
    correlationId: (message) => message.id,
  };
}

conformance(
  "A custom codec correlates replies by its own ids, out of order",
  async (t) => {
    const release = latch();
    const server = await startServer(t, {
      codec: idLines(),
      handler: async (message) => {
        if (message.text === "slow") await release.wait;
        return { id: message.id, text: message.text.toUpperCase() };
      },
    });
    t.defer(() => release.open());
    const client = await dial(
      { hostname: HOST, port: server.port },
      idLines(),
      {
        heartbeat: false,
      },
    );
    t.defer(() => client.close());
    const slow = client.request({ id: 1, text: "slow" });
    const fast = await client.request({ id: 2, text: "fast" });
    assert.deepEqual(fast, { id: 2, text: "FAST" });
    release.open();
    assert.deepEqual(await slow, { id: 1, text: "SLOW" });
  },
);

conformance("Bad input ends only its own session", async (t) => {
  const server = await startServer(t, {
    maxFrameBytes: 1024,
    handler: (p) => p,
  });
  const client = await dial({ hostname: HOST, port: server.port });
  t.defer(() => client.close());
  const peer = await rawPeer(t, server.port);
  // A header announcing a 1 MiB frame, over maxFrameBytes.
  peer.write(
    new Uint8Array([0x00, 0x10, 0x00, 0x05, FrameKind.Request, 0, 0, 0, 1]),
  );
  await peer.ended;
  assert.equal(dec(await client.request(enc("still here"))), "still here");
});

/** The name of every error along `error`'s `cause` chain. */
function causeNames(error: unknown): string[] {
  const names: string[] = [];
  for (let e = error; e instanceof Error; e = e.cause) names.push(e.name);
  return names;
}

conformance("listen() on a port in use rejects with AddrInUse", async (t) => {
  const first = await listen({ hostname: HOST, port: 0 });
  t.defer(() => first.close());
  const port = first.addr.transport === "tcp" ? first.addr.port : 0;
  await assert.rejects(
    listen({ hostname: HOST, port }),
    (error: unknown) => error instanceof Error && error.name === "AddrInUse",
  );
});

conformance(
  "dial() to a closed port fails with ConnectionRefused as a cause",
  async (t) => {
    const closed = await listen({ hostname: HOST, port: 0 });
    const port = closed.addr.transport === "tcp" ? closed.addr.port : 0;
    closed.close();
    const error = await dial({ hostname: HOST, port }, {
      connectTimeout: 2000,
      reconnect: { maxAttempts: 1 },
    }).then(
      (client) => {
        t.defer(() => client.close());
        return undefined;
      },
      (error: unknown) => error,
    );
    assert.ok(error instanceof ConnectionError, String(error));
    assert.ok(
      causeNames(error).includes("ConnectionRefused"),
      String(causeNames(error)),
    );
    assert.ok(isRetryableError(error));
  },
);

conformance("A Unix socket round trip", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "tcpbutler-unix-"));
  t.defer(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "s.sock");
  const server = serve(await listen({ path }), (p) => p.toReversed());
  t.defer(() => server.shutdown({ timeout: 0 }));
  const client = await dial(`unix:${path}`);
  t.defer(() => client.close());
  assert.equal(dec(await client.request(enc("ab"))), "ba");
});

conformance(
  "What a runtime lacks fails with UnsupportedRuntimeError",
  async (t) => {
    const onDeno = "Deno" in globalThis;
    if (onDeno) {
      // Deno binds synchronously: serve() listens by itself.
      const server = serve({ hostname: HOST, port: 0, handler: (p) => p });
      t.defer(() => server.shutdown({ timeout: 0 }));
      assert.ok(server.port > 0);
      return;
    }
    assert.throws(
      () => serve({ hostname: HOST, port: 0, handler: (p) => p }),
      UnsupportedRuntimeError,
    );
    await assert.rejects(
      serveWorkers({ module: "./echo.ts", port: 0 }),
      UnsupportedRuntimeError,
    );
  },
);

conformance(
  "listenReusePort() shares a port, or says the runtime cannot",
  async (t) => {
    const version =
      (globalThis as { process?: { versions?: { node?: string } } })
        .process?.versions?.node;
    const [major = 0, minor = 0] = (version ?? "0.0").split(".").map(Number);
    const plainNode = !("Deno" in globalThis) && !("Bun" in globalThis);
    if (plainNode && (major < 22 || (major === 22 && minor < 12))) {
      await assert.rejects(
        listenReusePort({ hostname: HOST, port: 0 }),
        UnsupportedRuntimeError,
      );
      return;
    }
    const first = await listenReusePort({ hostname: HOST, port: 0 });
    const port = first.addr.transport === "tcp" ? first.addr.port : 0;
    const second = await listenReusePort({ hostname: HOST, port });
    const a = serve(first, () => enc("a"));
    t.defer(() => a.shutdown({ timeout: 0 }));
    const b = serve(second, () => enc("b"));
    t.defer(() => b.shutdown({ timeout: 0 }));
    const client = await dial({ hostname: HOST, port });
    t.defer(() => client.close());
    assert.match(dec(await client.request(enc("?"))), /^[ab]$/);
  },
);
