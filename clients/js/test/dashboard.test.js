// The inspector's Gateway panel, in headless Chromium: event rate chart,
// connections and sessions, peers with their state and counters, recent
// errors, all from the gateway's own /metrics and /v1/peers.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { statSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { HeraldClient } from '../herald.js';
import { startHerald, mint, publish, until, sleep, repoRoot } from './helpers.js';
import { launch, watchPage } from './browser.js';

const METRICS_TOKEN = 'metrics-scraper-token-0123456789';
let herald;
let browser;

before(async () => {
  // A metrics token (the panel must get in with an admin token anyway) and
  // an SQS peer whose endpoint refuses connections: a peer that is down.
  herald = await startHerald({
    extraToml: `
[metrics]
token = "${METRICS_TOKEN}"
[[peer]]
id = "jobs"
type = "sqs"
[peer.config]
queue = "jobs"
service = "jobs"
endpoint_url = "http://127.0.0.1:9"
access_key_id = "test"
secret_access_key = "test"
`,
  });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await herald?.stop();
});

const text = (page, sel) => page.locator(sel).textContent();

test('the Gateway panel charts the event rate and shows connections, peers and recent errors', async () => {
  const admin = mint('inspector-admin');
  const plain = mint('not-admin', ['--subscribe', 'dash=#', '--publish', 'dash=#']);

  // /metrics: the metrics token or an admin token; nothing else.
  assert.equal((await fetch(`${herald.httpUrl}/metrics`)).status, 401);
  assert.equal((await fetch(`${herald.httpUrl}/metrics`, { headers: { authorization: `Bearer ${plain}` } })).status, 401);
  assert.equal((await fetch(`${herald.httpUrl}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).status, 200);
  assert.equal((await fetch(`${herald.httpUrl}/metrics`, { headers: { authorization: `Bearer ${admin}` } })).status, 200);

  // A subscriber, so there are connections, sessions and deliveries to see.
  const subscriber = new HeraldClient({ url: herald.httpUrl, token: plain, WebSocket });
  await subscriber.connect();
  let received = 0;
  await subscriber.subscribe({ bindings: [{ exchange: 'dash', pattern: '#' }], onEvent: () => received++ });

  const context = await browser.newContext({ viewport: { width: 1200, height: 1100 } });
  const page = await context.newPage();
  const errors = [];
  watchPage(page, errors);
  await page.goto(`${herald.httpUrl}/inspector/#token=${admin}`);
  await page.waitForSelector('body[data-ready=true]');
  await page.click('#gateway-panel > summary');

  // Events flow for a few seconds: the rates and the chart follow.
  let published = 0;
  const flowing = (async () => {
    for (let i = 0; i < 20; i++) {
      await publish(herald.httpUrl, plain, Array.from({ length: 50 }, (_, j) => ({ exchange: 'dash', routing_key: 'k', payload: { i, j } })));
      published += 50;
      await sleep(150);
    }
  })();
  await until(async () => Number(await text(page, '#g-connections')) >= 1, 'connections shown');
  await until(async () => Number(await text(page, '#g-sessions')) >= 1, 'sessions shown');
  await until(async () => Number(await text(page, '#g-subscriptions')) >= 1, 'subscriptions shown');
  await until(async () => parseFloat(await text(page, '#rate-in')) > 0, 'a non-zero event rate');
  await until(async () => parseFloat(await text(page, '#rate-out')) > 0, 'a non-zero delivery rate');
  await flowing;
  await until(() => received === published, `the subscriber got all ${published} events`);
  await until(async () => Number(await text(page, '#g-head')) === published, 'the log head');
  const points = (await page.getAttribute('#line-in', 'points')).trim().split(' ');
  assert.ok(points.length >= 3, `the chart has points: ${points.length}`);
  assert.ok(points.some((p) => Number(p.split(',')[1]) < 80), 'and rises above the baseline');

  // The peer, down, with its counters.
  await until(async () => (await page.locator('#peers tr[data-peer="jobs"]').count()) === 1, 'the jobs peer row');
  const row = await text(page, '#peers tr[data-peer="jobs"]');
  assert.match(row, /sqs/);
  await until(async () => /down/.test(await text(page, '#peers tr[data-peer="jobs"]')), 'the peer shown down');

  // Errors happen: they are listed as they come.
  const bad = await fetch(`${herald.httpUrl}/v1/publish`, {
    method: 'POST',
    headers: { authorization: 'Bearer nonsense', 'content-type': 'application/json' },
    body: '{"exchange":"dash","routing_key":"k","payload":1}',
  });
  assert.equal(bad.status, 401);
  // (Those before the page opened are listed once as totals; this one as an increase.)
  await until(async () => /authentication failures \+1 \(\d+ since start\)/.test(await text(page, '#gateway-errors')), 'the auth failure listed');

  // The events view keeps working beside it.
  await page.fill('#exchange', 'dash');
  await page.click('#add');
  await page.click('#start');
  await until(async () => (await page.locator('#state').getAttribute('data-state')) === 'open', 'the events view connects');
  await publish(herald.httpUrl, plain, [{ exchange: 'dash', routing_key: 'live', payload: { shown: true } }]);
  await until(async () => (await page.locator('#events > li').count()) === 1, 'the live event in the events view');

  mkdirSync(join(repoRoot, 'target'), { recursive: true });
  const shot = join(repoRoot, 'target', 'inspector-gateway.png');
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok(statSync(shot).size > 10000, 'a real screenshot');
  assert.deepEqual(errors, []);
  subscriber.close();
  await context.close();
});
