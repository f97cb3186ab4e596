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
    """The API secret: when set, ``connect`` needs a JWT in ``metadata.access_token`` (HS256, signed
    with it; see ``hibiki.server.auth``), the ``/v1`` API needs a server token signed with it, and
    the Sora-style ``/api`` needs ``Authorization: Bearer <secret>``. None: everything is open."""
    api_key: str | None = None
    """When set (with a secret), ``/v1`` requests must also carry it in ``X-Api-Key``; webhooks carry it."""
    database: str = "hibiki.sqlite3"
    """SQLite file holding calls and members (created if missing); ``":memory:"`` keeps nothing."""
    webhook_urls: tuple[str, ...] = ()
    """Every call/participant/track event is POSTed to each of these (``hibiki.server.webhooks``)."""
    webhook_timeout: float = 5.0
    """Seconds a webhook receiver has to answer one delivery."""
    webhook_max_attempts: int = 6
    """Deliveries per event and URL before it is dropped (with an error in the log)."""
    webhook_backoff: float = 0.5
    """Delay before the first retry; it doubles with each retry, up to 30 s."""
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
        for name in (
            "ping_interval",
            "ping_timeout",
            "connect_timeout",
            "answer_timeout",
            "auth_webhook_timeout",
            "webhook_timeout",
            "webhook_backoff",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if not (self.notify_update_interval >= 0 and math.isfinite(self.notify_update_interval)):
            raise ValueError("notify_update_interval must be >= 0 (0 = off)")
        if self.auth_secret is not None and not self.auth_secret:
            raise ValueError("auth_secret must not be empty")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")
        if not self.database:
            raise ValueError("database must be a file path or ':memory:'")
        if self.webhook_max_attempts < 1:
            raise ValueError(f"webhook_max_attempts must be >= 1, got {self.webhook_max_attempts}")
        if self.auth_webhook_url is not None:
            _check_http_url("auth_webhook_url", self.auth_webhook_url)
        for url in self.webhook_urls:
            _check_http_url("webhook_urls", url)
        if self.public_ip is not None:
            ipaddress.ip_address(self.public_ip)  # raises ValueError with a clear message

    @property
    def open_mode(self) -> bool:
        """No API secret: signaling and both APIs accept anyone (local development)."""
        return self.auth_secret is None

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


def _check_http_url(name: str, url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{name} must be http(s) URLs, got {url!r}")
