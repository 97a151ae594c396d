/**
 * An in-memory transport pair, so a session can be driven without sockets:
 * what one end writes the other reads, and a test can stall or fail writes,
 * end a direction (EOF) or reset the connection.
 *
 * @module
 */

import type { Transport } from "../connection.ts";

const ADDR: Deno.NetAddr = { transport: "tcp", hostname: "127.0.0.1", port: 1 };

/** One direction: writes are copied in, reads take them out. */
class Pipe {
  #chunks: Uint8Array[] = [];
  #reader:
    | {
      buf: Uint8Array;
      resolve: (n: number | null) => void;
      reject: (error: unknown) => void;
    }
    | undefined;
  #ended = false;
  #error: unknown;

  push(bytes: Uint8Array): void {
    const copy = bytes.slice();
    const reader = this.#reader;
    if (reader === undefined) return void this.#chunks.push(copy);
    this.#reader = undefined;
    reader.resolve(this.#take(copy, reader.buf));
  }

  #take(chunk: Uint8Array, buf: Uint8Array): number {
    const n = Math.min(chunk.length, buf.length);
    buf.set(chunk.subarray(0, n));
    if (n < chunk.length) this.#chunks.unshift(chunk.subarray(n));
    return n;
  }

  read(buf: Uint8Array): Promise<number | null> {
    if (this.#error !== undefined) return Promise.reject(this.#error);
    const chunk = this.#chunks.shift();
    if (chunk !== undefined) return Promise.resolve(this.#take(chunk, buf));
    if (this.#ended) return Promise.resolve(null);
    return new Promise((resolve, reject) =>
      this.#reader = { buf, resolve, reject }
    );
  }

  /** End of stream for the reader, once it has read what is there. */
  end(): void {
    this.#ended = true;
    const reader = this.#reader;
    this.#reader = undefined;
    reader?.resolve(null);
  }

  /** Reads fail with `error` from now on. */
  fail(error: unknown): void {
    this.#error = error;
    const reader = this.#reader;
    this.#reader = undefined;
    reader?.reject(error);
  }
}

/** One end of a {@linkcode memoryPair}. */
export class MemoryTransport implements Transport {
  readonly localAddr: Deno.Addr = ADDR;
  readonly remoteAddr: Deno.Addr = ADDR;
  readonly #in: Pipe;
  readonly #out: Pipe;
  #stalled: PromiseWithResolvers<void> | undefined;
  #writeError: unknown;
  #closed = false;
  /** Bytes this end wrote. */
  written = 0;

  constructor(inbound: Pipe, outbound: Pipe) {
    this.#in = inbound;
    this.#out = outbound;
  }

  read(p: Uint8Array): Promise<number | null> {
    if (this.#closed) {
      return Promise.reject(new Deno.errors.BadResource("closed"));
    }
    return this.#in.read(p);
  }

  async write(p: Uint8Array): Promise<number> {
    while (this.#stalled !== undefined) await this.#stalled.promise;
    if (this.#writeError !== undefined) throw this.#writeError;
    if (this.#closed) throw new Deno.errors.BadResource("closed");
    this.#out.push(p);
    this.written += p.length;
    return p.length;
  }

  closeWrite(): Promise<void> {
    this.#out.end();
    return Promise.resolve();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#in.fail(new Deno.errors.Interrupted("closed"));
    this.#out.end();
    this.#writeError ??= new Deno.errors.BadResource("closed");
    this.resumeWrites();
  }

  /** Writes wait until {@linkcode resumeWrites} (a peer that does not read). */
  stallWrites(): void {
    this.#stalled ??= Promise.withResolvers<void>();
  }

  /** Lets stalled writes go on. */
  resumeWrites(): void {
    const stalled = this.#stalled;
    this.#stalled = undefined;
    stalled?.resolve();
  }

  /** Writes fail with `error` from now on (stalled ones too, once let go). */
  failWrites(error: unknown): void {
    this.#writeError = error;
    this.resumeWrites();
  }

  /** The connection is reset: reads fail on both ends, and writes here. */
  reset(peer: MemoryTransport): void {
    const error = new Deno.errors.ConnectionReset("reset by peer");
    this.#in.fail(error);
    peer.#in.fail(error);
    this.failWrites(error);
    peer.failWrites(error);
  }
}

/** Two connected ends. */
export function memoryPair(): [MemoryTransport, MemoryTransport] {
  const ab = new Pipe();
  const ba = new Pipe();
  return [new MemoryTransport(ba, ab), new MemoryTransport(ab, ba)];
}
