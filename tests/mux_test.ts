import assert from "node:assert/strict";
import { dial } from "../client/dial.ts";
import { delimited } from "../framing/delimited.ts";
import {
  matchAny,
  matchDefaultProtocol,
  matchPrefix,
  type MuxListener,
  muxListener,
  type MuxOptions,
} from "../transport/mux.ts";
import { defaultCodec, type Frame, FrameKind } from "../protocol.ts";
import { serve } from "../server/serve.ts";
import type { Server } from "../server/server.ts";
import { dec, enc, HOST, portOf } from "./_loopback.ts";
import { readExactly } from "./_bytes.ts";

/** A mux on 127.0.0.1 port 0 with a default-protocol echo route and a line route. */
function start(
  options: MuxOptions & { lineMatcher?: "any" | "prefix" } = {},
): {
  mux: MuxListener;
  port: number;
  tcpbutler: Server<Uint8Array>;
  lines: Server<Uint8Array>;
} {
  const { lineMatcher = "any", ...muxOptions } = options;
  const mux = muxListener(
    Deno.listen({ hostname: HOST, port: 0 }),
    muxOptions,
  );
  const tcpbutler = serve({
    listener: mux.route(matchDefaultProtocol),
    handler: (payload) => enc(`echo ${dec(payload)}`),
  });
  const lines = serve({
    listener: mux.route(
      lineMatcher === "any" ? matchAny : matchPrefix("HELLO "),
    ),
    codec: delimited({ delimiter: "\n" }),
    handler: (line) => enc(`you said ${dec(line)}\n`.slice(0, -1)),
  });
  return { mux, port: portOf(mux.addr), tcpbutler, lines };
}

/** Closes servers (then the mux, closed by the last route) in order. */
async function stop(
  { mux, tcpbutler, lines }: ReturnType<typeof start>,
): Promise<void> {
  await tcpbutler.shutdown({ timeout: 1000 });
  await lines.shutdown({ timeout: 1000 });
  await mux[Symbol.asyncDispose]();
}

/** Reads until `\n`; returns the line without it. */
async function readLine(conn: Deno.Conn): Promise<string> {
  const bytes: number[] = [];
  const one = new Uint8Array(1);
  for (;;) {
    const n = await conn.read(one);
    if (n === null) throw new Error(`EOF after ${JSON.stringify(bytes)}`);
    if (one[0] === 0x0a) return dec(new Uint8Array(bytes));
    bytes.push(one[0]!);
  }
}

/** Reads one default-protocol frame. */
async function readFrame(conn: Deno.Conn): Promise<Frame> {
  const head = await readExactly(conn, 4);
  const length = new DataView(head.buffer).getUint32(0);
  const rest = await readExactly(conn, length);
  const frames = defaultCodec().decoder().decode(
    new Uint8Array([...head, ...rest]),
  );
  assert.equal(frames.length, 1);
  return frames[0]!;
}

/** Writes `bytes` one byte per write, with Nagle off so each is its own segment. */
async function writeBytewise(conn: Deno.TcpConn, bytes: Uint8Array) {
  conn.setNoDelay(true);
  for (let i = 0; i < bytes.length; i++) {
    assert.equal(await conn.write(bytes.subarray(i, i + 1)), 1);
  }
}

/** Whether the server ended the connection: EOF or a reset. */
async function ended(conn: Deno.Conn): Promise<boolean> {
  const buffer = new Uint8Array(64);
  try {
    for (let i = 0; i < 100; i++) {
      if (await conn.read(buffer) === null) return true;
    }
    return false; // it kept sending
  } catch (error) {
    return error instanceof Deno.errors.ConnectionReset;
  }
}

Deno.test("muxListener() serves a tcpbutler client and a raw line client side by side on one port", async () => {
  const servers = start();
  try {
    await using client = await dial({ hostname: HOST, port: servers.port });
    using line = await Deno.connect({ hostname: HOST, port: servers.port });
    await line.write(enc("hello\nworld\n"));
    const replies = await Promise.all(
      Array.from({ length: 20 }, (_, i) => client.request(enc(`r${i}`))),
    );
    assert.deepEqual(
      replies.map(dec),
      Array.from({ length: 20 }, (_, i) => `echo r${i}`),
    );
    assert.equal(await readLine(line), "you said hello");
    assert.equal(await readLine(line), "you said world");
    // Interleaved, both still served.
    await line.write(enc("again\n"));
    assert.equal(dec(await client.request(enc("again"))), "echo again");
    assert.equal(await readLine(line), "you said again");
    assert.equal(servers.tcpbutler.stats().sessions, 1);
    assert.equal(servers.lines.stats().sessions, 1);
    assert.equal(servers.mux.unmatched, 0);
  } finally {
    await stop(servers);
  }
});

Deno.test("muxListener() routes by matchPrefix() and tries routes in order", async () => {
  await using mux = muxListener(Deno.listen({ hostname: HOST, port: 0 }));
  const port = portOf(mux.addr);
  await using pings = serve({
    listener: mux.route(matchPrefix("PING")),
    codec: delimited({ delimiter: "\n" }),
    handler: () => enc("PONG"),
  });
  await using rest = serve({
    listener: mux.route(matchAny),
    codec: delimited({ delimiter: "\n" }),
    handler: (line) => enc(`other ${dec(line)}`),
  });
  using a = await Deno.connect({ hostname: HOST, port });
  using b = await Deno.connect({ hostname: HOST, port });
  await a.write(enc("PING\n"));
  await b.write(enc("PIN\n")); // shares a prefix, then differs
  assert.equal(await readLine(a), "PONG");
  assert.equal(await readLine(b), "other PIN");
  assert.equal(pings.stats().sessions + rest.stats().sessions, 2);
});

Deno.test("muxListener() closes and counts a connection that matches no route", async () => {
  const servers = start({ lineMatcher: "prefix" });
  try {
    using http = await Deno.connect({ hostname: HOST, port: servers.port });
    await http.write(enc("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert.ok(await ended(http), "the unmatched connection was closed");
    assert.equal(servers.mux.unmatched, 1);
    // Others are still served.
    using line = await Deno.connect({ hostname: HOST, port: servers.port });
    await line.write(enc("HELLO there\n"));
    assert.equal(await readLine(line), "you said HELLO there");
    assert.equal(servers.mux.unmatched, 1);
  } finally {
    await stop(servers);
  }
});

Deno.test("muxListener() counts a connection that ends before it can be routed", async () => {
  const servers = start({ lineMatcher: "prefix" });
  try {
    using conn = await Deno.connect({ hostname: HOST, port: servers.port });
    await conn.write(enc("HEL")); // undecided, then EOF
    await conn.closeWrite();
    assert.ok(await ended(conn));
    assert.equal(servers.mux.unmatched, 1);
  } finally {
    await stop(servers);
  }
});

Deno.test("muxListener() closes a connection still undecided after maxPeekBytes", async () => {
  await using mux = muxListener(Deno.listen({ hostname: HOST, port: 0 }), {
    maxPeekBytes: 4,
  });
  await using _server = serve({
    listener: mux.route(matchPrefix("LONG-PREFIX")),
    codec: delimited({ delimiter: "\n" }),
    handler: (line) => line,
  });
  using conn = await Deno.connect({ hostname: HOST, port: portOf(mux.addr) });
  await conn.write(enc("LONG-PREFIX and more\n"));
  assert.ok(await ended(conn));
  assert.equal(mux.unmatched, 1);
});

Deno.test("muxListener() closes a connection that sends nothing after timeout", async () => {
  const timeout = 150;
  const servers = start({ timeout });
  try {
    const started = performance.now();
    using silent = await Deno.connect({ hostname: HOST, port: servers.port });
    // A slow one that sends too little to decide is closed as well.
    using slow = await Deno.connect({ hostname: HOST, port: servers.port });
    await slow.write(new Uint8Array([0, 0]));
    assert.ok(await ended(silent), "the silent connection was closed");
    assert.ok(await ended(slow), "the undecided connection was closed");
    const elapsed = performance.now() - started;
    assert.ok(elapsed >= timeout - 5, `closed after ${elapsed} ms`);
    assert.equal(servers.mux.unmatched, 2);
    // A prompt one is served meanwhile and afterwards.
    await using client = await dial({ hostname: HOST, port: servers.port });
    assert.equal(dec(await client.request(enc("x"))), "echo x");
  } finally {
    await stop(servers);
  }
});

Deno.test("muxListener() loses no peeked bytes: requests written one byte at a time", async () => {
  const servers = start({ lineMatcher: "prefix" });
  try {
    const codec = defaultCodec();
    using raw = await Deno.connect({ hostname: HOST, port: servers.port });
    // Two requests back to back, the second longer than maxPeekBytes (64).
    const long = "y".repeat(100);
    await writeBytewise(
      raw,
      new Uint8Array([
        ...codec.encode({ kind: FrameKind.Request, id: 7, payload: enc("hi") }),
        ...codec.encode({ kind: FrameKind.Request, id: 8, payload: enc(long) }),
      ]),
    );
    const first = await readFrame(raw);
    assert.deepEqual([first.kind, first.id, dec(first.payload)], [
      FrameKind.Response,
      7,
      "echo hi",
    ]);
    const second = await readFrame(raw);
    assert.deepEqual([second.kind, second.id, dec(second.payload)], [
      FrameKind.Response,
      8,
      `echo ${long}`,
    ]);

    using line = await Deno.connect({ hostname: HOST, port: servers.port });
    await writeBytewise(line, enc("HELLO bytewise\nHELLO again\n"));
    assert.equal(await readLine(line), "you said HELLO bytewise");
    assert.equal(await readLine(line), "you said HELLO again");

    // And the opposite: far more than maxPeekBytes in the first write.
    using bulk = await Deno.connect({ hostname: HOST, port: servers.port });
    const many = Array.from({ length: 50 }, (_, i) => `HELLO ${i}\n`).join("");
    await bulk.write(enc(many));
    for (let i = 0; i < 50; i++) {
      assert.equal(await readLine(bulk), `you said HELLO ${i}`);
    }
    assert.equal(servers.mux.unmatched, 0);
  } finally {
    await stop(servers);
  }
});

Deno.test("muxListener() closes the shared listener once both servers shut down", async () => {
  const servers = start();
  const { port } = servers;
  {
    await using client = await dial({ hostname: HOST, port });
    assert.equal(dec(await client.request(enc("a"))), "echo a");
  }
  await servers.tcpbutler.shutdown({ timeout: 1000 });
  // One route left: the port still takes connections for it.
  {
    using line = await Deno.connect({ hostname: HOST, port });
    await line.write(enc("still\n"));
    assert.equal(await readLine(line), "you said still");
  }
  await servers.lines.shutdown({ timeout: 1000 });
  // The port is free again: binding it succeeds (a connect to it could be
  // answered by another test's listener, or connect to itself).
  Deno.listen({ hostname: HOST, port }).close();
  assert.throws(() => servers.mux.route(matchAny), {
    name: "ClosedError",
  });
  await servers.mux[Symbol.asyncDispose]();
});

Deno.test("muxListener() close() stops routing and closes every route", async () => {
  const servers = start({ timeout: 60_000 });
  using waiting = await Deno.connect({ hostname: HOST, port: servers.port });
  await waiting.write(new Uint8Array([0])); // undecided
  servers.mux.close();
  assert.ok(await ended(waiting), "the connection being routed was closed");
  // The port is free again: binding it succeeds (a connect to it could be
  // answered by another test's listener, or connect to itself).
  Deno.listen({ hostname: HOST, port: servers.port }).close();
  // The servers' listeners (the routes) are closed: shutdown finds no
  // accept loop to wait for.
  await servers.tcpbutler.shutdown({ timeout: 1000 });
  await servers.lines.shutdown({ timeout: 1000 });
  await servers.mux[Symbol.asyncDispose]();
});

// A delay past 2^31-1 ms (Infinity, or days) must not fire at once.
Deno.test({
  name:
    "muxListener() with timeout Infinity or days keeps a quiet connection open",
  async fn() {
    for (const timeout of [Infinity, 3 * 24 * 3600 * 1000]) {
      const servers = start({ timeout, lineMatcher: "prefix" });
      try {
        using quiet = await Deno.connect({
          hostname: HOST,
          port: servers.port,
        });
        // A full round trip on another connection first.
        await using client = await dial({ hostname: HOST, port: servers.port });
        assert.equal(dec(await client.request(enc("x"))), "echo x");
        await quiet.write(enc("HELLO late\n"));
        assert.equal(await readLine(quiet), "you said HELLO late");
        assert.equal(servers.mux.unmatched, 0);
      } finally {
        await stop(servers);
      }
    }
  },
});
