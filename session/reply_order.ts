/**
 * In-order answers for protocols without correlation ids (fifo): handlers
 * may finish in any order, but their answers leave in the order the
 * requests arrived, because the peer matches replies by position alone.
 *
 * @module
 */

/** Returned by {@linkcode ReplyOrder.advance} when the next answer is not ready. */
export const NOT_READY: unique symbol = Symbol("not ready");

/**
 * Numbers requests as they reach the handler and holds answers that finish
 * ahead of their turn. An answer is the wire bytes to write, or `undefined`
 * when the handler answered nothing (it still takes its turn).
 */
export class ReplyOrder {
  /** The number the next request gets. */
  #issued = 0;
  /** The number whose answer is written next. */
  #next = 0;
  readonly #early = new Map<number, Uint8Array | undefined>();

  /** Numbers the next request. */
  take(): number {
    return this.#issued++;
  }

  /** Whether `turn` is the answer to write now. */
  isNext(turn: number): boolean {
    return turn === this.#next;
  }

  /** Keeps an answer that finished ahead of its turn. */
  hold(turn: number, answer: Uint8Array | undefined): void {
    this.#early.set(turn, answer);
  }

  /**
   * Passes the turn on (the current answer was written) and returns the
   * answer now due, if it is held, or {@linkcode NOT_READY}.
   */
  advance(): Uint8Array | undefined | typeof NOT_READY {
    const turn = ++this.#next;
    if (!this.#early.has(turn)) return NOT_READY;
    const answer = this.#early.get(turn);
    this.#early.delete(turn);
    return answer;
  }
}
