// What the Pusher scenarios share: the apps the Rust side configures, clients built the way an
// application builds them (pusher-js with a channel authorizer that signs with the `pusher`
// server SDK), waits that always time out, and `ok:` lines.
//
// Nothing here knows the server beyond what a Pusher application would.

import { isDeepStrictEqual, inspect } from "node:util";
import Pusher from "pusher-js";
import PusherServer from "pusher";

/** The apps of tests/src/pusher.rs (`APPS_TOML`); keep the two in step. */
export const APPS = {
  main: { id: "1001", key: "app-key", secret: "app-secret" },
  quiet: { id: "1002", key: "quiet-key", secret: "quiet-secret" },
  off: { id: "1003", key: "off-key", secret: "off-secret" },
  tiny: { id: "1004", key: "tiny-key", secret: "tiny-secret" },
};

/** How long one expected thing may take to happen. */
export const WAIT_MS = 5000;
/** How long we listen for something that must not happen, after a later marker arrived. */
export const SETTLE_MS = 300;

export const SOCKET_ID = /^\d+\.\d+$/;

if (process.env.PUSHER_DEBUG) {
  Pusher.logToConsole = true;
}

const clients = new Set();

export function show(value) {
  return inspect(value, { depth: 6, breakLength: Infinity });
}

export function ok(what) {
  console.log(`ok: ${what}`);
}

/** Prints `ok: what` when `cond` holds, else throws naming it (and `detail`). */
export function check(cond, what, detail) {
  if (!cond) {
    throw new Error(`check failed: ${what}${detail === undefined ? "" : ` (got ${show(detail)})`}`);
  }
  ok(what);
}

export function checkEqual(actual, expected, what) {
  if (!isDeepStrictEqual(actual, expected)) {
    throw new Error(`check failed: ${what}: expected ${show(expected)}, got ${show(actual)}`);
  }
  ok(what);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** `promise`, or a rejection naming `what` after `ms`; `cleanup` runs either way. */
export function within(ms, what, promise, cleanup = () => {}) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => {
    clearTimeout(timer);
    cleanup();
  });
}

/** Polls `probe` (async) until `accept(value)` holds; returns that value or throws with the last. */
export async function poll(what, probe, accept, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (accept(last)) {
        return last;
      }
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}; last: ${show(last)}`);
    }
    await sleep(100);
  }
}

/** The next `event` on `emitter` (a pusher-js channel, connection or client) that `pred` accepts. */
export function next(emitter, event, what, pred = () => true, ms = WAIT_MS) {
  let handler;
  const promise = new Promise((resolve) => {
    handler = (data, meta) => {
      if (pred(data, meta)) {
        resolve(data);
      }
    };
    emitter.bind(event, handler);
  });
  return within(ms, what, promise, () => emitter.unbind(event, handler));
}

/** Everything `emitter` emits as `event`, kept in order, with waits on it. */
export class Recorder {
  constructor(emitter, event) {
    this.items = [];
    this.waiters = [];
    this.event = event;
    emitter.bind(event, (data, meta) => {
      this.items.push({ data, meta });
      for (const waiter of [...this.waiters]) {
        waiter();
      }
    });
  }

  /** Items whose data `pred` accepts. */
  matching(pred = () => true) {
    return this.items.filter((item) => pred(item.data, item.meta));
  }

  /** Waits until `count` items match `pred`; returns the matching items. */
  waitFor(what, pred = () => true, count = 1, ms = WAIT_MS) {
    let waiter;
    const promise = new Promise((resolve) => {
      waiter = () => {
        const found = this.matching(pred);
        if (found.length >= count) {
          resolve(found);
        }
      };
      this.waiters.push(waiter);
      waiter();
    });
    return within(ms, `${what} (${this.event})`, promise, () => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
    });
  }
}

/** Records every event a channel emits (bind_global), as {name, data, meta}. */
export class ChannelLog {
  constructor(channel) {
    this.items = [];
    this.waiters = [];
    this.name = channel.name;
    channel.bind_global((name, data, meta) => {
      this.items.push({ name, data, meta });
      for (const waiter of [...this.waiters]) {
        waiter();
      }
    });
  }

  named(name) {
    return this.items.filter((item) => item.name === name);
  }

  waitFor(what, pred, count = 1, ms = WAIT_MS) {
    let waiter;
    const promise = new Promise((resolve) => {
      waiter = () => {
        const found = this.items.filter(pred);
        if (found.length >= count) {
          resolve(found);
        }
      };
      this.waiters.push(waiter);
      waiter();
    });
    return within(ms, `${what} on ${this.name}`, promise, () => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
    });
  }

  /** Waits for `count` events called `name` (whatever their data). */
  waitForEvent(name, what, count = 1, ms = WAIT_MS) {
    return this.waitFor(what, (item) => item.name === name, count, ms);
  }
}

/** The server SDK for `app` on `port` (another `secret` signs wrongly on purpose). */
export function api(port, app = APPS.main, options = {}) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: "127.0.0.1",
    port,
    useTLS: false,
    timeout: WAIT_MS,
    ...options,
  });
}

/** The status of a rejected SDK call (a RequestError), or a thrown error if it succeeded. */
export async function failureOf(what, call) {
  let response;
  try {
    response = await call();
  } catch (e) {
    if (e && typeof e.status === "number") {
      return { status: e.status, body: String(e.body ?? "") };
    }
    throw new Error(`${what}: no HTTP status in the error: ${show(e)}`);
  }
  throw new Error(`${what}: expected an error status, got ${response.status}: ${await response.text()}`);
}

/** The JSON body of a successful SDK call. */
export async function json(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`response ${response.status} is not JSON (${e.message}): ${show(text)}`);
  }
}

/** The options pusher-js needs to reach the server under test, plus `extra`. */
export function clientOptions(port, extra = {}) {
  return {
    cluster: "mt1",
    wsHost: "127.0.0.1",
    wsPort: port,
    forceTLS: false,
    enabledTransports: ["ws"],
    enableStats: false,
    ...extra,
  };
}

/**
 * A pusher-js client of `app` on `port`, tracked so that `disconnectAll` closes it.
 *
 * - `user`: the presence data ({user_id, user_info}) its presence subscriptions sign for.
 * - `auth`: per channel name, a function (socketId, channelName) => authData that replaces
 *   the correct authorization (to sign wrongly on purpose).
 * - `options`: more pusher-js options.
 */
export function client(port, app = APPS.main, { user, auth = {}, options = {}, signer } = {}) {
  const sdk = signer ?? api(port, app);
  const pusher = new Pusher(
    app.key,
    clientOptions(port, {
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, callback) => {
          try {
            if (auth[channelName]) {
              callback(null, auth[channelName](socketId, channelName));
              return;
            }
            const presence = channelName.startsWith("presence-") ? user : undefined;
            callback(null, sdk.authorizeChannel(socketId, channelName, presence));
          } catch (e) {
            callback(e, null);
          }
        },
      },
      ...options,
    }),
  );
  clients.add(pusher);
  // Every message the connection decodes, for what the library does not surface as is.
  pusher.raw = [];
  pusher.connection.bind("message", (event) => pusher.raw.push(event));
  pusher.errors = [];
  pusher.connection.bind("error", (error) => pusher.errors.push(error));
  return pusher;
}

/** Tracks a client made elsewhere (Laravel Echo's) so that `disconnectAll` closes it. */
export function track(pusher) {
  clients.add(pusher);
  return pusher;
}

/** The Pusher error code inside whatever pusher-js emitted as a connection `error`. */
export function errorCode(error) {
  return error?.data?.code ?? error?.error?.data?.code ?? error?.error?.code ?? error?.code;
}

/** Waits for `pusher` to connect; returns its socket id. */
export function connected(pusher, what = "a connection") {
  if (pusher.connection.state === "connected") {
    return Promise.resolve(pusher.connection.socket_id);
  }
  let onState;
  const promise = new Promise((resolve, reject) => {
    onState = ({ current }) => {
      if (current === "connected") {
        resolve(pusher.connection.socket_id);
      } else if (["failed", "unavailable", "disconnected"].includes(current)) {
        reject(new Error(`${what}: state ${current}, errors ${show(pusher.errors)}`));
      }
    };
    pusher.connection.bind("state_change", onState);
  });
  return within(WAIT_MS, `${what} to connect`, promise, () => pusher.connection.unbind("state_change", onState));
}

/** Subscribes and waits for `pusher:subscription_succeeded`; returns [channel, its data]. */
export async function subscribed(pusher, name) {
  const channel = pusher.subscribe(name);
  let onError;
  const failed = new Promise((_, reject) => {
    onError = (data) => reject(new Error(`subscribing to ${name}: subscription_error ${show(data)}`));
    channel.bind("pusher:subscription_error", onError);
  });
  try {
    const data = await Promise.race([
      next(channel, "pusher:subscription_succeeded", `subscription to ${name}`),
      failed,
    ]);
    return [channel, data];
  } finally {
    channel.unbind("pusher:subscription_error", onError);
  }
}

/** Subscribes expecting a refusal; returns the `pusher:subscription_error` data. */
export async function refused(pusher, name) {
  const channel = pusher.subscribe(name);
  let onSuccess;
  const succeeded = new Promise((_, reject) => {
    onSuccess = () => reject(new Error(`subscribing to ${name} succeeded; a subscription_error was expected`));
    channel.bind("pusher:subscription_succeeded", onSuccess);
  });
  try {
    return await Promise.race([next(channel, "pusher:subscription_error", `subscription_error on ${name}`), succeeded]);
  } finally {
    channel.unbind("pusher:subscription_succeeded", onSuccess);
  }
}

/** Decoded messages `pusher` received, as pusher-js decoded them (`data` parsed when JSON). */
export function rawEvents(pusher, event, channel) {
  return pusher.raw.filter((m) => m.event === event && (channel === undefined || m.channel === channel));
}

/** Disconnects every tracked client. */
export function disconnectAll() {
  for (const pusher of clients) {
    try {
      pusher.disconnect();
    } catch {
      // Closing is best effort at the end of a scenario.
    }
  }
  clients.clear();
}

/** A counter that makes names unique within a run. */
let serial = 0;
export function unique(prefix) {
  serial += 1;
  return `${prefix}-${process.pid}-${serial}`;
}
