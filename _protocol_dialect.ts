/**
 * The default protocol as the session sees it: frame kinds, ids assigned
 * by the session, ping/pong, drain and refusal frames; users exchange
 * payload bytes.
 *
 * @module
 */

import {
  defaultCodec,
  encodeFrameInto,
  type Frame,
  FrameKind,
  HEADER_BYTES,
} from "./protocol.ts";
import type { Dialect } from "./session/dialect.ts";
import { describeError } from "./_util.ts";

const EMPTY = new Uint8Array(0);
const textDecoder = new TextDecoder();
const textEncoder = new TextEncoder();

/** The default protocol: users exchange payload bytes. */
export function defaultDialect(
  maxFrameBytes?: number,
): Dialect<Uint8Array, Frame> {
  const max = maxFrameBytes ?? 8 * 1024 * 1024;
  return {
    codec: defaultCodec(
      maxFrameBytes === undefined ? {} : { maxFrameBytes },
    ),
    mode: "assign",
    framed: true,
    kind: (wire) => wire.kind,
    id: (wire) => wire.id,
    message: (wire) => wire.payload,
    errorText: (wire) => textDecoder.decode(wire.payload),
    request: (payload, id) => ({
      kind: FrameKind.Request,
      id,
      payload: checkPayload(payload, max),
    }),
    copy: (payload) => checkPayload(payload, max).slice(),
    reply: (payload, to) =>
      to.kind === FrameKind.Request
        ? {
          kind: FrameKind.Response,
          id: to.id,
          payload: payload === undefined ? EMPTY : checkPayload(payload, max),
        }
        : undefined,
    push: (payload) => ({
      kind: FrameKind.Push,
      id: 0,
      payload: checkPayload(payload, max),
    }),
    error: (error, to) =>
      to.kind === FrameKind.Request
        ? {
          kind: FrameKind.Error,
          id: to.id,
          payload: textEncoder.encode(describeError(error)),
        }
        : undefined,
    ping: (id) => ({ kind: FrameKind.Ping, id, payload: EMPTY }),
    pong: (ping) => ({
      kind: FrameKind.Pong,
      id: ping.id,
      payload: ping.payload,
    }),
    drain: () => ({ kind: FrameKind.Drain, id: 0, payload: EMPTY }),
    refusal: (request) =>
      request.kind === FrameKind.Request
        ? { kind: FrameKind.Refused, id: request.id, payload: request.payload }
        : undefined,
    resend: (refusal) => ({
      kind: FrameKind.Request,
      id: refusal.id,
      payload: refusal.payload,
    }),
    direct: {
      size: (payload) => HEADER_BYTES + checkPayload(payload, max).length,
      write: encodeFrameInto,
    },
  };
}

function checkPayload(payload: unknown, max: number): Uint8Array {
  if (payload instanceof Uint8Array) {
    if (payload.length <= max) return payload;
    throw new RangeError(
      `Cannot send message: ${payload.length} bytes exceeds maxFrameBytes (${max})`,
    );
  }
  throw new TypeError(
    `Cannot send message: the default protocol carries Uint8Array payloads, got ${typeof payload}`,
  );
}
