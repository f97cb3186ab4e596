"""Placement: which node serves a channel (sora-signaling.md §3.4, DESIGN.md "Scaling past one machine").

A placement is a callable given to :class:`~hibiki.server.settings.ServerSettings`
as ``placement``. The signaling session calls it with the authenticated
``connect`` request (after auth, before the offer); it returns ``None`` to
serve the connection here, or the absolute ``ws://``/``wss://`` signaling URL
of the node that holds the channel. Then the server sends
``{"type":"redirect","location":URL}``, closes the WebSocket (1000
``REDIRECT``), and the client sends its ``connect`` again to that URL with
``"redirect": true``.

The callable may be a plain function or a coroutine function (a cluster asks
Redis). It must answer within :data:`PLACEMENT_TIMEOUT_S`. A ``connect`` that
was already redirected (``request.redirect``) is never redirected a second
time: if the placement still names another node the session closes with 4490
``redirect loop: ...`` rather than bouncing the client between nodes.

:class:`StaticPlacement` is the placement of ``hibiki serve --redirect
PATTERN=URL``: fixed channel-id patterns sent to fixed nodes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from hibiki.server.validation import ConnectRequest

__all__ = ["PLACEMENT_TIMEOUT_S", "Placement", "StaticPlacement", "check_location", "parse_redirect_rule"]

Placement = Callable[["ConnectRequest"], "str | None | Awaitable[str | None]"]
"""``placement(request) -> None | URL`` (or an awaitable of it)."""

PLACEMENT_TIMEOUT_S: Final = 5.0
"""How long a placement may take; past it the session closes with 1011."""


def check_location(location: str) -> str:
    """Return ``location`` if it is an absolute ``ws``/``wss`` URL, else raise ValueError.

    The official client parses it as its next signaling URL; anything else
    would fail on the client's side with a less clear error.
    """
    parts = urlsplit(location)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"redirect location must be an absolute ws:// or wss:// URL, got {location!r}")
    return location


def parse_redirect_rule(text: str) -> tuple[str, str]:
    """Parse ``PATTERN=URL`` (``hibiki serve --redirect``) into ``(pattern, url)``."""
    pattern, sep, url = text.partition("=")
    if not sep or not pattern:
        raise ValueError(f"expected PATTERN=URL, got {text!r}")
    return pattern, check_location(url)


class StaticPlacement:
    """Send channels whose id matches a pattern to a fixed node.

    ``rules`` are ``(pattern, url)`` pairs tried in order; patterns use
    :func:`fnmatch.fnmatchcase` syntax (``room-*``, ``?``, ``[ab]``). A
    channel that matches no rule is served here.
    """

    def __init__(self, rules: Sequence[tuple[str, str]]) -> None:
        self.rules = [(pattern, check_location(url)) for pattern, url in rules]

    def __call__(self, request: ConnectRequest) -> str | None:
        for pattern, url in self.rules:
            if fnmatch.fnmatchcase(request.channel_id, pattern):
                return url
        return None

    def __repr__(self) -> str:
        return f"StaticPlacement({self.rules!r})"
