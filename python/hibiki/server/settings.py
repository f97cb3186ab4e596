"""Server settings."""

from __future__ import annotations

import ipaddress
import math
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hibiki.server.placement import Placement


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``hibiki serve`` can be told.

    Times are in seconds.
    """

    host: str = "127.0.0.1"
    """Address the HTTP/WebSocket listener binds; the RTC (UDP) sockets bind it too."""
    port: int = 5000
    """TCP port of the HTTP/WebSocket listener."""
    rtc_port: int = 0
    """UDP port of the first SFU shard; 0 lets the OS pick."""
    public_ip: str | None = None
    """Address announced in ICE candidates when it differs from the bound one (NAT, 0.0.0.0)."""
    shards: int = 1
    """Number of SFU shard threads."""
    max_message_bytes: int = 64 * 1024
    """Largest signaling message accepted; larger ones close the socket with 1009."""
    ping_interval: float = 5.0
    """Interval between ``{"type":"ping"}`` messages once a connection is up."""
    ping_timeout: float = 15.0
    """A connection whose last ``pong`` is older than this is closed (about 3 missed pongs)."""
    connect_timeout: float = 10.0
    """A socket that sends no ``connect`` within this time is closed."""
    answer_timeout: float = 30.0
    """A client that sends no ``answer`` within this time after the offer is closed (4490); so is
    one whose media connection is not up this long after the answer (4492)."""
    log_level: str = "info"
    auth_secret: str | None = field(default=None, repr=False)
    """Shared secret: when set, ``connect`` needs a JWT in ``metadata.access_token`` (HS256, signed
    with it; see ``hibiki.server.auth``) and the HTTP API needs ``Authorization: Bearer <secret>``."""
    auth_webhook_url: str | None = None
    """When set, every ``connect`` is POSTed here for approval (``hibiki.server.auth``)."""
    auth_webhook_timeout: float = 5.0
    """Seconds the auth webhook has to answer; no answer in time rejects the connection (4503)."""
    notify_update_interval: float = 60.0
    """Each connection's ``connection.updated`` notify (with ``minutes``) goes to its channel this
    often, counted from when it came up; 0 turns it off."""
    placement: Placement | None = field(default=None, compare=False)
    """Which node serves a channel: None (or a placement returning None) serves everything here,
    a URL answer sends the client a ``redirect`` (``hibiki.server.placement``)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if not 0 <= self.rtc_port <= 65535:
            raise ValueError(f"rtc_port out of range: {self.rtc_port}")
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        for name in ("ping_interval", "ping_timeout", "connect_timeout", "answer_timeout", "auth_webhook_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if not (self.notify_update_interval >= 0 and math.isfinite(self.notify_update_interval)):
            raise ValueError("notify_update_interval must be >= 0 (0 = off)")
        if self.auth_secret is not None and not self.auth_secret:
            raise ValueError("auth_secret must not be empty")
        if self.auth_webhook_url is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(self.auth_webhook_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"auth_webhook_url must be an http(s) URL, got {self.auth_webhook_url!r}")
        if self.public_ip is not None:
            ipaddress.ip_address(self.public_ip)  # raises ValueError with a clear message

    @property
    def rtc_bind_ip(self) -> str:
        """The IP address the SFU's UDP sockets bind: ``host``, resolved if it is a name."""
        try:
            ipaddress.ip_address(self.host)
            return self.host
        except ValueError:
            # A name such as "localhost": the data plane wants a literal address.
            return socket.gethostbyname(self.host)

    @property
    def ws_max_size(self) -> int:
        """The WebSocket layer's own frame limit.

        Above ``max_message_bytes`` on purpose: messages between the two limits
        reach the session, which closes with a precise reason; only absurd
        frames are cut by the WebSocket layer (also with 1009).
        """
        return max(4 * self.max_message_bytes, 1024 * 1024)
