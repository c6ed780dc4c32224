// The admin page in headless Chromium, against a running Switchboard. Run by
// `cargo test -p switchboard-tests --release --test admin` (the_dashboard_works_in_headless_chromium),
// which starts the server, subscribes a client to ADMIN_CHANNEL and checks afterwards that it
// received what this page published. Needs /usr/bin/chromium (scripts/chromium) and
// playwright-core from clients/js (scripts/js-client).
//
// Environment: ADMIN_URL (http://host:port/admin), ADMIN_PASSWORD, ADMIN_NODE (the node id the
// page must show), ADMIN_CHANNEL (a channel the test client holds), ADMIN_SHOTS (a directory
// for admin.png and admin-phone.png).
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const CHROMIUM = '/usr/bin/chromium';
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const need = ['ADMIN_URL', 'ADMIN_PASSWORD', 'ADMIN_NODE', 'ADMIN_CHANNEL', 'ADMIN_SHOTS'];
const missing = need.filter((name) => !process.env[name]);
assert.equal(missing.length, 0, `${missing.join(', ')} not set: run this through cargo test --test admin`);
assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: install it with scripts/chromium`);
const { ADMIN_URL: url, ADMIN_PASSWORD: password, ADMIN_NODE: node, ADMIN_CHANNEL: channel, ADMIN_SHOTS: shots } = process.env;

const require = createRequire(join(root, 'clients/js/package.json'));
const { chromium } = require('playwright-core');

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
const logs = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('console', (m) => logs.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(url);

  // A wrong password is refused and the form stays.
  await page.fill('#cred', 'not-the-password');
  await page.click('#login button[type=submit]');
  await page.waitForFunction(() => document.getElementById('loginmsg').textContent.length > 0, null, { timeout: 10000 });
  assert.equal(await page.isVisible('#app'), false, 'the dashboard opened with a wrong password');

  await page.fill('#cred', password);
  await page.click('#login button[type=submit]');
  await page.waitForSelector('#app', { state: 'visible', timeout: 10000 });

  // The node and the test client's channel appear.
  await page.waitForFunction((id) => [...document.querySelectorAll('#nodes tr td:first-child')].some((td) => td.textContent.startsWith(id)), node, { timeout: 10000 });
  const row = `#channels tr[data-channel="${channel}"]`;
  await page.waitForSelector(row, { timeout: 10000 });
  await page.click(row);
  assert.equal(await page.inputValue('#pub-channel'), channel);
  // The channel view shows its presence: the test client, as user ann.
  await page.waitForFunction(() => [...document.querySelectorAll('#presence td')].some((td) => td.textContent === 'ann'), null, { timeout: 10000 });

  // The client's details, from whichever worker holds it.
  await page.click('#presence a');
  await page.waitForFunction(() => document.getElementById('conn-details').textContent.includes('"user": "ann"'), null, { timeout: 10000 });

  await page.fill('#pub-data', '{"from": "the admin page"}');
  await page.click('#publish');
  await page.waitForFunction(() => document.getElementById('pubmsg').textContent.startsWith('Published'), null, { timeout: 10000 });
  // The channel keeps history: the publication is listed on the page.
  await page.waitForFunction(() => document.getElementById('recent').textContent.includes('{"from":"the admin page"}'), null, { timeout: 10000 });

  // A few seconds of live charts, then the pictures the docs show.
  await page.waitForTimeout(6000);
  const conns = Number((await page.textContent('#s-conns')).trim());
  assert.ok(conns >= 1, `the page shows ${conns} connections`);
  await page.screenshot({ path: join(shots, 'admin.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(1200);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `at phone width the page is ${overflow}px wider than the screen`);
  await page.screenshot({ path: join(shots, 'admin-phone.png'), fullPage: true });
  const errors = logs.filter((l) => l.startsWith('pageerror'));
  assert.deepEqual(errors, [], logs.join('\n'));
  console.log('admin page: ok');
} catch (err) {
  console.error(logs.join('\n'));
  throw err;
} finally {
  await browser.close();
}
