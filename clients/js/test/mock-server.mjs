// A scriptable stand-in for Switchboard's /ws route, for the unit tests: each test decides what
// the "server" answers, when it closes and with which code.
import { WebSocketServer, WebSocket as WsWebSocket } from 'ws';

/** The WebSocket the client under test uses: Node's own when present, else `ws`'s. */
export const ClientWebSocket = globalThis.WebSocket ?? WsWebSocket;

export class MockConnection {
  constructor(socket, req) {
    this.socket = socket;
    this.url = new URL(req.url, 'http://mock');
    this.messages = [];
    this.consumed = 0;
    this.waiters = [];
    this.closed = false;
    this.openedAt = Date.now();
    socket.on('message', (data, isBinary) => {
      const msg = JSON.parse(isBinary ? Buffer.from(data).toString() : data.toString());
      this.messages.push({ msg, at: Date.now(), taken: false });
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  wake() {
    for (const w of [...this.waiters]) w();
  }

  get token() {
    return this.url.searchParams.get('token');
  }

  send(frame) {
    this.socket.send(JSON.stringify(frame));
  }

  welcome(extra = {}) {
    this.send({
      type: 'welcome',
      conn_id: `mock-${Math.random().toString(16).slice(2, 8)}`,
      ping_interval_ms: 25000,
      pong_timeout_ms: 10000,
      idle_timeout_ms: 300000,
      max_message_bytes: 1048576,
      ...extra,
    });
  }

  /** The first message not taken yet that matches `pred` (taking it), waiting up to `timeout` ms. */
  take(pred = () => true, timeout = 3000) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const hit = this.messages.find((m) => !m.taken && pred(m.msg));
        if (hit) {
          hit.taken = true;
          done();
          resolve(hit.msg);
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`mock: no matching message within ${timeout} ms; got ${JSON.stringify(this.messages.map((m) => m.msg))}`));
      }, timeout);
      const waiter = () => check();
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== waiter);
      };
      if (!check()) this.waiters.push(waiter);
    });
  }

  /** Like `take` for an op name. */
  op(name, timeout) {
    return this.take((m) => m.op === name, timeout);
  }

  /** Resolves when the client closed this connection. */
  whenClosed(timeout = 3000) {
    return new Promise((resolve, reject) => {
      if (this.closed) return resolve();
      const timer = setTimeout(() => reject(new Error('mock: connection not closed in time')), timeout);
      const waiter = () => {
        if (this.closed) {
          clearTimeout(timer);
          this.waiters = this.waiters.filter((w) => w !== waiter);
          resolve();
        }
      };
      this.waiters.push(waiter);
    });
  }

  close(code, reason) {
    this.socket.close(code, reason);
  }

  /** Drops the TCP connection without a close frame: the client sees 1006. */
  kill() {
    this.socket.terminate();
  }
}

export class MockServer {
  static async start() {
    const server = new MockServer();
    await new Promise((resolve) => server.wss.once('listening', resolve));
    return server;
  }

  constructor() {
    this.wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    this.connections = [];
    this.waiters = [];
    this.wss.on('connection', (socket, req) => {
      const conn = new MockConnection(socket, req);
      this.connections.push(conn);
      for (const w of [...this.waiters]) w();
    });
  }

  get url() {
    return `ws://127.0.0.1:${this.wss.address().port}/ws`;
  }

  /** The `n`th connection (0-based), waiting for it up to `timeout` ms. */
  connection(n, timeout = 3000) {
    return new Promise((resolve, reject) => {
      if (this.connections[n]) return resolve(this.connections[n]);
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`mock: connection #${n} did not arrive within ${timeout} ms (have ${this.connections.length})`));
      }, timeout);
      const waiter = () => {
        if (this.connections[n]) {
          clearTimeout(timer);
          this.waiters = this.waiters.filter((w) => w !== waiter);
          resolve(this.connections[n]);
        }
      };
      this.waiters.push(waiter);
    });
  }

  async stop() {
    for (const c of this.connections) c.socket.terminate();
    await new Promise((resolve) => this.wss.close(resolve));
  }
}

/** An unsigned JWT-shaped token whose payload holds `claims`; the client never verifies. */
export function fakeJwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.c2ln`;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Collects every emission of `event` on `emitter`. */
export function record(emitter, event) {
  const list = [];
  emitter.on(event, (e) => list.push(e));
  return list;
}

/** Waits until `cond()` is true, polling. */
export async function until(cond, timeout = 3000, what = 'condition') {
  const end = Date.now() + timeout;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}
