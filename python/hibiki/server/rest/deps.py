"""FastAPI dependencies shared by the ``/v1`` routers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from hibiki.server.hub import Hub

__all__ = ["get_hub"]


def get_hub(request: Request) -> Hub:
    """The server's :class:`~hibiki.server.hub.Hub` (``Depends(get_hub)``)."""
    hub: Hub = request.app.state.hub
    return hub
