"""FastAPI dependencies shared by the ``/v1`` routers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Path, Request

from hibiki.api.models import CALL_ID_PATTERN

if TYPE_CHECKING:
    from hibiki.server.hub import Hub

__all__ = ["CallIdParam", "CallTypeParam", "get_hub"]

CallTypeParam = Annotated[
    str, Path(alias="type", pattern=CALL_ID_PATTERN, description="The call type, e.g. `default`.")
]
"""The ``{type}`` of a ``/v1/calls/{type}/{id}`` route."""
CallIdParam = Annotated[str, Path(alias="id", pattern=CALL_ID_PATTERN, description="The call id within its type.")]
"""The ``{id}`` of a ``/v1/calls/{type}/{id}`` route."""


def get_hub(request: Request) -> Hub:
    """The server's :class:`~hibiki.server.hub.Hub` (``Depends(get_hub)``)."""
    hub: Hub = request.app.state.hub
    return hub
