"""The ``/v1`` calls and tokens API against a real ``hibiki serve``.

One server with an API secret and key serves most tests of this module
(each test uses call types/ids of its own, so they cannot see each other's
calls); tests that need an open server or a fresh one start their own.
Every error must be a problem document (``application/problem+json``) with
the documented ``code``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import (
    Peer,
    ServerProcess,
    connect_message,
    expect_close,
    is_notify,
    open_ws,
    run,
    server_problems,
    start_server,
    with_engine,
)
from hibiki.api.models import (
    CallEndedNotify,
    CallRequest,
    CreateTokenResponse,
    DeleteCallResponse,
    EndCallResponse,
    GetCallResponse,
    GetOrCreateCallResponse,
    MemberRequest,
    Problem,
    QueryCallsRequest,
    QueryCallsResponse,
    UpdateCallMembersRequest,
    UpdateCallMembersResponse,
    UpdateCallRequest,
    UpdateCallResponse,
)
from hibiki.api.tokens import create_server_token, create_token, decode_token
from hibiki.server.calls import CallNotFoundError, CallService
from hibiki.server.channel import ChannelRegistry
from hibiki.server.settings import ServerSettings

SECRET = "rest-calls-secret-0123456789abcdef0123"  # >= 32 bytes: no short-key warning
API_KEY = "rest-calls-key"
PROBLEM_TYPE = "application/problem+json"


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with --api-secret and --api-key for the module; checked for tracebacks at the end."""
    srv = start_server(tmp_path_factory.mktemp("rest-calls"), "--api-secret", SECRET, "--api-key", API_KEY)
    try:
        yield srv
    finally:
        died = not srv.alive()
        srv.stop()
        problems = server_problems(srv, died)
        if problems:
            pytest.fail("; ".join(problems) + "\n" + srv.log_tail(200))


def auth_headers(secret: str = SECRET, api_key: str | None = API_KEY) -> dict[str, str]:
    """Headers of an authenticated server-side request."""
    headers = {"Authorization": f"Bearer {create_server_token(secret)}"}
    if api_key is not None:
        headers["X-Api-Key"] = api_key
    return headers


@pytest.fixture
def api(api_server: ServerProcess) -> Iterator[httpx.Client]:
    """An authenticated client of the module's server."""
    with httpx.Client(base_url=api_server.url + "/v1", headers=auth_headers(), timeout=10.0) as client:
        yield client


def unique(prefix: str = "t") -> str:
    """A call type or id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_problem(response: httpx.Response, status: int, code: str, detail_part: str = "") -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with this status and code (and a detail containing ``detail_part``)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM_TYPE), response.headers["content-type"]
    body = response.json()
    problem = Problem.model_validate(body)
    assert problem.status == status and problem.code == code, body
    assert problem.title and problem.detail, body
    assert detail_part.lower() in problem.detail.lower(), body
    return dict(body)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- get-or-create, get, update -----------------------------------------------------------


def test_get_or_create_creates_then_returns_the_existing_call(api: httpx.Client) -> None:
    call_id = unique()
    data = {
        "created_by_id": "alice",
        "custom": {"topic": "standup", "nested": {"a": [1, 2.5, None, True]}},
        "members": [{"user_id": "bob", "role": "host", "custom": {"x": 1}}, {"user_id": "carol"}],
        "settings_override": {"max_participants": 5, "video": False},
    }
    before = datetime.now().astimezone()
    r = api.post(f"/calls/default/{call_id}", json={"data": data})
    assert r.status_code == 201, r.text
    created = GetOrCreateCallResponse.model_validate(r.json())
    assert created.created is True
    call = created.call
    assert (call.type, call.id, call.cid) == ("default", call_id, f"default:{call_id}")
    assert call.created_by_id == "alice"
    assert call.custom == data["custom"]
    assert call.settings.model_dump() == {
        "audio": True,
        "video": False,
        "max_participants": 5,
        "max_duration_seconds": None,
    }
    assert call.ended_at is None and call.participants == []
    assert call.created_at == call.updated_at
    assert before - timedelta(seconds=5) < call.created_at < before + timedelta(seconds=60)
    assert [(m.user_id, m.role, m.custom) for m in created.members] == [
        ("bob", "host", {"x": 1}),
        ("carol", "user", {}),
    ]

    # The second time: 200, created false, the stored call unchanged whatever data says.
    r = api.post(f"/calls/default/{call_id}", json={"data": {"created_by_id": "mallory", "custom": {"x": 1}}})
    assert r.status_code == 200, r.text
    again = GetOrCreateCallResponse.model_validate(r.json())
    assert again.created is False
    assert again.call == call
    assert len(again.members) == 2

    # No body at all is a valid get-or-create too.
    r = api.post(f"/calls/default/{unique()}")
    assert r.status_code == 201, r.text
    bare = GetOrCreateCallResponse.model_validate(r.json())
    assert bare.call.created_by_id is None and bare.call.custom == {} and bare.members == []


def test_concurrent_get_or_create_creates_once(api_server: ServerProcess) -> None:
    call_id = unique()

    async def body() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=api_server.url + "/v1", headers=auth_headers(), timeout=10) as c:
            return list(
                await asyncio.gather(
                    *(c.post(f"/calls/race/{call_id}", json={"data": {"created_by_id": f"u{i}"}}) for i in range(8))
                )
            )

    responses = run(body())
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    calls = [GetOrCreateCallResponse.model_validate(r.json()) for r in responses]
    assert sum(c.created for c in calls) == 1
    # Every answer describes the same stored call (the creator's data).
    assert len({(c.call.created_by_id, c.call.created_at) for c in calls}) == 1


def test_get_lists_members_up_to_the_limit(api: httpx.Client) -> None:
    call_id = unique()
    members = [{"user_id": f"user-{i:02d}"} for i in range(30)]
    r = api.post(f"/calls/default/{call_id}", json={"data": {"members": members}, "members_limit": 3})
    assert r.status_code == 201
    assert [m["user_id"] for m in r.json()["members"]] == ["user-00", "user-01", "user-02"]

    r = api.get(f"/calls/default/{call_id}")
    assert r.status_code == 200
    got = GetCallResponse.model_validate(r.json())
    assert len(got.members) == 25  # the default
    assert [m.user_id for m in got.members] == [f"user-{i:02d}" for i in range(25)]

    r = api.get(f"/calls/default/{call_id}", params={"members_limit": 0})
    assert r.status_code == 200 and r.json()["members"] == []
    r = api.get(f"/calls/default/{call_id}", params={"members_limit": 100})
    assert len(r.json()["members"]) == 30
    assert_problem(api.get(f"/calls/default/{call_id}", params={"members_limit": 101}), 422, "validation_error")


def test_get_unknown_call_is_call_not_found(api: httpx.Client) -> None:
    call_id = unique()
    body = assert_problem(api.get(f"/calls/default/{call_id}"), 404, "call_not_found", f"default:{call_id}")
    assert body["type"] == "about:blank" and body["title"] == "Not Found"
    for method, path in (
        ("PATCH", f"/calls/default/{call_id}"),
        ("POST", f"/calls/default/{call_id}/members"),
        ("POST", f"/calls/default/{call_id}/end"),
        ("DELETE", f"/calls/default/{call_id}"),
    ):
        assert_problem(api.request(method, path, json={} if method != "DELETE" else None), 404, "call_not_found")


def test_invalid_requests_are_validation_problems(api: httpx.Client) -> None:
    # A ':' would make the cid ambiguous; the path pattern refuses it.
    body = assert_problem(api.post("/calls/bad%3Atype/x"), 422, "validation_error", "path.type")
    assert body["errors"][0]["loc"] == ["path", "type"]
    assert_problem(api.post(f"/calls/default/{'x' * 65}"), 422, "validation_error", "path.id")
    # Unknown fields are errors, not silently dropped.
    body = assert_problem(
        api.post(f"/calls/default/{unique()}", json={"data": {"setings_override": {}}}), 422, "validation_error"
    )
    assert any(err["loc"][-1] == "setings_override" for err in body["errors"])
    assert_problem(
        api.post(f"/calls/default/{unique()}", json={"data": {"settings_override": {"max_participants": 0}}}),
        422,
        "validation_error",
    )
    assert_problem(
        api.post(f"/calls/default/{unique()}", json={"data": {"members": [{"user_id": "u", "role": "Bad Role"}]}}),
        422,
        "validation_error",
    )
    assert_problem(
        api.post(f"/calls/default/{unique()}", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "validation_error",
    )
    # JSON has no NaN; Python's parser takes it, the service refuses it cleanly (no 500).
    assert_problem(
        api.post(
            f"/calls/default/{unique()}",
            content=b'{"data": {"custom": {"x": NaN}}}',
            headers={"content-type": "application/json"},
        ),
        400,
        "bad_request",
        "data.custom",
    )


def test_update_replaces_custom_and_given_settings(api: httpx.Client) -> None:
    call_id = unique()
    r = api.post(
        f"/calls/default/{call_id}",
        json={"data": {"custom": {"a": 1}, "settings_override": {"max_participants": 4, "max_duration_seconds": 60}}},
    )
    created = GetOrCreateCallResponse.model_validate(r.json()).call

    r = api.patch(f"/calls/default/{call_id}", json={"custom": {"b": 2}, "settings_override": {"audio": False}})
    assert r.status_code == 200, r.text
    updated = UpdateCallResponse.model_validate(r.json()).call
    assert updated.custom == {"b": 2}  # replaced, not merged
    assert updated.settings.model_dump() == {
        "audio": False,
        "video": True,
        "max_participants": 4,
        "max_duration_seconds": 60,
    }
    assert updated.updated_at > created.updated_at and updated.created_at == created.created_at

    # Only what is given changes; an explicit null clears a limit.
    r = api.patch(f"/calls/default/{call_id}", json={"settings_override": {"max_participants": None}})
    assert r.status_code == 200, r.text
    again = UpdateCallResponse.model_validate(r.json()).call
    assert again.custom == {"b": 2}
    assert again.settings.max_participants is None and again.settings.max_duration_seconds == 60
    assert again.settings.audio is False
    assert GetCallResponse.model_validate(api.get(f"/calls/default/{call_id}").json()).call == again


def test_update_members_adds_updates_and_removes(api: httpx.Client) -> None:
    call_id = unique()
    api.post(f"/calls/default/{call_id}", json={"data": {"members": [{"user_id": "alice"}, {"user_id": "bob"}]}})
    first = {m["user_id"]: m for m in api.get(f"/calls/default/{call_id}").json()["members"]}

    r = api.post(
        f"/calls/default/{call_id}/members",
        json={
            "update_members": [{"user_id": "alice", "role": "host", "custom": {"k": "v"}}, {"user_id": "dave"}],
            "remove_members": ["bob", "nobody"],
        },
    )
    assert r.status_code == 200, r.text
    answer = UpdateCallMembersResponse.model_validate(r.json())
    assert [(m.user_id, m.role, m.custom) for m in answer.members] == [
        ("alice", "host", {"k": "v"}),
        ("dave", "user", {}),
    ]
    alice = answer.members[0]
    # An update keeps when the member was added.
    assert alice.created_at == parse_time(first["alice"]["created_at"]) and alice.updated_at > alice.created_at

    members = api.get(f"/calls/default/{call_id}").json()["members"]
    assert [(m["user_id"], m["role"]) for m in members] == [("alice", "host"), ("dave", "user")]

    # Added and removed in one request: removed.
    r = api.post(
        f"/calls/default/{call_id}/members",
        json={"update_members": [{"user_id": "erin"}], "remove_members": ["erin", "dave"]},
    )
    assert r.status_code == 200 and r.json()["members"] == []
    assert [m["user_id"] for m in api.get(f"/calls/default/{call_id}").json()["members"]] == ["alice"]


# -- query ------------------------------------------------------------------------------------


def _query(api: httpx.Client, **body: Any) -> QueryCallsResponse:
    r = api.post("/calls", json=body)
    assert r.status_code == 200, r.text
    return QueryCallsResponse.model_validate(r.json())


def _cids(page: QueryCallsResponse) -> list[str]:
    return [c.call.cid for c in page.calls]


def test_query_pages_forward_and_back_without_gaps_or_repeats(api: httpx.Client) -> None:
    call_type = unique("page")
    cids = []
    for i in range(11):
        r = api.post(f"/calls/{call_type}/c{i:02d}", json={"data": {"custom": {"i": i}}})
        assert r.status_code == 201
        cids.append(f"{call_type}:c{i:02d}")
    conditions = {"type": call_type}

    # Default order: newest first.
    pages: list[list[str]] = []
    page = _query(api, filter_conditions=conditions, limit=3)
    assert page.prev is None
    pages.append(_cids(page))
    while page.next is not None:
        page = _query(api, filter_conditions=conditions, limit=3, next=page.next)
        assert page.prev is not None
        pages.append(_cids(page))
    assert [len(p) for p in pages] == [3, 3, 3, 2]
    assert [cid for p in pages for cid in p] == list(reversed(cids))

    # Back from the last page to the first, page by page.
    back: list[list[str]] = []
    while page.prev is not None:
        page = _query(api, filter_conditions=conditions, limit=3, prev=page.prev)
        assert page.next is not None
        back.append(_cids(page))
    assert back == list(reversed(pages[:-1]))

    # Ascending by cid, with a call added mid-way: keyset cursors neither skip nor repeat.
    page = _query(api, filter_conditions=conditions, limit=4, sort=[{"field": "cid", "direction": 1}])
    seen = _cids(page)
    api.post(f"/calls/{call_type}/c00a")  # sorts inside the page already seen: not listed again
    api.post(f"/calls/{call_type}/zz")  # sorts after everything: listed at the end
    while page.next is not None:
        page = _query(
            api, filter_conditions=conditions, limit=4, sort=[{"field": "cid", "direction": 1}], next=page.next
        )
        seen += _cids(page)
    assert seen == sorted(cids) + [f"{call_type}:zz"]
    assert len(seen) == len(set(seen))


def test_query_filters(api: httpx.Client) -> None:
    call_type = unique("filter")
    specs = [
        ("a", "alice", {"topic": "x", "n": 1, "flag": True}),
        ("b", "bob", {"topic": "y", "n": 2, "flag": False}),
        ("c", None, {"topic": "x", "n": 2.0, "flag": None}),
        ("d", "alice", {"n": "1"}),
    ]
    made = {}
    for call_id, creator, custom in specs:
        r = api.post(f"/calls/{call_type}/{call_id}", json={"data": {"created_by_id": creator, "custom": custom}})
        # One request after the other: each call is created after the previous one answered.
        made[call_id] = r.json()["call"]
    api.post(f"/calls/{call_type}/b/end")

    def ids(conditions: dict[str, Any]) -> set[str]:
        page = _query(api, filter_conditions={"type": call_type, **conditions}, limit=100)
        return {c.call.id for c in page.calls}

    assert ids({}) == {"a", "b", "c", "d"}
    assert ids({"id": "a"}) == {"a"}
    assert ids({"cid": f"{call_type}:c"}) == {"c"}
    assert ids({"id": {"$ne": "a"}}) == {"b", "c", "d"}
    assert ids({"id": {"$in": ["a", "c", "zz"]}}) == {"a", "c"}
    assert ids({"id": {"$in": []}}) == set()
    assert ids({"created_by_id": "alice"}) == {"a", "d"}
    assert ids({"created_by_id": None}) == {"c"}
    assert ids({"created_by_id": {"$in": ["bob", None]}}) == {"b", "c"}
    assert ids({"created_by_id": {"$ne": "alice"}}) == {"b", "c"}
    assert ids({"ended": True}) == {"b"}
    assert ids({"ended": False}) == {"a", "c", "d"}
    # custom: JSON types matter (1 is not "1" and not true); 2 equals 2.0; a missing key matches only $ne.
    assert ids({"custom.topic": "x"}) == {"a", "c"}
    assert ids({"custom.topic": {"$ne": "x"}}) == {"b", "d"}
    assert ids({"custom.n": 1}) == {"a"}
    assert ids({"custom.n": "1"}) == {"d"}
    assert ids({"custom.n": 2}) == {"b", "c"}
    assert ids({"custom.flag": True}) == {"a"}
    assert ids({"custom.flag": False}) == {"b"}
    assert ids({"custom.flag": None}) == {"c"}
    assert ids({"custom.topic": {"$in": ["y", "z"]}}) == {"b"}
    assert ids({"custom.topic": "x", "created_by_id": "alice"}) == {"a"}
    # Timestamps, as ISO 8601 with an offset.
    b_created = made["b"]["created_at"]
    assert ids({"created_at": {"$gt": b_created}}) == {"c", "d"}
    assert ids({"created_at": {"$gte": b_created}}) == {"b", "c", "d"}
    assert ids({"created_at": {"$lt": b_created}}) == {"a"}
    assert ids({"created_at": {"$lte": b_created, "$gte": made["a"]["created_at"]}}) == {"a", "b"}
    assert ids({"created_at": b_created}) == {"b"}
    tokyo = parse_time(b_created).astimezone(timezone(timedelta(hours=9))).isoformat()
    assert tokyo.endswith("+09:00")
    assert ids({"created_at": {"$gte": tokyo}}) == {"b", "c", "d"}
    assert ids({"updated_at": {"$gt": b_created}}) == {"b", "c", "d"}  # b's end updated it


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"filter_conditions": {"colour": "red"}}, "unknown field 'colour'"),
        ({"filter_conditions": {"type": {"$regex": "a"}}}, "unknown operator '$regex'"),
        ({"filter_conditions": {"type": {"$gt": "a"}}}, "$gt works on created_at and updated_at only"),
        ({"filter_conditions": {"type": 5}}, "needs a string"),
        ({"filter_conditions": {"ended": "yes"}}, "true or false"),
        ({"filter_conditions": {"ended": {"$ne": True}}}, "$eq only"),
        ({"filter_conditions": {"created_at": {"$gt": "yesterday"}}}, "ISO 8601"),
        ({"filter_conditions": {"id": {"$in": "a"}}}, "$in needs a list"),
        ({"filter_conditions": {"id": {}}}, "empty operator object"),
        ({"filter_conditions": {"custom.a.b": 1}}, "custom key"),
        ({"filter_conditions": {"custom.x": {"a": 1}}}, "unknown operator 'a'"),
        ({"filter_conditions": {"custom.x": [1]}}, "strings, numbers, booleans or null"),
        ({"filter_conditions": {"custom.x": 2**70}}, "64-bit"),
        ({"next": "not-a-cursor"}, "not a cursor"),
        ({"prev": "eyJ2IjoxfQ"}, "not a cursor"),
        ({"next": "a", "prev": "b"}, "not both"),
    ],
)
def test_query_rejects_bad_filters_and_cursors(api: httpx.Client, body: dict[str, Any], detail: str) -> None:
    assert_problem(api.post("/calls", json=body), 400, "bad_request", detail)


def test_query_cursor_is_bound_to_its_filter_and_sort(api: httpx.Client) -> None:
    call_type = unique("cursor")
    for i in range(3):
        api.post(f"/calls/{call_type}/c{i}")
    page = _query(api, filter_conditions={"type": call_type}, limit=1)
    assert page.next is not None
    assert_problem(
        api.post(
            "/calls", json={"filter_conditions": {"type": call_type, "ended": False}, "limit": 1, "next": page.next}
        ),
        400,
        "bad_request",
        "another filter or sort",
    )
    assert_problem(
        api.post(
            "/calls",
            json={"filter_conditions": {"type": call_type}, "sort": [{"field": "cid"}], "next": page.next},
        ),
        400,
        "bad_request",
        "another filter or sort",
    )
    # A next cursor is not a prev cursor.
    assert_problem(
        api.post("/calls", json={"filter_conditions": {"type": call_type}, "prev": page.next}), 400, "bad_request"
    )
    # The limit may change between pages.
    rest = _query(api, filter_conditions={"type": call_type}, limit=10, next=page.next)
    assert len(rest.calls) == 2 and rest.next is None


# -- auth -------------------------------------------------------------------------------------


def test_requests_without_valid_server_credentials_are_refused(api_server: ServerProcess) -> None:
    url = api_server.url + f"/v1/calls/default/{unique()}"
    user_token = create_token(SECRET, "alice")

    cases = [
        ({}, 401, "missing API key"),
        ({"X-Api-Key": API_KEY}, 401, "missing Authorization"),
        ({"X-Api-Key": "wrong", "Authorization": f"Bearer {create_server_token(SECRET)}"}, 401, "wrong API key"),
        ({"X-Api-Key": API_KEY, "Authorization": "Bearer not-a-jwt"}, 401, "not a JWT"),
        (
            {
                "X-Api-Key": API_KEY,
                "Authorization": f"Bearer {create_server_token('another-secret-0123456789abcdefgh')}",
            },
            401,
            "signature",
        ),
        (
            {
                "X-Api-Key": API_KEY,
                "Authorization": f"Bearer {create_server_token(SECRET, expiration=1, now=time.time() - 3600)}",
            },
            401,
            "expired",
        ),
        ({"X-Api-Key": API_KEY, "Authorization": f"Bearer {user_token}"}, 403, "user token"),
    ]
    for headers, status, detail in cases:
        for method in ("GET", "POST"):
            r = httpx.request(method, url, headers=headers, timeout=10)
            body = assert_problem(r, status, "unauthorized" if status == 401 else "forbidden", detail)
            if status == 401:
                assert r.headers["www-authenticate"].lower().startswith("bearer"), (headers, body)
    r = httpx.post(api_server.url + "/v1/calls", json={}, timeout=10)
    assert_problem(r, 401, "unauthorized")
    r = httpx.post(api_server.url + "/v1/tokens", json={"user_id": "x"}, timeout=10)
    assert_problem(r, 401, "unauthorized")
    # Nothing was created by the refused requests.
    assert_problem(httpx.get(url, headers=auth_headers(), timeout=10), 404, "call_not_found")


def test_openapi_documents_the_calls_routes(api_server: ServerProcess) -> None:
    doc = httpx.get(api_server.url + "/openapi.json", timeout=10).json()
    paths = doc["paths"]
    expected = {
        ("/v1/calls/{type}/{id}", "post"),
        ("/v1/calls/{type}/{id}", "get"),
        ("/v1/calls/{type}/{id}", "patch"),
        ("/v1/calls/{type}/{id}", "delete"),
        ("/v1/calls/{type}/{id}/members", "post"),
        ("/v1/calls/{type}/{id}/end", "post"),
        ("/v1/calls", "post"),
        ("/v1/tokens", "post"),
    }
    for path, method in expected:
        op = paths[path][method]
        assert {"401", "403", "404", "422"} <= set(op["responses"]), (path, method, op["responses"].keys())
        assert op["security"], (path, method)
        assert op["tags"] in (["calls"], ["tokens"])
    get_or_create = paths["/v1/calls/{type}/{id}"]["post"]["responses"]
    for status in ("200", "201"):
        schema = get_or_create[status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/GetOrCreateCallResponse")
    params = {p["name"]: p for p in paths["/v1/calls/{type}/{id}"]["get"]["parameters"]}
    assert params["type"]["schema"]["pattern"] and params["members_limit"]["in"] == "query"


# -- tokens -----------------------------------------------------------------------------------


def test_create_token(api: httpx.Client) -> None:
    before = int(time.time())
    r = api.post(
        "/tokens", json={"user_id": "alice", "expiration": 600, "call_cids": ["default:a"], "role": "recvonly"}
    )
    assert r.status_code == 200, r.text
    answer = CreateTokenResponse.model_validate(r.json())
    claims = decode_token(SECRET, answer.token)
    assert claims["user_id"] == "alice"
    assert claims["call_cids"] == ["default:a"] and claims["role"] == "recvonly"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 600
    assert answer.expires_at is not None and int(answer.expires_at.timestamp()) == claims["exp"]
    # Signed with the server's secret only.
    with pytest.raises(jwt.InvalidSignatureError):
        decode_token("some-other-secret-0123456789abcdefgh", answer.token)

    r = api.post("/tokens", json={"user_id": "bob", "expiration": None})
    never = CreateTokenResponse.model_validate(r.json())
    assert never.expires_at is None and "exp" not in decode_token(SECRET, never.token)
    assert "call_cids" not in decode_token(SECRET, never.token)

    assert_problem(
        api.post("/tokens", json={"user_id": "x", "call_cids": ["no-colon"]}), 400, "bad_request", "call_cids[0]"
    )
    assert_problem(api.post("/tokens", json={"user_id": "x", "call_cids": ["a:b:c"]}), 400, "bad_request")
    assert_problem(api.post("/tokens", json={"user_id": ""}), 422, "validation_error")
    assert_problem(api.post("/tokens", json={"user_id": "x", "role": "admin"}), 422, "validation_error")
    assert_problem(api.post("/tokens", json={"user_id": "x", "expiration": 0}), 422, "validation_error")


# -- with a real connection: end, delete, admission ------------------------------------------------


@pytest.fixture
def open_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A server without an API secret: /v1 and signaling are open."""
    return server_factory()


def test_open_server_needs_no_credentials_but_cannot_sign_tokens(open_server: ServerProcess) -> None:
    r = httpx.post(open_server.url + f"/v1/calls/default/{unique()}", timeout=10)
    assert r.status_code == 201, r.text
    assert_problem(
        httpx.post(open_server.url + "/v1/tokens", json={"user_id": "alice"}, timeout=10),
        400,
        "bad_request",
        "no API secret",
    )


def test_end_disconnects_connections_and_refuses_later_joins(open_server: ServerProcess) -> None:
    base = open_server.url + "/v1"
    call_id = unique()
    cid = f"default:{call_id}"
    assert httpx.post(f"{base}/calls/default/{call_id}", timeout=10).status_code == 201

    async def body(engine: Any) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            first = await Peer.join(engine, open_server, cid, client_id="alice")
            second = await Peer.join(engine, open_server, cid, role="recvonly", client_id="bob")
            await first.wait_for(is_notify("connection.created", second))

            got = GetCallResponse.model_validate((await client.get(f"/calls/default/{call_id}")).json())
            assert [(p.user_id, p.connection_id, p.role) for p in got.call.participants] == [
                ("alice", first.connection_id, "sendrecv"),
                ("bob", second.connection_id, "recvonly"),
            ]
            assert all(p.joined_at <= datetime.now().astimezone() for p in got.call.participants)

            r = await client.post(f"/calls/default/{call_id}/end")
            assert r.status_code == 200, r.text
            ended = EndCallResponse.model_validate(r.json())
            assert ended.call.ended_at is not None
            assert ended.connection_ids == [first.connection_id, second.connection_id]
            assert ended.call.participants == []

            for peer in (first, second):
                assert await peer.wait_closed() == (1000, "CALL-ENDED")
                notes = [m for m in peer.messages if m.get("event_type") == "call.ended"]
                assert len(notes) == 1, peer.messages
                note = CallEndedNotify.model_validate(notes[0])
                assert note.call_cid == cid and note.ended_at == ended.call.ended_at

            # A later join is refused with a reason.
            ws = await open_ws(open_server)
            await ws.send(json.dumps(connect_message(channel_id=cid)))
            code, reason, _ = await expect_close(ws)
            assert (code, reason) == (4403, "call ended")

            # Ending again is idempotent.
            r = await client.post(f"/calls/default/{call_id}/end")
            assert r.status_code == 200
            again = EndCallResponse.model_validate(r.json())
            assert again.connection_ids == [] and again.call.ended_at == ended.call.ended_at

            # Another channel is unaffected: a stored call refuses, an ordinary channel admits.
            other = await Peer.join(engine, open_server, unique("plain"))
            await other.disconnect()

    run(with_engine(body))


def test_delete_ends_a_live_call_and_frees_its_channel(open_server: ServerProcess) -> None:
    base = open_server.url + "/v1"
    call_id = unique()
    cid = f"default:{call_id}"
    httpx.post(f"{base}/calls/default/{call_id}", json={"data": {"members": [{"user_id": "alice"}]}}, timeout=10)

    async def body(engine: Any) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            peer = await Peer.join(engine, open_server, cid)
            r = await client.delete(f"/calls/default/{call_id}")
            assert r.status_code == 200, r.text
            deleted = DeleteCallResponse.model_validate(r.json())
            assert deleted.call.cid == cid and deleted.call.ended_at is not None
            assert await peer.wait_closed() == (1000, "CALL-ENDED")
            assert_problem(await client.get(f"/calls/default/{call_id}"), 404, "call_not_found")
            page = QueryCallsResponse.model_validate(
                (await client.post("/calls", json={"filter_conditions": {"cid": cid}})).json()
            )
            assert page.calls == []
            # Not a stored call any more: its channel is an ordinary one that admits.
            again = await Peer.join(engine, open_server, cid)
            await again.disconnect()
            # Created again, it starts fresh (no members left over).
            r = await client.post(f"/calls/default/{call_id}")
            assert r.status_code == 201 and r.json()["members"] == []

    run(with_engine(body))


def test_max_participants_refuses_joins_over_the_limit(open_server: ServerProcess) -> None:
    base = open_server.url + "/v1"
    call_id = unique()
    cid = f"default:{call_id}"
    r = httpx.post(
        f"{base}/calls/default/{call_id}", json={"data": {"settings_override": {"max_participants": 1}}}, timeout=10
    )
    assert r.status_code == 201

    async def body(engine: Any) -> None:
        first = await Peer.join(engine, open_server, cid)
        ws = await open_ws(open_server)
        await ws.send(json.dumps(connect_message(channel_id=cid)))
        code, reason, _ = await expect_close(ws)
        assert (code, reason) == (4403, "call is full (1 participants)")
        # Raising the limit lets the next one in.
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            r = await client.patch(f"/calls/default/{call_id}", json={"settings_override": {"max_participants": 2}})
            assert r.status_code == 200
        second = await Peer.join(engine, open_server, cid)
        await second.disconnect()
        await first.disconnect()

    run(with_engine(body))


def test_server_log_names_the_database(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    db = tmp_path / "named.sqlite3"
    srv = server_factory("--database", str(db))
    assert str(db) in srv.log_text()
    assert db.exists()


# -- the service's webhook events (in-process) --------------------------------------------------


class _RecordingWebhooks:
    """Stands in for hub.webhooks (delivery is tests/test_webhooks.py's subject): records each emit."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_type: str, **fields: Any) -> None:
        self.events.append((event_type, fields))


class _Hub:
    """What CallService uses of the hub: settings.database, the channel registry and webhooks."""

    def __init__(self, database: str) -> None:
        self.settings = ServerSettings(database=database)
        self.registry = ChannelRegistry()
        self.webhooks = _RecordingWebhooks()
        self.calls = CallService(self)  # type: ignore[arg-type]


def test_service_emits_a_webhook_per_change(tmp_path: Path) -> None:
    hub = _Hub(str(tmp_path / "events.sqlite3"))

    async def body() -> list[tuple[str, dict[str, Any]]]:
        calls = hub.calls
        await calls.start()
        try:
            assert calls.admission("default:a") is None
            await calls.get_or_create("default", "a", CallRequest(members=[MemberRequest(user_id="bob")]))
            await calls.get_or_create("default", "a")  # exists: no event
            admission = calls.admission("default:a")
            assert admission is not None and not admission.ended and admission.settings.max_participants is None
            await calls.update("default", "a", UpdateCallRequest(custom={"k": 1}))
            await calls.update_members(
                "default",
                "a",
                UpdateCallMembersRequest(update_members=[MemberRequest(user_id="carol")], remove_members=["bob", "x"]),
            )
            await calls.end("default", "a")
            await calls.end("default", "a")  # already ended: no event
            admission = calls.admission("default:a")
            assert admission is not None and admission.ended
            await calls.delete("default", "a")
            assert calls.admission("default:a") is None and calls.call_snapshot("default:a") is None
            with pytest.raises(CallNotFoundError):
                await calls.get("default", "a")
            # Deleting a live call ends it first.
            await calls.get_or_create("default", "b")
            await calls.delete("default", "b")
            assert (await calls.query(QueryCallsRequest())).calls == []
            return hub.webhooks.events
        finally:
            await calls.aclose()

    events = run(body())
    assert [(name, fields["call_cid"]) for name, fields in events] == [
        ("call.created", "default:a"),
        ("call.updated", "default:a"),
        ("call.member_added", "default:a"),
        ("call.member_removed", "default:a"),
        ("call.ended", "default:a"),
        ("call.deleted", "default:a"),
        ("call.created", "default:b"),
        ("call.ended", "default:b"),
        ("call.deleted", "default:b"),
    ]
    by_name = dict(events[:6])
    assert [m.user_id for m in by_name["call.created"]["members"]] == ["bob"]
    assert by_name["call.updated"]["call"].custom == {"k": 1}
    assert [m.user_id for m in by_name["call.member_added"]["members"]] == ["carol"]
    assert [m.user_id for m in by_name["call.member_removed"]["members"]] == ["bob"]  # "x" was no member
    assert by_name["call.ended"]["call"].ended_at is not None
    assert by_name["call.deleted"]["call"].ended_at == by_name["call.ended"]["call"].ended_at
