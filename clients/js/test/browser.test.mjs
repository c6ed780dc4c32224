// Browser test: the built client (dist/) as an ES module in headless Chromium, against a real
// Switchboard server. Run by `cargo test -p switchboard-tests --test jsclient` (which sets
// SWITCHBOARD_URL, SWITCHBOARD_HTTP, SWITCHBOARD_API_KEY and SWITCHBOARD_SECRET); needs
// /usr/bin/chromium, which `scripts/chromium` installs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, join, normalize, sep } from 'node:path';
import { HOW_TO_RUN, env, missingEnv, userToken, apiPublish, unique } from './env.mjs';

const CHROMIUM = '/usr/bin/chromium';
const dist = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist');

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>switchboard-client browser test</title>
<script type="module">
  import { Client } from '/dist/index.js';
  const params = new URLSearchParams(location.search);
  window.__received = [];
  window.__events = [];
  const client = new Client(params.get('url'), { token: params.get('token') });
  client.on('connected', (e) => window.__events.push('connected ' + e.connId));
  client.on('error', (e) => window.__events.push('error ' + e.code + ': ' + e.message));
  const sub = client.subscribe(params.get('channel'));
  sub.on('subscribed', () => { window.__subscribed = true; });
  sub.on('error', (e) => window.__events.push('subscription error ' + e.code + ': ' + e.message));
  sub.on('publication', (p) => window.__received.push(p));
  client.connect();
</script>
`;

/** Serves the test page at / and the built client under /dist/. */
function serve() {
  const server = createServer(async (req, res) => {
    const path = new URL(req.url, 'http://page').pathname;
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(PAGE);
      return;
    }
    if (path.startsWith('/dist/')) {
      const file = normalize(join(dist, path.slice('/dist/'.length)));
      if (file.startsWith(dist + sep)) {
        try {
          const body = await readFile(file);
          const type = file.endsWith('.js') ? 'text/javascript' : file.endsWith('.map') ? 'application/json' : 'text/plain';
          res.writeHead(200, { 'content-type': `${type}; charset=utf-8` });
          res.end(body);
          return;
        } catch {
          // 404 below
        }
      }
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

test('the client works in Chromium: subscribes to news:browser and receives an API publication', async (t) => {
  const missing = missingEnv();
  if (missing.length > 0) assert.fail(`${missing.join(', ')} not set: ${HOW_TO_RUN}`);
  if (!existsSync(CHROMIUM)) {
    assert.fail(`${CHROMIUM} is missing: install it with \`scripts/chromium\` (apt-get update && apt-get install -y chromium)`);
  }
  assert.ok(existsSync(join(dist, 'index.js')), 'dist/index.js is missing: build with `scripts/js-client` (or `npm run build`)');

  const { chromium } = await import('playwright-core');
  const http = await serve();
  t.after(() => new Promise((resolve) => http.close(resolve)));
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  t.after(() => browser.close());
  const page = await browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));

  const channel = 'news:browser';
  const base = `http://127.0.0.1:${http.address().port}`;
  const query = new URLSearchParams({ url: env.url, token: userToken('browser-user'), channel });
  await page.goto(`${base}/?${query}`);
  const state = () => page.evaluate(() => JSON.stringify({ events: window.__events, received: window.__received }));
  try {
    await page.waitForFunction(() => window.__subscribed === true, null, { timeout: 10000 });
  } catch (err) {
    throw new Error(`the page did not subscribe: ${await state()}\n${logs.join('\n')}\n${err.message}`);
  }

  const data = { headline: 'Hello from the API', nonce: unique('') };
  await apiPublish(channel, data);
  try {
    await page.waitForFunction(() => window.__received.length > 0, null, { timeout: 10000 });
  } catch (err) {
    throw new Error(`the page received nothing: ${await state()}\n${logs.join('\n')}\n${err.message}`);
  }
  const received = await page.evaluate(() => window.__received);
  assert.equal(received.length, 1, JSON.stringify(received));
  assert.deepEqual(received[0].data, data);
  assert.equal(received[0].channel, channel);
  assert.equal(typeof received[0].offset, 'number', 'news keeps history, so publications carry an offset');
});
