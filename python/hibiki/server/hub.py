"""The server's shared state: settings, the data plane bridge, channels, live sessions, auth."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.websockets import WebSocket

from hibiki.server.auth import Authenticator
from hibiki.server.channel import ChannelRegistry
from hibiki.server.session import SignalingSession
from hibiki.server.settings import ServerSettings
from hibiki.server.sfu_bridge import SfuBridge

__all__ = ["Hub"]

log = logging.getLogger("hibiki.server")


class Hub:
    """What every signaling session of one server shares.

    Not thread-safe: everything runs on the server's event loop.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.bridge = SfuBridge(settings)
        self.registry = ChannelRegistry()
        self.sessions: set[SignalingSession] = set()
        self.background: set[asyncio.Task[None]] = set()
        """Tasks of DataChannel-only sessions, whose WebSocket is gone."""
        self.authenticator = Authenticator(settings)

    async def serve_signaling(self, websocket: WebSocket) -> None:
        """Run one ``/signaling`` WebSocket to its end."""
        session = SignalingSession(websocket, self)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    def health(self) -> dict[str, Any]:
        """The ``/health`` document."""
        return {
            "status": "ok" if self.bridge.running else "starting",
            "connections": self.registry.connection_count,
            "channels": self.registry.channel_count,
            "sessions": len(self.sessions),
            "rtc_ports": self.bridge.rtc_ports,
        }
