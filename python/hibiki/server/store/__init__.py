"""Persistent state of the ``/v1`` API: calls and their members.

:class:`CallRepository` is the interface (``store.base``), :func:`open_store`
opens the default SQLite implementation (``store.sqlite``).
"""

from hibiki.server.store.base import CallCondition, CallQuery, CallRecord, CallRepository, MemberRecord, SortKey
from hibiki.server.store.sqlite import SqliteCallRepository, open_store

__all__ = [
    "CallCondition",
    "CallQuery",
    "CallRecord",
    "CallRepository",
    "MemberRecord",
    "SortKey",
    "SqliteCallRepository",
    "open_store",
]
