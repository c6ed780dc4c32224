/** The parts of a WebSocket the client uses: the browser's, Node's (undici) and `ws`'s all fit. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: any) => any) | null;
  onclose: ((ev: any) => any) | null;
  onerror: ((ev: any) => any) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor such as `globalThis.WebSocket` or `ws`'s `WebSocket`. */
export type WebSocketConstructor = abstract new (url: string) => {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
};

/** Where a subscription is in a channel's stream (channels with history only). */
export interface StreamPosition {
  epoch: string;
  offset: number;
}

export interface ClientOptions {
  /** A connection JWT, sent as `?token=` on the first connect. */
  token?: string;
  /**
   * Returns a fresh connection JWT. Called before every connect after the first (before the
   * first too when `token` is not given), after a `4401` close, and to refresh the token
   * before it expires.
   */
  getToken?: () => Promise<string>;
  /** WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Base of the exponential reconnect backoff, in ms (default 500). */
  minReconnectDelay?: number;
  /** Cap of the reconnect backoff, in ms (default 20000). */
  maxReconnectDelay?: number;
  /** Refresh when this fraction of the token's remaining lifetime has passed (default 0.8). */
  refreshRatio?: number;
  /** ...but at least this many ms before `exp` (default 1000). */
  refreshBefore?: number;
  /** How long to wait for the reply to a request (publish, subscribe, …), in ms (default 10000). */
  requestTimeout?: number;
  /** How long to wait for `welcome` after starting a connection, in ms (default 10000). */
  connectTimeout?: number;
}

export interface SubscriptionOptions {
  /** A subscription JWT (namespaces with `subscribe = "token"`), sent with every subscribe. */
  token?: string;
  /** Returns a subscription JWT for `channel`; called before every subscribe. */
  getToken?: (channel: string) => Promise<string>;
  /** Presence info (any JSON, at most 1 KiB) that other members see. */
  presence?: unknown;
  /** Recover from this position on the first subscribe (e.g. one saved from an earlier session). */
  since?: StreamPosition;
}

export type ClientState = 'disconnected' | 'connecting' | 'connected';
export type SubscriptionState = 'subscribing' | 'subscribed' | 'unsubscribed';

export interface Member {
  conn_id: string;
  /** The member's token `sub`; absent for anonymous connections. */
  user?: string;
  info: unknown;
}

export interface Publication {
  channel: string;
  data: unknown;
  /** Position in the channel's stream; absent on channels without history. */
  offset?: number;
}

export interface HistoryOptions {
  /** At most this many publications (server default and maximum: the namespace's `max_recover`). */
  limit?: number;
  /** Only publications after this position; its epoch must be the current one (else `epoch_changed`). */
  since?: StreamPosition;
}

export interface HistoryResult {
  channel: string;
  epoch: string;
  /** The stream's current offset. */
  offset: number;
  /** Oldest first. */
  publications: { offset: number; data: unknown }[];
}

export interface ConnectingEvent {
  /** Close code of the connection that was lost; absent on a `connect()` call. */
  code?: number;
  reason?: string;
  /** Milliseconds until the next attempt. */
  delay: number;
  /** Consecutive failed attempts so far (0 on a `connect()` call or after a connection that got `welcome`). */
  attempt: number;
}

export interface ConnectedEvent {
  connId: string;
  /** The token's `sub`, when the server reports it. */
  user?: string;
  /** Unix seconds; `null`/absent when the token does not expire or there is none. */
  expiresAt?: number | null;
}

export interface DisconnectedEvent {
  code: number;
  reason: string;
}

export interface ClientEvents {
  connecting: ConnectingEvent;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  error: import('./errors.js').SwitchboardError;
  /** Messages on channels that have no `Subscription` (e.g. server-side subscriptions from the token's `channels`). */
  publication: Publication;
}

export interface SubscribedEvent {
  channel: string;
  /** `true` when every missed publication follows as `publication` events. */
  recovered: boolean;
  /** Whether this subscribe asked to recover (it had a position). `wasRecovering && !recovered`: what the app holds is stale. */
  wasRecovering: boolean;
  /** Whether the channel keeps history (absent when the server answered with a plain `ack`). */
  recoverable: boolean;
  epoch?: string;
  offset?: number;
}

export interface SubscribingEvent {
  channel: string;
  /** `connect`, `disconnected`, `gap`, `resubscribe` (server asked) or `retry`. */
  reason: string;
}

export interface UnsubscribedEvent {
  channel: string;
  /** `client` after `unsubscribe()`, else the server's or the error's code. */
  code: string;
  reason: string;
}

export interface MemberEvent {
  channel: string;
  member: Member;
}

export interface SubscriptionEvents {
  subscribing: SubscribingEvent;
  subscribed: SubscribedEvent;
  publication: Publication;
  join: MemberEvent;
  leave: MemberEvent;
  error: import('./errors.js').SwitchboardError;
  unsubscribed: UnsubscribedEvent;
}
