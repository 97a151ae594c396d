import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import {
  listenMutualTls,
  type MutualTlsListener,
} from "../transport/_mutual_tls.ts";
import {
  hasOpenssl,
  makeTestPki,
  OPENSSL_SUFFIX,
  type TestPki,
} from "./_certs.ts";
import { pattern, readExactly, writeAll } from "./_bytes.ts";

// node:tls sockets live outside Deno's resource table, so the op and resource
// sanitizers cannot see them (verified: a listener or an accepted socket left
// open does not fail a test). These tests check instead that no socket on
// the listener's port is still open at the end, from /proc/net/tcp{,6}.

const ignore = !hasOpenssl();
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Open sockets (inode ≠ 0) whose local port is `port`, with their state and
 * receive queue. Deno only lets `--allow-all` read /proc/net/tcp itself, so
 * `cat` reads it.
 */
async function socketsOn(
  port: number,
): Promise<{ state: string; rxQueue: number }[]> {
  const { stdout } = await new Deno.Command("cat", {
    args: ["/proc/net/tcp", "/proc/net/tcp6"],
    stdout: "piped",
    stderr: "null",
  }).output();
  const found: { state: string; rxQueue: number }[] = [];
  for (const line of decoder.decode(stdout).split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 10 || fields[0] === "sl") continue;
    const localPort = parseInt(fields[1]!.split(":")[1]!, 16);
    if (localPort !== port || fields[9] === "0") continue;
    found.push({
      state: fields[3]!,
      rxQueue: parseInt(fields[4]!.split(":")[1]!, 16),
    });
  }
  return found;
}

const hasProcNet = Deno.build.os === "linux";

/** Polls `condition` every 10 ms, at most `ms` in all; throws if it never holds. */
async function waitFor(
  condition: () => boolean | Promise<boolean>,
  what: string,
  ms = 5000,
): Promise<void> {
  for (let waited = 0; !(await condition()); waited += 10) {
    if (waited >= ms) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Closes the listener and waits until no socket is open on its port. */
async function closeAndCheck(listener: MutualTlsListener): Promise<void> {
  listener.close();
  if (!hasProcNet) return;
  await waitFor(
    async () => (await socketsOn(listener.addr.port)).length === 0,
    `the sockets on port ${listener.addr.port} to close`,
  );
}

function listen(pki: TestPki, extra: { requireClientCert?: boolean } = {}) {
  return listenMutualTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: pki.serverCert,
    key: pki.serverKey,
    ca: pki.caCert,
    ...extra,
  });
}

function connect(
  pki: TestPki,
  port: number,
  client?: { cert: string; key: string },
): Promise<Deno.TlsConn> {
  return Deno.connectTls({
    hostname: "127.0.0.1",
    port,
    caCerts: [pki.caCert],
    ...client,
  });
}

/** Asserts that a client the server refused sees an error (or EOF) instead of data. */
async function assertRefused(conn: Deno.TlsConn): Promise<void> {
  const outcome = await (async () => {
    await conn.handshake();
    await conn.write(encoder.encode("hello?"));
    return await conn.read(new Uint8Array(16));
  })().catch((error: unknown) => error);
  assert.ok(
    outcome === null || outcome instanceof Error,
    `expected an error or EOF, got ${String(outcome)}`,
  );
}

Deno.test({
  name:
    "listenMutualTls() accepts a client certificate from the CA, exposes it, and round-trips data" +
    OPENSSL_SUFFIX,
  ignore,
  async fn() {
    await using pki = await makeTestPki();
    const listener = await listen(pki);
    const port = listener.addr.port;
    assert.equal(listener.addr.hostname, "127.0.0.1");
    assert.ok(port > 0);
    using client = await connect(pki, port, {
      cert: pki.clientCert,
      key: pki.clientKey,
    });
    using conn = await listener.accept();

    const expected = new X509Certificate(pki.clientCert);
    assert.equal(conn.peerCertificate?.subject, "CN=tcpbutler test client");
    assert.equal(conn.peerCertificate?.issuer, "CN=tcpbutler test CA");
    assert.equal(conn.peerCertificate?.fingerprint256, expected.fingerprint256);
    assert.deepEqual(conn.peerCertificate?.raw, new Uint8Array(expected.raw));
    assert.equal(conn.remoteAddr.port, client.localAddr.port);
    assert.equal(conn.localAddr.port, port);

    // Both ways, with more than one TLS record and one read buffer.
    const request = pattern(0, 200_000);
    const [, echoed] = await Promise.all([
      writeAll(client, request),
      (async () => {
        const got = await readExactly(conn, request.length);
        assert.equal(await conn.write(got), got.length); // always all of it
      })().then(() => readExactly(client, request.length)),
    ]);
    assert.deepEqual(echoed, request);

    // Half-close: the server still writes after reading EOF, then ends.
    await client.closeWrite();
    assert.equal(await conn.read(new Uint8Array(8)), null);
    assert.equal(await conn.read(new Uint8Array(8)), null);
    await conn.write(encoder.encode("bye"));
    assert.equal(decoder.decode(await readExactly(client, 3)), "bye");
    await conn.closeWrite();
    await assert.rejects(
      conn.write(encoder.encode("x")),
      Deno.errors.BrokenPipe,
    );
    assert.equal(await client.read(new Uint8Array(8)), null);
    conn.close();
    conn.close(); // idempotent
    await assert.rejects(conn.read(new Uint8Array(1)), Deno.errors.BadResource);
    await assert.rejects(
      conn.write(new Uint8Array(1)),
      Deno.errors.BadResource,
    );
    assert.equal(listener.rejected, 0);
    await closeAndCheck(listener);
  },
});

Deno.test({
  name:
    "listenMutualTls() drops clients without a certificate or from another CA, counts them, and keeps serving" +
    OPENSSL_SUFFIX,
  ignore,
  async fn() {
    await using pki = await makeTestPki();
    const listener = await listen(pki);
    const port = listener.addr.port;
    const accepting = listener.accept();

    {
      using anonymous = await connect(pki, port);
      await assertRefused(anonymous);
    }
    await waitFor(() => listener.rejected === 1, "rejected to reach 1");
    {
      using stranger = await connect(pki, port, {
        cert: pki.otherClientCert,
        key: pki.otherClientKey,
      });
      await assertRefused(stranger);
    }
    await waitFor(() => listener.rejected === 2, "rejected to reach 2");

    // The pending accept() was not handed either of them.
    using good = await connect(pki, port, {
      cert: pki.clientCert,
      key: pki.clientKey,
    });
    using conn = await accepting;
    assert.equal(conn.peerCertificate?.subject, "CN=tcpbutler test client");
    await good.write(encoder.encode("ping"));
    assert.equal(decoder.decode(await readExactly(conn, 4)), "ping");
    await conn.write(encoder.encode("pong"));
    assert.equal(decoder.decode(await readExactly(good, 4)), "pong");
    assert.equal(listener.rejected, 2);
    conn.close();
    await closeAndCheck(listener);
  },
});

Deno.test({
  name:
    "listenMutualTls() with requireClientCert false accepts anonymous clients but still refuses bad certificates" +
    OPENSSL_SUFFIX,
  ignore,
  async fn() {
    await using pki = await makeTestPki();
    const listener = await listen(pki, { requireClientCert: false });
    const port = listener.addr.port;

    using anonymous = await connect(pki, port);
    using anonymousConn = await listener.accept();
    assert.equal(anonymousConn.peerCertificate, undefined);
    await anonymous.write(encoder.encode("hi"));
    assert.equal(decoder.decode(await readExactly(anonymousConn, 2)), "hi");

    {
      using stranger = await connect(pki, port, {
        cert: pki.otherClientCert,
        key: pki.otherClientKey,
      });
      await assertRefused(stranger);
    }
    await waitFor(() => listener.rejected === 1, "rejected to reach 1");

    using good = await connect(pki, port, {
      cert: pki.clientCert,
      key: pki.clientKey,
    });
    using conn = await listener.accept();
    assert.equal(conn.peerCertificate?.subject, "CN=tcpbutler test client");
    await good.write(encoder.encode("ok"));
    assert.equal(decoder.decode(await readExactly(conn, 2)), "ok");
    conn.close();
    anonymousConn.close();
    await closeAndCheck(listener);
  },
});

Deno.test({
  name: "listenMutualTls() trusts every CA of a ca array" + OPENSSL_SUFFIX,
  ignore,
  async fn() {
    await using pki = await makeTestPki();
    const listener = await listenMutualTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: pki.serverCert,
      key: pki.serverKey,
      ca: [pki.otherCaCert, pki.caCert],
    });
    const port = listener.addr.port;
    const subjects: string[] = [];
    for (
      const client of [
        { cert: pki.clientCert, key: pki.clientKey },
        { cert: pki.otherClientCert, key: pki.otherClientKey },
      ]
    ) {
      using tls = await connect(pki, port, client);
      using conn = await listener.accept();
      await tls.write(encoder.encode("x"));
      await readExactly(conn, 1);
      subjects.push(conn.peerCertificate?.subject ?? "");
    }
    assert.deepEqual(subjects, [
      "CN=tcpbutler test client",
      "CN=tcpbutler untrusted client",
    ]);
    await closeAndCheck(listener);
  },
});

Deno.test({
  name:
    "MutualTlsListener.accept() rejects with BadResource once closed and iteration ends" +
    OPENSSL_SUFFIX,
  ignore,
  async fn() {
    await using pki = await makeTestPki();
    const listener = await listen(pki);
    const port = listener.addr.port;

    // A verified connection nobody accepted is closed with the listener.
    using waiting = await connect(pki, port, {
      cert: pki.clientCert,
      key: pki.clientKey,
    });
    const served: string[] = [];
    const iterating = (async () => {
      for await (const conn of listener) {
        served.push(conn.peerCertificate?.subject ?? "");
        conn.close();
      }
    })();
    await waitFor(() => served.length === 1, "the first connection");
    const pending = listener.accept();
    listener.close();
    listener.close(); // idempotent
    await iterating;
    await assert.rejects(pending, Deno.errors.BadResource);
    await assert.rejects(listener.accept(), Deno.errors.BadResource);
    assert.equal(await waiting.read(new Uint8Array(1)).catch(() => null), null);
    if (hasProcNet) {
      await waitFor(
        async () => (await socketsOn(port)).length === 0,
        "sockets to close",
      );
    }
    await assert.rejects(
      connect(pki, port, { cert: pki.clientCert, key: pki.clientKey }),
      Deno.errors.ConnectionRefused,
    );
  },
});

Deno.test({
  name:
    "MutualTlsTransport.read() pushes back: a client writing to an unread connection stalls" +
    OPENSSL_SUFFIX,
  ignore: ignore || !hasProcNet,
  async fn() {
    await using pki = await makeTestPki();
    const listener = await listen(pki);
    const port = listener.addr.port;
    using client = await connect(pki, port, {
      cert: pki.clientCert,
      key: pki.clientKey,
    });
    using conn = await listener.accept();

    const total = 32 * 1024 * 1024;
    const chunk = 64 * 1024;
    // pattern() repeats every 251 bytes: precomputed, so the client (in this
    // same thread) does not starve the server of CPU.
    const source = pattern(0, chunk + 251);
    let written = 0;
    const writing = (async () => {
      while (written < total) {
        const start = written % 251;
        await writeAll(client, source.subarray(start, start + chunk));
        written += chunk;
      }
    })();
    writing.catch(() => {}); // awaited below; a failed assertion closes client
    // Nothing is read. With backpressure the client's writes stop and the
    // server's kernel receive queue stays full; without it the server drains
    // the queue into memory and the client writes all 32 MiB.
    const serverRx = async () =>
      (await socketsOn(port)).filter((s) => s.state === "01")
        .reduce((n, s) => n + s.rxQueue, 0);
    let stablePolls = 0;
    let lastWritten = -1;
    await waitFor(async () => {
      if (written >= total) return true;
      const full = await serverRx() >= 32 * 1024;
      stablePolls = full && written === lastWritten ? stablePolls + 1 : 0;
      lastWritten = written;
      return stablePolls >= 5;
    }, "the client's writes to stall");
    assert.ok(written < total, `the client wrote all ${written} bytes`);
    assert.ok(written <= 16 * 1024 * 1024, `${written} bytes were taken`);

    // Reading again drains everything, intact and in order.
    for (let offset = 0; offset < total;) {
      const got = await readExactly(conn, Math.min(1 << 20, total - offset));
      assert.deepEqual(got, pattern(offset, got.length));
      offset += got.length;
    }
    await writing;
    conn.close();
    await closeAndCheck(listener);
  },
});

Deno.test({
  name:
    "MutualTlsTransport.write() resolves once the bytes are taken, so its buffer can be reused" +
    OPENSSL_SUFFIX,
  ignore,
  async fn() {
    await using pki = await makeTestPki();
    const listener = await listen(pki);
    using client = await connect(pki, listener.addr.port, {
      cert: pki.clientCert,
      key: pki.clientKey,
    });
    using conn = await listener.accept();
    const chunk = 32 * 1024;
    const count = 256; // 8 MiB: more than the socket buffers hold
    const buffer = new Uint8Array(chunk);
    const writing = (async () => {
      for (let i = 0; i < count; i++) {
        buffer.set(pattern(i * chunk, chunk));
        assert.equal(await conn.write(buffer), chunk);
      }
    })();
    for (let i = 0; i < count; i++) {
      assert.deepEqual(
        await readExactly(client, chunk),
        pattern(i * chunk, chunk),
      );
    }
    await writing;
    conn.close();
    await closeAndCheck(listener);
  },
});

Deno.test({
  name:
    "MutualTlsTransport.close() interrupts a pending read, and writes to a gone peer reject" +
    OPENSSL_SUFFIX,
  ignore,
  async fn() {
    await using pki = await makeTestPki();
    const listener = await listen(pki);
    const port = listener.addr.port;
    {
      using _client = await connect(pki, port, {
        cert: pki.clientCert,
        key: pki.clientKey,
      });
      const conn = await listener.accept();
      const reading = conn.read(new Uint8Array(8));
      await assert.rejects(conn.read(new Uint8Array(8)), Deno.errors.Busy);
      conn.close();
      await assert.rejects(reading, Deno.errors.Interrupted);
    }
    {
      const client = await connect(pki, port, {
        cert: pki.clientCert,
        key: pki.clientKey,
      });
      using conn = await listener.accept();
      client.close();
      // The peer is gone: reads end, and writes fail instead of hanging.
      const read = await conn.read(new Uint8Array(8)).catch((e) => e);
      assert.ok(read === null || read instanceof Error);
      let failure: unknown;
      for (let i = 0; i < 1000 && failure === undefined; i++) {
        await conn.write(new Uint8Array(16 * 1024)).catch((error) => {
          failure = error;
        });
      }
      assert.ok(failure instanceof Error, "a write to a closed peer rejects");
    }
    await closeAndCheck(listener);
  },
});

Deno.test({
  name:
    "listenMutualTls() drops a client that never completes the handshake after handshakeTimeout" +
    OPENSSL_SUFFIX,
  ignore,
  async fn() {
    await using pki = await makeTestPki();
    const listener = await listenMutualTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: pki.serverCert,
      key: pki.serverKey,
      ca: pki.caCert,
      handshakeTimeout: 100,
    });
    using raw = await Deno.connect({
      hostname: "127.0.0.1",
      port: listener.addr.port,
    });
    // Sends nothing: the server hangs up by itself.
    const read = await raw.read(new Uint8Array(64)).catch((e) => e);
    assert.ok(read === null || read instanceof Error);
    await waitFor(() => listener.rejected === 1, "rejected to reach 1");
    await closeAndCheck(listener);
  },
});

Deno.test({
  name: "listenMutualTls() validates its options and maps bind errors" +
    OPENSSL_SUFFIX,
  ignore,
  async fn() {
    await using pki = await makeTestPki();
    const base = {
      hostname: "127.0.0.1",
      port: 0,
      cert: pki.serverCert,
      key: pki.serverKey,
      ca: pki.caCert,
    };
    await assert.rejects(listenMutualTls({ ...base, port: 70000 }), RangeError);
    await assert.rejects(listenMutualTls({ ...base, port: -1 }), RangeError);
    await assert.rejects(listenMutualTls({ ...base, backlog: -1 }), RangeError);
    await assert.rejects(
      listenMutualTls({ ...base, handshakeTimeout: 0 }),
      RangeError,
    );
    await assert.rejects(listenMutualTls({ ...base, cert: "nope" }), TypeError);
    await assert.rejects(listenMutualTls({ ...base, key: "nope" }), TypeError);
    await assert.rejects(listenMutualTls({ ...base, ca: "nope" }), TypeError);
    await assert.rejects(listenMutualTls({ ...base, ca: [] }), TypeError);
    const reason = new Error("stop");
    await assert.rejects(
      listenMutualTls({ ...base, signal: AbortSignal.abort(reason) }),
      (error) => error === reason,
    );
    using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    await assert.rejects(
      listenMutualTls({ ...base, port: taken.addr.port }),
      Deno.errors.AddrInUse,
    );
  },
});
