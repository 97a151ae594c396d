/**
 * Helpers for tests that run a child process (a server to kill and restart)
 * and for tests that must never hang.
 *
 * A child announces that it is ready by printing a line on stdout; servers
 * bind 127.0.0.1 port 0 and print the port they got, by convention as
 * `listening 127.0.0.1:PORT` (see {@linkcode LISTENING_LINE}), so no test
 * ever picks a port itself. Stdout and stderr are piped and read to the end,
 * so Deno's resource sanitizer passes once the child is killed.
 *
 * @module
 */

import { ClosedError, TimeoutError } from "../errors.ts";

/**
 * The conventional ready line of a test server: `listening HOST:PORT`, with
 * named groups `hostname` and `port`.
 *
 * @example Usage
 * ```ts
 * import { LISTENING_LINE } from "./_process.ts";
 * import assert from "node:assert/strict";
 *
 * const match = "listening 127.0.0.1:4242".match(LISTENING_LINE);
 * assert.equal(match?.groups?.port, "4242");
 * ```
 */
export const LISTENING_LINE: RegExp =
  /^listening (?<hostname>\[[^\]]+\]|[^\s:]+):(?<port>\d+)\s*$/;

/** Options of {@linkcode startProcess}. */
export interface StartProcessOptions {
  /** Extra environment variables; the parent's environment is inherited. */
  env?: Record<string, string>;
  /** Working directory of the child. */
  cwd?: string | URL;
  /**
   * The stdout line that means "ready"; {@linkcode startProcess} resolves
   * with its match.
   *
   * @default {LISTENING_LINE}
   */
  readyLine?: RegExp;
  /**
   * Milliseconds to wait for the ready line before killing the child and
   * rejecting with a `TimeoutError`.
   *
   * @default {10000}
   */
  readyTimeout?: number;
  /** Stops waiting for the ready line: the child is killed, `signal.reason` thrown. */
  signal?: AbortSignal;
}

/** Options of {@linkcode ChildProcess.waitForLine}. */
export interface WaitForLineOptions {
  /** Stops waiting: rejects with `signal.reason`. */
  signal?: AbortSignal;
  /**
   * Milliseconds before rejecting with a `TimeoutError`.
   *
   * @default {10000}
   */
  timeout?: number;
}

/** A running child process, made by {@linkcode startProcess}. */
export interface ChildProcess extends AsyncDisposable {
  /** The child's process id. */
  readonly pid: number;
  /** The match of the ready line. */
  readonly match: RegExpMatchArray;
  /** Every stdout line so far (without the line break). */
  readonly stdoutLines: readonly string[];
  /** Every stderr line so far (without the line break). */
  readonly stderrLines: readonly string[];
  /** Resolves with the exit status once the child has exited. */
  readonly status: Promise<Deno.CommandStatus>;
  /**
   * Resolves with the match of the first stdout line, among those printed
   * so far and later, that matches `pattern`.
   *
   * @param pattern The line to look for.
   * @param options `signal` and `timeout`.
   * @returns The match.
   * @throws {ClosedError} If stdout ends first (the child exited).
   * @throws {TimeoutError} If no such line comes within `timeout`.
   */
  waitForLine(
    pattern: RegExp,
    options?: WaitForLineOptions,
  ): Promise<RegExpMatchArray>;
  /**
   * Sends `signal` unless the child has exited, then waits for the exit and
   * for stdout and stderr to be read to the end.
   *
   * @param signal The signal to send.
   * @returns The exit status.
   */
  kill(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
  /**
   * Kills the child with `signal` and starts the same command again with the
   * same options.
   *
   * @param signal The signal to kill with.
   * @returns The new child, once it printed its ready line.
   */
  restart(signal?: Deno.Signal): Promise<ChildProcess>;
}

/**
 * Starts `cmd` as a child process and waits for its ready line on stdout.
 * A first element `"deno"` is replaced by `Deno.execPath()`. Stdin is
 * `null`; stdout and stderr are piped, read line by line to the end.
 *
 * @param cmd The program and its arguments.
 * @param options Environment, ready line, timeout and signal.
 * @returns The child, once the ready line was printed.
 * @throws {TypeError} If `cmd` is empty.
 * @throws {ClosedError} If the child exits before printing the ready line.
 * @throws {TimeoutError} If the ready line does not come within `readyTimeout`.
 *
 * @example Usage
 * ```ts
 * import { startProcess } from "./_process.ts";
 * import assert from "node:assert/strict";
 *
 * await using child = await startProcess([
 *   "deno",
 *   "eval",
 *   "console.log('ready 42'); setInterval(() => {}, 1000);",
 * ], { readyLine: /^ready (\d+)$/ });
 * assert.equal(child.match[1], "42");
 * const status = await child.kill("SIGTERM");
 * assert.equal(status.signal, "SIGTERM");
 * ```
 */
export async function startProcess(
  cmd: string[],
  options: StartProcessOptions = {},
): Promise<ChildProcess> {
  const [program, ...args] = cmd;
  if (program === undefined) {
    throw new TypeError("Cannot start process: the command is empty");
  }
  const command = new Deno.Command(
    program === "deno" ? Deno.execPath() : program,
    {
      args,
      ...(options.env === undefined ? {} : { env: options.env }),
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    },
  );
  const child = new Child(command.spawn(), cmd, options);
  try {
    const match = await child.waitForLine(options.readyLine ?? LISTENING_LINE, {
      timeout: options.readyTimeout ?? 10_000,
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    });
    child.setMatch(match);
  } catch (error) {
    await child.kill("SIGKILL");
    throw error;
  }
  return child;
}

/**
 * Races `promise` against a timer and rejects with a `TimeoutError` naming
 * `what` if the timer wins. The timer is always cleared. Pass a function to
 * get an `AbortSignal` that aborts (with that error) on timeout, so the
 * operation can stop too.
 *
 * @typeParam T The promise's value.
 * @param promise The promise, or a function of a signal returning it.
 * @param ms Milliseconds to wait.
 * @param what What is awaited, for the error message.
 * @returns The promise's value.
 * @throws {TimeoutError} If `ms` passes first.
 *
 * @example Usage
 * ```ts
 * import { withTimeout } from "./_process.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(await withTimeout(Promise.resolve(1), 1000, "one"), 1);
 * const never = new Promise<never>(() => {});
 * await assert.rejects(withTimeout(never, 10, "never"), {
 *   name: "TimeoutError",
 *   message: "never did not settle within 10 ms",
 * });
 * ```
 */
export function withTimeout<T>(
  promise: Promise<T> | ((signal: AbortSignal) => Promise<T>),
  ms: number,
  what: string,
): Promise<T> {
  const controller = new AbortController();
  const pending = typeof promise === "function"
    ? promise(controller.signal)
    : promise;
  const timedOut = Promise.withResolvers<never>();
  const id = setTimeout(() => {
    const error = new TimeoutError(`${what} did not settle within ${ms} ms`, {
      timeout: ms,
    });
    controller.abort(error);
    timedOut.reject(error);
  }, ms);
  return Promise.race([pending, timedOut.promise]).finally(() =>
    clearTimeout(id)
  );
}

// ---------------------------------------------------------------------------
// Internals

const MAX_LINES = 10_000;

interface LineWaiter {
  pattern: RegExp;
  resolve(match: RegExpMatchArray): void;
  reject(reason: unknown): void;
}

class Child implements ChildProcess {
  readonly #child: Deno.ChildProcess;
  readonly #cmd: string[];
  readonly #options: StartProcessOptions;
  readonly #stdout: string[] = [];
  readonly #stderr: string[] = [];
  readonly #waiters = new Set<LineWaiter>();
  readonly #drained: Promise<void>;
  #stdoutEnded = false;
  #exited = false;
  #match: RegExpMatchArray | undefined;
  readonly status: Promise<Deno.CommandStatus>;

  constructor(
    child: Deno.ChildProcess,
    cmd: string[],
    options: StartProcessOptions,
  ) {
    this.#child = child;
    this.#cmd = cmd;
    this.#options = options;
    this.status = child.status.then((status) => {
      this.#exited = true;
      return status;
    });
    const onError = (error: unknown) => {
      push(this.#stderr, `[startProcess: reading output failed: ${error}]`);
    };
    this.#drained = Promise.all([
      this.#readLines(child.stdout, (line) => this.#onStdout(line))
        .catch(onError)
        .finally(() => this.#onStdoutEnd()),
      this.#readLines(child.stderr, (line) => push(this.#stderr, line))
        .catch(onError),
    ]).then(() => {});
  }

  get pid(): number {
    return this.#child.pid;
  }

  get match(): RegExpMatchArray {
    if (this.#match === undefined) {
      throw new TypeError("Cannot read match: the process is not ready yet");
    }
    return this.#match;
  }

  setMatch(match: RegExpMatchArray): void {
    this.#match = match;
  }

  get stdoutLines(): readonly string[] {
    return this.#stdout;
  }

  get stderrLines(): readonly string[] {
    return this.#stderr;
  }

  waitForLine(
    pattern: RegExp,
    options: WaitForLineOptions = {},
  ): Promise<RegExpMatchArray> {
    const { signal, timeout = 10_000 } = options;
    for (const line of this.#stdout) {
      const match = line.match(pattern);
      if (match !== null) return Promise.resolve(match);
    }
    if (this.#stdoutEnded) return Promise.reject(this.#endedError(pattern));
    if (signal?.aborted) return Promise.reject(signal.reason);
    const { promise, resolve, reject } = Promise.withResolvers<
      RegExpMatchArray
    >();
    const onAbort = () => waiter.reject(signal?.reason);
    const id = setTimeout(() => {
      waiter.reject(
        new TimeoutError(
          `No stdout line matched ${pattern} within ${timeout} ms (${this.#describe()})`,
          { timeout },
        ),
      );
    }, timeout);
    const settle = () => {
      clearTimeout(id);
      this.#waiters.delete(waiter);
      signal?.removeEventListener("abort", onAbort);
    };
    const waiter: LineWaiter = {
      pattern,
      resolve: (match) => {
        settle();
        resolve(match);
      },
      reject: (reason) => {
        settle();
        reject(reason);
      },
    };
    this.#waiters.add(waiter);
    signal?.addEventListener("abort", onAbort, { once: true });
    return promise;
  }

  async kill(signal: Deno.Signal = "SIGTERM"): Promise<Deno.CommandStatus> {
    if (!this.#exited) {
      try {
        this.#child.kill(signal);
      } catch (error) {
        // It exited between the check and the kill.
        if (!(error instanceof TypeError)) throw error;
      }
    }
    const status = await this.status;
    await this.#drained;
    return status;
  }

  async restart(signal: Deno.Signal = "SIGTERM"): Promise<ChildProcess> {
    await this.kill(signal);
    return await startProcess(this.#cmd, this.#options);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill("SIGKILL");
  }

  #onStdout(line: string): void {
    push(this.#stdout, line);
    for (const waiter of [...this.#waiters]) {
      const match = line.match(waiter.pattern);
      if (match !== null) waiter.resolve(match);
    }
  }

  #onStdoutEnd(): void {
    this.#stdoutEnded = true;
    for (const waiter of [...this.#waiters]) {
      waiter.reject(this.#endedError(waiter.pattern));
    }
  }

  #endedError(pattern: RegExp): ClosedError {
    return new ClosedError(
      `Stdout ended before a line matched ${pattern} (${this.#describe()})`,
    );
  }

  #describe(): string {
    const stderr = this.#stderr.slice(-20).join("\n");
    return `${this.#cmd.join(" ")}${
      stderr === "" ? "" : `; stderr:\n${stderr}`
    }`;
  }

  async #readLines(
    stream: ReadableStream<Uint8Array>,
    onLine: (line: string) => void,
  ): Promise<void> {
    let rest = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      rest += text;
      let newline = rest.indexOf("\n");
      while (newline !== -1) {
        onLine(rest.slice(0, newline).replace(/\r$/, ""));
        rest = rest.slice(newline + 1);
        newline = rest.indexOf("\n");
      }
    }
    if (rest !== "") onLine(rest);
  }
}

function push(lines: string[], line: string): void {
  lines.push(line);
  if (lines.length > MAX_LINES) lines.splice(0, lines.length - MAX_LINES);
}
