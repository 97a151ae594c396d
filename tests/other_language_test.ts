/**
 * The README's "The default wire format" section is enough to write a peer
 * in another language: examples/other_language/client.py (plain Python 3,
 * written from that section alone) talks to tcpbutler servers here.
 */

import assert from "node:assert/strict";
import { defaultCodec, type Frame, FrameKind, serve } from "../mod.ts";
import { startProcess, withTimeout } from "./_process.ts";

const PYTHON = "python3";
const SCRIPT = new URL("../examples/other_language/client.py", import.meta.url)
  .pathname;
const ECHO_SERVER = new URL("../examples/echo_server.ts", import.meta.url)
  .pathname;

function hasPython(): boolean {
  try {
    return new Deno.Command(PYTHON, {
      args: ["--version"],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).outputSync().success;
  } catch {
    return false;
  }
}

const ignore = !hasPython();
const testName = (name: string) =>
  ignore ? `${name} (ignored: ${PYTHON} not found)` : name;
const bytes = (text: string) => new TextEncoder().encode(text);
const text = (data: Uint8Array) => new TextDecoder().decode(data);

/** Runs the Python client until it prints `readyLine`. */
function startClient(port: number, args: string[], readyLine: RegExp) {
  return startProcess(
    [PYTHON, SCRIPT, "127.0.0.1", String(port), ...args],
    { readyLine },
  );
}

Deno.test({
  name: testName(
    "the default wire format: a Python client talks to the echo server (deno task serve) and drains both ways",
  ),
  ignore,
  async fn() {
    await using server = await startProcess([
      "deno",
      "run",
      "--allow-net",
      "--allow-read",
      ECHO_SERVER,
      "--port",
      "0",
    ]);
    const port = Number(server.match.groups!.port);

    // 1. Requests, a ping and a push; then the client drains itself.
    await using first = await startClient(port, [], /^done/);
    assert.equal((await first.status).code, 0, first.stdoutLines.join("\n"));
    const lines = first.stdoutLines;
    for (
      const line of [
        "connected",
        "pong 4242 are you there?",
        "push a push from python",
        "response 1 ok ",
        "response 2 ok héllo ✓",
        "response 3 ok <262144 bytes>",
        "response 4 ok hello 3",
        "response 5 ok hello 4",
        "draining",
        "drain answered",
        "eof",
        "done",
      ]
    ) {
      assert.ok(
        lines.includes(line),
        `missing ${JSON.stringify(line)} in:\n${lines.join("\n")}`,
      );
    }
    assert.ok(!lines.some((line) => /MISMATCH|failed|unanswered/.test(line)));

    // 2. The server shuts down while a client is connected: it drains it.
    await using second = await startClient(
      port,
      ["--wait-drain", "--requests", "3"],
      /^waiting for drain$/,
    );
    const status = await server.kill("SIGTERM");
    assert.equal(status.code, 0);
    assert.equal((await second.status).code, 0);
    assert.deepEqual(second.stdoutLines.slice(-3), [
      "drain received",
      "eof",
      "done",
    ]);
    const report = server.stdoutLines.find((line) =>
      line.startsWith("shutdown ")
    );
    assert.ok(report !== undefined, server.stdoutLines.join("\n"));
    const shutdown = JSON.parse(report.slice("shutdown ".length));
    assert.deepEqual(
      [shutdown.sessions, shutdown.drained, shutdown.forced],
      [1, 1, 0],
    );
  },
});

Deno.test({
  name: testName(
    "the default wire format: a Python client answers the server's requests and gets error frames",
  ),
  ignore,
  async fn() {
    const fromClient: string[] = [];
    await using server = serve({
      hostname: "127.0.0.1",
      port: 0,
      handler: (payload, { kind, session }) => {
        if (text(payload) === "fail") throw new Error("cannot do that");
        // A push owes no reply: push it back explicitly.
        if (kind === "push") void session.send(payload);
        else return payload;
      },
      onConnect: async (session) => {
        await session.send(bytes("welcome"));
        fromClient.push(text(await session.request(bytes("who are you?"))));
      },
    });
    await using client = await startClient(
      (server.addr as Deno.NetAddr).port,
      ["--expect-requests", "1", "--fail"],
      /^done/,
    );
    assert.equal((await client.status).code, 0, client.stdoutLines.join("\n"));
    const lines = client.stdoutLines;
    for (
      const line of [
        "push welcome",
        "push a push from python",
        "answered request 1 who are you?",
        "error 6 cannot do that",
        "response 5 ok hello 4",
        "drain answered",
        "eof",
      ]
    ) {
      assert.ok(
        lines.includes(line),
        `missing ${JSON.stringify(line)} in:\n${lines.join("\n")}`,
      );
    }
    assert.deepEqual(fromClient, ["python got: who are you?"]);
    await server.shutdown({ timeout: 1000 });
  },
});

/** A hand-driven peer on a raw socket, speaking the default protocol. */
class RawServerPeer implements AsyncDisposable {
  readonly #conn: Deno.Conn;
  readonly #decoder = defaultCodec().decoder();
  readonly #codec = defaultCodec();
  readonly #frames: Frame[] = [];
  readonly #buffer = new Uint8Array(64 * 1024);
  #closed = false;

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  async write(kind: number, id: number, payload = ""): Promise<void> {
    const wire = this.#codec.encode(
      { kind, id, payload: bytes(payload) } as Frame,
    );
    let at = 0;
    while (at < wire.length) at += await this.#conn.write(wire.subarray(at));
  }

  /** The next frame, or null at EOF. */
  async next(): Promise<Frame | null> {
    while (this.#frames.length === 0) {
      const n = await this.#conn.read(this.#buffer);
      if (n === null) return null;
      this.#frames.push(...this.#decoder.decode(this.#buffer.slice(0, n)));
    }
    return this.#frames.shift()!;
  }

  async expect(kind: number): Promise<Frame> {
    for (;;) {
      const frame = await this.next();
      assert.ok(frame !== null, `EOF while waiting for frame kind ${kind}`);
      if (frame.kind === kind) return frame;
    }
  }

  closeWrite(): Promise<void> {
    return this.#conn.closeWrite();
  }

  [Symbol.asyncDispose](): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#conn.close();
    }
    return Promise.resolve();
  }
}

Deno.test({
  name: testName(
    "the default wire format: a Python client answers pings and a drain from a raw peer",
  ),
  ignore,
  async fn() {
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    await using client = await startClient(
      listener.addr.port,
      ["--requests", "0", "--wait-drain"],
      /^connected$/,
    );
    await using peer = new RawServerPeer(
      await withTimeout(listener.accept(), 5000, "accept"),
    );
    await withTimeout(
      async () => {
        // The client's own ping and push: answer them.
        const ping = await peer.expect(FrameKind.Ping);
        await peer.write(FrameKind.Pong, ping.id, text(ping.payload));
        const push = await peer.expect(FrameKind.Push);
        assert.equal(text(push.payload), "a push from python");
        await peer.write(FrameKind.Push, 0, "pushed back");
        // Our ping: a pong with the same id and payload.
        await peer.write(FrameKind.Ping, 77, "beat");
        const pong = await peer.expect(FrameKind.Pong);
        assert.deepEqual([pong.id, text(pong.payload)], [77, "beat"]);
        // Our request: a response with the same id.
        await peer.write(FrameKind.Request, 9, "q");
        const response = await peer.expect(FrameKind.Response);
        assert.deepEqual([response.id, text(response.payload)], [
          9,
          "python got: q",
        ]);
        // Drain: the client answers with a drain, then closes after our FIN.
        await peer.write(FrameKind.Drain, 0);
        await peer.expect(FrameKind.Drain);
        await peer.closeWrite();
        assert.equal(await peer.next(), null);
      },
      10_000,
      "the raw peer's exchange",
    );
    assert.equal((await client.status).code, 0, client.stdoutLines.join("\n"));
    assert.deepEqual(client.stdoutLines.slice(-3), [
      "drain received",
      "eof",
      "done",
    ]);
    assert.ok(client.stdoutLines.includes("answered ping 77 beat"));
  },
});
