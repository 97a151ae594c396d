/**
 * A client's or server's events as a `ReadableStream` (async-iterable):
 * what `client.status()` and `server.status()` return, in the way of
 * nats.js `status()`. The `EventTarget` events stay; this reads them.
 *
 * Bounded: a reader that falls behind by `buffer` events loses the oldest,
 * and is told how many with a `{ type: "dropped", count }` entry before the
 * events it still gets.
 *
 * @module
 */

/** Stands for events a slow status reader lost (the oldest ones). */
export interface StatusDropped {
  /** Always `"dropped"`. */
  type: "dropped";
  /** How many events were dropped since the last one read. */
  count: number;
}

/** Options of `client.status()` and `server.status()`. */
export interface StatusOptions {
  /**
   * Events kept for a reader that falls behind; past them the oldest are
   * dropped (and counted in a `dropped` entry). An integer >= 1.
   *
   * @default {64}
   */
  buffer?: number;
  /** Aborts the stream: it errors with `signal.reason` and stops listening. */
  signal?: AbortSignal;
}

/**
 * Reads `types` events of `target` (their `CustomEvent` detail) as a
 * stream, which ends after the `last` one, or once `closed` resolves (the
 * target closed before the stream was opened: it ends empty).
 *
 * @throws {RangeError} `buffer` is not an integer >= 1.
 */
export function statusStream<D extends { type: string }>(
  target: EventTarget,
  types: readonly string[],
  last: string,
  closed: Promise<unknown>,
  options: StatusOptions | undefined,
): ReadableStream<D | StatusDropped> {
  const max = options?.buffer ?? 64;
  if (!Number.isInteger(max) || max < 1) {
    throw new RangeError(
      `Cannot open status stream: buffer must be an integer >= 1, got ${max}`,
    );
  }
  const source = new StatusSource<D>(
    target,
    types,
    last,
    max,
    options?.signal,
    hubOf(target, closed),
  );
  return source.open();
}

/** The status streams of one client or server that are still listening. */
interface Hub {
  /** The owner has closed: no more events come. */
  ended: boolean;
  live: Set<{ end(): void }>;
}

const hubs = new WeakMap<EventTarget, Hub>();

/**
 * The hub of `target`'s status streams, which ends them all once `closed`
 * resolves: one reaction on `closed` per owner, however many streams are
 * opened and cancelled before it closes.
 */
function hubOf(target: EventTarget, closed: Promise<unknown>): Hub {
  let hub = hubs.get(target);
  if (hub === undefined) {
    const made: Hub = hub = { ended: false, live: new Set() };
    hubs.set(target, made);
    closed.then(() => {
      made.ended = true;
      for (const source of made.live) source.end();
    });
  }
  return hub;
}

/** The listener behind a status stream, and its bounded queue. */
class StatusSource<D extends { type: string }> {
  readonly #target: EventTarget;
  readonly #types: readonly string[];
  readonly #last: string;
  readonly #max: number;
  readonly #signal: AbortSignal | undefined;
  readonly #hub: Hub;
  readonly #queue: D[] = [];
  #dropped = 0;
  #ended = false;
  /** A read is pending and nothing was there to give it. */
  #wanted = false;
  #controller!: ReadableStreamDefaultController<D | StatusDropped>;
  readonly #listener = (event: Event) => this.#event(event);
  readonly #onAbort = () => {
    this.#stop();
    this.#controller.error(this.#signal!.reason);
  };

  constructor(
    target: EventTarget,
    types: readonly string[],
    last: string,
    max: number,
    signal: AbortSignal | undefined,
    hub: Hub,
  ) {
    this.#target = target;
    this.#types = types;
    this.#last = last;
    this.#max = max;
    this.#signal = signal;
    this.#hub = hub;
  }

  open(): ReadableStream<D | StatusDropped> {
    return new ReadableStream<D | StatusDropped>({
      start: (controller) => {
        this.#controller = controller;
        const signal = this.#signal;
        if (signal?.aborted) return controller.error(signal.reason);
        for (const type of this.#types) {
          this.#target.addEventListener(type, this.#listener);
        }
        signal?.addEventListener("abort", this.#onAbort, { once: true });
        if (this.#hub.ended) this.end();
        else this.#hub.live.add(this);
      },
      pull: (controller) => {
        const entry = this.#next();
        if (entry !== undefined) controller.enqueue(entry);
        else if (this.#ended) controller.close();
        else this.#wanted = true;
      },
      cancel: () => this.#stop(),
    }, { highWaterMark: 0 });
  }

  #event(event: Event): void {
    const detail = (event as CustomEvent<D>).detail;
    const queue = this.#queue;
    if (this.#wanted) {
      this.#wanted = false;
      this.#controller.enqueue(detail);
    } else {
      if (queue.length >= this.#max) {
        queue.shift();
        this.#dropped++;
      }
      queue.push(detail);
    }
    if (event.type === this.#last) this.end();
  }

  /** The next entry for the reader: a count of the dropped goes first. */
  #next(): D | StatusDropped | undefined {
    const dropped = this.#dropped;
    if (dropped === 0) return this.#queue.shift();
    this.#dropped = 0;
    return { type: "dropped", count: dropped };
  }

  /** No more events come: the reader gets what is queued, then the end. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#stop();
    if (this.#wanted) {
      this.#wanted = false;
      this.#controller.close();
    }
  }

  #stop(): void {
    this.#hub.live.delete(this);
    for (const type of this.#types) {
      this.#target.removeEventListener(type, this.#listener);
    }
    this.#signal?.removeEventListener("abort", this.#onAbort);
  }
}
