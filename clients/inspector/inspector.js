// The Herald inspector: bind, listen, look at events. Served by `herald
// serve` at /inspector; uses the JavaScript client from the same server.
//
// The URL keeps the view: `?bindings=[{"exchange":…,"pattern":…}]&last=N`
// (the `bindings` parameter of /v1/sse), so a link shares what to look at.
// A token given as `#token=…` (what `herald serve --dev` prints) is moved
// into the page's session storage and removed from the address bar, so a
// shared link never carries it.

import { HeraldClient } from '/inspector/herald.js';

const $ = (id) => document.getElementById(id);
const MAX_MESSAGES = 20;

const view = {
  bindings: [],
  captured: [], // oldest first, at most `max`
  client: null,
  sub: null,
  paused: false,
  filter: '',
};

function loadFromUrl() {
  const params = new URLSearchParams(location.search);
  try {
    const parsed = JSON.parse(params.get('bindings') ?? '[]');
    if (Array.isArray(parsed)) {
      view.bindings = parsed
        .filter((b) => b && typeof b.exchange === 'string' && typeof b.pattern === 'string')
        .map((b) => ({ exchange: b.exchange, pattern: b.pattern }));
    }
  } catch {
    message('error', 'The `bindings` URL parameter is not a JSON array of {exchange, pattern}; ignored.');
  }
  const last = Number(params.get('last'));
  if (Number.isInteger(last) && last > 0) $('last').value = String(last);
  const hash = new URLSearchParams(location.hash.slice(1));
  const token = hash.get('token');
  if (token) {
    sessionStorage.setItem('herald-token', token);
    history.replaceState(null, '', location.pathname + location.search);
  }
  $('token').value = sessionStorage.getItem('herald-token') ?? '';
}

function saveToUrl() {
  const params = new URLSearchParams();
  if (view.bindings.length) params.set('bindings', JSON.stringify(view.bindings));
  const last = Number($('last').value);
  if (last > 0) params.set('last', String(last));
  const query = params.toString();
  history.replaceState(null, '', location.pathname + (query ? `?${query}` : ''));
}

function renderBindings() {
  const list = $('bindings');
  list.replaceChildren(
    ...view.bindings.map((b, i) => {
      const li = document.createElement('li');
      li.className = 'binding';
      li.textContent = `${b.exchange} ${b.pattern}`;
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.textContent = '×';
      remove.title = 'remove this binding';
      remove.setAttribute('aria-label', `remove ${b.exchange} ${b.pattern}`);
      remove.disabled = view.client !== null;
      remove.addEventListener('click', () => {
        view.bindings.splice(i, 1);
        renderBindings();
        saveToUrl();
      });
      li.append(remove);
      return li;
    }),
  );
}

function setState(state) {
  const el = $('state');
  const shown = state === 'open' && view.paused ? 'paused' : state;
  el.textContent = shown;
  el.dataset.state = shown;
  el.className = `state state-${shown}`;
}

function message(kind, text) {
  const li = document.createElement('li');
  li.className = kind;
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  const list = $('messages');
  list.prepend(li);
  while (list.children.length > MAX_MESSAGES) list.lastElementChild.remove();
}

function maxKept() {
  const n = Number($('max').value);
  return Number.isInteger(n) && n > 0 ? Math.min(n, 100000) : 1000;
}

function matches(event, text) {
  if (!text) return true;
  return event._text.includes(text);
}

function eventElement(event) {
  const li = document.createElement('li');
  li.className = 'event';
  li.dataset.id = String(event.id);
  const meta = document.createElement('div');
  meta.className = 'meta';
  const parts = [
    ['id', `#${event.id}`],
    ['time', event.time],
    ['exchange', event.exchange],
    ['key', event.routing_key === '' ? '(empty key)' : event.routing_key],
  ];
  for (const [cls, text] of parts) {
    const span = document.createElement('span');
    span.className = cls;
    span.textContent = text;
    meta.append(span);
  }
  const pre = document.createElement('pre');
  pre.className = 'payload';
  pre.textContent = JSON.stringify(event.payload, null, 2);
  li.append(meta, pre);
  li.hidden = !matches(event, view.filter);
  return li;
}

function updateCounts() {
  const shown = document.querySelectorAll('#events > li:not([hidden])').length;
  $('counts').textContent = `${view.captured.length} events` + (view.filter ? ` (${shown} shown)` : '');
}

function onEvent(event) {
  const record = {
    id: event.id,
    time: event.time,
    exchange: event.exchange,
    routing_key: event.routing_key,
    payload: event.payload,
  };
  if (event.headers) record.headers = event.headers;
  Object.defineProperty(record, '_text', {
    value: `${event.exchange}\n${event.routing_key}\n${JSON.stringify(event.payload)}`.toLowerCase(),
  });
  view.captured.push(record);
  const list = $('events');
  list.prepend(eventElement(record));
  trim();
  updateCounts();
}

function trim() {
  const max = maxKept();
  const list = $('events');
  while (view.captured.length > max) {
    view.captured.shift();
    list.lastElementChild?.remove();
  }
}

function setListening(listening) {
  $('start').disabled = listening;
  $('stop').disabled = !listening;
  $('pause').disabled = !listening;
  $('token').disabled = listening;
  $('last').disabled = listening;
  $('add').disabled = listening;
  renderBindings();
}

async function start() {
  if (view.bindings.length === 0) {
    message('error', 'Add at least one binding first.');
    return;
  }
  const token = $('token').value.trim();
  if (token) sessionStorage.setItem('herald-token', token);
  else sessionStorage.removeItem('herald-token');
  saveToUrl();
  view.paused = false;
  delete $('state').dataset.subscribed;
  $('pause').textContent = 'Pause';
  const client = new HeraldClient({
    url: location.origin,
    token: token || undefined,
    client: { name: 'herald-inspector', version: '1' },
  });
  view.client = client;
  setListening(true);
  client.on('state', (state) => setState(state));
  client.on('error', (err) => message('error', `${err.code}: ${err.message}`));
  client.on('status', (s) => message('status', `${s.source} is ${s.state}${s.detail ? `: ${s.detail}` : ''}`));
  client.on('closing', (c) => message('status', `server closing: ${c.reason}`));
  try {
    await client.connect();
    const last = Number($('last').value);
    view.sub = await client.subscribe({
      id: 'inspector',
      bindings: view.bindings,
      since: last > 0 ? { last } : undefined,
      onEvent,
    });
    view.sub.on('error', (err) => message('error', `${err.code}: ${err.message}`));
    // The server confirmed the subscription: events published from now on show.
    $('state').dataset.subscribed = 'true';
  } catch (err) {
    if (!err.code) message('error', String(err));
    // Client errors are already shown through its `error` event.
    stop();
  }
}

function stop() {
  const client = view.client;
  view.client = null;
  view.sub = null;
  client?.close();
  view.paused = false;
  delete $('state').dataset.subscribed;
  $('pause').textContent = 'Pause';
  setListening(false);
  setState(client ? 'closed' : 'idle');
}

async function togglePause() {
  if (!view.sub) return;
  view.paused = !view.paused;
  $('pause').textContent = view.paused ? 'Resume' : 'Pause';
  setState(view.client?.state ?? 'idle');
  try {
    await (view.paused ? view.sub.pause() : view.sub.resume());
  } catch (err) {
    message('error', `${err.code ?? 'error'}: ${err.message}`);
  }
}

function download() {
  const blob = new Blob([JSON.stringify(view.captured, null, 2)], { type: 'application/json' });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = `herald-events-${new Date().toISOString().replace(/[:.]/g, '-')}.json`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function applyFilter() {
  view.filter = $('filter').value.trim().toLowerCase();
  const byId = new Map(view.captured.map((e) => [String(e.id), e]));
  for (const li of $('events').children) {
    const event = byId.get(li.dataset.id);
    li.hidden = !event || !matches(event, view.filter);
  }
  updateCounts();
}

$('add-binding').addEventListener('submit', (e) => {
  e.preventDefault();
  const exchange = $('exchange').value.trim();
  const pattern = $('pattern').value.trim();
  if (!exchange) return;
  if (!view.bindings.some((b) => b.exchange === exchange && b.pattern === pattern)) {
    view.bindings.push({ exchange, pattern });
  }
  $('exchange').value = '';
  renderBindings();
  saveToUrl();
});
$('start').addEventListener('click', start);
$('stop').addEventListener('click', stop);
$('pause').addEventListener('click', togglePause);
$('clear').addEventListener('click', () => {
  view.captured = [];
  $('events').replaceChildren();
  updateCounts();
});
$('download').addEventListener('click', download);
$('filter').addEventListener('input', applyFilter);
$('max').addEventListener('change', () => {
  trim();
  updateCounts();
});
$('last').addEventListener('change', saveToUrl);

// The nodes view: GET /v1/cluster with the token (an admin token), shown
// as a table, refreshed every 2 s while the panel is open.
let nodesTimer = null;

async function refreshNodes() {
  const token = $('token').value.trim();
  const info = $('nodes-info');
  let body;
  try {
    const res = await fetch('/v1/cluster', { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    body = await res.json();
    if (!res.ok) {
      info.textContent = `${res.status}: ${body.message ?? body.code ?? 'refused'}`;
      info.dataset.state = 'error';
      return;
    }
  } catch (e) {
    info.textContent = `cannot load the nodes: ${e.message}`;
    info.dataset.state = 'error';
    return;
  }
  info.dataset.state = 'ok';
  info.textContent = body.mode === 'cluster'
    ? `cluster, seen from node ${body.node}, ${body.nodes.filter((n) => !n.lost).length} of ${body.nodes.length} up`
    : 'a single node (no [cluster] section)';
  const rows = body.nodes.map((n) => {
    const tr = document.createElement('tr');
    tr.className = n.state;
    tr.dataset.node = n.node;
    const cells = [
      n.node,
      n.state,
      `${(n.last_heartbeat_ms / 1000).toFixed(1)} s ago`,
      String(n.connections),
      String(n.sessions),
      String(n.responders),
    ];
    for (const text of cells) {
      const td = document.createElement('td');
      td.textContent = text;
      tr.append(td);
    }
    const peers = document.createElement('td');
    for (const p of n.peers) {
      const span = document.createElement('span');
      span.className = `peer ${p.up ? 'up' : 'down'}`;
      span.textContent = `${p.id} (${p.kind}): ${p.role}${p.up ? '' : ', down'}`;
      peers.append(span);
    }
    tr.append(peers);
    return tr;
  });
  $('nodes').tBodies[0].replaceChildren(...rows);
}

function scheduleNodes() {
  clearInterval(nodesTimer);
  nodesTimer = null;
  if ($('nodes-panel').open) {
    refreshNodes();
    if ($('auto-nodes').checked) nodesTimer = setInterval(refreshNodes, 2000);
  }
}

$('nodes-panel').addEventListener('toggle', scheduleNodes);
$('auto-nodes').addEventListener('change', scheduleNodes);
$('refresh-nodes').addEventListener('click', refreshNodes);

loadFromUrl();
renderBindings();
setState('idle');
document.body.dataset.ready = 'true';
