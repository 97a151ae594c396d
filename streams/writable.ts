import { withResolvers } from "../_util.ts";
/**
 * Fire-and-forget sends as a `WritableStream`: what `client.writable` is.
 *
 * Each write starts a send at once (the message is encoded or copied before
 * the write returns) and resolves while fewer than `window` of the stream's
 * sends are still waiting to be written: a full write queue, or a peer that
 * does not read, makes writes wait. So `pipeTo()` runs at the speed of the
 * connection with a bounded number of messages in hand, and the library
 * keeps writing one batch per burst. `close()` resolves once every message
 * was written; a failed send errors the stream with its error.
 *
 * @module
 */

/** A stream of sends; {@linkcode open} is false once it closed or errored. */
export class SendStream<T> {
  readonly stream: WritableStream<T>;
  #open = true;
  #inFlight = 0;
  #failed: { error: unknown } | undefined;
  #wake: PromiseWithResolvers<void> | undefined;

  /**
   * @param send Sends one message; resolves once it was written.
   * @param window Sends in flight at most (an integer >= 1).
   */
  constructor(send: (message: T) => Promise<void>, window: number) {
    let controller!: WritableStreamDefaultController;
    const settled = () => {
      this.#inFlight--;
      const wake = this.#wake;
      this.#wake = undefined;
      wake?.resolve();
    };
    const failed = (error: unknown) => {
      this.#failed ??= { error };
      this.#open = false;
      settled();
      controller.error(error);
    };
    this.stream = new WritableStream<T>({
      start: (c) => {
        controller = c;
      },
      write: async (message) => {
        this.#throwIfFailed();
        this.#inFlight++;
        send(message).then(settled, failed);
        while (this.#inFlight >= window && this.#failed === undefined) {
          await this.#settled();
        }
        this.#throwIfFailed();
      },
      close: async () => {
        this.#open = false;
        while (this.#inFlight > 0) await this.#settled();
        this.#throwIfFailed();
      },
      abort: () => {
        this.#open = false;
      },
    }, { highWaterMark: 1 });
  }

  /** Whether the stream still takes writes. */
  get open(): boolean {
    return this.#open;
  }

  #settled(): Promise<void> {
    return (this.#wake ??= withResolvers<void>()).promise;
  }

  #throwIfFailed(): void {
    if (this.#failed !== undefined) throw this.#failed.error;
  }
}
