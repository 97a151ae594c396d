import assert from "node:assert/strict";
import fc from "fast-check";
import { type BackoffOptions, delay, exponentialBackoff } from "../backoff.ts";

/** Cycles through `values` forever: a deterministic `random`. */
function cycle(values: readonly number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length]!;
}

/** The ceiling of attempt n, computed independently of the implementation. */
function ceiling(
  initial: number,
  max: number,
  multiplier: number,
  n: number,
): number {
  if (initial === 0) return 0;
  return Math.min(max, initial * multiplier ** n);
}

Deno.test("exponentialBackoff() keeps every delay within [0, min(max, initial * 2^n)]", () => {
  fc.assert(
    fc.property(
      fc.double({ min: 0, max: 10_000, noNaN: true }),
      fc.double({ min: 0, max: 1e7, noNaN: true }),
      fc.array(fc.double({ min: 0, max: 1, noNaN: true }), {
        minLength: 1,
        maxLength: 50,
      }),
      fc.integer({ min: 0, max: 3_000 }),
      (initial, extra, randoms, attempts) => {
        const max = initial + extra;
        const backoff = exponentialBackoff({
          initial,
          max,
          random: cycle(randoms),
        });
        for (let n = 0; n < attempts; n++) {
          const value = backoff.next();
          assert.ok(
            value >= 0 && value <= ceiling(initial, max, 2, n),
            `attempt ${n}: ${value} outside [0, ${
              ceiling(initial, max, 2, n)
            }]`,
          );
        }
        assert.equal(backoff.attempt, attempts);
      },
    ),
  );
});

Deno.test("exponentialBackoff() keeps delays within bounds for any multiplier, jitter and Math.random", () => {
  fc.assert(
    fc.property(
      fc.double({ min: 0, max: 1e6, noNaN: true }),
      fc.double({ min: 0, max: 1e9, noNaN: true }),
      fc.double({ min: 1, max: 1e6, noNaN: true }),
      fc.constantFrom<"full" | "none">("full", "none"),
      fc.integer({ min: 0, max: 2_000 }),
      (initial, extra, multiplier, jitter, attempts) => {
        const max = initial + extra;
        const backoff = exponentialBackoff({
          initial,
          max,
          multiplier,
          jitter,
        });
        for (let n = 0; n < attempts; n++) {
          const value = backoff.next();
          const bound = ceiling(initial, max, multiplier, n);
          if (jitter === "none") {
            assert.equal(value, bound, `attempt ${n}`);
          } else {
            assert.ok(value >= 0 && value <= bound, `attempt ${n}: ${value}`);
          }
        }
      },
    ),
  );
});

Deno.test("exponentialBackoff() with jitter none gives the exact ceilings", () => {
  const backoff = exponentialBackoff({
    initial: 100,
    max: 30_000,
    jitter: "none",
  });
  const delays = Array.from({ length: 11 }, () => backoff.next());
  assert.deepEqual(delays, [
    100,
    200,
    400,
    800,
    1_600,
    3_200,
    6_400,
    12_800,
    25_600,
    30_000,
    30_000,
  ]);
  const tripling = exponentialBackoff({
    initial: 10,
    max: 1_000,
    multiplier: 3,
    jitter: "none",
  });
  assert.deepEqual(Array.from({ length: 6 }, () => tripling.next()), [
    10,
    30,
    90,
    270,
    810,
    1_000,
  ]);
});

Deno.test("exponentialBackoff() uses defaults initial 100, max 30000, multiplier 2", () => {
  const backoff = exponentialBackoff({ jitter: "none" });
  assert.deepEqual(
    Array.from({ length: 10 }, () => backoff.next()),
    [100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000],
  );
});

Deno.test("exponentialBackoff() scales the ceiling by random with full jitter", () => {
  const backoff = exponentialBackoff({
    initial: 100,
    max: 1_000,
    random: cycle([0, 0.5, 1, 0.25, 0.5]),
  });
  assert.deepEqual(
    Array.from({ length: 5 }, () => backoff.next()),
    [0, 100, 400, 200, 500],
  );
});

Deno.test("exponentialBackoff().reset() starts the sequence over", () => {
  const backoff = exponentialBackoff({
    initial: 50,
    max: 10_000,
    jitter: "none",
  });
  const first = Array.from({ length: 7 }, () => backoff.next());
  assert.equal(backoff.attempt, 7);
  backoff.reset();
  assert.equal(backoff.attempt, 0);
  const second = Array.from({ length: 7 }, () => backoff.next());
  assert.deepEqual(second, first);
  assert.equal(second[0], 50);
});

Deno.test("exponentialBackoff() stays finite after many attempts", async (t) => {
  const cases: [string, BackoffOptions][] = [
    ["defaults", { jitter: "none" }],
    ["huge multiplier", { initial: 1, max: 1e300, multiplier: 1e300 }],
    ["tiny initial", { initial: 5e-324, max: 30_000, jitter: "none" }],
    ["zero initial", { initial: 0, max: 0 }],
    ["multiplier 1", { initial: 7, max: 9, multiplier: 1, jitter: "none" }],
    ["max at float limit", {
      initial: 1,
      max: Number.MAX_VALUE,
      jitter: "none",
    }],
  ];
  for (const [name, options] of cases) {
    await t.step(name, () => {
      const backoff = exponentialBackoff(options);
      const max = options.max ?? 30_000;
      let last = Number.NaN;
      for (let n = 0; n < 100_000; n++) {
        last = backoff.next();
        assert.ok(Number.isFinite(last) && last >= 0 && last <= max, `${n}`);
      }
      if (options.jitter === "none") {
        assert.equal(last, options.multiplier === 1 ? options.initial : max);
      }
    });
  }
});

Deno.test("exponentialBackoff() throws RangeError or TypeError on bad options", async (t) => {
  const cases: [string, BackoffOptions, ErrorConstructor][] = [
    ["negative initial", { initial: -1 }, RangeError],
    ["NaN initial", { initial: Number.NaN }, RangeError],
    ["infinite initial", { initial: Infinity }, RangeError],
    ["negative max", { initial: 0, max: -1 }, RangeError],
    ["NaN max", { max: Number.NaN }, RangeError],
    ["infinite max", { max: Infinity }, RangeError],
    ["initial over max", { initial: 200, max: 100 }, RangeError],
    ["multiplier below 1", { multiplier: 0.5 }, RangeError],
    ["negative multiplier", { multiplier: -2 }, RangeError],
    ["NaN multiplier", { multiplier: Number.NaN }, RangeError],
    ["infinite multiplier", { multiplier: Infinity }, RangeError],
    ["unknown jitter", {
      jitter: "equal" as unknown as "full",
    }, TypeError],
    ["random not a function", {
      random: 0.5 as unknown as () => number,
    }, TypeError],
  ];
  for (const [name, options, type] of cases) {
    await t.step(name, () => {
      assert.throws(() => exponentialBackoff(options), type);
    });
  }
});

Deno.test("exponentialBackoff().next() throws RangeError when random leaves [0, 1]", () => {
  for (const value of [-0.1, 1.5, Number.NaN]) {
    const backoff = exponentialBackoff({ random: () => value });
    assert.throws(() => backoff.next(), RangeError);
  }
});

Deno.test("delay() resolves after ms", async () => {
  const start = performance.now();
  await delay(5);
  assert.ok(performance.now() - start >= 4);
  await delay(0);
});

Deno.test("delay() rejects at once with signal.reason when aborted", async () => {
  const controller = new AbortController();
  const reason = new Error("stop");
  const waiting = delay(60_000, { signal: controller.signal });
  controller.abort(reason);
  // Settling proves the 60 s timer did not have to run; the op sanitizer
  // proves it was cleared.
  await assert.rejects(waiting, (error) => error === reason);
});

Deno.test("delay() rejects with the default AbortError reason unchanged", async () => {
  const controller = new AbortController();
  const waiting = delay(60_000, { signal: controller.signal });
  controller.abort();
  const reason = controller.signal.reason;
  assert.ok(reason instanceof DOMException);
  await assert.rejects(waiting, (error) => error === reason);
});

Deno.test("delay() rejects immediately with the same reason when already aborted", async () => {
  const reason = { why: "already" };
  const signal = AbortSignal.abort(reason);
  const calls = spyListeners(signal);
  const waiting = delay(60_000, { signal });
  await assert.rejects(waiting, (error) => error === reason);
  assert.deepEqual(calls, { added: 0, removed: 0 });
});

Deno.test("delay() removes its abort listener when it resolves", async () => {
  const controller = new AbortController();
  const calls = spyListeners(controller.signal);
  await delay(1, { signal: controller.signal });
  assert.deepEqual(calls, { added: 1, removed: 1 });
  controller.abort(); // nothing listens any more: no late rejection
});

Deno.test("delay() removes its abort listener when aborted", async () => {
  const controller = new AbortController();
  const calls = spyListeners(controller.signal);
  const waiting = delay(60_000, { signal: controller.signal });
  controller.abort(new Error("stop"));
  await assert.rejects(waiting);
  assert.deepEqual(calls, { added: 1, removed: 1 });
});

Deno.test("delay() rejects RangeError for negative, NaN or infinite ms", async () => {
  for (const ms of [-1, Number.NaN, Infinity, -Infinity]) {
    await assert.rejects(delay(ms), RangeError);
  }
});

Deno.test("delay() chains timers for durations over 2^31 - 1 ms", async () => {
  const steps: unknown[] = [];
  const original = globalThis.setTimeout;
  globalThis.setTimeout = ((callback: () => void, ms?: number) => {
    steps.push(ms);
    return original(callback, ms);
  }) as typeof setTimeout;
  const controller = new AbortController();
  let waiting: Promise<void>;
  try {
    waiting = delay(2 ** 32, { signal: controller.signal });
  } finally {
    globalThis.setTimeout = original;
  }
  assert.deepEqual(steps, [2 ** 31 - 1]);
  controller.abort(new Error("stop"));
  await assert.rejects(waiting);
});

/** Counts add/removeEventListener calls for "abort" on `signal`. */
function spyListeners(
  signal: AbortSignal,
): { added: number; removed: number } {
  const calls = { added: 0, removed: 0 };
  const listeners = new Set<unknown>();
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = ((
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | AddEventListenerOptions,
  ) => {
    if (type === "abort") {
      calls.added++;
      listeners.add(listener);
    }
    add(type, listener, options);
  }) as typeof signal.addEventListener;
  signal.removeEventListener = ((
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | EventListenerOptions,
  ) => {
    if (type === "abort" && listeners.delete(listener)) calls.removed++;
    remove(type, listener, options);
  }) as typeof signal.removeEventListener;
  return calls;
}
