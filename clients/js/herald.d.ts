// Type declarations for herald.js. The wire protocol is docs/protocol.md.

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** `{exchange, pattern}`: an exact exchange and a RabbitMQ topic pattern. */
export interface Binding {
  exchange: string;
  pattern: string;
}

/** `[field, op, value]`, e.g. `["payload/state", "=", "done"]`. */
export type Filter = [string, string, Json?];

/** Where a subscription starts; absent means live. */
export type Since = { id: number } | { last: number } | { time: string };

/** An event as delivered to a handler. */
export interface HeraldEvent {
  sub: string;
  id: number;
  exchange: string;
  routing_key: string;
  time: string;
  payload: Json;
  headers?: { [key: string]: Json };
}

/** An event to publish. */
export interface NewEvent {
  exchange: string;
  routing_key?: string;
  payload: Json;
  acl?: string[];
  headers?: { [key: string]: Json };
  /** 1 to 128 bytes: a repeat with the same key and exchange within the server's window gets the first id and is stored once. */
  idempotency_key?: string;
}

/** A token, or a function that gets a fresh one (called at every connect and before expiry). */
export type TokenSource = string | (() => string | Promise<string>);

/** Anything shaped like the browser's WebSocket constructor (the `ws` package in Node 20). */
export type WebSocketConstructor = new (url: string) => any;

export interface ClientOptions {
  /** `http(s)://host` or `ws(s)://host/v1/ws` (give this or `urls`). */
  url?: string;
  /** Several nodes of a cluster: each reconnect tries the next, and the session resumes there. */
  urls?: string[];
  /** Omit for anonymous access. */
  token?: TokenSource;
  /** Defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Acknowledge events after the handler returns (default true). */
  autoAck?: boolean;
  /** Acks are batched and sent at most this often (default 200). */
  ackIntervalMs?: number;
  /** Backoff between reconnects (full jitter), or `false` to never reconnect. */
  reconnect?: false | { initialDelayMs?: number; maxDelayMs?: number };
  /** A connection without `welcome` after this long is dropped (default 15000). */
  connectTimeoutMs?: number;
  /** With a token callback, take a fresh token this long before `exp` (default 30000). */
  refreshBeforeExpiryMs?: number;
  /** Sent in `hello.client`. */
  client?: Json;
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** A protocol error (`code` from docs/protocol.md) or a client-side one. */
export class HeraldError extends Error {
  code: string;
  sub?: string;
  closeCode?: number;
}

export interface SubscribeOptions {
  /** The `sub` id; generated when omitted. */
  id?: string;
  bindings: Binding[];
  filters?: Filter[];
  since?: Since;
  /** Overrides the client's `autoAck`. */
  autoAck?: boolean;
  /** Called once per event, in id order, never twice for one id. */
  onEvent?: (event: HeraldEvent) => void;
}

export interface StatusMessage {
  type: 'status';
  source: string;
  state: 'up' | 'down';
  detail: string;
}

export interface SubscribedMessage {
  type: 'subscribed';
  sub: string;
  head: number;
  recovered: boolean;
  history?: 'from_now';
}

export class Subscription {
  readonly id: string;
  readonly bindings: Binding[];
  readonly filters?: Filter[];
  readonly since?: Since;
  /** Highest id handed to the handler. */
  readonly lastId: number | null;
  readonly head: number | null;
  readonly recovered: boolean | null;
  readonly history?: 'from_now';
  readonly paused: boolean;
  readonly active: boolean;
  ack(id: number): void;
  pause(): Promise<void>;
  resume(): Promise<void>;
  unsubscribe(): Promise<void>;
  on(name: 'event', fn: (event: HeraldEvent) => void): () => void;
  on(name: 'subscribed', fn: (msg: SubscribedMessage) => void): () => void;
  on(name: 'error', fn: (err: HeraldError) => void): () => void;
  off(name: string, fn: (value: any) => void): void;
}

/** A rendezvous registration made by `serve`. */
export interface Responder {
  readonly service: string;
  readonly concurrency: number;
  readonly active: boolean;
  stop(): Promise<void>;
}

export class HeraldClient {
  constructor(options: ClientOptions);
  /** The URL of the current (or next) connection. */
  readonly url: string;
  readonly urls: string[];
  readonly state: ClientState;
  readonly session: { id: string; secret: string } | null;
  readonly limits: { [name: string]: number } | null;
  readonly duplicatesDropped: number;
  readonly reconnects: number;
  connect(): Promise<HeraldClient>;
  close(): void;
  subscribe(options: SubscribeOptions): Promise<Subscription>;
  publish(event: NewEvent): Promise<number>;
  ping(): Promise<void>;
  /** Rendezvous: ask one responder of `service`; resolves with its answer. */
  request(service: string, body: Json, options?: { timeoutMs?: number }): Promise<Json>;
  /** Rendezvous: answer requests for `service`; renewed after every reconnect. */
  serve(
    service: string,
    handler: (body: Json, info: { request: string; service: string; deadlineMs: number }) => Json | Promise<Json>,
    options?: { concurrency?: number },
  ): Promise<Responder>;
  on(name: 'state', fn: (state: ClientState) => void): () => void;
  on(name: 'status', fn: (msg: StatusMessage) => void): () => void;
  on(name: 'error', fn: (err: HeraldError) => void): () => void;
  on(name: 'welcome', fn: (msg: { session: { id: string; secret: string }; resumed: boolean; heartbeat_ms: number; limits: { [name: string]: number } }) => void): () => void;
  on(name: 'closing', fn: (msg: { reason: string; retry_after_ms: number }) => void): () => void;
  on(name: 'disconnect', fn: (info: { code: number; reason: string }) => void): () => void;
  off(name: string, fn: (value: any) => void): void;
}

export const VERSION: string;
export function websocketUrl(url: string): string;
export function tokenExpiry(token: string): number | null;
