/**
 * `dial()`: checks and resolves a client's options, makes the client, and
 * waits for its first ready session.
 *
 * @module
 */

import type { Codec } from "../framing/codec.ts";
import {
  type Endpoint,
  formatEndpoint,
  parseEndpoint,
} from "../transport/connect.ts";
import { codecDialect, type Dialect } from "../session/dialect.ts";
import { defaultDialect } from "../_protocol_dialect.ts";
import {
  countOption,
  deadlineMs,
  timeoutOption,
  withResolvers,
} from "../_util.ts";
import {
  checkWriteRoom,
  resolveSessionOptions,
  type SessionSettings,
} from "../options.ts";
import { HEADER_BYTES } from "../protocol.ts";
import { after } from "../_timeouts.ts";
import { safeLogger } from "../logger.ts";
import { ConnectionError, RetryExhaustedError } from "../errors.ts";
import {
  Client,
  clientInternals,
  type ClientSetup,
  INTERNAL,
} from "./client.ts";
import type { DialOptions, DialTarget } from "./types.ts";
import {
  checkSource,
  type EndpointSource,
  isEndpointSource,
  sourceName,
} from "./discovery.ts";
import { ejectionSettings } from "./fleet.ts";
import type { Routing } from "./router.ts";

/**
 * Connects a client speaking the default protocol (`Uint8Array` payloads).
 * Resolves once the first session is ready; the other slots keep
 * connecting in the background.
 *
 * @param target Where to connect.
 * @param options Pool, TLS, timeouts, handler, reconnect, heartbeat.
 * @returns The client.
 * @throws {ConnectionError} No session became ready within `connectTimeout`.
 * @throws {ProtocolMismatchError} A peer answered in another protocol (TLS,
 * HTTP, SSH) before any session was ready: at once, whatever
 * `connectTimeout`, even if other endpoints might work, since the
 * configuration is wrong. Once the client is up, a slot that meets one logs
 * it at error level and keeps reconnecting with backoff (`shouldReconnect`
 * can stop it).
 *
 * @example Usage
 * ```ts
 * import { dial, serve } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0, handler: (payload) => payload });
 * await using client = await dial(`127.0.0.1:${server.port}`, { sessions: 2 });
 * const reply = await client.request(new TextEncoder().encode("hello"));
 * assert.equal(new TextDecoder().decode(reply), "hello");
 * ```
 */
export function dial(
  target: DialTarget,
  options?: DialOptions<Uint8Array>,
): Promise<Client<Uint8Array>>;
/**
 * Connects a client speaking a custom codec.
 *
 * @typeParam T The message type.
 * @param target Where to connect.
 * @param codec How messages cross the wire (with `correlationId` unless `correlation: "fifo"`).
 * @param options Pool, TLS, timeouts, handler, reconnect, heartbeat.
 * @returns The client.
 * @throws {ConnectionError} No session became ready within `connectTimeout`.
 * @throws {ProtocolMismatchError} A peer answered in another protocol (TLS,
 * HTTP, SSH) before any session was ready: at once, whatever
 * `connectTimeout`, even if other endpoints might work, since the
 * configuration is wrong. Once the client is up, a slot that meets one logs
 * it at error level and keeps reconnecting with backoff (`shouldReconnect`
 * can stop it).
 */
export function dial<T>(
  target: DialTarget,
  codec: Codec<T>,
  options?: DialOptions<T>,
): Promise<Client<T>>;
export async function dial<T>(
  target: DialTarget,
  codecOrOptions?: Codec<T> | DialOptions<T>,
  maybeOptions?: DialOptions<T>,
): Promise<Client<T>> {
  const isCodec = codecOrOptions !== undefined &&
    typeof (codecOrOptions as Codec<T>).decoder === "function";
  const options = (isCodec ? maybeOptions : codecOrOptions) as
    | DialOptions<T>
    | undefined ?? {};
  const { source, endpoints, where } = targetOf(target);
  const dialect = dialectOf(
    isCodec ? codecOrOptions as Codec<T> : undefined,
    options,
  );
  const setup = resolveDialOptions(endpoints, source, dialect, options);
  const client = new Client<T>(INTERNAL, setup);
  clientInternals.start(client);
  const timeout = setup.connectTimeout;
  const failed = withResolvers<never>();
  const cancelTimer = after(
    timeout,
    () =>
      failed.reject(
        new ConnectionError(
          `Cannot connect to ${where}: no session ready within ${timeout} ms`,
          { cause: clientInternals.lastError(client) },
        ),
      ),
  );
  const signal = options.signal;
  const onAbort = () => failed.reject(signal!.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    signal?.throwIfAborted();
    await Promise.race([clientInternals.firstReady(client), failed.promise]);
    return client;
  } catch (error) {
    await client.close({ timeout: 0 });
    if (error instanceof RetryExhaustedError) {
      throw new ConnectionError(
        `Cannot connect to ${where}: ${error.message}`,
        { cause: error },
      );
    }
    throw error;
  } finally {
    cancelTimer();
    signal?.removeEventListener("abort", onAbort);
  }
}

/**
 * The endpoints of a dial target, or its source; and how errors name it.
 *
 * @throws {TypeError} No endpoint, or a bad one.
 */
function targetOf(target: DialTarget): {
  source: EndpointSource | undefined;
  endpoints: Endpoint[];
  where: string;
} {
  if (isEndpointSource(target)) {
    checkSource(target);
    return { source: target, endpoints: [], where: sourceName(target) };
  }
  const targets = Array.isArray(target) ? target : [target];
  if (targets.length === 0) {
    throw new TypeError("Cannot dial: no endpoint given");
  }
  const endpoints = targets.map((t) => parseEndpoint(t as string | Endpoint));
  return {
    source: undefined,
    endpoints,
    where: endpoints.map(formatEndpoint).join(", "),
  };
}

/** How the client speaks: a custom codec, or the default protocol. */
function dialectOf<T>(
  codec: Codec<T> | undefined,
  options: DialOptions<T>,
): Dialect<T> {
  if (codec === undefined) {
    return defaultDialect(options.maxFrameBytes) as unknown as Dialect<T>;
  }
  const dialect = codecDialect(codec, options.correlation === "fifo");
  if (options.correlation !== "fifo" && codec.correlationId === undefined) {
    throw new TypeError(
      'Cannot dial: the codec has no correlationId; give one or use correlation: "fifo"',
    );
  }
  return dialect;
}

/**
 * Checks a client's options and fills in their defaults.
 *
 * @throws {RangeError} A number option is out of range.
 * @throws {TypeError} A custom codec with heartbeats on but no
 * `heartbeat.message`.
 */
function resolveDialOptions<T>(
  endpoints: Endpoint[],
  source: EndpointSource | undefined,
  dialect: Dialect<T>,
  options: DialOptions<T>,
): ClientSetup<T> {
  const settings = resolveSessionOptions(options);
  if (dialect.framed) checkWriteRoom(settings, HEADER_BYTES);
  const logger = safeLogger(options.logger);
  const connectTimeout = deadlineMs(timeoutOption(
    options.connectTimeout ?? 10_000,
    "connectTimeout",
  ));
  const maxWaitingRequests = countOption(
    options.maxWaitingRequests ?? 10_000,
    "maxWaitingRequests",
    0,
  );
  const liveness = livenessOf(dialect, options, settings);
  return {
    endpoints,
    source,
    ejection: ejectionSettings(options.ejection),
    dialect,
    options,
    settings,
    logger,
    connectTimeout,
    acceptReplies: acceptRepliesOption(options.acceptReplies),
    drainTimeout: deadlineMs(
      timeoutOption(options.drainTimeout ?? 10_000, "drainTimeout"),
    ),
    sessionsPerEndpoint: countOption(options.sessions ?? 1, "sessions", 1),
    routing: routingOption(options.routing, source !== undefined),
    waitForSession: options.waitForSession ?? true,
    maxWaitingRequests,
    liveness,
  };
}

/** The client's liveness checks: heartbeat, idle, frame and write limits. */
function livenessOf<T>(
  dialect: Dialect<T>,
  options: DialOptions<T>,
  settings: SessionSettings,
): ClientSetup<T>["liveness"] {
  const heartbeat = options.heartbeat === false
    ? undefined
    : options.heartbeat ?? (dialect.framed ? {} : undefined);
  const interval = heartbeat === undefined ? 0 : timeoutOption(
    heartbeat.interval ?? 30_000,
    "heartbeat.interval",
  );
  const maxMissed = countOption(
    heartbeat?.maxMissed ?? 2,
    "heartbeat.maxMissed",
    1,
  );
  if (
    heartbeat !== undefined && interval !== 0 && interval !== Infinity &&
    !dialect.framed && heartbeat.message === undefined
  ) {
    throw new TypeError(
      "Cannot use heartbeat: a custom codec needs heartbeat.message",
    );
  }
  return {
    idleTimeout: settings.idleTimeout,
    frameTimeout: settings.frameTimeout,
    heartbeatInterval: interval === Infinity ? 0 : interval,
    maxMissed,
    heartbeatMessage: heartbeat?.message,
    writeTimeout: settings.writeTimeout,
  };
}

/** Checks `acceptReplies`. */
function acceptRepliesOption(
  value: "endpoint" | "any" | undefined,
): "endpoint" | "any" {
  if (value === undefined || value === "endpoint" || value === "any") {
    return value ?? "endpoint";
  }
  throw new TypeError(
    `Cannot use acceptReplies ${String(value)}: expected "endpoint" or "any"`,
  );
}

/** Checks `routing`; a discovered fleet balances by the power of two choices. */
function routingOption(
  value: Routing | undefined,
  discovered: boolean,
): Routing {
  if (value === undefined) return discovered ? "p2c" : "round-robin";
  if (value === "round-robin" || value === "least-pending" || value === "p2c") {
    return value;
  }
  throw new TypeError(
    `Cannot use routing ${
      String(value)
    }: expected "round-robin", "least-pending" or "p2c"`,
  );
}
