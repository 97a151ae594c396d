/**
 * The README's commands and the loopback examples, run exactly as the README
 * gives them (`deno task serve`, `deno task request …`, `deno run …`).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { startProcess } from "./_process.ts";
import { makeTestPki, OPENSSL_SUFFIX } from "./_certs.ts";

const ROOT = new URL("..", import.meta.url);

/** Runs a command to completion in the repo root; returns its output. */
async function run(args: string[]): Promise<{
  code: number;
  stdout: string;
  stderr: string;
}> {
  const output = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    stdin: "null",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

Deno.test("README: deno task serve answers deno task request, and shuts down gracefully on SIGTERM", async () => {
  await using server = await startProcess([
    "deno",
    "task",
    "serve",
    "--port",
    "0",
  ], {
    cwd: ROOT,
  });
  const port = server.match.groups!.port!;

  const one = await run(["task", "request", "hello", "--port", port]);
  assert.equal(one.code, 0, one.stderr);
  assert.match(one.stdout, /^reply: hello$/m);
  assert.match(one.stdout, /^1 ok, 0 failed in /m);

  const many = await run([
    "task",
    "request",
    "hi",
    "-n",
    "2000",
    "-c",
    "16",
    "--port",
    port,
  ]);
  assert.equal(many.code, 0, many.stderr);
  assert.match(many.stdout, /^2000 ok, 0 failed in .* req\/s, p50 /m);

  const status = await server.kill("SIGTERM");
  assert.equal(status.code, 0);
  assert.ok(
    server.stdoutLines.some((line) => line.startsWith("shutdown {")),
    server.stdoutLines.join("\n"),
  );
});

Deno.test(
  `README: deno task serve and request over TLS and mutual TLS${OPENSSL_SUFFIX}`,
  {
    ignore: OPENSSL_SUFFIX !== "",
  },
  async (t) => {
    await using pki = await makeTestPki();
    const file = async (name: string, pem: string) => {
      const path = join(pki.dir, name);
      await Deno.writeTextFile(path, pem);
      return path;
    };
    const ca = await file("ex-ca.pem", pki.caCert);
    const cert = await file("ex-server.pem", pki.serverCert);
    const key = await file("ex-server-key.pem", pki.serverKey);
    const clientCert = await file("ex-client.pem", pki.clientCert);
    const clientKey = await file("ex-client-key.pem", pki.clientKey);

    await t.step("TLS", async () => {
      await using server = await startProcess([
        "deno",
        "task",
        "serve",
        "--port",
        "0",
        "--cert",
        cert,
        "--key",
        key,
      ], { cwd: ROOT });
      const port = server.match.groups!.port!;
      const result = await run([
        "task",
        "request",
        "secret",
        "--port",
        port,
        "--ca",
        ca,
      ]);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /^reply: secret$/m);
      assert.equal((await server.kill("SIGTERM")).code, 0);
    });

    await t.step(
      "mutual TLS: with and without a client certificate",
      async () => {
        await using server = await startProcess([
          "deno",
          "task",
          "serve",
          "--port",
          "0",
          "--cert",
          cert,
          "--key",
          key,
          "--ca",
          ca,
        ], { cwd: ROOT });
        const port = server.match.groups!.port!;
        const good = await run([
          "task",
          "request",
          "mine",
          "--port",
          port,
          "--ca",
          ca,
          "--cert",
          clientCert,
          "--key",
          clientKey,
        ]);
        assert.equal(good.code, 0, good.stderr);
        assert.match(good.stdout, /^reply: mine$/m);
        const refused = await run([
          "task",
          "request",
          "nope",
          "--port",
          port,
          "--ca",
          ca,
          "--timeout",
          "1000",
        ]);
        assert.notEqual(refused.code, 0);
        assert.match(refused.stderr, /ConnectionError/);
        assert.equal((await server.kill("SIGTERM")).code, 0);
      },
    );
  },
);

Deno.test("examples/iso8583.ts runs: sign-on, purchases, a host push answered", async () => {
  const result = await run(["run", "--allow-net", "examples/iso8583.ts"]);
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /^purchase 250: response code 00$/m);
  assert.match(result.stdout, /^purchase 4200: response code 51$/m);
  assert.match(result.stdout, /^cutover pushed to 2 sessions$/m);
  assert.equal(result.stdout.match(/^host says 0800 201$/gm)?.length, 2);
});
