"""The bridge between the asyncio control plane and the Rust data plane (``hibiki._core.Sfu``).

The Sfu reports through a queue whose wake-up file descriptor the event loop
watches (``loop.add_reader``); :meth:`SfuBridge._drain` hands each event to the
session that owns the connection. Commands (``create_connection``,
``accept_answer``, ...) are fast non-blocking calls into Rust, made directly
from the loop through :attr:`SfuBridge.sfu`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from hibiki._log import ConnectionLogger
from hibiki.server.settings import ServerSettings

if TYPE_CHECKING:
    from hibiki._core import Event, Sfu

__all__ = ["ConnectionEvents", "SfuBridge"]

log = logging.getLogger("hibiki.server.sfu")

# poll_events' batch size; a full batch means more may be waiting.
_BATCH = 256


class ConnectionEvents(Protocol):
    """What a session implements to hear about its connection's data plane."""

    def on_connected(self) -> None:
        """ICE and DTLS are up."""

    def on_offer(self, sdp: str) -> None:
        """The Sfu renegotiates: send ``sdp`` as a ``re-offer``."""

    def on_closed(self, reason: str | None) -> None:
        """The Sfu dropped the connection (ICE/DTLS failure or timeout)."""

    def on_track_published(self, event: Event) -> None:
        """An upstream track of the connection was negotiated."""

    def on_layer_switched(self, event: Event) -> None:
        """A subscription of the connection now receives another simulcast layer."""

    def on_spotlight(self, focused: bool) -> None:
        """The connection is now (or no longer) one of the speakers in its channel's spotlight."""

    def on_channel_open(self, label: str) -> None:
        """A data channel the server opened is open."""

    def on_channel_data(self, label: str, data: bytes) -> None:
        """A message on a non-messaging data channel (signaling, stats, rpc...)."""

    def on_channel_close(self, label: str) -> None:
        """A data channel closed."""

    def on_internal_error(self, exc: BaseException) -> None:
        """Handling one of the above raised: the session must close itself (1011)."""


class SfuBridge:
    """Owns the :class:`hibiki._core.Sfu` and routes its events to sessions."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._sfu: Sfu | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: dict[str, ConnectionEvents] = {}

    @property
    def sfu(self) -> Sfu:
        """The running data plane."""
        if self._sfu is None:
            raise RuntimeError("the SFU is not running")
        return self._sfu

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._sfu is not None

    @property
    def rtc_ports(self) -> list[int]:
        """The UDP port of each shard (empty when not running)."""
        return list(self._sfu.rtc_ports) if self._sfu is not None else []

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Create the Sfu and start delivering its events on ``loop``."""
        # Imported here so that the package (and ``hibiki --help``) loads even
        # where the extension is not built.
        from hibiki._core import Sfu

        s = self.settings
        self._sfu = Sfu(bind_ip=s.rtc_bind_ip, port=s.rtc_port, public_ip=s.public_ip, shards=s.shards)
        self._loop = loop or asyncio.get_running_loop()
        self._loop.add_reader(self._sfu.fileno(), self._drain)
        log.info(
            "SFU started: %d shard(s), UDP %s:%s%s",
            s.shards,
            s.rtc_bind_ip,
            ",".join(map(str, self._sfu.rtc_ports)),
            f", public IP {s.public_ip}" if s.public_ip else "",
        )

    def stop(self) -> None:
        """Stop delivering events and stop the Sfu's threads. Idempotent."""
        sfu, self._sfu = self._sfu, None
        if sfu is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(sfu.fileno())
        sfu.close()
        self._handlers.clear()
        log.info("SFU stopped")

    def register(self, connection_id: str, handler: ConnectionEvents) -> None:
        """Route events of ``connection_id`` to ``handler``."""
        self._handlers[connection_id] = handler

    def unregister(self, connection_id: str) -> None:
        """Stop routing events of ``connection_id`` (later ones are dropped)."""
        self._handlers.pop(connection_id, None)

    def _drain(self) -> None:
        """The fd reader: take every pending event and dispatch it."""
        sfu = self._sfu
        if sfu is None:
            return
        while True:
            try:
                events = sfu.poll_events(_BATCH)
            except Exception:
                log.exception("poll_events failed")
                return
            for event in events:
                self._dispatch(event)
            if len(events) < _BATCH or self._sfu is None:
                return

    def _dispatch(self, event: Event) -> None:
        handler = self._handlers.get(event.connection)
        clog = ConnectionLogger(log, connection_id=event.connection)
        if handler is None:
            # Normal after a session left: the Sfu reports "closed" for
            # connections we closed ourselves.
            clog.debug("event %s for a connection without a session", event.kind)
            return
        try:
            if event.kind == "connected":
                handler.on_connected()
            elif event.kind == "offer":
                if event.sdp is None:
                    raise RuntimeError("offer event without sdp")
                handler.on_offer(event.sdp)
            elif event.kind == "closed":
                handler.on_closed(event.reason)
            elif event.kind == "track_published":
                handler.on_track_published(event)
            elif event.kind == "layer_switched":
                handler.on_layer_switched(event)
            elif event.kind in ("spotlight_focused", "spotlight_unfocused"):
                handler.on_spotlight(event.kind == "spotlight_focused")
            elif event.kind == "channel_open":
                handler.on_channel_open(event.label or "")
            elif event.kind == "channel_data":
                handler.on_channel_data(event.label or "", event.data or b"")
            elif event.kind == "channel_close":
                handler.on_channel_close(event.label or "")
            else:
                clog.debug("ignoring event %s", event.kind)
        except Exception as exc:
            clog.exception("error handling event %s", event.kind)
            try:
                handler.on_internal_error(exc)
            except Exception:
                clog.exception("error closing the session after a failed event")
