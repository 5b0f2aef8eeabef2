"""One subscription: an async iterator of events that survives reconnects."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Deque, Dict, List, Optional, Union

from .errors import HeraldError
from .event import Event

if TYPE_CHECKING:  # pragma: no cover
    from .client import HeraldClient

#: A handler given to ``subscribe(on_event=...)``: plain or async.
EventHandler = Callable[[Event], Union[None, Awaitable[None]]]


class Subscription:
    """Created by :meth:`HeraldClient.subscribe`. Iterate it with
    ``async for event in sub`` (or give ``on_event``): every matching event
    arrives once, in id order, across reconnects.

    Events wait in a buffer of ``max_buffered``; when it is full the client
    stops reading the connection until the application takes one (the
    server then serves the subscription from its log at the application's
    pace: nothing is lost, memory stays bounded). Consume every
    subscription of a client, or the others wait too.
    """

    def __init__(
        self,
        client: "HeraldClient",
        sub_id: str,
        bindings: List[Dict[str, str]],
        filters: Optional[List[Any]],
        since: Optional[Dict[str, Any]],
        auto_ack: bool,
        on_event: Optional[EventHandler],
        max_buffered: int,
    ) -> None:
        self._client = client
        #: The subscription id (``sub``).
        self.id = sub_id
        self.bindings = bindings
        self.filters = filters
        self.since = since
        self.auto_ack = auto_ack
        self._on_event = on_event
        #: Highest id handed to the application (or, for a live start, the head it began after).
        self.last_id: Optional[int] = None
        #: ``head`` of the first ``subscribed``.
        self.head: Optional[int] = None
        #: ``recovered`` of the latest ``subscribed``.
        self.recovered: Optional[bool] = None
        #: ``history`` of the latest ``subscribed`` (``"from_now"`` for a new upstream binding).
        self.history: Optional[str] = None
        #: Paused as far as the application asked.
        self.paused = False
        #: False once unsubscribed, or ended by the server.
        self.active = True
        self._confirmed = False
        self._pause_dirty = False
        self._ackable = 0
        self._ack_sent = 0
        self._unacked: Optional[int] = None
        self._items: Deque[Event] = deque()
        self._max = max(1, max_buffered)
        self._data = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._end: Optional[BaseException] = None
        self._ready: "asyncio.Future[Subscription]" = asyncio.get_running_loop().create_future()

    # ---- the application's side -----------------------------------------

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        # Automatic acks: an event counts as done once the application asks
        # for the next one (its loop body has run).
        if self.auto_ack and self._unacked is not None:
            self.ack(self._unacked)
            self._unacked = None
        while not self._items:
            if self._end is not None:
                if isinstance(self._end, StopAsyncIteration):
                    raise StopAsyncIteration
                raise self._end
            self._data.clear()
            await self._data.wait()
        event = self._items.popleft()
        self._space.set()
        self._unacked = event.id
        return event

    async def next(self, timeout: Optional[float] = None) -> Event:
        """The next event, waiting at most ``timeout`` seconds (``asyncio.TimeoutError``)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def ack(self, event_id: int) -> None:
        """Acknowledge every event up to and including ``event_id``: a resume
        restarts after the highest acknowledged id. Sent batched."""
        if event_id > self._ackable:
            self._ackable = event_id

    async def pause(self) -> None:
        """Stop delivery; events that arrive meanwhile come after :meth:`resume`, nothing lost."""
        await self._set_paused(True)

    async def resume(self) -> None:
        """Resume delivery after :meth:`pause`."""
        await self._set_paused(False)

    async def unsubscribe(self) -> None:
        """End the subscription; iteration stops after the buffered events."""
        if not self.active:
            return
        self._finish(StopAsyncIteration())
        await self._client._unsubscribe(self)

    # ---- the client's side ----------------------------------------------

    async def _set_paused(self, paused: bool) -> None:
        if not self.active:
            return
        self.paused = paused
        self._pause_dirty = not self._client._is_open() or not self._confirmed
        await self._client._command({"type": "pause" if paused else "resume", "sub": self.id}, settle_on_drop=True)

    def _message(self) -> Dict[str, Any]:
        msg: Dict[str, Any] = {"type": "subscribe", "sub": self.id, "bindings": self.bindings}
        if self.filters:
            msg["filters"] = self.filters
        # After what was seen, or the original start.
        since = {"id": self.last_id} if self.last_id is not None else self.since
        if since is not None:
            msg["since"] = since
        return msg

    async def _deliver(self, msg: Dict[str, Any]) -> None:
        if not self.active:
            return
        event_id = int(msg["id"])
        # A resume repeats what was sent but not acknowledged: ids only grow
        # within a subscription, so anything not above last_id was seen.
        if self.last_id is not None and event_id <= self.last_id:
            self._client.duplicates_dropped += 1
            return
        self.last_id = event_id
        event = Event.from_message(msg)
        if self._on_event is not None:
            try:
                result = self._on_event(event)
                if inspect.isawaitable(result):
                    await result
            except Exception as e:  # the application's bug must not break delivery
                self._client._emit("error", HeraldError("handler", f"event handler of {self.id} raised {e!r}", sub=self.id, cause=e))
            if self.auto_ack:
                self.ack(event_id)
            return
        while len(self._items) >= self._max and self._end is None:
            self._space.clear()
            await self._space.wait()
        self._items.append(event)
        self._data.set()

    def _finish(self, why: BaseException) -> None:
        self.active = False
        if self._end is None:
            self._end = why
        self._data.set()
        self._space.set()
        if not self._ready.done():
            if isinstance(why, StopAsyncIteration):
                self._ready.set_result(self)
            else:
                self._ready.set_exception(why)
