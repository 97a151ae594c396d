/**
 * PROXY protocol from trusted proxies only: a direct client cannot claim
 * another client's address.
 */

import assert from "node:assert/strict";
import { serve } from "../server/serve.ts";
import { addressMatcher } from "../transport/_cidr.ts";
import { encodeProxyHeaderV1 } from "../transport/proxy_protocol.ts";
import { HOST } from "./_loopback.ts";
import { nextEvents } from "./_raw_peer.ts";

const tcp = (hostname: string, port: number): Deno.NetAddr => ({
  transport: "tcp",
  hostname,
  port,
});

Deno.test("addressMatcher() matches addresses and CIDR ranges, IPv4 and IPv6, and refuses bad entries", async (t) => {
  const cases: [string[], string, boolean][] = [
    [["127.0.0.1"], "127.0.0.1", true],
    [["127.0.0.1"], "127.0.0.2", false],
    [["10.0.0.0/8"], "10.200.3.4", true],
    [["10.0.0.0/8"], "11.0.0.1", false],
    [["192.168.1.128/25"], "192.168.1.200", true],
    [["192.168.1.128/25"], "192.168.1.100", false],
    [["0.0.0.0/0"], "8.8.8.8", true],
    [["::1"], "::1", true],
    [["::1"], "::2", false],
    [["fd00::/8"], "fd12:3456::1", true],
    [["fd00::/8"], "fe80::1", false],
    [["10.0.0.0/8"], "::ffff:10.1.2.3", true],
    [["10.0.0.0/8"], "::1", false],
    [["::1"], "127.0.0.1", false],
  ];
  for (const [entries, host, expected] of cases) {
    await t.step(`${entries} ∋ ${host}: ${expected}`, () => {
      assert.equal(addressMatcher(entries)(host), expected);
    });
  }
  for (
    const bad of [
      "10.0.0.0/33",
      "abc",
      "1.2.3",
      "::1::2",
      "10.0.0.1/",
      "1.2.3.4/8/8",
    ]
  ) {
    await t.step(`refuses ${bad}`, () => {
      assert.throws(() => addressMatcher([bad]), TypeError);
    });
  }
});

Deno.test("serve() with proxyProtocol.trusted rejects a PROXY header from an untrusted peer", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    proxyProtocol: { trusted: ["10.0.0.0/8"] },
    handler: (payload) => payload,
  });
  const rejected = nextEvents(server, "error");
  using conn = await Deno.connect({ hostname: HOST, port: server.port });
  await conn.write(
    encodeProxyHeaderV1(tcp("6.6.6.6", 1234), tcp("127.0.0.1", server.port)),
  );
  await rejected;
  assert.equal(await conn.read(new Uint8Array(8)).catch(() => null), null);
  assert.equal(server.stats().rejected, 1);
  assert.equal(server.sessions.length, 0);
});

Deno.test("serve() with proxyProtocol.trusted takes the header of a trusted proxy and keeps the proxy's own address", async () => {
  await using server = serve({
    hostname: HOST,
    port: 0,
    proxyProtocol: { trusted: ["127.0.0.0/8"] },
    handler: (payload) => payload,
  });
  using conn = await Deno.connect({ hostname: HOST, port: server.port });
  await conn.write(
    encodeProxyHeaderV1(tcp("6.6.6.6", 1234), tcp("127.0.0.1", server.port)),
  );
  // A default-protocol ping, so the session exists once its pong is back.
  await conn.write(new Uint8Array([0, 0, 0, 5, 5, 0, 0, 0, 1]));
  const pong = new Uint8Array(9);
  let got = 0;
  while (got < 9) got += (await conn.read(pong.subarray(got))) ?? 9;
  assert.equal(pong[4], 6);
  const [session] = server.sessions;
  assert.equal((session!.remoteAddr as Deno.NetAddr).hostname, "6.6.6.6");
  assert.equal((session!.proxy!.peer as Deno.NetAddr).hostname, "127.0.0.1");
});

Deno.test("serve() refuses a proxyProtocol.trusted entry that is not an address with TypeError", () => {
  assert.throws(
    () =>
      serve({
        hostname: HOST,
        port: 0,
        proxyProtocol: { trusted: ["not-an-address"] },
      }),
    TypeError,
  );
});
