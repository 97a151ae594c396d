/**
 * Inbound messages as a `ReadableStream`: what `client.messages()` and
 * `server.messages()` return.
 *
 * A stream acts as the handler while it is open: the session's handler
 * gate hands it each request and push, and counts the message as a running
 * handler until the consumer has read it (a push) or answered it (a request,
 * or a custom codec's message). So at most `maxConcurrentHandlers` messages
 * per session wait in the stream; past them the gate holds messages and
 * then stops reading, and TCP pushes back on the peer — the same bound as a
 * handler's, never a buffer of its own.
 *
 * @module
 */

import { ClosedError, ConnectionClosedError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type {
  Handler,
  HandlerContext,
  MessageKind,
  Session,
} from "../session/types.ts";
import { withResolvers } from "../_util.ts";

/**
 * One request or push read from a message stream (`client.messages()`,
 * `server.messages()`), with what it takes to answer it.
 *
 * @typeParam T The message type.
 *
 * @example Answer the server's requests on the client
 * ```ts
 * import { dial, serve, type Session } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const connected = Promise.withResolvers<Session<Uint8Array>>();
 * await using server = serve({
 *   hostname: "127.0.0.1",
 *   port: 0,
 *   onConnect: (session) => connected.resolve(session),
 * });
 * await using client = await dial(`127.0.0.1:${server.port}`);
 * const answering = (async () => {
 *   for await (const inbound of client.messages()) {
 *     if (inbound.kind === "request") inbound.respond(inbound.message);
 *   }
 * })();
 * const session = await connected.promise;
 * const reply = await session.request(new TextEncoder().encode("ping"));
 * assert.equal(new TextDecoder().decode(reply), "ping");
 * await client.close();
 * await answering; // the stream ends with the client
 * ```
 */
export interface InboundMessage<T> {
  /**
   * The message (the payload with the default protocol). A view into the
   * session's read buffer: copy it (`slice()`) to keep it for long.
   */
  readonly message: T;
  /** What it is: `"request"`, `"push"` or a custom codec's `"message"`. */
  readonly kind: MessageKind;
  /**
   * Whether an answer is owed: true for requests and custom-codec
   * messages, which hold their handler slot until `respond()` or `fail()`.
   */
  readonly expectsReply: boolean;
  /** The session it came in on. */
  readonly session: Session<T>;
  /** Aborted when the session closes (or its peer has gone). */
  readonly signal: AbortSignal;
  /**
   * Answers a request: `reply` is sent back (with the default protocol an
   * empty response without one; a custom codec's message sends nothing
   * without one). Frees the message's handler slot. Does nothing for a push.
   *
   * @param reply The reply.
   * @throws {TypeError} The message was answered already.
   */
  respond(reply?: T): void;
  /**
   * Answers a request as a failed handler: with the default protocol an
   * error reply (the requester gets `RemoteError` with the message); with
   * a custom codec what `onHandlerError` maps it to. Does nothing for a push.
   *
   * @param error Why it failed.
   * @throws {TypeError} The message was answered already.
   */
  fail(error: unknown): void;
}

/**
 * Options of `client.messages()` and `server.messages()`.
 *
 * @typeParam T The message type.
 */
export interface MessagesOptions<T> {
  /**
   * Only this session's messages (from `client.sessions` or
   * `server.sessions`). The stream ends when the session closes; it errors
   * with the session's close reason when that was a failure other than a
   * closed connection (bad input, a slow consumer).
   */
  session?: Session<T>;
  /** Aborts the stream: it errors with `signal.reason` and lets go, as `cancel()`. */
  signal?: AbortSignal;
}

/** A message read from a stream: answered through its handler promise. */
class Delivery<T> implements InboundMessage<T> {
  readonly message: T;
  readonly #context: HandlerContext<T>;
  #answer: PromiseWithResolvers<T | undefined> | undefined;

  constructor(
    message: T,
    context: HandlerContext<T>,
    answer: PromiseWithResolvers<T | undefined> | undefined,
  ) {
    this.message = message;
    this.#context = context;
    this.#answer = answer;
  }

  get kind(): MessageKind {
    return this.#context.kind;
  }

  get expectsReply(): boolean {
    return this.#context.expectsReply;
  }

  get session(): Session<T> {
    return this.#context.session;
  }

  get signal(): AbortSignal {
    return this.#context.signal;
  }

  respond(reply?: T): void {
    this.#take("respond")?.resolve(reply);
  }

  fail(error: unknown): void {
    this.#take("fail")?.reject(error);
  }

  #take(what: string): PromiseWithResolvers<T | undefined> | undefined {
    if (!this.#context.expectsReply) return undefined;
    const answer = this.#answer;
    if (answer === undefined) {
      throw new TypeError(`Cannot ${what}: the message was answered already`);
    }
    this.#answer = undefined;
    return answer;
  }
}

/** A message waiting in a stream, and how to free its slot once read. */
interface Waiting<T> {
  delivery: Delivery<T>;
  /** A push's handler promise: resolved once the push is read. */
  taken: (() => void) | undefined;
  /** A request's answer: rejected when the stream is let go unread. */
  answer: PromiseWithResolvers<T | undefined> | undefined;
}

/** Not ending: the stream takes messages. */
const OPEN: unique symbol = Symbol("open");

/**
 * One message stream. Pull-based with a high-water mark of 0: a message is
 * handed over only when the consumer asks for one, so "read" means taken by
 * the consumer, not queued inside the stream.
 */
class InboundSource<T> {
  readonly stream: ReadableStream<InboundMessage<T>>;
  readonly #detach: () => void;
  readonly #logger: Logger;
  #controller!: ReadableStreamDefaultController<InboundMessage<T>>;
  #waiting: Waiting<T>[] = [];
  /** A read is pending and nothing was there to give it. */
  #wanted = false;
  /** Set by end(): close (undefined) or error once the waiting are read. */
  #ending: unknown = OPEN;
  #released = false;

  constructor(detach: () => void, logger: Logger) {
    this.#detach = detach;
    this.#logger = logger;
    this.stream = new ReadableStream<InboundMessage<T>>({
      start: (controller) => {
        this.#controller = controller;
      },
      pull: () => this.#pull(),
      cancel: (reason) => this.#release(reason),
    }, { highWaterMark: 0 });
  }

  /** The handler's part: hands the message over, or keeps it until read. */
  handle(
    message: T,
    context: HandlerContext<T>,
  ): Promise<T | undefined> | undefined {
    const answer = context.expectsReply
      ? withResolvers<T | undefined>()
      : undefined;
    const delivery = new Delivery(message, context, answer);
    if (this.#wanted) {
      this.#wanted = false;
      this.#controller.enqueue(delivery);
      // A push read at once frees its slot at once.
      return answer?.promise;
    }
    let taken: (() => void) | undefined;
    let promise: Promise<T | undefined>;
    if (answer !== undefined) promise = answer.promise;
    else {
      const read = withResolvers<T | undefined>();
      taken = () => read.resolve(undefined);
      promise = read.promise;
    }
    this.#waiting.push({ delivery, taken, answer });
    return promise;
  }

  #pull(): void {
    const next = this.#waiting.shift();
    if (next === undefined) {
      if (this.#ending !== OPEN) return this.#finish();
      this.#wanted = true;
      return;
    }
    this.#controller.enqueue(next.delivery);
    next.taken?.();
    if (this.#waiting.length === 0 && this.#ending !== OPEN) this.#finish();
  }

  /**
   * Its owner closed: no more messages come; those waiting are still read,
   * then the stream closes (or errors with `error`).
   */
  end(error: unknown): void {
    if (this.#released || this.#ending !== OPEN) return;
    this.#ending = error;
    this.#detach();
    if (this.#waiting.length === 0) this.#finish();
  }

  /** Aborted by the consumer's signal: errors, and lets go. */
  abort(reason: unknown): void {
    if (this.#released) return;
    try {
      this.#controller.error(reason);
    } catch {
      // Closed already.
    }
    this.#release(reason);
  }

  #finish(): void {
    if (this.#released) return;
    this.#released = true;
    const error = this.#ending;
    if (error === undefined) this.#controller.close();
    else this.#controller.error(error);
  }

  /**
   * The consumer let go (cancel or abort): messages go to the handler again,
   * and those never read free their slots — an unread request is answered
   * as a failed handler, an unread push is dropped (and logged).
   */
  #release(reason: unknown): void {
    if (this.#released) return;
    this.#released = true;
    this.#detach();
    const waiting = this.#waiting;
    this.#waiting = [];
    let pushes = 0;
    for (const { taken, answer } of waiting) {
      if (answer !== undefined) {
        answer.reject(
          new ClosedError(
            "Cannot handle request: the message stream was cancelled before it was read",
            { cause: reason },
          ),
        );
      } else {
        pushes++;
        taken?.();
      }
    }
    if (pushes > 0) {
      this.#logger.warn("Dropped pushes the message stream never read", {
        count: pushes,
      });
    }
  }
}

/**
 * The message streams of a client or server: at most one for all its
 * sessions and one per session. While any is open, {@linkcode handler} is
 * set, and the owner's sessions call it instead of the `handler` option.
 *
 * @typeParam T The message type.
 */
export class InboundStreams<T> {
  /**
   * What the owner's sessions call while a stream is open (undefined while
   * none is: they call the `handler` option directly).
   */
  handler: Handler<T> | undefined;
  readonly #fallback: () => Handler<T> | undefined;
  readonly #logger: Logger;
  #all: InboundSource<T> | undefined;
  readonly #bySession = new Map<Session<T>, InboundSource<T>>();
  #ownerClosed = false;
  /** Sessions whose close ends their stream (each watched once). */
  readonly #watched = new WeakSet<Session<T>>();
  readonly #route: Handler<T> = (message, context) => {
    const source = this.#bySession.get(context.session) ?? this.#all;
    if (source !== undefined) return source.handle(message, context);
    const handler = this.#fallback();
    if (handler === undefined) {
      throw new Error("No handler is set for inbound messages");
    }
    return handler(message, context);
  };

  /**
   * @param fallback The `handler` option's current value.
   * @param logger For pushes dropped by a cancelled stream.
   * @param ownerClosed Resolves once the client or server has closed: the
   * stream of every session's messages ends then.
   */
  constructor(
    fallback: () => Handler<T> | undefined,
    logger: Logger,
    ownerClosed: Promise<unknown>,
  ) {
    this.#fallback = fallback;
    this.#logger = logger;
    ownerClosed.then(() => {
      this.#ownerClosed = true;
      this.#all?.end(undefined);
    });
  }

  /**
   * Opens a stream of `options.session`'s messages (until it closes), or of
   * every session's (until the owner closes).
   *
   * @throws {TypeError} One is open for it already.
   */
  open(
    options: MessagesOptions<T> | undefined,
  ): ReadableStream<InboundMessage<T>> {
    const session = options?.session;
    const signal = options?.signal;
    if (session === undefined ? this.#all : this.#bySession.get(session)) {
      throw new TypeError(
        session === undefined
          ? "Cannot open a message stream: one is open already"
          : `Cannot open a message stream: one is open already for session ${session.id}`,
      );
    }
    const source: InboundSource<T> = new InboundSource<T>(() => {
      if (session === undefined) {
        if (this.#all === source) this.#all = undefined;
      } else if (this.#bySession.get(session) === source) {
        this.#bySession.delete(session);
      }
      this.#update();
      signal?.removeEventListener("abort", onAbort);
    }, this.#logger);
    const onAbort = () => source.abort(signal!.reason);
    if (signal?.aborted) {
      source.abort(signal.reason);
      return source.stream;
    }
    if (session === undefined) this.#all = source;
    else this.#bySession.set(session, source);
    this.#update();
    signal?.addEventListener("abort", onAbort, { once: true });
    if (session !== undefined) this.#watch(session);
    else if (this.#ownerClosed) source.end(undefined);
    return source.stream;
  }

  /**
   * No message can come any more (every slot of a client gave up): the
   * stream of every session's messages errors with `error` once those
   * waiting are read. Streams of one session end with their session.
   */
  fail(error: unknown): void {
    this.#all?.end(error);
  }

  /** Ends `session`'s stream when it closes (at once if it has). */
  #watch(session: Session<T>): void {
    const end = () =>
      this.#bySession.get(session)?.end(sessionEndError(session.closeReason));
    if (session.state === "closed") return end();
    if (this.#watched.has(session)) return;
    this.#watched.add(session);
    session.closed.then(end);
  }

  #update(): void {
    this.handler = this.#all !== undefined || this.#bySession.size > 0
      ? this.#route
      : undefined;
  }
}

/**
 * What a session's stream ends with: nothing for a clean close or a closed
 * connection (the peer left), else the failure (bad input, a slow consumer).
 */
export function sessionEndError(reason: unknown): unknown {
  return reason === undefined || reason instanceof ConnectionClosedError
    ? undefined
    : reason;
}
