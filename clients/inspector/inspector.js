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

// The gateway view: counters and gauges from GET /metrics (its OpenMetrics
// text, the same numbers Prometheus scrapes), peers from GET /v1/peers,
// refreshed every second while the panel is open. Needs an admin token
// (or the metrics token, or open mode).
const CHART_POINTS = 120;
const MAX_GATEWAY_ERRORS = 50;
/** Counters that count something going wrong, and how to say it. */
const ERROR_COUNTERS = {
  herald_auth_failures_total: 'authentication failures',
  herald_connections_refused_total: 'connections refused',
  herald_budget_refusals_total: 'refused by a budget',
  herald_slow_consumer_closes_total: 'slow consumers closed',
  herald_drops_total: 'event frames dropped',
  herald_session_write_errors_total: 'session store write errors',
  herald_rendezvous_unavailable_total: 'rendezvous without a responder',
  herald_rendezvous_timeouts_total: 'rendezvous timeouts',
  herald_peer_err_total: 'messages a peer rejected',
};
const gateway = { timer: null, previous: null, at: 0, points: [], errors: [] };

/** `name{labels} value` lines of an OpenMetrics text, as [{name, labels, value}]. */
function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const value = Number(m[3]);
    if (Number.isFinite(value)) out.push({ name: m[1], labels: m[2] ?? '', value });
  }
  return out;
}

const total = (series, name) => series.filter((s) => s.name === name).reduce((a, s) => a + s.value, 0);

function formatCount(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n));
}

function formatBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function authHeaders() {
  const token = $('token').value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function drawChart() {
  const pts = gateway.points;
  const peak = Math.max(1, ...pts.map((p) => Math.max(p.in, p.out)));
  const line = (key) => pts
    .map((p, i) => `${((i + CHART_POINTS - pts.length) * 600) / (CHART_POINTS - 1)},${88 - (p[key] / peak) * 84}`)
    .join(' ');
  $('line-in').setAttribute('points', line('in'));
  $('line-out').setAttribute('points', line('out'));
  $('rate-peak').textContent = formatCount(peak === 1 && !pts.some((p) => p.in || p.out) ? 0 : peak);
}

function noteErrors(series, now) {
  const current = new Map();
  for (const s of series) {
    if (ERROR_COUNTERS[s.name] !== undefined) current.set(s.name + s.labels, s);
  }
  const stamp = new Date(now).toLocaleTimeString();
  const fresh = [];
  for (const [key, s] of current) {
    const before = gateway.previous ? (gateway.previous.get(key)?.value ?? 0) : null;
    const labels = s.labels.replace(/,?node="[^"]*"/, '').replace('{}', '');
    if (before === null) {
      if (s.value > 0) fresh.push(`before ${stamp}: ${ERROR_COUNTERS[s.name]} ${labels} ${s.value} since start`);
    } else if (s.value > before) {
      fresh.push(`${stamp}: ${ERROR_COUNTERS[s.name]} ${labels} +${s.value - before} (${s.value} since start)`);
    }
  }
  gateway.previous = current;
  if (fresh.length) gateway.errors = [...fresh, ...gateway.errors].slice(0, MAX_GATEWAY_ERRORS);
  const list = $('gateway-errors');
  if (!gateway.errors.length) {
    const li = document.createElement('li');
    li.className = 'none';
    li.textContent = 'none since the page opened';
    list.replaceChildren(li);
    return;
  }
  list.replaceChildren(...gateway.errors.map((text) => {
    const li = document.createElement('li');
    li.textContent = text.replace(/\s+/g, ' ');
    return li;
  }));
}

async function refreshGateway() {
  const info = $('gateway-info');
  let text;
  try {
    const res = await fetch('/metrics', { headers: authHeaders() });
    text = await res.text();
    if (!res.ok) {
      let why = text;
      try {
        why = JSON.parse(text).error?.message ?? text;
      } catch {
        // not JSON
      }
      info.textContent = `/metrics: ${res.status}: ${why}`;
      info.dataset.state = 'error';
      return;
    }
  } catch (e) {
    info.textContent = `cannot load /metrics: ${e.message}`;
    info.dataset.state = 'error';
    return;
  }
  const now = Date.now();
  const series = parseMetrics(text);
  const counters = { in: total(series, 'herald_events_in_total'), out: total(series, 'herald_deliveries_total') };
  if (gateway.last && now > gateway.at) {
    const dt = (now - gateway.at) / 1000;
    const point = {
      in: Math.max(0, (counters.in - gateway.last.in) / dt),
      out: Math.max(0, (counters.out - gateway.last.out) / dt),
    };
    gateway.points = [...gateway.points, point].slice(-CHART_POINTS);
    $('rate-in').textContent = formatCount(point.in);
    $('rate-out').textContent = formatCount(point.out);
    drawChart();
  }
  gateway.last = counters;
  gateway.at = now;
  $('g-connections').textContent = formatCount(total(series, 'herald_connections'));
  $('g-sessions').textContent = formatCount(total(series, 'herald_sessions'));
  $('g-subscriptions').textContent = formatCount(total(series, 'herald_subscriptions'));
  $('g-responders').textContent = formatCount(total(series, 'herald_rendezvous_responders'));
  $('g-head').textContent = String(total(series, 'herald_log_head'));
  $('g-log').textContent = `${formatCount(total(series, 'herald_log_events'))} events, ${formatBytes(total(series, 'herald_log_bytes'))}`;
  noteErrors(series, now);
  info.dataset.state = 'ok';
  info.textContent = `updated ${new Date(now).toLocaleTimeString()}`;
  await refreshPeers();
}

async function refreshPeers() {
  const info = $('peers-info');
  let body;
  try {
    const res = await fetch('/v1/peers', { headers: authHeaders() });
    body = await res.json();
    if (!res.ok) {
      info.textContent = `${res.status}: ${body.error?.message ?? 'refused'}`;
      return;
    }
  } catch (e) {
    info.textContent = `cannot load the peers: ${e.message}`;
    return;
  }
  const ids = Object.keys(body).sort();
  info.textContent = ids.length ? '' : 'no peers configured ([[peer]] in the configuration)';
  $('peers').tBodies[0].replaceChildren(...ids.map((id) => {
    const p = body[id];
    const tr = document.createElement('tr');
    tr.dataset.peer = id;
    const cells = [
      [id], [p.type], [p.up ? 'up' : 'down', p.up ? 'up' : 'down'], [p.control], [p.role],
      [formatCount(p.in)], [formatCount(p.out)], [formatCount(p.err)], [p.detail],
    ];
    for (const [text, cls] of cells) {
      const td = document.createElement('td');
      td.textContent = text ?? '';
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  }));
}

function scheduleGateway() {
  clearInterval(gateway.timer);
  gateway.timer = null;
  if ($('gateway-panel').open) {
    refreshGateway();
    if ($('auto-gateway').checked) gateway.timer = setInterval(refreshGateway, 1000);
  }
}

$('gateway-panel').addEventListener('toggle', scheduleGateway);
$('auto-gateway').addEventListener('change', scheduleGateway);

loadFromUrl();
renderBindings();
setState('idle');
document.body.dataset.ready = 'true';
