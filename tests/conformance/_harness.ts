/**
 * The conformance suite's registry, runtime-neutral: cases register here,
 * `tests/conformance_test.ts` hands them to `Deno.test`, and `run.ts` runs
 * them on Node and Bun (bundled, since Node 20 cannot run TypeScript). The
 * cases use no `using` declarations: the bundle keeps them as written, and
 * neither Node 20 nor 22 parses them.
 *
 * @module
 */

/** What a case gets: a place to register clean-up. */
export interface CaseContext {
  /**
   * Runs `fn` when the case ends, pass or fail; the last registered first.
   *
   * @param fn The clean-up.
   */
  defer(fn: () => unknown): void;
}

/** One case of the suite. */
export interface ConformanceCase {
  /** What it checks. */
  readonly name: string;
  /** Whether it makes certificates with the `openssl` binary. */
  readonly needsOpenssl: boolean;
  /** Runs the case with its clean-up. */
  run(): Promise<void>;
}

/** Every registered case, in registration order. */
export const cases: ConformanceCase[] = [];

/**
 * Registers a case.
 *
 * @param name What it checks.
 * @param fn The case.
 * @param options `needsOpenssl` for cases that make certificates.
 */
export function conformance(
  name: string,
  fn: (t: CaseContext) => Promise<void>,
  options: { needsOpenssl?: boolean } = {},
): void {
  cases.push({
    name,
    needsOpenssl: options.needsOpenssl ?? false,
    async run() {
      const cleanups: (() => unknown)[] = [];
      try {
        await fn({ defer: (cleanup) => cleanups.push(cleanup) });
      } finally {
        for (const cleanup of cleanups.reverse()) await cleanup();
      }
    },
  });
}
