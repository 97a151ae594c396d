import assert from "node:assert/strict";
import { dial } from "../client/dial.ts";
import { ConnectionError } from "../errors.ts";
import { serve } from "../server/serve.ts";
import { haproxyTestName, hasHaproxy, startHaproxy } from "./_haproxy.ts";
import { withTimeout } from "./_process.ts";
import { bytes, nextEvents, text } from "./_raw_peer.ts";

const HOST = "127.0.0.1";

interface View {
  remote: string;
  destination: Deno.Addr | null;
  local: Deno.Addr;
}

function hostPort(addr: Deno.Addr): string {
  return addr.transport === "tcp" || addr.transport === "udp"
    ? `${addr.hostname}:${addr.port}`
    : addr.transport;
}

for (const version of ["v1", "v2"] as const) {
  Deno.test({
    name: haproxyTestName(
      `serve({ proxyProtocol: true }) behind HAProxy send-proxy${
        version === "v2" ? "-v2" : ""
      } sees the client's own address and rejects connections that bypass HAProxy`,
    ),
    ignore: !hasHaproxy(),
    async fn() {
      await using server = serve({
        hostname: HOST,
        port: 0,
        proxyProtocol: true,
        handler: (_payload, { session }) =>
          bytes(JSON.stringify(
            {
              remote: hostPort(session.remoteAddr),
              destination: session.proxy?.destination ?? null,
              local: session.localAddr,
            } satisfies View,
          )),
      });
      const serverPort = (server.addr as Deno.NetAddr).port;
      await using haproxy = await startHaproxy({
        backendPort: serverPort,
        sendProxy: version,
      });

      const ask = async (
        client: { request(p: Uint8Array): Promise<Uint8Array> },
      ) =>
        JSON.parse(text(
          await withTimeout(client.request(bytes("who am I")), 5000, "request"),
        )) as View;

      // Through HAProxy: the server sees the client's own address.
      await using client = await dial(haproxy.address, {
        connectTimeout: 5000,
      });
      const clientAddr = client.sessions[0]!.localAddr as Deno.NetAddr;
      assert.equal(clientAddr.hostname, HOST);
      const view = await ask(client);
      assert.equal(view.remote, `${HOST}:${clientAddr.port}`);
      assert.deepEqual(view.destination, {
        transport: "tcp",
        hostname: HOST,
        port: haproxy.port,
      });
      // The server's own end is the backend port, not what the header says.
      assert.equal((view.local as Deno.NetAddr).port, serverPort);
      assert.equal(server.stats().rejected, 0);
      assert.equal(server.stats().sessions, 1);

      // Straight to the server, without a header: rejected.
      const rejected = nextEvents(server, "error");
      await assert.rejects(
        dial(`${HOST}:${serverPort}`, {
          connectTimeout: 5000,
          reconnect: { maxAttempts: 1 },
        }),
        ConnectionError,
      );
      await withTimeout(rejected, 5000, "rejection event");
      assert.equal(server.stats().rejected, 1);

      // The HAProxy path keeps working: the open client, and a new one.
      assert.equal((await ask(client)).remote, view.remote);
      await using second = await dial(haproxy.address, {
        connectTimeout: 5000,
      });
      const secondAddr = second.sessions[0]!.localAddr as Deno.NetAddr;
      assert.notEqual(secondAddr.port, clientAddr.port);
      const secondView = await ask(second);
      assert.equal(secondView.remote, `${HOST}:${secondAddr.port}`);
      assert.deepEqual(secondView.destination, view.destination);
      assert.equal(server.stats().rejected, 1);
      assert.equal(server.stats().sessions, 2);
    },
  });
}
