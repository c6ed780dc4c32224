// Unit tests of the built client (dist/) against a scripted mock server.
// Run: npm run build && npm test
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Client, SwitchboardError, jwtExpiry } from '../dist/index.js';
import { MockServer, ClientWebSocket, fakeJwt, sleep, record, until } from './mock-server.mjs';

let server;
let clients = [];
const realRandom = Math.random;

async function setup() {
  server = await MockServer.start();
}

function client(options = {}, url = server.url) {
  const c = new Client(url, { WebSocket: ClientWebSocket, minReconnectDelay: 20, maxReconnectDelay: 100, ...options });
  clients.push(c);
  return c;
}

afterEach(async () => {
  Math.random = realRandom;
  for (const c of clients) c.disconnect();
  clients = [];
  if (server) await server.stop();
  server = undefined;
});

/** Connects `c`, answers the first connection with `welcome`, returns that connection. */
async function connected(c, n = 0, welcome = {}) {
  if (c.state === 'disconnected') c.connect();
  const conn = await server.connection(n);
  const ready = c.next('connected');
  conn.welcome(welcome);
  await ready;
  return conn;
}

/** Answers the next subscribe on `conn` with `subscribed` at `epoch`/`offset`. */
async function answerSubscribe(conn, channel, reply = {}) {
  const op = await conn.take((m) => m.op === 'subscribe' && m.channel === channel);
  assert.equal(typeof op.id, 'number', 'subscribe carries an id');
  conn.send({ type: 'subscribed', id: op.id, channel, recoverable: true, recovered: false, publications: [], ...reply });
  return op;
}

function message(channel, offset, data = `m${offset}`) {
  return { type: 'message', channel, seq: offset, offset, data };
}

test('jwtExpiry reads exp from a base64url payload and ignores non-JWTs', () => {
  assert.equal(jwtExpiry(fakeJwt({ sub: 'ü-ñ', exp: 1767225600 })), 1767225600);
  assert.equal(jwtExpiry(fakeJwt({ sub: '42' })), undefined);
  assert.equal(jwtExpiry('not a token'), undefined);
  assert.equal(jwtExpiry('a.%%%.c'), undefined);
});

test('the token is sent URL-encoded as ?token=, keeping the query string', async () => {
  await setup();
  const token = 'ab+/c= d&e?';
  const c = client({ token }, `${server.url}?room=1`);
  c.connect();
  const conn = await server.connection(0);
  assert.equal(conn.token, token);
  assert.equal(conn.url.searchParams.get('room'), '1');
  assert.equal(conn.url.pathname, '/ws');
  assert.ok(!conn.url.search.includes(' '), 'no raw space in the URL');
});

test('getToken is called before connecting when no token is given', async () => {
  await setup();
  let calls = 0;
  const c = client({ getToken: async () => `t${++calls}` });
  const conn = await connected(c);
  assert.equal(conn.token, 't1');
  assert.equal(calls, 1);
});

test('refresh is sent with a new token before exp, at 80% of the lifetime', async () => {
  await setup();
  const issued = [];
  const getToken = async () => {
    const t = fakeJwt({ sub: '42', exp: Math.floor(Date.now() / 1000) + 3, n: issued.length });
    issued.push(t);
    return t;
  };
  const c = client({ getToken });
  const start = Date.now();
  const conn = await connected(c);
  const exp = jwtExpiry(issued[0]) * 1000;
  const refresh = await conn.op('refresh', 4000);
  const at = Date.now();
  assert.equal(issued.length, 2, 'getToken called again for the refresh');
  assert.equal(refresh.token, issued[1]);
  assert.equal(typeof refresh.id, 'number');
  assert.ok(at < exp - 500, `refresh at ${at - start} ms came less than 0.5 s before exp`);
  assert.ok(at >= start + 0.5 * (exp - start) - 100, `refresh at ${at - start} ms is too early`);
  conn.send({ type: 'refreshed', id: refresh.id, expires_at: jwtExpiry(issued[1]) });
  // The next refresh is scheduled from the new token.
  const again = await conn.op('refresh', 4000);
  assert.equal(again.token, issued[2]);
});

test('a failed refresh is reported as an error', async () => {
  await setup();
  let n = 0;
  const c = client({ getToken: async () => fakeJwt({ exp: Math.floor(Date.now() / 1000) + 3, n: n++ }) });
  const errors = record(c, 'error');
  const conn = await connected(c);
  const refresh = await conn.op('refresh', 4000);
  conn.send({ type: 'error', id: refresh.id, code: 'bad_token', message: 'sub changed' });
  await until(() => errors.length > 0, 1000, 'error event');
  assert.equal(errors[0].code, 'bad_token');
  assert.ok(errors[0] instanceof SwitchboardError);
});

test('reconnects with exponential backoff after abnormal closes, reset by welcome', async () => {
  await setup();
  Math.random = () => 0.999; // the top of each jitter window
  const c = client({ minReconnectDelay: 100, maxReconnectDelay: 400 });
  const connecting = record(c, 'connecting');
  c.connect();
  // Five attempts that never get a welcome: drop each at once.
  for (let i = 0; i < 5; i++) (await server.connection(i, 3000)).kill();
  const conn5 = await server.connection(5, 3000);
  const opened = server.connections.map((x) => x.openedAt);
  const expected = [100, 200, 400, 400, 400];
  for (let i = 0; i < 5; i++) {
    const gap = opened[i + 1] - opened[i];
    assert.ok(gap >= expected[i] * 0.9 - 5, `gap ${i} was ${gap} ms, expected ≈${expected[i]}`);
    assert.ok(gap < expected[i] + 300, `gap ${i} was ${gap} ms, expected ≈${expected[i]}`);
  }
  assert.deepEqual(
    connecting.slice(1).map((e) => e.code),
    [1006, 1006, 1006, 1006, 1006],
  );
  // A connection that got welcome resets the backoff.
  const ready = c.next('connected');
  conn5.welcome();
  await ready;
  const t = Date.now();
  conn5.kill();
  await server.connection(6, 3000);
  assert.ok(Date.now() - t < 380, 'first retry after a good connection uses the minimum delay');
  assert.equal(connecting.at(-1).attempt, 1);
});

test('full jitter: delays are spread over [0, cap]', async () => {
  const c = new Client('ws://127.0.0.1:1/ws', { WebSocket: ClientWebSocket, minReconnectDelay: 1000, maxReconnectDelay: 4000 });
  const samples = Array.from({ length: 200 }, () => c._backoff(5));
  assert.ok(samples.every((d) => d >= 0 && d <= 4000));
  assert.ok(Math.min(...samples) < 1000 && Math.max(...samples) > 3000, 'spread over the window');
});

test('4403 ends the connection: error event, disconnected, no reconnect', async () => {
  await setup();
  const c = client({ token: 'bad', getToken: async () => 'also-bad' });
  const errors = record(c, 'error');
  const disconnected = record(c, 'disconnected');
  const conn = await connected(c);
  conn.close(4403, 'invalid token');
  await until(() => disconnected.length === 1, 2000, 'disconnected');
  assert.equal(disconnected[0].code, 4403);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, 'connection_refused');
  assert.equal(errors[0].closeCode, 4403);
  assert.equal(c.state, 'disconnected');
  await sleep(400); // far more than maxReconnectDelay
  assert.equal(server.connections.length, 1, 'no reconnect after 4403');
});

test('4401 calls getToken again and reconnects with the new token', async () => {
  await setup();
  let calls = 0;
  const c = client({ getToken: async () => `token-${++calls}` });
  const errors = record(c, 'error');
  const conn = await connected(c);
  assert.equal(conn.token, 'token-1');
  conn.close(4401, 'token expired');
  const conn2 = await server.connection(1);
  assert.equal(conn2.token, 'token-2');
  assert.equal(calls, 2);
  assert.equal(errors.length, 0);
});

test('4401 without getToken: error and disconnected, no reconnect', async () => {
  await setup();
  const c = client({ token: 'static' });
  const errors = record(c, 'error');
  const conn = await connected(c);
  conn.close(4401, 'token expired');
  await until(() => c.state === 'disconnected', 2000, 'disconnected');
  assert.equal(errors[0]?.code, 'token_expired');
  await sleep(300);
  assert.equal(server.connections.length, 1);
});

test('1001 (draining) and 1013 reconnect', async () => {
  await setup();
  const c = client({ token: 't' });
  const conn = await connected(c);
  conn.close(1001, 'going away');
  const conn2 = await server.connection(1);
  conn2.welcome();
  await c.next('connected');
  conn2.close(1013, 'try again later');
  const conn3 = await server.connection(2);
  assert.equal(conn3.token, 't', 'without getToken the same token is used again');
});

test('resubscribes with recover after a reconnect; recovered publications come first, in order', async () => {
  await setup();
  const c = client({ token: 't' });
  const conn = await connected(c);
  const sub = c.subscribe('chat:r');
  const subscribed = record(sub, 'subscribed');
  const pubs = record(sub, 'publication');
  const first = await answerSubscribe(conn, 'chat:r', { epoch: 'E1', offset: 3 });
  assert.equal(first.recover, undefined, 'no recover on the first subscribe');
  conn.send(message('chat:r', 4));
  await until(() => pubs.length === 1, 1000, 'first publication');
  assert.deepEqual(sub.position, { epoch: 'E1', offset: 4 });

  conn.kill();
  const conn2 = await server.connection(1);
  conn2.welcome();
  const op = await conn2.take((m) => m.op === 'subscribe');
  assert.deepEqual(op.recover, { epoch: 'E1', offset: 4 });
  assert.equal(typeof op.id, 'number');
  conn2.send({
    type: 'subscribed', id: op.id, channel: 'chat:r', epoch: 'E1', offset: 6, recoverable: true, recovered: true,
    publications: [{ offset: 5, data: 'm5' }, { offset: 6, data: 'm6' }],
  });
  conn2.send(message('chat:r', 6)); // a duplicate of a recovered one
  conn2.send(message('chat:r', 7));
  await until(() => pubs.length === 4, 1000, 'four publications');
  await sleep(50);
  assert.deepEqual(pubs.map((p) => [p.offset, p.data]), [[4, 'm4'], [5, 'm5'], [6, 'm6'], [7, 'm7']]);
  assert.deepEqual(
    subscribed.map((s) => [s.recovered, s.wasRecovering, s.epoch, s.offset]),
    [[false, false, 'E1', 3], [true, true, 'E1', 6]],
  );
});

test('duplicates are dropped and a gap resubscribes with recover', async () => {
  await setup();
  const c = client();
  const conn = await connected(c);
  const sub = c.subscribe('chat:g');
  const pubs = record(sub, 'publication');
  await answerSubscribe(conn, 'chat:g', { epoch: 'E', offset: 10 });
  for (const o of [11, 11, 10, 12]) conn.send(message('chat:g', o));
  await until(() => pubs.length === 2, 1000, 'two publications');
  conn.send(message('chat:g', 14)); // 13 is missing
  const unsub = await conn.take((m) => m.op === 'unsubscribe' && m.channel === 'chat:g');
  conn.send({ type: 'ack', id: unsub.id });
  const resub = await conn.take((m) => m.op === 'subscribe' && m.channel === 'chat:g');
  assert.deepEqual(resub.recover, { epoch: 'E', offset: 12 });
  conn.send(message('chat:g', 15)); // in flight before the resubscribe: dropped, recovery has it
  conn.send({
    type: 'subscribed', id: resub.id, channel: 'chat:g', epoch: 'E', offset: 15, recoverable: true, recovered: true,
    publications: [13, 14, 15].map((offset) => ({ offset, data: `m${offset}` })),
  });
  conn.send(message('chat:g', 15));
  conn.send(message('chat:g', 16));
  await until(() => pubs.length === 6, 1000, 'six publications');
  await sleep(50);
  assert.deepEqual(pubs.map((p) => p.offset), [11, 12, 13, 14, 15, 16]);
});

test('recovered:false after a recover attempt is surfaced, and the new position is adopted', async () => {
  await setup();
  const c = client();
  const conn = await connected(c);
  const sub = c.subscribe('chat:s');
  const subscribed = record(sub, 'subscribed');
  const pubs = record(sub, 'publication');
  await answerSubscribe(conn, 'chat:s', { epoch: 'old', offset: 7 });
  await sub.ready();
  conn.kill();
  const conn2 = await server.connection(1);
  conn2.welcome();
  const op = await answerSubscribe(conn2, 'chat:s', { epoch: 'new', offset: 2, recovered: false });
  assert.deepEqual(op.recover, { epoch: 'old', offset: 7 });
  conn2.send(message('chat:s', 3));
  await until(() => pubs.length === 1, 1000, 'publication after the new position');
  assert.equal(subscribed.length, 2);
  assert.equal(subscribed[1].recovered, false);
  assert.equal(subscribed[1].wasRecovering, true, 'the app can tell its state is stale');
  assert.deepEqual(sub.position, { epoch: 'new', offset: 3 });
});

test('unsubscribed with code resubscribe subscribes again with recover', async () => {
  await setup();
  const c = client();
  const conn = await connected(c);
  const sub = c.subscribe('chat:u');
  const unsubscribed = record(sub, 'unsubscribed');
  await answerSubscribe(conn, 'chat:u', { epoch: 'E', offset: 1 });
  conn.send(message('chat:u', 2));
  conn.send({ type: 'unsubscribed', channel: 'chat:u', code: 'resubscribe', message: 'broker reconnected' });
  const op = await conn.take((m) => m.op === 'subscribe');
  assert.deepEqual(op.recover, { epoch: 'E', offset: 2 });
  assert.equal(unsubscribed.length, 0);
  assert.equal(sub.state, 'subscribing');
  // Any other code ends the subscription.
  conn.send({ type: 'subscribed', id: op.id, channel: 'chat:u', epoch: 'E', offset: 2, recovered: true, publications: [] });
  await until(() => sub.state === 'subscribed');
  conn.send({ type: 'unsubscribed', channel: 'chat:u', code: 'forbidden', message: 'kicked' });
  await until(() => unsubscribed.length === 1);
  assert.equal(unsubscribed[0].code, 'forbidden');
  assert.equal(c.getSubscription('chat:u'), undefined);
});

test('client-silence: ping op after ping_interval+pong_timeout, reconnect when no pong', async () => {
  await setup();
  const c = client();
  const connecting = record(c, 'connecting');
  const t0 = Date.now();
  const conn = await connected(c, 0, { ping_interval_ms: 150, pong_timeout_ms: 100 });
  const ping = await conn.op('ping', 2000);
  const silent = Date.now() - t0;
  assert.ok(silent >= 230, `ping after ${silent} ms of silence, expected ≥ 250`);
  assert.deepEqual(Object.keys(ping).filter((k) => k !== 'id'), ['op']);
  conn.send({ type: 'pong', id: ping.id });
  // Answered: the link stays; the next ping comes after another silent period.
  await conn.op('ping', 2000);
  assert.equal(server.connections.length, 1);
  // Not answered: the client gives up on the link and reconnects.
  await conn.whenClosed(2000);
  await server.connection(1, 2000);
  assert.equal(connecting.at(-1).code, 4000);
});

test('no ping op while frames keep arriving', async () => {
  await setup();
  const c = client();
  const conn = await connected(c, 0, { ping_interval_ms: 150, pong_timeout_ms: 100 });
  const sub = c.subscribe('news:x');
  const op = await conn.op('subscribe');
  conn.send({ type: 'ack', id: op.id });
  for (let i = 0; i < 12; i++) {
    conn.send({ type: 'message', channel: 'news:x', seq: i + 1, data: i });
    await sleep(50);
  }
  assert.equal(conn.messages.filter((m) => m.msg.op === 'ping').length, 0);
  assert.equal(sub.state, 'subscribed');
});

test('ack means subscribed without a position; live messages without offset pass through', async () => {
  await setup();
  const c = client();
  const conn = await connected(c);
  const sub = c.subscribe('plain');
  const subscribed = record(sub, 'subscribed');
  const pubs = record(sub, 'publication');
  const op = await conn.op('subscribe');
  assert.equal(typeof op.id, 'number');
  conn.send({ type: 'ack', id: op.id });
  conn.send({ type: 'message', channel: 'plain', seq: 1, data: { a: 1 } });
  conn.send({ type: 'message', channel: 'plain', seq: 1, data: { a: 2 } }); // seq is not an offset
  await until(() => pubs.length === 2, 1000, 'two publications');
  assert.deepEqual(subscribed[0], { channel: 'plain', recovered: false, wasRecovering: false, recoverable: false });
  assert.equal(sub.position, undefined);
  // After a reconnect there is nothing to recover from.
  conn.kill();
  const conn2 = await server.connection(1);
  conn2.welcome();
  const op2 = await conn2.op('subscribe');
  assert.equal(op2.recover, undefined);
});

test('while disconnected: subscribe and unsubscribe are remembered, publish rejects', async () => {
  await setup();
  const c = client();
  const a = c.subscribe('chat:a', { presence: { name: 'Ann' } });
  const b = c.subscribe('chat:b');
  b.unsubscribe();
  await assert.rejects(c.publish('chat:a', 1), (e) => e instanceof SwitchboardError && e.code === 'disconnected');
  await assert.rejects(a.publish(1), (e) => e.code === 'disconnected');
  const conn = await connected(c);
  const op = await conn.op('subscribe');
  assert.equal(op.channel, 'chat:a');
  assert.deepEqual(op.presence, { name: 'Ann' });
  await sleep(50);
  assert.equal(conn.messages.filter((m) => m.msg.op === 'subscribe').length, 1, 'chat:b was not subscribed');
  assert.throws(() => c.subscribe('chat:a'), (e) => e.code === 'already_subscribed');
});

test('publish, presence and history resolve from replies and reject on errors', async () => {
  await setup();
  const c = client();
  const conn = await connected(c);
  const sub = c.subscribe('chat:p');
  await answerSubscribe(conn, 'chat:p', { epoch: 'E', offset: 0 });
  const p1 = sub.publish({ text: 'hi' });
  const op1 = await conn.op('publish');
  assert.deepEqual(op1.data, { text: 'hi' });
  conn.send({ type: 'ack', id: op1.id });
  await p1;
  const p2 = sub.publish('x');
  const op2 = await conn.op('publish');
  conn.send({ type: 'error', id: op2.id, code: 'forbidden', message: 'no' });
  await assert.rejects(p2, (e) => e.code === 'forbidden' && e.channel === 'chat:p');
  const pr = sub.presence();
  const op3 = await conn.op('presence');
  const members = [{ conn_id: 'a', user: '42', info: null }];
  conn.send({ type: 'presence', id: op3.id, channel: 'chat:p', members });
  assert.deepEqual(await pr, members);
  const h = sub.history({ limit: 2, since: { epoch: 'E', offset: 1 } });
  const op4 = await conn.op('history');
  assert.deepEqual([op4.limit, op4.since], [2, { epoch: 'E', offset: 1 }]);
  conn.send({ type: 'history', id: op4.id, channel: 'chat:p', epoch: 'E', offset: 3, publications: [{ offset: 2, data: 'b' }, { offset: 3, data: 'c' }] });
  assert.deepEqual(await h, { channel: 'chat:p', epoch: 'E', offset: 3, publications: [{ offset: 2, data: 'b' }, { offset: 3, data: 'c' }] });
  // A request in flight when the connection drops rejects with `disconnected`.
  const p3 = sub.publish('lost');
  await conn.op('publish');
  conn.kill();
  await assert.rejects(p3, (e) => e.code === 'disconnected');
});

test('requests time out', async () => {
  await setup();
  const c = client({ requestTimeout: 100 });
  await connected(c);
  await assert.rejects(c.publish('chat:t', 1), (e) => e.code === 'timeout');
});

test('subscription tokens: getToken(channel) per subscribe; bad_token ends the subscription', async () => {
  await setup();
  const c = client();
  const conn = await connected(c);
  const asked = [];
  const sub = c.subscribe('secret:x', { getToken: async (ch) => (asked.push(ch), 'sub-token') });
  const errors = record(sub, 'error');
  const ended = record(sub, 'unsubscribed');
  const op = await conn.op('subscribe');
  assert.equal(op.token, 'sub-token');
  assert.deepEqual(asked, ['secret:x']);
  conn.send({ type: 'error', id: op.id, code: 'bad_token', message: 'bad subscription token', channel: 'secret:x' });
  await until(() => ended.length === 1, 1000, 'unsubscribed');
  assert.equal(errors[0].code, 'bad_token');
  assert.equal(ended[0].code, 'bad_token');
  assert.equal(sub.state, 'unsubscribed');
  await assert.rejects(sub.ready(), (e) => e.code === 'unsubscribed');
});

test('join and leave frames reach the subscription', async () => {
  await setup();
  const c = client();
  const conn = await connected(c);
  const sub = c.subscribe('chat:j');
  const joins = record(sub, 'join');
  const leaves = record(sub, 'leave');
  await answerSubscribe(conn, 'chat:j', { epoch: 'E', offset: 0 });
  const member = { conn_id: 'n1-0-3.1', user: '42', info: { name: 'Ann' } };
  conn.send({ type: 'join', channel: 'chat:j', member });
  conn.send({ type: 'leave', channel: 'chat:j', member });
  await until(() => leaves.length === 1);
  assert.deepEqual(joins[0], { channel: 'chat:j', member });
});

test('disconnect() keeps positions; connect() recovers from them', async () => {
  await setup();
  let n = 0;
  const c = client({ getToken: async () => `t${++n}` });
  const conn = await connected(c);
  const sub = c.subscribe('chat:d');
  await answerSubscribe(conn, 'chat:d', { epoch: 'E', offset: 5 });
  await sub.ready();
  c.disconnect();
  await conn.whenClosed();
  assert.equal(c.state, 'disconnected');
  assert.equal(sub.state, 'subscribing');
  await sleep(150);
  assert.equal(server.connections.length, 1, 'no reconnect after disconnect()');
  c.connect();
  const conn2 = await server.connection(1);
  assert.equal(conn2.token, 't2', 'a fresh token for the new connect');
  conn2.welcome();
  const op = await conn2.op('subscribe');
  assert.deepEqual(op.recover, { epoch: 'E', offset: 5 });
});

test('a listener that throws does not break the client', async () => {
  await setup();
  const c = client();
  const conn = await connected(c);
  const sub = c.subscribe('chat:e');
  const pubs = [];
  const uncaught = [];
  const hadReportError = 'reportError' in globalThis;
  const saved = globalThis.reportError;
  globalThis.reportError = (e) => uncaught.push(e);
  try {
    sub.on('publication', () => {
      throw new Error('listener bug');
    });
    sub.on('publication', (p) => pubs.push(p));
    await answerSubscribe(conn, 'chat:e', { epoch: 'E', offset: 0 });
    conn.send(message('chat:e', 1));
    conn.send(message('chat:e', 2));
    await until(() => pubs.length === 2 && uncaught.length === 2, 1000, 'both delivered');
  } finally {
    if (hadReportError) globalThis.reportError = saved;
    else delete globalThis.reportError;
  }
  assert.equal(uncaught[0].message, 'listener bug');
});
