"""Errors of the ``/v1`` API as RFC 9457 problem documents with stable codes.

Every error the API returns, including FastAPI's own (validation, 404, 405),
is ``application/problem+json`` shaped like :class:`hibiki.api.models.Problem`:
``{"type": "about:blank", "title", "status", "detail", "code"}``. Handlers
raise :class:`ApiProblem`; :func:`install_problem_handlers` turns everything
else into the same shape.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from hibiki.api.models import PROBLEM_CODES, Problem

__all__ = ["PROBLEM_MEDIA_TYPE", "PROBLEM_RESPONSES", "ApiProblem", "install_problem_handlers", "problem_response"]

log = logging.getLogger("hibiki.server.rest")

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"



class ApiProblem(Exception):
    """Raise in a ``/v1`` handler to answer with a problem document.

    Example: ``raise ApiProblem(404, "call_not_found", "no call default:standup")``
    """

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def problem_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """A problem+json response."""
    doc = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, code=code, **extra)
    return JSONResponse(
        doc.model_dump(mode="json", exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _problem_schema_ref() -> dict[str, Any]:
    return {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}


PROBLEM_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": Problem, "description": HTTPStatus(status).phrase, "content": _problem_schema_ref()}
    for status in (400, 401, 403, 404, 422, 500)
}
"""``responses=`` for routes: documents the problem bodies in the OpenAPI document."""


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` a problem document (validation errors list the bad fields)."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        return problem_response(exc.status, exc.code, exc.detail, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
            for err in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"]) or "request"
        detail = f"{where}: {first['msg']}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        return problem_response(422, "validation_error", detail, errors=errors)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        headers = dict(exc.headers) if exc.headers else None
        return problem_response(status, PROBLEM_CODES.get(status, "error"), detail, headers)

    async def on_error(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return problem_response(500, "internal_error", "internal error (see the server log)")

    app.add_exception_handler(ApiProblem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
