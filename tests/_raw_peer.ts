/**
 * Test helpers for server tests: a raw `Deno.connect` peer that speaks the
 * default protocol by hand (so tests control every byte and can misbehave),
 * a logger that records what it is told, latches and event waiters.
 *
 * @module
 */

import { defaultCodec, type Frame, FrameKind } from "../protocol.ts";
import type { FrameDecoder } from "../framing/codec.ts";
import type { Logger } from "../logger.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** UTF-8 bytes of a string. */
export function bytes(text: string): Uint8Array {
  return encoder.encode(text);
}

/** The string of UTF-8 bytes. */
export function text(data: Uint8Array): string {
  return decoder.decode(data);
}

/** Options of {@linkcode connectRaw}. */
export interface RawPeerOptions {
  /** Host to connect to. @default {"127.0.0.1"} */
  hostname?: string;
  /** Largest payload the peer's decoder accepts. @default {16777216} */
  maxFrameBytes?: number;
}

/** How a raw peer's connection ended. */
export interface RawEnd {
  /** `"eof"` for an orderly end (FIN), `"error"` for a reset or other error. */
  how: "eof" | "error";
  /** The read error, when `how` is `"error"`. */
  error?: unknown;
  /** Frames read before the end. */
  frames: Frame[];
}

/**
 * A connection that speaks the default protocol by hand. Frames read are
 * copies (safe to keep). Reads happen only when a test asks for them.
 */
export class RawPeer implements AsyncDisposable {
  /** The underlying connection. */
  readonly conn: Deno.Conn;
  readonly #decoder: FrameDecoder<Frame>;
  readonly #codec: ReturnType<typeof defaultCodec>;
  readonly #frames: Frame[] = [];
  #ended: RawEnd | undefined;
  #closed = false;
  /** The read in flight, shared by concurrent callers (one read at a time). */
  #reading: Promise<void> | undefined;

  constructor(conn: Deno.Conn, maxFrameBytes = 16 * 1024 * 1024) {
    this.conn = conn;
    this.#codec = defaultCodec({ maxFrameBytes });
    this.#decoder = this.#codec.decoder();
  }

  /** Writes all of `data`. */
  async write(data: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < data.length) {
      offset += await this.conn.write(data.subarray(offset));
    }
  }

  /** Encodes and writes one frame. */
  send(
    kind: number,
    id: number,
    payload: Uint8Array = new Uint8Array(0),
  ): Promise<void> {
    return this.write(encodeFrame(kind, id, payload));
  }

  /** Writes a request frame. */
  request(id: number, payload: Uint8Array | string = ""): Promise<void> {
    return this.send(
      FrameKind.Request,
      id,
      typeof payload === "string" ? bytes(payload) : payload,
    );
  }

  /**
   * The next frame, or `null` once the connection ended (see
   * {@linkcode RawPeer.end}).
   */
  async next(): Promise<Frame | null> {
    for (;;) {
      const frame = this.#frames.shift();
      if (frame !== undefined) return frame;
      if (this.#ended !== undefined) return null;
      await this.#readOnce();
    }
  }

  /**
   * The next frame; fails the test if the connection ends first, the frame
   * is of another kind, or nothing comes within `timeout` ms (a guard
   * against hung tests, not a synchronisation).
   */
  async expect(kind?: number, timeout = 5000): Promise<Frame> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `Expected a frame${
                kind === undefined ? "" : ` of kind ${kind}`
              }, none came within ${timeout} ms`,
            ),
          ),
        timeout,
      );
    });
    let frame: Frame | null;
    try {
      frame = await Promise.race([this.next(), late]);
    } finally {
      clearTimeout(timer);
    }
    if (frame === null) {
      throw new Error(
        `Expected a frame${
          kind === undefined ? "" : ` of kind ${kind}`
        }, the connection ended (${this.#ended?.how}: ${
          String(this.#ended?.error)
        })`,
      );
    }
    if (kind !== undefined && frame.kind !== kind) {
      throw new Error(
        `Expected a frame of kind ${kind}, got kind ${frame.kind} id ${frame.id}: ${
          text(frame.payload)
        }`,
      );
    }
    return frame;
  }

  /** Reads until the connection ends; resolves with how, and the frames read. */
  async end(): Promise<RawEnd> {
    while (this.#ended === undefined) await this.#readOnce();
    const frames = this.#frames.splice(0);
    return { ...this.#ended, frames: [...this.#ended.frames, ...frames] };
  }

  /** Whether the connection has been seen to end. */
  get ended(): boolean {
    return this.#ended !== undefined;
  }

  #readOnce(): Promise<void> {
    this.#reading ??= this.#read().finally(() => this.#reading = undefined);
    return this.#reading;
  }

  async #read(): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    let n: number | null;
    try {
      n = await this.conn.read(buffer);
    } catch (error) {
      this.#ended = { how: "error", error, frames: [] };
      return;
    }
    if (n === null) {
      this.#ended = { how: "eof", frames: [] };
      return;
    }
    // A fresh buffer per read: the decoder's views stay valid.
    for (const frame of this.#decoder.decode(buffer.subarray(0, n))) {
      this.#frames.push({
        kind: frame.kind,
        id: frame.id,
        payload: frame.payload.slice(),
      });
    }
  }

  /** Half-closes: the server reads EOF, the peer can still read. */
  async closeWrite(): Promise<void> {
    await this.conn.closeWrite();
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

  /** Same as `close()`. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }
}

/** Connects a raw peer to `port` on loopback. */
export async function connectRaw(
  port: number,
  options: RawPeerOptions = {},
): Promise<RawPeer> {
  const conn = await Deno.connect({
    hostname: options.hostname ?? "127.0.0.1",
    port,
  });
  return new RawPeer(conn, options.maxFrameBytes);
}

/** Encodes one default-protocol frame by hand (no size check). */
export function encodeFrame(
  kind: number,
  id: number,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const out = new Uint8Array(9 + payload.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, 5 + payload.length);
  out[4] = kind;
  view.setUint32(5, id);
  out.set(payload, 9);
  return out;
}

/** A frame header alone (length, kind, id), announcing `payloadBytes`. */
export function frameHeader(
  kind: number,
  id: number,
  payloadBytes: number,
): Uint8Array {
  const out = new Uint8Array(9);
  const view = new DataView(out.buffer);
  view.setUint32(0, 5 + payloadBytes);
  out[4] = kind;
  view.setUint32(5, id);
  return out;
}

/** One log call recorded by {@linkcode CaptureLogger}. */
export interface LogEntry {
  /** The level. */
  level: "debug" | "info" | "warn" | "error";
  /** The message. */
  message: string;
  /** The properties. */
  properties: Record<string, unknown> | undefined;
}

/** A logger that keeps every entry, and lets tests wait for one. */
export class CaptureLogger implements Logger {
  /** Everything logged so far. */
  readonly entries: LogEntry[] = [];
  readonly #waiters: {
    match: (entry: LogEntry) => boolean;
    resolve: (entry: LogEntry) => void;
  }[] = [];

  #log(
    level: LogEntry["level"],
    message: string,
    properties?: Record<string, unknown>,
  ) {
    const entry = { level, message, properties };
    this.entries.push(entry);
    for (const waiter of [...this.#waiters]) {
      if (waiter.match(entry)) {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        waiter.resolve(entry);
      }
    }
  }

  /** @inheritdoc */
  debug(message: string, properties?: Record<string, unknown>): void {
    this.#log("debug", message, properties);
  }
  /** @inheritdoc */
  info(message: string, properties?: Record<string, unknown>): void {
    this.#log("info", message, properties);
  }
  /** @inheritdoc */
  warn(message: string, properties?: Record<string, unknown>): void {
    this.#log("warn", message, properties);
  }
  /** @inheritdoc */
  error(message: string, properties?: Record<string, unknown>): void {
    this.#log("error", message, properties);
  }

  /** Resolves with the first entry (past or future) that matches. */
  waitFor(match: (entry: LogEntry) => boolean): Promise<LogEntry> {
    const seen = this.entries.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    const { promise, resolve } = Promise.withResolvers<LogEntry>();
    this.#waiters.push({ match, resolve });
    return promise;
  }
}

/** A countdown: `promise` resolves once `count()` was called `n` times. */
export function latch(n: number): { count(): void; promise: Promise<void> } {
  const { promise, resolve } = Promise.withResolvers<void>();
  let left = n;
  if (left <= 0) resolve();
  return {
    count() {
      if (--left === 0) resolve();
    },
    promise,
  };
}

/**
 * Resolves with the `detail` of the `n`-th event of `type` (counted from
 * now) whose detail matches; listen before acting.
 */
export function nextEvents<D = unknown>(
  target: EventTarget,
  type: string,
  n = 1,
  match: (detail: D) => boolean = () => true,
): Promise<D[]> {
  const { promise, resolve } = Promise.withResolvers<D[]>();
  const seen: D[] = [];
  const listener = (event: Event) => {
    const detail = (event as CustomEvent<D>).detail;
    if (!match(detail)) return;
    seen.push(detail);
    if (seen.length === n) {
      target.removeEventListener(type, listener);
      resolve(seen);
    }
  };
  target.addEventListener(type, listener);
  return promise;
}
