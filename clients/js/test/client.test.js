// The client against a real `herald serve` process, in Node with `ws`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { HeraldClient, HeraldError, tokenExpiry, websocketUrl } from '../herald.js';
import { startHerald, startProxy, mint, publish, until, sleep } from './helpers.js';

let herald;
let admin;

before(async () => {
  herald = await startHerald({
    // A peer that cannot connect, so that subscribers to its exchange get `status`.
    extraToml: `
[[peer]]
id = "upstream"
type = "amqp"
[peer.config]
url = "amqp://guest:guest@127.0.0.1:1/%2f"
queue = "herald-js-client-test"
bindings = [{ exchange = "js.upstream", pattern = "#" }]
`,
  });
  admin = mint('admin');
});

after(async () => {
  await herald?.stop();
});

function client(options = {}) {
  return new HeraldClient({ url: herald.httpUrl, token: admin, WebSocket, ...options });
}

/** Ids 1..n as events on `exchange` with routing key `k.<i % 3>`. */
function batch(exchange, from, n) {
  return Array.from({ length: n }, (_, i) => ({ exchange, routing_key: `k.${(from + i) % 3}`, payload: { n: from + i } }));
}

test('urls and tokens are understood', () => {
  assert.equal(websocketUrl('http://h:1'), 'ws://h:1/v1/ws');
  assert.equal(websocketUrl('https://h/'), 'wss://h/v1/ws');
  assert.equal(websocketUrl('ws://h/custom'), 'ws://h/custom');
  assert.equal(typeof tokenExpiry(admin), 'number');
  assert.ok(tokenExpiry(admin) > Date.now() / 1000);
  assert.equal(tokenExpiry('not a jwt'), null);
  assert.throws(() => new HeraldClient({ url: 'http://h', WebSocket: undefined }).connect(), TypeError);
});

test('subscribe with bindings and filters, publish, unsubscribe', async () => {
  const c = client();
  const states = [];
  c.on('state', (s) => states.push(s));
  await c.connect();
  assert.equal(c.state, 'open');
  assert.equal(typeof c.limits.max_subscriptions, 'number');
  const seen = [];
  const sub = await c.subscribe({
    bindings: [{ exchange: 'js.basic', pattern: 'k.*' }],
    filters: [['payload/n', '>=', 2]],
    onEvent: (e) => seen.push(e),
  });
  assert.equal(sub.recovered, true);
  const id = await c.publish({ exchange: 'js.basic', routing_key: 'k.1', payload: { n: 1 } });
  assert.equal(typeof id, 'number');
  const keyed = { exchange: 'js.keyed', routing_key: 'k', payload: 1, idempotency_key: `js-${Date.now()}` };
  const first = await c.publish(keyed);
  assert.equal(await c.publish(keyed), first, 'a repeat with the same idempotency key gets the first id');
  await publish(herald.httpUrl, admin, batch('js.basic', 2, 5));
  await publish(herald.httpUrl, admin, [{ exchange: 'js.basic', routing_key: 'other', payload: { n: 9 } }]);
  await until(() => seen.length === 5, '5 events');
  assert.deepEqual(seen.map((e) => e.payload.n), [2, 3, 4, 5, 6]);
  assert.ok(seen.every((e) => e.sub === sub.id && e.exchange === 'js.basic' && typeof e.time === 'string'));
  assert.ok(seen.every((e, i) => i === 0 || e.id > seen[i - 1].id));
  await sub.unsubscribe();
  await publish(herald.httpUrl, admin, batch('js.basic', 10, 3));
  await c.ping();
  await sleep(100);
  assert.equal(seen.length, 5, 'no event after unsubscribe');
  c.close();
  assert.deepEqual(states, ['connecting', 'open', 'closed']);
});

test('since: last replays history, then live, without a gap', async () => {
  const ids = (await publish(herald.httpUrl, admin, batch('js.replay', 0, 10))).ids;
  const c = client();
  await c.connect();
  const seen = [];
  await c.subscribe({ bindings: [{ exchange: 'js.replay', pattern: '#' }], since: { last: 4 }, onEvent: (e) => seen.push(e.id) });
  const more = (await publish(herald.httpUrl, admin, batch('js.replay', 10, 2))).ids;
  await until(() => seen.length === 6, '6 events');
  assert.deepEqual(seen, [...ids.slice(6), ...more]);
  c.close();
});

test('pause holds events back and resume delivers them, in order', async () => {
  const c = client();
  await c.connect();
  const seen = [];
  const sub = await c.subscribe({ bindings: [{ exchange: 'js.pause', pattern: '#' }], onEvent: (e) => seen.push(e.payload.n) });
  await publish(herald.httpUrl, admin, batch('js.pause', 0, 3));
  await until(() => seen.length === 3, '3 events');
  await sub.pause();
  assert.equal(sub.paused, true);
  await publish(herald.httpUrl, admin, batch('js.pause', 3, 4));
  await c.ping();
  await sleep(150);
  assert.deepEqual(seen, [0, 1, 2], 'nothing while paused');
  await sub.resume();
  await until(() => seen.length === 7, '7 events');
  assert.deepEqual(seen, [0, 1, 2, 3, 4, 5, 6]);
  c.close();
});

test('errors from the server reject the request that caused them', async () => {
  const reader = mint('reader', ['--subscribe', 'js.allowed=#']);
  const c = client({ token: reader });
  await c.connect();
  await assert.rejects(c.subscribe({ bindings: [{ exchange: 'js.secret', pattern: '#' }] }), (e) => e instanceof HeraldError && e.code === 'forbidden');
  await assert.rejects(c.subscribe({ bindings: [{ exchange: 'js.allowed', pattern: 'a..#.b*' }], filters: [['colour', '=', 1]] }), (e) => e.code === 'bad_request');
  await assert.rejects(c.publish({ exchange: 'js.allowed', routing_key: 'x', payload: 1 }), (e) => e.code === 'forbidden');
  await c.subscribe({ id: 'dup', bindings: [{ exchange: 'js.allowed', pattern: '#' }] });
  await assert.rejects(c.subscribe({ id: 'dup', bindings: [{ exchange: 'js.allowed', pattern: '#' }] }), (e) => e.code === 'conflict');
  assert.equal(c.state, 'open', 'errors leave the connection open');
  c.close();
});

test('a bad token stops the client: no reconnect after 4401', async () => {
  const c = client({ token: 'nonsense', reconnect: { initialDelayMs: 10 } });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  await assert.rejects(c.connect(), (e) => e.closeCode === 4401);
  assert.equal(c.state, 'closed');
  await sleep(300);
  assert.equal(c.reconnects, 0, 'no second attempt');
  assert.ok(errors.some((e) => e.closeCode === 4401));
});

test('status messages from an upstream peer surface as events', async () => {
  const c = client();
  const statuses = [];
  c.on('status', (s) => statuses.push(s));
  await c.connect();
  await c.subscribe({ bindings: [{ exchange: 'js.upstream', pattern: '#' }] });
  await until(() => statuses.length > 0, 'a status message');
  assert.equal(statuses[0].source, 'upstream');
  assert.equal(statuses[0].state, 'down');
  c.close();
});

/**
 * Publishes `total` events in small batches while the proxy cuts every
 * connection at `cutEveryMs`; returns once the publisher is done.
 */
async function publishWhileCutting(proxy, exchange, total, cutEveryMs) {
  const cutter = setInterval(() => proxy.cut(), cutEveryMs);
  try {
    for (let n = 0; n < total; n += 25) {
      await publish(herald.httpUrl, admin, batch(exchange, n, Math.min(25, total - n)));
      await sleep(5);
    }
  } finally {
    clearInterval(cutter);
  }
}

test('cut repeatedly while events flow: every event exactly once, in order', async () => {
  const proxy = await startProxy(herald.port);
  const c = new HeraldClient({ url: proxy.url, token: admin, WebSocket, reconnect: { initialDelayMs: 20, maxDelayMs: 200 }, ackIntervalMs: 50 });
  const all = [];
  const filtered = [];
  await c.connect();
  await c.subscribe({ bindings: [{ exchange: 'js.chaos', pattern: '#' }], onEvent: (e) => all.push(e.payload.n) });
  await c.subscribe({
    bindings: [{ exchange: 'js.chaos', pattern: 'k.1' }],
    filters: [['payload/n', '<', 1500]],
    onEvent: (e) => filtered.push(e.payload.n),
  });
  const total = 2000;
  await publishWhileCutting(proxy, 'js.chaos', total, 120);
  await until(() => all.length >= total && c.state === 'open', `${total} events (have ${all.length})`, 60000);
  // The last cut may come after every event arrived, and before the client
  // has seen its socket close: a ping then fails as `disconnected`; the
  // next one goes over the resumed session.
  await until(
    () =>
      c.ping().then(
        () => true,
        (e) => {
          if (e.code !== 'disconnected') throw e;
          return false;
        },
      ),
    'a ping answered after the last cut',
  );
  await sleep(200);
  assert.ok(proxy.cuts >= 3, `the proxy cut ${proxy.cuts} connections`);
  assert.ok(c.reconnects >= 3, `reconnected ${c.reconnects} times`);
  assert.deepEqual(all, Array.from({ length: total }, (_, i) => i));
  const expected = Array.from({ length: 1500 }, (_, i) => i).filter((n) => n % 3 === 1);
  assert.deepEqual(filtered, expected);
  c.close();
  await proxy.close();
});

test('after the session expired the client re-subscribes from the last id it saw', async () => {
  const short = await startHerald({ extraToml: '[session]\nttl = "1s"\n' });
  const proxy = await startProxy(short.port);
  const token = mint('expiring');
  const c = new HeraldClient({ url: proxy.url, token, WebSocket, reconnect: { initialDelayMs: 20, maxDelayMs: 100 } });
  const welcomes = [];
  c.on('welcome', (w) => welcomes.push(w.resumed));
  const seen = [];
  try {
    await c.connect();
    await c.subscribe({ bindings: [{ exchange: 'js.ttl', pattern: '#' }], onEvent: (e) => seen.push(e.payload.n) });
    await publish(short.httpUrl, token, batch('js.ttl', 0, 5));
    await until(() => seen.length === 5, '5 events');
    proxy.refuse(true);
    proxy.cut();
    // Published while the client is away and its session runs out.
    await publish(short.httpUrl, token, batch('js.ttl', 5, 5));
    await sleep(2500);
    proxy.refuse(false);
    await until(() => welcomes.length === 2 && c.state === 'open', 'a second welcome', 20000);
    await publish(short.httpUrl, token, batch('js.ttl', 10, 5));
    await until(() => seen.length >= 15, '15 events');
    await c.ping();
    assert.equal(welcomes[1], false, 'the session had expired');
    assert.deepEqual(seen, Array.from({ length: 15 }, (_, i) => i));
  } finally {
    c.close();
    await proxy.close();
    await short.stop();
  }
});

test('manual acks decide where a resume starts; duplicates are dropped', async () => {
  const proxy = await startProxy(herald.port);
  const c = new HeraldClient({ url: proxy.url, token: admin, WebSocket, autoAck: false, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
  const seen = [];
  await c.connect();
  const sub = await c.subscribe({ bindings: [{ exchange: 'js.manual', pattern: '#' }], onEvent: (e) => seen.push(e) });
  await publish(herald.httpUrl, admin, batch('js.manual', 0, 6));
  await until(() => seen.length === 6, '6 events');
  sub.ack(seen[1].id);
  await sleep(400); // the batched ack goes out
  proxy.cut();
  await until(() => c.state === 'open' && c.reconnects === 1, 'a resume');
  await publish(herald.httpUrl, admin, batch('js.manual', 6, 2));
  await until(() => seen.length === 8, '8 events');
  await c.ping();
  await sleep(100);
  // The server sent 3..6 again (after the ack of 2); the client dropped them.
  assert.equal(c.duplicatesDropped, 4);
  assert.deepEqual(seen.map((e) => e.payload.n), [0, 1, 2, 3, 4, 5, 6, 7]);
  c.close();
  await proxy.close();
});

test('a token callback is called at every connect and before the token expires', async () => {
  let calls = 0;
  const tokenFn = async () => {
    calls++;
    return mint('refresher', ['--all'], '40s');
  };
  const c = client({ token: tokenFn, refreshBeforeExpiryMs: 38500, reconnect: { initialDelayMs: 10 } });
  const disconnects = [];
  c.on('disconnect', (d) => disconnects.push(d.code));
  const seen = [];
  await c.connect();
  assert.equal(calls, 1);
  await c.subscribe({ bindings: [{ exchange: 'js.refresh', pattern: '#' }], onEvent: (e) => seen.push(e.payload.n) });
  await publish(herald.httpUrl, admin, batch('js.refresh', 0, 3));
  // About 1.5 s after connecting the client takes its session over with a new token.
  await until(() => calls >= 2 && c.state === 'open', 'a refresh', 10000);
  await publish(herald.httpUrl, admin, batch('js.refresh', 3, 3));
  await until(() => seen.length === 6, '6 events');
  await c.ping();
  assert.deepEqual(seen, [0, 1, 2, 3, 4, 5]);
  assert.equal(c.state, 'open');
  c.close();
});

test('close() ends the session and stops for good', async () => {
  const c = client();
  await c.connect();
  const session = c.session;
  c.close();
  assert.equal(c.state, 'closed');
  await assert.rejects(c.publish({ exchange: 'js.x', payload: 1 }), (e) => e.code === 'closed');
  // The session cannot be resumed after an orderly close.
  await sleep(100);
  const resumed = await new Promise((resolve) => {
    const raw = new WebSocket(websocketUrl(herald.httpUrl));
    raw.on('open', () => raw.send(JSON.stringify({ type: 'hello', token: admin, session })));
    raw.on('message', (m) => {
      resolve(JSON.parse(m.toString()).resumed);
      raw.terminate();
    });
  });
  assert.equal(resumed, false);
});

test('rendezvous: request() reaches a serve() handler and the answer comes back', async () => {
  const responderClient = client();
  const requester = client();
  await responderClient.connect();
  await requester.connect();
  let handled = 0;
  const responder = await responderClient.serve(
    'js.echo',
    async (body, info) => {
      handled++;
      assert.equal(info.service, 'js.echo');
      assert.ok(info.deadlineMs > 0);
      return { echo: body };
    },
    { concurrency: 4 },
  );
  const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => requester.request('js.echo', { i })));
  assert.deepEqual(answers, Array.from({ length: 10 }, (_, i) => ({ echo: { i } })));
  assert.equal(handled, 10);
  // Nobody serves this one: `unavailable` after the match timeout.
  await assert.rejects(requester.request('js.nobody', 1), (e) => e.code === 'unavailable');
  await responder.stop();
  await assert.rejects(requester.request('js.echo', 1, { timeoutMs: 300 }), (e) => e.code === 'unavailable' || e.code === 'timeout');
  responderClient.close();
  requester.close();
});

test('rendezvous: a responder serves again after its connection is cut', async () => {
  const proxy = await startProxy(herald.port);
  const responderClient = new HeraldClient({ url: proxy.url, token: admin, WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
  await responderClient.connect();
  await responderClient.serve('js.resilient', (body) => `got ${body}`);
  const requester = client();
  await requester.connect();
  assert.equal(await requester.request('js.resilient', 'a'), 'got a');
  proxy.cut();
  await until(() => responderClient.state === 'open' && responderClient.reconnects === 1, 'the responder to reconnect');
  await until(async () => {
    try {
      return (await requester.request('js.resilient', 'b', { timeoutMs: 500 })) === 'got b';
    } catch {
      return false;
    }
  }, 'an answer after the reconnect');
  responderClient.close();
  requester.close();
  await proxy.close();
});

test('close codes 4400 and 4403 stop the client too (a scripted socket: the server never sends them on hello)', async () => {
  for (const code of [4400, 4403]) {
    let opened = 0;
    class ClosingSocket {
      constructor() {
        opened++;
        this.readyState = 0;
        setTimeout(() => {
          this.readyState = 1;
          this.onopen?.();
        }, 1);
      }
      send() {
        setTimeout(() => {
          this.readyState = 3;
          this.onclose?.({ code, reason: 'scripted' });
        }, 1);
      }
      close() {}
    }
    const c = new HeraldClient({ url: 'http://127.0.0.1:9', WebSocket: ClosingSocket, reconnect: { initialDelayMs: 1 } });
    await assert.rejects(c.connect(), (e) => e.closeCode === code);
    await sleep(50);
    assert.equal(opened, 1, `no reconnect after ${code}`);
    assert.equal(c.state, 'closed');
  }
  // Any other code is retried.
  let opened = 0;
  class FlakySocket {
    constructor() {
      opened++;
      setTimeout(() => this.onclose?.({ code: 1006, reason: '' }), 1);
    }
    close() {}
  }
  const c = new HeraldClient({ url: 'http://127.0.0.1:9', WebSocket: FlakySocket, reconnect: { initialDelayMs: 1, maxDelayMs: 5 } });
  c.connect().catch(() => {});
  await until(() => opened >= 3, 'retries after 1006');
  c.close();
});

test('a subscription the new token no longer allows ends when the session resumes', async () => {
  const proxy = await startProxy(herald.port);
  let calls = 0;
  const token = () => (++calls === 1 ? mint('narrowed', ['--subscribe', 'js.narrow=#', '--subscribe', 'js.kept=#']) : mint('narrowed', ['--subscribe', 'js.kept=#']));
  const c = new HeraldClient({ url: proxy.url, token, WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
  await c.connect();
  const narrow = await c.subscribe({ bindings: [{ exchange: 'js.narrow', pattern: '#' }] });
  const kept = await c.subscribe({ bindings: [{ exchange: 'js.kept', pattern: '#' }] });
  const errors = [];
  narrow.on('error', (e) => errors.push(e.code));
  proxy.cut();
  await until(() => errors.length > 0, 'the forbidden error after the resume');
  assert.deepEqual(errors, ['forbidden']);
  assert.equal(narrow.active, false);
  assert.equal(kept.active, true);
  c.close();
  await proxy.close();
});
