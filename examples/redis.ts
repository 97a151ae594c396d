/**
 * Talk to Redis with tcpbutler: the RESP2 codec, in-order (fifo) replies,
 * a pool of sessions that reconnects by itself, AUTH on every connect.
 *
 * Start a server (`redis-server --port 6379`) and run:
 *
 * ```sh
 * deno run --allow-net examples/redis.ts [--hostname 127.0.0.1] [--port 6379] [--password secret] [--sessions 4]
 * ```
 *
 * @module
 */

// A command-line program: it prints.
// deno-lint-ignore-file no-console

import { parseArgs } from "node:util";
import { dial } from "../mod.ts";
import {
  command,
  resp,
  respCall,
  RespError,
  type RespValue,
} from "../framing/resp.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    hostname: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "6379" },
    password: { type: "string" },
    sessions: { type: "string", default: "4" },
  },
});

const password = values.password;
await using redis = await dial(
  { hostname: values.hostname, port: Number(values.port) },
  resp(),
  {
    correlation: "fifo", // Redis answers each connection in order, no ids
    sessions: Number(values.sessions),
    connectTimeout: 5000,
    // Runs on every (re)connect, before the session takes requests.
    ...(password === undefined ? {} : {
      onConnect: async (session, { signal }) => {
        await respCall(session, ["AUTH", password], { signal });
      },
    }),
  },
);

const show = (value: RespValue): string =>
  value instanceof Uint8Array
    ? JSON.stringify(new TextDecoder().decode(value))
    : Array.isArray(value)
    ? `[${value.map(show).join(", ")}]`
    : value instanceof RespError
    ? `(error) ${value.message}`
    : String(value);

const key = `tcpbutler:example:${crypto.randomUUID()}`;
console.log("PING ->", show(await respCall(redis, ["PING"])));
console.log("SET ->", show(await respCall(redis, ["SET", key, "hello"])));
console.log("GET ->", show(await respCall(redis, ["GET", key])));

// Pipelining: send many commands without waiting; replies come back in order
// on each session and resolve their own promises.
const counter = `${key}:counter`;
const started = performance.now();
const replies = await Promise.all(
  Array.from({ length: 1000 }, () => redis.request(command("INCR", counter))),
);
// The sessions run side by side, so the last reply need not be the highest.
const highest = Math.max(...replies.map((reply) => Number(reply)));
console.log(
  `1000 x INCR -> highest ${highest} in ${
    (performance.now() - started).toFixed(1)
  } ms`,
);

// An error reply is a RespError: request() rejects with it, respCall() throws it.
try {
  await respCall(redis, ["INCR", key]);
} catch (error) {
  if (!(error instanceof RespError)) throw error;
  console.log("INCR on a string ->", `(error ${error.code})`, error.message);
}

await respCall(redis, ["DEL", key, counter]);
console.log("stats:", JSON.stringify(redis.stats()));
