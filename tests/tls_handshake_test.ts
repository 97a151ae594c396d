/**
 * The TLS handshake on the server side: connections that never finish it are
 * closed after `handshakeTimeout` and give their descriptor back; failed
 * handshakes, timeouts and plain-text clients are logged (rate-limited),
 * counted and emitted as `TlsHandshakeError`. Ignored when openssl is
 * missing.
 */

import assert from "node:assert/strict";
import {
  dial,
  serve,
  serveMutualTls,
  type Server,
  TlsHandshakeError,
} from "../mod.ts";
import { hasOpenssl, makeTestPki, OPENSSL_SUFFIX } from "./_certs.ts";
import { enc, HOST } from "./_loopback.ts";
import { startProcess, withTimeout } from "./_process.ts";
import { CaptureLogger } from "./_raw_peer.ts";

const ignore = !hasOpenssl();
const onLinux = Deno.build.os === "linux";

/** The fixture that runs `serve({ tls })` in a process of its own. */
const TLS_SERVER = new URL("./_tls_server.ts", import.meta.url).pathname;

/**
 * The open descriptors of process `pid`, listed by `ls`: reading /proc
 * directly needs every permission.
 */
async function openFds(pid: number): Promise<number> {
  const { stdout } = await new Deno.Command("ls", {
    args: [`/proc/${pid}/fd`],
    stderr: "null",
  }).output();
  return new TextDecoder().decode(stdout).split("\n").filter(Boolean).length;
}

/**
 * Resolves with the descriptor count of process `pid` once it is
 * `expected`, or with the last count seen after `timeout` ms. A peer sees a
 * connection end a little before the descriptor leaves /proc, so the count
 * is listed again until it settles.
 */
async function settledFds(
  pid: number,
  expected: number,
  timeout: number,
): Promise<number> {
  const deadline = performance.now() + timeout;
  for (;;) {
    const count = await openFds(pid);
    if (count === expected || performance.now() > deadline) return count;
  }
}

/** Resolves once the server closed `conn` (end of stream or reset). */
async function closedByServer(conn: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(1024);
  for (;;) {
    const n = await conn.read(buffer).catch(() => null);
    if (n === null) return;
  }
}

/** Resolves with the next `n` TLS handshake errors the server emits. */
function handshakeErrors(
  server: Server<Uint8Array>,
  n: number,
): Promise<TlsHandshakeError[]> {
  const seen: TlsHandshakeError[] = [];
  const { promise, resolve } = Promise.withResolvers<TlsHandshakeError[]>();
  const onError = (event: Event) => {
    const { error } = (event as CustomEvent<{ error: unknown }>).detail;
    if (!(error instanceof TlsHandshakeError)) return;
    seen.push(error);
    if (seen.length === n) {
      server.removeEventListener("error", onError);
      resolve(seen);
    }
  };
  server.addEventListener("error", onError);
  return promise;
}

Deno.test({
  name:
    `serve({ tls }) closes connections that stall their handshake and frees every descriptor, even with idleTimeout and maxConnections${OPENSSL_SUFFIX}`,
  ignore: ignore || !onLinux,
  fn: async () => {
    await using pki = await makeTestPki();
    const stalled = 100;
    // A process of its own: its descriptors are the server's alone, and the
    // count is exact whatever other tests run beside this one.
    await using server = await startProcess([
      "deno",
      "run",
      "--allow-net=127.0.0.1",
      `--allow-read=${pki.dir}`,
      TLS_SERVER,
      "--cert",
      `${pki.dir}/server.pem`,
      "--key",
      `${pki.dir}/server.key`,
      "--handshake-timeout",
      "500",
      // Both closed connections before their handshake with Deno.listenTls,
      // which kept each one's descriptor.
      "--idle-timeout",
      "300",
      "--max-connections",
      String(stalled / 2),
    ]);
    const port = Number(server.match.groups!.port);
    const before = await openFds(server.pid);
    const conns: Deno.Conn[] = [];
    try {
      for (let i = 0; i < stalled; i++) {
        conns.push(await Deno.connect({ hostname: HOST, port }));
      }
      await withTimeout(
        Promise.all(conns.map(closedByServer)),
        20_000,
        "the server closing every stalled handshake",
      );
      assert.equal(
        await settledFds(server.pid, before, 5000),
        before,
        "the server's descriptors once every stalled handshake was closed",
      );
      {
        await using client = await dial({ hostname: HOST, port }, {
          tls: { caCerts: [pki.caCert] },
        });
        assert.deepEqual(await client.request(enc("hi")), enc("hi"));
      }
    } finally {
      for (const conn of conns) conn.close();
    }
    await server.kill("SIGTERM");
    const line = server.stdoutLines.find((line) => line.startsWith("stats "));
    assert.ok(line !== undefined, "the server printed its stats");
    const stats = JSON.parse(line.slice("stats ".length));
    // Every stalled one counted; on a loaded machine the client's own first
    // handshake may also outlast the short timeout (it then dials again).
    assert.ok(
      stats.handshakeFailures >= stalled &&
        stats.handshakeFailures <= stalled + 3,
      `${stats.handshakeFailures} handshake failures`,
    );
    assert.equal(stats.opening, 0);
  },
});

Deno.test({
  name:
    `serve({ tls }) logs, counts and emits timeouts, plain-text clients and failed handshakes as TlsHandshakeError${OPENSSL_SUFFIX}`,
  ignore,
  fn: async () => {
    await using pki = await makeTestPki();
    const logger = new CaptureLogger();
    await using server = serve({
      hostname: HOST,
      port: 0,
      tls: { cert: pki.serverCert, key: pki.serverKey },
      handshakeTimeout: 300,
      logger,
      handler: (payload) => payload,
    });
    const port = server.port;
    const errors = handshakeErrors(server, 3);
    using stalled = await Deno.connect({ hostname: HOST, port });
    using plain = await Deno.connect({ hostname: HOST, port });
    await plain.write(enc("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    // A TLS client that does not trust the server's CA aborts the handshake.
    await Deno.connectTls({ hostname: HOST, port }).then(
      (conn) => conn.handshake().finally(() => conn.close()),
    ).catch(() => {});
    // The stalled connection was accepted before this one completed.
    await using client = await dial({ hostname: HOST, port }, {
      tls: { caCerts: [pki.caCert] },
    });
    assert.deepEqual(await client.request(enc("ok")), enc("ok"));
    const found = await withTimeout(errors, 10_000, "three handshake errors");
    assert.deepEqual(
      found.map((error) => error.reason).sort(),
      ["failed", "plaintext", "timeout"],
    );
    for (const error of found) {
      assert.equal(error.remoteAddr?.hostname, HOST);
    }
    await closedByServer(stalled);
    await closedByServer(plain);
    const stats = server.stats();
    assert.equal(stats.handshakeFailures, 3);
    assert.equal(stats.sessions, 1);
    const warnings = logger.entries.filter((entry) =>
      entry.message.startsWith("TLS handshake failed")
    );
    assert.equal(warnings.length, 3);
  },
});

Deno.test({
  name:
    `serve({ tls }) reports connections still in their handshake in stats().opening${OPENSSL_SUFFIX}`,
  ignore,
  fn: async () => {
    await using pki = await makeTestPki();
    await using server = serve({
      hostname: HOST,
      port: 0,
      tls: { cert: pki.serverCert, key: pki.serverKey },
      handler: (payload) => payload,
    });
    using _stalled = await Deno.connect({ hostname: HOST, port: server.port });
    // Accepted in order: once this client is a session, the stalled
    // connection before it is handshaking.
    await using client = await dial({ hostname: HOST, port: server.port }, {
      tls: { caCerts: [pki.caCert] },
    });
    await client.request(enc("x"));
    assert.equal(server.stats().opening, 1);
    assert.equal(server.stats().sessions, 1);
  },
});

Deno.test({
  name:
    `serve({ tls }) logs at most 10 failed handshakes a second, then how many it suppressed${OPENSSL_SUFFIX}`,
  ignore,
  fn: async () => {
    await using pki = await makeTestPki();
    const logger = new CaptureLogger();
    const server = serve({
      hostname: HOST,
      port: 0,
      tls: { cert: pki.serverCert, key: pki.serverKey },
      logger,
      handler: (payload) => payload,
    });
    const clients = 25;
    const errors = handshakeErrors(server, clients);
    for (let i = 0; i < clients; i++) {
      using conn = await Deno.connect({ hostname: HOST, port: server.port });
      await conn.write(enc("PING\r\n"));
      await closedByServer(conn);
    }
    await withTimeout(errors, 10_000, "every plain-text client reported");
    await server.shutdown();
    assert.equal(server.stats().handshakeFailures, clients);
    const logged = logger.entries.filter((entry) =>
      entry.message.startsWith("TLS handshake failed")
    ).length;
    const summaries = logger.entries.filter((entry) =>
      /more failed TLS handshakes suppressed/.test(entry.message)
    );
    const suppressed = summaries.reduce(
      (sum, entry) =>
        sum + (entry.properties?.suppressed as number),
      0,
    );
    assert.ok(logged >= 10 && logged < clients, `logged ${logged}`);
    assert.equal(logged + suppressed, clients);
  },
});

Deno.test({
  name:
    `serveMutualTls() closes a stalled handshake after handshakeTimeout and reports it, and a client without a certificate${OPENSSL_SUFFIX}`,
  ignore,
  fn: async () => {
    await using pki = await makeTestPki();
    await using server = await serveMutualTls({
      hostname: HOST,
      port: 0,
      tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert },
      handshakeTimeout: 300,
      handler: (payload) => payload,
    });
    const errors = handshakeErrors(server, 2);
    using stalled = await Deno.connect({ hostname: HOST, port: server.port });
    await Deno.connectTls({
      hostname: HOST,
      port: server.port,
      caCerts: [pki.caCert],
    }).then(async (conn) => {
      await conn.handshake();
      await conn.read(new Uint8Array(16)).finally(() => conn.close());
    }).catch(() => {});
    await withTimeout(closedByServer(stalled), 10_000, "the stalled close");
    const found = await withTimeout(errors, 10_000, "two handshake errors");
    assert.deepEqual(found.map((error) => error.reason).sort(), [
      "failed",
      "timeout",
    ]);
    assert.equal(server.stats().handshakeFailures, 2);
  },
});
