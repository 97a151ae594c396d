/**
 * Client over TLS and mutual TLS, with certificates made on the fly by
 * openssl (tests/_certs.ts). Ignored when openssl is missing.
 */

import assert from "node:assert/strict";
import { ConnectionError, dial, serve, serveMutualTls } from "../mod.ts";
import {
  hasOpenssl,
  makeTestPki,
  OPENSSL_SUFFIX,
  TEST_PKI_NAMES,
} from "./_certs.ts";
import { dec, enc, HOST, portOf, rawPeer } from "./_loopback.ts";
import { withTimeout } from "./_process.ts";

const ignore = !hasOpenssl();

/** Awaits a dial that must fail; closes the client if it did not. */
async function dialError<T>(
  pending: Promise<{ close(o?: { timeout?: number }): Promise<void> } & T>,
  why = "dial() resolved but was expected to reject",
): Promise<unknown> {
  let client;
  try {
    client = await pending;
  } catch (error) {
    return error;
  }
  await client.close({ timeout: 0 });
  assert.fail(why);
}

Deno.test({
  name: `dial() speaks TLS to a server whose CA it trusts${OPENSSL_SUFFIX}`,
  ignore,
  fn: async () => {
    await using pki = await makeTestPki();
    await using server = serve({
      hostname: HOST,
      port: 0,
      tls: { cert: pki.serverCert, key: pki.serverKey },
      handler: (p: Uint8Array) => enc(`tls: ${dec(p)}`),
    });
    await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
      tls: { caCerts: [pki.caCert] },
    });
    assert.equal(dec(await client.request(enc("hello"))), "tls: hello");
    const replies = await Promise.all(
      Array.from({ length: 50 }, (_, i) => client.request(enc(String(i)))),
    );
    replies.forEach((r, i) => assert.equal(dec(r), `tls: ${i}`));
  },
});

Deno.test({
  name:
    `serve({ tls }) echoes 1 MiB requests between small ones on one session${OPENSSL_SUFFIX}`,
  ignore,
  fn: async () => {
    await using pki = await makeTestPki();
    await using server = serve({
      hostname: HOST,
      port: 0,
      tls: { cert: pki.serverCert, key: pki.serverKey },
      handler: (p: Uint8Array) => p,
    });
    await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
      tls: { caCerts: [pki.caCert] },
    });
    // Bytes that differ along the message, so a chunk out of place shows.
    const big = Uint8Array.from({ length: 1024 * 1024 }, (_, i) => i % 251);
    for (const payload of [enc("a"), big, enc("b"), big, enc("c")]) {
      assert.deepEqual(await client.request(payload), payload);
    }
  },
});

Deno.test({
  name:
    `dial() fails with ConnectionError when it does not trust the server's CA${OPENSSL_SUFFIX}`,
  ignore,
  fn: async () => {
    await using pki = await makeTestPki();
    await using server = serve({
      hostname: HOST,
      port: 0,
      tls: { cert: pki.serverCert, key: pki.serverKey },
      handler: (p: Uint8Array) => p,
    });
    const target = `${HOST}:${portOf(server.addr)}`;
    // The system roots, then another CA: neither signed the server.
    for (const tls of [{}, { caCerts: [pki.otherCaCert] }]) {
      const error = await dialError(dial(target, {
        tls,
        connectTimeout: 2000,
        reconnect: { initial: 10, max: 50, maxAttempts: 1 },
      }));
      assert.ok(error instanceof ConnectionError, `got ${error}`);
    }
  },
});

Deno.test({
  name:
    `dial() with a client certificate talks to serveMutualTls() and the server sees its subject${OPENSSL_SUFFIX}`,
  ignore,
  fn: async () => {
    await using pki = await makeTestPki();
    await using server = await serveMutualTls({
      hostname: HOST,
      port: 0,
      tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert },
      handler: (_p: Uint8Array, { session }) =>
        enc(session.peerCertificate?.subject ?? "none"),
    });
    await using client = await dial(`${HOST}:${portOf(server.addr)}`, {
      tls: {
        caCerts: [pki.caCert],
        cert: pki.clientCert,
        key: pki.clientKey,
      },
    });
    const subject = dec(await client.request(enc("who am I?")));
    assert.match(subject, new RegExp(`CN=${TEST_PKI_NAMES.client}`));
    assert.equal(server.sessions.length, 1);
    assert.match(
      server.sessions[0]!.peerCertificate!.subject,
      new RegExp(`CN=${TEST_PKI_NAMES.client}`),
    );
  },
});

Deno.test({
  name:
    `dial() to serveMutualTls() fails with ConnectionError without a trusted client certificate${OPENSSL_SUFFIX}`,
  ignore,
  fn: async (t) => {
    await using pki = await makeTestPki();
    await using server = await serveMutualTls({
      hostname: HOST,
      port: 0,
      tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert },
      handler: (p: Uint8Array) => p,
    });
    const target = `${HOST}:${portOf(server.addr)}`;
    const cases = {
      "no client certificate": { caCerts: [pki.caCert] },
      "a certificate from an untrusted CA": {
        caCerts: [pki.caCert],
        cert: pki.otherClientCert,
        key: pki.otherClientKey,
      },
    };
    for (const [name, tls] of Object.entries(cases)) {
      await t.step(name, async () => {
        const error = await dialError(
          dial(target, {
            tls,
            connectTimeout: 2000,
            reconnect: { initial: 10, max: 50, maxAttempts: 1 },
          }),
          "dial() resolved with a ready session although the server refused the client certificate: " +
            "with TLS 1.3 the client's handshake completes before the server checks the certificate, " +
            "and the refusal (alert CertificateRequired) only shows on the first read",
        );
        assert.ok(error instanceof ConnectionError, `got ${error}`);
      });
    }
    assert.equal(server.sessions.length, 0);
  },
});

Deno.test({
  name:
    `dial() to serveMutualTls() fails with ConnectionError without a client certificate when onConnect signs on${OPENSSL_SUFFIX}`,
  ignore,
  fn: async () => {
    await using pki = await makeTestPki();
    await using server = await serveMutualTls({
      hostname: HOST,
      port: 0,
      tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert },
      handler: (p: Uint8Array) => p,
    });
    // A round trip before ready proves the server accepted the connection.
    const error = await dialError(
      dial(`${HOST}:${portOf(server.addr)}`, {
        tls: { caCerts: [pki.caCert] },
        connectTimeout: 2000,
        reconnect: { initial: 10, max: 50, maxAttempts: 1 },
        onConnect: async (session) => {
          await session.request(enc("sign-on"));
        },
      }),
    );
    assert.ok(error instanceof ConnectionError, `got ${error}`);
    let cause: unknown = error;
    while (cause instanceof Error && cause.cause !== undefined) {
      cause = cause.cause;
    }
    assert.match(String(cause), /CertificateRequired/);
  },
});

Deno.test({
  name:
    `dial() over TLS rejects at connectTimeout when the server never answers the handshake, leaving nothing open (ignored: Deno 2.9.6 keeps a TLS socket open until its pending handshake ends, denoland/deno#14547; see README, known limitations)`,
  // Kept so that a runtime that fixes it can be checked by removing this line.
  ignore: true,
  fn: async () => {
    await using pki = await makeTestPki();
    // A TCP listener that accepts and never speaks TLS.
    await using peer = rawPeer();
    const start = performance.now();
    const error = await dialError(dial(peer.target, {
      tls: { caCerts: [pki.caCert] },
      connectTimeout: 300,
      reconnect: { initial: 5000, max: 5000 },
    }));
    const elapsed = performance.now() - start;
    assert.ok(error instanceof ConnectionError, `got ${error}`);
    assert.ok(elapsed >= 290 && elapsed < 2000, `after ${elapsed} ms`);
    // The attempt was given up: its socket must be closed by the client,
    // not left waiting for the server to hang up.
    const conn = await peer.accept();
    const readToEnd = async () => {
      const buffer = new Uint8Array(4096);
      while (await conn.conn.read(buffer) !== null) {
        // The ClientHello; then the end of stream once the client closes.
      }
      return "closed";
    };
    assert.equal(
      await withTimeout(
        readToEnd(),
        2000,
        "the end of the abandoned TLS connection",
      )
        .catch((e) => String(e)),
      "closed",
      "the client must close the TLS connection it gave up on (it stays open, its handshake op pending, until the server hangs up)",
    );
  },
});
