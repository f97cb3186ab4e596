"""``/v1/calls``: get-or-create, get, update, members, end, delete and query calls.

The handlers only translate HTTP to :class:`hibiki.server.calls.CallService`
and its errors to problem documents (``404 call_not_found``,
``400 bad_request``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, Query, Response, status

from hibiki.api.models import (
    DeleteCallResponse,
    EndCallResponse,
    GetCallResponse,
    GetOrCreateCallRequest,
    GetOrCreateCallResponse,
    QueryCallsRequest,
    QueryCallsResponse,
    UpdateCallMembersRequest,
    UpdateCallMembersResponse,
    UpdateCallRequest,
    UpdateCallResponse,
)
from hibiki.server.calls import CallNotFoundError, CallRequestError, CallService
from hibiki.server.hub import Hub
from hibiki.server.rest.deps import CallIdParam, CallTypeParam, get_hub
from hibiki.server.rest.errors import PROBLEM_RESPONSES, ApiProblem
from hibiki.server.rest.security import ServerAuth

__all__ = ["router"]

T = TypeVar("T")

router = APIRouter(tags=["calls"], dependencies=[ServerAuth], responses=PROBLEM_RESPONSES)
"""The calls routes, relative to ``/v1``."""



def get_calls(hub: Annotated[Hub, Depends(get_hub)]) -> CallService:
    """The server's :class:`CallService` (``Depends(get_calls)``)."""
    return hub.calls


Calls = Annotated[CallService, Depends(get_calls)]


async def _answer(work: Awaitable[T]) -> T:
    """Await a service call, turning its errors into problem documents."""
    try:
        return await work
    except CallNotFoundError as exc:
        raise ApiProblem(404, "call_not_found", str(exc)) from None
    except CallRequestError as exc:
        raise ApiProblem(400, "bad_request", str(exc)) from None


# OpenAPI links: what a get-or-create answer lets a client (or a stateful
# fuzzer such as schemathesis) do next with the call it names.
_CALL_LINKS: dict[str, dict[str, Any]] = {
    name: {
        "operationId": operation_id,
        "parameters": {"type": "$response.body#/call/type", "id": "$response.body#/call/id"},
    }
    for name, operation_id in (
        ("GetCall", "get_call"),
        ("UpdateCall", "update_call"),
        ("UpdateCallMembers", "update_call_members"),
        ("EndCall", "end_call"),
        ("DeleteCall", "delete_call"),
    )
}

_GET_OR_CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_201_CREATED: {"links": _CALL_LINKS},
    status.HTTP_200_OK: {
        "model": GetOrCreateCallResponse,
        "description": "The call existed (`created` false).",
        "links": _CALL_LINKS,
    },
}


@router.post(
    "/calls/{type}/{id}",
    response_model=GetOrCreateCallResponse,
    status_code=status.HTTP_201_CREATED,
    responses=_GET_OR_CREATE_RESPONSES,
    operation_id="get_or_create_call",
    summary="Get or create a call",
    response_description="The call was created (`created` true).",
)
async def get_or_create_call(
    call_type: CallTypeParam,
    call_id: CallIdParam,
    calls: Calls,
    response: Response,
    body: Annotated[GetOrCreateCallRequest | None, Body()] = None,
) -> GetOrCreateCallResponse:
    """Return the call `type:id`, creating it from `data` when it does not exist.

    An existing call is returned unchanged (200, `data` ignored); a new one
    is answered with 201.
    """
    body = body or GetOrCreateCallRequest()
    result = await _answer(calls.get_or_create(call_type, call_id, body.data, body.members_limit))
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return result


@router.get("/calls/{type}/{id}", response_model=GetCallResponse, operation_id="get_call", summary="Get a call")
async def get_call(
    call_type: CallTypeParam,
    call_id: CallIdParam,
    calls: Calls,
    members_limit: Annotated[int, Query(ge=0, le=100, description="How many members to list.")] = 25,
) -> GetCallResponse:
    """The call, its live participants and up to `members_limit` members (oldest first)."""
    return await _answer(calls.get(call_type, call_id, members_limit))


@router.patch(
    "/calls/{type}/{id}", response_model=UpdateCallResponse, operation_id="update_call", summary="Update a call"
)
async def update_call(
    call_type: CallTypeParam, call_id: CallIdParam, body: UpdateCallRequest, calls: Calls
) -> UpdateCallResponse:
    """Replace the call's `custom` and/or the settings given in `settings_override`.

    In `settings_override`, an explicit `null` clears `max_participants` or
    `max_duration_seconds`. New settings apply to later joins.
    """
    return await _answer(calls.update(call_type, call_id, body))


@router.post(
    "/calls/{type}/{id}/members",
    response_model=UpdateCallMembersResponse,
    operation_id="update_call_members",
    summary="Add, update or remove members",
)
async def update_call_members(
    call_type: CallTypeParam, call_id: CallIdParam, body: UpdateCallMembersRequest, calls: Calls
) -> UpdateCallMembersResponse:
    """Add or update `update_members` (role, custom), then remove `remove_members`.

    Answers with the members added or updated. Removing a user who is not a
    member is not an error.
    """
    return await _answer(calls.update_members(call_type, call_id, body))


@router.post("/calls/{type}/{id}/end", response_model=EndCallResponse, operation_id="end_call", summary="End a call")
async def end_call(call_type: CallTypeParam, call_id: CallIdParam, calls: Calls) -> EndCallResponse:
    """End the call: every connection gets a `call.ended` notify and is closed (1000 `CALL-ENDED`), and
    later joins are refused (4403 `call ended`). Ending an ended call changes nothing (empty
    `connection_ids`)."""
    return await _answer(calls.end(call_type, call_id))


@router.delete(
    "/calls/{type}/{id}", response_model=DeleteCallResponse, operation_id="delete_call", summary="Delete a call"
)
async def delete_call(call_type: CallTypeParam, call_id: CallIdParam, calls: Calls) -> DeleteCallResponse:
    """End the call if it is live, then delete it and its members.

    Its cid is then an ordinary channel again, which anyone allowed to join
    channels may use.
    """
    return await _answer(calls.delete(call_type, call_id))


@router.post("/calls", response_model=QueryCallsResponse, operation_id="query_calls", summary="Query calls")
async def query_calls(body: QueryCallsRequest, calls: Calls) -> QueryCallsResponse:
    """Filter, sort and page through calls (see the request body's description).

    An unknown field or operator, a value of the wrong type, or a cursor made
    for another query is a `400 bad_request` whose `detail` names it.
    """
    return await _answer(calls.query(body))
