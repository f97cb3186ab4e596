"""The ASGI application of ``hibiki serve``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from hibiki.server import close_codes
from hibiki.server.api import handle_api_request
from hibiki.server.hub import Hub
from hibiki.server.rest import build_v1_router
from hibiki.server.rest.errors import install_problem_handlers
from hibiki.server.settings import ServerSettings

__all__ = ["create_app"]

log = logging.getLogger("hibiki.server")

WEB_DIR = Path(__file__).resolve().parent / "web"
"""The web page (``index.html``, ``app.js``, ``style.css``), shipped inside the package."""


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """Build the server's ASGI app.

    Routes:

    * ``/signaling`` (WebSocket): Sora signaling, see ``hibiki.server.session``.
    * ``/health`` (GET): ``{"status": "ok", "connections": n, "channels": n,
      "sessions": n, "rtc_ports": [...]}``; 503 until the data plane runs.
    * ``/api`` and ``/`` (POST): the Sora-style HTTP API (``x-sora-target``),
      see ``hibiki.server.api``. ``/`` is where Sora's API listener answers.
    * ``/`` (GET) and ``/web/...``: a small browser client (``hibiki/server/web``).
    * ``/v1/...``: the REST API for calls, members, tokens and connections
      (``hibiki.server.rest``), described by ``/openapi.json`` and browsable at ``/docs``.

    The lifespan opens the call store, starts the Rust data plane
    (``hibiki._core.Sfu``) and webhook deliveries, and stops them on shutdown,
    after uvicorn has closed the WebSockets.
    """
    settings = settings or ServerSettings()
    hub = Hub(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        if settings.open_mode:
            # INFO, not WARNING: open is the intended local-development mode.
            log.info(
                "open mode (no API secret): signaling, /api and /v1 are open to anyone who can reach this server "
                "(fine for local development; give --api-secret or HIBIKI_API_SECRET otherwise)"
            )
        log.info(
            "authentication: %s; HTTP API at /api%s; placement: %s",
            " + ".join(
                part
                for part in (
                    "access tokens" if settings.auth_secret else "",
                    f"webhook {settings.auth_webhook_url}" if settings.auth_webhook_url else "",
                )
                if part
            )
            or "off",
            " (bearer secret required)" if settings.auth_secret else "",
            settings.placement or "everything here",
        )
        log.info(
            "REST API at /v1 (OpenAPI at /openapi.json)%s; calls stored in %s",
            " with an API key" if settings.api_key else "",
            settings.database,
        )
        try:
            yield
        finally:
            # Sessions still open (uvicorn's graceful timeout expired) leave
            # now, so the Sfu is closed with nothing half-done.
            for session in list(hub.sessions):
                session.close(close_codes.GOING_AWAY, "server shutting down")
            if hub.background:
                # DataChannel-only sessions send their `close` and close their
                # channels before the data plane goes away (bounded).
                await asyncio.wait(set(hub.background), timeout=2.0)
            await hub.aclose()

    async def signaling(websocket: WebSocket) -> None:
        await hub.serve_signaling(websocket)

    async def health(request: Request) -> JSONResponse:
        doc = hub.health()
        return JSONResponse(doc, status_code=200 if doc["status"] == "ok" else 503)

    async def api(request: Request) -> Response:
        return await handle_api_request(request, hub)

    async def index(request: Request) -> Response:
        return FileResponse(WEB_DIR / "index.html", headers={"cache-control": "no-cache"})

    from hibiki import __version__

    app = FastAPI(
        title="Hibiki",
        version=__version__,
        summary="A WebRTC SFU speaking Sora's signaling protocol: REST API for calls, members, tokens and connections.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
        routes=[
            WebSocketRoute("/signaling", signaling),
            Route("/health", health, methods=["GET"]),
            # Every method reaches the API, which answers all but POST with a
            # 405 problem document (Starlette's own 405 is plain text).
            Route("/api", api, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
            Route("/", api, methods=["POST"]),
            Route("/", index, methods=["GET", "HEAD"]),
            Mount("/web", app=StaticFiles(directory=WEB_DIR), name="web"),
        ],
    )
    app.include_router(build_v1_router())
    install_problem_handlers(app)
    app.state.hub = hub
    app.state.settings = settings
    return app
