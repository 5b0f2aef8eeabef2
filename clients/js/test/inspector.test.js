// The inspector page served by `herald serve --dev`, driven in Chromium.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startHerald, mint, publish, until, sleep, repoRoot } from './helpers.js';
import { launch, watchPage } from './browser.js';

let herald;
let browser;
let admin;

before(async () => {
  herald = await startHerald({ args: ['--dev'] });
  admin = mint('publisher');
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await herald?.stop();
});

/** The inspector URL `--dev` printed, with its token in the fragment. */
async function devInspectorUrl() {
  await until(() => herald.output.some((l) => l.includes('Inspector:')), 'the Inspector line of --dev');
  const line = herald.output.find((l) => l.includes('Inspector:'));
  return line.trim().split(/\s+/)[1];
}

const eventCount = (page) => page.locator('#events > li').count();
const visibleCount = (page) => page.locator('#events > li:not([hidden])').count();

test('the inspector binds, shows, pauses, filters, bounds and downloads events', async () => {
  const url = await devInspectorUrl();
  assert.match(url, /\/inspector\/#token=ey/);
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  watchPage(page, errors);
  const response = await page.goto(url);
  assert.match(response.headers()['content-security-policy'], /default-src 'none'/);
  await page.waitForSelector('body[data-ready=true]');

  // The --dev token is prefilled and taken out of the address bar.
  assert.ok((await page.inputValue('#token')).startsWith('ey'));
  assert.equal(new URL(page.url()).hash, '');

  await page.fill('#exchange', 'inspect.orders');
  await page.fill('#pattern', 'eu.#');
  await page.click('#add');
  await page.fill('#exchange', 'inspect.audit');
  await page.fill('#pattern', '#');
  await page.click('#add');
  assert.deepEqual(
    JSON.parse(new URL(page.url()).searchParams.get('bindings')),
    [{ exchange: 'inspect.orders', pattern: 'eu.#' }, { exchange: 'inspect.audit', pattern: '#' }],
    'the bindings are kept in the URL',
  );
  const shared = page.url();

  await page.click('#start');
  // Publish only once the subscription is in place (a live subscription
  // starts at the head when the server confirms it).
  await page.waitForSelector('#state[data-state=open][data-subscribed=true]');
  await publish(herald.httpUrl, admin, [
    { exchange: 'inspect.orders', routing_key: 'eu.created', payload: { order: 1, item: 'apple' } },
    { exchange: 'inspect.orders', routing_key: 'us.created', payload: { order: 2, item: 'pear' } },
    { exchange: 'inspect.audit', routing_key: '', payload: { who: 'ops' } },
    { exchange: 'inspect.orders', routing_key: 'eu.shipped', payload: { order: 1, item: 'apple' } },
  ]);
  await until(async () => (await eventCount(page)) === 3, 'three events on the page');
  // Newest first, with id, time, exchange, routing key and a pretty payload.
  const first = page.locator('#events > li').first();
  assert.equal(await first.locator('.exchange').textContent(), 'inspect.orders');
  assert.equal(await first.locator('.key').textContent(), 'eu.shipped');
  assert.match(await first.locator('.time').textContent(), /^\d{4}-\d\d-\d\dT[\d:.]+Z$/);
  assert.equal(await first.locator('.payload').textContent(), JSON.stringify({ order: 1, item: 'apple' }, null, 2));
  const ids = await page.locator('#events > li').evaluateAll((lis) => lis.map((li) => Number(li.dataset.id)));
  assert.ok(ids[0] > ids[1] && ids[1] > ids[2], `newest first: ${ids}`);
  assert.equal(await page.locator('#events > li').nth(1).locator('.key').textContent(), '(empty key)');

  // Pause: nothing new shows; resume: what came meanwhile shows, nothing lost.
  await page.click('#pause');
  await page.waitForSelector('#state[data-state=paused]');
  await sleep(100);
  await publish(herald.httpUrl, admin, [
    { exchange: 'inspect.orders', routing_key: 'eu.paid', payload: { order: 3, item: 'plum' } },
    { exchange: 'inspect.orders', routing_key: 'eu.paid', payload: { order: 4, item: 'fig' } },
  ]);
  await sleep(400);
  assert.equal(await eventCount(page), 3, 'nothing shows while paused');
  await page.click('#pause');
  await page.waitForSelector('#state[data-state=open]');
  await until(async () => (await eventCount(page)) === 5, 'the events of the pause');
  assert.equal(await page.locator('#counts').textContent(), '5 events');

  // The filter narrows the list without losing anything.
  await page.fill('#filter', 'plum');
  await until(async () => (await visibleCount(page)) === 1, 'one event matching the filter');
  assert.match(await page.locator('#counts').textContent(), /5 events \(1 shown\)/);
  await page.fill('#filter', '');
  await until(async () => (await visibleCount(page)) === 5, 'all events again');

  // Download what was captured, as JSON, oldest first.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
  assert.match(download.suggestedFilename(), /^herald-events-.*\.json$/);
  const saved = JSON.parse(readFileSync(await download.path(), 'utf8'));
  assert.equal(saved.length, 5);
  assert.deepEqual(saved.map((e) => e.payload.order ?? e.payload.who), [1, 'ops', 1, 3, 4]);
  assert.ok(saved.every((e, i) => i === 0 || e.id > saved[i - 1].id));
  assert.deepEqual(Object.keys(saved[0]).sort(), ['exchange', 'id', 'payload', 'routing_key', 'time']);

  // A screenshot for the test run's record (target/inspector.png).
  mkdirSync(join(repoRoot, 'target'), { recursive: true });
  const shot = join(repoRoot, 'target', 'inspector.png');
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok(statSync(shot).size > 10000, 'a real screenshot');

  // The list is bounded: keep 3 drops the oldest.
  await page.fill('#max', '3');
  await page.dispatchEvent('#max', 'change');
  assert.equal(await eventCount(page), 3);
  assert.equal(await page.locator('#counts').textContent(), '3 events');

  await page.click('#stop');
  await page.waitForSelector('#state[data-state=closed]');
  assert.deepEqual(errors, []);

  // The shared URL brings the same bindings back (and no token in it).
  assert.ok(!shared.includes('token'));
  const other = await context.newPage();
  await other.goto(shared);
  await other.waitForSelector('body[data-ready=true]');
  assert.deepEqual(await other.locator('#bindings li').evaluateAll((lis) => lis.map((li) => li.firstChild.textContent)), [
    'inspect.orders eu.#',
    'inspect.audit #',
  ]);
  await context.close();
});

test('the inspector shows connection errors', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const bindings = encodeURIComponent(JSON.stringify([{ exchange: 'inspect.secret', pattern: '#' }]));
  await page.goto(`${herald.httpUrl}/inspector/?bindings=${bindings}`);
  await page.waitForSelector('body[data-ready=true]');

  // A token without a grant for the exchange: the subscribe is refused.
  await page.fill('#token', mint('nobody', ['--subscribe', 'elsewhere=#']));
  await page.click('#start');
  await page.waitForSelector('#messages li');
  assert.match(await page.locator('#messages li').first().textContent(), /forbidden/);

  // A token that is not one: the server closes with 4401, shown, no retry.
  await page.fill('#token', 'not-a-token');
  await page.click('#start');
  await page.waitForSelector('#state[data-state=closed]');
  await until(async () => /4401/.test(await page.locator('#messages').textContent()), 'the 4401 message');
  await context.close();
});
