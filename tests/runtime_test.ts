import assert from "node:assert/strict";

import { isRetryableError } from "../mod.ts";
import { isClosedResource } from "../connection.ts";
import {
  AddrInUse,
  BadResource,
  ConnectionRefused,
  fromNodeError,
  IS_DENO,
  RUNTIME,
} from "../transport/_runtime.ts";

Deno.test("transport/_runtime.ts finds Deno and hands out Deno's own error classes there", () => {
  assert.equal(RUNTIME, "deno");
  assert.ok(IS_DENO);
  assert.equal(BadResource, Deno.errors.BadResource);
  assert.equal(AddrInUse, Deno.errors.AddrInUse);
});

Deno.test("fromNodeError() maps node codes to the runtime errors, the node error as cause", async (t) => {
  const table: [string, string][] = [
    ["EADDRINUSE", "AddrInUse"],
    ["EADDRNOTAVAIL", "AddrNotAvailable"],
    ["EACCES", "PermissionDenied"],
    ["ECONNREFUSED", "ConnectionRefused"],
    ["ECONNRESET", "ConnectionReset"],
    ["ECONNABORTED", "ConnectionAborted"],
    ["EPIPE", "BrokenPipe"],
    ["ETIMEDOUT", "TimedOut"],
  ];
  for (const [code, name] of table) {
    await t.step(code, () => {
      const original = Object.assign(new Error(`x ${code}`), { code });
      const mapped = fromNodeError(original) as Error;
      assert.equal(mapped.name, name);
      assert.ok(
        mapped instanceof
          (Deno.errors as unknown as Record<string, new () => Error>)[name]!,
      );
      assert.equal(mapped.cause, original);
    });
  }
  const other = Object.assign(new Error("odd"), { code: "EODD" });
  assert.equal(fromNodeError(other), other);
});

Deno.test("isRetryableError() and isClosedResource() tell runtime errors apart by name", () => {
  assert.ok(isRetryableError(new ConnectionRefused("refused")));
  class Lookalike extends Error {
    override name = "ConnectionReset";
  }
  assert.ok(isRetryableError(new Lookalike("reset")));
  assert.ok(!isRetryableError(new AddrInUse("taken")));
  assert.ok(isClosedResource(new BadResource("closed")));
  assert.ok(isClosedResource(new Deno.errors.Interrupted("canceled")));
  assert.ok(!isClosedResource(new Deno.errors.ConnectionReset("reset")));
});
