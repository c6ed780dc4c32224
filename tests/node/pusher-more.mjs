// The next Pusher features, driven by the real libraries: webhooks (checked by the receiver of
// webhook-receiver.mjs, which verifies every signature), user authentication (`pusher.signin()`,
// `sendToUser`, `terminateUserConnections`), watchlists and cache channels.
//
//   node tests/node/pusher-more.mjs <scenario> '<json args>'
//
// Args: {"port": N, "receiver": R, "grace_ms": G, ...} for one server, or {"nodes": [{"port",
// "pid"}, ...], ...} for three; `receiver` is the port of a running webhook-receiver.mjs. Each
// check prints `ok: <check>`; a scenario is made of parts, and a failing part prints
// `FAIL <scenario>/<part>: <why>` and the others still run; any failure exits 1.
// tests/tests/pusher_more.rs runs these.

import { createHmac } from "node:crypto";
import { isDeepStrictEqual } from "node:util";
import {
  APPS,
  SETTLE_MS,
  WAIT_MS,
  ChannelLog,
  Recorder,
  api,
  check,
  checkEqual,
  client,
  connected,
  disconnectAll,
  errorCode,
  ok,
  poll,
  rawEvents,
  show,
  sleep,
  subscribed,
  unique,
  within,
} from "./lib.mjs";

/** A whole scenario may take this long before it fails as stuck. */
const SCENARIO_MS = 110_000;

// ---------------------------------------------------------------------------------------------
// Webhooks, as the receiver recorded them

/** The log of the webhook receiver on `port`. */
class Hooks {
  constructor(port, path = "/webhook") {
    this.base = `http://127.0.0.1:${port}`;
    this.path = path;
  }

  /** Every request the receiver recorded for this path. */
  async requests() {
    const response = await fetch(`${this.base}/_log`, { signal: AbortSignal.timeout(WAIT_MS) });
    const log = await response.json();
    return log.filter((r) => r.path === this.path);
  }

  /** Every event of every request answered 2xx (deliveries), as {event, at, request}. */
  async events({ delivered = true } = {}) {
    const requests = await this.requests();
    return requests
      .filter((r) => !delivered || r.status === 200)
      .flatMap((r) => (Array.isArray(r.body?.events) ? r.body.events : []).map((event) => ({ event, at: r.at, request: r })));
  }

  /** Delivered events named `name` on `channel` (and `pred`). */
  async named(name, channel, pred = () => true) {
    return (await this.events()).filter((e) => e.event.name === name && e.event.channel === channel && pred(e.event));
  }

  /** Waits until `count` delivered events `name` on `channel` arrived; returns them. */
  async waitFor(what, name, channel, { count = 1, ms = WAIT_MS, pred = () => true } = {}) {
    return poll(
      `webhook ${what}`,
      () => this.named(name, channel, pred),
      (found) => found.length >= count,
      ms,
    );
  }

  /** Answer the next `n` requests with 500. */
  async fail(n) {
    await fetch(`${this.base}/_control`, { method: "POST", body: JSON.stringify({ fail: n }), signal: AbortSignal.timeout(WAIT_MS) });
  }
}

/** Counts of delivered events per `name` on `channel`. */
async function countsOn(hooks, channel, names) {
  const events = await hooks.events();
  return Object.fromEntries(names.map((n) => [n, events.filter((e) => e.event.name === n && e.event.channel === channel).length]));
}

/** `data` of a client_event webhook, parsed when it came as a JSON string. */
function parsedData(data) {
  if (typeof data !== "string") {
    return data;
  }
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

/** The `webhooks` object of /api/stats on `port`. */
async function webhookStats(port) {
  const response = await fetch(`http://127.0.0.1:${port}/api/stats`, { signal: AbortSignal.timeout(WAIT_MS) });
  const stats = await response.json();
  return stats.webhooks;
}

/** Checks one request as every webhook request must be. */
function checkRequest(request, what) {
  check(request.method === "POST", `${what}: POST`, request.method);
  check(request.valid === true, `${what}: X-Pusher-Signature is the HMAC-SHA256 of the body with the app secret`, {
    signature: request.headers["x-pusher-signature"],
    raw: request.raw,
  });
  check(
    request.sdk?.valid === true && isDeepStrictEqual(request.sdk.events, request.body?.events),
    `${what}: the pusher SDK's webhook({headers, rawBody}).isValid() and getEvents()`,
    request.sdk,
  );
  checkEqual(request.headers["x-pusher-key"], APPS.main.key, `${what}: X-Pusher-Key is the app key`);
  check(
    String(request.headers["content-type"] ?? "").startsWith("application/json"),
    `${what}: Content-Type application/json`,
    request.headers["content-type"],
  );
  const t = request.body?.time_ms;
  check(Number.isInteger(t) && Math.abs(t - request.at) < 60_000, `${what}: time_ms is the unix time in ms`, {
    time_ms: t,
    arrived: request.at,
  });
}

// ---------------------------------------------------------------------------------------------
// Users

/**
 * A pusher-js client whose `pusher.signin()` is answered by the server SDK's
 * `authenticateUser(socketId, userData)`, or by `sign(socketId)` to sign wrongly on purpose.
 */
function userClient(port, userData, { app = APPS.main, sign, presence } = {}) {
  const sdk = api(port, app);
  return client(port, app, {
    user: presence ?? { user_id: userData?.id ?? "nobody", user_info: {} },
    options: {
      userAuthentication: {
        customHandler: ({ socketId }, callback) => {
          try {
            callback(null, sign ? sign(socketId) : sdk.authenticateUser(socketId, userData));
          } catch (e) {
            callback(e, null);
          }
        },
      },
    },
  });
}

/** Signs `socket::user::userData` as the SDK would, whatever `userData` is. */
function signUser(app, socketId, userData) {
  const serialized = JSON.stringify(userData);
  const signature = createHmac("sha256", app.secret).update(`${socketId}::user::${serialized}`).digest("hex");
  return { auth: `${app.key}:${signature}`, user_data: serialized };
}

/** Calls `signin()` and waits for `pusher:signin_success` and the `#server-to-user-` subscription. */
async function signedIn(pusher, what) {
  pusher.signin();
  await poll(`${what}: pusher:signin_success`, async () => rawEvents(pusher, "pusher:signin_success").length, (n) => n >= 1);
  await poll(
    `${what}: #server-to-user- subscribed`,
    async () => pusher.user.serverToUserChannel?.subscribed === true,
    (v) => v,
  );
  return rawEvents(pusher, "pusher:signin_success")[0];
}

/**
 * Sends `pusher:subscribe` for `name` by hand (pusher-js makes no `#` channels) and returns the
 * data of the `pusher:subscription_error` that must answer it.
 */
async function rawRefused(pusher, name) {
  pusher.send_event("pusher:subscribe", { channel: name, auth: "" });
  const answer = await poll(
    `the answer to subscribing to ${name}`,
    async () =>
      pusher.raw.find(
        (m) => m.channel === name && ["pusher:subscription_error", "pusher_internal:subscription_succeeded"].includes(m.event),
      ),
    (m) => m !== undefined,
  );
  if (answer.event !== "pusher:subscription_error") {
    throw new Error(`subscribing to ${name} succeeded: ${show(answer)}`);
  }
  return answer.data;
}

/** Waits until `pusher` got a connection error with `code` and stopped; checks it does not reconnect. */
async function closedWith(pusher, code, what, ms = WAIT_MS) {
  const states = [];
  pusher.connection.bind("state_change", ({ current }) => states.push(current));
  await poll(`${what}: an error with code ${code}`, async () => pusher.errors.map(errorCode), (codes) => codes.includes(code), ms);
  const seenAt = Date.now();
  await poll(
    `${what}: pusher-js stops`,
    async () => pusher.connection.state,
    (state) => state === "disconnected" || state === "failed",
  );
  ok(`${what}: pusher:error ${code}, then closed`);
  const seen = states.length;
  await sleep(1200);
  const later = states.slice(seen);
  check(!later.includes("connected") && !later.includes("connecting"), `${what}: pusher-js does not reconnect`, later);
  return seenAt;
}

/** The connection is still the same one, open. */
function stillConnected(pusher, socketId, what) {
  check(
    pusher.connection.state === "connected" && pusher.connection.socket_id === socketId,
    `${what}: connection stays open (same socket id)`,
    { state: pusher.connection.state, socket_id: pusher.connection.socket_id, was: socketId, errors: pusher.errors },
  );
}

/** Records what `pusher.user` (the server-to-user channel) emits as `event`. */
function userRecorder(pusher, event) {
  const items = [];
  pusher.user.bind(event, (data) => items.push(data));
  return items;
}

/** Records watchlist events of `pusher` ("online"/"offline") as {name, user_ids}. */
function watchRecorder(pusher) {
  const items = [];
  for (const name of ["online", "offline"]) {
    pusher.user.watchlist.bind(name, (event) => items.push({ name, user_ids: [...(event?.user_ids ?? [])].map(String).sort() }));
  }
  return items;
}

/** Whether the items of a watchRecorder hold `name` for `user`. */
function watched(items, name, user) {
  return items.filter((e) => e.name === name && e.user_ids.includes(user)).length;
}

// ---------------------------------------------------------------------------------------------
// Cache channels

/**
 * Subscribes `pusher` to `name` and records every message of that channel from the start:
 * returns the channel's log (pusher-js events) once subscription_succeeded came.
 */
async function subscribeLogged(pusher, name) {
  const channel = pusher.subscribe(name);
  const log = new ChannelLog(channel);
  await log.waitForEvent("pusher:subscription_succeeded", `subscription to ${name}`);
  return log;
}

/** The raw messages `pusher` got on `channel`, in order, from its subscription_succeeded on. */
function afterSucceeded(pusher, channel) {
  const messages = pusher.raw.filter((m) => m.channel === channel);
  const at = messages.findIndex((m) => m.event === "pusher_internal:subscription_succeeded");
  return at < 0 ? [] : messages.slice(at + 1);
}

/** The first message after subscription_succeeded that is not pusher_internal:*. */
function firstAfterSucceeded(pusher, channel) {
  return afterSucceeded(pusher, channel).find((m) => !m.event.startsWith("pusher_internal:"));
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async function webhooks({ port, receiver, grace_ms: grace }) {
  const hooks = new Hooks(receiver);
  const filtered = new Hooks(receiver, "/filtered");
  const alice = { user_id: "alice", user_info: { name: "Alice" } };
  const bob = { user_id: "bob", user_info: { name: "Bob" } };
  const a = client(port, APPS.main, { user: alice });
  const b = client(port, APPS.main, { user: bob });
  const [aId] = await Promise.all([connected(a, "a"), connected(b, "b")]);
  const late = grace + WAIT_MS;

  return {
    async "occupied and vacated"() {
      const pub = unique("wh-pub");
      await subscribed(a, pub);
      const [occupied] = await hooks.waitFor("channel_occupied", "channel_occupied", pub);
      checkEqual(occupied.event, { name: "channel_occupied", channel: pub }, "channel_occupied: {name, channel}");
      checkRequest(occupied.request, "channel_occupied request");
      checkEqual(occupied.request.headers["x-test"], "yes", "the configured headers are sent (X-Test: yes)");
      checkEqual(occupied.request.path, "/webhook", "POSTed to the configured URL's path");
      const left = Date.now();
      a.unsubscribe(pub);
      const [vacated] = await hooks.waitFor("channel_vacated", "channel_vacated", pub, { ms: late });
      checkEqual(vacated.event, { name: "channel_vacated", channel: pub }, "channel_vacated: {name, channel}");
      checkRequest(vacated.request, "channel_vacated request");
      const waited = vacated.at - left;
      check(waited >= grace - 150, `channel_vacated waits webhook_grace (${waited} ms >= ${grace} ms)`, waited);
    },

    async "presence members and client events"() {
      const room = unique("presence-wh");
      const [aRoom] = await subscribed(a, room);
      const [added] = await hooks.waitFor("member_added alice", "member_added", room, { pred: (e) => e.user_id === "alice" });
      checkEqual(added.event, { name: "member_added", channel: room, user_id: "alice" }, "member_added: {name, channel, user_id}");
      checkRequest(added.request, "member_added request");
      await hooks.waitFor("channel_occupied of the presence channel", "channel_occupied", room);
      ok("channel_occupied for a presence channel");
      const [bRoom] = await subscribed(b, room);
      await hooks.waitFor("member_added bob", "member_added", room, { pred: (e) => e.user_id === "bob" });
      ok("member_added for the second user");

      const bHi = new Recorder(bRoom, "client-hi");
      aRoom.trigger("client-hi", { text: "hi", n: [1, 2] });
      await bHi.waitFor("b gets client-hi");
      const [relayed] = await hooks.waitFor("client_event on presence", "client_event", room);
      const event = relayed.event;
      checkEqual(
        { name: event.name, channel: event.channel, event: event.event, socket_id: event.socket_id, user_id: event.user_id },
        { name: "client_event", channel: room, event: "client-hi", socket_id: aId, user_id: "alice" },
        "client_event on presence: {name, channel, event, socket_id, user_id}",
      );
      checkEqual(parsedData(event.data), { text: "hi", n: [1, 2] }, "client_event data is what the client sent");
      checkRequest(relayed.request, "client_event request");

      const priv = unique("private-wh");
      const [aPriv] = await subscribed(a, priv);
      const [bPriv] = await subscribed(b, priv);
      const bX = new Recorder(bPriv, "client-x");
      aPriv.trigger("client-x", { n: 1 });
      await bX.waitFor("b gets client-x");
      const [plain] = await hooks.waitFor("client_event on private", "client_event", priv);
      check(
        plain.event.event === "client-x" && plain.event.socket_id === aId && !("user_id" in plain.event),
        "client_event on a private channel: no user_id",
        plain.event,
      );

      const left = Date.now();
      b.unsubscribe(room);
      const [removed] = await hooks.waitFor("member_removed bob", "member_removed", room, {
        ms: late,
        pred: (e) => e.user_id === "bob",
      });
      checkEqual(removed.event, { name: "member_removed", channel: room, user_id: "bob" }, "member_removed: {name, channel, user_id}");
      const waited = removed.at - left;
      check(waited >= grace - 150, `member_removed waits webhook_grace (${waited} ms)`, waited);
      checkRequest(removed.request, "member_removed request");

      // Alice leaves and comes back within the grace: the receiver hears nothing of it.
      a.unsubscribe(room);
      await sleep(100);
      await subscribed(a, room);
      await sleep(grace + 1000);
      const counts = await countsOn(hooks, room, ["member_added", "member_removed", "channel_occupied", "channel_vacated"]);
      const aliceAdded = (await hooks.named("member_added", room, (e) => e.user_id === "alice")).length;
      const aliceRemoved = (await hooks.named("member_removed", room, (e) => e.user_id === "alice")).length;
      checkEqual([aliceAdded, aliceRemoved], [1, 0], "a member who rejoins within the grace: no member_removed, no second member_added");
      checkEqual([counts.channel_occupied, counts.channel_vacated], [1, 0], "a presence channel re-occupied within the grace: nothing more");
    },

    async "grace: unsubscribe and resubscribe"() {
      const ch = unique("wh-grace");
      await subscribed(a, ch);
      await hooks.waitFor("channel_occupied before the grace test", "channel_occupied", ch);
      a.unsubscribe(ch);
      await sleep(100);
      await subscribed(a, ch);
      await sleep(grace + 1000);
      checkEqual(
        await countsOn(hooks, ch, ["channel_occupied", "channel_vacated"]),
        { channel_occupied: 1, channel_vacated: 0 },
        "a channel re-occupied within the grace: no channel_vacated, no second channel_occupied",
      );
      a.unsubscribe(ch);
      await hooks.waitFor("channel_vacated after the grace test", "channel_vacated", ch, { ms: late });
      await sleep(SETTLE_MS);
      checkEqual(
        await countsOn(hooks, ch, ["channel_occupied", "channel_vacated"]),
        { channel_occupied: 1, channel_vacated: 1 },
        "then leaving for good: one channel_vacated",
      );
    },

    async "cache_miss"() {
      const ch = unique("cache-wh");
      const log = await subscribeLogged(a, ch);
      await log.waitForEvent("pusher:cache_miss", "pusher:cache_miss");
      const [miss] = await hooks.waitFor("cache_miss", "cache_miss", ch);
      checkEqual(miss.event, { name: "cache_miss", channel: ch }, "cache_miss: {name, channel}");
      checkRequest(miss.request, "cache_miss request");
    },

    async "filters and one event per request"() {
      const f = unique("wh-f");
      await subscribed(b, f);
      const [occupied] = await filtered.waitFor("filtered channel_occupied", "channel_occupied", f);
      checkEqual(occupied.event, { name: "channel_occupied", channel: f }, "a second webhook with filter_prefix hears its channel");
      check(occupied.request.headers["x-test"] === undefined, "a webhook without headers sends no X-Test", occupied.request.headers);
      checkRequest(occupied.request, "filtered request");
      b.unsubscribe(f);
      await hooks.waitFor("vacated of the filtered channel (main hook)", "channel_vacated", f, { ms: late });
      await sleep(SETTLE_MS);
      const other = (await filtered.events()).filter((e) => e.event.name !== "channel_occupied" || !e.event.channel.startsWith("wh-f-"));
      checkEqual(other.map((e) => e.event), [], "the filtered webhook hears only channel_occupied of channels with its prefix");
      const requests = await hooks.requests();
      const sizes = requests.map((r) => r.body?.events?.length);
      check(sizes.length > 5 && sizes.every((n) => n === 1), `webhook_batch 0: one event per request (${sizes.length} requests)`, sizes);
      check(
        requests.every((r) => r.valid && r.sdk?.valid),
        "every request is signed",
        requests.filter((r) => !r.valid || !r.sdk?.valid),
      );
      const delivered = requests.length + (await filtered.requests()).length;
      const stats = await poll(
        "/api/stats webhooks.sent",
        () => webhookStats(port),
        (w) => w && w.sent >= delivered,
        WAIT_MS,
      );
      check(
        ["sent", "retried", "failed", "dropped", "queued"].every((k) => Number.isInteger(stats[k])),
        `/api/stats webhooks has sent, retried, failed, dropped, queued (sent ${stats.sent} >= ${delivered})`,
        stats,
      );
      checkEqual([stats.retried, stats.failed, stats.dropped], [0, 0, 0], "nothing retried, failed or dropped");
    },
  };
}

async function cache({ port, receiver, ttl_ms: ttl }) {
  const hooks = new Hooks(receiver);
  const sdk = api(port);
  const masterKey = Buffer.alloc(32, 9).toString("base64");
  const crypto = api(port, APPS.main, { encryptionMasterKeyBase64: masterKey });
  const user = (id) => ({ user_id: id, user_info: {} });
  const a = client(port, APPS.main, { user: user("a") });
  const b = client(port, APPS.main, { user: user("b") });
  await Promise.all([connected(a, "a"), connected(b, "b")]);
  // Triggered now and looked at after the TTL.
  const expiring = unique("cache-ttl");
  await sdk.trigger(expiring, "old", { stale: true });
  const triggeredAt = Date.now();

  return {
    async "hit: the last event right after subscribing"() {
      const ch = unique("cache-hit");
      await sdk.trigger(ch, "price", { v: 1 });
      await sdk.trigger(ch, "price", { v: 2 });
      const log = await subscribeLogged(a, ch);
      const [event] = await log.waitForEvent("price", "the cached event");
      checkEqual(event.data, { v: 2 }, "cache hit: a new subscriber gets the last event");
      const first = firstAfterSucceeded(a, ch);
      checkEqual(first?.event, "price", "the cached event comes right after subscription_succeeded");
      await sleep(SETTLE_MS);
      checkEqual(log.named("price").length, 1, "only the last event is kept");
      checkEqual(log.named("pusher:cache_miss").length, 0, "no pusher:cache_miss on a hit");
      // A subscriber that was there gets new events once, live.
      await sdk.trigger(ch, "price", { v: 3 });
      await log.waitFor("live v3", (e) => e.name === "price" && e.data?.v === 3);
      await sleep(SETTLE_MS);
      checkEqual(log.named("price").map((e) => e.data.v), [2, 3], "live events after the cached one arrive once");
      const later = await subscribeLogged(b, ch);
      const [third] = await later.waitForEvent("price", "the newest cached event");
      checkEqual(third.data, { v: 3 }, "the cache follows the newest event");
    },

    async "client events are cached (private-cache-)"() {
      const ch = unique("private-cache-chat");
      const [aCh] = await subscribed(a, ch);
      const bLog = await subscribeLogged(b, ch);
      // a joined first, on an empty cache.
      await sleep(SETTLE_MS);
      aCh.trigger("client-state", { s: 1 });
      await bLog.waitForEvent("client-state", "b gets the client event");
      const c = client(port);
      await connected(c, "c");
      const cLog = await subscribeLogged(c, ch);
      const [cached] = await cLog.waitForEvent("client-state", "the cached client event");
      checkEqual(cached.data, { s: 1 }, "private-cache-: a new subscriber gets the last client event");
      checkEqual(firstAfterSucceeded(c, ch)?.event, "client-state", "the cached client event follows subscription_succeeded");
    },

    async "presence-cache- and private-encrypted-cache-"() {
      const room = unique("presence-cache-room");
      await sdk.trigger(room, "topic", { t: "x" });
      const log = await subscribeLogged(a, room);
      const [topic] = await log.waitForEvent("topic", "presence-cache- cached event");
      checkEqual(topic.data, { t: "x" }, "presence-cache-: a new member gets the last event");
      const sealed = unique("private-encrypted-cache-vault");
      await crypto.trigger(sealed, "sealed", { gold: 1 });
      const e = client(port, APPS.main, { signer: crypto });
      await connected(e, "encrypted client");
      const eLog = await subscribeLogged(e, sealed);
      const [opened] = await eLog.waitForEvent("sealed", "encrypted cached event");
      checkEqual(opened.data, { gold: 1 }, "private-encrypted-cache-: the cached ciphertext decrypts");
    },

    async "miss: pusher:cache_miss and the webhook"() {
      const ch = unique("cache-miss");
      const log = await subscribeLogged(a, ch);
      await log.waitForEvent("pusher:cache_miss", "pusher:cache_miss");
      ok("cache miss: channel.bind('pusher:cache_miss') fires");
      checkEqual(firstAfterSucceeded(a, ch)?.event, "pusher:cache_miss", "pusher:cache_miss comes right after subscription_succeeded");
      const [miss] = await hooks.waitFor("cache_miss webhook", "cache_miss", ch);
      checkEqual(miss.event, { name: "cache_miss", channel: ch }, "cache miss: the cache_miss webhook");
      checkRequest(miss.request, "cache_miss request");
      const plain = unique("not-cached");
      const plainLog = await subscribeLogged(a, plain);
      await sleep(SETTLE_MS);
      checkEqual(plainLog.named("pusher:cache_miss").length, 0, "no pusher:cache_miss on a channel without the cache- prefix");
      const kinds = [...new Set((await hooks.events()).map((e) => e.event.name))];
      checkEqual(kinds, ["cache_miss"], "a webhook with events = [cache_miss] hears nothing else");
    },

    async "ttl: an expired event is a miss"() {
      await sleep(Math.max(0, triggeredAt + ttl + 700 - Date.now()));
      const log = await subscribeLogged(b, expiring);
      await log.waitForEvent("pusher:cache_miss", "cache_miss after cache_ttl");
      await sleep(SETTLE_MS);
      checkEqual(log.named("old").length, 0, "after cache_ttl the event is gone: pusher:cache_miss instead");
    },
  };
}

async function signin({ port, timeout_ms: timeout }) {
  // App 1001 signs in without a deadline; app 1002 (quiet) has user_authentication = true.
  const app = APPS.main;
  const liar = api(port, { ...app, secret: "not-the-secret" });
  return {
    async "signin_success"() {
      const alice = userClient(port, { id: "alice", user_info: { name: "Alice" } });
      await connected(alice, "alice");
      const success = await signedIn(alice, "alice");
      check(typeof success.data?.user_data === "string", "pusher:signin_success data.user_data is a JSON string", success);
      checkEqual(alice.user.user_data, { id: "alice", user_info: { name: "Alice" } }, "pusher.signin(): user_data as signed");
      ok("pusher-js subscribes #server-to-user-alice after signin");
      const got = userRecorder(alice, "note");
      await api(port).sendToUser("alice", "note", { n: 1 });
      await poll("alice gets sendToUser", async () => got.length, (n) => n >= 1);
      checkEqual(got, [{ n: 1 }], "sendToUser reaches pusher.user.bind");

      // Nobody else may listen on alice's channel.
      const bob = userClient(port, { id: "bob" });
      await connected(bob, "bob");
      await signedIn(bob, "bob");
      const stolen = await rawRefused(bob, "#server-to-user-alice");
      check(stolen?.status === 403, "bob subscribing to #server-to-user-alice: subscription_error 403", stolen);
      const anonymous = client(port);
      await connected(anonymous, "anonymous");
      const stolenToo = await rawRefused(anonymous, "#server-to-user-alice");
      check(stolenToo?.status === 403, "a connection not signed in subscribing to #server-to-user-alice: 403", stolenToo);
      await api(port).sendToUser("alice", "note", { n: 2 });
      await poll("alice gets the second note", async () => got.length, (n) => n >= 2);
      await sleep(SETTLE_MS);
      checkEqual(rawEvents(bob, "note").length + rawEvents(anonymous, "note").length, 0, "alice's events reach nobody else");
    },

    async "bad signature: 4009"() {
      const bad = userClient(port, { id: "mallory" }, { sign: (socketId) => liar.authenticateUser(socketId, { id: "mallory" }) });
      await connected(bad, "mallory");
      bad.signin();
      await closedWith(bad, 4009, "signin with a wrong signature");
    },

    async "user_data without a string id: 4009"() {
      const cases = [
        [{ name: "x" }, "signin with user_data without an id"],
        [{ id: 7 }, "signin with a numeric id"],
        [{ id: "" }, "signin with an empty id"],
      ];
      await Promise.all(
        cases.map(async ([userData, what]) => {
          const p = userClient(port, null, { sign: (socketId) => signUser(app, socketId, userData) });
          await connected(p, what);
          p.signin();
          await closedWith(p, 4009, what);
        }),
      );
    },

    async "user_authentication_timeout"() {
      const quiet = APPS.quiet;
      // The server's clock for a connection starts after this.
      const start = Date.now();
      const idle = client(port, quiet);
      const lurker = client(port, quiet);
      const member = client(port, quiet);
      const signer = userClient(port, { id: "quiet-user" }, { app: quiet });
      const [, , memberId, signerId] = await Promise.all([
        connected(idle, "idle"),
        connected(lurker, "lurker"),
        connected(member, "member"),
        connected(signer, "signer"),
      ]);
      await Promise.all([
        subscribed(lurker, unique("public-only")),
        subscribed(member, unique("private-member")),
        signedIn(signer, "quiet-user"),
      ]);
      const closedAt = await Promise.all([
        closedWith(idle, 4009, "user_authentication = true: a connection that never signs in", timeout + WAIT_MS),
        closedWith(lurker, 4009, "user_authentication = true: a connection with only public channels", timeout + WAIT_MS),
      ]);
      const after = closedAt.map((t) => t - start);
      check(
        after.every((t) => t >= timeout - 100 && t <= timeout + 3000),
        `closed after user_authentication_timeout, not before (${after.join(", ")} ms)`,
        after,
      );
      await sleep(Math.max(0, start + timeout + 1000 - Date.now()));
      stillConnected(signer, signerId, "signed in, past user_authentication_timeout");
      stillConnected(member, memberId, "subscribed to a private channel instead of signing in");
    },
  };
}

async function clusterWebhooks({ nodes, receiver, grace_ms: grace, lease_ms: lease }) {
  if (!Array.isArray(nodes) || nodes.length !== 3) {
    throw new Error(`cluster wants three nodes, got ${show(nodes)}`);
  }
  const hooks = new Hooks(receiver);
  const [n1, n2, n3] = nodes;
  const user = (id) => ({ user_id: id, user_info: {} });
  const on = (node, id) => client(node.port, APPS.main, { user: user(id) });
  const s1 = on(n1, "s1");
  const s2 = on(n2, "s2");
  const s3 = on(n3, "s3");
  await Promise.all([connected(s1, "s1"), connected(s2, "s2"), connected(s3, "s3")]);
  const settle = grace + 1000;
  const late = grace + WAIT_MS;
  const names = ["channel_occupied", "channel_vacated"];

  return {
    async "occupied/vacated once per transition"() {
      const ch = unique("cl-move");
      await subscribed(s1, ch);
      await hooks.waitFor("occupied on n1", "channel_occupied", ch);
      // Subscribers move n1 -> n2 -> n3 with overlap: the channel stays occupied.
      await subscribed(s2, ch);
      await subscribed(s3, ch);
      await sleep(300);
      s1.unsubscribe(ch);
      await sleep(300);
      s2.unsubscribe(ch);
      await sleep(settle);
      checkEqual(await countsOn(hooks, ch, names), { channel_occupied: 1, channel_vacated: 0 }, "subscribers moving n1 -> n2 -> n3: one channel_occupied");
      s3.unsubscribe(ch);
      await hooks.waitFor("vacated after n3 left", "channel_vacated", ch, { ms: late });
      await sleep(settle);
      checkEqual(await countsOn(hooks, ch, names), { channel_occupied: 1, channel_vacated: 1 }, "the last subscriber leaving (n3): one channel_vacated");
      // Occupied again on n2: a new transition.
      await subscribed(s2, ch);
      await hooks.waitFor("occupied again", "channel_occupied", ch, { count: 2 });
      // Handed over to n1 within the grace: nothing.
      s2.unsubscribe(ch);
      await sleep(150);
      await subscribed(s1, ch);
      await sleep(settle);
      checkEqual(await countsOn(hooks, ch, names), { channel_occupied: 2, channel_vacated: 1 }, "handed from n2 to n1 within the grace: nothing sent");
      s1.unsubscribe(ch);
      await hooks.waitFor("second vacated", "channel_vacated", ch, { count: 2, ms: late });
      await sleep(settle);
      checkEqual(await countsOn(hooks, ch, names), { channel_occupied: 2, channel_vacated: 2 }, "re-occupied then vacated: exactly one more of each");
    },

    async "member_added/removed once across nodes"() {
      const room = unique("presence-cl");
      const a1 = on(n1, "alice");
      const a2 = on(n2, "alice");
      const b3 = on(n3, "bob");
      await Promise.all([connected(a1, "alice n1"), connected(a2, "alice n2"), connected(b3, "bob n3")]);
      await subscribed(a1, room);
      await subscribed(a2, room);
      await subscribed(b3, room);
      await hooks.waitFor("member_added bob", "member_added", room, { pred: (e) => e.user_id === "bob" });
      await sleep(settle);
      const ids = async (name) => (await hooks.named(name, room)).map((e) => e.event.user_id).sort();
      checkEqual(await ids("member_added"), ["alice", "bob"], "alice on n1 and n2, bob on n3: one member_added each");
      a1.unsubscribe(room);
      await sleep(settle);
      checkEqual(await ids("member_removed"), [], "alice leaving n1 while on n2: no member_removed");
      a2.unsubscribe(room);
      await hooks.waitFor("member_removed alice", "member_removed", room, { ms: late, pred: (e) => e.user_id === "alice" });
      await sleep(settle);
      checkEqual(await ids("member_removed"), ["alice"], "alice's last connection (n2) leaving: one member_removed");
      checkEqual(await countsOn(hooks, room, names), { channel_occupied: 1, channel_vacated: 0 }, "presence channel: one channel_occupied");
    },

    async "SIGKILLed node: one vacated and one member_removed"() {
      const ch = unique("cl-kill");
      const room = unique("presence-cl-kill");
      const carol = on(n1, "carol");
      const dave = on(n2, "dave");
      await Promise.all([connected(carol, "carol n1"), connected(dave, "dave n2")]);
      await subscribed(dave, ch);
      await subscribed(carol, room);
      await subscribed(dave, room);
      await hooks.waitFor("occupied (n2 only)", "channel_occupied", ch);
      await hooks.waitFor("member_added dave", "member_added", room, { pred: (e) => e.user_id === "dave" });
      const killedAt = Date.now();
      process.kill(n2.pid, "SIGKILL");
      ok(`killed n2 (pid ${n2.pid}) with SIGKILL`);
      const [vacated] = await hooks.waitFor("vacated after the kill", "channel_vacated", ch, { ms: lease + grace + 3 * WAIT_MS });
      const [removed] = await hooks.waitFor("member_removed dave after the kill", "member_removed", room, {
        ms: lease + grace + 3 * WAIT_MS,
        pred: (e) => e.user_id === "dave",
      });
      const after = Math.min(vacated.at, removed.at) - killedAt;
      // The lease may have been renewed a little before the kill: half of it at least remains.
      check(after >= grace + lease / 2, `webhooks for the dead node's channels come after lease and grace (${after} ms)`, after);
      await sleep(settle + 1000);
      checkEqual(await countsOn(hooks, ch, names), { channel_occupied: 1, channel_vacated: 1 }, "n2 killed with the last subscriber: exactly one channel_vacated");
      const removedIds = (await hooks.named("member_removed", room)).map((e) => e.event.user_id);
      checkEqual(removedIds, ["dave"], "n2 killed with dave's only connection: exactly one member_removed");
      checkEqual(await countsOn(hooks, room, ["channel_vacated"]), { channel_vacated: 0 }, "carol keeps the presence channel occupied");
      const requests = await hooks.requests();
      check(
        requests.every((r) => r.valid && r.sdk?.valid),
        `every request of the cluster is signed (${requests.length})`,
        requests.filter((r) => !r.valid || !r.sdk?.valid),
      );
      // The dead node's clients would retry forever.
      dave.disconnect();
      s2.disconnect();
    },
  };
}

async function clusterUsers({ nodes }) {
  if (!Array.isArray(nodes) || nodes.length !== 3) {
    throw new Error(`cluster wants three nodes, got ${show(nodes)}`);
  }
  const [n1, n2, n3] = nodes;
  const sdks = nodes.map((n) => api(n.port));
  return {
    async "signin and sendToUser across nodes"() {
      const a1 = userClient(n1.port, { id: "alice" });
      const a2 = userClient(n2.port, { id: "alice" });
      const b3 = userClient(n3.port, { id: "bob" });
      await Promise.all([connected(a1, "alice n1"), connected(a2, "alice n2"), connected(b3, "bob n3")]);
      await Promise.all([signedIn(a1, "alice n1"), signedIn(a2, "alice n2"), signedIn(b3, "bob n3")]);
      ok("alice signed in on n1 and n2, bob on n3");
      const got = { a1: userRecorder(a1, "note"), a2: userRecorder(a2, "note"), b3: userRecorder(b3, "note") };
      const probes = { a1: userRecorder(a1, "probe"), a2: userRecorder(a2, "probe") };
      // Subscriptions reach other nodes asynchronously: probe from n3 until both see one.
      await poll(
        "a probe to alice from n3 reaching both her connections",
        async () => {
          await sdks[2].sendToUser("alice", "probe", {});
          await sleep(200);
          return [probes.a1.length, probes.a2.length];
        },
        ([x, y]) => x >= 1 && y >= 1,
      );
      await sdks[2].sendToUser("alice", "note", { text: "for alice" });
      await poll("both of alice's connections get the note", async () => [got.a1.length, got.a2.length], ([x, y]) => x >= 1 && y >= 1);
      await sleep(SETTLE_MS + 300);
      checkEqual([got.a1, got.a2], [[{ text: "for alice" }], [{ text: "for alice" }]], "sendToUser from n3 reaches alice on n1 and n2, once each");
      checkEqual(got.b3, [], "bob does not get alice's event");
      await sdks[0].sendToUser("bob", "note", { text: "for bob" });
      await poll("bob gets his note", async () => got.b3.length, (n) => n >= 1);
      checkEqual(got.b3, [{ text: "for bob" }], "sendToUser from n1 reaches bob on n3");

      const bobId = b3.connection.socket_id;
      const response = await sdks[2].terminateUserConnections("alice");
      check(response.status === 200, "terminateUserConnections answers 200", response.status);
      await Promise.all([
        closedWith(a1, 4009, "terminateUserConnections: alice on n1"),
        closedWith(a2, 4009, "terminateUserConnections: alice on n2"),
      ]);
      stillConnected(b3, bobId, "bob after alice's connections were terminated");
      await sdks[0].sendToUser("bob", "note", { text: "still here" });
      await poll("bob still gets notes", async () => got.b3.length, (n) => n >= 2);
      ok("bob still receives sendToUser after alice was terminated");
    },

    async "watchlist online and offline"() {
      const bob = userClient(n3.port, { id: "wl-bob" });
      await connected(bob, "wl-bob");
      await signedIn(bob, "wl-bob");
      const carol = userClient(n1.port, { id: "wl-carol", watchlist: ["wl-bob", "wl-dave"] });
      const seen = watchRecorder(carol);
      await connected(carol, "wl-carol");
      await signedIn(carol, "wl-carol");
      await poll("carol hears wl-bob is online", async () => watched(seen, "online", "wl-bob"), (n) => n >= 1);
      ok("signin: online right away for a watched user already online (other node)");
      check(watched(seen, "online", "wl-dave") === 0, "no online for a watched user who is not", seen);
      const wire = rawEvents(carol, "pusher_internal:watchlist_events")[0];
      check(Array.isArray(wire?.data?.events), "pusher_internal:watchlist_events data {events: [...]}", wire);

      const d2 = userClient(n2.port, { id: "wl-dave" });
      const d3 = userClient(n3.port, { id: "wl-dave" });
      await connected(d2, "wl-dave n2");
      await signedIn(d2, "wl-dave n2");
      await poll("carol hears wl-dave is online", async () => watched(seen, "online", "wl-dave"), (n) => n >= 1);
      ok("watched user's first connection (n2): online");
      await connected(d3, "wl-dave n3");
      await signedIn(d3, "wl-dave n3");
      await sleep(SETTLE_MS + 500);
      checkEqual(watched(seen, "online", "wl-dave"), 1, "a second connection of a watched user: no second online");
      d2.disconnect();
      await sleep(SETTLE_MS + 1000);
      checkEqual(watched(seen, "offline", "wl-dave"), 0, "one of two connections gone: no offline");
      d3.disconnect();
      await poll("carol hears wl-dave is offline", async () => watched(seen, "offline", "wl-dave"), (n) => n >= 1);
      ok("watched user's last connection gone (n3): offline");
      bob.disconnect();
      await poll("carol hears wl-bob is offline", async () => watched(seen, "offline", "wl-bob"), (n) => n >= 1);
      ok("watchlist.bind('offline') for the user that was online at signin");
    },

    async "cache across nodes"() {
      const ch = unique("cache-cl");
      await sdks[0].trigger(ch, "state", { from: "n1" });
      // The cache is shared through the broker: give it a moment.
      await sleep(500);
      for (const [i, node] of [[1, n2], [2, n3]]) {
        const p = client(node.port);
        await connected(p, `cache reader n${i + 1}`);
        const log = await subscribeLogged(p, ch);
        const [event] = await log.waitForEvent("state", `cached event on n${i + 1}`);
        checkEqual(event.data, { from: "n1" }, `cache hit on n${i + 1} for an event triggered on n1`);
      }
      const miss = unique("cache-cl-miss");
      const p = client(n2.port);
      await connected(p, "cache miss reader");
      const log = await subscribeLogged(p, miss);
      await log.waitForEvent("pusher:cache_miss", "cache miss on n2");
      ok("cache miss on another node");
    },
  };
}

const SCENARIOS = {
  webhooks,
  cache,
  signin,
  "cluster-webhooks": clusterWebhooks,
  "cluster-users": clusterUsers,
};

async function main() {
  const [scenario, rawArgs = "{}", only] = process.argv.slice(2);
  const setup = SCENARIOS[scenario];
  if (!setup) {
    console.error(`usage: pusher-more.mjs <${Object.keys(SCENARIOS).join("|")}> '<json args>' [part]`);
    process.exit(2);
  }
  const failures = [];
  const finish = () => {
    disconnectAll();
    if (failures.length > 0) {
      console.error(`FAIL ${scenario}: ${failures.length} part(s) failed: ${failures.join(", ")}`);
      process.exit(1);
    }
    console.log(`ok: scenario ${scenario} passed`);
    // pusher-js keeps timers: leave now rather than wait for them.
    process.exit(0);
  };
  process.on("unhandledRejection", (e) => {
    console.error(`FAIL ${scenario}: unhandled rejection: ${e?.stack ?? show(e)}`);
    failures.push("unhandled rejection");
  });
  const stuck = setTimeout(() => {
    failures.push(`did not finish within ${SCENARIO_MS} ms`);
    finish();
  }, SCENARIO_MS);
  const stamp = Date.now();
  let parts = {};
  try {
    parts = await setup(JSON.parse(rawArgs));
  } catch (e) {
    console.error(`FAIL ${scenario}: setup: ${e?.stack ?? show(e)}`);
    failures.push("setup");
  }
  // Parts run in order; a failing one is reported and the next still runs.
  for (const [name, part] of Object.entries(parts)) {
    if (only && name !== only) {
      continue;
    }
    const began = Date.now();
    try {
      await within(SCENARIO_MS, `part ${name}`, part());
      ok(`part ${name} passed (${Date.now() - began} ms)`);
    } catch (e) {
      console.error(`FAIL ${scenario}/${name}: ${e?.stack ?? show(e)}`);
      failures.push(name);
    }
  }
  clearTimeout(stuck);
  console.error(`${scenario}: ${Date.now() - stamp} ms`);
  finish();
}

await main();
