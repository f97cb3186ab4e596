"""Exceptions raised by the client SDK."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .events import SignalingErrorCode

__all__ = ["HibikiConnectionError", "HibikiError", "TrackEnded"]


class HibikiError(Exception):
    """Base class of every exception the Hibiki SDK raises on purpose."""


class HibikiConnectionError(HibikiError, builtins.ConnectionError):
    """A connection could not be established, or failed while being set up.

    It is also a builtin :class:`ConnectionError`, so ``except ConnectionError``
    catches it. The same information reaches ``on_disconnect`` callbacks and the
    asyncio face's :class:`~hibiki.events.Disconnected` event.

    Attributes:
        code: the :class:`~hibiki.SignalingErrorCode` (sora-sdk's classification).
        reason: a human-readable message (what went wrong, with the server's
            close reason when there was one).
        ws_close_code: the WebSocket close code the server sent, if any.

    >>> try:
    ...     conn.connect()
    ... except hibiki.ConnectionError as exc:
    ...     print(exc.code.name, exc.reason)
    """

    def __init__(
        self, code: SignalingErrorCode, reason: str, ws_close_code: int | None = None
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.ws_close_code = ws_close_code

    def __str__(self) -> str:
        return f"{self.reason} [{self.code.name}]"


class TrackEnded(HibikiError):
    """Raised by ``track.recv()`` / ``sink.read()`` once the remote track is gone."""
