"""The connection to Herald: reconnects with backoff, resumes its session,
keeps its subscriptions and responders, and hands every event to the
application once and in order (clients/python/README.md)."""

from __future__ import annotations

import asyncio
import inspect
import json
import random
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Union
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .errors import HeraldError, error_from
from .subscription import EventHandler, Subscription

__all__ = ["HeraldClient", "Responder", "VERSION", "websocket_url"]

#: This client's version (sent in ``hello.client``).
VERSION = "0.1.0"

#: Close codes after which reconnecting unchanged cannot help.
FATAL_CLOSE = {1002, 1007, 1009, 4400, 4401, 4403, 4409}

#: Most commands waiting for a connection; more is an error, not growth.
MAX_QUEUED = 1000

#: Largest frame read from the server (its batches are at most 64 KiB,
#: events at most ``limits.max_payload_bytes``).
MAX_FRAME = 64 << 20

#: A token: a string, or a function (plain or async) called for each connection.
TokenSource = Union[None, str, Callable[[], Union[str, Awaitable[str]]]]

#: A rendezvous handler: ``handler(body, info)``, plain or async; its result is the answer.
ServeHandler = Callable[[Any, Dict[str, Any]], Any]


def websocket_url(url: str) -> str:
    """``http(s)://host[/]`` or ``ws(s)://...`` to the WebSocket endpoint's URL."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/v1/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class Responder:
    """A rendezvous responder registered by :meth:`HeraldClient.serve`."""

    def __init__(self, client: "HeraldClient", service: str, handler: ServeHandler, concurrency: int) -> None:
        self._client = client
        self.service = service
        self.handler = handler
        self.concurrency = concurrency
        self.active = True
        self._ready: "asyncio.Future[Responder]" = asyncio.get_running_loop().create_future()

    async def stop(self) -> None:
        """Stop taking requests (those already taken may still be answered)."""
        if not self.active:
            return
        self.active = False
        self._client._serving.pop(self.service, None)
        if self._client._is_open():
            try:
                await self._client._command({"type": "unserve", "service": self.service}, settle_on_drop=True)
            except HeraldError:
                pass


class HeraldClient:
    """A connection to Herald that reconnects by itself and keeps its
    subscriptions. Use ``async with HeraldClient(url) as client:`` or
    ``await client.connect()`` ... ``await client.close()``.

    :param url: ``http(s)://host`` (``/v1/ws`` is added) or a ``ws(s)://`` URL.
    :param urls: several nodes of a cluster; each reconnect tries the next one.
    :param token: a JWT, or a function (plain or async) returning one, called for every connection.
    :param auto_ack: acknowledge each event once the application is done with it.
    :param ack_interval: seconds between batched acks.
    :param reconnect: reconnect after a lost connection (with exponential backoff and full jitter).
    :param initial_delay: the first backoff cap, seconds; doubled per failed attempt.
    :param max_delay: the largest backoff, seconds.
    :param connect_timeout: seconds to wait for ``welcome``.
    :param max_buffered: events a subscription buffers before the client stops reading.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        urls: Optional[Sequence[str]] = None,
        token: TokenSource = None,
        auto_ack: bool = True,
        ack_interval: float = 0.2,
        reconnect: bool = True,
        initial_delay: float = 0.25,
        max_delay: float = 30.0,
        connect_timeout: float = 15.0,
        max_buffered: int = 10_000,
        client_info: Optional[Dict[str, Any]] = None,
    ) -> None:
        all_urls = list(urls or ([url] if url else []))
        if not all_urls:
            raise TypeError("HeraldClient: `url` (or `urls`) is required")
        #: Every node's WebSocket URL.
        self.urls = [websocket_url(u) for u in all_urls]
        self.url = self.urls[0]
        self._url_index = 0
        self._token = token
        self.auto_ack = auto_ack
        self.ack_interval = ack_interval
        self.reconnect = reconnect
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.connect_timeout = connect_timeout
        self.max_buffered = max_buffered
        self.client_info = client_info or {"name": "herald-python", "version": VERSION}
        #: ``idle``, ``connecting``, ``open``, ``reconnecting`` or ``closed``.
        self.state = "idle"
        #: ``{id, secret}`` of the server-side session, once welcomed.
        self.session: Optional[Dict[str, str]] = None
        #: ``limits`` of the latest ``welcome``.
        self.limits: Optional[Dict[str, Any]] = None
        #: Duplicate events dropped (redeliveries after a resume).
        self.duplicates_dropped = 0
        #: Connections opened after the first.
        self.reconnects = 0
        self._subs: Dict[str, Subscription] = {}
        self._orphans: Set[str] = set()
        self._serving: Dict[str, Responder] = {}
        self._pending: Dict[int, Dict[str, Any]] = {}
        self._queue: List[Dict[str, Any]] = []
        self._next_ref = 1
        self._next_sub = 1
        self._ws: Any = None
        self._attempt = 0
        self._retry_after = 0.0
        self._closing = False
        self._auth_retried = False
        self._runner: Optional["asyncio.Task[None]"] = None
        self._tasks: Set["asyncio.Task[Any]"] = set()
        self._connected: Optional["asyncio.Future[HeraldClient]"] = None
        self._listeners: Dict[str, List[Callable[[Any], Any]]] = {}

    # ---- lifecycle ------------------------------------------------------

    async def __aenter__(self) -> "HeraldClient":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> "HeraldClient":
        """Open the connection; returns at the first ``welcome``, raises
        :class:`HeraldError` if the server refuses for good."""
        if self.state == "open":
            return self
        loop = asyncio.get_running_loop()
        if self._connected is None or self._connected.done():
            self._connected = loop.create_future()
        waiter = self._connected
        if self._runner is None or self._runner.done():
            self._closing = False
            self._runner = loop.create_task(self._run())
            self._spawn(self._ack_loop())
        return await asyncio.shield(waiter)

    async def close(self) -> None:
        """Close for good: the server ends the session."""
        self._closing = True
        await self._flush_acks()
        ws = self._ws
        self._ws = None
        if ws is not None:
            try:
                await ws.close(1000, "bye")
            except Exception:
                pass
        err = HeraldError("closed", "the client was closed")
        self._end_everything(err)
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except (asyncio.CancelledError, Exception):
                pass
        for t in list(self._tasks):
            t.cancel()
        self._set_state("closed")

    def on(self, name: str, fn: Callable[[Any], Any]) -> Callable[[], None]:
        """Call ``fn(value)`` for every ``name`` event (``state``, ``welcome``,
        ``status``, ``error``, ``closing``, ``disconnect``); returns a function that stops it."""
        self._listeners.setdefault(name, []).append(fn)
        return lambda: self._listeners.get(name, []).remove(fn) if fn in self._listeners.get(name, []) else None

    # ---- the API --------------------------------------------------------

    async def subscribe(
        self,
        bindings: List[Dict[str, str]],
        *,
        filters: Optional[List[Any]] = None,
        since: Optional[Dict[str, Any]] = None,
        id: Optional[str] = None,
        auto_ack: Optional[bool] = None,
        on_event: Optional[EventHandler] = None,
    ) -> Subscription:
        """Subscribe; returns once the server confirms (raises its error:
        ``forbidden``, ``bad_request``, ``conflict``, ``limit_exceeded``).

        :param bindings: ``[{"exchange": ..., "pattern": ...}]``.
        :param filters: ``[[field, op, value], ...]`` (docs/protocol.md).
        :param since: ``{"id": N}``, ``{"last": N}`` or ``{"time": RFC3339}``; absent: live.
        :param on_event: call this for each event instead of iterating.
        """
        if not bindings:
            raise TypeError("subscribe: `bindings` must be a non-empty list of {exchange, pattern}")
        if self.state == "closed":
            raise HeraldError("closed", "the client is closed")
        sub_id = id
        if sub_id is None:
            while True:
                sub_id = f"s{self._next_sub}"
                self._next_sub += 1
                if sub_id not in self._subs:
                    break
        if sub_id in self._subs:
            raise HeraldError("conflict", f"subscription {sub_id} exists", sub=sub_id)
        sub = Subscription(
            self, sub_id, bindings, filters, since,
            self.auto_ack if auto_ack is None else auto_ack, on_event, self.max_buffered,
        )
        self._subs[sub_id] = sub
        self._orphans.discard(sub_id)
        if self._is_open():
            self._send_subscribe(sub)
        return await asyncio.shield(sub._ready)

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: Any,
        *,
        acl: Optional[List[str]] = None,
        headers: Optional[Dict[str, Any]] = None,
        idempotency_key: Optional[str] = None,
    ) -> int:
        """Publish one event; returns its id once it is durable. Raises
        ``disconnected`` if the connection was lost before the answer (it may
        or may not be stored: give an ``idempotency_key`` to retry safely)."""
        msg: Dict[str, Any] = {"type": "publish", "exchange": exchange, "routing_key": routing_key, "payload": payload}
        if acl is not None:
            msg["acl"] = acl
        if headers is not None:
            msg["headers"] = headers
        if idempotency_key is not None:
            msg["idempotency_key"] = idempotency_key
        answer = await self._command(msg)
        return int(answer["id"])

    async def request(self, service: str, body: Any = None, *, timeout: Optional[float] = None) -> Any:
        """Rendezvous: ask one responder of ``service``; returns its answer.
        Raises ``unavailable`` (no responder), ``timeout``, ``forbidden`` or
        ``disconnected``."""
        msg: Dict[str, Any] = {"type": "request", "service": service, "body": body}
        if timeout is not None:
            msg["timeout_ms"] = max(1, int(timeout * 1000))
        answer = await self._command(msg)
        return answer.get("body")

    async def serve(self, service: str, handler: ServeHandler, *, concurrency: int = 1) -> Responder:
        """Rendezvous: answer requests for ``service`` with
        ``handler(body, {"request", "service", "deadline_ms"})`` (its result,
        awaited if needed, is the answer). Renewed after every reconnect."""
        if service in self._serving:
            raise HeraldError("conflict", f"already serving {service}")
        responder = Responder(self, service, handler, concurrency)
        self._serving[service] = responder
        if self._is_open():
            self._send_serve(responder)
        return await asyncio.shield(responder._ready)

    async def ping(self) -> None:
        """Round trip to the server."""
        await self._command({"type": "ping"})

    # ---- connection -----------------------------------------------------

    def _is_open(self) -> bool:
        return self.state == "open" and self._ws is not None

    def _set_state(self, state: str) -> None:
        if self.state != state:
            self.state = state
            self._emit("state", state)

    def _emit(self, name: str, value: Any) -> None:
        for fn in list(self._listeners.get(name, [])):
            try:
                fn(value)
            except Exception:  # a listener's bug must not break the bookkeeping
                pass

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _token_now(self) -> Optional[str]:
        if callable(self._token):
            value = self._token()
            if inspect.isawaitable(value):
                value = await value
            return value
        return self._token

    async def _run(self) -> None:
        first = True
        while not self._closing:
            self._set_state("connecting" if first else "reconnecting")
            if not first:
                self.reconnects += 1
            first = False
            code, reason, welcomed = await self._connection()
            if self._closing:
                return
            self._emit("disconnect", {"code": code, "reason": reason})
            if code in FATAL_CLOSE:
                renewable = code == 4401 and callable(self._token) and welcomed and not self._auth_retried
                if not renewable:
                    self._fatal(HeraldError("closed", f"the server closed the connection with {code} ({reason or 'no reason'}); not reconnecting", close_code=code))
                    return
                # The token expired while connected: one more try with a fresh one.
                self._auth_retried = True
            if not self.reconnect:
                self._fatal(HeraldError("closed", f"the connection closed ({code}); reconnect is off", close_code=code))
                return
            # The next node, after exponential backoff with full jitter, never
            # sooner than the server asked (`closing.retry_after_ms`).
            self._url_index = (self._url_index + 1) % len(self.urls)
            self.url = self.urls[self._url_index]
            cap = min(self.max_delay, self.initial_delay * 2 ** min(self._attempt, 30))
            delay = max(random.random() * cap, self._retry_after)
            self._attempt += 1
            self._retry_after = 0.0
            self._set_state("reconnecting")
            await asyncio.sleep(delay)

    async def _connection(self) -> "tuple[int, str, bool]":
        """One connection, from connect to close: (close code, reason, welcomed)."""
        try:
            token = await self._token_now()
        except Exception as e:
            self._emit("error", HeraldError("token", f"the token callback failed: {e!r}", cause=e))
            return 1006, "token callback failed", False
        welcomed = False
        try:
            async with ws_connect(self.url, open_timeout=self.connect_timeout, max_size=MAX_FRAME) as ws:
                hello: Dict[str, Any] = {"type": "hello", "client": self.client_info, "batch": True}
                if token:
                    hello["token"] = token
                if self.session:
                    hello["session"] = self.session
                await ws.send(json.dumps(hello))
                frames = ws.__aiter__()
                first = await asyncio.wait_for(frames.__anext__(), self.connect_timeout)
                self._ws = ws
                welcomed = await self._on_frame(ws, first)
                async for frame in frames:
                    welcomed = await self._on_frame(ws, frame) or welcomed
            code, reason = ws.close_code or 1000, ws.close_reason or ""
        except StopAsyncIteration:
            code, reason = 1000, "closed before welcome"
        except ConnectionClosed as e:
            rcvd = e.rcvd
            code, reason = (rcvd.code, rcvd.reason) if rcvd is not None else (1006, "connection lost")
        except asyncio.TimeoutError:
            self._emit("error", HeraldError("timeout", f"no welcome within {self.connect_timeout} s"))
            code, reason = 1006, "connect timeout"
        except (OSError, InvalidHandshake, InvalidURI) as e:
            self._emit("error", HeraldError("connect", f"cannot open {self.url}: {e}", cause=e))
            code, reason = 1006, str(e)
        finally:
            self._ws = None
            self._fail_pending(HeraldError("disconnected", "the connection closed before the answer came"))
        return code, reason, welcomed

    async def _on_frame(self, ws: Any, frame: Union[str, bytes]) -> bool:
        text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
        welcomed = False
        # A batched frame holds one message per line (JSON never contains a raw newline).
        for line in text.split("\n"):
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self._emit("error", HeraldError("bad_message", "the server sent something that is not JSON"))
                continue
            kind = msg.get("type")
            if kind == "event":
                sub = self._subs.get(msg.get("sub"))
                if sub is not None:
                    await sub._deliver(msg)
            elif kind == "welcome":
                self._on_welcome(msg)
                welcomed = True
            elif kind == "subscribed":
                self._on_subscribed(msg)
            elif kind == "error":
                self._on_error(msg)
            elif kind == "status":
                self._emit("status", msg)
            elif kind == "incoming":
                self._spawn(self._on_incoming(msg))
            elif kind == "closing":
                self._retry_after = float(msg.get("retry_after_ms") or 0) / 1000
                self._emit("closing", msg)
            elif msg.get("ref") is not None:
                self._settle(msg["ref"], msg)
        return welcomed

    def _on_welcome(self, msg: Dict[str, Any]) -> None:
        self._attempt = 0
        self._retry_after = 0.0
        self._auth_retried = False
        self.session = msg.get("session")
        self.limits = msg.get("limits")
        if not msg.get("resumed"):
            # A new session holds nothing: every subscription starts again
            # after the last id the application saw.
            for sub in self._subs.values():
                sub._confirmed = False
            self._orphans.clear()
        self._set_state("open")
        self._emit("welcome", msg)
        for sub_id in list(self._orphans):
            self._spawn(self._quiet({"type": "unsubscribe", "sub": sub_id}))
        self._orphans.clear()
        for sub in list(self._subs.values()):
            if not sub._confirmed:
                self._send_subscribe(sub)
            elif sub._pause_dirty:
                sub._pause_dirty = False
                self._spawn(self._quiet({"type": "pause" if sub.paused else "resume", "sub": sub.id}))
        # Responders belong to a connection, not to the session.
        for responder in list(self._serving.values()):
            self._send_serve(responder)
        queued, self._queue = self._queue, []
        for entry in queued:
            self._spawn(self._send_entry(entry))
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(self)

    def _send_subscribe(self, sub: Subscription) -> None:
        async def go() -> None:
            try:
                await self._command(sub._message(), settle_on_drop=True, sub=sub)
            except HeraldError:
                pass  # _on_error has settled the subscription
            if sub.paused:
                sub._pause_dirty = False
                await self._quiet({"type": "pause", "sub": sub.id})

        self._spawn(go())

    def _send_serve(self, responder: Responder) -> None:
        async def go() -> None:
            msg: Dict[str, Any] = {"type": "serve", "service": responder.service}
            if responder.concurrency != 1:
                msg["concurrency"] = responder.concurrency
            try:
                answer = await self._command(msg, settle_on_drop=True)
            except HeraldError as e:
                self._serving.pop(responder.service, None)
                responder.active = False
                if not responder._ready.done():
                    responder._ready.set_exception(e)
                else:
                    self._emit("error", e)
                return
            if answer is not None and not responder._ready.done():
                responder._ready.set_result(responder)

        self._spawn(go())

    async def _on_incoming(self, msg: Dict[str, Any]) -> None:
        responder = self._serving.get(msg.get("service", ""))
        if responder is None:
            return  # stopped meanwhile: the request times out on the server
        info = {"request": msg.get("request"), "service": msg.get("service"), "deadline_ms": msg.get("deadline_ms")}
        try:
            body = responder.handler(msg.get("body"), info)
            if inspect.isawaitable(body):
                body = await body
        except Exception as e:
            self._emit("error", HeraldError("handler", f"the {responder.service} handler raised {e!r}", cause=e))
            return
        if not self._is_open():
            return  # the server already failed it when the connection dropped
        try:
            await self._command({"type": "answer", "request": msg.get("request"), "body": body})
        except HeraldError as e:
            self._emit("error", e)  # not_found: the requester left or the deadline passed

    def _on_subscribed(self, msg: Dict[str, Any]) -> None:
        if msg.get("ref") is not None:
            self._settle(msg["ref"], msg)
        sub = self._subs.get(msg.get("sub"))
        if sub is None:
            # Restored by a resume after the application unsubscribed offline.
            self._spawn(self._quiet({"type": "unsubscribe", "sub": msg.get("sub")}))
            return
        first = sub.head is None
        sub._confirmed = True
        sub.recovered = msg.get("recovered")
        sub.history = msg.get("history")
        if first:
            sub.head = msg.get("head")
            # A live subscription does not want what came before its head.
            if sub.since is None and sub.last_id is None and sub.head is not None:
                sub.last_id = int(sub.head)
        if not sub._ready.done():
            sub._ready.set_result(sub)

    def _on_error(self, msg: Dict[str, Any]) -> None:
        err = error_from(msg)
        ref = msg.get("ref")
        pending = self._pending.pop(ref, None) if ref is not None else None
        if pending is not None:
            sub = pending.get("sub")
            if sub is not None and err.code == "conflict":
                # The session already holds it (a resume restored what an
                # unanswered subscribe created): its `subscribed` is on the way.
                self._resolve(pending, msg)
                return
            if sub is not None:
                self._subs.pop(sub.id, None)
                sub._finish(err)
            self._reject(pending, err)
            if sub is None:
                return
        sub = self._subs.get(msg.get("sub")) if msg.get("sub") is not None else None
        if sub is not None and pending is None and err.code == "forbidden":
            # On a resume the server drops a subscription the new token no longer allows.
            self._subs.pop(sub.id, None)
            sub._finish(err)
        self._emit("error", err)

    # ---- commands -------------------------------------------------------

    async def _command(self, msg: Dict[str, Any], *, settle_on_drop: bool = False, sub: Optional[Subscription] = None) -> Any:
        """Send with a fresh ref and wait for the answer. Offline it waits for
        the connection (bounded). ``settle_on_drop``: the client re-applies
        the command itself after a reconnect, so a lost answer is no error."""
        loop = asyncio.get_running_loop()
        entry: Dict[str, Any] = {"msg": msg, "future": loop.create_future(), "settle_on_drop": settle_on_drop, "sub": sub}
        if self._is_open():
            await self._send_entry(entry)
        elif self.state == "closed":
            raise HeraldError("closed", "the client is closed")
        elif settle_on_drop:
            return None
        elif len(self._queue) >= MAX_QUEUED:
            raise HeraldError("limit_exceeded", f"more than {MAX_QUEUED} commands wait for a connection")
        else:
            self._queue.append(entry)
        return await entry["future"]

    async def _quiet(self, msg: Dict[str, Any]) -> None:
        try:
            await self._command(msg, settle_on_drop=True)
        except HeraldError:
            pass

    async def _send_entry(self, entry: Dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            if entry["settle_on_drop"]:
                self._resolve(entry, None)
            else:
                self._queue.append(entry)
            return
        ref = self._next_ref
        self._next_ref += 1
        self._pending[ref] = entry
        try:
            await ws.send(json.dumps({**entry["msg"], "ref": ref}))
        except ConnectionClosed:
            pass  # _connection fails or settles it with the rest

    def _settle(self, ref: Any, msg: Dict[str, Any]) -> None:
        entry = self._pending.pop(ref, None)
        if entry is not None:
            self._resolve(entry, msg)

    @staticmethod
    def _resolve(entry: Dict[str, Any], value: Any) -> None:
        if not entry["future"].done():
            entry["future"].set_result(value)

    @staticmethod
    def _reject(entry: Dict[str, Any], err: HeraldError) -> None:
        if not entry["future"].done():
            entry["future"].set_exception(err)

    def _fail_pending(self, err: HeraldError) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if entry["settle_on_drop"]:
                self._resolve(entry, None)
            else:
                self._reject(entry, err)

    def _fatal(self, err: HeraldError) -> None:
        self._end_everything(err)
        self._set_state("closed")
        self._emit("error", err)

    def _end_everything(self, err: HeraldError) -> None:
        for entry in self._queue:
            self._reject(entry, err)
        self._queue = []
        self._fail_pending(err)
        for sub in list(self._subs.values()):
            sub._finish(err if sub.active else StopAsyncIteration())
        for responder in self._serving.values():
            if not responder._ready.done():
                responder._ready.set_exception(err)
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(err)

    async def _unsubscribe(self, sub: Subscription) -> None:
        self._subs.pop(sub.id, None)
        if not self._is_open():
            # The server forgets it with the session, or is told after a resume.
            self._orphans.add(sub.id)
            return
        try:
            await self._command({"type": "unsubscribe", "sub": sub.id}, settle_on_drop=True)
        except HeraldError as e:
            if e.code != "not_found":
                raise

    # ---- acks -----------------------------------------------------------

    async def _ack_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.ack_interval)
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        ws = self._ws
        if ws is None or not self._is_open():
            return
        for sub in list(self._subs.values()):
            if sub._confirmed and sub._ackable > sub._ack_sent:
                sub._ack_sent = sub._ackable
                try:
                    await ws.send(json.dumps({"type": "ack", "sub": sub.id, "id": sub._ackable}))
                except ConnectionClosed:
                    return
