"""Herald's asyncio client: subscribe with topic bindings, filters and a
starting point, iterate events (each once, in order, across reconnects),
acknowledge them, publish, and rendezvous with responders.

>>> async with HeraldClient("http://127.0.0.1:7070", token=token) as client:  # doctest: +SKIP
...     sub = await client.subscribe([{"exchange": "orders", "pattern": "eu.#"}], since={"last": 10})
...     async for event in sub:
...         print(event.id, event.routing_key, event.payload)
"""

from .client import VERSION, HeraldClient, Responder, websocket_url
from .errors import HeraldError
from .event import Event
from .subscription import Subscription

__all__ = ["HeraldClient", "HeraldError", "Event", "Subscription", "Responder", "VERSION", "websocket_url"]
__version__ = VERSION
