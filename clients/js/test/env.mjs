// Shared by the live and browser tests: the server they run against, tokens, the HTTP API.
import { createHmac } from 'node:crypto';
import assert from 'node:assert/strict';
import { WebSocket as WsWebSocket } from 'ws';

export const env = {
  url: process.env.SWITCHBOARD_URL,
  http: process.env.SWITCHBOARD_HTTP,
  apiKey: process.env.SWITCHBOARD_API_KEY,
  secret: process.env.SWITCHBOARD_SECRET,
};

export const HOW_TO_RUN =
  'these tests need a running Switchboard server; they are run by ' +
  '`cargo test -p switchboard-tests --test jsclient`, which starts one and sets SWITCHBOARD_URL, ' +
  'SWITCHBOARD_HTTP, SWITCHBOARD_API_KEY and SWITCHBOARD_SECRET';

/** The names of the variables that are not set. */
export function missingEnv() {
  return Object.entries({
    SWITCHBOARD_URL: env.url,
    SWITCHBOARD_HTTP: env.http,
    SWITCHBOARD_API_KEY: env.apiKey,
    SWITCHBOARD_SECRET: env.secret,
  })
    .filter(([, v]) => !v)
    .map(([k]) => k);
}

/** Node's WebSocket when present (Node 22+, or 20 with --experimental-websocket), else `ws`'s. */
export const NodeWebSocket = globalThis.WebSocket ?? WsWebSocket;

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** An HS256 JWT over `claims`, signed with `secret` (the server's by default). */
export function mint(claims, secret = env.secret) {
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  const sig = createHmac('sha256', secret).update(head).digest('base64url');
  return `${head}.${sig}`;
}

export const now = () => Math.floor(Date.now() / 1000);

/** A connection token for `sub`, valid for `ttl` seconds. */
export const userToken = (sub, ttl = 600, extra = {}) => mint({ sub, exp: now() + ttl, ...extra });

/** POST /api/publish; asserts 202. */
export async function apiPublish(channel, data) {
  const res = await fetch(`${env.http}/api/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${env.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  const body = await res.text();
  assert.equal(res.status, 202, `POST /api/publish ${channel}: ${res.status} ${body}`);
}

export const unique = (prefix) => `${prefix}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 7)}`;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function until(cond, timeout = 5000, what = 'condition') {
  const end = Date.now() + timeout;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Collects every emission of `event` on `emitter`. */
export function record(emitter, event) {
  const list = [];
  emitter.on(event, (e) => list.push(e));
  return list;
}

/** Rejects with `what` if `promise` takes longer than `ms`. */
export function within(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
