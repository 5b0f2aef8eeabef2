"""The one exception the client raises."""

from __future__ import annotations

from typing import Any, Optional


class HeraldError(Exception):
    """An error from the server (``code`` is a protocol error code, see
    docs/protocol.md) or from the client (``closed``, ``disconnected``,
    ``handler``, ``token``, ``bad_message``)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        sub: Optional[str] = None,
        close_code: Optional[int] = None,
        cause: Optional[BaseException] = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.sub = sub
        self.close_code = close_code
        self.__cause__ = cause

    def __repr__(self) -> str:
        extra = f", close_code={self.close_code}" if self.close_code is not None else ""
        return f"HeraldError({self.code!r}, {self.message!r}{extra})"


def error_from(msg: Any) -> HeraldError:
    """The exception for a server ``error`` message."""
    return HeraldError(str(msg.get("code", "internal")), str(msg.get("message", "")), sub=msg.get("sub"))
