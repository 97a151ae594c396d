/**
 * Test fixture: the module each worker of tests/workers_test.ts serves.
 * Every reply is this worker's id (one per module instance, so one per
 * worker). `crash` throws an uncaught error after replying; `slow` answers
 * after 200 ms.
 *
 * @module
 */

const id = crypto.randomUUID();
const encoder = new TextEncoder();

/** Replies with this worker's id. */
export async function handler(payload: Uint8Array): Promise<Uint8Array> {
  const text = new TextDecoder().decode(payload);
  if (text === "crash") {
    setTimeout(() => {
      throw new Error("worker crash on purpose");
    }, 0);
  } else if (text === "slow") {
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return encoder.encode(id);
}

/** What serve() takes besides the listener and handler. */
export const options = { maxConnections: 1000 };
