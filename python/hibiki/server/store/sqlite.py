"""SQLite implementation of :class:`~hibiki.server.store.base.CallRepository`.

One database file (``hibiki serve --database PATH``; ``":memory:"`` for a
throw-away store) in WAL mode, its schema created on first open and
versioned in a ``schema_version`` table. Every statement runs on one
dedicated worker thread that owns the connection: the event loop never
waits on disk, and since SQLite allows one writer at a time anyway a single
thread costs nothing and needs no locking.

One server process per file: :class:`~hibiki.server.calls.CallService`
keeps the calls in memory (WAL still lets other processes read the file,
e.g. ``sqlite3 hibiki.sqlite3`` for a look or a backup).

Times are stored as integer microseconds since the Unix epoch (UTC), so
they sort and compare as numbers; custom data and settings as JSON text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from hibiki.server.store.base import CallCondition, CallQuery, CallRecord, MemberRecord, effective_sort

__all__ = ["SCHEMA_VERSION", "SqliteCallRepository", "open_store"]

log = logging.getLogger("hibiki.server.store")

T = TypeVar("T")

SCHEMA_VERSION: Final = 1
"""The schema this code writes. An older file is migrated on open; a newer one is refused."""

_SCHEMA_V1: Final = """
CREATE TABLE calls (
    cid TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    created_by_id TEXT,
    custom TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    ended_at INTEGER
);
CREATE INDEX calls_by_created ON calls (created_at, cid);
CREATE INDEX calls_by_updated ON calls (updated_at, cid);
CREATE TABLE members (
    call_cid TEXT NOT NULL REFERENCES calls (cid) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    custom TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (call_cid, user_id)
);
CREATE INDEX members_by_created ON members (call_cid, created_at, user_id);
"""

_MIGRATIONS: Final[dict[int, str]] = {1: _SCHEMA_V1}
"""Script that takes the schema from version ``n - 1`` to ``n`` (0 = empty file)."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)

_CALL_COLUMNS: Final = "type, id, created_by_id, custom, settings, created_at, updated_at, ended_at"
_MEMBER_COLUMNS: Final = "call_cid, user_id, role, custom, created_at, updated_at"
_SQL_OPS: Final = {"$eq": "IS", "$ne": "IS NOT", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_COLUMN_OF: Final = {
    "type": "type",
    "id": "id",
    "cid": "cid",
    "created_by_id": "created_by_id",
    "created_at": "created_at",
    "updated_at": "updated_at",
}


def to_us(value: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _ONE_US


def from_us(value: int) -> datetime:
    """The UTC datetime of :func:`to_us`'s microseconds."""
    return _EPOCH + timedelta(microseconds=value)


def _dump_json(value: Any) -> str:
    # allow_nan=False: SQLite's JSON functions reject NaN/Infinity; the
    # service refuses such input before it gets here.
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _call_from_row(row: sqlite3.Row) -> CallRecord:
    return CallRecord(
        type=row["type"],
        id=row["id"],
        created_by_id=row["created_by_id"],
        custom=json.loads(row["custom"]),
        settings=json.loads(row["settings"]),
        created_at=from_us(row["created_at"]),
        updated_at=from_us(row["updated_at"]),
        ended_at=None if row["ended_at"] is None else from_us(row["ended_at"]),
    )


def _member_from_row(row: sqlite3.Row) -> MemberRecord:
    return MemberRecord(
        call_cid=row["call_cid"],
        user_id=row["user_id"],
        role=row["role"],
        custom=json.loads(row["custom"]),
        created_at=from_us(row["created_at"]),
        updated_at=from_us(row["updated_at"]),
    )


def _sql_value(value: Any) -> Any:
    return to_us(value) if isinstance(value, datetime) else value


def _custom_equals(path: str, value: Any) -> tuple[str, list[Any]]:
    """SQL true (1) when custom's value at ``path`` is the JSON scalar ``value``, else 0 (also when missing).

    json_type tells JSON true from the number 1 and the string "1", which a
    bare json_extract comparison would confuse.
    """
    if value is None:
        return "coalesce(json_type(custom, ?) = 'null', 0)", [path]
    if isinstance(value, bool):
        return "coalesce(json_type(custom, ?) = ?, 0)", [path, "true" if value else "false"]
    if isinstance(value, int | float):
        return "coalesce(json_type(custom, ?) IN ('integer', 'real') AND json_extract(custom, ?) = ?, 0)", [
            path,
            path,
            value,
        ]
    return "coalesce(json_type(custom, ?) = 'text' AND json_extract(custom, ?) = ?, 0)", [path, path, value]


def _condition_sql(cond: CallCondition) -> tuple[str, list[Any]]:
    """One WHERE term for a validated condition."""
    if cond.field == "ended":
        return ("ended_at IS NOT NULL" if cond.value else "ended_at IS NULL"), []
    if cond.field.startswith("custom."):
        # The service allows only [A-Za-z0-9_-] keys, so quoting cannot be broken out of.
        path = '$."' + cond.field.removeprefix("custom.") + '"'
        values = list(cond.value) if cond.op == "$in" else [cond.value]
        terms: list[str] = []
        params: list[Any] = []
        for value in values:
            sql, args = _custom_equals(path, value)
            terms.append(sql)
            params.extend(args)
        if not terms:  # $in []
            return "0", []
        either = "(" + " OR ".join(terms) + ")"
        return (f"NOT {either}" if cond.op == "$ne" else either), params
    column = _COLUMN_OF[cond.field]
    if cond.op == "$in":
        values = [_sql_value(v) for v in cond.value]
        if not values:
            return "0", []
        # IS (not IN) so that a None in the list matches a NULL created_by_id.
        return "(" + " OR ".join(f"{column} IS ?" for _ in values) + ")", values
    return f"{column} {_SQL_OPS[cond.op]} ?", [_sql_value(cond.value)]


def _query_sql(query: CallQuery) -> tuple[str, list[Any]]:
    """The SELECT of a :class:`CallQuery`."""
    where: list[str] = []
    params: list[Any] = []
    for cond in query.conditions:
        sql, args = _condition_sql(cond)
        where.append(sql)
        params.extend(args)
    keys = effective_sort(query.sort)
    ascending = [(key.direction == 1) != query.reverse for key in keys]
    if query.after is not None:
        if len(query.after) != len(keys):
            raise ValueError(f"after has {len(query.after)} values for {len(keys)} sort keys")
        # Keyset: (k1 > a1) OR (k1 = a1 AND k2 > a2) OR ... with > or < per key direction.
        ors: list[str] = []
        for i, key in enumerate(keys):
            ands = [f"{keys[j].field} = ?" for j in range(i)]
            ands.append(f"{key.field} {'>' if ascending[i] else '<'} ?")
            ors.append("(" + " AND ".join(ands) + ")")
            params.extend(_sql_value(query.after[j]) for j in range(i + 1))
        where.append("(" + " OR ".join(ors) + ")")
    order = ", ".join(f"{key.field} {'ASC' if asc else 'DESC'}" for key, asc in zip(keys, ascending, strict=True))
    sql = f"SELECT {_CALL_COLUMNS} FROM calls"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order} LIMIT ?"
    params.append(query.limit)
    return sql, params


class SqliteCallRepository:
    """Calls and members in one SQLite file. Create with :func:`open_store`."""

    def __init__(self, path: str) -> None:
        self.path = path
        # One thread owns the connection: sqlite3 objects must stay on the
        # thread that made them, and it serialises every statement.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hibiki-sqlite")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("the call store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the call store is not open")
        return self._db

    # -- opening and closing (worker thread) ------------------------------------------

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; writes use explicit
        # BEGIN IMMEDIATE ... COMMIT so that each method is one transaction.
        # check_same_thread stays on: any use off the worker thread is a bug
        # that sqlite3 then reports at once.
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout = 5000")
            if self.path != ":memory:":
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("SQLite store %s: journal_mode is %s, not WAL", self.path, mode)
            # NORMAL is durable across application crashes in WAL mode (only
            # a power loss can lose the last transactions) and much faster.
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            version = int(row[0]) if row[0] is not None else 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the database has schema version {version}, newer than this hibiki's {SCHEMA_VERSION}: "
                    "upgrade hibiki or use another --database"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
                log.info("SQLite store: schema version %d", target)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def open(self) -> None:
        """Open (or create) the database and bring its schema up to date."""
        await self._run(self._open)

    async def aclose(self) -> None:
        """Close the connection and stop the worker thread (idempotent)."""
        if self._closed:
            return
        try:
            await self._run(self._close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    # -- statements (worker thread) ---------------------------------------------------

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    @staticmethod
    def _insert_members(db: sqlite3.Connection, cid: str, members: Sequence[MemberRecord]) -> list[MemberRecord]:
        stored: list[MemberRecord] = []
        for m in members:
            db.execute(
                f"INSERT INTO members ({_MEMBER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (call_cid, user_id) DO UPDATE SET "
                "role = excluded.role, custom = excluded.custom, updated_at = excluded.updated_at",
                (cid, m.user_id, m.role, _dump_json(m.custom), to_us(m.created_at), to_us(m.updated_at)),
            )
            row = db.execute(
                f"SELECT {_MEMBER_COLUMNS} FROM members WHERE call_cid = ? AND user_id = ?", (cid, m.user_id)
            ).fetchone()
            stored.append(_member_from_row(row))
        return stored

    def _all_calls(self) -> list[CallRecord]:
        return [_call_from_row(r) for r in self._conn.execute(f"SELECT {_CALL_COLUMNS} FROM calls ORDER BY cid")]

    def _get_call(self, cid: str) -> CallRecord | None:
        row = self._conn.execute(f"SELECT {_CALL_COLUMNS} FROM calls WHERE cid = ?", (cid,)).fetchone()
        return None if row is None else _call_from_row(row)

    def _create_call(self, call: CallRecord, members: Sequence[MemberRecord]) -> tuple[CallRecord, bool]:
        def tx(db: sqlite3.Connection) -> tuple[CallRecord, bool]:
            cur = db.execute(
                f"INSERT INTO calls (cid, {_CALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (cid) DO NOTHING",
                (
                    call.cid,
                    call.type,
                    call.id,
                    call.created_by_id,
                    _dump_json(call.custom),
                    _dump_json(call.settings),
                    to_us(call.created_at),
                    to_us(call.updated_at),
                    None if call.ended_at is None else to_us(call.ended_at),
                ),
            )
            if cur.rowcount == 0:
                row = db.execute(f"SELECT {_CALL_COLUMNS} FROM calls WHERE cid = ?", (call.cid,)).fetchone()
                return _call_from_row(row), False
            self._insert_members(db, call.cid, members)
            row = db.execute(f"SELECT {_CALL_COLUMNS} FROM calls WHERE cid = ?", (call.cid,)).fetchone()
            return _call_from_row(row), True

        return self._write(tx)

    def _update_call(self, call: CallRecord) -> None:
        def tx(db: sqlite3.Connection) -> None:
            cur = db.execute(
                "UPDATE calls SET created_by_id = ?, custom = ?, settings = ?, created_at = ?, updated_at = ?, "
                "ended_at = ? WHERE cid = ?",
                (
                    call.created_by_id,
                    _dump_json(call.custom),
                    _dump_json(call.settings),
                    to_us(call.created_at),
                    to_us(call.updated_at),
                    None if call.ended_at is None else to_us(call.ended_at),
                    call.cid,
                ),
            )
            if cur.rowcount != 1:
                raise KeyError(call.cid)

        self._write(tx)

    def _delete_call(self, cid: str) -> bool:
        def tx(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM members WHERE call_cid = ?", (cid,))
            return db.execute("DELETE FROM calls WHERE cid = ?", (cid,)).rowcount > 0

        return self._write(tx)

    def _upsert_members(self, cid: str, members: Sequence[MemberRecord]) -> list[MemberRecord]:
        return self._write(lambda db: self._insert_members(db, cid, members))

    def _remove_members(self, cid: str, user_ids: Sequence[str]) -> list[MemberRecord]:
        def tx(db: sqlite3.Connection) -> list[MemberRecord]:
            removed: list[MemberRecord] = []
            for user_id in dict.fromkeys(user_ids):  # each once, in the given order
                row = db.execute(
                    f"SELECT {_MEMBER_COLUMNS} FROM members WHERE call_cid = ? AND user_id = ?", (cid, user_id)
                ).fetchone()
                if row is not None:
                    db.execute("DELETE FROM members WHERE call_cid = ? AND user_id = ?", (cid, user_id))
                    removed.append(_member_from_row(row))
            return removed

        return self._write(tx)

    def _list_members(self, cid: str, limit: int) -> list[MemberRecord]:
        rows = self._conn.execute(
            f"SELECT {_MEMBER_COLUMNS} FROM members WHERE call_cid = ? ORDER BY created_at, user_id LIMIT ?",
            (cid, limit),
        )
        return [_member_from_row(r) for r in rows]

    def _list_members_of(self, cids: Sequence[str], limit: int) -> dict[str, list[MemberRecord]]:
        return {cid: self._list_members(cid, limit) for cid in cids}

    def _query_calls(self, query: CallQuery) -> list[CallRecord]:
        sql, params = _query_sql(query)
        return [_call_from_row(r) for r in self._conn.execute(sql, params)]

    # -- the CallRepository interface --------------------------------------------------

    async def all_calls(self) -> list[CallRecord]:
        """Every stored call."""
        return await self._run(self._all_calls)

    async def get_call(self, cid: str) -> CallRecord | None:
        """The call, or None."""
        return await self._run(self._get_call, cid)

    async def create_call(self, call: CallRecord, members: Sequence[MemberRecord]) -> tuple[CallRecord, bool]:
        """Store a call and its first members unless it exists (then return the existing one)."""
        return await self._run(self._create_call, call, list(members))

    async def update_call(self, call: CallRecord) -> None:
        """Replace the stored call with the same cid (KeyError if there is none)."""
        await self._run(self._update_call, call)

    async def delete_call(self, cid: str) -> bool:
        """Remove a call and its members; False if there was none."""
        return await self._run(self._delete_call, cid)

    async def upsert_members(self, cid: str, members: Sequence[MemberRecord]) -> list[MemberRecord]:
        """Add or update members; returns them as stored."""
        return await self._run(self._upsert_members, cid, list(members))

    async def remove_members(self, cid: str, user_ids: Sequence[str]) -> list[MemberRecord]:
        """Remove members; returns those that existed."""
        return await self._run(self._remove_members, cid, list(user_ids))

    async def list_members(self, cid: str, limit: int) -> list[MemberRecord]:
        """Up to ``limit`` members, oldest first."""
        return await self._run(self._list_members, cid, limit)

    async def list_members_of(self, cids: Sequence[str], limit: int) -> dict[str, list[MemberRecord]]:
        """Members of several calls in one trip to the worker thread."""
        return await self._run(self._list_members_of, list(cids), limit)

    async def query_calls(self, query: CallQuery) -> list[CallRecord]:
        """A page of calls (see :class:`~hibiki.server.store.base.CallQuery`)."""
        return await self._run(self._query_calls, query)


async def open_store(path: str) -> SqliteCallRepository:
    """Open the SQLite store at ``path`` (a file, created with its directory if needed, or ``":memory:"``)."""
    store = SqliteCallRepository(path)
    try:
        await store.open()
    except BaseException:
        await store.aclose()
        raise
    return store
