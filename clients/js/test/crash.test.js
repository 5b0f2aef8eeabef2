// The client across a server crash: `kill -9` of `herald serve` while events
// flow, then a restart on the same data directory. The session was stored,
// so the client resumes it and gets every event exactly once, in order.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { HeraldClient } from '../herald.js';
import { startHerald, mint, publish, until } from './helpers.js';

let herald;
let admin;

before(async () => {
  herald = await startHerald({ extraToml: '[session]\nack_flush = "50ms"\n' });
  admin = mint('admin');
});

after(async () => {
  await herald?.stop();
});

/** Publish, retrying while the gateway is down; returns the ids. */
async function publishRetrying(events) {
  for (;;) {
    try {
      return (await publish(herald.httpUrl, admin, events)).ids;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

test('kill -9 of the server while events flow: the session resumes, every event once, in order', async () => {
  const c = new HeraldClient({ url: herald.httpUrl, token: admin, WebSocket, ackIntervalMs: 20 });
  const welcomes = [];
  c.on('welcome', (w) => welcomes.push(w));
  await c.connect();
  const seen = [];
  await c.subscribe({ bindings: [{ exchange: 'js.crash', pattern: '#' }], onEvent: (e) => seen.push(e.id) });
  const published = [];
  const batchOf = (from) => Array.from({ length: 50 }, (_, i) => ({ exchange: 'js.crash', routing_key: 'k', payload: { n: from + i } }));
  for (let i = 0; i < 4; i++) published.push(...(await publishRetrying(batchOf(i * 50))));
  await until(() => seen.length >= 100, 'some events before the crash');
  await herald.kill9AndRestart();
  for (let i = 4; i < 8; i++) published.push(...(await publishRetrying(batchOf(i * 50))));
  await until(() => seen.length >= published.length, `all ${published.length} events (got ${seen.length})`);
  assert.deepEqual(seen, published, 'every event once, in order');
  assert.ok(welcomes.length >= 2, 'reconnected');
  assert.equal(welcomes.at(-1).resumed, true, 'the stored session was resumed after the crash');
  c.close();
});
