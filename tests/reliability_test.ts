/**
 * Reliability: faults of the network and of the server process under
 * concurrent load, bad input to the server while a clean client keeps
 * working, and a short soak with random faults. The load generator and the
 * scenarios live in `_load.ts`, shared with `reliability/run.ts`
 * (`deno task reliability`, longer runs and a table of figures).
 *
 * @module
 */

import assert from "node:assert/strict";
import { dial } from "../client/dial.ts";
import { serve, type ServeOptions } from "../server/serve.ts";
import type { Server } from "../server/server.ts";
import {
  ConnectionClosedError,
  FrameTooLargeError,
  ProtocolError,
  ProxyProtocolError,
  SlowConsumerError,
} from "../errors.ts";
import { withTimeout } from "./_process.ts";
import {
  CollectingLogger,
  FAULTS,
  formatErrors,
  mib,
  rollingRestartViolations,
  runFaultScenario,
  runLoad,
  runRollingRestart,
  type SoakResult,
  violations,
} from "./_load.ts";

/** Upper bound for anything a test awaits: a hang fails instead of stalling. */
const HANG_MS = 5_000;
/** Allowed lateness past a deadline (the library sweeps deadlines every 10 ms). */
const SLACK_MS = 250;
/** Heartbeat interval of the scenarios' clients. */
const HEARTBEAT_MS = 400;

// ---------------------------------------------------------------------------
// Faults under load

for (const fault of FAULTS) {
  Deno.test(
    `Client.request() under ${fault}: every request settles once by its deadline with its own reply or a typed error, and the client recovers`,
    async () => {
      const result = await runFaultScenario(fault, {
        concurrency: 16,
        timeout: 1000,
        slack: SLACK_MS,
        faultMs: 1500,
      });
      const summary =
        `${fault}: ${result.load.requests} requests, ${result.load.ok} ok, ${
          formatErrors(result.load.errors)
        }; ${result.notes.join("; ")}`;
      assert.deepEqual(violations(result.load, SLACK_MS), [], summary);
      assert.deepEqual(violations(result.verify, SLACK_MS), [], summary);
      assert.ok(result.recovered, `not recovered after heal: ${summary}`);
      assert.equal(result.verify.ok, result.verify.requests, summary);
      assert.equal(result.pendingAfter, 0, "pending requests left");
      const errors = result.load.errors;
      switch (fault) {
        case "latency":
          // The second half adds 1.2 s to a round trip: those time out.
          assert.ok((errors.TimeoutError ?? 0) > 0, summary);
          break;
        case "slow-read":
          assert.ok((errors.TimeoutError ?? 0) > 0, summary);
          break;
        case "fragment":
          assert.equal(result.load.ok, result.load.requests, summary);
          break;
        case "reset-mid-frame":
          assert.ok((errors.ConnectionClosedError ?? 0) > 0, summary);
          break;
        case "blackhole": {
          const detection = result.detectionMs ?? [];
          assert.equal(detection.length, 2, `both sessions closed: ${summary}`);
          const bound = 2 * HEARTBEAT_MS + SLACK_MS;
          for (const ms of detection) {
            assert.ok(
              ms <= bound,
              `half-open session found after ${
                ms.toFixed(0)
              } ms, over ${bound} ms`,
            );
          }
          break;
        }
        case "process-restart":
          assert.ok(
            (errors.ConnectionClosedError ?? 0) +
                (errors.NoSessionError ?? 0) > 0,
            summary,
          );
          break;
      }
    },
  );
}

Deno.test(
  "Server.shutdown() forced in a rolling restart of three servers under load: no more requests fail than handlers were cut, and every refused request succeeds elsewhere",
  async () => {
    // Each session runs one 10 ms handler at a time and holds the rest, so
    // a 20 ms shutdown timeout is forced with one running and more waiting.
    const result = await runRollingRestart({
      servers: 3,
      shutdownTimeout: 20,
      handlerMs: 10,
      maxConcurrentHandlers: 1,
      concurrency: 16,
      timeout: 2000,
      slack: SLACK_MS,
      settleRequests: 32,
      verifyPerLoop: 2,
      waitBound: HANG_MS,
    });
    const failed = result.load.requests - result.load.ok;
    const summary = `${result.load.requests} requests, ${result.load.ok} ok, ${
      formatErrors(result.load.errors)
    }; ${result.notes.join("; ")}`;
    assert.deepEqual(rollingRestartViolations(result, SLACK_MS), [], summary);
    assert.equal(result.reports.length, 3, summary);
    assert.ok(result.forced >= 1, `no shutdown was forced: ${summary}`);
    assert.ok(result.refused >= 1, `nothing was refused: ${summary}`);
    // Failures are requests whose handler had started and was cut: it may
    // have run, so it is not sent again.
    assert.ok(failed <= result.handlersCut, summary);
    assert.equal(result.lostUnstarted, 0, summary);
    assert.deepEqual(
      Object.keys(result.load.errors).filter((name) =>
        name !== "ConnectionClosedError"
      ),
      [],
      summary,
    );
    // Refused requests were sent again, and none of them failed.
    assert.ok(result.retried >= result.refused, summary);
  },
);

// ---------------------------------------------------------------------------
// Bad input to the server, with a clean client running

const encoder = new TextEncoder();

/** A default-protocol frame header: length (5 + payload), kind, id. */
function header(kind: number, id: number, payloadBytes: number): Uint8Array {
  const out = new Uint8Array(9);
  const view = new DataView(out.buffer);
  view.setUint32(0, 5 + payloadBytes);
  out[4] = kind;
  view.setUint32(5, id);
  return out;
}

function frame(kind: number, id: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(9 + payload.length);
  out.set(header(kind, id, payload.length));
  out.set(payload, 9);
  return out;
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < data.length) {
    offset += await conn.write(data.subarray(offset));
  }
}

/** Reads until the peer closes: `"eof"` (FIN) or `"reset"` (an error). */
async function readToEnd(conn: Deno.Conn): Promise<"eof" | "reset"> {
  const buffer = new Uint8Array(64 * 1024);
  try {
    while ((await conn.read(buffer)) !== null) {
      // Discard.
    }
    return "eof";
  } catch {
    return "reset";
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

function remoteOf(conn: Deno.Conn): string {
  return `127.0.0.1:${(conn.localAddr as Deno.NetAddr).port}`;
}

/** Tracks the server's sessions by remote address, with their close reason. */
class SessionLog {
  readonly #byRemote = new Map<string, number>();
  readonly #ended = new Map<number, PromiseWithResolvers<unknown>>();
  readonly #waiting = new Map<string, PromiseWithResolvers<number>>();

  constructor(server: Server<Uint8Array>) {
    server.addEventListener("connect", (event) => {
      const detail = (event as CustomEvent<{ session: number; remote: string }>)
        .detail;
      this.#byRemote.set(detail.remote, detail.session);
      this.#waiting.get(detail.remote)?.resolve(detail.session);
      this.#waiting.delete(detail.remote);
    });
    server.addEventListener("disconnect", (event) => {
      const detail =
        (event as CustomEvent<{ session: number; reason: unknown }>).detail;
      this.#end(detail.session).resolve(detail.reason);
    });
  }

  #end(session: number): PromiseWithResolvers<unknown> {
    let ended = this.#ended.get(session);
    if (ended === undefined) {
      ended = Promise.withResolvers<unknown>();
      this.#ended.set(session, ended);
    }
    return ended;
  }

  /** The server session id of the connection from `remote`. */
  session(remote: string): number | undefined {
    return this.#byRemote.get(remote);
  }

  /** Resolves with the session id once the server opened a session for `remote`. */
  waitForSession(remote: string): Promise<number> {
    const known = this.#byRemote.get(remote);
    if (known !== undefined) return Promise.resolve(known);
    let waiting = this.#waiting.get(remote);
    if (waiting === undefined) {
      waiting = Promise.withResolvers<number>();
      this.#waiting.set(remote, waiting);
    }
    return waiting.promise;
  }

  /** Resolves with the close reason of the session from `remote`. */
  reason(remote: string): Promise<unknown> {
    const session = this.#byRemote.get(remote);
    assert.ok(session !== undefined, `no server session from ${remote}`);
    return this.#end(session).promise;
  }
}

interface CleanTrafficContext {
  server: Server<Uint8Array>;
  /** Where bad peers connect (the server's port). */
  port: number;
  logger: CollectingLogger;
  sessions: SessionLog;
}

/**
 * Runs `body` (the bad peer) while a clean client with two sessions makes
 * requests on the same server, then asserts that every clean request
 * succeeded and no clean session was closed.
 */
async function withCleanTraffic(
  serveOptions: Partial<ServeOptions<Uint8Array>>,
  body: (context: CleanTrafficContext) => Promise<void>,
  clientPort?: (serverPort: number) => number,
): Promise<void> {
  const logger = new CollectingLogger();
  const server = serve({
    hostname: "127.0.0.1",
    port: 0,
    handler: (payload) => payload,
    logger,
    ...serveOptions,
  });
  const sessions = new SessionLog(server);
  const port = (server.addr as Deno.NetAddr).port;
  try {
    const client = await dial(
      { hostname: "127.0.0.1", port: clientPort?.(port) ?? port },
      {
        sessions: 2,
        requestTimeout: 1000,
        connectTimeout: 3000,
        heartbeat: { interval: 400 },
      },
    );
    let disconnects = 0;
    client.addEventListener("disconnect", () => disconnects++);
    const stop = new AbortController();
    // `reached` resolves once the clean client has `target` successes.
    let ok = 0;
    let target = 32;
    let reached = Promise.withResolvers<void>();
    const load = runLoad(client, {
      concurrency: 8,
      timeout: 1000,
      slack: SLACK_MS,
      signal: stop.signal,
      allowedErrors: [],
      onSettle: (report) => {
        ok = report.ok;
        if (ok >= target) reached.resolve();
      },
    });
    try {
      await withTimeout(reached.promise, HANG_MS, "clean traffic warm-up");
      await body({ server, port, logger, sessions });
      // The server goes on serving the clean client after the bad peer.
      target = ok + 64;
      reached = Promise.withResolvers<void>();
      await withTimeout(reached.promise, HANG_MS, "clean traffic after");
    } finally {
      stop.abort();
      const report = await load;
      const closedDuringTraffic = disconnects;
      await client.close({ timeout: 1000 });
      assert.deepEqual(violations(report, SLACK_MS), []);
      assert.ok(report.requests > 32, `only ${report.requests} clean requests`);
      assert.equal(
        report.ok,
        report.requests,
        `clean client: ${formatErrors(report.errors)}`,
      );
      assert.equal(closedDuringTraffic, 0, "a clean session was closed");
    }
  } finally {
    await server.shutdown({ timeout: 1000 });
  }
}

/** Connects, writes `bytes`, and expects the server to end this connection alone. */
async function sendBadBytes(
  context: CleanTrafficContext,
  bytes: Uint8Array,
  expected: new (...args: never[]) => Error,
  options: { closeWrite?: boolean } = {},
): Promise<void> {
  const conn = await Deno.connect({
    hostname: "127.0.0.1",
    port: context.port,
  });
  try {
    const remote = remoteOf(conn);
    await writeAll(conn, bytes);
    if (options.closeWrite) await conn.closeWrite();
    await withTimeout(readToEnd(conn), HANG_MS, "the server ending the conn");
    const reason = await withTimeout(
      context.sessions.reason(remote),
      HANG_MS,
      "the session's close reason",
    );
    assert.ok(reason instanceof expected, `close reason: ${reason}`);
    const record = await withTimeout(
      context.logger.waitFor((r) =>
        r.properties.remote === remote && r.properties.error instanceof expected
      ),
      HANG_MS,
      "the log line",
    );
    assert.equal(record.level, "warn");
    assert.ok(context.server.stats().protocolErrors >= 1);
  } finally {
    closeQuietly(conn);
  }
}

Deno.test(
  "serve() ends only the connection that sends an oversize length header, with FrameTooLargeError and a log line",
  () =>
    withCleanTraffic({ maxFrameBytes: 1024 }, (context) =>
      sendBadBytes(
        context,
        header(1, 1, 16 * 1024 * 1024),
        FrameTooLargeError,
      )),
);

Deno.test(
  "serve() ends only the connection that sends an unknown frame kind, with ProtocolError and a log line",
  () =>
    withCleanTraffic({}, (context) =>
      sendBadBytes(
        context,
        frame(99, 1, encoder.encode("garbage")),
        ProtocolError,
      )),
);

Deno.test(
  "serve() ends only the connection that sends a length below 5, with ProtocolError and a log line",
  () =>
    withCleanTraffic({}, (context) => {
      const bytes = new Uint8Array([0, 0, 0, 2, 1, 0, 0, 0, 1, 0xde, 0xad]);
      return sendBadBytes(context, bytes, ProtocolError);
    }),
);

Deno.test(
  "serve() ends only the connection that sends a truncated frame then EOF, with ProtocolError and a log line",
  () =>
    withCleanTraffic({}, (context) => {
      const bytes = new Uint8Array(9 + 10);
      bytes.set(header(1, 7, 100));
      return sendBadBytes(context, bytes, ProtocolError, { closeWrite: true });
    }),
);

Deno.test(
  "serve() closes a connection that sends a partial frame then stays silent (slowloris) after idleTimeout",
  () =>
    withCleanTraffic({ idleTimeout: 500 }, async (context) => {
      const conn = await Deno.connect({
        hostname: "127.0.0.1",
        port: context.port,
      });
      try {
        const remote = remoteOf(conn);
        const bytes = new Uint8Array(9 + 10);
        bytes.set(header(1, 7, 100));
        const sent = performance.now();
        await writeAll(conn, bytes);
        await withTimeout(readToEnd(conn), HANG_MS, "idle close");
        const elapsed = performance.now() - sent;
        // idleTimeout, checked every idleTimeout / 4, plus timer slack.
        assert.ok(elapsed >= 400, `closed after ${elapsed.toFixed(0)} ms`);
        assert.ok(elapsed <= 500 + 125 + SLACK_MS, `closed after ${elapsed}`);
        const reason = await context.sessions.reason(remote);
        assert.ok(reason instanceof ConnectionClosedError, String(reason));
        assert.match((reason as Error).message, /idleTimeout/);
        const session = context.sessions.session(remote);
        const record = await withTimeout(
          context.logger.waitFor((r) =>
            r.properties.session === session &&
            r.properties.reason instanceof ConnectionClosedError
          ),
          HANG_MS,
          "the log line",
        );
        assert.ok(record !== undefined);
      } finally {
        closeQuietly(conn);
      }
    }),
);

Deno.test(
  "serve() refuses connections past maxConnections with a log line each, and keeps serving the others",
  () =>
    withCleanTraffic({ maxConnections: 6 }, async (context) => {
      const flood = 20;
      // Two sessions are the clean client's: 4 more fit, 16 are refused.
      const conns = await Promise.all(
        Array.from(
          { length: flood },
          () => Deno.connect({ hostname: "127.0.0.1", port: context.port }),
        ),
      );
      try {
        let refusedLogs = 0;
        await withTimeout(
          context.logger.waitFor((r) =>
            r.level === "warn" && r.properties.maxConnections === 6 &&
            ++refusedLogs >= flood - 4
          ),
          HANG_MS,
          "refusal log lines",
        );
        assert.equal(context.server.stats().refused, flood - 4);
        // Every flood connection asks once: 4 are answered, 16 were closed.
        const outcomes = await withTimeout(
          Promise.all(conns.map(async (conn, i) => {
            const payload = encoder.encode(`flood ${i}`);
            try {
              await writeAll(conn, frame(1, i + 1, payload));
              const buffer = new Uint8Array(64);
              let got = 0;
              while (got < 9 + payload.length) {
                const n = await conn.read(buffer.subarray(got));
                if (n === null) return "closed";
                got += n;
              }
              return buffer[4] === 2 ? "answered" : "other";
            } catch {
              return "closed";
            }
          })),
          HANG_MS,
          "flood connections",
        );
        assert.equal(outcomes.filter((o) => o === "answered").length, 4);
        assert.equal(outcomes.filter((o) => o === "closed").length, flood - 4);
      } finally {
        for (const conn of conns) closeQuietly(conn);
      }
    }),
);

Deno.test(
  "serve() cuts off a peer that sends requests but never reads replies (writeTimeout) with SlowConsumerError",
  () =>
    withCleanTraffic({ writeTimeout: 300 }, async (context) => {
      const conn = await Deno.connect({
        hostname: "127.0.0.1",
        port: context.port,
      });
      const remote = remoteOf(conn);
      const payload = new Uint8Array(64 * 1024).fill(7);
      // Bounded: at most 2000 × 64 KiB; ends when the server cuts us off.
      const writer = (async () => {
        for (let i = 1; i <= 2000; i++) {
          await writeAll(conn, frame(1, i, payload));
        }
      })().catch(() => {});
      try {
        const session = await withTimeout(
          context.sessions.waitForSession(remote),
          HANG_MS,
          "the session",
        );
        const reason = await withTimeout(
          context.sessions.reason(remote),
          HANG_MS,
          "the cut-off",
        );
        assert.ok(reason instanceof SlowConsumerError, String(reason));
        const record = await withTimeout(
          context.logger.waitFor((r) =>
            r.level === "warn" && r.properties.session === session
          ),
          HANG_MS,
          "the log line",
        );
        assert.match(record.message, /write has not completed/);
      } finally {
        closeQuietly(conn);
        await writer;
      }
    }),
);

/**
 * A TCP forwarder that writes a valid PROXY v1 header upstream before
 * piping, so that a normal client can talk to a `proxyProtocol: true` server.
 */
function startProxyHeaderForwarder(target: number): {
  port: number;
  close(): Promise<void>;
} {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  const pipe = async (from: Deno.Conn, to: Deno.Conn) => {
    const buffer = new Uint8Array(16 * 1024);
    try {
      for (;;) {
        const n = await from.read(buffer);
        if (n === null) break;
        await writeAll(to, buffer.subarray(0, n));
      }
    } catch {
      // Closed.
    }
    closeQuietly(from);
    closeQuietly(to);
  };
  const accept = (async () => {
    for (;;) {
      let down: Deno.Conn;
      try {
        down = await listener.accept();
      } catch {
        return;
      }
      conns.add(down);
      const task = (async () => {
        let up: Deno.Conn;
        try {
          up = await Deno.connect({ hostname: "127.0.0.1", port: target });
        } catch {
          closeQuietly(down);
          return;
        }
        conns.add(up);
        const d = down.remoteAddr as Deno.NetAddr;
        await writeAll(
          up,
          encoder.encode(
            `PROXY TCP4 ${d.hostname} 127.0.0.1 ${d.port} ${target}\r\n`,
          ),
        );
        await Promise.all([pipe(down, up), pipe(up, down)]);
      })().catch(() => {});
      tasks.add(task);
      task.finally(() => tasks.delete(task));
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async close() {
      listener.close();
      for (const conn of conns) closeQuietly(conn);
      await accept;
      await Promise.all(tasks);
    },
  };
}

Deno.test({
  name:
    "serve({ proxyProtocol: true }) rejects only the connection with a malformed PROXY header, with ProxyProtocolError and a log line",
  fn: async () => {
    let forwarder: ReturnType<typeof startProxyHeaderForwarder> | undefined;
    try {
      await withCleanTraffic(
        { proxyProtocol: { timeout: 1000 } },
        async (context) => {
          const conn = await Deno.connect({
            hostname: "127.0.0.1",
            port: context.port,
          });
          try {
            const remote = remoteOf(conn);
            await writeAll(
              conn,
              encoder.encode("PROXY TCP4 not-an-address\r\nhello"),
            );
            await withTimeout(readToEnd(conn), HANG_MS, "the rejection");
            const record = await withTimeout(
              context.logger.waitFor((r) =>
                r.properties.remote === remote &&
                r.properties.error instanceof ProxyProtocolError
              ),
              HANG_MS,
              "the log line",
            );
            assert.equal(record.level, "warn");
            assert.ok(context.server.stats().rejected >= 1);
          } finally {
            closeQuietly(conn);
          }
        },
        (serverPort) => {
          forwarder = startProxyHeaderForwarder(serverPort);
          return forwarder.port;
        },
      );
    } finally {
      await forwarder?.close();
    }
  },
});

// ---------------------------------------------------------------------------
// Soak

/** RSS growth allowed over the soak (after a 2 s warm-up). */
const RSS_GROWTH_BOUND = 64 * 1024 * 1024;

const RUNNER = new URL("../reliability/run.ts", import.meta.url);

// The soak runs in its own `deno run` process: under `deno test` the V8 heap
// swings by hundreds of MiB between collections (measured: RSS 270 → 440 MiB
// in 10 s, heap used 110–280 MiB, against a flat 131–137 MiB for the same
// load under `deno run`), so RSS read here would say nothing. The child
// exposes `gc` and reads RSS after a full collection, and it exits only once
// everything it opened is closed (a leak makes it hang, and this test fail).
Deno.test(
  "Client under a 10 s soak of random faults: every request settles in time with its own reply, RSS grows < 64 MiB",
  async () => {
    const output = await withTimeout(
      (signal) =>
        new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "--allow-net=127.0.0.1",
            "--v8-flags=--expose-gc",
            RUNNER.pathname,
            "--soak-only",
            "--duration",
            "10",
            "--json",
          ],
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
          signal,
        }).output(),
      60_000,
      "the soak process",
    );
    const stdout = new TextDecoder().decode(output.stdout);
    const stderr = new TextDecoder().decode(output.stderr);
    const last = stdout.trim().split("\n").at(-1) ?? "";
    const { soak, failures } = JSON.parse(last) as {
      soak: SoakResult;
      failures: string[];
    };
    const summary = `${stdout}\n${stderr}`;
    assert.deepEqual(failures, [], summary);
    assert.deepEqual(violations(soak.load, SLACK_MS), [], summary);
    assert.deepEqual(violations(soak.verify, SLACK_MS), [], summary);
    assert.ok(soak.load.ok > 0, summary);
    assert.ok(soak.recovered, `not recovered: ${summary}`);
    assert.equal(soak.pendingAfter, 0, summary);
    assert.ok(
      soak.rssEnd - soak.rssStart < RSS_GROWTH_BOUND,
      `RSS ${mib(soak.rssStart)} → ${mib(soak.rssEnd)}: ${summary}`,
    );
    assert.equal(output.code, 0, summary);
  },
);
