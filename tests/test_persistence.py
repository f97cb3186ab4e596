"""Persistence of calls: the SQLite store, in-process and across real server restarts.

The store (``hibiki.server.store.sqlite``) is a real file in WAL mode with a
versioned schema, worked on by one thread; a ``hibiki serve`` restarted on
the same ``--database`` finds its calls, members and ended calls as it left
them, even after being killed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, ServerProcess, connect_message, expect_close, open_ws, run
from hibiki.server.store import CallCondition, CallQuery, CallRecord, MemberRecord, SortKey, open_store
from hibiki.server.store.sqlite import SCHEMA_VERSION

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _call(call_id: str, at: datetime = T0, **fields: Any) -> CallRecord:
    base: dict[str, Any] = {
        "type": "default",
        "id": call_id,
        "created_by_id": "alice",
        "custom": {},
        "settings": {"audio": True, "video": True, "max_participants": None, "max_duration_seconds": None},
        "created_at": at,
        "updated_at": at,
    }
    base.update(fields)
    return CallRecord(**base)


def _member(cid: str, user_id: str, at: datetime = T0, role: str = "user") -> MemberRecord:
    return MemberRecord(cid, user_id, role, {"u": user_id}, at, at)


# -- the store in-process --------------------------------------------------------------------


def test_store_round_trip(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(str(tmp_path / "calls.sqlite3"))
        try:
            call = _call("a", custom={"topic": "x", "nested": {"list": [1, 2.5, None, True]}})
            stored, created = await store.create_call(call, [_member("default:a", "bob")])
            assert created and stored == call  # microseconds and UTC kept
            assert stored.created_at.tzinfo is not None and stored.created_at.utcoffset() == timedelta(0)

            # A second create changes nothing and returns the existing call.
            again, created = await store.create_call(_call("a", created_by_id="mallory"), [_member("default:a", "eve")])
            assert not created and again == call
            assert [m.user_id for m in await store.list_members("default:a", 10)] == ["bob"]

            # Upsert: a new member is added, an existing one keeps its created_at.
            later = T0 + timedelta(seconds=5)
            upserted = await store.upsert_members(
                "default:a", [_member("default:a", "bob", later, role="host"), _member("default:a", "carol", later)]
            )
            assert [(m.user_id, m.role, m.created_at, m.updated_at) for m in upserted] == [
                ("bob", "host", T0, later),
                ("carol", "user", later, later),
            ]
            removed = await store.remove_members("default:a", ["carol", "nobody", "carol"])
            assert [m.user_id for m in removed] == ["carol"]

            ended = _call("a", custom=call.custom, updated_at=later, ended_at=later)
            await store.update_call(ended)
            assert await store.get_call("default:a") == ended
            with pytest.raises(KeyError):
                await store.update_call(_call("missing"))

            # Deleting a call deletes its members: a new call of that cid starts empty.
            assert await store.delete_call("default:a") is True
            assert await store.delete_call("default:a") is False
            assert await store.get_call("default:a") is None
            await store.create_call(_call("a"), [])
            assert await store.list_members("default:a", 10) == []
            assert await store.list_members_of(["default:a", "default:none"], 5) == {
                "default:a": [],
                "default:none": [],
            }
        finally:
            await store.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await store.get_call("default:a")

    run(body())


def test_store_keyset_queries(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(":memory:")
        try:
            # Pairs share a created_at: the cid breaks the tie, so pages are exact.
            for i in range(10):
                await store.create_call(_call(f"c{i}", T0 + timedelta(seconds=i // 2), custom={"i": i}), [])
            newest_first = CallQuery(sort=[SortKey("created_at", -1)], limit=100)
            everything = [r.id for r in await store.query_calls(newest_first)]
            assert everything == ["c8", "c9", "c6", "c7", "c4", "c5", "c2", "c3", "c0", "c1"]

            pages: list[str] = []
            after: tuple[Any, ...] | None = None
            while True:
                page = await store.query_calls(CallQuery(sort=[SortKey("created_at", -1)], limit=3, after=after))
                if not page:
                    break
                pages += [r.id for r in page]
                after = (page[-1].created_at, page[-1].cid)
            assert pages == everything

            # Reverse: the calls before a position, nearest first.
            anchor = await store.get_call("default:c4")
            assert anchor is not None
            before = await store.query_calls(
                CallQuery(
                    sort=[SortKey("created_at", -1)], limit=3, after=(anchor.created_at, anchor.cid), reverse=True
                )
            )
            assert [r.id for r in before] == ["c7", "c6", "c9"]

            custom_even = [CallCondition("custom.i", "$in", (0, 2, 4)), CallCondition("ended", "$eq", False)]
            found = await store.query_calls(CallQuery(conditions=custom_even, sort=[SortKey("cid", 1)]))
            assert [r.id for r in found] == ["c0", "c2", "c4"]
        finally:
            await store.aclose()

    run(body())


def test_store_is_wal_with_a_schema_version_and_one_worker_thread(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "calls.sqlite3"  # missing directories are created

    async def body() -> None:
        store = await open_store(str(path))
        try:
            # Many operations at once: sqlite3 refuses (ProgrammingError) any
            # use of the connection off the thread that opened it, so these
            # all succeeding means they all ran on that one worker thread.
            await asyncio.gather(
                *(store.create_call(_call(f"c{i}"), [_member(f"default:c{i}", "u")]) for i in range(50))
            )
            results = await asyncio.gather(*(store.get_call(f"default:c{i}") for i in range(50)))
            assert all(r is not None for r in results)
            workers = [t for t in threading.enumerate() if t.name.startswith("hibiki-sqlite")]
            assert len(workers) == 1, workers
        finally:
            await store.aclose()

    run(body())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert db.execute("SELECT count(*) FROM calls").fetchone()[0] == 50
        assert db.execute("SELECT count(*) FROM members").fetchone()[0] == 50
    # Opening again neither migrates nor duplicates anything.
    run(_reopen_count(path, 50))


async def _reopen_count(path: Path, expected: int) -> None:
    store = await open_store(str(path))
    try:
        assert len(await store.all_calls()) == expected
    finally:
        await store.aclose()


def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer than this hibiki"):
        run(open_store(str(path)))


# -- a real server restarted on the same file --------------------------------------------------


def _api(srv: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=srv.url + "/v1", timeout=10.0)


def _refusal(srv: ServerProcess, channel_id: str) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        ws = await open_ws(srv)
        await ws.send(json.dumps(connect_message(channel_id=channel_id)))
        code, reason, _ = await expect_close(ws)
        return code, reason

    return run(go())


def test_calls_survive_a_server_restart(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite3"
    first = server_factory("--database", str(db))
    with _api(first) as api:
        r = api.post(
            "/calls/default/kept",
            json={
                "data": {
                    "created_by_id": "alice",
                    "custom": {"topic": "standup", "n": 1.5},
                    "members": [{"user_id": "bob", "role": "host", "custom": {"k": [1, 2]}}, {"user_id": "carol"}],
                    "settings_override": {"max_participants": 3, "audio": False},
                }
            },
        )
        assert r.status_code == 201, r.text
        api.patch("/calls/default/kept", json={"custom": {"topic": "retro"}}).raise_for_status()
        api.post("/calls/default/kept/members", json={"remove_members": ["carol"]}).raise_for_status()
        api.post("/calls/default/over").raise_for_status()
        api.post("/calls/default/over/end").raise_for_status()
        api.post("/calls/default/gone").raise_for_status()
        api.delete("/calls/default/gone").raise_for_status()
        before = {cid: api.get(f"/calls/default/{cid}").json() for cid in ("kept", "over")}
        listing = api.post("/calls", json={"sort": [{"field": "cid", "direction": 1}]}).json()
    first.stop()
    assert first.stopped_cleanly

    second = server_factory("--database", str(db))
    with _api(second) as api:
        after = {cid: api.get(f"/calls/default/{cid}").json() for cid in ("kept", "over")}
        assert after == before
        kept = after["kept"]
        assert kept["call"]["custom"] == {"topic": "retro"}
        assert kept["call"]["settings"]["max_participants"] == 3 and kept["call"]["settings"]["audio"] is False
        assert [(m["user_id"], m["role"], m["custom"]) for m in kept["members"]] == [("bob", "host", {"k": [1, 2]})]
        assert after["over"]["call"]["ended_at"] is not None
        assert api.get("/calls/default/gone").status_code == 404
        assert api.post("/calls", json={"sort": [{"field": "cid", "direction": 1}]}).json() == listing
        # Get-or-create of a stored call does not create it again.
        r = api.post("/calls/default/kept")
        assert r.status_code == 200 and r.json()["created"] is False
    # The ended call still refuses joins: admission is loaded from the file at startup.
    assert _refusal(second, "default:over") == (4403, "call ended")


def test_a_killed_server_loses_no_acknowledged_write(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    db = tmp_path / "crash.sqlite3"
    first = server_factory("--database", str(db))
    with _api(first) as api:
        for i in range(20):
            assert api.post(f"/calls/crash/c{i:02d}", json={"data": {"custom": {"i": i}}}).status_code == 201
        api.post("/calls/crash/c00/end").raise_for_status()
    # SIGKILL: no shutdown, no checkpoint. WAL with synchronous=NORMAL keeps
    # every committed transaction across a process crash.
    first.stop_requested = True  # killed on purpose: not "died during the test"
    first.proc.kill()
    first.proc.wait(10)

    second = server_factory("--database", str(db))
    with _api(second) as api:
        page = api.post("/calls", json={"filter_conditions": {"type": "crash"}, "limit": 100}).json()
        assert sorted(c["call"]["custom"]["i"] for c in page["calls"]) == list(range(20))
    assert _refusal(second, "crash:c00") == (4403, "call ended")


def test_memory_database_keeps_nothing(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    first = server_factory("--database", ":memory:")
    with _api(first) as api:
        assert api.post("/calls/default/m").status_code == 201
        assert api.get("/calls/default/m").status_code == 200
    first.stop()
    second = server_factory("--database", ":memory:")
    with _api(second) as api:
        assert api.get("/calls/default/m").status_code == 404
    assert not list(REPO.glob(":memory:*"))  # the servers' working directory: no file of that name
