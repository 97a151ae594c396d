/**
 * Runtime-neutral helpers of the conformance suite: servers on loopback
 * port 0, waiting for events, a raw peer over `node:net`, and a throwaway
 * PKI made with the `openssl` binary through `node:child_process`.
 *
 * @module
 */

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { listen, serve, type ServeOptions, type Server } from "../../mod.ts";
import type { CaseContext } from "./_harness.ts";

/** Loopback, where every case listens. */
export const HOST = "127.0.0.1";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** UTF-8 bytes of `text`. */
export function enc(text: string): Uint8Array {
  return encoder.encode(text);
}

/** `bytes` as UTF-8 text. */
export function dec(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

/**
 * Starts a server on a fresh loopback listener (port 0 unless given): the
 * way `serve()` starts on every runtime. Shut down when the case ends.
 */
export async function startServer<T = Uint8Array>(
  t: CaseContext,
  options: Omit<ServeOptions<T>, "listener" | "hostname" | "port" | "tls">,
  listenOptions: { port?: number; tls?: { cert: string; key: string } } = {},
): Promise<Server<T>> {
  const listener = await listen({
    hostname: HOST,
    port: listenOptions.port ?? 0,
    ...(listenOptions.tls ? { tls: listenOptions.tls } : {}),
  });
  const server = serve<T>({ ...options, listener } as ServeOptions<T>);
  t.defer(() => server.shutdown({ timeout: 0 }));
  return server;
}

/**
 * Resolves once `ready()` holds: at once, or after one of `target`'s `type`
 * events. Checking and listening happen in one turn, so no event is missed.
 */
export function until(
  target: EventTarget,
  type: string,
  ready: () => boolean,
): Promise<void> {
  if (ready()) return Promise.resolve();
  return new Promise((resolve) => {
    const onEvent = () => {
      if (!ready()) return;
      target.removeEventListener(type, onEvent);
      resolve();
    };
    target.addEventListener(type, onEvent);
  });
}

/** A latch: `wait` resolves once `open()` was called. */
export function latch(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => open = resolve);
  return { wait, open };
}

/** A raw TCP peer: bytes in, bytes out, no library in between. */
export interface RawPeer {
  /** Writes bytes. */
  write(bytes: Uint8Array): void;
  /** Resolves with the next `n` bytes; rejects if the peer closes first. */
  read(n: number): Promise<Uint8Array>;
  /** Resolves when the connection has ended (FIN, reset or close). */
  readonly ended: Promise<void>;
  /** Closes at once. */
  close(): void;
}

/** Connects a {@linkcode RawPeer} to `port` on loopback; closed when the case ends. */
export async function rawPeer(t: CaseContext, port: number): Promise<RawPeer> {
  const socket: Socket = connect({ host: HOST, port });
  t.defer(() => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  let buffered = new Uint8Array(0);
  let waiter: (() => void) | undefined;
  let done = false;
  let endedResolve!: () => void;
  const ended = new Promise<void>((resolve) => endedResolve = resolve);
  const finish = () => {
    done = true;
    endedResolve();
    waiter?.();
  };
  socket.on("data", (chunk: Uint8Array) => {
    const next = new Uint8Array(buffered.length + chunk.length);
    next.set(buffered);
    next.set(chunk, buffered.length);
    buffered = next;
    waiter?.();
  });
  socket.on("end", finish);
  socket.on("close", finish);
  socket.on("error", () => {});
  return {
    write: (bytes) => void socket.write(bytes),
    async read(n) {
      while (buffered.length < n) {
        if (done) {
          throw new Error(`peer closed with ${buffered.length}/${n} bytes`);
        }
        await new Promise<void>((resolve) => waiter = resolve);
        waiter = undefined;
      }
      const out = buffered.slice(0, n);
      buffered = buffered.slice(n);
      return out;
    },
    ended,
    close: () => socket.destroy(),
  };
}

/** PEM files of a throwaway PKI: a CA, a server and a client certificate. */
export interface TestPki {
  /** The CA certificate. */
  caCert: string;
  /** Server certificate for `IP:127.0.0.1` and `DNS:localhost`. */
  serverCert: string;
  /** Its key. */
  serverKey: string;
  /** Client certificate (CN `conformance client`), signed by the CA. */
  clientCert: string;
  /** Its key. */
  clientKey: string;
}

/** Whether the `openssl` binary runs. */
export function hasOpenssl(): boolean {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const EXTENSIONS = `[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
`;

/**
 * Makes a PKI with X.509 v3 certificates (rustls refuses v1) and EC P-256
 * keys, in a temporary directory removed again at once.
 */
export function makePki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), "tcpbutler-conformance-"));
  try {
    const run = (...args: string[]) =>
      execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
    writeFileSync(join(dir, "ext.cnf"), EXTENSIONS);
    const key = (name: string) =>
      run(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        `${name}.key`,
      );
    key("ca");
    run(
      "req",
      "-x509",
      "-new",
      "-key",
      "ca.key",
      "-subj",
      "/CN=conformance CA",
      "-days",
      "2",
      "-out",
      "ca.pem",
      "-extensions",
      "ca",
      "-config",
      "ext.cnf",
    );
    for (
      const [name, cn] of [["server", "localhost"], [
        "client",
        "conformance client",
      ]]
    ) {
      key(name!);
      run(
        "req",
        "-new",
        "-key",
        `${name}.key`,
        "-subj",
        `/CN=${cn}`,
        "-out",
        `${name}.csr`,
        "-config",
        "ext.cnf",
      );
      run(
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        String(Date.now()),
        "-days",
        "2",
        "-out",
        `${name}.pem`,
        "-extfile",
        "ext.cnf",
        "-extensions",
        name!,
      );
    }
    const pem = (file: string) => readFileSync(join(dir, file), "utf8");
    return {
      caCert: pem("ca.pem"),
      serverCert: pem("server.pem"),
      serverKey: pem("server.key"),
      clientCert: pem("client.pem"),
      clientKey: pem("client.key"),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
