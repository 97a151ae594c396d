/**
 * Loopback helpers for client/server integration tests: a port-0 server of
 * the default protocol, a scripted raw peer that speaks a codec by hand on a
 * plain `Deno.listen` socket, event latches and a few small utilities.
 *
 * Everything here cleans up after itself (listeners, connections, timers,
 * event listeners) so Deno's sanitizers pass.
 *
 * @module
 */

import v8 from "node:v8";
import vm from "node:vm";
import type { Codec } from "../framing/codec.ts";
import { defaultCodec, type Frame, FrameKind } from "../protocol.ts";
import { serve, type ServeOptions } from "../server/serve.ts";
import type { Server } from "../server/server.ts";

/** Loopback address used by every test. */
export const HOST = "127.0.0.1";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * UTF-8 bytes of a string.
 *
 * @param text The text.
 * @returns Its bytes.
 */
export function enc(text: string): Uint8Array {
  return encoder.encode(text);
}

/**
 * A string from UTF-8 bytes.
 *
 * @param bytes The bytes.
 * @returns The text.
 */
export function dec(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

/**
 * Starts a default-protocol server on 127.0.0.1, port 0 unless given.
 *
 * @param options Server options (hostname and port default to loopback/0).
 * @returns The server.
 */
export function serveLoopback(
  options: ServeOptions<Uint8Array> = {},
): Server<Uint8Array> {
  return serve<Uint8Array>({ hostname: HOST, port: 0, ...options });
}

/**
 * The TCP port of a server or listener address.
 *
 * @param addr The address.
 * @returns Its port.
 */
export function portOf(addr: Deno.Addr): number {
  if (addr.transport !== "tcp") throw new TypeError("not a TCP address");
  return addr.port;
}

/**
 * A port on 127.0.0.1 where nothing listens (now): taken from a listener
 * that was closed at once.
 *
 * @returns The port.
 */
export function closedPort(): number {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const port = portOf(listener.addr);
  listener.close();
  return port;
}

let gcFunction: (() => void) | undefined | null;

/**
 * A full garbage collection, when the runtime lets us expose `gc` at run time
 * (`node:v8` `setFlagsFromString("--expose_gc")`, which Deno supports).
 *
 * @returns Whether a collection ran.
 */
export function forceGc(): boolean {
  if (gcFunction === undefined) {
    try {
      v8.setFlagsFromString("--expose_gc");
      const gc = vm.runInNewContext("gc");
      gcFunction = typeof gc === "function" ? gc : null;
    } catch {
      gcFunction = null;
    }
  }
  if (!gcFunction) return false;
  gcFunction();
  return true;
}

// ---------------------------------------------------------------------------
// Scripted raw peer

const frameCodecs = new WeakSet<object>();

function isFrameCodec(codec: object): boolean {
  return frameCodecs.has(codec);
}

/** One accepted connection of a {@linkcode RawPeer}. */
export class RawConn<T = Frame> {
  /** The socket. */
  readonly conn: Deno.Conn;
  readonly #decoder;
  readonly #frames: T[] = [];
  #eof = false;
  #closed = false;

  constructor(conn: Deno.Conn, readonly codec: Codec<T>) {
    this.conn = conn;
    this.#decoder = codec.decoder();
  }

  /** The client's port (matches the client session's `localAddr.port`). */
  get remotePort(): number {
    return portOf(this.conn.remoteAddr);
  }

  /** Whether `close()` was called. */
  get isClosed(): boolean {
    return this.#closed;
  }

  /**
   * Reads the next message; `null` at end of stream or once closed.
   *
   * @returns The message (payloads are copies, safe to keep).
   */
  async read(): Promise<T | null> {
    while (this.#frames.length === 0) {
      if (this.#eof || this.#closed) return null;
      const buffer = new Uint8Array(16 * 1024);
      let n: number | null;
      try {
        n = await this.conn.read(buffer);
      } catch (error) {
        if (this.#closed) return null;
        if (
          error instanceof Deno.errors.ConnectionReset ||
          error instanceof Deno.errors.BadResource ||
          error instanceof Deno.errors.Interrupted
        ) {
          this.#eof = true;
          return null;
        }
        throw error;
      }
      if (n === null) {
        this.#eof = true;
        return null;
      }
      // A fresh buffer per read: decoded views stay valid.
      this.#frames.push(...this.#decoder.decode(buffer.subarray(0, n)));
    }
    return this.#frames.shift()!;
  }

  /**
   * Puts a message back to be read first.
   *
   * @param message The message.
   */
  unread(message: T): void {
    this.#frames.unshift(message);
  }

  /**
   * Reads messages until one satisfies `filter`, skipping the others.
   *
   * @param filter What to wait for.
   * @returns The message, or `null` at end of stream.
   */
  async readUntil(filter: (message: T) => boolean): Promise<T | null> {
    for (;;) {
      const message = await this.read();
      if (message === null || filter(message)) return message;
    }
  }

  /**
   * Reads and discards until end of stream (or close).
   *
   * @param onMessage Called with each message.
   * @returns How many messages were read.
   */
  async drainAll(onMessage?: (message: T) => void): Promise<number> {
    let n = 0;
    for (;;) {
      const message = await this.read();
      if (message === null) return n;
      n++;
      onMessage?.(message);
    }
  }

  /**
   * Encodes and writes messages in one write.
   *
   * @param messages The messages.
   */
  async write(...messages: T[]): Promise<void> {
    const parts = messages.map((m) => this.codec.encode(m));
    let total = 0;
    for (const part of parts) total += part.length;
    const bytes = new Uint8Array(total);
    let offset = 0;
    for (const part of parts) {
      bytes.set(part, offset);
      offset += part.length;
    }
    await this.writeBytes(bytes);
  }

  /**
   * Writes raw bytes.
   *
   * @param bytes The bytes.
   */
  async writeBytes(bytes: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < bytes.length) {
      offset += await this.conn.write(bytes.subarray(offset));
    }
  }

  /** Closes the connection (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

/** A listener on 127.0.0.1:0 whose connections a test drives by hand. */
export class RawPeer<T = Frame> implements AsyncDisposable {
  readonly #listener: Deno.Listener;
  readonly #codec: Codec<T>;
  readonly #conns: RawConn<T>[] = [];
  #closed = false;

  constructor(codec: Codec<T>) {
    this.#codec = codec;
    this.#listener = Deno.listen({ hostname: HOST, port: 0 });
  }

  /** The port it listens on. */
  get port(): number {
    return portOf(this.#listener.addr);
  }

  /** `"127.0.0.1:port"`. */
  get target(): string {
    return `${HOST}:${this.port}`;
  }

  /** Every connection accepted so far. */
  get conns(): readonly RawConn<T>[] {
    return this.#conns;
  }

  /**
   * Accepts the next connection.
   *
   * @returns The connection.
   */
  async accept(): Promise<RawConn<T>> {
    const conn = await this.#listener.accept();
    const raw = new RawConn(conn, this.#codec);
    if (this.#closed) raw.close();
    this.#conns.push(raw);
    // A default-protocol client sends one ping before its session counts as
    // ready: answer it, as any peer of the default protocol must.
    if (isFrameCodec(this.#codec)) {
      // Not default-protocol bytes (a TLS hello): leave them unanswered.
      const first = await raw.read().catch(() => null);
      if (first !== null) {
        const frame = first as unknown as Frame;
        if (frame.kind === FrameKind.Ping) {
          await raw.write(
            {
              kind: FrameKind.Pong,
              id: frame.id,
              payload: frame.payload,
            } as unknown as T,
          );
        } else {
          raw.unread(first);
        }
      }
    }
    return raw;
  }

  /** Stops listening; open connections stay open. */
  stopListening(): void {
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
  }

  /** Closes the listener and every connection. */
  close(): Promise<void> {
    this.#closed = true;
    this.stopListening();
    for (const conn of this.#conns) conn.close();
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Starts a raw peer speaking `codec` (the default protocol if omitted).
 *
 * @param codec The codec to speak.
 * @returns The peer.
 */
export function rawPeer(): RawPeer<Frame>;
export function rawPeer<T>(codec: Codec<T>): RawPeer<T>;
export function rawPeer<T>(codec?: Codec<T>): RawPeer<T> {
  if (codec !== undefined) return new RawPeer(codec);
  const frames = defaultCodec();
  frameCodecs.add(frames);
  return new RawPeer(frames as unknown as Codec<T>);
}

/**
 * A default-protocol response frame.
 *
 * @param id The request id.
 * @param payload The payload.
 * @returns The frame.
 */
export function response(id: number, payload: Uint8Array): Frame {
  return { kind: FrameKind.Response, id, payload };
}

/**
 * A default-protocol push frame.
 *
 * @param payload The payload.
 * @returns The frame.
 */
export function push(payload: Uint8Array): Frame {
  return { kind: FrameKind.Push, id: 0, payload };
}

/**
 * Answers pings and requests on a raw connection until it ends: pongs for
 * pings, `reply(payload)` responses for requests, a drain for a drain
 * (default protocol). Closes the connection at end of stream.
 *
 * @param conn The connection.
 * @param reply Builds a response payload; `undefined` leaves the request unanswered.
 * @returns How many frames were read.
 */
export function autoAnswer(
  conn: RawConn<Frame>,
  reply: (payload: Uint8Array) => Uint8Array | undefined = (p) => p,
): Promise<number> {
  let n = 0;
  return (async () => {
    for (;;) {
      const frame = await conn.read();
      if (frame === null) {
        // Like a server: once the client is done, close our end too.
        conn.close();
        return n;
      }
      n++;
      if (frame.kind === FrameKind.Ping) {
        await conn.write({ ...frame, kind: FrameKind.Pong }).catch(() => {});
      } else if (frame.kind === FrameKind.Request) {
        const payload = reply(frame.payload);
        if (payload !== undefined) {
          await conn.write(response(frame.id, payload)).catch(() => {});
        }
      } else if (frame.kind === FrameKind.Drain) {
        await conn.write(frame).catch(() => {});
      }
    }
  })();
}

// ---------------------------------------------------------------------------
// Events and latches

/** One recorded event. */
export interface Recorded<D = unknown> {
  /** Event type. */
  type: string;
  /** `event.detail`. */
  detail: D;
  /** `performance.now()` when it fired. */
  at: number;
}

/**
 * Records events of a target and lets a test wait for the next matching
 * one (already recorded ones count once each, in order).
 */
export class EventLog<D = unknown> implements Disposable {
  /** Everything recorded, in order. */
  readonly events: Recorded<D>[] = [];
  readonly #target: EventTarget;
  readonly #types: string[];
  readonly #listener = (event: Event) => {
    this.events.push({
      type: event.type,
      detail: (event as CustomEvent<D>).detail,
      at: performance.now(),
    });
    for (const wake of [...this.#wakers]) wake();
  };
  readonly #wakers = new Set<() => void>();
  readonly #cancels = new Set<() => void>();
  #cursor = 0;

  constructor(target: EventTarget, types: string[]) {
    this.#target = target;
    this.#types = types;
    for (const type of types) target.addEventListener(type, this.#listener);
  }

  /** Types of the events recorded so far. */
  get types(): string[] {
    return this.events.map((e) => e.type);
  }

  /**
   * Resolves with the first event after the cursor of this type (and
   * matching `filter`); moves the cursor past it.
   *
   * @param type Event type.
   * @param options `filter`, and `timeout` (ms, default 10 s) after which it rejects.
   * @returns The event.
   */
  next(
    type: string,
    options: { filter?: (detail: D) => boolean; timeout?: number } = {},
  ): Promise<Recorded<D>> {
    const find = () => {
      for (let i = this.#cursor; i < this.events.length; i++) {
        const e = this.events[i]!;
        if (e.type === type && (options.filter?.(e.detail) ?? true)) {
          this.#cursor = i + 1;
          return e;
        }
      }
      return undefined;
    };
    const found = find();
    if (found !== undefined) return Promise.resolve(found);
    const { promise, resolve, reject } = Promise.withResolvers<Recorded<D>>();
    const timeout = options.timeout ?? 10_000;
    const done = () => {
      clearTimeout(timer);
      this.#wakers.delete(wake);
      this.#cancels.delete(cancel);
    };
    const cancel = () => {
      done();
      reject(new Error(`Stopped waiting for "${type}": the log was disposed`));
    };
    const wake = () => {
      const e = find();
      if (e !== undefined) {
        done();
        resolve(e);
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(
        new Error(
          `No "${type}" event within ${timeout} ms; saw: ${
            this.types.join(", ")
          }`,
        ),
      );
    }, timeout);
    this.#wakers.add(wake);
    this.#cancels.add(cancel);
    return promise;
  }

  /**
   * Resolves once `predicate()` holds, checked now and after each event.
   *
   * @param predicate The condition.
   * @param timeout Milliseconds before rejecting.
   */
  until(predicate: () => boolean, timeout = 10_000): Promise<void> {
    if (predicate()) return Promise.resolve();
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    const done = () => {
      clearTimeout(timer);
      this.#wakers.delete(wake);
      this.#cancels.delete(cancel);
    };
    const cancel = () => {
      done();
      reject(new Error("Stopped waiting: the log was disposed"));
    };
    const wake = () => {
      if (predicate()) {
        done();
        resolve();
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(
        new Error(
          `Condition not met within ${timeout} ms; saw: ${
            this.types.join(", ")
          }`,
        ),
      );
    }, timeout);
    this.#wakers.add(wake);
    this.#cancels.add(cancel);
    return promise;
  }

  /** Stops recording; pending waits reject. */
  [Symbol.dispose](): void {
    for (const type of this.#types) {
      this.#target.removeEventListener(type, this.#listener);
    }
    for (const cancel of [...this.#cancels]) cancel();
  }
}

/**
 * Polls `predicate` every `interval` ms until it holds, for conditions that
 * have no event (for example counters that grow with time). Rejects after
 * `timeout` ms.
 *
 * @param predicate The condition.
 * @param options `interval` (default 10 ms), `timeout` (default 5 s).
 */
export async function pollUntil(
  predicate: () => boolean,
  options: { interval?: number; timeout?: number } = {},
): Promise<void> {
  const interval = options.interval ?? 10;
  const deadline = performance.now() + (options.timeout ?? 5000);
  while (!predicate()) {
    if (performance.now() > deadline) {
      throw new Error(`Condition not met within ${options.timeout ?? 5000} ms`);
    }
    await new Promise<void>((resolve) => setTimeout(resolve, interval));
  }
}

/** A counter whose values a test can wait for. */
export class Counter {
  #value = 0;
  readonly #waiters: { n: number; resolve: () => void }[] = [];

  /** The current value. */
  get value(): number {
    return this.#value;
  }

  /** Adds one and wakes waiters whose target was reached. */
  increment(): void {
    this.#value++;
    for (let i = this.#waiters.length - 1; i >= 0; i--) {
      const waiter = this.#waiters[i]!;
      if (this.#value >= waiter.n) {
        this.#waiters.splice(i, 1);
        waiter.resolve();
      }
    }
  }

  /**
   * Resolves once the value is at least `n`.
   *
   * @param n The target.
   */
  reach(n: number): Promise<void> {
    if (this.#value >= n) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#waiters.push({ n, resolve });
    return promise;
  }
}
