/**
 * Test PKI made on the fly with the system `openssl` binary: a CA, a server
 * certificate for 127.0.0.1 / localhost, a client certificate from that CA,
 * and a client certificate from another, untrusted CA. All keys are EC P-256
 * (fast to make) and all certificates are X.509 v3 (rustls refuses v1).
 *
 * @module
 */

/** PEM files of a throwaway PKI, removed again on dispose. */
export interface TestPki extends AsyncDisposable {
  /** The trusted CA's certificate (PEM). */
  readonly caCert: string;
  /** The server certificate (PEM): SAN `IP:127.0.0.1, DNS:localhost`, serverAuth. */
  readonly serverCert: string;
  /** The server's private key (PKCS#8 PEM). */
  readonly serverKey: string;
  /** A client certificate signed by `caCert` (PEM), clientAuth, CN `tcpbutler test client`. */
  readonly clientCert: string;
  /** The client's private key (PKCS#8 PEM). */
  readonly clientKey: string;
  /** Another CA's certificate (PEM), trusted by nobody. */
  readonly otherCaCert: string;
  /** A client certificate signed by `otherCaCert` (PEM), clientAuth. */
  readonly otherClientCert: string;
  /** That client's private key (PKCS#8 PEM). */
  readonly otherClientKey: string;
  /** The directory that holds the files. */
  readonly dir: string;
}

/** Subject common names used by {@linkcode makeTestPki}. */
export const TEST_PKI_NAMES = {
  ca: "tcpbutler test CA",
  server: "localhost",
  client: "tcpbutler test client",
  otherCa: "tcpbutler untrusted CA",
  otherClient: "tcpbutler untrusted client",
} as const;

const CONFIG = `[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`;

let opensslFound: boolean | undefined;

/**
 * Tells whether an `openssl` binary can be run (cached after the first call).
 * Tests that need certificates are ignored when it returns `false`.
 *
 * @returns `true` when `openssl version` ran successfully.
 */
export function hasOpenssl(): boolean {
  if (opensslFound === undefined) {
    try {
      opensslFound = new Deno.Command("openssl", {
        args: ["version"],
        stdout: "null",
        stderr: "null",
      }).outputSync().success;
    } catch {
      opensslFound = false;
    }
  }
  return opensslFound;
}

/**
 * The suffix for the name of a test that needs openssl: empty when it is
 * installed, `" (ignored: openssl not installed)"` otherwise.
 */
export const OPENSSL_SUFFIX: string = hasOpenssl()
  ? ""
  : " (ignored: openssl not installed)";

async function openssl(dir: string, args: string[]): Promise<void> {
  const { success, stderr } = await new Deno.Command("openssl", {
    args,
    cwd: dir,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!success) {
    throw new Error(
      `openssl ${args[0]} failed: ${new TextDecoder().decode(stderr)}`,
    );
  }
}

function randomSerial(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[0]! &= 0x7f; // positive
  bytes[0]! |= 0x10; // no leading zero byte
  return "0x" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(
    "",
  );
}

const NEW_KEY = [
  "-newkey",
  "ec",
  "-pkeyopt",
  "ec_paramgen_curve:prime256v1",
  "-noenc",
];

function makeCa(dir: string, name: string, cn: string): Promise<void> {
  return openssl(dir, [
    "req",
    "-x509",
    "-config",
    "openssl.cnf",
    "-extensions",
    "ca_ext",
    ...NEW_KEY,
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.pem`,
    "-subj",
    `/CN=${cn}`,
    "-days",
    "2",
    "-set_serial",
    randomSerial(),
  ]);
}

function makeLeaf(
  dir: string,
  name: string,
  cn: string,
  ca: string,
  extensions: "server_ext" | "client_ext",
): Promise<void> {
  return openssl(dir, [
    "req",
    "-x509",
    "-config",
    "openssl.cnf",
    "-extensions",
    extensions,
    ...NEW_KEY,
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.pem`,
    "-subj",
    `/CN=${cn}`,
    "-CA",
    `${ca}.pem`,
    "-CAkey",
    `${ca}.key`,
    "-days",
    "2",
    "-set_serial",
    randomSerial(),
  ]);
}

/**
 * Makes a throwaway PKI with openssl. Dispose it (`await using`) to remove the
 * files again.
 *
 * @param dir Where to write the files; a fresh temporary directory when
 * omitted. A temporary directory is removed on dispose; in a given directory
 * only the files written here are removed.
 * @returns The PEM texts and the directory.
 * @throws {Error} When openssl is missing or fails.
 */
export async function makeTestPki(dir?: string): Promise<TestPki> {
  const ownDir = dir === undefined;
  const root = dir ?? await Deno.makeTempDir({ prefix: "tcpbutler-pki-" });
  const files = [
    "openssl.cnf",
    ...["ca", "server", "client", "other-ca", "other-client"].flatMap((
      name,
    ) => [`${name}.key`, `${name}.pem`]),
  ];
  const remove = async () => {
    if (ownDir) {
      await Deno.remove(root, { recursive: true });
    } else {
      for (const file of files) {
        await Deno.remove(`${root}/${file}`).catch(() => {});
      }
    }
  };
  try {
    await Deno.writeTextFile(`${root}/openssl.cnf`, CONFIG);
    await Promise.all([
      makeCa(root, "ca", TEST_PKI_NAMES.ca),
      makeCa(root, "other-ca", TEST_PKI_NAMES.otherCa),
    ]);
    await Promise.all([
      makeLeaf(root, "server", TEST_PKI_NAMES.server, "ca", "server_ext"),
      makeLeaf(root, "client", TEST_PKI_NAMES.client, "ca", "client_ext"),
      makeLeaf(
        root,
        "other-client",
        TEST_PKI_NAMES.otherClient,
        "other-ca",
        "client_ext",
      ),
    ]);
    const read = (file: string) => Deno.readTextFile(`${root}/${file}`);
    const [
      caCert,
      serverCert,
      serverKey,
      clientCert,
      clientKey,
      otherCaCert,
      otherClientCert,
      otherClientKey,
    ] = await Promise.all([
      read("ca.pem"),
      read("server.pem"),
      read("server.key"),
      read("client.pem"),
      read("client.key"),
      read("other-ca.pem"),
      read("other-client.pem"),
      read("other-client.key"),
    ]);
    return {
      caCert,
      serverCert,
      serverKey,
      clientCert,
      clientKey,
      otherCaCert,
      otherClientCert,
      otherClientKey,
      dir: root,
      [Symbol.asyncDispose]: remove,
    };
  } catch (error) {
    await remove().catch(() => {});
    throw error;
  }
}
