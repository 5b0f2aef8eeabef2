"""An event as the application sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class Event:
    """One event of a subscription: ids ascend, each is seen once."""

    #: Event id: ascending in the log, never reused.
    id: int
    #: The subscription it was delivered for.
    sub: str
    #: Exchange.
    exchange: str
    #: Routing key.
    routing_key: str
    #: RFC 3339 time the log stored it.
    time: str
    #: The JSON payload, decoded.
    payload: Any
    #: Optional headers.
    headers: Optional[Dict[str, Any]] = None

    @staticmethod
    def from_message(msg: Dict[str, Any]) -> "Event":
        """From a protocol ``event`` message."""
        return Event(
            id=int(msg["id"]),
            sub=str(msg["sub"]),
            exchange=str(msg.get("exchange", "")),
            routing_key=str(msg.get("routing_key", "")),
            time=str(msg.get("time", "")),
            payload=msg.get("payload"),
            headers=msg.get("headers"),
        )
