"""The server's shared state: settings, the data plane bridge, channels, live sessions, auth."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.websockets import WebSocket

from hibiki.server.auth import Authenticator
from hibiki.server.calls import CallService
from hibiki.server.channel import ChannelRegistry
from hibiki.server.session import SignalingSession
from hibiki.server.settings import ServerSettings
from hibiki.server.sfu_bridge import SfuBridge
from hibiki.server.webhooks import WebhookDispatcher

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
        self.webhooks = WebhookDispatcher(settings)
        """Sends call, participant and track events to the configured URLs."""
        self.calls = CallService(self)
        """Stored calls (SQLite): the ``/v1`` API's state, and what a join to a call's channel may do."""

    async def start(self) -> None:
        """Open the call store and start the data plane and webhook deliveries (server startup)."""
        await self.calls.start()
        self.webhooks.start()
        self.bridge.start()

    async def aclose(self) -> None:
        """Stop what :meth:`start` started (after every session has left)."""
        self.bridge.stop()
        await self.webhooks.aclose()
        await self.calls.aclose()
        await self.authenticator.aclose()

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
