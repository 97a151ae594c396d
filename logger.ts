/**
 * Logging: the {@linkcode Logger} interface tcpbutler writes to, a no-op
 * default, a console logger (text or JSON lines) and {@linkcode withFields}
 * to tag every entry of a session.
 *
 * The interface is structurally compatible with LogTape's `Logger`: a logger
 * from `getLogger(["tcpbutler"])` of `@logtape/logtape` can be passed as is.
 *
 * @module
 */

/**
 * Where tcpbutler writes its log entries. Messages are plain text (never a
 * `{placeholder}` template) and constant for a kind of event; what varies
 * (session id, address, error) goes in `properties`.
 *
 * A LogTape `Logger` (`@logtape/logtape`) satisfies this interface without a
 * cast.
 *
 * @example Usage
 * ```ts
 * import type { Logger } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const lines: string[] = [];
 * const logger: Logger = {
 *   debug: () => {},
 *   info: (message) => lines.push(message),
 *   warn: (message) => lines.push(message),
 *   error: (message) => lines.push(message),
 * };
 * logger.info("Session ready", { sessionId: 1 });
 * assert.deepEqual(lines, ["Session ready"]);
 * ```
 *
 * @example Pass a LogTape logger
 * ```ts
 * import type { Logger } from "@tcpbutler/core";
 * import { getLogger } from "@logtape/logtape";
 *
 * const logger: Logger = getLogger(["tcpbutler"]);
 * logger.debug("Nothing is configured, so this goes nowhere");
 * ```
 */
export interface Logger {
  /**
   * Logs a detail useful when debugging (late replies, heartbeats).
   *
   * @param message Plain text, constant for the kind of event.
   * @param properties Context: ids, addresses, errors.
   */
  debug(message: string, properties?: Record<string, unknown>): void;
  /**
   * Logs a normal event (session ready, server listening).
   *
   * @param message Plain text, constant for the kind of event.
   * @param properties Context: ids, addresses, errors.
   */
  info(message: string, properties?: Record<string, unknown>): void;
  /**
   * Logs something that went wrong but was handled (a reconnect, a dropped
   * frame).
   *
   * @param message Plain text, constant for the kind of event.
   * @param properties Context: ids, addresses, errors.
   */
  warn(message: string, properties?: Record<string, unknown>): void;
  /**
   * Logs a failure (a handler threw, a session died on bad input).
   *
   * @param message Plain text, constant for the kind of event.
   * @param properties Context: ids, addresses, errors.
   */
  error(message: string, properties?: Record<string, unknown>): void;
}

/**
 * A logger that discards everything: the library's default.
 *
 * @example Usage
 * ```ts
 * import { noopLogger } from "@tcpbutler/core";
 *
 * noopLogger.error("Goes nowhere", { sessionId: 1 });
 * ```
 */
export const noopLogger: Logger = Object.freeze({
  debug(): void {},
  info(): void {},
  warn(): void {},
  error(): void {},
});

/** A severity, from the most verbose to the most severe. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** Options of {@linkcode consoleLogger}. */
export interface ConsoleLoggerOptions {
  /**
   * The least severe level written; entries below it are dropped.
   *
   * @default {"info"}
   */
  level?: LogLevel | undefined;
  /**
   * `"text"`: `2026-11-24T16:00:00.000Z INFO  message key=value
   * key2="quoted value"`. `"json"`: one JSON object per line,
   * `{"time":…,"level":"info","logger":…,"message":…,…properties}`.
   *
   * @default {"text"}
   */
  format?: "text" | "json" | undefined;
  /**
   * Receives each formatted line, without a trailing newline.
   *
   * @default {writes to stderr through `console.error`}
   */
  write?: ((line: string) => void) | undefined;
  /**
   * A name for the logger: the `logger` field in JSON, `[name]` before the
   * message in text. Omitted when not set.
   */
  name?: string | undefined;
  /**
   * The time source of each entry.
   *
   * @default {() => new Date()}
   */
  clock?: (() => Date) | undefined;
}

const LEVELS: Readonly<Record<LogLevel, number>> = {
  debug: 0,
  info: 1,
  warn: 2,
  error: 3,
};

/**
 * JSON keys set by the logger itself; properties with these names get `_`
 * prefixes until the name is free.
 */
const RESERVED_KEYS = new Set(["time", "level", "logger", "message"]);

/**
 * Makes a logger that writes one line per entry, as text or JSON, to stderr
 * or to the given `write` function.
 *
 * Formatting never throws: `Error` values are rendered with their name,
 * message, own fields and cause; bigints as decimal digits (strings in JSON);
 * circular references as `"[Circular]"`; nesting beyond 8 levels as
 * `"[Object]"`. In text, line breaks in the message are escaped.
 *
 * @param options Minimum level, format, output, name and clock.
 * @returns The logger.
 * @throws {TypeError} When `level` or `format` is not one of the allowed
 * values.
 *
 * @example Usage
 * ```ts
 * import { consoleLogger } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const lines: string[] = [];
 * const logger = consoleLogger({
 *   write: (line) => lines.push(line),
 *   clock: () => new Date("2026-11-24T16:00:00.000Z"),
 * });
 * logger.debug("Dropped: below the default level");
 * logger.info("Session ready", { sessionId: 7, peer: "127.0.0.1:4000" });
 * assert.deepEqual(lines, [
 *   "2026-11-24T16:00:00.000Z INFO  Session ready sessionId=7 peer=127.0.0.1:4000",
 * ]);
 * ```
 *
 * @example JSON lines
 * ```ts
 * import { consoleLogger } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const lines: string[] = [];
 * const logger = consoleLogger({
 *   format: "json",
 *   name: "tcpbutler",
 *   level: "debug",
 *   write: (line) => lines.push(line),
 *   clock: () => new Date("2026-11-24T16:00:00.000Z"),
 * });
 * logger.warn("Reconnecting", { attempt: 3, error: new Error("refused") });
 * assert.deepEqual(JSON.parse(lines[0]!), {
 *   time: "2026-11-24T16:00:00.000Z",
 *   level: "warn",
 *   logger: "tcpbutler",
 *   message: "Reconnecting",
 *   attempt: 3,
 *   error: { name: "Error", message: "refused" },
 * });
 * ```
 */
export function consoleLogger(options?: ConsoleLoggerOptions): Logger {
  options ??= {};
  const level = options.level ?? "info";
  const format = options.format ?? "text";
  if (!Object.hasOwn(LEVELS, level)) {
    throw new TypeError(
      `Cannot create logger: level must be "debug", "info", "warn" or "error", got ${
        String(level)
      }`,
    );
  }
  if (format !== "text" && format !== "json") {
    throw new TypeError(
      `Cannot create logger: format must be "text" or "json", got ${
        String(format)
      }`,
    );
  }
  const write = options.write ?? writeToStderr;
  const clock = options.clock ?? (() => new Date());
  const name = options.name;
  const threshold = LEVELS[level];
  const render = format === "json" ? formatJson : formatText;
  const log = (entryLevel: LogLevel) =>
  (
    message: string,
    properties?: Record<string, unknown>,
  ): void => {
    if (LEVELS[entryLevel] < threshold) return;
    write(
      render(timestamp(clock()), entryLevel, name, message, properties),
    );
  };
  return {
    debug: log("debug"),
    info: log("info"),
    warn: log("warn"),
    error: log("error"),
  };
}

/**
 * Wraps a logger so that every entry carries `fields` in its properties (for
 * example a session id). Properties given at the call win over `fields` of
 * the same name. `fields` is copied: later changes to the object are not
 * seen.
 *
 * @param logger The logger to write to (any {@linkcode Logger}, LogTape's
 * included).
 * @param fields The properties to add to every entry.
 * @returns A logger that writes to `logger`.
 *
 * @example Usage
 * ```ts
 * import { consoleLogger, withFields } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * const lines: string[] = [];
 * const base = consoleLogger({
 *   write: (line) => lines.push(line),
 *   clock: () => new Date(0),
 * });
 * const logger = withFields(base, { session: 42 });
 * logger.info("Session ready", { peer: "127.0.0.1:4000" });
 * assert.equal(
 *   lines[0],
 *   "1970-01-01T00:00:00.000Z INFO  Session ready session=42 peer=127.0.0.1:4000",
 * );
 * ```
 */
export function withFields(
  logger: Logger,
  fields: Record<string, unknown>,
): Logger {
  const own = { ...fields };
  const merge = (
    properties: Record<string, unknown> | undefined,
  ): Record<string, unknown> =>
    properties === undefined ? { ...own } : { ...own, ...properties };
  return {
    debug: (message, properties) => logger.debug(message, merge(properties)),
    info: (message, properties) => logger.info(message, merge(properties)),
    warn: (message, properties) => logger.warn(message, merge(properties)),
    error: (message, properties) => logger.error(message, merge(properties)),
  };
}

function writeToStderr(line: string): void {
  // deno-lint-ignore no-console
  console.error(line);
}

function timestamp(date: Date): string {
  return Number.isNaN(date.getTime()) ? "Invalid Date" : date.toISOString();
}

function formatText(
  time: string,
  level: LogLevel,
  name: string | undefined,
  message: string,
  properties: Record<string, unknown> | undefined,
): string {
  let line = `${time} ${level.toUpperCase().padEnd(5)} `;
  if (name !== undefined) line += `[${escapeLineBreaks(name)}] `;
  line += escapeLineBreaks(String(message));
  if (properties !== undefined) {
    for (const key of Object.keys(properties)) {
      let value: unknown;
      try {
        value = properties[key];
      } catch (error) {
        value = `[Unreadable: ${describeThrown(error)}]`;
      }
      line += ` ${textToken(key)}=${textToken(textValue(value))}`;
    }
  }
  return line;
}

function formatJson(
  time: string,
  level: LogLevel,
  name: string | undefined,
  message: string,
  properties: Record<string, unknown> | undefined,
): string {
  const entry: Record<string, unknown> = { time, level };
  if (name !== undefined) entry.logger = name;
  entry.message = String(message);
  if (properties !== undefined) {
    const keys = Object.keys(properties);
    const renamed: string[] = [];
    for (const key of keys) {
      if (RESERVED_KEYS.has(key)) renamed.push(key);
      else entry[key] = readJson(properties, key);
    }
    // Reserved names go last, so that they never displace a property that
    // already has the `_`-prefixed name.
    for (const key of renamed) {
      let target = `_${key}`;
      while (Object.hasOwn(entry, target)) target = `_${target}`;
      entry[target] = readJson(properties, key);
    }
  }
  return JSON.stringify(entry);
}

function readJson(properties: Record<string, unknown>, key: string): unknown {
  try {
    return toJsonValue(properties[key], []);
  } catch (error) {
    return `[Unreadable: ${describeThrown(error)}]`;
  }
}

/** A text rendering of a value, before quoting. */
function textValue(value: unknown): string {
  switch (typeof value) {
    case "string":
      return value;
    case "number":
    case "boolean":
    case "bigint":
    case "undefined":
    case "symbol":
      return String(value);
    case "function":
      return `[Function${value.name ? ` ${value.name}` : ""}]`;
  }
  if (value === null) return "null";
  if (value instanceof Error) return errorText(value, 0);
  if (value instanceof Date) return timestamp(value);
  const json = JSON.stringify(toJsonValue(value, []));
  return json === undefined ? String(value) : json;
}

/** `Name: message`, then `(cause: …)` for each level of cause. */
function errorText(error: Error, depth: number): string {
  let text = `${safeString(() => error.name)}: ${
    safeString(() => error.message)
  }`;
  let cause: unknown;
  try {
    cause = error.cause;
  } catch {
    cause = undefined;
  }
  if (cause !== undefined) {
    const causeText = cause instanceof Error
      ? depth < MAX_DEPTH ? errorText(cause, depth + 1) : "[Error]"
      : textValue(cause);
    text += ` (cause: ${causeText})`;
  }
  return text;
}

/** Bare when safe, else a JSON string (quoted, escaped). */
function textToken(text: string): string {
  return /^[^\s"=\\\p{C}]+$/u.test(text) ? text : JSON.stringify(text);
}

function escapeLineBreaks(text: string): string {
  return text.replace(/\r/g, "\\r").replace(/\n/g, "\\n");
}

const MAX_DEPTH = 8;

/**
 * Converts any value into something `JSON.stringify` accepts without
 * throwing and without losing what matters in a log.
 */
function toJsonValue(value: unknown, ancestors: object[]): unknown {
  switch (typeof value) {
    case "string":
    case "boolean":
      return value;
    case "number":
      return Number.isFinite(value) ? value : String(value);
    case "bigint":
      return value.toString();
    case "undefined":
      return null;
    case "symbol":
      return value.toString();
    case "function":
      return `[Function${value.name ? ` ${value.name}` : ""}]`;
  }
  if (value === null) return null;
  const object = value as object;
  if (ancestors.includes(object)) return "[Circular]";
  if (ancestors.length >= MAX_DEPTH) return "[Object]";
  ancestors.push(object);
  try {
    return objectJson(object, ancestors);
  } catch (error) {
    return `[Unserializable: ${describeThrown(error)}]`;
  } finally {
    ancestors.pop();
  }
}

/**
 * {@linkcode toJsonValue} for an object already pushed on `ancestors`: dates,
 * errors, collections, byte views, `toJSON()` and own enumerable fields.
 */
function objectJson(object: object, ancestors: object[]): unknown {
  if (object instanceof Date) return timestamp(object);
  if (object instanceof Error) return errorJson(object, ancestors);
  if (Array.isArray(object)) {
    return object.map((item) => toJsonValue(item, ancestors));
  }
  if (object instanceof Map) {
    const result: Record<string, unknown> = {};
    for (const [key, item] of object) {
      result[typeof key === "string" ? key : textValue(key)] = toJsonValue(
        item,
        ancestors,
      );
    }
    return result;
  }
  if (object instanceof Set) {
    return [...object].map((item) => toJsonValue(item, ancestors));
  }
  if (ArrayBuffer.isView(object)) {
    return `[${object.constructor.name} ${object.byteLength} bytes]`;
  }
  const toJSON = (object as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === "function") {
    return toJsonValue(toJSON.call(object), ancestors);
  }
  const result: Record<string, unknown> = {};
  for (const key of Object.keys(object)) {
    result[key] = toJsonValue(
      (object as Record<string, unknown>)[key],
      ancestors,
    );
  }
  return result;
}

/** `{ name, message, ...own fields, cause }`, without the stack. */
function errorJson(error: Error, ancestors: object[]): Record<string, unknown> {
  const result: Record<string, unknown> = {
    name: safeString(() => error.name),
    message: safeString(() => error.message),
  };
  for (const key of Object.keys(error)) {
    if (key === "stack" || key === "cause" || Object.hasOwn(result, key)) {
      continue;
    }
    result[key] = toJsonValue(
      (error as unknown as Record<string, unknown>)[key],
      ancestors,
    );
  }
  if (error.cause !== undefined) {
    result.cause = toJsonValue(error.cause, ancestors);
  }
  return result;
}

function safeString(read: () => unknown): string {
  try {
    return String(read());
  } catch (error) {
    return `[Unreadable: ${describeThrown(error)}]`;
  }
}

function describeThrown(error: unknown): string {
  try {
    return error instanceof Error ? error.message : String(error);
  } catch {
    return "?";
  }
}

/**
 * Wraps a user's logger so that a throwing logger cannot break the library:
 * a failed log call is dropped. Used on every logger given in options.
 *
 * @param logger The user's logger (or undefined for the no-op logger).
 * @returns A logger whose methods never throw.
 *
 * @example Usage
 * ```ts
 * import { safeLogger } from "@tcpbutler/core";
 *
 * const logger = safeLogger({
 *   debug() { throw new Error("disk full"); },
 *   info() {},
 *   warn() {},
 *   error() {},
 * });
 * logger.debug("still fine", {}); // does not throw
 * ```
 */
export function safeLogger(logger?: Logger): Logger {
  if (logger === undefined || logger === noopLogger) return noopLogger;
  const guard = (
    method: (message: string, properties?: Record<string, unknown>) => void,
  ) =>
  (message: string, properties?: Record<string, unknown>) => {
    try {
      method.call(logger, message, properties);
    } catch {
      // A logger that fails must not take a session down with it.
    }
  };
  return {
    debug: guard(logger.debug),
    info: guard(logger.info),
    warn: guard(logger.warn),
    error: guard(logger.error),
  };
}
