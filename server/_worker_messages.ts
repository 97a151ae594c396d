/**
 * The messages between {@linkcode serveWorkers} and its workers
 * (`_worker_main.ts`), and what a worker module exports.
 *
 * @module
 */

import type { ServerStats } from "./server.ts";
import type { ShutdownReport } from "./shutdown.ts";

/** What the parent tells a worker. */
export type ToWorker =
  | {
    type: "start";
    module: string;
    hostname: string;
    port: number;
    /** Plain-data serve() options, over the module's own. */
    options: Record<string, unknown>;
  }
  | { type: "stats"; id: number }
  | { type: "shutdown"; timeout: number; leaveFor: number };

/** What a worker tells its parent. */
export type FromWorker =
  | { type: "listening"; port: number }
  | { type: "failed"; message: string }
  | { type: "stats"; id: number; stats: ServerStats }
  | { type: "finished"; report: ShutdownReport | undefined };

/** What a worker module exports. */
export interface WorkerModule {
  handler?: unknown;
  options?: unknown;
}
