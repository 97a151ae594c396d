/**
 * How a session reads the meaning of wire messages. The default protocol has
 * frame kinds (request, response, push, error, ping, pong, drain); a custom
 * codec has only messages, told apart by the pending-request table. The
 * default protocol's dialect is built beside the protocol
 * (`_protocol_dialect.ts`): the session does not import the protocol.
 *
 * @module
 */

import type { Codec, CorrelationId } from "../framing/codec.ts";

/**
 * What an inbound wire message is. A framed dialect's `kind()` returns the
 * frame kind itself, so these values are the default protocol's kinds.
 */
export const Inbound = {
  Reply: 2,
  Error: 4,
  Request: 1,
  Push: 3,
  Ping: 5,
  Pong: 6,
  Drain: 7,
  /** A request the peer read but did not run (it is shutting down). */
  Refused: 8,
  /** A custom-codec message: a reply when it matches a pending request. */
  Message: 9,
} as const;

/** How requests find their replies. */
export type CorrelationMode = "assign" | "message" | "fifo";

/**
 * The session's view of a protocol. `W` is the wire message type, `T` what
 * users send and receive.
 */
export interface Dialect<T, W = unknown> {
  readonly codec: Codec<W>;
  readonly mode: CorrelationMode;
  /** True when the protocol has ping/pong and drain frames. */
  readonly framed: boolean;
  kind(wire: W): number;
  id(wire: W): CorrelationId | undefined;
  message(wire: W): T;
  errorText(wire: W): string;
  request(message: T, id: number): W;
  /** A copy of a message to hold while it waits (framed dialects). */
  copy(message: T): T;
  reply(message: T | undefined, to: W): W | undefined;
  push(message: T): W;
  error(error: unknown, to: W): W | undefined;
  ping(id: number): W;
  pong(ping: W): W;
  drain(): W;
  /** The answer to a request that will not run: "not processed". */
  refusal(request: W): W | undefined;
  /** The request a refusal gives back, to be sent again. */
  resend(refusal: W): W;
  /**
   * Encodes requests and replies straight into the write buffer, without a
   * wire message object in between (framed dialects whose frames are a
   * kind, an id and the message): the hot path of every request and reply.
   */
  readonly direct?: DirectFrames<T>;
}

/**
 * A framed dialect's encoder of frames made of a kind, an id and a message
 * (see {@linkcode Dialect.direct}).
 */
export interface DirectFrames<T> {
  /**
   * The wire size of a frame carrying `message`; throws as `request()` or
   * `reply()` would for a message the protocol cannot carry.
   */
  size(message: T): number;
  /** Writes such a frame at `at` (with `size()` bytes of room); returns its size. */
  write(
    kind: number,
    id: number,
    message: T,
    out: Uint8Array,
    at: number,
  ): number;
}

/** A user codec: messages are sent as they are. */
export function codecDialect<T>(
  codec: Codec<T>,
  fifo: boolean,
): Dialect<T, T> {
  const unsupported = (): never => {
    throw new TypeError("Cannot build a control frame for a custom codec");
  };
  return {
    codec,
    mode: fifo ? "fifo" : "message",
    framed: false,
    kind: () => Inbound.Message,
    id: fifo ? () => undefined : (wire) => codec.correlationId?.(wire),
    message: (wire) => wire,
    errorText: () => "",
    request: (message) => message,
    copy: (message) => message,
    reply: (message) => message,
    push: (message) => message,
    error: () => undefined,
    ping: unsupported,
    pong: unsupported,
    drain: unsupported,
    refusal: () => undefined,
    resend: unsupported,
  };
}

/**
 * The correlation id of a request of a custom codec in "message" mode.
 *
 * @throws {TypeError} When the codec finds none in the message.
 */
export function requestId<T>(codec: Codec<T>, message: T): CorrelationId {
  const id = codec.correlationId?.(message);
  if (id === undefined) {
    throw new TypeError(
      "Cannot send request: the codec found no correlation id in the message",
    );
  }
  return id;
}
