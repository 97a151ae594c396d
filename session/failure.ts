/**
 * What an error that ends a session is called, and how it is counted and
 * logged.
 *
 * @module
 */

import { isClosedResource } from "../connection.ts";
import { describeError } from "../_util.ts";
import { ConnectionClosedError, SlowConsumerError } from "../errors.ts";
import type { Counters } from "./types.ts";
import type { Logger } from "../logger.ts";

/** Names of the errors that mean the peer sent bad input. */
const BAD_INPUT = new Set([
  "ProtocolError",
  "FrameTooLargeError",
  "ProxyProtocolError",
  "ProtocolMismatchError",
]);

/**
 * The close reason for an error that ended session `id`: the runtime's
 * "closed" errors and unknown failures become a `ConnectionClosedError`
 * (with the error as `cause`); bad input from the peer stays as it is, and
 * is counted and logged.
 */
export function failure(
  error: unknown,
  id: number,
  remote: string,
  sink: { counters: Counters; logger: Logger },
): unknown {
  if (isClosedResource(error)) {
    return new ConnectionClosedError(`Session ${id} was closed`, {
      cause: error,
    });
  }
  if (
    error instanceof ConnectionClosedError ||
    error instanceof SlowConsumerError
  ) return error;
  if (error instanceof Error && BAD_INPUT.has(error.name)) {
    sink.counters.protocolErrors++;
    sink.logger.warn("Closing session: bad input from peer", {
      session: id,
      remote,
      error,
    });
    return error;
  }
  return new ConnectionClosedError(
    `Session ${id} failed: ${describeError(error)}`,
    { cause: error },
  );
}
