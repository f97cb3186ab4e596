"""The asyncio face's entry point: ``hibiki.connect``.

A thin wrapper: it creates the same :class:`~hibiki.Connection` the callback
face uses, subscribes the caller's loop to its events *before* connecting (so
``Connected`` and the first ``TrackAdded`` are never missed), and awaits the
shared connect coroutine running on the SDK loop.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from .connection import Connection
from .factory import Hibiki

__all__ = ["ConnectContext", "connect"]

_default_factory: Hibiki | None = None


class ConnectContext:
    """What :func:`connect` returns: use it with ``async with`` or ``await`` it."""

    def __init__(self, connection: Connection, timeout: float | None) -> None:
        self.connection = connection
        self._timeout = timeout

    async def _open(self) -> Connection:
        conn = self.connection
        if conn._primary is None:
            await conn._subscribe_primary()
        await conn.connect_async(self._timeout)
        return conn

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._open().__await__()

    async def __aenter__(self) -> Connection:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.disconnect_async()


def connect(
    signaling_urls: list[str] | str,
    *,
    role: str,
    channel_id: str,
    timeout: float | None = None,
    **kwargs: Any,
) -> ConnectContext:
    """Connect to a channel from asyncio.

    Takes the same keyword arguments as :meth:`hibiki.Hibiki.create_connection`
    (``audio_source``, ``video_source``, ``metadata``, ``video_codec_type``...)::

        async with hibiki.connect(url, role="recvonly", channel_id="room") as conn:
            async for event in conn:
                if isinstance(event, hibiki.events.TrackAdded):
                    frame = await event.track.recv(timeout=5)

        conn = await hibiki.connect(url, role="sendonly", channel_id="room",
                                    video_source=source)
        ...
        await conn.disconnect()

    Raises :class:`hibiki.ConnectionError` when the connection cannot be set up.
    """
    global _default_factory
    if _default_factory is None:
        _default_factory = Hibiki()
    conn = _default_factory.create_connection(signaling_urls, role, channel_id, **kwargs)
    return ConnectContext(conn, timeout)
