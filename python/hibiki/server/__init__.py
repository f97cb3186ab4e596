"""``hibiki serve``: the signaling server (Sora protocol) in front of the Rust SFU.

Use :func:`create_app` to get the ASGI app, or run ``hibiki serve``.
"""

from hibiki.server.app import create_app
from hibiki.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
