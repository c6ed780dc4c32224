// The Pusher Channels scenarios, driven by the real libraries: pusher-js 8.6.0 (the browser
// and Node client), laravel-echo 2.5.0 on top of it, and the `pusher` 5.3.4 server SDK for
// authorizations and the HTTP API.
//
//   node tests/node/pusher-suite.mjs <scenario> '<json args>'
//
// Args: {"port": N} for one server; the cluster scenario takes
// {"nodes": [{"port": N, "pid": P}, ...]} (three nodes). Each check prints `ok: <check>`; a
// failure prints `FAIL <scenario>: <why>` and exits 1. tests/tests/pusher.rs runs these.

import Echo from "laravel-echo";
import Pusher from "pusher-js";
import {
  APPS,
  SETTLE_MS,
  SOCKET_ID,
  WAIT_MS,
  ChannelLog,
  Recorder,
  api,
  check,
  checkEqual,
  client,
  clientOptions,
  connected,
  disconnectAll,
  errorCode,
  failureOf,
  json,
  next,
  ok,
  poll,
  rawEvents,
  refused,
  show,
  sleep,
  subscribed,
  track,
  unique,
  within,
} from "./lib.mjs";

/** A whole scenario may take this long before it fails as stuck. */
const SCENARIO_MS = 90_000;

// ---------------------------------------------------------------------------------------------
// Shared steps

/** Waits until pusher-js reported an error with `code` and gave up (state disconnected/failed). */
async function expectRefusedConnection(pusher, code, what) {
  const states = [];
  pusher.connection.bind("state_change", ({ current }) => states.push(current));
  await poll(
    `${what}: an error with code ${code}`,
    async () => pusher.errors.map(errorCode),
    (codes) => codes.includes(code),
  );
  ok(`${what}: pusher-js reports error code ${code}`);
  await poll(
    `${what}: pusher-js gives up`,
    async () => pusher.connection.state,
    (state) => state === "disconnected" || state === "failed",
  );
  ok(`${what}: pusher-js stops (state ${pusher.connection.state})`);
  // A refusal (4000-4099) must not make pusher-js retry.
  const seen = states.length;
  await sleep(1500);
  const later = states.slice(seen);
  check(!later.includes("connected") && !later.includes("connecting"), `${what}: pusher-js does not reconnect`, later);
}

/** Triggers `marker` on `channel` and waits until every log saw it: what came before has arrived. */
async function marker(sdk, channel, logs, label) {
  const name = unique("marker");
  await sdk.trigger(channel, name, { marker: label });
  await Promise.all(logs.map((log) => log.waitForEvent(name, `marker ${label}`)));
  await sleep(SETTLE_MS);
}

/** The connection is still the same one, open, after whatever just happened. */
function stillConnected(pusher, socketId, what) {
  check(
    pusher.connection.state === "connected" && pusher.connection.socket_id === socketId,
    `${what}: connection stays open (same socket id)`,
    { state: pusher.connection.state, socket_id: pusher.connection.socket_id, was: socketId },
  );
}

function sortedIds(users) {
  return users.map((u) => String(u.id)).sort();
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async function connect({ port }) {
  // Asking for a longer activity timeout than the server's shows that the server's is used.
  const a = client(port, APPS.main, { options: { activityTimeout: 500_000 } });
  const socketId = await connected(a, "app-key");
  check(SOCKET_ID.test(socketId), `socket id ${socketId} is <digits>.<digits>`, socketId);
  const established = rawEvents(a, "pusher:connection_established");
  // pusher-js does not re-emit the handshake as a message: its timeout is what it took from it.
  check(a.connection.activityTimeout === 120_000, "activity_timeout 120 taken from connection_established", {
    activityTimeout: a.connection.activityTimeout,
    established,
  });
  const b = client(port);
  const other = await connected(b, "second app-key client");
  check(other !== socketId && SOCKET_ID.test(other), "socket ids differ between connections", [socketId, other]);

  // Ping: pusher-js sends pusher:ping itself when idle; ask for one now through its own method.
  const pong = next(a.connection, "message", "pusher:pong", (m) => m.event === "pusher:pong");
  a.send_event("pusher:ping", {});
  await pong;
  ok("pusher:ping answered by pusher:pong");

  const unknown = client(port, { id: "0", key: "no-such-key", secret: "x" });
  await expectRefusedConnection(unknown, 4001, "unknown app key");

  const disabled = client(port, APPS.off);
  await expectRefusedConnection(disabled, 4003, "disabled app");

  const first = client(port, APPS.tiny);
  const firstId = await connected(first, "tiny-key first connection");
  ok("tiny-key: first connection accepted");
  const second = client(port, APPS.tiny);
  await expectRefusedConnection(second, 4004, "tiny-key over max_connections = 1");
  stillConnected(first, firstId, "tiny-key first connection");
  first.disconnect();
  // Its slot frees once the server sees the close.
  await poll(
    "tiny-key: a new connection after the first closed",
    async () => {
      const again = client(port, APPS.tiny);
      try {
        return await connected(again, "tiny-key again");
      } catch (e) {
        again.disconnect();
        throw e;
      }
    },
    (id) => SOCKET_ID.test(id),
    WAIT_MS * 2,
  );
  ok("tiny-key: the slot frees when the first connection closes");
  stillConnected(a, socketId, "app-key client");
}

async function publicChannels({ port }) {
  const sdk = api(port);
  const a = client(port);
  const b = client(port);
  const c = client(port);
  const [aId] = await Promise.all([connected(a, "a"), connected(b, "b"), connected(c, "c")]);
  const news = unique("news");
  const sports = unique("sports");
  const [aNews] = await subscribed(a, news);
  const [bNews] = await subscribed(b, news);
  const [cSports] = await subscribed(c, sports);
  const logs = { a: new ChannelLog(aNews), b: new ChannelLog(bNews), c: new ChannelLog(cSports) };
  ok("three clients subscribed to public channels");

  let response = await sdk.trigger(news, "greet", { hello: "world", n: [1, 2.5, null, true] });
  check(response.status === 200, "trigger answers 200", response.status);
  for (const who of ["a", "b"]) {
    const [event] = await logs[who].waitForEvent("greet", `${who} gets greet`);
    checkEqual(event.data, { hello: "world", n: [1, 2.5, null, true] }, `${who} receives the triggered data`);
  }

  await sdk.trigger([news, sports], "both", "plain text, not JSON");
  for (const who of ["a", "b", "c"]) {
    const [event] = await logs[who].waitForEvent("both", `${who} gets the multi-channel event`);
    checkEqual(event.data, "plain text, not JSON", `${who} receives a trigger to a channel list`);
  }

  await sdk.trigger(news, "not-for-a", { x: 1 }, { socket_id: aId });
  await logs.b.waitForEvent("not-for-a", "b gets the event excluding a");
  await marker(sdk, news, [logs.a, logs.b], "after exclusion");
  checkEqual(logs.a.named("not-for-a").length, 0, "socket_id excludes that connection");
  checkEqual(logs.b.named("not-for-a").length, 1, "others get an excluding trigger once");

  response = await sdk.trigger(news, "with-info", {}, { info: "subscription_count" });
  const info = await json(response);
  checkEqual(info?.channels?.[news]?.subscription_count, 2, "trigger with info=subscription_count answers the count");

  response = await sdk.triggerBatch([
    { channel: news, name: "batch-1", data: { i: 1 } },
    { channel: sports, name: "batch-2", data: { i: 2 } },
  ]);
  check(response.status === 200, "triggerBatch answers 200", response.status);
  const [b1] = await logs.a.waitForEvent("batch-1", "batch-1");
  checkEqual(b1.data, { i: 1 }, "batch event 1 reaches its channel");
  const [b2] = await logs.c.waitForEvent("batch-2", "batch-2");
  checkEqual(b2.data, { i: 2 }, "batch event 2 reaches its channel");
  await marker(sdk, news, [logs.a, logs.b], "after batch");
  checkEqual(logs.a.named("batch-2").length + logs.b.named("batch-2").length, 0, "batch events go to their channel only");

  const all = await json(await sdk.get({ path: "/channels" }));
  check(news in (all.channels ?? {}) && sports in (all.channels ?? {}), "GET /channels lists occupied channels", all);
  const filtered = await json(await sdk.get({ path: "/channels", params: { filter_by_prefix: sports } }));
  checkEqual(Object.keys(filtered.channels ?? {}), [sports], "GET /channels?filter_by_prefix filters");
  const one = await json(await sdk.get({ path: `/channels/${news}`, params: { info: "subscription_count" } }));
  check(one.occupied === true && one.subscription_count === 2, "GET /channels/NAME: occupied, subscription_count 2", one);
  const empty = await json(await sdk.get({ path: `/channels/${unique("nobody")}` }));
  check(empty.occupied === false, "GET /channels/NAME of an empty channel: occupied false", empty);

  b.unsubscribe(news);
  await poll(
    "subscription_count 1 after b unsubscribed",
    async () => json(await sdk.get({ path: `/channels/${news}`, params: { info: "subscription_count" } })),
    (v) => v.subscription_count === 1,
  );
  ok("unsubscribe lowers subscription_count");
  a.unsubscribe(news);
  await poll(
    "the channel leaves GET /channels once empty",
    async () => json(await sdk.get({ path: "/channels" })),
    (v) => !(news in (v.channels ?? {})),
  );
  ok("an emptied channel leaves GET /channels");
}

async function privateChannels({ port }) {
  const sdk = api(port);
  const liar = api(port, { ...APPS.main, secret: "not-the-secret" });
  const room = unique("private-room");
  const bad = unique("private-bad");
  const empty = unique("private-empty");
  const stolen = unique("private-stolen");
  const a = client(port);
  const aId = await connected(a, "a");
  const b = client(port, APPS.main, {
    auth: {
      [bad]: (socketId, channel) => liar.authorizeChannel(socketId, channel),
      [empty]: () => ({ auth: "" }),
      // A valid signature, for another connection's socket id.
      [stolen]: (_socketId, channel) => sdk.authorizeChannel(aId, channel),
    },
  });
  const bId = await connected(b, "b");

  const [aRoom] = await subscribed(a, room);
  ok("authorized subscribe to a private channel succeeds");

  for (const [name, what] of [
    [bad, "signature with the wrong secret"],
    [empty, "empty auth"],
    [stolen, "signature for another socket id"],
  ]) {
    const error = await refused(b, name);
    check(
      error?.type === "AuthError" && error?.status === 401 && typeof error?.error === "string",
      `${what}: subscription_error {type: AuthError, status: 401, error}`,
      error,
    );
  }
  stillConnected(b, bId, "after refused subscriptions");

  const [bRoom] = await subscribed(b, room);
  ok("the refused connection can still subscribe to a private channel");
  await subscribed(b, unique("lobby"));
  ok("the refused connection can still subscribe to a public channel");

  const logs = [new ChannelLog(aRoom), new ChannelLog(bRoom)];
  await sdk.trigger(room, "secret", { s: 1 });
  for (const log of logs) {
    const [event] = await log.waitForEvent("secret", "private event");
    checkEqual(event.data, { s: 1 }, "private channel subscribers receive SDK events");
  }

  const refusedChannels = rawEvents(b, "pusher:subscription_error").map((m) => m.channel).sort();
  checkEqual(refusedChannels, [bad, empty, stolen].sort(), "each subscription_error names its channel");

  // private-encrypted-: the server relays ciphertext; the SDK encrypts, pusher-js decrypts.
  const masterKey = Buffer.alloc(32, 7).toString("base64");
  const crypto = api(port, APPS.main, { encryptionMasterKeyBase64: masterKey });
  const e = client(port, APPS.main, { signer: crypto });
  await connected(e, "encrypted client");
  const secretChannel = unique("private-encrypted-vault");
  const [vault] = await subscribed(e, secretChannel);
  const vaultLog = new ChannelLog(vault);
  await crypto.trigger(secretChannel, "sealed", { gold: 24 });
  const [sealed] = await vaultLog.waitForEvent("sealed", "encrypted event");
  checkEqual(sealed.data, { gold: 24 }, "private-encrypted- channel: pusher-js decrypts what the SDK encrypted");
  const wire = rawEvents(e, "sealed", secretChannel)[0];
  check(wire && typeof wire.data === "object" && "ciphertext" in wire.data, "the server relays ciphertext as is", wire);
}

async function presence({ port }) {
  const sdk = api(port);
  const room = unique("presence-room");
  const alice = { user_id: "alice", user_info: { name: "Alice" } };
  const bob = { user_id: 7, user_info: { name: "Bob", tags: ["x"] } };
  const a1 = client(port, APPS.main, { user: alice });
  const a2 = client(port, APPS.main, { user: alice });
  const b = client(port, APPS.main, { user: bob });
  await Promise.all([connected(a1, "alice 1"), connected(a2, "alice 2"), connected(b, "bob")]);

  const [a1Room, a1Members] = await subscribed(a1, room);
  check(a1Members.count === 1 && a1Members.me?.id === "alice", "first member sees only herself", a1Members);
  const a1Log = new ChannelLog(a1Room);

  const [bRoom, bMembers] = await subscribed(b, room);
  const bLog = new ChannelLog(bRoom);
  checkEqual(Object.keys(bMembers.members).sort(), ["7", "alice"], "second user's list has both users");
  check(bMembers.count === 2, "presence count 2", bMembers.count);
  checkEqual(bMembers.members.alice, { name: "Alice" }, "hash carries user_info");
  const bRaw = rawEvents(b, "pusher_internal:subscription_succeeded", room)[0]?.data?.presence;
  // Hash keys are strings by JSON's rules; the ids list is compared as strings too (the spec
  // does not say whether a numeric id stays a number there).
  checkEqual(bRaw?.ids?.map(String).sort(), ["7", "alice"], "raw presence ids name both users");
  checkEqual(bRaw?.count, 2, "raw presence count 2");
  const [added] = await a1Log.waitForEvent("pusher:member_added", "alice 1 sees bob join");
  checkEqual(added.data, { id: 7, info: { name: "Bob", tags: ["x"] } }, "member_added: numeric id stays a number");

  // Alice's second connection: already a member, so nobody hears of it.
  const [a2Room, a2Members] = await subscribed(a2, room);
  const a2Log = new ChannelLog(a2Room);
  check(a2Members.count === 2, "alice's second connection sees 2 members", a2Members.count);
  await marker(sdk, room, [a1Log, bLog, a2Log], "after alice 2");
  checkEqual(a1Log.named("pusher:member_added").length, 1, "no member_added for a user's second connection (alice)");
  checkEqual(bLog.named("pusher:member_added").length, 0, "no member_added to the other user either");
  checkEqual(
    rawEvents(b, "pusher_internal:member_added", room).length,
    0,
    "the joining connection is not told about itself",
  );

  const users = await json(await sdk.get({ path: `/channels/${room}/users` }));
  checkEqual(sortedIds(users.users ?? []), ["7", "alice"], "GET /channels/NAME/users lists each user once");
  check(users.users.some((u) => u.id === 7), "users list keeps 7 a number", users);
  const info = await json(await sdk.get({ path: `/channels/${room}`, params: { info: "user_count,subscription_count" } }));
  check(
    info.occupied === true && info.user_count === 2 && info.subscription_count === 3,
    "channel info: user_count 2, subscription_count 3",
    info,
  );
  const listed = await json(await sdk.get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" } }));
  checkEqual(listed.channels?.[room], { user_count: 2 }, "GET /channels?filter_by_prefix=presence-&info=user_count");

  // Full: the test server has max_presence_members = 2; a third user is refused.
  const carol = client(port, APPS.main, { user: { user_id: "carol", user_info: {} } });
  const carolId = await connected(carol, "carol");
  const full = await refused(carol, room);
  check(full?.status === 403, "a full presence channel refuses a new user with status 403", full);
  stillConnected(carol, carolId, "carol after the refusal");

  // Alice leaves on one connection: still a member through the other.
  a1.unsubscribe(room);
  await marker(sdk, room, [bLog, a2Log], "after alice 1 left");
  checkEqual(bLog.named("pusher:member_removed").length, 0, "no member_removed while alice has another connection");
  const still = await json(await sdk.get({ path: `/channels/${room}/users` }));
  checkEqual(sortedIds(still.users ?? []), ["7", "alice"], "alice still listed");

  // Her last connection goes: now she leaves.
  a2.disconnect();
  const [removed] = await bLog.waitForEvent("pusher:member_removed", "bob sees alice leave");
  checkEqual(removed.data, { id: "alice", info: { name: "Alice" } }, "member_removed when the last connection leaves");
  await poll(
    "users list without alice",
    async () => json(await sdk.get({ path: `/channels/${room}/users` })),
    (v) => JSON.stringify(sortedIds(v.users ?? [])) === JSON.stringify(["7"]),
  );
  ok("users list drops a user whose last connection left");
  const after = await json(await sdk.get({ path: `/channels/${room}`, params: { info: "user_count" } }));
  checkEqual(after.user_count, 1, "user_count 1");

  // user_info over max_presence_member_bytes (2 KiB by default) is refused with 400.
  const heavy = client(port, APPS.main, { user: { user_id: "heavy", user_info: { pad: "x".repeat(3 * 1024) } } });
  const heavyId = await connected(heavy, "heavy");
  const tooBig = await refused(heavy, unique("presence-heavy"));
  check(tooBig?.status === 400, "user_info over max_presence_member_bytes: subscription_error 400", tooBig);
  stillConnected(heavy, heavyId, "heavy after the refusal");

  // Bob leaves; carol may join now.
  b.disconnect();
  await subscribed(carol, unique("presence-other"));
  ok("carol can still join other presence channels");
}

async function clientEvents({ port }) {
  const sdk = api(port);
  const chat = unique("private-chat");
  const a = client(port);
  const b = client(port);
  const c = client(port);
  const [aId] = await Promise.all([connected(a, "a"), connected(b, "b"), connected(c, "c")]);
  const logs = {};
  for (const [who, pusher] of Object.entries({ a, b, c })) {
    const [channel] = await subscribed(pusher, chat);
    logs[who] = new ChannelLog(channel);
  }
  a.channel(chat).trigger("client-typing", { who: "a" });
  for (const who of ["b", "c"]) {
    const [event] = await logs[who].waitForEvent("client-typing", `${who} gets a's client event`);
    checkEqual(event.data, { who: "a" }, `client event relayed to ${who}`);
  }
  await marker(sdk, chat, Object.values(logs), "after client event");
  checkEqual(logs.a.named("client-typing").length, 0, "the sender does not get its own client event");
  checkEqual(logs.b.named("client-typing").length, 1, "a client event arrives once");
  check(
    rawEvents(b, "client-typing", chat).every((m) => m.user_id === undefined),
    "no user_id on a private channel",
    rawEvents(b, "client-typing", chat),
  );

  // Presence: the relay names the sender's user.
  const room = unique("presence-chat");
  const u1 = client(port, APPS.main, { user: { user_id: "u1", user_info: {} } });
  const u2 = client(port, APPS.main, { user: { user_id: 42, user_info: {} } });
  await Promise.all([connected(u1, "u1"), connected(u2, "u2")]);
  const [u1Room] = await subscribed(u1, room);
  const [u2Room] = await subscribed(u2, room);
  // bind_global does not pass metadata: bind the event itself.
  const u1Hi = new Recorder(u1Room, "client-hi");
  const u2Hi = new Recorder(u2Room, "client-hi");
  u1.channel(room).trigger("client-hi", { text: "hello" });
  const [hi] = await u2Hi.waitFor("u2 gets client-hi");
  checkEqual(hi.data, { text: "hello" }, "presence client event data");
  checkEqual(hi.meta, { user_id: "u1" }, "presence client event carries the sender's user_id");
  u2.channel(room).trigger("client-hi", { text: "back" });
  const [back] = await u1Hi.waitFor("u1 gets client-hi");
  check(String(back.meta?.user_id) === "42", "user_id of a numeric user", back.meta);

  // Refusals: pusher:error 4301, the connection stays.
  const refusedCount = (pusher) => pusher.errors.filter((e) => errorCode(e) === 4301).length;
  const lobby = unique("lobby");
  const [aLobby] = await subscribed(a, lobby);
  const [bLobby] = await subscribed(b, lobby);
  const bLobbyLog = new ChannelLog(bLobby);
  const aLobbyLog = new ChannelLog(aLobby);
  aLobby.trigger("client-nope", { x: 1 });
  await poll("4301 for a client event on a public channel", async () => refusedCount(a), (n) => n >= 1);
  ok("client event on a public channel: pusher:error 4301");
  const error = rawEvents(a, "pusher:error").find((m) => m.data?.code === 4301);
  check(error?.channel === lobby, "the 4301 pusher:error names the channel", error);
  await marker(sdk, lobby, [aLobbyLog, bLobbyLog], "after public client event");
  checkEqual(bLobbyLog.named("client-nope").length, 0, "a refused client event is not relayed");
  stillConnected(a, aId, "after 4301 on a public channel");

  const notJoined = unique("private-notjoined");
  a.send_event("client-sneak", { x: 1 }, notJoined);
  await poll("4301 for a client event on an unsubscribed channel", async () => refusedCount(a), (n) => n >= 2);
  ok("client event on a channel the sender is not subscribed to: 4301");
  stillConnected(a, aId, "after 4301 on an unsubscribed channel");

  // App 1002 has client_events off.
  const q1 = client(port, APPS.quiet);
  const q2 = client(port, APPS.quiet);
  const [q1Id] = await Promise.all([connected(q1, "quiet 1"), connected(q2, "quiet 2")]);
  const quietRoom = unique("private-quiet");
  const [q1Room] = await subscribed(q1, quietRoom);
  const [q2Room] = await subscribed(q2, quietRoom);
  const quietLogs = [new ChannelLog(q1Room), new ChannelLog(q2Room)];
  q1Room.trigger("client-shh", { x: 1 });
  await poll("4301 on an app without client events", async () => refusedCount(q1), (n) => n >= 1);
  ok("client events off for the app: 4301");
  await marker(api(port, APPS.quiet), quietRoom, quietLogs, "quiet app");
  checkEqual(quietLogs[1].named("client-shh").length, 0, "nothing relayed on an app without client events");
  stillConnected(q1, q1Id, "quiet app after 4301");

  // Rate: max_client_events_per_second = 10 per connection.
  const r = client(port);
  const rId = await connected(r, "rate client");
  const [rChat] = await subscribed(r, chat);
  const before = logs.b.named("client-burst").length;
  for (let i = 0; i < 25; i += 1) {
    rChat.trigger("client-burst", { i });
  }
  await poll("4301 for client events over the rate", async () => refusedCount(r), (n) => n >= 1);
  await marker(sdk, chat, [logs.b], "after burst");
  const relayed = logs.b.named("client-burst").length - before;
  // A fixed one-second window may straddle the burst: at most two windows' worth.
  check(relayed >= 1 && relayed <= 20, `a burst of 25 is cut by the rate limit (${relayed} relayed)`, relayed);
  check(refusedCount(r) >= 5, `over-rate events are refused with 4301 (${refusedCount(r)})`, refusedCount(r));
  stillConnected(r, rId, "after the rate limit");
  await sleep(1100);
  rChat.trigger("client-after", { ok: true });
  await logs.b.waitForEvent("client-after", "a client event after the rate window");
  ok("client events flow again after a second");
}

async function subscriptionCount({ port }) {
  const name = unique("counted");
  const a = client(port);
  const b = client(port);
  await Promise.all([connected(a, "a"), connected(b, "b")]);
  const countOf = (log) => log.named("pusher:subscription_count").map((e) => e.data?.subscription_count);
  const aChannel = a.subscribe(name);
  const aLog = new ChannelLog(aChannel);
  await aLog.waitForEvent("pusher:subscription_succeeded", "a subscribed");
  await aLog.waitFor("count 1", (e) => e.name === "pusher:subscription_count" && e.data?.subscription_count === 1);
  ok("pusher:subscription_count 1 after the first subscriber");
  const bChannel = b.subscribe(name);
  const bLog = new ChannelLog(bChannel);
  await aLog.waitFor("count 2 on a", (e) => e.name === "pusher:subscription_count" && e.data?.subscription_count === 2);
  await bLog.waitFor("count 2 on b", (e) => e.name === "pusher:subscription_count" && e.data?.subscription_count === 2);
  ok("both subscribers get subscription_count 2");
  check(aChannel.subscriptionCount === 2, "pusher-js keeps channel.subscriptionCount", aChannel.subscriptionCount);
  const mark = aLog.items.length;
  b.unsubscribe(name);
  await aLog.waitFor(
    "count 1 after b left",
    (e) => aLog.items.indexOf(e) >= mark && e.name === "pusher:subscription_count" && e.data?.subscription_count === 1,
  );
  ok("subscription_count drops when a subscriber leaves");
  check(countOf(aLog).every((n) => Number.isInteger(n) && n >= 1), "counts are positive integers", countOf(aLog));

  // An app without subscription_count, and presence channels, get none.
  const q = client(port, APPS.quiet);
  await connected(q, "quiet");
  const [qChannel] = await subscribed(q, name);
  const qLog = new ChannelLog(qChannel);
  const p = client(port, APPS.main, { user: { user_id: "p", user_info: {} } });
  await connected(p, "presence");
  const room = unique("presence-counted");
  const [pChannel] = await subscribed(p, room);
  const pLog = new ChannelLog(pChannel);
  await marker(api(port, APPS.quiet), name, [qLog], "quiet");
  await marker(api(port), room, [pLog], "presence");
  checkEqual(rawEvents(q, "pusher_internal:subscription_count").length, 0, "no subscription_count on an app without it");
  checkEqual(rawEvents(p, "pusher_internal:subscription_count").length, 0, "no subscription_count on presence channels");
}

async function echo({ port }) {
  const sdk = api(port);
  const liar = api(port, { ...APPS.main, secret: "not-the-secret" });
  // The `authorizer` option Laravel's docs show, on top of pusher-js's ChannelAuthorizerProxy.
  const makeEcho = (user, lie = () => false) =>
    new Echo({
      broadcaster: "pusher",
      key: APPS.main.key,
      Pusher,
      ...clientOptions(port),
      authorizer: (channel) => ({
        authorize: (socketId, callback) => {
          const signer = lie(channel.name) ? liar : sdk;
          const presence = channel.name.startsWith("presence-") ? user : undefined;
          callback(null, signer.authorizeChannel(socketId, channel.name, presence));
        },
      }),
    });
  const taylor = { user_id: 1, user_info: { id: 1, name: "Taylor" } };
  const abigail = { user_id: 2, user_info: { id: 2, name: "Abigail" } };
  const e1 = makeEcho(taylor, (name) => name.includes("forbidden"));
  const e2 = makeEcho(abigail);
  track(e1.connector.pusher);
  track(e2.connector.pusher);
  await Promise.all([connected(e1.connector.pusher, "echo 1"), connected(e2.connector.pusher, "echo 2")]);
  check(SOCKET_ID.test(e1.socketId()), "Echo.socketId()", e1.socketId());
  checkEqual(e1.connectionStatus(), "connected", "Echo.connectionStatus()");

  const orders = unique("orders");
  const got = {};
  const heard = (key) => new Promise((resolve) => (got[key] = resolve));
  const shipped = heard("shipped");
  const namespaced = heard("namespaced");
  e1.channel(orders)
    .listen(".OrderShipped", (data) => got.shipped(data))
    .listen("OrderPaid", (data) => got.namespaced(data));
  await new Promise((resolve) => e1.channel(orders).subscribed(resolve));
  await sdk.trigger(orders, "OrderShipped", { id: 1 });
  checkEqual(await within(WAIT_MS, "Echo .OrderShipped", shipped), { id: 1 }, "Echo channel().listen('.Event')");
  await sdk.trigger(orders, "App\\Events\\OrderPaid", { id: 2 });
  checkEqual(await within(WAIT_MS, "Echo OrderPaid", namespaced), { id: 2 }, "Echo listen('Event') in App\\Events");

  const privateName = unique("orders.private");
  const updated = heard("updated");
  const whisper = heard("whisper");
  e1.private(privateName).listen(".Updated", (data) => got.updated(data));
  e2.private(privateName).listenForWhisper("typing", (data) => got.whisper(data));
  await Promise.all([
    new Promise((resolve) => e1.private(privateName).subscribed(resolve)),
    new Promise((resolve) => e2.private(privateName).subscribed(resolve)),
  ]);
  ok("Echo private() subscribes through the authorizer");
  await sdk.trigger(`private-${privateName}`, "Updated", { status: "paid" });
  checkEqual(await within(WAIT_MS, "Echo private .Updated", updated), { status: "paid" }, "Echo private().listen");
  e1.private(privateName).whisper("typing", { name: "Taylor" });
  checkEqual(await within(WAIT_MS, "Echo whisper", whisper), { name: "Taylor" }, "Echo whisper/listenForWhisper");

  const forbidden = heard("forbidden");
  e1.private(unique("forbidden")).error((error) => got.forbidden(error));
  const error = await within(WAIT_MS, "Echo .error()", forbidden);
  check(error?.type === "AuthError" && error?.status === 401, "Echo .error() on a bad authorization", error);

  const roomName = unique("room");
  const here1 = heard("here1");
  const joining = heard("joining");
  const leaving = heard("leaving");
  e1.join(roomName)
    .here((users) => got.here1(users))
    .joining((user) => got.joining(user))
    .leaving((user) => got.leaving(user));
  checkEqual(await within(WAIT_MS, "Echo here (1)", here1), [{ id: 1, name: "Taylor" }], "Echo join().here lists the first user");
  const here2 = heard("here2");
  e2.join(roomName).here((users) => got.here2(users));
  const both = await within(WAIT_MS, "Echo here (2)", here2);
  checkEqual(
    both.map((u) => u.name).sort(),
    ["Abigail", "Taylor"],
    "Echo join().here lists both users",
  );
  checkEqual(await within(WAIT_MS, "Echo joining", joining), { id: 2, name: "Abigail" }, "Echo joining()");
  e2.leave(roomName);
  checkEqual(await within(WAIT_MS, "Echo leaving", leaving), { id: 2, name: "Abigail" }, "Echo leaving()");

  e1.disconnect();
  e2.disconnect();
  ok("Echo disconnects");
}

async function httpErrors({ port }) {
  const good = api(port);
  const response = await good.trigger(unique("ch"), "e", { ok: true });
  check(response.status === 200, "the right secret: 200", response.status);

  let failure = await failureOf("wrong secret", () =>
    api(port, { ...APPS.main, secret: "wrong" }).trigger(unique("ch"), "e", {}),
  );
  check(failure.status === 401, "wrong secret: 401", failure);
  failure = await failureOf("wrong secret GET", () => api(port, { ...APPS.main, secret: "wrong" }).get({ path: "/channels" }));
  check(failure.status === 401, "wrong secret on GET /channels: 401", failure);
  failure = await failureOf("wrong key", () => api(port, { ...APPS.main, key: "quiet-key" }).trigger(unique("ch"), "e", {}));
  check(failure.status === 401, "another app's key: 401", failure);

  failure = await failureOf("disabled app", () => api(port, APPS.off).trigger(unique("ch"), "e", {}));
  check(failure.status === 403, "disabled app: 403", failure);
  failure = await failureOf("unknown app", () => api(port, { id: "9999", key: "nobody", secret: "x" }).trigger(unique("ch"), "e", {}));
  check(failure.status === 404, "unknown app id: 404", failure);

  const fits = await good.trigger(unique("ch"), "big", "x".repeat(10_000));
  check(fits.status === 200, "10,000 bytes of data: 200", fits.status);
  failure = await failureOf("too big", () => good.trigger(unique("ch"), "big", "x".repeat(11 * 1024)));
  check(failure.status === 413, "11 KiB of data: 413", failure);
  failure = await failureOf("too big in a batch", () =>
    good.triggerBatch([{ channel: unique("ch"), name: "big", data: "x".repeat(11 * 1024) }]),
  );
  check(failure.status === 413, "11 KiB of data in a batch: 413", failure);

  const cases = [
    ["no name", { channels: [unique("ch")], data: "{}" }, "name"],
    ["channels not a list", { name: "e", channels: 5, data: "{}" }, "channels"],
    ["no data", { name: "e", channels: [unique("ch")] }, "data"],
    ["bad channel name", { name: "e", channels: ["has space"], data: "{}" }, "channel"],
    ["event name too long", { name: "e".repeat(201), channels: [unique("ch")], data: "{}" }, "name"],
  ];
  for (const [what, body, field] of cases) {
    failure = await failureOf(what, () => good.post({ path: "/events", body }));
    check(
      failure.status === 400 && failure.body.toLowerCase().includes(field),
      `${what}: 400 naming ${field}`,
      failure,
    );
  }
  failure = await failureOf("batch bad channel", () => good.triggerBatch([{ channel: "bad channel!", name: "e", data: "{}" }]));
  check(failure.status === 400 && failure.body.toLowerCase().includes("channel"), "batch with a bad channel name: 400", failure);
  failure = await failureOf("user_count on non-presence", () =>
    good.get({ path: "/channels", params: { info: "user_count" } }),
  );
  check(failure.status === 400, "GET /channels?info=user_count without the presence- prefix: 400", failure);
}

async function cluster({ nodes }) {
  if (!Array.isArray(nodes) || nodes.length !== 3) {
    throw new Error(`cluster wants three nodes, got ${show(nodes)}`);
  }
  const [n1, n2, n3] = nodes;
  const sdks = nodes.map((n) => api(n.port));
  const user = (id) => ({ user_id: id, user_info: { name: id } });
  // Alice on every node, bob only on n2 (the node that dies), carol on n3.
  const a1 = client(n1.port, APPS.main, { user: user("alice") });
  const a2 = client(n2.port, APPS.main, { user: user("alice") });
  const b2 = client(n2.port, APPS.main, { user: user("bob") });
  const c3 = client(n3.port, APPS.main, { user: user("carol") });
  const everyone = { a1, a2, b2, c3 };
  await Promise.all(Object.entries(everyone).map(([who, p]) => connected(p, who)));
  ok("clients connected to three nodes");

  const room = unique("presence-cluster");
  const logs = {};
  const [a1Room, a1Members] = await subscribed(a1, room);
  logs.a1 = new ChannelLog(a1Room);
  check(a1Members.count === 1, "alice on n1 first", a1Members.count);
  const [b2Room, b2Members] = await subscribed(b2, room);
  logs.b2 = new ChannelLog(b2Room);
  checkEqual(Object.keys(b2Members.members).sort(), ["alice", "bob"], "bob on n2 sees alice from n1");
  await logs.a1.waitFor("bob joins on n1", (e) => e.name === "pusher:member_added" && e.data?.id === "bob");
  ok("member_added crosses nodes (n2 -> n1)");
  const [c3Room, c3Members] = await subscribed(c3, room);
  logs.c3 = new ChannelLog(c3Room);
  checkEqual(Object.keys(c3Members.members).sort(), ["alice", "bob", "carol"], "carol on n3 sees everyone");
  const [a2Room, a2Members] = await subscribed(a2, room);
  logs.a2 = new ChannelLog(a2Room);
  check(a2Members.count === 3, "alice's second connection (n2) sees 3 members", a2Members.count);
  for (const who of ["a1", "b2"]) {
    await logs[who].waitFor("carol joins", (e) => e.name === "pusher:member_added" && e.data?.id === "carol");
  }
  ok("member_added for carol reaches n1 and n2");
  await sleep(1000);
  const addedAlice = Object.entries(logs).flatMap(([who, log]) =>
    log.named("pusher:member_added").filter((e) => e.data?.id === "alice").map(() => who),
  );
  checkEqual(addedAlice, [], "alice joined before bob and carol: nobody was told she joined again");

  for (const [i, sdk] of sdks.entries()) {
    const users = await json(await sdk.get({ path: `/channels/${room}/users` }));
    checkEqual(sortedIds(users.users ?? []), ["alice", "bob", "carol"], `users list from n${i + 1} is cluster-wide`);
    const info = await json(await sdk.get({ path: `/channels/${room}`, params: { info: "user_count,subscription_count" } }));
    check(info.user_count === 3 && info.subscription_count === 4, `channel info from n${i + 1}: 3 users, 4 subscriptions`, info);
  }

  // Events from every node reach every subscriber exactly once.
  const fan = unique("fanout");
  const fanLogs = {};
  for (const [who, p] of Object.entries(everyone)) {
    const [channel] = await subscribed(p, fan);
    fanLogs[who] = new ChannelLog(channel);
  }
  // Subscriptions reach the other nodes asynchronously: probe until all see one.
  await poll(
    "a probe from n1 reaching all four clients",
    async () => {
      await sdks[0].trigger(fan, "probe", {});
      await sleep(200);
      return Object.values(fanLogs).map((log) => log.named("probe").length);
    },
    (counts) => counts.every((n) => n >= 1),
  );
  ok("fan-out channel known on every node");
  for (const [i, sdk] of sdks.entries()) {
    await sdk.trigger(fan, `from-n${i + 1}`, { node: i + 1 });
  }
  for (const [who, log] of Object.entries(fanLogs)) {
    for (let i = 1; i <= 3; i += 1) {
      await log.waitForEvent(`from-n${i}`, `${who} gets the event from n${i}`);
    }
  }
  await sleep(1000);
  for (const [who, log] of Object.entries(fanLogs)) {
    const counts = [1, 2, 3].map((i) => log.named(`from-n${i}`).length);
    checkEqual(counts, [1, 1, 1], `${who}: events triggered on n1, n2, n3 arrive exactly once each`);
  }

  // Client events cross nodes, to every other connection (alice's other one too).
  const waves = Object.fromEntries(
    Object.entries(everyone).map(([who, p]) => [who, new Recorder(p.channel(room), "client-wave")]),
  );
  a1.channel(room).trigger("client-wave", { from: "alice" });
  for (const who of ["a2", "b2", "c3"]) {
    const [event] = await waves[who].waitFor(`${who} gets alice's client event`);
    checkEqual(event.meta, { user_id: "alice" }, `client event from n1 reaches ${who} with user_id`);
  }
  await sleep(1000);
  checkEqual(
    Object.fromEntries(Object.entries(waves).map(([who, rec]) => [who, rec.items.length])),
    { a1: 0, a2: 1, b2: 1, c3: 1 },
    "client event: once to each other connection, never to the sender",
  );

  // n2 dies: bob (only there) leaves everywhere once its lease runs out; alice stays.
  process.kill(n2.pid, "SIGKILL");
  ok(`killed n2 (pid ${n2.pid}) with SIGKILL`);
  for (const who of ["a1", "c3"]) {
    const [gone] = await logs[who].waitFor(
      "bob leaves after n2 died",
      (e) => e.name === "pusher:member_removed" && e.data?.id === "bob",
      1,
      10_000,
    );
    checkEqual(gone.data.id, "bob", `${who} sees member_removed for bob (dead node)`);
  }
  for (const i of [0, 2]) {
    await poll(
      `users list from n${i + 1} without bob`,
      async () => json(await sdks[i].get({ path: `/channels/${room}/users` })),
      (v) => JSON.stringify(sortedIds(v.users ?? [])) === JSON.stringify(["alice", "carol"]),
      10_000,
    );
    ok(`users list from n${i + 1} drops the dead node's only user`);
  }
  await sleep(500);
  for (const who of ["a1", "c3"]) {
    const left = logs[who].named("pusher:member_removed").map((e) => e.data?.id);
    checkEqual(left, ["bob"], `${who}: alice stays (she has connections on live nodes)`);
  }
  const info = await json(await sdks[0].get({ path: `/channels/${room}`, params: { info: "user_count" } }));
  checkEqual(info.user_count, 2, "user_count 2 after the node died");
  // The dead node's clients would retry forever: stop them now.
  a2.disconnect();
  b2.disconnect();
}

const SCENARIOS = {
  connect,
  public: publicChannels,
  private: privateChannels,
  presence,
  "client-events": clientEvents,
  "subscription-count": subscriptionCount,
  echo,
  "http-errors": httpErrors,
  cluster,
};

async function main() {
  const [scenario, rawArgs = "{}"] = process.argv.slice(2);
  const run = SCENARIOS[scenario];
  if (!run) {
    console.error(`usage: pusher-suite.mjs <${Object.keys(SCENARIOS).join("|")}> '<json args>'`);
    process.exit(2);
  }
  const fail = (why) => {
    console.error(`FAIL ${scenario}: ${why}`);
    disconnectAll();
    process.exit(1);
  };
  process.on("unhandledRejection", (e) => fail(`unhandled rejection: ${e?.stack ?? show(e)}`));
  const stuck = setTimeout(() => fail(`did not finish within ${SCENARIO_MS} ms`), SCENARIO_MS);
  try {
    await run(JSON.parse(rawArgs));
  } catch (e) {
    fail(e?.stack ?? show(e));
  }
  clearTimeout(stuck);
  disconnectAll();
  console.log(`ok: scenario ${scenario} passed`);
  // pusher-js keeps timers: leave now rather than wait for them.
  process.exit(0);
}

await main();
