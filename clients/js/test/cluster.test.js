// The client given several nodes of a cluster: its node is killed (-9)
// while events flow, it reconnects to the next URL, resumes its session
// there, and the application sees every event once, in order.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { HeraldClient } from '../herald.js';
import { startHerald, startNatsCluster, mint, publish, until } from './helpers.js';

let nats;
let nodes = [];
let admin;

before(async () => {
  nats = await startNatsCluster();
  for (const name of ['a', 'b', 'c']) {
    nodes.push(await startHerald({ extraToml: `${nats.heraldToml(name)}[session]\nack_flush = "50ms"\n` }));
  }
  admin = mint('admin');
});

after(async () => {
  for (const n of nodes) await n.stop();
  await nats?.stop();
});

test('kill -9 of the node a client is on: it resumes on the next URL, every event once, in order', async () => {
  const [a, b, c] = nodes;
  const client = new HeraldClient({ urls: [b.httpUrl, c.httpUrl], token: admin, WebSocket, ackIntervalMs: 20 });
  const welcomes = [];
  client.on('welcome', (w) => welcomes.push(w));
  await client.connect();
  const seen = [];
  await client.subscribe({ bindings: [{ exchange: 'js.cluster', pattern: '#' }], onEvent: (e) => seen.push(e.id) });
  const batchOf = (from) => Array.from({ length: 50 }, (_, i) => ({ exchange: 'js.cluster', routing_key: 'k', payload: { n: from + i } }));
  const published = [];
  for (let i = 0; i < 4; i++) published.push(...(await publish(a.httpUrl, admin, batchOf(i * 50))).ids);
  await until(() => seen.length >= 100, 'some events before the crash');
  await b.kill9();
  for (let i = 4; i < 8; i++) published.push(...(await publish(a.httpUrl, admin, batchOf(i * 50))).ids);
  await until(() => seen.length >= published.length, `all ${published.length} events (got ${seen.length})`, 30000);
  assert.deepEqual(seen, published, 'every event once, in order');
  assert.equal(client.url, new URL('/v1/ws', c.httpUrl.replace('http', 'ws')).href, 'now on node c');
  assert.equal(welcomes.at(-1).resumed, true, 'the session was resumed on another node');
  client.close();
});
