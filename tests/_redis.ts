/**
 * Test helper: a real `redis-server` child process on 127.0.0.1, on a port
 * the system picked, with nothing persisted; it can be stopped and started
 * again on the same port (to test reconnects).
 *
 * Redis cannot listen on port 0 and report the port, so a port is taken by
 * binding a listener on port 0 and closing it; when another process grabs it
 * in between, Redis says "Address already in use" and another port is tried.
 * Readiness: Redis's "Ready to accept connections" line, then a PING that
 * must be answered.
 *
 * @module
 */

import { type ChildProcess, startProcess, withTimeout } from "./_process.ts";
import { command, resp, RespError, type RespValue } from "../framing/resp.ts";

/** The program started; found on `PATH`. */
export const REDIS_SERVER = "redis-server";

let available: boolean | undefined;

/**
 * Tells whether `redis-server` can be run here; tests that need it are
 * ignored (with the reason in their name) when it cannot.
 *
 * @returns `true` when `redis-server --version` succeeds.
 */
export function hasRedis(): boolean {
  if (available === undefined) {
    try {
      available = new Deno.Command(REDIS_SERVER, {
        args: ["--version"],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).outputSync().success;
    } catch {
      available = false;
    }
  }
  return available;
}

/**
 * A test name with the reason the test is ignored when Redis is missing.
 *
 * @param name The test's name.
 * @returns The name, with " (ignored: redis-server not found)" appended when needed.
 */
export function redisTestName(name: string): string {
  return hasRedis() ? name : `${name} (ignored: ${REDIS_SERVER} not found)`;
}

/** Options of {@linkcode startRedis}. */
export interface StartRedisOptions {
  /** Sets `requirepass`: clients must `AUTH` first. */
  password?: string;
  /**
   * Attempts with a fresh port when the picked one is taken meanwhile.
   *
   * @default {5}
   */
  portAttempts?: number;
}

/** A running Redis server, made by {@linkcode startRedis}. */
export interface RedisServer extends AsyncDisposable {
  /** Always `"127.0.0.1"`. */
  readonly hostname: string;
  /** The TCP port; kept across {@linkcode RedisServer.restart}. */
  readonly port: number;
  /** `"127.0.0.1:PORT"`, for `dial()`. */
  readonly address: string;
  /** The current process id, or undefined while stopped. */
  readonly pid: number | undefined;
  /**
   * Stops the server by its pid (SIGTERM unless told otherwise) and waits
   * for it to exit. Does nothing when stopped.
   *
   * @param signal The signal to send.
   */
  stop(signal?: Deno.Signal): Promise<void>;
  /**
   * Starts the server again on the same port (stopping it first if it
   * runs) and waits until it answers PING.
   */
  restart(): Promise<void>;
}

const READY = /Ready to accept connections|Address already in use/;

/**
 * Starts `redis-server` on 127.0.0.1 (no RDB, no AOF, an empty temporary
 * directory) and waits until it answers PING.
 *
 * @param options Password and port attempts.
 * @returns The server. Dispose of it (`await using`) to stop it.
 * @throws {Error} When Redis did not start.
 */
export async function startRedis(
  options: StartRedisOptions = {},
): Promise<RedisServer> {
  const dir = await Deno.makeTempDir({ prefix: "tcpbutler_redis_" });
  try {
    const attempts = options.portAttempts ?? 5;
    for (let attempt = 1;; attempt++) {
      const port = freePort();
      const child = await launch(port, dir, options.password);
      if (child !== undefined) {
        return new Redis(port, dir, options.password, child);
      }
      if (attempt >= attempts) {
        throw new Error(
          `Cannot start ${REDIS_SERVER}: ${attempts} ports were taken`,
        );
      }
    }
  } catch (error) {
    await Deno.remove(dir, { recursive: true });
    throw error;
  }
}

/** A port that was free a moment ago. */
function freePort(): number {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  return listener.addr.port;
}

function redisArgs(port: number, dir: string, password?: string): string[] {
  const args = [
    REDIS_SERVER,
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    dir,
    "--loglevel",
    "notice",
  ];
  if (password !== undefined) args.push("--requirepass", password);
  return args;
}

/**
 * Starts Redis on `port`; undefined when the port is taken.
 *
 * @throws {Error} When Redis failed otherwise or does not answer PING.
 */
async function launch(
  port: number,
  dir: string,
  password: string | undefined,
): Promise<ChildProcess | undefined> {
  const child = await startProcess(redisArgs(port, dir, password), {
    readyLine: READY,
  });
  if (child.match[0] !== "Ready to accept connections") {
    await child.kill("SIGKILL"); // it exits by itself; this waits for it
    return undefined;
  }
  try {
    await ping(port, password);
  } catch (error) {
    await child.kill("SIGKILL");
    throw error;
  }
  return child;
}

const PING_ATTEMPTS = 20;

/**
 * Sends (AUTH and) PING until Redis answers PONG, at most
 * {@linkcode PING_ATTEMPTS} times: polling the readiness condition itself.
 */
async function ping(port: number, password: string | undefined): Promise<void> {
  const codec = resp();
  const commands: RespValue[] = [];
  if (password !== undefined) commands.push(command("AUTH", password));
  commands.push(command("PING"));
  const request = new Uint8Array(
    commands.reduce<number>((sum, c) => sum + codec.encodedLength(c), 0),
  );
  let at = 0;
  for (const c of commands) at += codec.encodeInto(c, request, at);
  let lastError: unknown;
  for (let attempt = 0; attempt < PING_ATTEMPTS; attempt++) {
    try {
      const replies = await withTimeout(
        (signal) => exchange(port, request, commands.length, signal),
        2000,
        `PING of redis-server on port ${port}`,
      );
      const last = replies.at(-1);
      if (last === "PONG") return;
      lastError = new Error(
        `redis-server answered PING with ${
          last instanceof RespError ? last.message : String(last)
        }`,
      );
    } catch (error) {
      lastError = error;
    }
  }
  throw new Error(
    `redis-server on port ${port} did not answer PING in ${PING_ATTEMPTS} attempts`,
    { cause: lastError },
  );
}

/** Writes `request` on a fresh connection and reads `count` replies. */
async function exchange(
  port: number,
  request: Uint8Array,
  count: number,
  signal: AbortSignal,
): Promise<RespValue[]> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port, signal });
  let open = true;
  const close = () => {
    if (open) {
      open = false;
      conn.close();
    }
  };
  signal.addEventListener("abort", close, { once: true });
  try {
    let written = 0;
    while (written < request.length) {
      written += await conn.write(request.subarray(written));
    }
    const decoder = resp().decoder();
    const replies: RespValue[] = [];
    const buffer = new Uint8Array(4096);
    while (replies.length < count) {
      const n = await conn.read(buffer);
      if (n === null) throw new Error("redis-server closed the connection");
      replies.push(...decoder.decode(buffer.slice(0, n)));
    }
    return replies;
  } finally {
    signal.removeEventListener("abort", close);
    close();
  }
}

class Redis implements RedisServer {
  readonly hostname = "127.0.0.1";
  readonly port: number;
  readonly #dir: string;
  readonly #password: string | undefined;
  #child: ChildProcess | undefined;

  constructor(
    port: number,
    dir: string,
    password: string | undefined,
    child: ChildProcess,
  ) {
    this.port = port;
    this.#dir = dir;
    this.#password = password;
    this.#child = child;
  }

  get address(): string {
    return `${this.hostname}:${this.port}`;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  async stop(signal: Deno.Signal = "SIGTERM"): Promise<void> {
    const child = this.#child;
    if (child === undefined) return;
    this.#child = undefined;
    await child.kill(signal);
  }

  async restart(): Promise<void> {
    await this.stop();
    const child = await launch(this.port, this.#dir, this.#password);
    if (child === undefined) {
      throw new Error(
        `Cannot restart ${REDIS_SERVER}: port ${this.port} was taken meanwhile`,
      );
    }
    this.#child = child;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.stop("SIGKILL");
    } finally {
      await Deno.remove(this.#dir, { recursive: true });
    }
  }
}
