// Herald JavaScript client: an ES module with no runtime dependencies, for
// browsers and Node 20+. The protocol it speaks is docs/protocol.md; the
// guarantees it adds (exactly once, in order, across reconnects) are in
// clients/js/README.md.

/** Close codes after which reconnecting unchanged cannot help. */
const FATAL_CLOSE = new Set([1002, 1007, 1009, 4400, 4401, 4403, 4409]);

/** WebSocket readyState OPEN (the same in every implementation). */
const OPEN = 1;

/** Most client messages waiting for a connection; more is an error, not growth. */
const MAX_QUEUED = 1000;

/** An error from the server (`code` is a protocol error code) or from the client. */
export class HeraldError extends Error {
  /**
   * @param {string} code protocol error code, or `closed`/`disconnected` for client-side ends
   * @param {string} message
   * @param {object} [extra] `sub`, `closeCode`, …
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'HeraldError';
    this.code = code;
    Object.assign(this, extra);
  }
}

/** A tiny event emitter that works the same in browsers and Node. */
class Emitter {
  constructor() {
    this._handlers = new Map();
  }

  /** Calls `fn` for every `name` event; returns a function that stops it. */
  on(name, fn) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(fn);
    return () => this.off(name, fn);
  }

  /** Stops calling `fn` for `name`. */
  off(name, fn) {
    this._handlers.get(name)?.delete(fn);
  }

  _emit(name, value) {
    for (const fn of [...(this._handlers.get(name) ?? [])]) {
      try {
        fn(value);
      } catch (e) {
        // A listener's bug must not break the connection's bookkeeping.
        if (name !== 'error') this._emit('error', new HeraldError('handler', `${name} listener threw: ${e}`, { cause: e }));
        else console.error(e);
      }
    }
  }
}

/**
 * One subscription. Created by `HeraldClient.subscribe`; it survives
 * reconnects: the client resumes it on the server and drops duplicates.
 */
export class Subscription extends Emitter {
  constructor(client, options) {
    super();
    this._client = client;
    /** The subscription id (`sub`). */
    this.id = options.id;
    this.bindings = options.bindings;
    this.filters = options.filters;
    this.since = options.since;
    this.autoAck = options.autoAck ?? client.autoAck;
    this._onEvent = options.onEvent;
    /** Highest id handed to the application (everything at or below is seen or unwanted). */
    this.lastId = null;
    /** `head` of the first `subscribed`. */
    this.head = null;
    /** `recovered` of the latest `subscribed`. */
    this.recovered = null;
    /** `history` of the latest `subscribed` (`"from_now"` for a new upstream binding). */
    this.history = undefined;
    /** Paused as far as the application asked. */
    this.paused = false;
    this.active = true;
    this._confirmed = false; // the server holds it in the current session
    this._pauseDirty = false; // pause state changed while the server could not hear
    this._ackable = 0; // highest id the application has finished with
    this._ackSent = 0;
    this._ready = null;
  }

  /** Acknowledges every event up to and including `id` (manual ack mode, or earlier than the batch). */
  ack(id) {
    if (typeof id !== 'number' || id <= this._ackable) return;
    this._ackable = id;
    this._client._scheduleAck();
  }

  /** Stops delivery; events that arrive meanwhile come after `resume()`, nothing lost. */
  pause() {
    return this._setPaused(true);
  }

  /** Resumes delivery after `pause()`. */
  resume() {
    return this._setPaused(false);
  }

  _setPaused(paused) {
    if (!this.active) return Promise.resolve();
    this.paused = paused;
    this._pauseDirty = !this._client._isOpen() || !this._confirmed;
    return this._client._command({ type: paused ? 'pause' : 'resume', sub: this.id }, { settleOnDrop: true });
  }

  /** Ends the subscription; no event of it reaches the handler afterwards. */
  unsubscribe() {
    if (!this.active) return Promise.resolve();
    this.active = false;
    this._client._subs.delete(this.id);
    if (!this._client._isOpen()) {
      // The server forgets it with the session, or is told after a resume.
      this._client._orphans.add(this.id);
      return Promise.resolve();
    }
    return this._client._command({ type: 'unsubscribe', sub: this.id }, { settleOnDrop: true }).catch((e) => {
      if (e.code !== 'not_found') throw e;
    });
  }

  /** The `since` to subscribe with now: after what was seen, or the original start. */
  _startingPoint() {
    if (this.lastId !== null) return { id: this.lastId };
    return this.since;
  }

  _subscribeMessage() {
    const msg = { type: 'subscribe', sub: this.id, bindings: this.bindings };
    if (this.filters?.length) msg.filters = this.filters;
    const since = this._startingPoint();
    if (since) msg.since = since;
    return msg;
  }

  _deliver(msg) {
    if (!this.active) return;
    // Replays after a resume repeat what was sent but not acknowledged: ids
    // only grow within a subscription, so anything not above lastId is seen.
    if (this.lastId !== null && msg.id <= this.lastId) {
      this._client._duplicates++;
      return;
    }
    this.lastId = msg.id;
    const { type, ...event } = msg;
    try {
      this._onEvent?.(event);
    } catch (e) {
      this._client._emit('error', new HeraldError('handler', `event handler of ${this.id} threw: ${e}`, { sub: this.id, cause: e }));
    }
    this._emit('event', event);
    if (this.autoAck) this.ack(msg.id);
  }
}

/**
 * A connection to Herald that reconnects by itself and keeps its
 * subscriptions. See clients/js/README.md.
 */
export class HeraldClient extends Emitter {
  /**
   * @param {object} options see herald.d.ts (`ClientOptions`)
   */
  constructor(options) {
    super();
    const urls = options?.urls ?? (options?.url ? [options.url] : []);
    if (!urls.length) throw new TypeError('HeraldClient: `url` (or `urls`) is required');
    /** Every node's URL; each reconnect tries the next (cluster mode). */
    this.urls = urls.map((u) => websocketUrl(u));
    this._urlIndex = 0;
    this.url = this.urls[0];
    this._token = options.token;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError('HeraldClient: no WebSocket implementation; pass one as `WebSocket` (Node 20: the `ws` package)');
    }
    this.autoAck = options.autoAck ?? true;
    this.ackIntervalMs = options.ackIntervalMs ?? 200;
    const rc = options.reconnect ?? {};
    this.reconnect = rc !== false;
    this.initialDelayMs = rc.initialDelayMs ?? 250;
    this.maxDelayMs = rc.maxDelayMs ?? 30000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 15000;
    this.refreshBeforeExpiryMs = options.refreshBeforeExpiryMs ?? 30000;
    this.clientInfo = options.client ?? { name: 'herald-js', version: VERSION };

    /** `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
    this.state = 'idle';
    /** `{id, secret}` of the server-side session, once welcomed. */
    this.session = null;
    /** `limits` of the latest `welcome`. */
    this.limits = null;
    this._subs = new Map();
    this._orphans = new Set(); // unsubscribed while offline
    this._serving = new Map(); // service -> responder (rendezvous)
    this._pending = new Map(); // ref -> {resolve, reject, ws, settleOnDrop, msg}
    this._queue = []; // commands waiting for a connection
    this._nextRef = 1;
    this._nextSub = 1;
    this._ws = null;
    this._attempt = 0;
    this._retryAfterMs = 0;
    this._timers = { reconnect: null, ack: null, refresh: null, connect: null };
    this._authRetried = false;
    this._connectWaiters = [];
    this._duplicates = 0;
    this._reconnects = 0;
  }

  /** Number of duplicate events dropped (redeliveries after a resume). */
  get duplicatesDropped() {
    return this._duplicates;
  }

  /** Number of connections opened after the first. */
  get reconnects() {
    return this._reconnects;
  }

  /** Opens the connection; resolves at the first `welcome`, rejects if it can never connect. */
  connect() {
    if (this.state === 'open') return Promise.resolve(this);
    const waiter = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this.state === 'idle' || this.state === 'closed') {
      this._closedByUser = false;
      this._open();
    }
    return waiter;
  }

  /** Closes the connection for good; the server ends the session. */
  close() {
    this._closedByUser = true;
    this._flushAcks();
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(1000, 'bye');
      } catch {
        // already closing
      }
    }
    this._failPending(new HeraldError('closed', 'the client was closed'), () => true);
    for (const q of this._queue) q.reject(new HeraldError('closed', 'the client was closed'));
    this._queue = [];
    this._setState('closed');
    this._rejectConnect(new HeraldError('closed', 'the client was closed'));
  }

  /**
   * Subscribes. Resolves with the `Subscription` once the server confirms
   * it; the handler then gets every matching event once, in id order.
   */
  subscribe(options) {
    if (!options || !Array.isArray(options.bindings) || options.bindings.length === 0) {
      return Promise.reject(new TypeError('subscribe: `bindings` must be a non-empty array of {exchange, pattern}'));
    }
    if (this.state === 'closed') return Promise.reject(new HeraldError('closed', 'the client is closed'));
    let id = options.id;
    if (id === undefined) {
      do id = `s${this._nextSub++}`;
      while (this._subs.has(id));
    }
    if (this._subs.has(id)) return Promise.reject(new HeraldError('conflict', `subscription ${id} exists`, { sub: id }));
    const sub = new Subscription(this, { ...options, id });
    this._subs.set(id, sub);
    this._orphans.delete(id);
    sub._ready = new Promise((resolve, reject) => {
      sub._resolveReady = resolve;
      sub._rejectReady = reject;
    });
    if (this._isOpen()) this._sendSubscribe(sub);
    return sub._ready;
  }

  /** Publishes one event; resolves with its id once it is durable. */
  publish(event) {
    const msg = { type: 'publish', exchange: event.exchange, routing_key: event.routing_key ?? '', payload: event.payload };
    if (event.acl) msg.acl = event.acl;
    if (event.headers) msg.headers = event.headers;
    // With a key, publishing again after a lost answer is safe: the server
    // answers a repeat with the first id and stores it once.
    if (event.idempotency_key !== undefined) msg.idempotency_key = event.idempotency_key;
    return this._command(msg).then((answer) => answer.id);
  }

  /**
   * Rendezvous: asks one responder of `service` and resolves with its
   * answer. Rejects with `unavailable` (no responder), `timeout` (no answer
   * in time), `forbidden`, or `disconnected` (the connection was lost
   * before the answer: the request may or may not have been answered).
   */
  request(service, body, options = {}) {
    const msg = { type: 'request', service, body: body === undefined ? null : body };
    if (options.timeoutMs !== undefined) msg.timeout_ms = options.timeoutMs;
    return this._command(msg).then((answer) => answer.body);
  }

  /**
   * Rendezvous: answers requests for `service` with `handler(body, info)`
   * (its return value, or what its promise resolves to, is the answer).
   * The registration is renewed after every reconnect. Resolves once the
   * server confirms it, with an object whose `stop()` ends it.
   */
  serve(service, handler, options = {}) {
    if (typeof handler !== 'function') return Promise.reject(new TypeError('serve: `handler` must be a function'));
    if (this._serving.has(service)) return Promise.reject(new HeraldError('conflict', `already serving ${service}`));
    const responder = {
      service,
      concurrency: options.concurrency ?? 1,
      handler,
      active: true,
      stop: () => {
        if (!responder.active) return Promise.resolve();
        responder.active = false;
        this._serving.delete(service);
        if (!this._isOpen()) return Promise.resolve();
        return this._command({ type: 'unserve', service }, { settleOnDrop: true }).then(
          () => undefined,
          () => undefined,
        );
      },
    };
    this._serving.set(service, responder);
    responder._ready = new Promise((resolve, reject) => {
      responder._resolve = resolve;
      responder._reject = reject;
    });
    if (this._isOpen()) this._sendServe(responder);
    return responder._ready;
  }

  /** Round trip to the server. */
  ping() {
    return this._command({ type: 'ping' }).then(() => undefined);
  }

  // ---- internals -------------------------------------------------------

  _isOpen() {
    return this.state === 'open' && this._ws !== null && this._ws.readyState === OPEN;
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', state);
  }

  async _open(takeOver = false) {
    const first = this.state === 'idle' || this.state === 'closed';
    if (!takeOver) this._setState(first ? 'connecting' : 'reconnecting');
    if (!first) this._reconnects++;
    let token;
    try {
      token = typeof this._token === 'function' ? await this._token() : this._token;
    } catch (e) {
      this._emit('error', new HeraldError('token', `the token callback failed: ${e}`, { cause: e }));
      if (!takeOver) this._scheduleReconnect();
      return;
    }
    if (this._closedByUser) return;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (e) {
      this._emit('error', new HeraldError('connect', `cannot open ${this.url}: ${e}`, { cause: e }));
      if (!takeOver) this._scheduleReconnect();
      return;
    }
    const previous = this._ws;
    this._ws = ws;
    ws._heraldWelcomed = false;
    ws._heraldToken = token;
    if (takeOver && previous) {
      // The server closes the previous connection (4409) once this one
      // resumes the session; until then its events still count.
      previous._heraldRetired = true;
    }
    clearTimeout(this._timers.connect);
    this._timers.connect = setTimeout(() => {
      if (this._ws === ws && !ws._heraldWelcomed) {
        this._emit('error', new HeraldError('timeout', `no welcome within ${this.connectTimeoutMs} ms`));
        this._drop(ws, 4000, 'connect timeout');
      }
    }, this.connectTimeoutMs);
    ws.onopen = () => {
      // `batch`: the server may put several messages in one frame, one per
      // line (fewer frames to parse when events come fast).
      const hello = { type: 'hello', client: this.clientInfo, batch: true };
      if (token) hello.token = token;
      if (this.session) hello.session = this.session;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (ev) => this._onMessage(ws, ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {
      // A close event always follows; it carries what can be known.
    };
  }

  /** Gives up on a socket whose close event may never come (connect timeout). */
  _drop(ws, code, reason) {
    try {
      ws.close(code, reason);
    } catch {
      // ignore
    }
    this._onClose(ws, code, reason);
  }

  _onMessage(ws, data) {
    const text = typeof data === 'string' ? data : new TextDecoder().decode(data);
    // A batched frame holds one message per line (JSON never contains a raw newline).
    if (text.includes('\n')) {
      for (const line of text.split('\n')) if (line) this._onOne(ws, line);
      return;
    }
    this._onOne(ws, text);
  }

  _onOne(ws, text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      this._emit('error', new HeraldError('bad_message', 'the server sent something that is not JSON'));
      return;
    }
    switch (msg.type) {
      case 'welcome':
        return this._onWelcome(ws, msg);
      case 'event': {
        const sub = this._subs.get(msg.sub);
        if (sub) sub._deliver(msg);
        return;
      }
      case 'subscribed':
        return this._onSubscribed(msg);
      case 'error':
        return this._onError(msg);
      case 'status':
        return this._emit('status', msg);
      case 'incoming':
        return this._onIncoming(msg);
      case 'closing':
        this._retryAfterMs = msg.retry_after_ms ?? 0;
        return this._emit('closing', msg);
      default:
        if (msg.ref !== undefined) this._settle(msg.ref, msg);
    }
  }

  _onWelcome(ws, msg) {
    if (ws !== this._ws) return;
    ws._heraldWelcomed = true;
    clearTimeout(this._timers.connect);
    this._attempt = 0;
    this._retryAfterMs = 0;
    this._authRetried = false;
    this.session = msg.session;
    this.limits = msg.limits;
    this.heartbeatMs = msg.heartbeat_ms;
    if (!msg.resumed) {
      // A new session holds nothing: every subscription starts again after
      // the last id the application saw.
      for (const sub of this._subs.values()) sub._confirmed = false;
      this._orphans.clear();
    }
    this._setState('open');
    this._emit('welcome', msg);
    for (const id of this._orphans) this._command({ type: 'unsubscribe', sub: id }, { settleOnDrop: true }).catch(() => {});
    this._orphans.clear();
    for (const sub of this._subs.values()) {
      if (!sub._confirmed) {
        this._sendSubscribe(sub);
      } else if (sub._pauseDirty) {
        sub._pauseDirty = false;
        this._command({ type: sub.paused ? 'pause' : 'resume', sub: sub.id }, { settleOnDrop: true }).catch(() => {});
      }
    }
    // Responders belong to a connection, not to the session: register again.
    for (const responder of this._serving.values()) this._sendServe(responder);
    const queued = this._queue;
    this._queue = [];
    for (const q of queued) this._sendCommand(q.msg, q);
    this._flushAcks();
    this._scheduleRefresh(ws);
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) w.resolve(this);
  }

  _sendSubscribe(sub) {
    const msg = sub._subscribeMessage();
    this._command(msg, { settleOnDrop: true, sub }).catch(() => {
      // _onError has already settled the subscription.
    });
    if (sub.paused) {
      sub._pauseDirty = false;
      this._command({ type: 'pause', sub: sub.id }, { settleOnDrop: true }).catch(() => {});
    }
  }

  _sendServe(responder) {
    const msg = { type: 'serve', service: responder.service };
    if (responder.concurrency !== 1) msg.concurrency = responder.concurrency;
    this._command(msg, { settleOnDrop: true }).then(
      (answer) => {
        if (answer && responder._resolve) {
          responder._resolve(responder);
          responder._resolve = null;
          responder._reject = null;
        }
      },
      (err) => {
        this._serving.delete(responder.service);
        responder.active = false;
        if (responder._reject) responder._reject(err);
        else this._emit('error', err);
        responder._resolve = null;
        responder._reject = null;
      },
    );
  }

  async _onIncoming(msg) {
    const responder = this._serving.get(msg.service);
    if (!responder) return; // stopped meanwhile: the request times out on the server
    let body;
    try {
      body = await responder.handler(msg.body, { request: msg.request, service: msg.service, deadlineMs: msg.deadline_ms });
    } catch (e) {
      this._emit('error', new HeraldError('handler', `the ${msg.service} handler threw: ${e}`, { cause: e, request: msg.request }));
      return;
    }
    if (!this._isOpen()) return; // the server already failed it when the connection dropped
    try {
      await this._command({ type: 'answer', request: msg.request, body: body === undefined ? null : body });
    } catch (e) {
      // `not_found`: the requester left or the deadline passed.
      this._emit('error', e);
    }
  }

  _onSubscribed(msg) {
    if (msg.ref !== undefined) this._settle(msg.ref, msg);
    const sub = this._subs.get(msg.sub);
    if (!sub) {
      // Restored by a resume after the application unsubscribed offline.
      if (this._isOpen()) this._command({ type: 'unsubscribe', sub: msg.sub }, { settleOnDrop: true }).catch(() => {});
      return;
    }
    const first = sub.head === null;
    sub._confirmed = true;
    sub.recovered = msg.recovered;
    sub.history = msg.history;
    if (first) {
      sub.head = msg.head;
      // A live subscription does not want what came before its head, so a
      // later re-subscribe starts right after it.
      if (!sub.since && sub.lastId === null) sub.lastId = msg.head;
    }
    sub._emit('subscribed', msg);
    if (sub._resolveReady) {
      sub._resolveReady(sub);
      sub._resolveReady = null;
      sub._rejectReady = null;
    }
  }

  _onError(msg) {
    const err = new HeraldError(msg.code, msg.message, { sub: msg.sub, ref: msg.ref });
    const pending = msg.ref !== undefined ? this._pending.get(msg.ref) : undefined;
    if (pending) {
      this._pending.delete(msg.ref);
      const sub = pending.sub;
      if (sub && msg.code === 'conflict') {
        // The session already holds it (a resume restored what an unanswered
        // subscribe had created): its `subscribed` push is on the way.
        pending.resolve(msg);
        return;
      }
      if (sub) {
        this._subs.delete(sub.id);
        sub.active = false;
        sub._rejectReady?.(err);
        sub._resolveReady = null;
        sub._rejectReady = null;
        sub._emit('error', err);
      }
      pending.reject(err);
      if (!sub) return;
    }
    const sub = msg.sub !== undefined ? this._subs.get(msg.sub) : undefined;
    if (sub && !pending) {
      // On a resume the server drops a subscription the new token no
      // longer allows: it is over here too.
      if (msg.code === 'forbidden') {
        this._subs.delete(sub.id);
        sub.active = false;
      }
      sub._emit('error', err);
    }
    this._emit('error', err);
  }

  _onClose(ws, code, reason) {
    if (ws._heraldClosed) return;
    ws._heraldClosed = true;
    const current = ws === this._ws;
    const dropped = new HeraldError('disconnected', `the connection closed (${code}) before the answer came`, { closeCode: code });
    this._failPending(dropped, (p) => p.ws === ws);
    if (!current) return; // a retired connection, taken over by the current one
    this._ws = null;
    clearTimeout(this._timers.connect);
    clearTimeout(this._timers.refresh);
    this._emit('disconnect', { code, reason });
    if (this._closedByUser) return;
    if (FATAL_CLOSE.has(code)) {
      const renewable = code === 4401 && typeof this._token === 'function' && ws._heraldWelcomed && !this._authRetried;
      if (!renewable) {
        const err = new HeraldError('closed', `the server closed the connection with ${code} (${reason || 'no reason'}); not reconnecting`, { closeCode: code });
        this._fatal(err);
        return;
      }
      // The token expired while connected: one more try with a fresh one.
      this._authRetried = true;
    }
    if (!this.reconnect) {
      this._fatal(new HeraldError('closed', `the connection closed (${code}); reconnect is off`, { closeCode: code }));
      return;
    }
    this._scheduleReconnect();
  }

  _fatal(err) {
    this._clearTimers();
    for (const q of this._queue) q.reject(err);
    this._queue = [];
    this._failPending(err, () => true);
    for (const sub of this._subs.values()) {
      sub._rejectReady?.(err);
      sub._resolveReady = null;
      sub._rejectReady = null;
    }
    this._setState('closed');
    this._emit('error', err);
    this._rejectConnect(err);
  }

  _rejectConnect(err) {
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) w.reject(err);
  }

  _scheduleReconnect() {
    this._setState('reconnecting');
    // With several nodes, the next attempt goes to the next one: the session
    // resumes on any node of a cluster.
    this._urlIndex = (this._urlIndex + 1) % this.urls.length;
    this.url = this.urls[this._urlIndex];
    // Exponential backoff with full jitter, never sooner than the server asked.
    const cap = Math.min(this.maxDelayMs, this.initialDelayMs * 2 ** Math.min(this._attempt, 30));
    const delay = Math.max(Math.random() * cap, this._retryAfterMs);
    this._attempt++;
    this._retryAfterMs = 0;
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = setTimeout(() => this._open(), delay);
  }

  /** Before the token expires, takes the session over with a fresh one. */
  _scheduleRefresh(ws) {
    clearTimeout(this._timers.refresh);
    if (typeof this._token !== 'function') return;
    const exp = tokenExpiry(ws._heraldToken);
    if (exp === null) return;
    const wait = Math.max(1000, exp * 1000 - Date.now() - this.refreshBeforeExpiryMs);
    this._timers.refresh = setTimeout(() => {
      if (this._ws === ws && this._isOpen()) this._open(true);
    }, wait);
  }

  _clearTimers() {
    for (const t of Object.values(this._timers)) clearTimeout(t);
  }

  /**
   * Sends a request with a fresh ref; resolves with the answer. While
   * offline it waits for the connection (bounded). `settleOnDrop`: the
   * client re-applies the command itself after a reconnect, so a lost
   * answer is not an error.
   */
  _command(msg, options = {}) {
    return new Promise((resolve, reject) => {
      const entry = { msg, resolve, reject, ...options };
      if (this._isOpen()) {
        this._sendCommand(msg, entry);
      } else if (this.state === 'closed') {
        reject(new HeraldError('closed', 'the client is closed'));
      } else if (options.settleOnDrop) {
        resolve(undefined);
      } else if (this._queue.length >= MAX_QUEUED) {
        reject(new HeraldError('limit_exceeded', `more than ${MAX_QUEUED} commands wait for a connection`));
      } else {
        this._queue.push(entry);
      }
    });
  }

  _sendCommand(msg, entry) {
    const ref = this._nextRef++;
    entry.ws = this._ws;
    this._pending.set(ref, entry);
    this._ws.send(JSON.stringify({ ...msg, ref }));
  }

  _settle(ref, msg) {
    const p = this._pending.get(ref);
    if (!p) return;
    this._pending.delete(ref);
    p.resolve(msg);
  }

  _failPending(err, which) {
    for (const [ref, p] of this._pending) {
      if (!which(p)) continue;
      this._pending.delete(ref);
      if (p.settleOnDrop) p.resolve(undefined);
      else p.reject(err);
    }
  }

  _scheduleAck() {
    if (this._timers.ack) return;
    this._timers.ack = setTimeout(() => {
      this._timers.ack = null;
      this._flushAcks();
    }, this.ackIntervalMs);
  }

  _flushAcks() {
    if (!this._isOpen()) return;
    for (const sub of this._subs.values()) {
      if (sub._confirmed && sub._ackable > sub._ackSent) {
        sub._ackSent = sub._ackable;
        this._ws.send(JSON.stringify({ type: 'ack', sub: sub.id, id: sub._ackable }));
      }
    }
  }
}

/** This client's version. */
export const VERSION = '0.1.0';

/** `http(s)://host[/]` or `ws(s)://…` to the WebSocket endpoint's URL. */
export function websocketUrl(url) {
  const u = new URL(url, globalThis.location?.href);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/v1/ws';
  return u.toString();
}

/** The `exp` claim (seconds) of a JWT, or null when it has none or is not a JWT. */
export function tokenExpiry(token) {
  if (typeof token !== 'string') return null;
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return typeof json.exp === 'number' ? json.exp : null;
  } catch {
    return null;
  }
}
