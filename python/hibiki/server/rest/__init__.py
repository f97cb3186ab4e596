"""The ``/v1`` REST API: calls, members, tokens and connections (FastAPI routers).

Types come from :mod:`hibiki.api.models`, the same models the SDK's
:class:`hibiki.api.Client` uses, and ``/openapi.json`` is generated from them.
Errors are problem documents (:mod:`hibiki.server.rest.errors`); every route
needs a server token when the server has an API secret
(:mod:`hibiki.server.rest.security`).
"""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["build_v1_router"]


def build_v1_router() -> APIRouter:
    """Everything under ``/v1``."""
    from hibiki.server.rest import calls, connections, tokens

    router = APIRouter(prefix="/v1")
    router.include_router(calls.router)
    router.include_router(connections.router)
    router.include_router(tokens.router)
    return router
