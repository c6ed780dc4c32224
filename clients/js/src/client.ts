import { Emitter } from './emitter.js';
import { SwitchboardError } from './errors.js';
import { jwtExpiry } from './jwt.js';
import type {
  ClientEvents,
  ClientOptions,
  ClientState,
  HistoryOptions,
  HistoryResult,
  Member,
  StreamPosition,
  SubscribedEvent,
  SubscriptionEvents,
  SubscriptionOptions,
  SubscriptionState,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js';

type Frame = { type?: unknown; id?: unknown; [key: string]: unknown };

interface Pending {
  onReply(frame: Frame): void;
  onError(err: SwitchboardError): void;
  timer: ReturnType<typeof setTimeout>;
}

/** setTimeout fires at once for delays past 2^31-1 ms; long token lifetimes must not. */
const MAX_TIMER = 2 ** 31 - 1;

function clampDelay(ms: number): number {
  return Math.min(MAX_TIMER, Math.max(0, ms));
}

function errorFromFrame(frame: Frame, channel?: string): SwitchboardError {
  const code = typeof frame.code === 'string' ? frame.code : 'error';
  const message = typeof frame.message === 'string' ? frame.message : code;
  const ch = typeof frame.channel === 'string' ? frame.channel : channel;
  return new SwitchboardError(code, message, ch === undefined ? {} : { channel: ch });
}

function toWebSocketUrl(url: string): string {
  if (/^wss?:\/\//i.test(url)) return url;
  if (/^https?:\/\//i.test(url)) return url.replace(/^http/i, 'ws');
  const loc = (globalThis as { location?: { href: string } }).location;
  if (loc && /^https?:/i.test(loc.href)) {
    const u = new URL(url, loc.href);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    return u.toString();
  }
  return url;
}

/**
 * A connection to a Switchboard pub/sub route (`/ws`). It connects when `connect()` is called,
 * reconnects with exponential backoff and full jitter until `disconnect()`, and resubscribes
 * every `Subscription` after each reconnect, recovering missed publications where the channel
 * keeps history.
 */
export class Client extends Emitter<ClientEvents> {
  readonly url: string;
  private readonly ctor: WebSocketConstructor;
  private readonly getTokenFn: (() => Promise<string>) | undefined;
  private readonly minDelay: number;
  private readonly maxDelay: number;
  private readonly refreshRatio: number;
  private readonly refreshBefore: number;
  private readonly requestTimeout: number;
  private readonly connectTimeout: number;

  private _state: ClientState = 'disconnected';
  private ws: WebSocketLike | null = null;
  /** Bumped whenever a connection attempt starts or ends, to drop stale async work. */
  private gen = 0;
  private token: string | undefined;
  /** The options' token is used for the first connect only when `getToken` exists. */
  private initialTokenUnused: boolean;
  private attempt = 0;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly subs = new Map<string, Subscription>();

  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private silenceTimer: ReturnType<typeof setTimeout> | undefined;
  private pongTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;

  private _connId: string | undefined;
  private _user: string | undefined;
  private _expiresAt: number | null | undefined;
  private pingIntervalMs = 0;
  private pongTimeoutMs = 0;

  constructor(url: string, options: ClientOptions = {}) {
    super();
    this.url = toWebSocketUrl(url);
    const ctor =
      options.WebSocket ??
      (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!ctor) {
      throw new Error(
        'switchboard-client: no WebSocket constructor. Pass one as the `WebSocket` option, ' +
          'or on Node 20 run with `node --experimental-websocket` (Node 22+ has it built in).',
      );
    }
    this.ctor = ctor;
    this.token = options.token;
    this.getTokenFn = options.getToken;
    this.initialTokenUnused = options.token !== undefined;
    this.minDelay = options.minReconnectDelay ?? 500;
    this.maxDelay = Math.max(this.minDelay, options.maxReconnectDelay ?? 20_000);
    this.refreshRatio = options.refreshRatio ?? 0.8;
    this.refreshBefore = options.refreshBefore ?? 1000;
    this.requestTimeout = options.requestTimeout ?? 10_000;
    this.connectTimeout = options.connectTimeout ?? 10_000;
  }

  /** `disconnected`, `connecting` (including waiting to reconnect) or `connected` (welcome received). */
  get state(): ClientState {
    return this._state;
  }

  /** The server's name for this connection (from `welcome`), while connected. */
  get connId(): string | undefined {
    return this._connId;
  }

  /** The authenticated user (token `sub`) as the server reported it. */
  get user(): string | undefined {
    return this._user;
  }

  /** The connection token's expiry in Unix seconds as the server reported it. */
  get expiresAt(): number | null | undefined {
    return this._expiresAt;
  }

  /** Subscriptions by channel (those not yet ended with `unsubscribe()` or by the server). */
  get subscriptions(): ReadonlyMap<string, Subscription> {
    return this.subs;
  }

  getSubscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /** Starts connecting (no-op unless `disconnected`). Progress is reported by events. */
  connect(): void {
    if (this._state !== 'disconnected') return;
    this.attempt = 0;
    this._state = 'connecting';
    this.emit('connecting', { delay: 0, attempt: 0 });
    if (this._state !== 'connecting') return;
    void this.open();
  }

  /**
   * Closes the connection (code 1000) and stops reconnecting. Subscriptions stay, with their
   * stream positions, and are resubscribed with recovery on the next `connect()`.
   */
  disconnect(): void {
    if (this._state === 'disconnected') return;
    this.gen++;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const ws = this.ws;
    this.teardown();
    if (ws) {
      try {
        ws.close(1000, 'client disconnect');
      } catch {
        // already closing
      }
    }
    this._state = 'disconnected';
    this.emit('disconnected', { code: 1000, reason: 'client disconnect' });
  }

  /**
   * Subscribes to `channel` (now if connected, else on the next connect) and returns its
   * `Subscription`. Throws `already_subscribed` if this client already has one for `channel`.
   */
  subscribe(channel: string, options: SubscriptionOptions = {}): Subscription {
    if (this.subs.has(channel)) {
      throw new SwitchboardError('already_subscribed', `already subscribed to ${channel}`, { channel });
    }
    const sub = new Subscription(this, channel, options);
    this.subs.set(channel, sub);
    if (this._state === 'connected') sub._start('connect');
    return sub;
  }

  /**
   * Publishes `data` to `channel`; resolves on the server's `ack`. Rejects with `disconnected`
   * unless connected (publications are not queued), or with the server's error code
   * (`forbidden`, `rate_limited`, …).
   */
  publish(channel: string, data: unknown): Promise<void> {
    return this.call({ op: 'publish', channel, data }).then(() => undefined);
  }

  /** Members of `channel` (namespaces with `presence = true`). */
  presence(channel: string): Promise<Member[]> {
    return this.call({ op: 'presence', channel }).then((f) =>
      Array.isArray(f.members) ? (f.members as Member[]) : [],
    );
  }

  /** Reads a page of `channel`'s history. */
  history(channel: string, options: HistoryOptions = {}): Promise<HistoryResult> {
    const frame: Frame = { op: 'history', channel };
    if (options.limit !== undefined) frame.limit = options.limit;
    if (options.since !== undefined) frame.since = { epoch: options.since.epoch, offset: options.since.offset };
    return this.call(frame).then((f) => ({
      channel,
      epoch: String(f.epoch ?? ''),
      offset: typeof f.offset === 'number' ? f.offset : 0,
      publications: Array.isArray(f.publications)
        ? (f.publications as { offset: number; data: unknown }[])
        : [],
    }));
  }

  /** Sends the `ping` op; resolves on `pong`. */
  ping(): Promise<void> {
    return this.call({ op: 'ping' }).then(() => undefined);
  }

  // ---- connection ----------------------------------------------------------------------

  private async open(): Promise<void> {
    const gen = ++this.gen;
    let token = this.token;
    if (this.getTokenFn && !this.initialTokenUnused) {
      try {
        token = await this.fetchToken();
      } catch (err) {
        if (gen !== this.gen) return;
        this.emit('error', err as SwitchboardError);
        if (gen === this.gen && this._state === 'connecting') this.scheduleReconnect(undefined, 'getToken failed');
        return;
      }
      if (gen !== this.gen || this._state !== 'connecting') return;
      this.token = token;
    }
    this.initialTokenUnused = false;

    let url = this.url;
    if (token !== undefined) {
      const u = new URL(url);
      u.searchParams.set('token', token);
      url = u.toString();
    }
    let ws: WebSocketLike;
    try {
      ws = new (this.ctor as unknown as new (url: string) => WebSocketLike)(url);
    } catch (err) {
      this.emit('error', new SwitchboardError('connect_failed', String(err), { cause: err }));
      if (gen === this.gen && this._state === 'connecting') this.scheduleReconnect(undefined, 'connect failed');
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev: { data: unknown }) => {
      if (this.ws === ws) this.onData(ev.data);
    };
    ws.onclose = (ev: { code?: number; reason?: string }) => {
      if (this.ws === ws) this.onClose(ev.code ?? 1006, ev.reason ?? '');
    };
    ws.onerror = () => {
      // A close event always follows.
    };
    this.connectTimer = setTimeout(() => this.abort(4000, 'connect timeout'), this.connectTimeout);
  }

  private async fetchToken(): Promise<string> {
    let token: unknown;
    try {
      token = await this.getTokenFn!();
    } catch (err) {
      throw new SwitchboardError('token', `getToken() failed: ${String(err)}`, { cause: err });
    }
    if (typeof token !== 'string' || token === '') {
      throw new SwitchboardError('token', 'getToken() did not return a non-empty string');
    }
    return token;
  }

  /** Drops the current socket as if it had closed with `code`. */
  private abort(code: number, reason: string): void {
    const ws = this.ws;
    if (!ws) return;
    try {
      ws.close(code, reason);
    } catch {
      // ignore
    }
    this.onClose(code, reason);
  }

  /** Forgets the socket, stops its timers and fails what was waiting on it. */
  private teardown(): void {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
      ws.onopen = null;
      // Not null: `ws` raises an unhandled 'error' when a socket still connecting is closed.
      ws.onerror = () => {};
    }
    for (const t of [this.connectTimer, this.silenceTimer, this.pongTimer, this.refreshTimer]) clearTimeout(t);
    this.connectTimer = this.silenceTimer = this.pongTimer = this.refreshTimer = undefined;
    this._connId = undefined;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.onError(new SwitchboardError('disconnected', 'connection closed before the reply'));
    }
    for (const sub of this.subs.values()) sub._onDisconnect();
  }

  private onClose(code: number, reason: string): void {
    this.gen++;
    this.teardown();
    if (this._state === 'disconnected') return;
    if (code === 4403) {
      this.terminate(code, reason, new SwitchboardError('connection_refused', reason || 'invalid token or forbidden', { closeCode: code }));
      return;
    }
    if (code === 4401 && !this.getTokenFn) {
      this.terminate(code, reason, new SwitchboardError('token_expired', `${reason || 'token expired'}; no getToken to get a new one`, { closeCode: code }));
      return;
    }
    this.scheduleReconnect(code, reason);
  }

  private terminate(code: number, reason: string, err: SwitchboardError): void {
    this._state = 'disconnected';
    this.emit('error', err);
    this.emit('disconnected', { code, reason });
  }

  private scheduleReconnect(code: number | undefined, reason: string): void {
    this._state = 'connecting';
    const delay = this.backoff(this.attempt);
    this.attempt++;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this._state === 'connecting' && !this.ws) void this.open();
    }, delay);
    const ev: ClientEvents['connecting'] = { delay, attempt: this.attempt, reason };
    if (code !== undefined) ev.code = code;
    this.emit('connecting', ev);
  }

  /** @internal Full jitter: uniform in [0, min(max, min·2^attempt)]. */
  _backoff(attempt: number): number {
    return this.backoff(attempt);
  }

  private backoff(attempt: number): number {
    const cap = Math.min(this.maxDelay, this.minDelay * 2 ** Math.min(attempt, 30));
    return Math.floor(Math.random() * cap);
  }

  // ---- frames --------------------------------------------------------------------------

  private onData(data: unknown): void {
    let text: string;
    if (typeof data === 'string') text = data;
    else if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) text = new TextDecoder().decode(data as ArrayBuffer);
    else return;
    this.armSilence();
    let frame: Frame;
    try {
      frame = JSON.parse(text) as Frame;
    } catch {
      this.emit('error', new SwitchboardError('bad_frame', 'server sent invalid JSON'));
      return;
    }
    if (frame === null || typeof frame !== 'object' || Array.isArray(frame)) {
      this.emit('error', new SwitchboardError('bad_frame', 'server sent a JSON value that is not an object'));
      return;
    }
    this.onFrame(frame);
  }

  private onFrame(frame: Frame): void {
    const channel = typeof frame.channel === 'string' ? frame.channel : undefined;
    switch (frame.type) {
      case 'welcome':
        this.onWelcome(frame);
        return;
      case 'message': {
        if (channel === undefined) return;
        const sub = this.subs.get(channel);
        if (sub) sub._onMessage(frame);
        else {
          const pub: ClientEvents['publication'] = { channel, data: frame.data };
          if (typeof frame.offset === 'number') pub.offset = frame.offset;
          this.emit('publication', pub);
        }
        return;
      }
      case 'join':
      case 'leave':
        if (channel !== undefined) this.subs.get(channel)?._onMember(frame.type, frame);
        return;
      case 'unsubscribed':
        if (channel !== undefined) this.subs.get(channel)?._onUnsubscribed(frame);
        return;
      case 'error':
        if (this.settle(frame, true)) return;
        this.emit('error', errorFromFrame(frame));
        return;
      case 'subscribed':
        if (this.settle(frame, false)) return;
        // Not an answer to us: a server-side subscription (token `channels`).
        if (channel !== undefined) this.subs.get(channel)?._onServerSubscribed(frame);
        return;
      default:
        // ack, pong, presence, history, refreshed, connected; unknown types are ignored.
        this.settle(frame, false);
    }
  }

  /** Hands a reply to the request with its id; false when there is none. */
  private settle(frame: Frame, isError: boolean): boolean {
    if (typeof frame.id !== 'number') return false;
    const p = this.pending.get(frame.id);
    if (!p) return false;
    this.pending.delete(frame.id);
    clearTimeout(p.timer);
    if (isError) p.onError(errorFromFrame(frame));
    else p.onReply(frame);
    return true;
  }

  private onWelcome(frame: Frame): void {
    clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    this.attempt = 0;
    this._state = 'connected';
    this._connId = typeof frame.conn_id === 'string' ? frame.conn_id : '';
    this._user = typeof frame.user === 'string' ? frame.user : undefined;
    this._expiresAt = typeof frame.expires_at === 'number' || frame.expires_at === null ? frame.expires_at : undefined;
    this.pingIntervalMs = typeof frame.ping_interval_ms === 'number' ? frame.ping_interval_ms : 0;
    this.pongTimeoutMs = typeof frame.pong_timeout_ms === 'number' ? frame.pong_timeout_ms : 0;
    this.armSilence();
    this.scheduleRefresh(0);
    const gen = this.gen;
    for (const sub of [...this.subs.values()]) sub._start('connect');
    if (gen !== this.gen) return;
    const ev: ClientEvents['connected'] = { connId: this._connId };
    if (this._user !== undefined) ev.user = this._user;
    if (this._expiresAt !== undefined) ev.expiresAt = this._expiresAt;
    this.emit('connected', ev);
  }

  // ---- heartbeat -----------------------------------------------------------------------

  /**
   * The server pings every `ping_interval_ms` with WebSocket pings, which browsers never
   * show; so when no frame at all arrived for `ping_interval_ms + pong_timeout_ms`, the
   * client sends the `ping` op and gives up on the link if nothing comes back within
   * `pong_timeout_ms`.
   */
  private armSilence(): void {
    clearTimeout(this.pongTimer);
    this.pongTimer = undefined;
    clearTimeout(this.silenceTimer);
    this.silenceTimer = undefined;
    if (this._state !== 'connected' || this.pingIntervalMs <= 0) return;
    const pongTimeout = this.pongTimeoutMs > 0 ? this.pongTimeoutMs : this.pingIntervalMs;
    this.silenceTimer = setTimeout(() => {
      this.silenceTimer = undefined;
      if (!this.sendRaw({ op: 'ping' })) return;
      this.pongTimer = setTimeout(() => this.abort(4000, 'no pong'), clampDelay(pongTimeout));
    }, clampDelay(this.pingIntervalMs + pongTimeout));
  }

  // ---- token refresh -------------------------------------------------------------------

  private scheduleRefresh(floor: number): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    if (!this.getTokenFn || this._state !== 'connected') return;
    const exp = (this.token !== undefined ? jwtExpiry(this.token) : undefined) ?? this._expiresAt ?? undefined;
    if (exp === undefined || exp === null) return;
    const remaining = exp * 1000 - Date.now();
    const delay = Math.max(floor, Math.min(remaining * this.refreshRatio, remaining - this.refreshBefore));
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = undefined;
      void this.refresh();
    }, clampDelay(delay));
  }

  private async refresh(): Promise<void> {
    const gen = this.gen;
    let token: string;
    try {
      token = await this.fetchToken();
    } catch (err) {
      if (gen !== this.gen) return;
      this.emit('error', err as SwitchboardError);
      this.retryRefresh(gen);
      return;
    }
    if (gen !== this.gen || this._state !== 'connected') return;
    this._request(
      { op: 'refresh', token },
      (frame) => {
        if (gen !== this.gen) return;
        this.token = token;
        if (typeof frame.expires_at === 'number' || frame.expires_at === null) this._expiresAt = frame.expires_at;
        this.scheduleRefresh(1000);
      },
      (err) => {
        if (gen !== this.gen || err.code === 'disconnected') return;
        this.emit('error', err);
        this.retryRefresh(gen);
      },
    );
  }

  /** After a failed refresh, tries again while the token has time left; past that the server's 4401 takes over. */
  private retryRefresh(gen: number): void {
    if (gen !== this.gen || this._state !== 'connected') return;
    const exp = (this.token !== undefined ? jwtExpiry(this.token) : undefined) ?? this._expiresAt ?? undefined;
    if (exp === undefined || exp === null) return;
    const remaining = exp * 1000 - Date.now();
    if (remaining <= 1000) return;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = undefined;
      void this.refresh();
    }, clampDelay(Math.min(5000, remaining / 2)));
  }

  // ---- requests ------------------------------------------------------------------------

  private sendRaw(frame: Frame): boolean {
    const ws = this.ws;
    if (!ws || this._state !== 'connected') return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Sends `frame` with a fresh `id` and calls exactly one of the callbacks: with the reply,
   * or with an error (the server's, `timeout`, or `disconnected`).
   */
  /** @internal */
  _request(frame: Frame, onReply: (f: Frame) => void, onError: (e: SwitchboardError) => void): void {
    if (this._state !== 'connected' || !this.ws) {
      onError(new SwitchboardError('disconnected', 'not connected'));
      return;
    }
    const id = this.nextId++;
    const timer = setTimeout(() => {
      if (this.pending.delete(id)) onError(new SwitchboardError('timeout', `no reply to ${String(frame.op)} within ${this.requestTimeout} ms`));
    }, this.requestTimeout);
    this.pending.set(id, { onReply, onError, timer });
    if (!this.sendRaw({ ...frame, id })) {
      this.pending.delete(id);
      clearTimeout(timer);
      onError(new SwitchboardError('disconnected', 'not connected'));
    }
  }

  private call(frame: Frame): Promise<Frame> {
    const channel = typeof frame.channel === 'string' ? frame.channel : undefined;
    return new Promise((resolve, reject) =>
      this._request(frame, resolve, (err) => {
        if (channel !== undefined && err.channel === undefined) {
          reject(new SwitchboardError(err.code, err.message, { channel, cause: err.cause }));
        } else reject(err);
      }),
    );
  }

  /** @internal */
  _forget(sub: Subscription): void {
    if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
  }

  /** @internal */
  _emitError(err: SwitchboardError): void {
    this.emit('error', err);
  }
}

/**
 * One channel of a `Client`. Created by `client.subscribe()`; lives until `unsubscribe()` or
 * until the server refuses or ends it (then `unsubscribed` is emitted).
 */
export class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  private readonly client: Client;
  private readonly options: SubscriptionOptions;
  private _state: SubscriptionState = 'subscribing';
  private _epoch: string | undefined;
  private _offset: number | undefined;
  /** Bumped on every subscribe attempt and whenever one must be abandoned. */
  private gen = 0;
  private retryAttempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;

  /** Use `client.subscribe()` instead. */
  constructor(client: Client, channel: string, options: SubscriptionOptions) {
    super();
    this.client = client;
    this.channel = channel;
    this.options = options;
    if (options.since) {
      this._epoch = options.since.epoch;
      this._offset = options.since.offset;
    }
  }

  get state(): SubscriptionState {
    return this._state;
  }

  /** The stream's epoch (channels with history), as of the last `subscribed`. */
  get epoch(): string | undefined {
    return this._epoch;
  }

  /** Offset of the last publication delivered (or of the stream at subscribe time). */
  get offset(): number | undefined {
    return this._offset;
  }

  /** The position a resubscribe recovers from, if the channel has history. */
  get position(): StreamPosition | undefined {
    return this._epoch !== undefined && this._offset !== undefined
      ? { epoch: this._epoch, offset: this._offset }
      : undefined;
  }

  /** Resolves once subscribed (at once if already); rejects if the subscription ends first. */
  ready(): Promise<void> {
    if (this._state === 'subscribed') return Promise.resolve();
    if (this._state === 'unsubscribed') {
      return Promise.reject(new SwitchboardError('unsubscribed', 'subscription has ended', { channel: this.channel }));
    }
    return new Promise((resolve, reject) => {
      const offs: (() => void)[] = [];
      const done = () => offs.forEach((off) => off());
      offs.push(this.on('subscribed', () => (done(), resolve())));
      offs.push(
        this.on('unsubscribed', (ev) =>
          (done(), reject(new SwitchboardError(ev.code, ev.reason, { channel: this.channel })))),
      );
    });
  }

  /** Publishes to this channel; see `Client.publish`. */
  publish(data: unknown): Promise<void> {
    return this.client.publish(this.channel, data);
  }

  /** Members of this channel. */
  presence(): Promise<Member[]> {
    return this.client.presence(this.channel);
  }

  /** Reads a page of this channel's history. */
  history(options: HistoryOptions = {}): Promise<HistoryResult> {
    return this.client.history(this.channel, options);
  }

  /** Ends the subscription: sends `unsubscribe` if connected and emits `unsubscribed`. */
  unsubscribe(): void {
    if (this._state === 'unsubscribed') return;
    this.client._request({ op: 'unsubscribe', channel: this.channel }, () => {}, () => {});
    this.end('client', 'unsubscribe() called');
  }

  // ---- internals, called by Client -----------------------------------------------------

  /** @internal Subscribes on the current connection. */
  _start(reason: string): void {
    if (this._state === 'unsubscribed') return;
    const wasSubscribed = this._state === 'subscribed';
    this._state = 'subscribing';
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const gen = ++this.gen;
    if (wasSubscribed || reason !== 'connect') this.emit('subscribing', { channel: this.channel, reason });
    if (gen !== this.gen) return;
    void this.send(gen);
  }

  private async send(gen: number): Promise<void> {
    let token = this.options.token;
    if (this.options.getToken) {
      try {
        token = await this.options.getToken(this.channel);
        if (typeof token !== 'string' || token === '') throw new Error('not a non-empty string');
      } catch (err) {
        if (gen !== this.gen) return;
        this.emit('error', new SwitchboardError('token', `subscription getToken() failed: ${String(err)}`, { channel: this.channel, cause: err }));
        this.retry(gen);
        return;
      }
      if (gen !== this.gen || this._state !== 'subscribing') return;
    }
    const frame: Frame = { op: 'subscribe', channel: this.channel };
    if (this.options.presence !== undefined) frame.presence = this.options.presence;
    if (token !== undefined) frame.token = token;
    const position = this.position;
    if (position) frame.recover = position;
    this.client._request(
      frame,
      (reply) => {
        if (gen === this.gen) this.onSubscribeReply(reply, position !== undefined);
      },
      (err) => {
        if (gen === this.gen) this.onSubscribeError(err, gen);
      },
    );
  }

  private onSubscribeReply(frame: Frame, wasRecovering: boolean): void {
    if (this._state !== 'subscribing') return;
    this._state = 'subscribed';
    this.retryAttempt = 0;
    if (frame.type !== 'subscribed') {
      // `ack`: a channel without history; there is no position to keep.
      this._epoch = undefined;
      this._offset = undefined;
      this.emit('subscribed', { channel: this.channel, recovered: false, wasRecovering, recoverable: false });
      return;
    }
    const recovered = frame.recovered === true;
    const before = this._offset;
    const pubs =
      recovered && Array.isArray(frame.publications) ? (frame.publications as { offset?: unknown; data: unknown }[]) : [];
    this._epoch = typeof frame.epoch === 'string' ? frame.epoch : undefined;
    this._offset = typeof frame.offset === 'number' ? frame.offset : undefined;
    const ev: SubscribedEvent = {
      channel: this.channel,
      recovered,
      wasRecovering,
      recoverable: frame.recoverable !== false && this._epoch !== undefined,
    };
    if (this._epoch !== undefined) ev.epoch = this._epoch;
    if (this._offset !== undefined) ev.offset = this._offset;
    const gen = this.gen;
    this.emit('subscribed', ev);
    let last = before;
    for (const pub of pubs) {
      if (gen !== this.gen || this._state !== 'subscribed') return;
      const offset = typeof pub.offset === 'number' ? pub.offset : undefined;
      if (offset !== undefined && last !== undefined && offset <= last) continue;
      if (offset !== undefined) last = offset;
      const p: SubscriptionEvents['publication'] = { channel: this.channel, data: pub.data };
      if (offset !== undefined) p.offset = offset;
      this.emit('publication', p);
    }
  }

  private onSubscribeError(err: SwitchboardError, gen: number): void {
    if (err.code === 'disconnected') return; // resubscribed on the next connect
    if (err.code === 'already_subscribed' && this._state === 'subscribed') return; // server-side subscription won the race
    const e = new SwitchboardError(err.code, err.message, { channel: this.channel });
    this.emit('error', e);
    if (gen !== this.gen) return;
    if (err.code === 'rate_limited' || err.code === 'timeout') {
      this.retry(gen);
      return;
    }
    this.end(err.code, err.message);
  }

  private retry(gen: number): void {
    if (gen !== this.gen || this._state === 'unsubscribed') return;
    const delay = this.client._backoff(this.retryAttempt++);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (gen === this.gen && this.client.state === 'connected') this._start('retry');
    }, delay);
  }

  /** @internal */
  _onMessage(frame: Frame): void {
    if (this._state !== 'subscribed') return; // a (re)subscribe is on its way; recovery covers it
    const offset = typeof frame.offset === 'number' ? frame.offset : undefined;
    if (offset !== undefined && this._epoch !== undefined) {
      if (this._offset !== undefined) {
        if (offset <= this._offset) return; // already delivered
        if (offset > this._offset + 1) {
          // A gap: fetch what is missing (and this one) through recovery.
          this.client._request({ op: 'unsubscribe', channel: this.channel }, () => {}, () => {});
          this._start('gap');
          return;
        }
      }
      this._offset = offset;
    }
    const p: SubscriptionEvents['publication'] = { channel: this.channel, data: frame.data };
    if (offset !== undefined) p.offset = offset;
    this.emit('publication', p);
  }

  /** @internal */
  _onMember(kind: 'join' | 'leave', frame: Frame): void {
    if (this._state === 'unsubscribed') return;
    const member = frame.member as Member | undefined;
    if (!member || typeof member !== 'object') return;
    this.emit(kind, { channel: this.channel, member });
  }

  /** @internal */
  _onUnsubscribed(frame: Frame): void {
    if (this._state === 'unsubscribed') return;
    const code = typeof frame.code === 'string' ? frame.code : 'unsubscribed';
    const message = typeof frame.message === 'string' ? frame.message : code;
    if (code === 'resubscribe') {
      this._start('resubscribe');
      return;
    }
    this.end(code, message);
  }

  /** @internal A `subscribed` frame that answers no request of ours (token `channels`). */
  _onServerSubscribed(frame: Frame): void {
    if (this._state !== 'subscribing') return;
    this.onSubscribeReply(frame, false);
  }

  /** @internal The connection closed: wait for the next one, keeping the position. */
  _onDisconnect(): void {
    if (this._state === 'unsubscribed') return;
    this.gen++;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (this._state === 'subscribed') {
      this._state = 'subscribing';
      this.emit('subscribing', { channel: this.channel, reason: 'disconnected' });
    }
  }

  private end(code: string, reason: string): void {
    if (this._state === 'unsubscribed') return;
    this._state = 'unsubscribed';
    this.gen++;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.client._forget(this);
    this.emit('unsubscribed', { channel: this.channel, code, reason });
  }
}
