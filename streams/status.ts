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
  const signal = options?.signal;
  const queue: D[] = [];
  let dropped = 0;
  let ended = false;
  let wanted = false;
  let controller!: ReadableStreamDefaultController<D | StatusDropped>;
  const stop = () => {
    for (const type of types) target.removeEventListener(type, listener);
    signal?.removeEventListener("abort", onAbort);
  };
  const next = (): D | StatusDropped | undefined => {
    if (dropped > 0) {
      const entry: StatusDropped = { type: "dropped", count: dropped };
      dropped = 0;
      return entry;
    }
    return queue.shift();
  };
  const end = () => {
    ended = true;
    stop();
    if (wanted) {
      wanted = false;
      controller.close();
    }
  };
  const listener = (event: Event) => {
    const detail = (event as CustomEvent<D>).detail;
    if (wanted) {
      wanted = false;
      controller.enqueue(detail);
    } else {
      if (queue.length >= max) {
        queue.shift();
        dropped++;
      }
      queue.push(detail);
    }
    if (event.type === last) end();
  };
  const onAbort = () => {
    stop();
    controller.error(signal!.reason);
  };
  return new ReadableStream<D | StatusDropped>({
    start(c) {
      controller = c;
      if (signal?.aborted) return c.error(signal.reason);
      for (const type of types) target.addEventListener(type, listener);
      signal?.addEventListener("abort", onAbort, { once: true });
      closed.then(() => {
        if (!ended) end();
      });
    },
    pull(c) {
      const entry = next();
      if (entry === undefined) {
        if (ended) c.close();
        else wanted = true;
        return;
      }
      c.enqueue(entry);
    },
    cancel: stop,
  }, { highWaterMark: 0 });
}
