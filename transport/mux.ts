/**
 * Serve several protocols on one port: {@linkcode muxListener} peeks at the
 * first bytes of each accepted connection and hands it to the first route
 * whose matcher accepts them (cmux-style). Each route is a listener of its
 * own, so each gets its own `serve()` with its own codec and handler.
 *
 * @module
 */

import {
  formatAddr,
  isClosedResource,
  type Transport,
  type TransportListener,
} from "../connection.ts";
import { prepend } from "./_conn.ts";
import { ClosedError } from "../errors.ts";
import { FrameKind } from "../protocol.ts";
import { type Logger, safeLogger } from "../logger.ts";
import { after } from "../_timeouts.ts";
import { withResolvers } from "../_util.ts";

/**
 * Decides from the first bytes of a connection whether it belongs to a route:
 * `true` takes it, `false` passes it on, `undefined` asks for more bytes.
 */
export type Matcher = (head: Uint8Array) => boolean | undefined;

/** Options of {@linkcode muxListener}. */
export interface MuxOptions {
  /**
   * Milliseconds a new connection may take to send enough bytes to be
   * routed; slower ones are closed.
   *
   * @default {5000}
   */
  timeout?: number;
  /**
   * Most bytes read to decide; a connection still undecided then is closed.
   *
   * @default {64}
   */
  maxPeekBytes?: number;
  /** Where routing failures are logged. */
  logger?: Logger;
}

/** A listener that routes connections to sub-listeners by their first bytes. */
export interface MuxListener extends AsyncDisposable {
  /** The address of the shared listener. */
  readonly addr: Deno.Addr;
  /**
   * Adds a route; routes are tried in the order they were added.
   *
   * @param match Decides from the first bytes.
   * @returns A listener of the matched connections, for `serve({ listener })`.
   */
  route(match: Matcher): TransportListener;
  /** Connections closed because no route matched (or they were too slow). */
  readonly unmatched: number;
  /** Closes the shared listener and every route. */
  close(): void;
}

/**
 * Matches connections whose first bytes are `prefix`.
 *
 * @param prefix Bytes, or a string encoded as UTF-8.
 * @returns A matcher.
 *
 * @example Usage
 * ```ts
 * import { matchPrefix } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const isPing = matchPrefix("PING");
 * assert.equal(isPing(new TextEncoder().encode("PI")), undefined);
 * assert.equal(isPing(new TextEncoder().encode("PING\r\n")), true);
 * assert.equal(isPing(new TextEncoder().encode("GET /")), false);
 * ```
 */
export function matchPrefix(prefix: string | Uint8Array): Matcher {
  const bytes = typeof prefix === "string"
    ? new TextEncoder().encode(prefix)
    : prefix;
  return (head) => {
    const n = Math.min(head.length, bytes.length);
    for (let i = 0; i < n; i++) if (head[i] !== bytes[i]) return false;
    return head.length >= bytes.length ? true : undefined;
  };
}

/**
 * Matches the default tcpbutler protocol: a u32 length below 16 MiB (first
 * byte 0) and a known frame kind in byte 4.
 *
 * @param head The first bytes.
 * @returns Whether it is the default protocol, or `undefined` for too few bytes.
 *
 * @example Usage
 * ```ts
 * import { matchDefaultProtocol } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * assert.equal(matchDefaultProtocol(new Uint8Array([0, 0, 0, 5, 1])), true);
 * assert.equal(matchDefaultProtocol(new TextEncoder().encode("HELLO")), false);
 * ```
 */
export function matchDefaultProtocol(head: Uint8Array): boolean | undefined {
  if (head.length >= 1 && head[0] !== 0) return false;
  if (head.length < 5) return undefined;
  return head[4]! >= 1 && head[4]! <= FrameKind.Refused;
}

/**
 * Matches anything: the catch-all last route.
 *
 * @returns `true`.
 */
export function matchAny(): boolean {
  return true;
}

class Route implements TransportListener {
  readonly addr: Deno.Addr;
  readonly match: Matcher;
  readonly #queue: Transport[] = [];
  readonly #waiters: PromiseWithResolvers<Transport>[] = [];
  closed = false;
  readonly #onClose: () => void;

  constructor(addr: Deno.Addr, match: Matcher, onClose: () => void) {
    this.addr = addr;
    this.match = match;
    this.#onClose = onClose;
  }

  push(conn: Transport): void {
    const waiter = this.#waiters.shift();
    if (waiter !== undefined) waiter.resolve(conn);
    else this.#queue.push(conn);
  }

  accept(): Promise<Transport> {
    const conn = this.#queue.shift();
    if (conn !== undefined) return Promise.resolve(conn);
    if (this.closed) {
      return Promise.reject(new Deno.errors.BadResource("Listener is closed"));
    }
    const waiter = withResolvers<Transport>();
    this.#waiters.push(waiter);
    return waiter.promise;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const conn of this.#queue.splice(0)) conn.close();
    for (const waiter of this.#waiters.splice(0)) {
      waiter.reject(new Deno.errors.BadResource("Listener is closed"));
    }
    this.#onClose();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Transport> {
    for (;;) {
      try {
        yield await this.accept();
      } catch (error) {
        if (error instanceof Deno.errors.BadResource) return;
        throw error;
      }
    }
  }
}

/**
 * Wraps a listener so that connections are routed by their first bytes.
 * Every route gets the connection with the peeked bytes still to be read.
 * The shared listener closes once every route is closed.
 *
 * @param listener The listener to share (`Deno.listen(…)` or any other).
 * @param options Peek timeout and size.
 * @returns The mux; add routes, then `serve({ listener: route })` each.
 *
 * @example Usage
 * ```ts
 * import { dial, matchAny, matchDefaultProtocol, muxListener, serve } from "@tcpbutler/core";
 * import { delimited } from "@tcpbutler/core/framing";
 * import assert from "node:assert/strict";
 *
 * await using mux = muxListener(Deno.listen({ hostname: "127.0.0.1", port: 0 }));
 * await using tcpbutler = serve({ listener: mux.route(matchDefaultProtocol), handler: (p) => p });
 * await using lines = serve({
 *   listener: mux.route(matchAny),
 *   codec: delimited({ delimiter: "\n" }),
 *   handler: (line) => new TextEncoder().encode(`you said ${new TextDecoder().decode(line)}`),
 * });
 * const port = (mux.addr as Deno.NetAddr).port;
 * await using client = await dial({ hostname: "127.0.0.1", port });
 * assert.deepEqual([...await client.request(new Uint8Array([7]))], [7]);
 * ```
 */
export function muxListener(
  listener: TransportListener,
  options?: MuxOptions,
): MuxListener {
  return new Mux(listener, options ?? {});
}

/** The state a mux's accept loop, routing and routes share. */
class Mux implements MuxListener {
  readonly addr: Deno.Addr;
  readonly #listener: TransportListener;
  readonly #timeout: number;
  readonly #maxPeek: number;
  readonly #logger: Logger;
  readonly #routes: Route[] = [];
  readonly #stop = new AbortController();
  /** Connections being routed. */
  readonly #pending = new Set<Promise<void>>();
  readonly #acceptLoop: Promise<void>;
  #unmatched = 0;
  #closed = false;

  constructor(listener: TransportListener, options: MuxOptions) {
    this.addr = listener.addr;
    this.#listener = listener;
    this.#timeout = options.timeout ?? 5000;
    this.#maxPeek = options.maxPeekBytes ?? 64;
    this.#logger = safeLogger(options.logger);
    this.#acceptLoop = this.#accept();
  }

  get unmatched(): number {
    return this.#unmatched;
  }

  route(match: Matcher): TransportListener {
    if (this.#closed) {
      throw new ClosedError("Cannot add a route: mux is closed");
    }
    const routes = this.#routes;
    const route = new Route(this.addr, match, () => {
      if (routes.every((r) => r.closed)) this.close();
    });
    routes.push(route);
    return route;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stop.abort(new ClosedError("Mux listener closed"));
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    for (const route of this.#routes) route.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.#acceptLoop;
    await Promise.all(this.#pending);
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Transport;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (this.#closed) return;
        if (isClosedResource(error)) return;
        // Transient (EMFILE, ECONNABORTED): log, breathe, go on.
        this.#logger.error("Accept failed", { error });
        await this.#pause(50);
        continue;
      }
      const task = this.#classify(conn);
      this.#pending.add(task);
      task.finally(() => this.#pending.delete(task));
    }
  }

  /** Waits `ms`, or less if the mux closes meanwhile. */
  #pause(ms: number): Promise<void> {
    const signal = this.#stop.signal;
    return new Promise<void>((resolve) => {
      const done = () => {
        cancel();
        signal.removeEventListener("abort", done);
        resolve();
      };
      const cancel = after(ms, done);
      signal.addEventListener("abort", done, { once: true });
    });
  }

  /** Reads the first bytes of `conn` until a route takes it; else closes it. */
  async #classify(conn: Transport): Promise<void> {
    const cancelTimer = after(this.#timeout, () => conn.close());
    const onStop = () => conn.close();
    const signal = this.#stop.signal;
    signal.addEventListener("abort", onStop, { once: true });
    try {
      await this.#peekAndRoute(conn);
    } catch (error) {
      this.#unmatched++;
      this.#logger.warn("Connection not routed", {
        remote: formatAddr(conn.remoteAddr),
        error,
      });
      try {
        conn.close();
      } catch {
        // Already closed by the timer.
      }
    } finally {
      cancelTimer();
      signal.removeEventListener("abort", onStop);
    }
  }

  /**
   * Hands `conn` to the first route that matches its first bytes.
   *
   * @throws {Error} When it ends first, or no route matches.
   */
  async #peekAndRoute(conn: Transport): Promise<void> {
    const maxPeek = this.#maxPeek;
    const head = new Uint8Array(maxPeek);
    let have = 0;
    for (;;) {
      const n = await conn.read(head.subarray(have));
      if (n === null) throw new Error("connection ended before routing");
      have += n;
      const view = head.subarray(0, have);
      let undecided = false;
      for (const route of this.#routes) {
        if (route.closed) continue;
        const verdict = route.match(view);
        if (verdict === true) {
          route.push(prepend(conn, view.slice()));
          return;
        }
        if (verdict === undefined) {
          undecided = true;
          break;
        }
      }
      if (!undecided || have === maxPeek) {
        throw new Error("no route matched the first bytes");
      }
    }
  }
}
