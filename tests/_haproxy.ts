/**
 * Test helper: a real HAProxy (`haproxy -db`, in the foreground) in TCP
 * mode on 127.0.0.1 that forwards to a backend port and prepends a PROXY
 * protocol v1 or v2 header to every backend connection.
 *
 * HAProxy cannot listen on port 0 and report the port, so ports are taken by
 * binding a Deno listener on port 0 and closing it; when another process
 * grabs one in between, HAProxy exits with "cannot bind socket" and fresh
 * ports are tried. `noreuseport` keeps two HAProxies from sharing a port.
 *
 * HAProxy prints nothing when it is ready, so readiness is polled by
 * connecting, a bounded number of times, to a second frontend (declared
 * last, so bound last) that rejects every connection: probing the real
 * frontend would make HAProxy open backend connections the test would see.
 * No health checks unless asked for (`check`), so by default the backend
 * sees only the test's own connections.
 *
 * @module
 */

/** The program, when it is not on `PATH`. */
export const HAPROXY_FALLBACK = "/usr/sbin/haproxy";

let program: string | null | undefined;

/** The HAProxy program that runs here, or null. */
function haproxyProgram(): string | null {
  if (program === undefined) {
    program = null;
    for (const candidate of ["haproxy", HAPROXY_FALLBACK]) {
      try {
        const ok = new Deno.Command(candidate, {
          args: ["-v"],
          stdin: "null",
          stdout: "null",
          stderr: "null",
        }).outputSync().success;
        if (ok) {
          program = candidate;
          break;
        }
      } catch {
        // Not there; try the next one.
      }
    }
  }
  return program;
}

/**
 * Tells whether HAProxy can be run here (on `PATH` or at
 * {@linkcode HAPROXY_FALLBACK}); tests that need it are ignored, with the
 * reason in their name, when it cannot.
 *
 * @returns `true` when `haproxy -v` succeeds.
 */
export function hasHaproxy(): boolean {
  return haproxyProgram() !== null;
}

/**
 * A test name with the reason the test is ignored when HAProxy is missing.
 *
 * @param name The test's name.
 * @returns The name, with " (ignored: haproxy not installed)" appended when needed.
 */
export function haproxyTestName(name: string): string {
  return hasHaproxy() ? name : `${name} (ignored: haproxy not installed)`;
}

/** Options of {@linkcode startHaproxy}. */
export interface StartHaproxyOptions {
  /** The port on 127.0.0.1 HAProxy forwards to (or `backendPorts`). */
  backendPort?: number;
  /** Several backend ports on 127.0.0.1, balanced round-robin. */
  backendPorts?: readonly number[];
  /**
   * Health checks in the default protocol (a ping that must get its pong),
   * every `inter` ms; `fall` failures mark a backend down, `rise` successes
   * up again. With `sendProxy: "v2"` each check carries a PROXY v2 `LOCAL`
   * header.
   */
  check?: { inter: number; fall: number; rise: number };
  /** The PROXY protocol version HAProxy sends to the backend. */
  sendProxy: "v1" | "v2";
  /**
   * Attempts with fresh ports when a picked one is taken meanwhile.
   *
   * @default {5}
   */
  portAttempts?: number;
  /**
   * Milliseconds to wait for HAProxy to accept connections.
   *
   * @default {10000}
   */
  readyTimeout?: number;
}

/** A running HAProxy, made by {@linkcode startHaproxy}. */
export interface Haproxy extends AsyncDisposable {
  /** Always `"127.0.0.1"`. */
  readonly hostname: string;
  /** The frontend port clients connect to. */
  readonly port: number;
  /** `"127.0.0.1:PORT"` of the frontend, for `dial()`. */
  readonly address: string;
  /** HAProxy's process id. */
  readonly pid: number;
  /** What HAProxy printed so far (stdout and stderr). */
  readonly output: string;
  /**
   * Stops HAProxy by its pid (SIGTERM unless told otherwise), waits for it
   * to exit and for its output to be read to the end. Idempotent.
   *
   * @param signal The signal to send.
   * @returns The exit status.
   */
  stop(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/**
 * Starts HAProxy in TCP mode on 127.0.0.1 in front of `backendPort`,
 * sending a PROXY header of the given version on every backend connection,
 * and waits until its frontend accepts connections.
 *
 * @param options Backend port, PROXY version, attempts and timeout.
 * @returns HAProxy. Dispose of it (`await using`) to stop it.
 * @throws {Error} When HAProxy is missing, exits, or is not ready in time.
 */
export async function startHaproxy(
  options: StartHaproxyOptions,
): Promise<Haproxy> {
  const haproxy = haproxyProgram();
  if (haproxy === null) throw new Error("Cannot start haproxy: not installed");
  const dir = await Deno.makeTempDir({ prefix: "tcpbutler_haproxy_" });
  try {
    const attempts = options.portAttempts ?? 5;
    for (let attempt = 1;; attempt++) {
      const port = freePort();
      const probePort = freePort();
      const config = `${dir}/haproxy_${attempt}.cfg`;
      await Deno.writeTextFile(
        config,
        haproxyConfig(port, probePort, options),
      );
      const child = new Child(haproxy, ["-f", config, "-db"], port, dir);
      const ready = await child.ready(probePort, options.readyTimeout ?? 10_000)
        .catch(async (error) => {
          await child.stop("SIGKILL");
          throw error;
        });
      if (ready) return child;
      const status = await child.stop("SIGKILL");
      if (!/cannot bind socket/.test(child.output) || attempt >= attempts) {
        throw new Error(
          `Cannot start haproxy (exit code ${status.code}): ${child.output}`,
        );
      }
    }
  } catch (error) {
    await Deno.remove(dir, { recursive: true });
    throw error;
  }
}

/** A port that was free a moment ago. */
function freePort(): number {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  return listener.addr.port;
}

function haproxyConfig(
  port: number,
  probePort: number,
  options: StartHaproxyOptions,
): string {
  const sendProxy = options.sendProxy === "v2" ? "send-proxy-v2" : "send-proxy";
  const ports = options.backendPorts ?? [options.backendPort!];
  const check = options.check;
  return [
    "global",
    "  noreuseport",
    "  maxconn 256",
    "",
    "defaults",
    "  mode tcp",
    "  timeout connect 5s",
    "  timeout client 60s",
    "  timeout server 60s",
    "",
    "frontend fe",
    `  bind 127.0.0.1:${port}`,
    "  default_backend be",
    "",
    "backend be",
    "  balance roundrobin",
    ...(check === undefined ? [] : HEALTH_CHECK),
    ...ports.map((port, i) =>
      `  server s${i + 1} 127.0.0.1:${port} ${sendProxy}${
        check === undefined
          ? ""
          : ` check inter ${check.inter} fall ${check.fall} rise ${check.rise}`
      }`
    ),
    "",
    "# Readiness probe: accepts (in the kernel) and closes; no backend.",
    "frontend probe",
    `  bind 127.0.0.1:${probePort}`,
    "  tcp-request connection reject",
    "",
  ].join("\n");
}

/**
 * A health check in the default protocol: a ping frame (length 5, kind 5,
 * id 1), and its pong (kind 6, same id) expected back.
 */
export const HEALTH_CHECK: readonly string[] = [
  "  option tcp-check",
  "  tcp-check send-binary 000000050500000001",
  "  tcp-check expect min-recv 9 rbinary ^000000050600000001",
];

const MAX_OUTPUT = 64 * 1024;

class Child implements Haproxy {
  readonly hostname = "127.0.0.1";
  readonly port: number;
  readonly #dir: string;
  readonly #child: Deno.ChildProcess;
  readonly #status: Promise<Deno.CommandStatus>;
  readonly #drained: Promise<void>;
  #exited = false;
  #output = "";
  #stopping: Promise<Deno.CommandStatus> | undefined;

  constructor(program: string, args: string[], port: number, dir: string) {
    this.port = port;
    this.#dir = dir;
    this.#child = new Deno.Command(program, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#status = this.#child.status.then((status) => {
      this.#exited = true;
      return status;
    });
    this.#drained = Promise.all([
      this.#collect(this.#child.stdout),
      this.#collect(this.#child.stderr),
    ]).then(() => {});
  }

  get address(): string {
    return `${this.hostname}:${this.port}`;
  }

  get pid(): number {
    return this.#child.pid;
  }

  get output(): string {
    return this.#output;
  }

  /**
   * Connects to `probePort` until it accepts or resets (true) or HAProxy exits
   * (false), with a growing pause between attempts, for at most `timeout` ms.
   */
  async ready(probePort: number, timeout: number): Promise<boolean> {
    const deadline = Date.now() + timeout;
    const exited = this.#status.then(() => false as const);
    for (let pause = 2;; pause = Math.min(pause * 2, 100)) {
      try {
        const conn = await Deno.connect({
          hostname: this.hostname,
          port: probePort,
        });
        conn.close();
        return true;
      } catch (error) {
        // The probe frontend rejects with a reset: it is up.
        if (error instanceof Deno.errors.ConnectionReset) return true;
        if (!(error instanceof Deno.errors.ConnectionRefused)) throw error;
      }
      if (this.#exited) return false;
      if (Date.now() + pause > deadline) {
        throw new Error(
          `haproxy did not accept connections within ${timeout} ms: ${this.#output}`,
        );
      }
      let id: ReturnType<typeof setTimeout> | undefined;
      const waited = new Promise<true>((resolve) => {
        id = setTimeout(() => resolve(true), pause);
      });
      const more = await Promise.race([waited, exited]);
      clearTimeout(id);
      if (!more) return false;
    }
  }

  stop(signal: Deno.Signal = "SIGTERM"): Promise<Deno.CommandStatus> {
    this.#stopping ??= (async () => {
      if (!this.#exited) {
        try {
          this.#child.kill(signal);
        } catch (error) {
          // It exited between the check and the kill.
          if (!(error instanceof TypeError)) throw error;
        }
      }
      const status = await this.#status;
      await this.#drained;
      return status;
    })();
    return this.#stopping;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.stop();
    } finally {
      await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
    }
  }

  async #collect(stream: ReadableStream<Uint8Array>): Promise<void> {
    try {
      for await (const text of stream.pipeThrough(new TextDecoderStream())) {
        if (this.#output.length < MAX_OUTPUT) this.#output += text;
      }
    } catch (error) {
      this.#output += `[reading haproxy output failed: ${error}]`;
    }
  }
}
