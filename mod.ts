/**
 * tcpbutler: persistent TCP sessions made simple.
 *
 * A client ({@linkcode dial}) keeps a pool of sessions alive with
 * reconnect and backoff, routes requests across them, matches replies by
 * correlation id (or by order, for in-order protocols), and takes messages
 * pushed by the server. A server ({@linkcode serve}) answers requests with a
 * handler, pushes to clients, and shuts down without losing work in flight.
 * Both speak the default wire format ({@linkcode defaultCodec}) or any
 * {@linkcode Codec} (see `@tcpbutler/core/framing`).
 *
 * @example Usage
 * ```ts
 * import { dial, serve } from "@tcpbutler/core";
 * import assert from "node:assert/strict";
 *
 * await using server = serve({
 *   hostname: "127.0.0.1",
 *   port: 0,
 *   handler: (payload) => new TextEncoder().encode(`echo: ${new TextDecoder().decode(payload)}`),
 * });
 * await using client = await dial({ hostname: "127.0.0.1", port: server.port });
 * const reply = await client.request(new TextEncoder().encode("hello"));
 * assert.equal(new TextDecoder().decode(reply), "echo: hello");
 * ```
 *
 * @module
 */

export { Client } from "./client/client.ts";
export type { ClientStatus } from "./client/client.ts";
export { dial } from "./client/dial.ts";
export type {
  ClientEventDetail,
  ClientHandler,
  ClientHandlerContext,
  ClientRequestOptions,
  ClientSendOptions,
  ClientStats,
  CloseOptions,
  DialOptions,
  DialTarget,
  EjectionOptions,
  EndpointStats,
  HeartbeatOptions,
  PipelineOptions,
  ReconnectOptions,
} from "./client/types.ts";
export { dnsEndpoints } from "./client/discovery.ts";
export type {
  Discovery,
  DnsEndpointsOptions,
  EndpointList,
  EndpointSource,
} from "./client/discovery.ts";
export type { AddressFamily } from "./transport/resolve.ts";
export { Server } from "./server/server.ts";
export type {
  ServerEventDetail,
  ServerHandler,
  ServerHandlerContext,
  ServerStats,
  ServerStatus,
} from "./server/server.ts";
export { serve, serveMutualTls } from "./server/serve.ts";
export type { InboundMessage, MessagesOptions } from "./streams/inbound.ts";
export type { StatusDropped, StatusOptions } from "./streams/status.ts";
export { serveWorkers, WorkerServer } from "./server/workers.ts";
export type {
  ServeWorkersOptions,
  WorkerServeOptions,
  WorkerServerEventDetail,
  WorkerServerStats,
} from "./server/workers.ts";
export { listen } from "./transport/listen.ts";
export type { ListenOptions } from "./transport/listen.ts";
export { listenReusePort } from "./transport/reuse_port.ts";
export type { ListenReusePortOptions } from "./transport/reuse_port.ts";
export type {
  ProxyProtocolOptions,
  ServeOptions,
  ServerTlsOptions,
} from "./server/serve.ts";
export type {
  ForcedSession,
  ShutdownOptions,
  ShutdownReport,
} from "./server/shutdown.ts";
export type { SessionOptions, SessionSettings } from "./options.ts";
export type {
  Counters,
  Handler,
  HandlerContext,
  MessageKind,
  PipelineResult,
  ProxyInfo,
  RequestOptions,
  SendOptions,
  Session,
  SessionState,
  SessionStats,
} from "./session/types.ts";
export type {
  PeerCertificate,
  Transport,
  TransportListener,
} from "./connection.ts";
export type {
  ClientTlsOptions,
  Endpoint,
  TcpEndpoint,
  UnixEndpoint,
} from "./transport/connect.ts";
export {
  matchAny,
  matchDefaultProtocol,
  matchPrefix,
  muxListener,
} from "./transport/mux.ts";
export type { Matcher, MuxListener, MuxOptions } from "./transport/mux.ts";
export {
  encodeProxyHeaderV1,
  encodeProxyHeaderV2,
  parseProxyHeader,
  readProxyHeader,
} from "./transport/proxy_protocol.ts";
export type {
  EncodeProxyHeaderV2Options,
  ParseProxyHeaderOptions,
  ProxyAddress,
  ProxyHeader,
  ProxyTlv,
  ReadProxyHeaderOptions,
} from "./transport/proxy_protocol.ts";
export {
  listenInherited,
  systemdListeners,
} from "./transport/socket_activation.ts";
export type {
  InheritedListener,
  InheritedTransport,
  ListenInheritedOptions,
  SystemdListenersOptions,
} from "./transport/socket_activation.ts";
export { defaultCodec, FrameKind, HEADER_BYTES } from "./protocol.ts";
export type { DefaultCodecOptions, Frame } from "./protocol.ts";
export type { Codec, CorrelationId, FrameDecoder } from "./framing/codec.ts";
export {
  ClosedError,
  ConnectionClosedError,
  ConnectionError,
  DiscoveryError,
  DuplicateIdError,
  FrameTooLargeError,
  isRetryableError,
  MemoryBudgetError,
  NoSessionError,
  ProtocolError,
  ProtocolMismatchError,
  ProxyProtocolError,
  RemoteError,
  RetryExhaustedError,
  SlowConsumerError,
  TimeoutError,
  TlsHandshakeError,
  UnsupportedRuntimeError,
} from "./errors.ts";
export type {
  DetectedProtocol,
  TlsHandshakeErrorOptions,
  TlsHandshakeFailure,
} from "./errors.ts";
export { delay, exponentialBackoff } from "./backoff.ts";
export type { Backoff, BackoffOptions, DelayOptions } from "./backoff.ts";
export { consoleLogger, noopLogger, safeLogger, withFields } from "./logger.ts";
export type { ConsoleLoggerOptions, Logger, LogLevel } from "./logger.ts";
