/**
 * The entry point of each worker of {@linkcode serveWorkers}: it loads the
 * user's module, listens on the shared port with `SO_REUSEPORT`, serves,
 * and answers its parent's requests for stats and shutdown. Messages are
 * the {@linkcode ToWorker} and {@linkcode FromWorker} unions.
 *
 * @module
 */

import { listenReusePort } from "../transport/reuse_port.ts";
import { describeError } from "../_util.ts";
import { serve } from "./serve.ts";
import type { Server, ServerHandler } from "./server.ts";
import type { ServeOptions } from "./serve.ts";
import type { ToWorker, WorkerModule } from "./_worker_messages.ts";
import type { FromWorker } from "./_worker_messages.ts";

const scope = globalThis as unknown as {
  postMessage(message: FromWorker): void;
  close(): void;
  addEventListener(
    type: "message",
    listener: (event: MessageEvent<ToWorker>) => void,
  ): void;
};

let server: Server<unknown> | undefined;

async function start(
  message: Extract<ToWorker, { type: "start" }>,
): Promise<void> {
  try {
    const module = await import(message.module) as WorkerModule;
    if (typeof module.handler !== "function") {
      throw new TypeError(
        `Cannot serve ${message.module}: it exports no handler function`,
      );
    }
    const listener = await listenReusePort({
      hostname: message.hostname,
      port: message.port,
    });
    const options: ServeOptions<unknown> = {
      ...(module.options as ServeOptions<unknown> | undefined),
      ...message.options,
      listener,
      handler: module.handler as ServerHandler<unknown>,
    };
    server = serve(options);
    scope.postMessage({ type: "listening", port: server.port });
  } catch (error) {
    scope.postMessage({ type: "failed", message: describeError(error) });
  }
}

scope.addEventListener("message", (event) => {
  const message = event.data;
  switch (message.type) {
    case "start":
      void start(message);
      break;
    case "stats":
      if (server !== undefined) {
        scope.postMessage({
          type: "stats",
          id: message.id,
          stats: server.stats(),
        });
      }
      break;
    case "shutdown":
      if (server === undefined) {
        scope.postMessage({ type: "finished", report: undefined });
        break;
      }
      void server.shutdown({
        timeout: message.timeout,
        leaveFor: message.leaveFor,
      }).then((report) => {
        scope.postMessage({ type: "finished", report });
      });
      break;
  }
});
