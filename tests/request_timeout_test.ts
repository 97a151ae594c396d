/**
 * The two ways a request times out, and how a caller tells them apart: the
 * library's deadline rejects with its `TimeoutError` class, a signal from
 * `AbortSignal.timeout()` with that signal's `DOMException` (also named
 * "TimeoutError").
 */

import assert from "node:assert/strict";
import { dial, TimeoutError } from "../mod.ts";
import { autoAnswer, enc, rawPeer } from "./_loopback.ts";

Deno.test("Client.request() rejects with TimeoutError for its deadline and with the signal's DOMException for AbortSignal.timeout()", async () => {
  // A peer that answers pings and the closing drain, and no request.
  await using peer = rawPeer();
  const dialing = dial(peer.target, { heartbeat: false });
  const answering = autoAnswer(await peer.accept(), () => undefined);
  const client = await dialing;

  const deadline = await client.request(enc("a"), { timeout: 20 }).then(
    () => assert.fail("request() resolved"),
    (error: unknown) => error,
  );
  assert.ok(deadline instanceof TimeoutError, `got ${deadline}`);
  assert.equal(deadline.name, "TimeoutError");
  assert.equal(deadline.timeout, 20);

  const signal = AbortSignal.timeout(20);
  const aborted = await client.request(enc("b"), { signal, timeout: 60_000 })
    .then(
      () => assert.fail("request() resolved"),
      (error: unknown) => error,
    );
  assert.equal(aborted, signal.reason, "rejects with signal.reason unchanged");
  assert.ok(aborted instanceof DOMException, `got ${aborted}`);
  assert.equal(aborted.name, "TimeoutError");
  assert.ok(!(aborted instanceof TimeoutError));
  await client.close();
  await answering;
});
