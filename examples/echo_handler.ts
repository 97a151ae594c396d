/**
 * The echo server's handler, as a module: what `deno task serve --workers N`
 * loads in each worker (see `serveWorkers()`), and what `echo_server.ts`
 * serves in one thread.
 *
 * @module
 */

import type { ServerHandler } from "../mod.ts";

/**
 * A request's reply is its payload; a push (no reply owed) is echoed with
 * an explicit push back.
 */
export const handler: ServerHandler<Uint8Array> = (
  payload,
  { kind, session },
) => {
  if (kind === "request") return payload;
  void session.send(payload).catch(() => {});
};
