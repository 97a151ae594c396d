import assert from "node:assert/strict";
import {
  type Client,
  type ClientEventDetail,
  ConnectionError,
  dial,
  type DialOptions,
  isRetryableError,
} from "../mod.ts";
import {
  command,
  resp,
  respCall,
  RespError,
  type RespValue,
} from "../framing/resp.ts";
import { hasRedis, redisTestName, startRedis } from "./_redis.ts";
import { startProcess, withTimeout } from "./_process.ts";

const ignore = !hasRedis();
const bytes = (text: string) => new TextEncoder().encode(text);
const text = (value: RespValue) => {
  assert.ok(
    value instanceof Uint8Array,
    `expected a bulk string, got ${value}`,
  );
  return new TextDecoder().decode(value);
};

function dialRedis(
  address: string,
  options: DialOptions<RespValue> = {},
): Promise<Client<RespValue>> {
  return dial(address, resp(), {
    correlation: "fifo",
    sessions: 4,
    connectTimeout: 5000,
    reconnect: { initial: 20, max: 200 },
    ...options,
  });
}

/** Resolves once `count` sessions of `client` are ready (events, no polling). */
function readySessions(
  client: Client<RespValue>,
  count: number,
): Promise<void> {
  return withTimeout(
    new Promise<void>((resolve) => {
      const check = () => {
        if (client.stats().sessions.ready >= count) {
          client.removeEventListener("ready", check);
          resolve();
        }
      };
      client.addEventListener("ready", check);
      check();
    }),
    5000,
    `${count} ready sessions`,
  );
}

/** Resolves after `count` more "ready" events. */
function nextReadyEvents(
  client: Client<RespValue>,
  count: number,
): Promise<ClientEventDetail[]> {
  const seen: ClientEventDetail[] = [];
  return withTimeout(
    new Promise<ClientEventDetail[]>((resolve) => {
      const onReady = (event: Event) => {
        seen.push((event as CustomEvent<ClientEventDetail>).detail);
        if (seen.length >= count) {
          client.removeEventListener("ready", onReady);
          resolve(seen);
        }
      };
      client.addEventListener("ready", onReady);
    }),
    10_000,
    `${count} ready events`,
  );
}

Deno.test({
  name: redisTestName("dial() with resp() gets PONG from redis-server"),
  ignore,
  async fn() {
    await using redis = await startRedis();
    await using client = await dialRedis(redis.address);
    assert.equal(await client.request(command("PING")), "PONG");
    assert.deepEqual(
      await client.request(command("PING", "hello")),
      bytes("hello"),
    );
  },
});

Deno.test({
  name: redisTestName("dial() with resp() sets and gets values"),
  ignore,
  async fn() {
    await using redis = await startRedis();
    await using client = await dialRedis(redis.address);
    assert.equal(await respCall(client, ["SET", "greeting", "héllo"]), "OK");
    assert.equal(text(await respCall(client, ["GET", "greeting"])), "héllo");
    const binary = new Uint8Array([0, 13, 10, 255, 36, 42]);
    await respCall(client, ["SET", "binary", binary]);
    assert.deepEqual(await respCall(client, ["GET", "binary"]), binary);
    assert.equal(await respCall(client, ["GET", "missing"]), null);
    assert.equal(await respCall(client, ["INCRBY", "n", 41]), 41);
    assert.equal(await respCall(client, ["INCR", "n"]), 42);
    await respCall(client, ["RPUSH", "list", "a", "b", "c"]);
    assert.deepEqual(
      (await respCall(client, ["LRANGE", "list", 0, -1]) as RespValue[]).map(
        text,
      ),
      ["a", "b", "c"],
    );
    const big = new Uint8Array(1024 * 1024).map((_, i) => i % 253);
    await respCall(client, ["SET", "big", big]);
    assert.deepEqual(await respCall(client, ["GET", "big"]), big);
  },
});

Deno.test({
  name: redisTestName(
    "dial() with resp() answers 10,000 pipelined commands across 4 sessions in order per key",
  ),
  ignore,
  async fn() {
    await using redis = await startRedis();
    await using client = await dialRedis(redis.address, {
      requestTimeout: 20_000,
    });
    await readySessions(client, 4);
    const sessions = client.sessions;
    assert.equal(sessions.length, 4);
    const keys = 100;
    const perKey = 100;
    // Each key's commands go to one session, so Redis sees them in order;
    // all 10,000 are sent without waiting for any reply.
    const pushes: Promise<RespValue>[] = [];
    for (let i = 0; i < perKey; i++) {
      for (let k = 0; k < keys; k++) {
        pushes.push(
          client.request(command("RPUSH", `list:${k}`, i), {
            session: sessions[k % 4]!,
          }),
        );
      }
    }
    const lengths = await Promise.all(pushes);
    assert.equal(lengths.length, keys * perKey);
    lengths.forEach((length, n) => {
      // The n-th request is push number floor(n / keys) of its key.
      assert.equal(length, Math.floor(n / keys) + 1, `reply ${n}`);
    });
    // And a round-robin burst of reads: every reply matches its own request.
    const reads = await Promise.all(
      Array.from(
        { length: keys },
        (_, k) => client.request(command("LINDEX", `list:${k}`, k % perKey)),
      ),
    );
    reads.forEach((value, k) => assert.equal(text(value), String(k)));
    for (const k of [0, 37, 99]) {
      const list = await respCall(client, ["LRANGE", `list:${k}`, 0, -1]);
      assert.deepEqual(
        (list as RespValue[]).map(text),
        Array.from({ length: perKey }, (_, i) => String(i)),
      );
    }
    const stats = client.stats();
    assert.equal(stats.pending, 0);
    assert.equal(stats.lateReplies, 0);
    assert.ok(sessions.every((session) => session.stats().messagesOut > 2000));
  },
});

Deno.test({
  name: redisTestName(
    "respCall() rejects with a typed RespError on a Redis error reply",
  ),
  ignore,
  async fn() {
    await using redis = await startRedis();
    await using client = await dialRedis(redis.address);
    await respCall(client, ["SET", "word", "hello"]);
    await assert.rejects(
      respCall(client, ["INCR", "word"]),
      (error: unknown) =>
        error instanceof RespError && error.code === "ERR" &&
        /not an integer/.test(error.message) && !isRetryableError(error),
    );
    await assert.rejects(
      respCall(client, ["LPUSH", "word", "x"]),
      (error: unknown) =>
        error instanceof RespError && error.code === "WRONGTYPE",
    );
    // Through client.request() the error reply is a RespError too: a value
    // today, a rejection once the codec's replyError hook is used.
    const outcome = await client.request(command("INCR", "word")).then(
      (value) => value,
      (error: unknown) => error,
    );
    assert.ok(outcome instanceof RespError);
    // The session is fine afterwards.
    assert.equal(text(await respCall(client, ["GET", "word"])), "hello");
  },
});

Deno.test({
  name: redisTestName(
    "dial() authenticates each session with AUTH in onConnect",
  ),
  ignore,
  async fn() {
    const password = "s3cret-" + crypto.randomUUID();
    await using redis = await startRedis({ password });
    const authenticated: number[] = [];
    await using client = await dialRedis(redis.address, {
      onConnect: async (session, { signal }) => {
        assert.equal(
          await respCall(session, ["AUTH", password], { signal }),
          "OK",
        );
        authenticated.push(session.id);
      },
    });
    await readySessions(client, 4);
    assert.equal(authenticated.length, 4);
    for (const session of client.sessions) {
      assert.equal(
        await client.request(command("PING"), { session }),
        "PONG",
      );
    }
    // Without AUTH, Redis refuses.
    await using anonymous = await dialRedis(redis.address, { sessions: 1 });
    await assert.rejects(
      respCall(anonymous, ["PING"]),
      (error: unknown) => error instanceof RespError && error.code === "NOAUTH",
    );
  },
});

Deno.test({
  name: redisTestName(
    "dial() rejects with ConnectionError when AUTH in onConnect fails",
  ),
  ignore,
  async fn() {
    await using redis = await startRedis({ password: "right" });
    const errors: unknown[] = [];
    await assert.rejects(
      dialRedis(redis.address, {
        sessions: 2,
        reconnect: { maxAttempts: 1 },
        onConnect: async (session) => {
          try {
            await respCall(session, ["AUTH", "wrong"]);
          } catch (error) {
            errors.push(error);
            throw error;
          }
        },
      }),
      (error: unknown) => {
        assert.ok(error instanceof ConnectionError);
        // ConnectionError ← RetryExhaustedError ← the RespError from onConnect.
        const cause = (error.cause as Error | undefined)?.cause;
        assert.ok(cause instanceof RespError, String(cause));
        assert.equal(cause.code, "WRONGPASS");
        return true;
      },
    );
    assert.equal(errors.length, 2);
  },
});

Deno.test({
  name: redisTestName(
    "Client reconnects by itself after redis-server is killed and restarted",
  ),
  ignore,
  async fn() {
    await using redis = await startRedis();
    await using client = await dialRedis(redis.address);
    await readySessions(client, 4);
    assert.equal(await respCall(client, ["SET", "before", "1"]), "OK");

    // Traffic keeps flowing while the server goes down and comes back.
    let running = true;
    let succeeded = 0;
    const failures: unknown[] = [];
    const traffic = (async () => {
      while (running) {
        try {
          await client.request(command("INCR", "counter"));
          succeeded++;
        } catch (error) {
          failures.push(error);
        }
      }
    })();
    const disconnected = new Promise<void>((resolve) =>
      client.addEventListener("disconnect", () => resolve(), { once: true })
    );

    await redis.stop("SIGKILL");
    await withTimeout(disconnected, 5000, "a disconnect event");
    const ready = nextReadyEvents(client, 4);
    await redis.restart();
    const events = await ready;
    assert.equal(events.length, 4);
    running = false;
    await withTimeout(traffic, 10_000, "the traffic loop");

    // Commands in flight when the server died failed with retryable errors
    // (ConnectionClosedError); none was silently lost or hung.
    for (const error of failures) {
      assert.ok(isRetryableError(error), String(error));
    }
    assert.ok(succeeded > 0);
    // Redis came back empty; every session works.
    assert.equal(await respCall(client, ["GET", "before"]), null);
    for (const session of client.sessions) {
      assert.equal(
        await respCall(client, ["SET", `after:${session.id}`, "ok"]),
        "OK",
      );
      assert.equal(
        await client.request(command("PING"), { session }),
        "PONG",
      );
    }
    assert.ok(client.stats().reconnects >= 4);
  },
});

Deno.test({
  name: redisTestName("examples/redis.ts runs against redis-server"),
  ignore,
  async fn() {
    const password = "example-password";
    await using redis = await startRedis({ password });
    // The last line it prints is "stats: …"; startProcess bounds the wait.
    await using example = await startProcess([
      "deno",
      "run",
      "--allow-net=127.0.0.1",
      new URL("../examples/redis.ts", import.meta.url).pathname,
      "--port",
      String(redis.port),
      "--password",
      password,
    ], { readyLine: /^stats: / });
    const status = await example.status;
    const stdout = example.stdoutLines.join("\n");
    assert.equal(status.code, 0, stdout + example.stderrLines.join("\n"));
    assert.match(stdout, /^PING -> PONG$/m);
    assert.match(stdout, /^GET -> "hello"$/m);
    assert.match(stdout, /^1000 x INCR -> highest 1000 /m);
    assert.match(stdout, /^INCR on a string -> \(error ERR\)/m);
  },
});
