/**
 * Where a client's endpoints come from when they change: a {@linkcode
 * Discovery} polled on an interval (DNS through {@linkcode dnsEndpoints},
 * or a function of yours that asks Consul, Kubernetes or a file), or an
 * async iterable that yields the whole list each time it changes (a watch).
 * Each list replaces the last: new endpoints get sessions, endpoints no
 * longer listed are drained.
 *
 * @module
 */

import type { Endpoint } from "../transport/connect.ts";
import { type AddressFamily, resolveHost } from "../transport/resolve.ts";
import { countOption, describeError, withResolvers } from "../_util.ts";
import { delay } from "../backoff.ts";
import { DiscoveryError } from "../errors.ts";

/** A list of endpoints: `"host:port"`, `"unix:/path"` or endpoint objects. */
export type EndpointList = ReadonlyArray<string | Endpoint>;

/**
 * Endpoints found by asking something, again every `interval` ms. A failed
 * or empty answer keeps the endpoints the client has (logged, an `error`
 * event): a resolver that hiccups must not drain a healthy fleet.
 */
export interface Discovery {
  /**
   * Returns the endpoints there are now.
   *
   * @param signal Aborts when the client closes.
   */
  discover(signal: AbortSignal): EndpointList | Promise<EndpointList>;
  /**
   * Milliseconds between two calls of `discover`.
   *
   * @default {10000}
   */
  interval?: number;
  /** How events and logs name this source. */
  name?: string;
}

/**
 * Where a client's endpoints come from, when they are not a fixed list: a
 * polled {@linkcode Discovery}, or an async iterable yielding the whole
 * list each time it changes. When the client closes it stops reading the
 * iterable and calls its iterator's `return()` without waiting (an async
 * generator suspended in an `await` runs its `finally` once it next
 * yields): a watch that holds a connection should also listen to an
 * `AbortSignal` of yours.
 */
export type EndpointSource = Discovery | AsyncIterable<EndpointList>;

/** Options of {@linkcode dnsEndpoints}. */
export interface DnsEndpointsOptions {
  /** The port every address serves on. */
  port: number;
  /**
   * Milliseconds between two resolutions.
   *
   * @default {10000}
   */
  interval?: number;
  /**
   * Address families: 4 (A records), 6 (AAAA) or 0 (both).
   *
   * @default {0}
   */
  family?: AddressFamily;
  /**
   * Resolves the name to addresses. By default the system resolver
   * (`getaddrinfo` through `node:dns`: `/etc/hosts`, search domains, then
   * DNS); give your own to use `Deno.resolveDns`, SRV records, or a fixed
   * answer in tests.
   */
  resolve?: (
    hostname: string,
    signal: AbortSignal,
  ) => Promise<readonly string[]> | readonly string[];
}

/**
 * The endpoints a DNS name stands for, resolved again on an interval: one
 * endpoint per address (each gets its own sessions), on `options.port`.
 * With TLS, set `tls.serverName` to the name, since the sessions connect to
 * addresses.
 *
 * @param hostname The name to resolve.
 * @param options Port, interval, families, resolver.
 * @returns A discovery to pass to `dial()`.
 * @throws {RangeError} The port or interval is out of range.
 *
 * @example Usage
 * ```ts
 * import { dial, dnsEndpoints, serve } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * await using server = serve({ hostname: "127.0.0.1", port: 0, handler: (payload) => payload });
 * await using client = await dial(
 *   dnsEndpoints("localhost", { port: server.port, family: 4, interval: 5000 }),
 * );
 * assert.deepEqual([...await client.request(new Uint8Array([7]))], [7]);
 * assert.equal(client.stats().endpoints[0]!.endpoint, `127.0.0.1:${server.port}`);
 * ```
 */
export function dnsEndpoints(
  hostname: string,
  options: DnsEndpointsOptions,
): Discovery {
  const { port } = options;
  countOption(port, "port", 1);
  if (port > 65535) {
    throw new RangeError(`Cannot use port ${port}: expected 1 to 65535`);
  }
  const interval = intervalOption(options.interval);
  const family = options.family ?? 0;
  const resolve = options.resolve ??
    ((name: string) => resolveHost(name, family));
  return {
    name: `dns:${hostname}:${port}`,
    interval,
    async discover(signal) {
      const addresses = await resolve(hostname, signal);
      return addresses.map((address) => ({ hostname: address, port }));
    },
  };
}

/**
 * Checks an endpoint source before the client starts following it.
 *
 * @throws {RangeError} A discovery's interval is out of range.
 */
export function checkSource(source: EndpointSource): void {
  if ("discover" in source) intervalOption(source.interval);
}

/** Whether a dial target is an endpoint source rather than endpoints. */
export function isEndpointSource(target: unknown): target is EndpointSource {
  if (typeof target !== "object" || target === null) return false;
  return typeof (target as Discovery).discover === "function" ||
    typeof (target as AsyncIterable<unknown>)[Symbol.asyncIterator] ===
      "function";
}

/** How events and logs name a source. */
export function sourceName(source: EndpointSource): string {
  return "discover" in source && source.name !== undefined
    ? source.name
    : "discovery";
}

/** What a discovery loop reports to. */
export interface DiscoveryHost {
  /** A new list: apply it. A throw (a bad entry) counts as an error. */
  update(list: EndpointList): void;
  /** Getting or applying a list failed. */
  failed(error: unknown): void;
}

/**
 * Runs `source` until `signal` aborts: polls a discovery, or reads an
 * iterable, and hands each non-empty list to `host`.
 *
 * @returns Resolves once the loop has stopped.
 */
export async function runDiscovery(
  source: EndpointSource,
  host: DiscoveryHost,
  signal: AbortSignal,
): Promise<void> {
  if ("discover" in source) return await poll(source, host, signal);
  const iterator = source[Symbol.asyncIterator]();
  const stopped = withResolvers<never>();
  stopped.promise.catch(() => {});
  const onAbort = () => stopped.reject(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    for (;;) {
      const next = await Promise.race([iterator.next(), stopped.promise]);
      if (next.done) return;
      offer(next.value, host);
    }
  } catch (error) {
    if (!signal.aborted) {
      host.failed(
        new DiscoveryError(
          `Cannot discover endpoints: ${describeError(error)}`,
          { cause: error },
        ),
      );
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
    // Let the source let go of what it holds (a watch, a timer); do not
    // wait for it, a source stuck in next() may never answer.
    void Promise.resolve(iterator.return?.()).catch(() => {});
  }
}

async function poll(
  source: Discovery,
  host: DiscoveryHost,
  signal: AbortSignal,
): Promise<void> {
  const interval = intervalOption(source.interval);
  while (!signal.aborted) {
    let list: EndpointList | undefined;
    try {
      list = await source.discover(signal);
    } catch (error) {
      if (signal.aborted) return;
      host.failed(
        new DiscoveryError(
          `Cannot discover endpoints: ${describeError(error)}`,
          { cause: error },
        ),
      );
    }
    if (list !== undefined) offer(list, host);
    try {
      await delay(interval, { signal });
    } catch {
      return;
    }
  }
}

function offer(list: EndpointList, host: DiscoveryHost): void {
  if (!Array.isArray(list)) {
    return host.failed(
      new DiscoveryError("Cannot discover endpoints: the source gave no array"),
    );
  }
  if (list.length === 0) {
    return host.failed(
      new DiscoveryError(
        "Cannot discover endpoints: none found; keeping those the client has",
      ),
    );
  }
  try {
    host.update(list);
  } catch (error) {
    host.failed(
      new DiscoveryError(
        `Cannot use discovered endpoints: ${describeError(error)}`,
        { cause: error },
      ),
    );
  }
}

/**
 * Checks a discovery interval: milliseconds >= 1 (finite; a source that
 * never changes is a fixed list).
 *
 * @throws {RangeError} Out of range.
 */
export function intervalOption(value: number | undefined): number {
  value ??= 10_000;
  if (typeof value !== "number" || !(value >= 1) || value === Infinity) {
    throw new RangeError(
      `Cannot use interval ${String(value)}: expected milliseconds >= 1`,
    );
  }
  return value;
}
