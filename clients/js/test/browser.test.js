// The client in headless Chromium: the same cut-while-flowing scenario as
// in Node, with the browser's own WebSocket.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, startProxy, mint, publish, until, sleep } from './helpers.js';
import { launch, watchPage } from './browser.js';

let herald;
let browser;
let admin;

before(async () => {
  herald = await startHerald();
  admin = mint('browser');
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await herald?.stop();
});

test('in Chromium: cut repeatedly while events flow, every event exactly once, in order', async () => {
  const proxy = await startProxy(herald.port);
  const page = await browser.newPage();
  const errors = [];
  watchPage(page, errors);
  // A page of the gateway's own origin (through the proxy), so that the
  // client module loads from there and the WebSocket is same-origin.
  await page.goto(`${proxy.url}/inspector/`);
  await page.evaluate(async (token) => {
    const { HeraldClient } = await import('/inspector/herald.js');
    const client = new HeraldClient({ url: location.origin, token, reconnect: { initialDelayMs: 20, maxDelayMs: 200 }, ackIntervalMs: 50 });
    window.seen = [];
    window.client = client;
    await client.connect();
    await client.subscribe({ bindings: [{ exchange: 'browser.chaos', pattern: '#' }], onEvent: (e) => window.seen.push(e.payload.n) });
  }, admin);
  assert.equal(await page.evaluate(() => window.client.state), 'open');

  const total = 1500;
  const cutter = setInterval(() => proxy.cut(), 150);
  try {
    for (let n = 0; n < total; n += 25) {
      const events = Array.from({ length: 25 }, (_, i) => ({ exchange: 'browser.chaos', routing_key: 'a', payload: { n: n + i } }));
      await publish(herald.httpUrl, admin, events);
      await sleep(10);
    }
  } finally {
    clearInterval(cutter);
  }
  await until(async () => (await page.evaluate(() => window.seen.length)) >= total && (await page.evaluate(() => window.client.state)) === 'open', `${total} events in the page`, 60000);
  await page.evaluate(() => window.client.ping());
  await sleep(200);
  const seen = await page.evaluate(() => window.seen);
  const reconnects = await page.evaluate(() => window.client.reconnects);
  assert.ok(proxy.cuts >= 3, `the proxy cut ${proxy.cuts} connections`);
  assert.ok(reconnects >= 3, `the page reconnected ${reconnects} times`);
  assert.deepEqual(seen, Array.from({ length: total }, (_, i) => i));
  await page.evaluate(() => window.client.close());
  assert.deepEqual(errors, []);
  await page.close();
  await proxy.close();
});
