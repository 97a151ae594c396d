/**
 * tcpbutler's load generator: `dial()` with `--sessions` sessions, and
 * `--inflight` concurrent request loops (`await client.request(...)`, then the
 * next). `--variant default` uses the default protocol (the library assigns
 * ids); `--variant plain` the baselines' wire format through
 * `lengthPrefixed()`, with the id written into each request's first 4 bytes;
 * `--variant pipeline` the default protocol through `client.pipeline()`:
 * the in-flight requests split into batches (two per session, so one is
 * on the wire while the other's replies are handled), each loop sending its
 * next batch once the last is answered, every reply timed from its batch's
 * start.
 * `--inproc` runs tcpbutler's server in this process (with `--server raw`,
 * the raw Deno server: the client's cost alone). Prints one
 * `RESULT {json}` line.
 *
 * @module
 */

import { type Client, dial } from "../mod.ts";
import {
  type ClientOptions,
  makePayload,
  parseClientArgs,
  printResult,
  readU32,
  Recorder,
  replyClock,
  stdinClosed,
  writeU32,
} from "./_shared.ts";
import { startRawServer } from "./raw_server.ts";
import { plainCodec, startTcpbutlerServer } from "./tcpbutler_server.ts";

/** What {@linkcode startLoops} needs of a load run's bookkeeping. */
export interface LoadRecorder {
  /** Whether new requests should still be issued. */
  readonly sending: boolean;
  /** Records one reply's latency, ms. */
  record(latencyMs: number): void;
  /** Replies that did not match their request, and failed requests. */
  errors: number;
}

/**
 * Starts the request loops of `opts.variant` over `client` (see the module
 * doc); they stop once `rec.sending` turns false. Shared with the Node and
 * Bun entry point (`tcpbutler_node.ts`), so every runtime runs the same
 * loops.
 *
 * @param client The connected client (the plain codec for `plain`).
 * @param rec The run's bookkeeping.
 * @param opts `variant`, `payload`, `inflight` and `sessions` of the run.
 * @returns The loops, settled once drained.
 */
export function startLoops(
  client: Client<Uint8Array>,
  rec: LoadRecorder,
  opts: Pick<ClientOptions, "variant" | "payload" | "inflight" | "sessions">,
): Promise<void>[] {
  const plain = opts.variant === "plain";
  const batched = opts.variant === "pipeline";
  const payload = makePayload(opts.payload);
  let nextId = 0;

  const loop = async () => {
    // Each loop reuses its request buffer: it is rewritten only after the
    // reply to the previous request came back.
    const frame = plain ? new Uint8Array(4 + opts.payload) : payload;
    if (plain) frame.set(payload, 4);
    const expected = frame.length;
    while (rec.sending) {
      const id = nextId;
      nextId = (nextId + 1) >>> 0;
      if (plain) writeU32(frame, 0, id);
      const t = performance.now();
      try {
        const reply = await client.request(frame);
        rec.record(replyClock() - t);
        if (
          reply.length !== expected || (plain && readU32(reply, 0) !== id)
        ) rec.errors++;
      } catch {
        rec.errors++;
        // A failing request can reject without ever yielding to the event
        // loop: give the timers a turn so the run still ends.
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    }
  };
  const batchLoop = async (size: number) => {
    const batch = Array.from({ length: size }, () => payload);
    while (rec.sending) {
      const t = performance.now();
      const results = await client.pipeline(batch);
      const latency = replyClock() - t;
      for (const result of results) {
        rec.record(latency);
        if (!result.ok || result.value.length !== payload.length) rec.errors++;
      }
    }
  };
  const batches = Math.min(opts.inflight, 2 * opts.sessions);
  return batched
    ? Array.from(
      { length: batches },
      (_, i) =>
        batchLoop(
          Math.floor(opts.inflight / batches) +
            (i < opts.inflight % batches ? 1 : 0),
        ),
    )
    : Array.from({ length: opts.inflight }, loop);
}

async function main() {
  const opts = parseClientArgs(Deno.args);
  const plain = opts.variant === "plain";
  const batched = opts.variant === "pipeline";
  // The orchestrator keeps stdin open while it waits for the result: if it
  // dies, stop at once.
  stdinClosed().then(() => Deno.exit(2));
  const server = !opts.inproc
    ? undefined
    : opts.server === "raw"
    ? startRawServer(opts.hostname)
    : startTcpbutlerServer(batched ? "default" : opts.variant, opts.hostname);
  const port = server ? server.port : opts.port;
  if (server) opts.serverPid = 0;

  const address = { hostname: opts.hostname, port };
  const client = plain
    ? await dial(address, plainCodec(), { sessions: opts.sessions })
    : await dial(address, { sessions: opts.sessions });
  const rec = new Recorder(opts);
  const loops = startLoops(client, rec, opts);
  await rec.run();
  await Promise.all(loops);
  const result = rec.result();
  await client.close();
  await server?.close();
  printResult(result);
}

if (import.meta.main) {
  await main();
  Deno.exit(0);
}
