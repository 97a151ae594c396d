/**
 * Which runtime the library runs on, found once when this module loads, and
 * the runtime errors the transports throw, the same on every runtime.
 *
 * Deno keeps its own sockets (`Deno.connect`, `Deno.listen`, …): they are
 * the library's fast path. Node and Bun get `node:net` and `node:tls`
 * instead. Only transport/ asks which runtime this is.
 *
 * @module
 */

import { UnsupportedRuntimeError } from "../errors.ts";

/** The runtimes the library runs on. */
export type RuntimeName = "deno" | "node" | "bun";

type ErrorClass = new (message?: string, options?: ErrorOptions) => Error;

interface Globals {
  Deno?: { connect?: unknown; errors?: Record<string, ErrorClass> };
  Bun?: unknown;
  process?: { versions?: { node?: string } };
}

const globals = globalThis as Globals;

/**
 * The runtime this process runs: Deno when `Deno.connect` exists (Deno's
 * own sockets are used then), Bun when `Bun` exists, Node otherwise.
 */
export const RUNTIME: RuntimeName = typeof globals.Deno?.connect === "function"
  ? "deno"
  : globals.Bun !== undefined
  ? "bun"
  : "node";

/** Whether Deno's own socket API is used. */
export const IS_DENO: boolean = RUNTIME === "deno";

/**
 * The class Deno throws for this kind of failure (so Deno users see what
 * `Deno.connect` and `Deno.listen` throw), or, on other runtimes, an `Error`
 * subclass of the same name: code that tells errors apart by `name` works
 * everywhere, `instanceof Deno.errors.X` keeps working on Deno.
 */
function runtimeError(name: string): ErrorClass {
  const native = globals.Deno?.errors?.[name];
  if (native !== undefined) return native;
  const made = class extends Error {
    constructor(message?: string, options?: ErrorOptions) {
      super(message, options);
      this.name = name;
    }
  };
  Object.defineProperty(made, "name", { value: name });
  return made;
}

/** The resource (connection, listener) is closed. */
export const BadResource: ErrorClass = runtimeError("BadResource");
/** A pending call was ended by `close()`. */
export const Interrupted: ErrorClass = runtimeError("Interrupted");
/** Another call of the same kind is pending. */
export const Busy: ErrorClass = runtimeError("Busy");
/** Writing after the writing side was closed, or to a reset connection. */
export const BrokenPipe: ErrorClass = runtimeError("BrokenPipe");
/** The address is already in use. */
export const AddrInUse: ErrorClass = runtimeError("AddrInUse");
/** The address is not available on this host. */
export const AddrNotAvailable: ErrorClass = runtimeError("AddrNotAvailable");
/** The operating system refused the operation. */
export const PermissionDenied: ErrorClass = runtimeError("PermissionDenied");
/** Nothing listens at the address. */
export const ConnectionRefused: ErrorClass = runtimeError("ConnectionRefused");
/** The peer reset the connection. */
export const ConnectionReset: ErrorClass = runtimeError("ConnectionReset");
/** The connection was aborted on this host. */
export const ConnectionAborted: ErrorClass = runtimeError("ConnectionAborted");
/** The operation timed out in the operating system. */
export const TimedOut: ErrorClass = runtimeError("TimedOut");
/** The host is unreachable. */
export const NotFound: ErrorClass = runtimeError("NotFound");

const BY_CODE: Record<string, ErrorClass> = {
  EADDRINUSE: AddrInUse,
  EADDRNOTAVAIL: AddrNotAvailable,
  EACCES: PermissionDenied,
  EPERM: PermissionDenied,
  ECONNREFUSED: ConnectionRefused,
  ECONNRESET: ConnectionReset,
  ECONNABORTED: ConnectionAborted,
  EPIPE: BrokenPipe,
  ETIMEDOUT: TimedOut,
  ENOENT: NotFound,
};

/**
 * Maps a `node:net` error (`code: "EADDRINUSE"`, `"ECONNREFUSED"`, …) to the
 * class Deno throws for it, keeping the original as `cause`; other errors
 * are returned as they are.
 *
 * @param error The error node:net emitted.
 * @returns The error to throw.
 */
export function fromNodeError(error: unknown): unknown {
  const code = (error as { code?: unknown } | null)?.code;
  const made = typeof code === "string" ? BY_CODE[code] : undefined;
  if (made === undefined) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new made(message, { cause: error });
}

/**
 * Throws {@linkcode UnsupportedRuntimeError} outside Deno: for features
 * built on what only Deno offers.
 *
 * @param feature What the caller wanted, for the message.
 * @throws {UnsupportedRuntimeError} On Node and Bun.
 */
export function requireDeno(feature: string): void {
  if (IS_DENO) return;
  throw new UnsupportedRuntimeError(
    `Cannot use ${feature} on ${RUNTIME}: it needs Deno`,
    { runtime: RUNTIME, feature },
  );
}

/**
 * Throws {@linkcode UnsupportedRuntimeError} on Node before 22.12, whose
 * `node:net` ignores `reusePort` (a second listener on the port then fails
 * with `AddrInUse`, which would hide the reason).
 *
 * @throws {UnsupportedRuntimeError} On Node < 22.12.
 */
export function requireReusePort(): void {
  if (RUNTIME !== "node") return;
  const [major = 0, minor = 0] = (globals.process?.versions?.node ?? "0.0")
    .split(".").map(Number);
  if (major > 22 || (major === 22 && minor >= 12)) return;
  throw new UnsupportedRuntimeError(
    `Cannot listen with reusePort on Node ${
      globals.process?.versions?.node ?? "?"
    }: node:net supports it from Node 22.12`,
    { runtime: RUNTIME, feature: "listenReusePort()" },
  );
}
