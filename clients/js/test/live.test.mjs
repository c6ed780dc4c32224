// Live tests of the built client (dist/) against a real Switchboard server.
// Run by `cargo test -p switchboard-tests --test jsclient`, which starts the server with the
// namespaces below and sets SWITCHBOARD_URL, SWITCHBOARD_HTTP, SWITCHBOARD_API_KEY and
// SWITCHBOARD_SECRET. Without them every test here fails (on purpose: nothing is skipped).
//
// Server configuration assumed:
//   chat:   subscribe = "authenticated", publish = "subscribers", presence, join_leave,
//           history_size = 100, history_ttl = "5m", recover = true
//   secret: subscribe = "token", publish = "subscribers"
//   news:   subscribe = "anyone", publish = "none", history_size = 10, recover = true
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '../dist/index.js';
import {
  env, HOW_TO_RUN, missingEnv, NodeWebSocket, mint, now, userToken, apiPublish, unique, sleep, until, record, within,
} from './env.mjs';

const missing = missingEnv();
if (missing.length > 0) {
  test('live tests: server environment', () => {
    assert.fail(`${missing.join(', ')} not set: ${HOW_TO_RUN}`);
  });
} else {
  liveTests();
}

function liveTests() {
  let clients = [];
  afterEach(() => {
    for (const c of clients) c.disconnect();
    clients = [];
  });

  /** A client that records the sockets it opens (so a test can close one under it). */
  function client(options = {}) {
    const sockets = [];
    class RecordingWebSocket extends NodeWebSocket {
      constructor(url) {
        super(url);
        sockets.push(this);
      }
    }
    const c = new Client(env.url, { WebSocket: RecordingWebSocket, minReconnectDelay: 100, maxReconnectDelay: 1000, ...options });
    c.sockets = sockets;
    clients.push(c);
    return c;
  }

  async function connected(c) {
    const ready = within(c.next('connected'), 5000, 'connected');
    const failed = new Promise((_, reject) => c.once('error', (e) => reject(e)));
    c.connect();
    return Promise.race([ready, failed]);
  }

  test('connects with a token in the URL; welcome names the user and expiry', async () => {
    const exp = now() + 600;
    const c = client({ token: mint({ sub: 'alice', exp }) });
    const ev = await connected(c);
    assert.equal(c.state, 'connected');
    assert.equal(ev.user, 'alice');
    assert.equal(ev.expiresAt, exp);
    assert.ok(ev.connId.length > 0);
  });

  test('connects with getToken', async () => {
    let calls = 0;
    const c = client({ getToken: async () => (calls++, userToken('bob')) });
    const ev = await connected(c);
    assert.equal(ev.user, 'bob');
    assert.equal(calls, 1);
  });

  test('chat: publications from another client and from the HTTP API', async () => {
    const channel = unique('chat:x');
    const a = client({ token: userToken('ann') });
    const b = client({ token: userToken('ben') });
    await Promise.all([connected(a), connected(b)]);
    const subA = a.subscribe(channel);
    const subB = b.subscribe(channel);
    const gotA = record(subA, 'publication');
    const gotB = record(subB, 'publication');
    await within(Promise.all([subA.ready(), subB.ready()]), 5000, 'both subscribed');
    await subA.publish({ text: 'from ann', n: 1 });
    await apiPublish(channel, { text: 'from the API', n: 2 });
    await until(() => gotA.length === 2 && gotB.length === 2, 5000, 'two publications on both');
    for (const got of [gotA, gotB]) {
      assert.deepEqual(got.map((p) => p.data), [{ text: 'from ann', n: 1 }, { text: 'from the API', n: 2 }]);
      assert.equal(got[1].offset, got[0].offset + 1, 'history channels number publications');
    }
    // The history op returns them too.
    const page = await subB.history({ limit: 10 });
    assert.deepEqual(page.publications.map((p) => p.data), [{ text: 'from ann', n: 1 }, { text: 'from the API', n: 2 }]);
    assert.equal(page.epoch, subB.epoch);
  });

  test('chat: join, leave and presence', async () => {
    const channel = unique('chat:jl');
    const a = client({ token: userToken('ann') });
    const b = client({ token: userToken('ben', 600, { info: { name: 'Ben' } }) });
    await Promise.all([connected(a), connected(b)]);
    const subA = a.subscribe(channel, { presence: { name: 'Ann' } });
    const joins = record(subA, 'join');
    const leaves = record(subA, 'leave');
    await within(subA.ready(), 5000, 'ann subscribed');
    const subB = b.subscribe(channel);
    await within(subB.ready(), 5000, 'ben subscribed');
    await until(() => joins.some((j) => j.member.user === 'ben'), 5000, 'ben joining');
    const join = joins.find((j) => j.member.user === 'ben');
    assert.equal(join.member.conn_id, b.connId);
    assert.deepEqual(join.member.info, { name: 'Ben' }, "info falls back to the token's info");
    const members = await subA.presence();
    const byUser = Object.fromEntries(members.map((m) => [m.user, m]));
    assert.deepEqual(byUser.ann?.info, { name: 'Ann' });
    assert.equal(byUser.ben?.conn_id, b.connId);
    subB.unsubscribe();
    await until(() => leaves.some((l) => l.member.user === 'ben'), 5000, 'ben leaving');
  });

  test('secret: a good subscription token subscribes, a bad one gets bad_token', async () => {
    const a = client({ token: userToken('ann') });
    await connected(a);
    const good = unique('secret:x');
    const sub = a.subscribe(good, { getToken: async (channel) => mint({ sub: 'ann', channel, exp: now() + 60 }) });
    const got = record(sub, 'publication');
    await within(sub.ready(), 5000, 'subscribed with a good token');
    await apiPublish(good, 'hush');
    await until(() => got.length === 1, 5000, 'publication on the secret channel');
    assert.equal(got[0].data, 'hush');

    const bad = unique('secret:x');
    const badSub = a.subscribe(bad, { token: mint({ sub: 'ann', channel: bad, exp: now() + 60 }, 'not-the-secret') });
    const errors = record(badSub, 'error');
    await assert.rejects(within(badSub.ready(), 5000, 'bad token refused'), (e) => e.code === 'bad_token');
    assert.equal(errors[0]?.code, 'bad_token');
    assert.equal(badSub.state, 'unsubscribed');
    // A token for another channel is refused too, and the connection stays up.
    const other = a.subscribe(unique('secret:x'), { token: mint({ sub: 'ann', channel: good, exp: now() + 60 }) });
    await assert.rejects(within(other.ready(), 5000, 'mismatched token refused'), (e) => e.code === 'bad_token');
    assert.equal(a.state, 'connected');
    assert.equal(a.sockets.length, 1);
  });

  /** Subscribes `c` to a fresh chat channel that has one publication; returns the subscription. */
  async function subscribedWithHistory(c) {
    const channel = unique('chat:r');
    await apiPublish(channel, { n: 0 });
    const sub = c.subscribe(channel);
    const subscribed = record(sub, 'subscribed');
    const pubs = record(sub, 'publication');
    await within(sub.ready(), 5000, 'subscribed');
    assert.equal(typeof sub.epoch, 'string');
    assert.equal(sub.offset, 1);
    return { channel, sub, subscribed, pubs };
  }

  test('recovery: disconnect(), 5 API publications, connect() recovers them in order exactly once', async () => {
    const a = client({ getToken: async () => userToken('ann') });
    await connected(a);
    const { channel, sub, subscribed, pubs } = await subscribedWithHistory(a);
    const epoch = sub.epoch;
    a.disconnect();
    for (let n = 1; n <= 5; n++) await apiPublish(channel, { n });
    await connected(a);
    await until(() => subscribed.length === 2, 5000, 'resubscribed');
    assert.equal(subscribed[1].recovered, true, 'recovered');
    assert.equal(subscribed[1].wasRecovering, true);
    assert.equal(subscribed[1].epoch, epoch);
    await until(() => pubs.length === 5, 5000, 'five recovered publications');
    await apiPublish(channel, { n: 6 });
    await until(() => pubs.length === 6, 5000, 'the live one after them');
    await sleep(200);
    assert.deepEqual(pubs.map((p) => p.data.n), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(pubs.map((p) => p.offset), [2, 3, 4, 5, 6, 7]);
  });

  test('recovery: the socket drops under the client; it reconnects and recovers by itself', async () => {
    const a = client({ getToken: async () => userToken('ann'), minReconnectDelay: 400, maxReconnectDelay: 400 });
    await connected(a);
    const { channel, subscribed, pubs } = await subscribedWithHistory(a);
    const reconnected = a.next('connected');
    a.sockets[0].close(4000, 'test drops the link');
    for (let n = 1; n <= 5; n++) await apiPublish(channel, { n });
    await within(reconnected, 5000, 'reconnected');
    await until(() => subscribed.length === 2, 5000, 'resubscribed');
    assert.equal(subscribed[1].recovered, true);
    await until(() => pubs.length === 5, 5000, 'five publications');
    await sleep(200);
    assert.deepEqual(pubs.map((p) => p.data.n), [1, 2, 3, 4, 5], 'in order, exactly once');
    assert.equal(a.sockets.length, 2);
  });

  test('recovery from an unknown epoch reports recovered:false', async () => {
    const a = client({ token: userToken('ann') });
    await connected(a);
    const channel = unique('chat:r');
    await apiPublish(channel, 'x');
    const sub = a.subscribe(channel, { since: { epoch: 'no-such-epoch', offset: 1 } });
    const ev = await within(sub.next('subscribed'), 5000, 'subscribed');
    assert.equal(ev.recovered, false);
    assert.equal(ev.wasRecovering, true);
    assert.notEqual(ev.epoch, 'no-such-epoch');
  });

  test('news: anyone may subscribe; history and recovery without a token', async () => {
    const a = client();
    await connected(a);
    const channel = unique('news:n');
    await apiPublish(channel, 'headline');
    const sub = a.subscribe(channel);
    const got = record(sub, 'publication');
    await within(sub.ready(), 5000, 'subscribed');
    assert.equal(sub.offset, 1);
    await assert.rejects(sub.publish('no'), (e) => e.code === 'forbidden' || e.code === 'publish_forbidden');
    await apiPublish(channel, 'second');
    await until(() => got.length === 1, 5000, 'publication');
    assert.deepEqual([got[0].data, got[0].offset], ['second', 2]);
  });

  test('a token that expired before connecting: 4401, then getToken and a good connection', async () => {
    let calls = 0;
    const c = client({
      token: mint({ sub: 'carl', exp: now() - 3600 }),
      getToken: async () => (calls++, userToken('carl')),
    });
    const connecting = record(c, 'connecting');
    const errors = record(c, 'error');
    c.connect();
    await within(c.next('connected'), 8000, 'connected with a fresh token');
    assert.ok(calls >= 1, 'getToken was called');
    assert.ok(
      connecting.some((e) => e.code === 4401),
      `expected a 4401 close first; saw ${JSON.stringify(connecting)}`,
    );
    assert.equal(c.user, 'carl');
    assert.deepEqual(errors, []);
  });

  test('the token is refreshed before it expires', async () => {
    const issued = [];
    const c = client({
      getToken: async () => {
        const exp = now() + 4;
        issued.push(exp);
        return mint({ sub: 'dora', exp });
      },
    });
    const errors = record(c, 'error');
    await connected(c);
    const first = c.expiresAt;
    assert.equal(first, issued[0]);
    await until(() => c.expiresAt > first, 6000, 'refreshed expires_at');
    assert.equal(c.state, 'connected');
    assert.equal(c.sockets.length, 1, 'refreshed in place, no reconnect');
    assert.deepEqual(errors, []);
  });

  test('an invalid signature: 4403, error event, no reconnect', async () => {
    let calls = 0;
    const c = client({ getToken: async () => (calls++, mint({ sub: 'eve', exp: now() + 600 }, 'wrong-secret')) });
    const errors = record(c, 'error');
    const disconnected = within(c.next('disconnected'), 5000, 'disconnected');
    c.connect();
    const ev = await disconnected;
    assert.equal(ev.code, 4403);
    assert.equal(errors[0]?.code, 'connection_refused');
    assert.equal(errors[0]?.closeCode, 4403);
    await sleep(1500); // longer than maxReconnectDelay
    assert.equal(c.state, 'disconnected');
    assert.equal(c.sockets.length, 1, 'no reconnect after 4403');
    assert.equal(calls, 1);
  });
}
