import assert from "node:assert/strict";
import { createServer } from "node:net";
import { dial } from "../client/dial.ts";
import {
  NodeListener,
  NodeSocketTransport,
  startListening,
} from "../transport/_node_socket.ts";
import {
  listenInherited,
  systemdListeners,
} from "../transport/socket_activation.ts";
import { defaultCodec, FrameKind } from "../protocol.ts";
import { dec, enc, HOST } from "./_loopback.ts";
import { startProcess } from "./_process.ts";
import { pattern, readExactly, writeAll } from "./_bytes.ts";

// node:net sockets live outside Deno's resource table, so the sanitizers
// cannot see them; the loopback tests below close everything they open and
// check that the port refuses connections afterwards.

/** Whether `cmd` runs here. */
async function runs(cmd: string, args: string[]): Promise<boolean> {
  try {
    const { success } = await new Deno.Command(cmd, {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch {
    return false;
  }
}

const hasPython = await runs("python3", ["-c", "pass"]);
const hasSystemdActivate = await runs("systemd-socket-activate", [
  "--version",
]);

/**
 * Binds a listening TCP socket on 127.0.0.1 port 0, moves it to fd 3 and
 * execs argv[1:] with LISTEN_FDS=1 and LISTEN_PID set to its own pid (exec
 * keeps the pid): what systemd does for a .socket unit with Accept=no.
 */
const PYTHON_ACTIVATE = `
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen(128)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
    s.close()
os.set_inheritable(3, True)
env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
env.pop("LISTEN_FDNAMES", None)
os.execve(sys.argv[1], sys.argv[1:], env)
`;

/** The socket-activated server the tests start: echo, default protocol. */
function childScript(): string {
  const url = (path: string) => new URL(path, import.meta.url).href;
  return `
import { systemdListeners } from ${
    JSON.stringify(url("../transport/socket_activation.ts"))
  };
import { serve } from ${JSON.stringify(url("../server/serve.ts"))};
const encoder = new TextEncoder();
const listeners = await systemdListeners();
const servers = listeners.map((listener) => serve({
  listener,
  handler: (payload, { session }) => {
    if (new TextDecoder().decode(payload) !== "whoami") return payload;
    const a = session.remoteAddr;
    return encoder.encode(a.transport === "tcp" ? a.hostname + ":" + a.port : a.transport);
  },
}));
for (const listener of listeners) {
  const a = listener.addr;
  console.log(a.transport === "tcp"
    ? "listening " + a.hostname + ":" + a.port
    : "listening unix fd=" + listener.fd + " name=" + (listener.name ?? ""));
}
Deno.addSignalListener("SIGTERM", async () => {
  await Promise.all(servers.map((server) => server.shutdown({ timeout: 2000 })));
  console.log("stopped");
  Deno.exit(0);
});
`;
}

/** Writes the child script to a temporary directory. */
async function tempScript(): Promise<
  AsyncDisposable & { dir: string; path: string }
> {
  const dir = await Deno.makeTempDir({ prefix: "tcpbutler_activation_" });
  const path = `${dir}/activated_server.ts`;
  await Deno.writeTextFile(path, childScript());
  return {
    dir,
    path,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

function denoRun(script: string): string[] {
  return [
    Deno.execPath(),
    "run",
    "--no-config",
    "--allow-env=LISTEN_PID,LISTEN_FDS,LISTEN_FDNAMES",
    script,
  ];
}

Deno.test({
  name:
    "systemdListeners() serves default-protocol requests on a TCP socket inherited as fd 3" +
    (hasPython ? "" : " (ignored: python3 not found)"),
  ignore: !hasPython,
  async fn() {
    await using script = await tempScript();
    await using child = await startProcess([
      "python3",
      "-c",
      PYTHON_ACTIVATE,
      ...denoRun(script.path),
    ]);
    const hostname = child.match.groups!.hostname!;
    const port = Number(child.match.groups!.port);
    assert.equal(hostname, HOST);
    assert.ok(port > 0);
    {
      await using client = await dial({ hostname, port }, { sessions: 2 });
      const replies = await Promise.all(
        Array.from({ length: 50 }, (_, i) => client.request(enc(`r${i}`))),
      );
      assert.deepEqual(
        replies.map(dec),
        Array.from({ length: 50 }, (_, i) => `r${i}`),
      );
      const big = pattern(0, 1 << 20);
      assert.deepEqual(await client.request(big), big);
      assert.deepEqual(
        await client.request(new Uint8Array(0)),
        new Uint8Array(0),
      );
    }
    {
      // The accepted socket's addresses are adapted: the server sees our port.
      using raw = await Deno.connect({ hostname, port });
      const codec = defaultCodec();
      await writeAll(
        raw,
        codec.encode({
          kind: FrameKind.Request,
          id: 1,
          payload: enc("whoami"),
        }),
      );
      const length = new DataView((await readExactly(raw, 4)).buffer)
        .getUint32(0);
      const rest = await readExactly(raw, length);
      assert.equal(rest[0], FrameKind.Response);
      assert.equal(dec(rest.subarray(5)), `${HOST}:${raw.localAddr.port}`);
    }
    const status = await child.kill("SIGTERM");
    assert.equal(status.code, 0, child.stderrLines.join("\n"));
    assert.ok(child.stdoutLines.includes("stopped"));
    // The child held the only copy of the socket: the port is closed now.
    await assert.rejects(
      Deno.connect({ hostname, port }),
      Deno.errors.ConnectionRefused,
    );
  },
});

Deno.test({
  name:
    "systemdListeners() serves a Unix socket passed by systemd-socket-activate, with its LISTEN_FDNAMES name" +
    (hasSystemdActivate ? "" : " (ignored: systemd-socket-activate not found)"),
  ignore: !hasSystemdActivate,
  async fn() {
    await using script = await tempScript();
    const path = `${script.dir}/echo.sock`;
    // systemd-socket-activate binds, reports on stderr, and execs the
    // command at the first connection: merge stderr to see it bound.
    const command = [
      "systemd-socket-activate",
      "--listen",
      path,
      "--fdname=echo",
      "--",
      ...denoRun(script.path),
    ].map((arg) => `'${arg.replaceAll("'", "'\\''")}'`).join(" ");
    await using child = await startProcess(
      ["sh", "-c", `exec ${command} 2>&1`],
      { readyLine: /^Listening on .* as 3\.$/ },
    );
    {
      // This first connection starts the server.
      await using client = await dial({ path });
      assert.equal(dec(await client.request(enc("hello"))), "hello");
      await child.waitForLine(/^listening unix fd=3 name=echo$/);
      const replies = await Promise.all(
        Array.from({ length: 20 }, (_, i) => client.request(enc(`u${i}`))),
      );
      assert.deepEqual(
        replies.map(dec),
        Array.from({ length: 20 }, (_, i) => `u${i}`),
      );
      assert.equal(dec(await client.request(enc("whoami"))), "unix");
    }
    const status = await child.kill("SIGTERM");
    assert.equal(status.code, 0, child.stdoutLines.join("\n"));
    await assert.rejects(
      Deno.connect({ transport: "unix", path }),
      Deno.errors.ConnectionRefused,
    );
  },
});

Deno.test("systemdListeners() throws a TypeError when the process is not socket-activated", async (t) => {
  const names = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];
  const saved = names.map((name) => Deno.env.get(name));
  const set = (pid: string | undefined, fds: string | undefined) => {
    for (const [name, value] of [["LISTEN_PID", pid], ["LISTEN_FDS", fds]]) {
      if (value === undefined) Deno.env.delete(name!);
      else Deno.env.set(name!, value);
    }
  };
  const me = String(Deno.pid);
  try {
    for (
      const [what, pid, fds, message] of [
        ["nothing set", undefined, undefined, /not socket-activated/],
        ["no LISTEN_PID", undefined, "1", /not socket-activated/],
        ["no LISTEN_FDS", me, undefined, /not socket-activated/],
        ["another pid", String(Deno.pid + 1), "1", /is not this process/],
        ["a bad pid", "x", "1", /is not this process/],
        ["zero fds", me, "0", /LISTEN_FDS "0"/],
        ["a bad count", me, "two", /LISTEN_FDS "two"/],
        ["a negative count", me, "-1", /LISTEN_FDS "-1"/],
      ] as const
    ) {
      await t.step(what, async () => {
        set(pid, fds);
        await assert.rejects(systemdListeners(), (error: unknown) => {
          assert.ok(error instanceof TypeError);
          assert.match(error.message, message);
          return true;
        });
      });
    }
  } finally {
    names.forEach((name, i) => {
      const value = saved[i];
      if (value === undefined) Deno.env.delete(name);
      else Deno.env.set(name, value);
    });
  }
});

Deno.test("listenInherited() validates its options and rejects a descriptor that is not a socket", async () => {
  await assert.rejects(listenInherited({ fd: -1 }), RangeError);
  await assert.rejects(listenInherited({ fd: 3.5 }), RangeError);
  await assert.rejects(listenInherited({ backlog: -1 }), RangeError);
  const reason = new Error("stop");
  await assert.rejects(
    listenInherited({ signal: AbortSignal.abort(reason) }),
    (error) => error === reason,
  );
  // A descriptor number far past anything open.
  await assert.rejects(
    listenInherited({ fd: 1_000_000 }),
    Deno.errors.BadResource,
  );
});

// The adapter shared by listenInherited() and listenMutualTls(), on a plain
// node:net server bound to port 0 (the same server options as
// listenInherited(), but listening on a port instead of a descriptor).

async function listenLoopback(
  backlog = 128,
): Promise<NodeListener<NodeSocketTransport> & { addr: Deno.NetAddr }> {
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
  await startListening(server, { port: 0, host: HOST }, undefined);
  const address = server.address();
  assert.ok(typeof address === "object" && address !== null);
  const listener = new NodeListener<NodeSocketTransport>(server, {
    transport: "tcp",
    hostname: address.address,
    port: address.port,
  }, backlog);
  server.on("connection", (socket) => {
    socket.on("error", () => {});
    listener.offer(new NodeSocketTransport(socket));
  });
  return listener as NodeListener<NodeSocketTransport> & {
    addr: Deno.NetAddr;
  };
}

/** Closes the listener; once it reports closed, its port refuses connections. */
async function closeAndCheck(
  listener: { addr: Deno.NetAddr; close(): void; closed: Promise<void> },
) {
  listener.close();
  await listener.closed;
  await assert.rejects(
    Deno.connect({ hostname: HOST, port: listener.addr.port }),
    Deno.errors.ConnectionRefused,
  );
}

Deno.test("NodeSocketTransport round-trips data, half-closes, and reports addresses", async () => {
  const listener = await listenLoopback();
  const port = listener.addr.port;
  using client = await Deno.connect({ hostname: HOST, port });
  using conn = await listener.accept();
  assert.deepEqual(conn.localAddr, { transport: "tcp", hostname: HOST, port });
  assert.deepEqual(conn.remoteAddr, {
    transport: "tcp",
    hostname: HOST,
    port: client.localAddr.port,
  });

  const request = pattern(0, 300_000);
  const [, echoed] = await Promise.all([
    writeAll(client, request),
    (async () => {
      const got = await readExactly(conn, request.length);
      assert.equal(await conn.write(got), got.length);
    })().then(() => readExactly(client, request.length)),
  ]);
  assert.deepEqual(echoed, request);

  await client.closeWrite();
  assert.equal(await conn.read(new Uint8Array(8)), null);
  assert.equal(await conn.read(new Uint8Array(8)), null);
  await conn.write(enc("bye"));
  assert.equal(dec(await readExactly(client, 3)), "bye");
  await conn.closeWrite();
  await assert.rejects(conn.write(enc("x")), Deno.errors.BrokenPipe);
  assert.equal(await client.read(new Uint8Array(8)), null);
  conn.close();
  conn.close(); // idempotent
  await assert.rejects(conn.read(new Uint8Array(1)), Deno.errors.BadResource);
  await assert.rejects(conn.write(new Uint8Array(1)), Deno.errors.BadResource);
  await closeAndCheck(listener);
});

Deno.test("NodeSocketTransport.read() pushes back: a client writing to an unread connection stalls", async () => {
  const listener = await listenLoopback();
  using client = await Deno.connect({
    hostname: HOST,
    port: listener.addr.port,
  });
  using conn = await listener.accept();
  // One read, so the socket is resumed once and then paused by the adapter.
  await client.write(enc("x"));
  assert.equal(await conn.read(new Uint8Array(1)), 1);

  const total = 64 * 1024 * 1024;
  const chunk = 64 * 1024;
  const source = pattern(0, chunk + 251);
  let written = 0;
  let writes = 0;
  const writing = (async () => {
    while (written < total) {
      const start = written % 251;
      await writeAll(client, source.subarray(start, start + chunk));
      written += chunk;
      writes++;
    }
  })();
  writing.catch(() => {});
  // Nothing is read. The writer stalls once the kernel buffers of both ends
  // are full (a few MiB on loopback); without backpressure the server takes
  // everything into memory and all 64 MiB go through. Each turn lets the
  // writer run; a write stuck for 10 turns of 20 ms is stalled (a slow
  // machine can only make this pass wrongly, never fail wrongly).
  let stuck = 0;
  for (let turn = 0; turn < 500 && written < total && stuck < 10; turn++) {
    const before = writes;
    await new Promise((resolve) => setTimeout(resolve, 20));
    stuck = writes === before ? stuck + 1 : 0;
  }
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
});

Deno.test("NodeSocketTransport.write() resolves once the bytes are flushed, so its buffer can be reused", async () => {
  const listener = await listenLoopback();
  using client = await Deno.connect({
    hostname: HOST,
    port: listener.addr.port,
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
});

Deno.test("NodeSocketTransport.close() interrupts a pending read; a gone peer ends reads and fails writes", async () => {
  const listener = await listenLoopback();
  const port = listener.addr.port;
  {
    using _client = await Deno.connect({ hostname: HOST, port });
    const conn = await listener.accept();
    const reading = conn.read(new Uint8Array(8));
    await assert.rejects(conn.read(new Uint8Array(8)), Deno.errors.Busy);
    conn.close();
    await assert.rejects(reading, Deno.errors.Interrupted);
  }
  {
    const client = await Deno.connect({ hostname: HOST, port });
    using conn = await listener.accept();
    client.close();
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
});

Deno.test("NodeListener closes connections past its backlog and rejects accept() once closed", async () => {
  const listener = await listenLoopback(1);
  const port = listener.addr.port;
  using first = await Deno.connect({ hostname: HOST, port });
  using second = await Deno.connect({ hostname: HOST, port });
  // Nobody accepts: the first waits, the second is closed and counted.
  assert.equal(await second.read(new Uint8Array(1)).catch(() => null), null);
  assert.equal(listener.dropped, 1);
  const accepted = await listener.accept();
  assert.equal(accepted.remoteAddr.transport, "tcp");
  assert.equal(
    (accepted.remoteAddr as Deno.NetAddr).port,
    first.localAddr.port,
  );
  accepted.close();
  const pending = listener.accept();
  listener.close();
  await assert.rejects(pending, Deno.errors.BadResource);
  await assert.rejects(listener.accept(), Deno.errors.BadResource);
  const served: unknown[] = [];
  for await (const conn of listener) served.push(conn);
  assert.equal(served.length, 0);
  await closeAndCheck(listener);
});
