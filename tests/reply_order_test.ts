import assert from "node:assert/strict";
import { NOT_READY, ReplyOrder } from "../session/reply_order.ts";

Deno.test("ReplyOrder releases answers in the order turns were taken, skipping empty ones", () => {
  const order = new ReplyOrder();
  const turns = [order.take(), order.take(), order.take(), order.take()];
  assert.deepEqual(turns, [0, 1, 2, 3]);
  const a = new Uint8Array([1]);
  const c = new Uint8Array([3]);
  // 1, 2 and 3 finish before 0: they are held.
  assert.equal(order.isNext(2), false);
  order.hold(2, c);
  order.hold(1, undefined);
  order.hold(3, a);
  assert.equal(order.isNext(0), true);
  // 0 is written by its caller; then the held ones come out in order.
  const released: (Uint8Array | undefined)[] = [];
  for (let next = order.advance(); next !== NOT_READY; next = order.advance()) {
    released.push(next);
  }
  assert.deepEqual(released, [undefined, c, a]);
  assert.equal(order.isNext(4), true);
  assert.equal(order.advance(), NOT_READY);
});
