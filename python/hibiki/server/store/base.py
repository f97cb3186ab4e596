"""The storage interface of calls and their members, independent of any database.

:class:`CallRepository` is what :class:`hibiki.server.calls.CallService`
needs from a database; ``hibiki.server.store.sqlite`` implements it with
SQLite (the default), and a PostgreSQL backend can implement the same
protocol later. Records are plain dataclasses with timezone-aware UTC
datetimes; custom data is any JSON-compatible ``dict``. Backends keep the
timestamps to the microsecond.

Queries are given as a :class:`CallQuery`, already validated (known fields,
known operators, values of the right type): a backend only translates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

__all__ = [
    "CALL_QUERY_FIELDS",
    "SORT_FIELDS",
    "CallCondition",
    "CallQuery",
    "CallRecord",
    "CallRepository",
    "MemberRecord",
    "SortKey",
    "effective_sort",
]


@dataclass(frozen=True)
class CallRecord:
    """A stored call."""

    type: str
    id: str
    created_by_id: str | None
    custom: dict[str, Any]
    settings: dict[str, Any]
    """The effective :class:`hibiki.api.models.CallSettings` as a dict (``model_dump()``)."""
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None

    @property
    def cid(self) -> str:
        """``"<type>:<id>"``, the call's key and its media channel_id."""
        return f"{self.type}:{self.id}"


@dataclass(frozen=True)
class MemberRecord:
    """A member of a stored call."""

    call_cid: str
    user_id: str
    role: str
    custom: dict[str, Any]
    created_at: datetime
    updated_at: datetime


SortField = Literal["created_at", "updated_at", "cid"]
SORT_FIELDS: tuple[str, ...] = ("created_at", "updated_at", "cid")

CALL_QUERY_FIELDS: tuple[str, ...] = ("type", "id", "cid", "created_by_id", "created_at", "updated_at", "ended")
"""Fields a :class:`CallCondition` may name, besides ``custom.<key>``."""


@dataclass(frozen=True)
class SortKey:
    """One sort key: a field and its direction (1 ascending, -1 descending)."""

    field: SortField
    direction: Literal[1, -1]


def effective_sort(sort: Sequence[SortKey]) -> list[SortKey]:
    """The keys a query really orders by: ``sort`` up to its first ``cid`` key, then ``cid`` ascending.

    ``cid`` is unique, so it ends every order (keys after it could never
    matter) and makes the order total, which keyset pagination needs.
    """
    keys: list[SortKey] = []
    seen: set[str] = set()
    for key in sort:
        if key.field in seen:
            continue
        seen.add(key.field)
        keys.append(key)
        if key.field == "cid":
            return keys
    keys.append(SortKey("cid", 1))
    return keys


@dataclass(frozen=True)
class CallCondition:
    """One condition of a query (conditions are ANDed).

    ``field`` is one of :data:`CALL_QUERY_FIELDS` or ``custom.<key>``.
    ``op`` is ``$eq``, ``$ne``, ``$in`` (``value`` is then a tuple), or for
    ``created_at``/``updated_at`` ``$gt``, ``$gte``, ``$lt``, ``$lte``.
    Timestamps are datetimes, ``ended`` a bool, ``created_by_id`` may be
    None (matches calls without a creator), custom values are JSON scalars
    (str, int, float, bool, None): a missing key matches neither ``$eq`` nor
    ``$in`` but does match ``$ne``.
    """

    field: str
    op: Literal["$eq", "$ne", "$in", "$gt", "$gte", "$lt", "$lte"]
    value: Any


@dataclass(frozen=True)
class CallQuery:
    """A page of calls to fetch.

    The calls matching every condition, in the order of
    :func:`effective_sort` (``sort``, then ``cid``: a total order, so keyset
    pagination never skips or repeats a call). With ``after`` (a call's
    values of the effective sort keys, in order: datetimes and a cid) only
    calls strictly after it in that order are returned; with ``reverse`` the order is turned round
    (the backend then returns the calls *before* ``after``, nearest first,
    and the caller flips the page back).
    """

    conditions: Sequence[CallCondition] = ()
    sort: Sequence[SortKey] = (SortKey("created_at", -1),)
    limit: int = 25
    after: tuple[Any, ...] | None = None
    reverse: bool = False


class CallRepository(Protocol):
    """Persistent calls and members. Every method is a coroutine; none blocks the event loop.

    Implementations serialise writes themselves: a method's effect is
    complete (and durable as far as the backend promises) when it returns.
    """

    async def all_calls(self) -> list[CallRecord]:
        """Every stored call (the service keeps them in memory for admission)."""
        ...

    async def get_call(self, cid: str) -> CallRecord | None:
        """The call, or None."""
        ...

    async def create_call(self, call: CallRecord, members: Sequence[MemberRecord]) -> tuple[CallRecord, bool]:
        """Store ``call`` with its first ``members`` unless a call with its cid exists.

        Returns ``(the stored call, True)`` when it was created, else
        ``(the existing call, False)`` and nothing changes. Atomic.
        """
        ...

    async def update_call(self, call: CallRecord) -> None:
        """Replace the stored call with the same cid (its custom, settings, times)."""
        ...

    async def delete_call(self, cid: str) -> bool:
        """Remove the call and its members; False if there was none."""
        ...

    async def upsert_members(self, cid: str, members: Sequence[MemberRecord]) -> list[MemberRecord]:
        """Add members, or replace the role and custom of existing ones (keeping ``created_at``).

        Returns them as stored, in the given order. Atomic.
        """
        ...

    async def remove_members(self, cid: str, user_ids: Sequence[str]) -> list[MemberRecord]:
        """Remove members; returns those that existed, as they were."""
        ...

    async def list_members(self, cid: str, limit: int) -> list[MemberRecord]:
        """Up to ``limit`` members of the call, oldest first (then by user_id)."""
        ...

    async def list_members_of(self, cids: Sequence[str], limit: int) -> dict[str, list[MemberRecord]]:
        """:meth:`list_members` for several calls at once (every cid is a key of the result)."""
        ...

    async def query_calls(self, query: CallQuery) -> list[CallRecord]:
        """Up to ``query.limit`` calls, see :class:`CallQuery`."""
        ...

    async def aclose(self) -> None:
        """Close the store; later calls fail."""
        ...
