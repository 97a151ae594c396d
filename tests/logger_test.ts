import assert from "node:assert/strict";
import { configure, getLogger, type LogRecord, reset } from "@logtape/logtape";
import { FrameTooLargeError, TimeoutError } from "../errors.ts";
import {
  consoleLogger,
  type ConsoleLoggerOptions,
  type Logger,
  type LogLevel,
  noopLogger,
  withFields,
} from "../logger.ts";

const NOW = new Date("2026-11-24T16:00:00.000Z");

function capture(
  options: ConsoleLoggerOptions = {},
): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const logger = consoleLogger({
    clock: () => NOW,
    write: (line) => lines.push(line),
    ...options,
  });
  return { logger, lines };
}

function logAll(logger: Logger): void {
  logger.debug("d");
  logger.info("i");
  logger.warn("w");
  logger.error("e");
}

Deno.test("consoleLogger() filters entries below its level", async (t) => {
  const cases: [LogLevel | undefined, string[]][] = [
    ["debug", ["d", "i", "w", "e"]],
    ["info", ["i", "w", "e"]],
    ["warn", ["w", "e"]],
    ["error", ["e"]],
    [undefined, ["i", "w", "e"]],
  ];
  for (const [level, expected] of cases) {
    await t.step(`level ${level ?? "default (info)"}`, () => {
      const { logger, lines } = capture({ level, format: "json" });
      logAll(logger);
      assert.deepEqual(lines.map((line) => JSON.parse(line).message), expected);
    });
  }
});

Deno.test("consoleLogger() writes text lines: time, padded level, message, key=value", () => {
  const { logger, lines } = capture({ level: "debug" });
  logger.info("Session ready", {
    sessionId: 7,
    peer: "127.0.0.1:4000",
    note: "quoted value",
    empty: "",
    ok: true,
  });
  logger.debug("d");
  logger.warn("w", { n: null, u: undefined });
  logger.error("e");
  assert.deepEqual(lines, [
    '2026-11-24T16:00:00.000Z INFO  Session ready sessionId=7 peer=127.0.0.1:4000 note="quoted value" empty="" ok=true',
    "2026-11-24T16:00:00.000Z DEBUG d",
    "2026-11-24T16:00:00.000Z WARN  w n=null u=undefined",
    "2026-11-24T16:00:00.000Z ERROR e",
  ]);
});

Deno.test("consoleLogger() text escapes quotes, equals signs and line breaks", () => {
  const { logger, lines } = capture({ name: "tcpbutler" });
  logger.info("two\nlines\r", {
    "odd key": 'say "hi"',
    eq: "a=b",
    nl: "x\ny",
    tab: "a\tb",
    obj: { a: [1, "two"] },
  });
  assert.equal(lines.length, 1);
  assert.equal(
    lines[0],
    '2026-11-24T16:00:00.000Z INFO  [tcpbutler] two\\nlines\\r "odd key"="say \\"hi\\"" eq="a=b" nl="x\\ny" tab="a\\tb" obj="{\\"a\\":[1,\\"two\\"]}"',
  );
});

Deno.test("consoleLogger() writes one JSON object per line", () => {
  const { logger, lines } = capture({ format: "json", name: "tcpbutler" });
  logger.warn("Reconnecting", { attempt: 3, delay: 150.5, peer: "a:1" });
  assert.equal(lines.length, 1);
  assert.ok(!lines[0]!.includes("\n"));
  assert.deepEqual(JSON.parse(lines[0]!), {
    time: "2026-11-24T16:00:00.000Z",
    level: "warn",
    logger: "tcpbutler",
    message: "Reconnecting",
    attempt: 3,
    delay: 150.5,
    peer: "a:1",
  });
  assert.ok(lines[0]!.startsWith('{"time":"2026-11-24T16:00:00.000Z","level"'));
});

Deno.test("consoleLogger() JSON omits logger without a name and keeps reserved keys", () => {
  const { logger, lines } = capture({ format: "json" });
  logger.info("m", { message: "shadow", time: 1, level: "x", _time: 2 });
  assert.deepEqual(JSON.parse(lines[0]!), {
    time: "2026-11-24T16:00:00.000Z",
    level: "info",
    message: "m",
    _message: "shadow",
    _time: 2,
    __time: 1,
    _level: "x",
  });
});

Deno.test("consoleLogger() renders errors with name, message, fields and cause", () => {
  const cause = new Deno.errors.ConnectionRefused("refused");
  const error = new TimeoutError("Request timed out", {
    cause,
    timeout: 5_000,
  });
  const { logger, lines } = capture({ format: "json" });
  logger.error("Request failed", {
    error,
    tooLarge: new FrameTooLargeError(1024, 4096),
    stringCause: new Error("outer", { cause: "just text" }),
  });
  const entry = JSON.parse(lines[0]!);
  assert.deepEqual(entry.error, {
    name: "TimeoutError",
    message: "Request timed out",
    timeout: 5_000,
    cause: { name: "ConnectionRefused", message: "refused" },
  });
  assert.equal(entry.tooLarge.name, "FrameTooLargeError");
  assert.equal(entry.tooLarge.maxFrameBytes, 1024);
  assert.equal(entry.tooLarge.frameBytes, 4096);
  assert.match(entry.tooLarge.message, /4096/);
  assert.deepEqual(entry.stringCause, {
    name: "Error",
    message: "outer",
    cause: "just text",
  });

  const text = capture();
  text.logger.error("Request failed", { error });
  assert.equal(
    text.lines[0],
    '2026-11-24T16:00:00.000Z ERROR Request failed error="TimeoutError: Request timed out (cause: ConnectionRefused: refused)"',
  );
});

Deno.test("consoleLogger() renders bigint, circular and odd values without throwing", () => {
  const circular: Record<string, unknown> = { name: "loop" };
  circular.self = circular;
  const shared = { x: 1 };
  const selfCause = new Error("self");
  selfCause.cause = selfCause;
  const throwing = {
    get boom(): never {
      throw new Error("getter");
    },
  };
  const properties: Record<string, unknown> = {
    id: 2n ** 70n,
    circular,
    shared: [shared, shared],
    selfCause,
    throwing,
    map: new Map<unknown, unknown>([["a", 1n], [2, "b"]]),
    set: new Set([1, 2]),
    bytes: new Uint8Array(16),
    date: new Date(0),
    badDate: new Date(Number.NaN),
    nan: Number.NaN,
    fn: function handler() {},
    sym: Symbol("s"),
    deep: { a: { b: { c: { d: { e: { f: { g: { h: { i: 1 } } } } } } } } },
  };
  const { logger, lines } = capture({ format: "json" });
  logger.info("odd", properties);
  const entry = JSON.parse(lines[0]!);
  assert.equal(entry.id, "1180591620717411303424");
  assert.deepEqual(entry.circular, { name: "loop", self: "[Circular]" });
  assert.deepEqual(entry.shared, [{ x: 1 }, { x: 1 }]);
  assert.deepEqual(entry.selfCause, {
    name: "Error",
    message: "self",
    cause: "[Circular]",
  });
  assert.match(entry.throwing, /^\[Unserializable: getter\]$/);
  assert.deepEqual(entry.map, { a: "1", 2: "b" });
  assert.deepEqual(entry.set, [1, 2]);
  assert.equal(entry.bytes, "[Uint8Array 16 bytes]");
  assert.equal(entry.date, "1970-01-01T00:00:00.000Z");
  assert.equal(entry.badDate, "Invalid Date");
  assert.equal(entry.nan, "NaN");
  assert.equal(entry.fn, "[Function handler]");
  assert.equal(entry.sym, "Symbol(s)");
  assert.match(JSON.stringify(entry.deep), /\[Object\]/);

  const text = capture();
  text.logger.info("odd", properties);
  assert.match(text.lines[0]!, / id=1180591620717411303424 /);
  assert.match(
    text.lines[0]!,
    /circular="{\\"name\\":\\"loop\\",\\"self\\":\\"\[Circular\]\\"}"/,
  );
  assert.match(text.lines[0]!, / selfCause="Error: self \(cause: Error: self/);
});

Deno.test("consoleLogger() survives a property getter that throws and a bad clock", () => {
  const properties = {};
  Object.defineProperty(properties, "boom", {
    enumerable: true,
    get() {
      throw new Error("getter");
    },
  });
  for (const format of ["text", "json"] as const) {
    const { logger, lines } = capture({
      format,
      clock: () => new Date(Number.NaN),
    });
    logger.info("m", properties);
    assert.match(lines[0]!, /Invalid Date/);
    assert.match(lines[0]!, /Unreadable: getter/);
  }
});

Deno.test("consoleLogger() writes to console.error by default", () => {
  // The logger's default output; replaced for the duration of the test.
  const stderrConsole = globalThis.console;
  const original = stderrConsole.error;
  const seen: unknown[][] = [];
  stderrConsole.error = (...args: unknown[]) => {
    seen.push(args);
  };
  try {
    const logger = consoleLogger({ clock: () => NOW });
    logger.info("to stderr", { k: 1 });
    logger.debug("dropped");
  } finally {
    stderrConsole.error = original;
  }
  assert.deepEqual(seen, [[
    "2026-11-24T16:00:00.000Z INFO  to stderr k=1",
  ]]);
});

Deno.test("consoleLogger() throws TypeError on an unknown level or format", () => {
  assert.throws(
    () => consoleLogger({ level: "trace" as LogLevel }),
    TypeError,
  );
  assert.throws(
    () => consoleLogger({ format: "xml" as "json" }),
    TypeError,
  );
});

Deno.test("noopLogger does nothing and cannot be changed", () => {
  logAll(noopLogger);
  noopLogger.error("e", { error: new Error("x") });
  assert.ok(Object.isFrozen(noopLogger));
});

Deno.test("withFields() adds its fields to every entry, call properties win", () => {
  const { logger, lines } = capture({ format: "json", level: "debug" });
  const fields: Record<string, unknown> = { session: 42, peer: "a:1" };
  const tagged = withFields(logger, fields);
  fields.session = 0; // copied at creation: not seen
  tagged.debug("d");
  tagged.info("i", { peer: "b:2", extra: true });
  tagged.warn("w", {});
  tagged.error("e");
  const entries = lines.map((line) => JSON.parse(line));
  assert.deepEqual(
    entries.map(({ level, message, session, peer }) => ({
      level,
      message,
      session,
      peer,
    })),
    [
      { level: "debug", message: "d", session: 42, peer: "a:1" },
      { level: "info", message: "i", session: 42, peer: "b:2" },
      { level: "warn", message: "w", session: 42, peer: "a:1" },
      { level: "error", message: "e", session: 42, peer: "a:1" },
    ],
  );
  assert.equal(entries[1].extra, true);

  const nested = withFields(tagged, { request: 9 });
  nested.info("n");
  const last = JSON.parse(lines.at(-1)!);
  assert.equal(last.session, 42);
  assert.equal(last.request, 9);
});

Deno.test("withFields() does not mutate the caller's properties", () => {
  const { logger } = capture();
  const properties = { a: 1 };
  withFields(logger, { b: 2 }).info("m", properties);
  assert.deepEqual(properties, { a: 1 });
});

Deno.test("Logger accepts a LogTape logger without a cast; it receives message and properties", async () => {
  const records: LogRecord[] = [];
  await configure({
    sinks: { buffer: (record: LogRecord) => records.push(record) },
    loggers: [
      { category: ["tcpbutler"], sinks: ["buffer"], lowestLevel: "debug" },
      { category: ["logtape", "meta"], sinks: [], lowestLevel: "warning" },
    ],
  });
  try {
    // deno check proves the structural compatibility here: no cast.
    const logger: Logger = getLogger(["tcpbutler"]);
    const error = new Error("refused");
    logger.debug("Heartbeat sent", { sessionId: 1 });
    logger.info("Session ready", { sessionId: 1, peer: "127.0.0.1:4000" });
    logger.warn("Reconnecting", { attempt: 2, error });
    logger.error("Handler threw");
    withFields(logger, { sessionId: 5 }).info("Tagged", { extra: true });

    assert.deepEqual(
      records.map((record) => ({
        category: record.category,
        level: record.level,
        message: record.message.join(""),
        properties: record.properties,
      })),
      [
        {
          category: ["tcpbutler"],
          level: "debug",
          message: "Heartbeat sent",
          properties: { sessionId: 1 },
        },
        {
          category: ["tcpbutler"],
          level: "info",
          message: "Session ready",
          properties: { sessionId: 1, peer: "127.0.0.1:4000" },
        },
        {
          category: ["tcpbutler"],
          level: "warning",
          message: "Reconnecting",
          properties: { attempt: 2, error },
        },
        {
          category: ["tcpbutler"],
          level: "error",
          message: "Handler threw",
          properties: {},
        },
        {
          category: ["tcpbutler"],
          level: "info",
          message: "Tagged",
          properties: { sessionId: 5, extra: true },
        },
      ],
    );
    assert.equal(records[2]!.properties.error, error);
  } finally {
    await reset();
  }
});
