// Compiled (not run) by types.test.js: the declarations describe the API.
declare const WebSocket: new (url: string) => unknown;
import { HeraldClient, HeraldError, type HeraldEvent, type Subscription } from '../herald.js';

export async function usage(): Promise<number> {
  const client = new HeraldClient({
    url: 'http://127.0.0.1:7070',
    token: async () => 'jwt',
    WebSocket,
    reconnect: { initialDelayMs: 100, maxDelayMs: 10_000 },
  });
  const offState: () => void = client.on('state', (state) => console.log(state.toUpperCase()));
  client.on('status', (s) => console.log(s.source, s.state === 'down'));
  client.on('error', (e: HeraldError) => console.log(e.code, e.closeCode));
  await client.connect();
  const sub: Subscription = await client.subscribe({
    bindings: [{ exchange: 'orders', pattern: 'eu.#' }],
    filters: [['payload/total', '>', 100]],
    since: { last: 10 },
    onEvent: (event: HeraldEvent) => console.log(event.id, event.routing_key, event.payload),
  });
  sub.on('subscribed', (m) => console.log(m.head, m.recovered, m.history));
  await sub.pause();
  await sub.resume();
  sub.ack(sub.lastId ?? 0);
  await sub.unsubscribe();
  offState();
  const id: number = await client.publish({ exchange: 'orders', routing_key: 'eu.created', payload: { total: 120 } });
  const responder = await client.serve('echo', async (body, info) => ({ body, request: info.request }), { concurrency: 2 });
  const answer = await client.request('echo', { q: 1 }, { timeoutMs: 5000 });
  console.log(answer, responder.service);
  await responder.stop();
  client.close();
  return id;
}
