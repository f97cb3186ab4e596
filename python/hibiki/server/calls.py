"""Calls: the stored rooms of the ``/v1`` API, their members, and what joining them allows.

A call ``type:id`` is persisted (``hibiki.server.store``) and its media is
the channel whose ``channel_id`` is its cid. :class:`CallService` is the
business logic behind ``/v1/calls``: it writes the store, keeps every call
in memory so that signaling can ask :meth:`CallService.admission`
synchronously at each ``connect``, disconnects the connections of a call that
is ended, and emits the ``call.*`` webhooks.

Channels that are not stored calls work as before (Sora style: a channel
exists while it has connections); only stored calls have settings, members
and an end.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import TypeAdapter, ValidationError

from hibiki.api.models import (
    CallEndedNotify,
    CallRequest,
    CallResponse,
    CallSettings,
    CallSettingsRequest,
    CallStateResponse,
    DeleteCallResponse,
    EndCallResponse,
    GetCallResponse,
    GetOrCreateCallResponse,
    MemberRequest,
    MemberResponse,
    ParticipantResponse,
    QueryCallsRequest,
    QueryCallsResponse,
    UpdateCallMembersRequest,
    UpdateCallMembersResponse,
    UpdateCallRequest,
    UpdateCallResponse,
)
from hibiki.server import close_codes
from hibiki.server.store.base import (
    CallCondition,
    CallQuery,
    CallRecord,
    CallRepository,
    MemberRecord,
    SortKey,
    effective_sort,
)

if TYPE_CHECKING:
    from hibiki.server.hub import Hub

__all__ = ["CallAdmission", "CallNotFoundError", "CallRequestError", "CallService"]

log = logging.getLogger("hibiki.server.calls")

QUERY_MEMBERS_LIMIT: Final = 25
"""Members listed with each call of a query."""

_CUSTOM_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_TEXT_FIELDS: Final = ("type", "id", "cid", "created_by_id")
_TIME_FIELDS: Final = ("created_at", "updated_at")
_EQUALITY_OPS: Final = ("$eq", "$ne", "$in")
_RANGE_OPS: Final = ("$gt", "$gte", "$lt", "$lte")
_MAX_IN: Final = 100
_INT64 = (-(2**63), 2**63 - 1)
_DATETIME = TypeAdapter(datetime)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_VERSION: Final = 1


class CallNotFoundError(LookupError):
    """No stored call has this cid (``404 call_not_found``)."""

    def __init__(self, cid: str) -> None:
        super().__init__(f"no call {cid}")
        self.cid = cid


class CallRequestError(ValueError):
    """A request the service cannot carry out as asked (``400 bad_request``); the message says why."""


@dataclass(frozen=True)
class CallAdmission:
    """What signaling needs to know to admit a connection to a stored call's channel."""

    cid: str
    ended: bool
    """The call was ended: joins are refused (close 4403 ``call ended``)."""
    settings: CallSettings


def _now() -> datetime:
    return datetime.now(UTC)


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _to_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(microseconds=1)


def _check_text(value: str, where: str) -> None:
    # A JSON "\ud800" escape decodes to a lone surrogate, which neither
    # SQLite nor the JSON encoder of the response can take: refuse it here
    # with a 400 rather than fail later with a 500.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CallRequestError(f"{where}: not valid Unicode text (lone surrogate)") from None


def _check_json(value: Any, where: str) -> None:
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except ValueError as exc:  # NaN/Infinity (ValueError) or lone surrogates (UnicodeEncodeError)
        raise CallRequestError(f"{where}: not representable as JSON ({exc})") from None
    except RecursionError:
        raise CallRequestError(f"{where}: nested too deeply") from None


def _merge_settings(current: CallSettings, override: CallSettingsRequest | None) -> CallSettings:
    """``current`` with the fields ``override`` gives explicitly.

    An explicit ``null`` clears the optional limits (``max_participants``,
    ``max_duration_seconds``); ``audio``/``video`` cannot be null, so a null
    there leaves them as they are.
    """
    if override is None:
        return current
    changes: dict[str, Any] = {}
    for name in override.model_fields_set:
        value = getattr(override, name)
        if value is None and name in ("audio", "video"):
            continue
        changes[name] = value
    return CallSettings.model_validate({**current.model_dump(), **changes})


def _member_response(member: MemberRecord) -> MemberResponse:
    return MemberResponse(
        user_id=member.user_id,
        role=member.role,
        custom=member.custom,
        created_at=member.created_at,
        updated_at=member.updated_at,
    )


def _member_records(cid: str, requests: Sequence[MemberRequest], now: datetime) -> list[MemberRecord]:
    # The last entry for a user wins, as if the list were applied in order.
    by_user: dict[str, MemberRecord] = {}
    for i, m in enumerate(requests):
        _check_text(m.user_id, f"members[{i}].user_id")
        _check_json(m.custom, f"members[{i}].custom")
        by_user.pop(m.user_id, None)
        by_user[m.user_id] = MemberRecord(cid, m.user_id, m.role, m.custom, now, now)
    return list(by_user.values())


# -- query parsing ----------------------------------------------------------------------


def _filter_value(field: str, op: str, value: Any) -> Any:
    """``value`` checked and converted for ``field`` (one value, not an $in list)."""
    where = f"filter_conditions.{field}"
    if field in _TEXT_FIELDS:
        if value is None and field == "created_by_id":
            return None
        if not isinstance(value, str):
            raise CallRequestError(f"{where}: {op} needs a string, got {json.dumps(value)[:60]}")
        _check_text(value, where)
        return value
    if field in _TIME_FIELDS:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise CallRequestError(f"{where}: {op} needs an ISO 8601 timestamp")
        try:
            parsed = _DATETIME.validate_python(value)
        except ValidationError:
            raise CallRequestError(f"{where}: {op} needs an ISO 8601 timestamp, got {str(value)[:60]!r}") from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    if field == "ended":
        if not isinstance(value, bool):
            raise CallRequestError(f"{where}: needs true or false")
        return value
    # custom.<key>: JSON scalars only.
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, int) and not isinstance(value, bool):
        if not _INT64[0] <= value <= _INT64[1]:
            raise CallRequestError(f"{where}: integer out of the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise CallRequestError(f"{where}: NaN and Infinity cannot be compared")
    elif value is not None and not isinstance(value, bool):
        raise CallRequestError(f"{where}: custom fields compare with strings, numbers, booleans or null only")
    return value


def _check_field(field: str) -> None:
    if field in _TEXT_FIELDS or field in _TIME_FIELDS or field == "ended":
        return
    if field.startswith("custom."):
        key = field.removeprefix("custom.")
        if _CUSTOM_KEY.match(key):
            return
        raise CallRequestError(
            f"filter_conditions: custom key {key[:70]!r} must be 1 to 64 letters, digits, '_' or '-'"
        )
    known = ", ".join((*_TEXT_FIELDS, *_TIME_FIELDS, "ended", "custom.<key>"))
    raise CallRequestError(f"filter_conditions: unknown field {field[:70]!r} (known: {known})")


def parse_filter(conditions: dict[str, Any]) -> list[CallCondition]:
    """The :class:`CallCondition` list of a ``filter_conditions`` object; CallRequestError if it is invalid."""
    parsed: list[CallCondition] = []
    for field, spec in conditions.items():
        _check_text(field, "filter_conditions")
        _check_field(field)
        where = f"filter_conditions.{field}"
        ops = spec if isinstance(spec, dict) else {"$eq": spec}
        if not ops:
            raise CallRequestError(f"{where}: an empty operator object")
        for op, value in ops.items():
            _check_text(op, where)
            if op not in _EQUALITY_OPS and op not in _RANGE_OPS:
                hint = "" if op.startswith("$") else ' (objects are operators like {"$eq": ...})'
                raise CallRequestError(
                    f"{where}: unknown operator {op[:40]!r}{hint}; known: $eq, $ne, $in, $gt, $gte, $lt, $lte"
                )
            if op in _RANGE_OPS and field not in _TIME_FIELDS:
                raise CallRequestError(f"{where}: {op} works on created_at and updated_at only")
            if field == "ended" and op != "$eq":
                raise CallRequestError(f"{where}: ended supports $eq only")
            if op == "$in":
                if not isinstance(value, list):
                    raise CallRequestError(f"{where}: $in needs a list")
                if len(value) > _MAX_IN:
                    raise CallRequestError(f"{where}: $in takes at most {_MAX_IN} values")
                items = tuple(_filter_value(field, op, v) for v in value)
                parsed.append(CallCondition(field, "$in", items))
            else:
                parsed.append(CallCondition(field, op, _filter_value(field, op, value)))  # type: ignore[arg-type]
    return parsed


@dataclass(frozen=True)
class _Cursor:
    direction: Literal["next", "prev"]
    after: tuple[Any, ...]


def _filter_digest(conditions: dict[str, Any]) -> str:
    # A cursor only makes sense with the filter and sort it was made for.
    text = json.dumps(conditions, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]


def _encode_cursor(direction: str, sort: Sequence[SortKey], digest: str, record: CallRecord) -> str:
    keys = effective_sort(sort)
    values = [record.cid if k.field == "cid" else _to_us(getattr(record, k.field)) for k in keys]
    doc = {"v": _CURSOR_VERSION, "d": direction, "s": [[k.field, k.direction] for k in sort], "f": digest, "k": values}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(token: str, direction: Literal["next", "prev"], sort: Sequence[SortKey], digest: str) -> _Cursor:
    bad = CallRequestError(f"{direction}: not a cursor this server made for this query (filter and sort unchanged)")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise bad from None
    if not isinstance(doc, dict) or doc.get("v") != _CURSOR_VERSION or doc.get("d") != direction:
        raise bad
    if doc.get("s") != [[k.field, k.direction] for k in sort] or doc.get("f") != digest:
        raise CallRequestError(f"{direction}: the cursor was made for another filter or sort")
    keys = effective_sort(sort)
    values = doc.get("k")
    if not isinstance(values, list) or len(values) != len(keys):
        raise bad
    after: list[Any] = []
    for key, value in zip(keys, values, strict=True):
        if key.field == "cid":
            if not isinstance(value, str):
                raise bad
            after.append(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int) or not _INT64[0] <= value <= _INT64[1]:
                raise bad
            try:
                after.append(_from_us(value))
            except OverflowError:
                raise bad from None
    return _Cursor(direction, tuple(after))


# -- the service --------------------------------------------------------------------------


class CallService:
    """Stored calls: persistence, the in-memory admission cache, ending, webhooks.

    Runs on the server's event loop. One server per database file: the
    calls are cached in memory, so a second server writing the same file
    would not be seen. Writes are serialised by one lock so
    that a read-modify-write (an update, an end) never interleaves with
    another; the cache is updated right after each write, before the lock
    is released.
    """

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._store: CallRepository | None = None
        self._calls: dict[str, CallRecord] = {}
        self._admissions: dict[str, CallAdmission] = {}
        self._lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open ``hub.settings.database`` and load every call into memory."""
        from hibiki.server.store.sqlite import open_store

        path = self._hub.settings.database
        try:
            store = await open_store(path)
        except (OSError, sqlite3.Error) as exc:
            # The usual causes (a directory that cannot be created, a file
            # that is not a database, a read-only disk) deserve one clear line.
            raise RuntimeError(f"cannot open the call store {path!r}: {exc}") from exc
        try:
            calls = await store.all_calls()
        except BaseException:
            await store.aclose()
            raise
        self._store = store
        for record in calls:
            self._remember(record)
        log.info("call store %s: %d call(s)", path, len(calls))

    async def aclose(self) -> None:
        """Close the store (idempotent)."""
        store, self._store = self._store, None
        if store is not None:
            await store.aclose()

    @property
    def store(self) -> CallRepository:
        """The repository (RuntimeError before :meth:`start`)."""
        if self._store is None:
            raise RuntimeError("the call service is not started")
        return self._store

    # -- the cache ------------------------------------------------------------------------

    def _remember(self, record: CallRecord) -> None:
        self._calls[record.cid] = record
        self._admissions[record.cid] = CallAdmission(
            cid=record.cid, ended=record.ended_at is not None, settings=CallSettings.model_validate(record.settings)
        )

    def _forget(self, cid: str) -> None:
        self._calls.pop(cid, None)
        self._admissions.pop(cid, None)

    def admission(self, channel_id: str) -> CallAdmission | None:
        """The admission state of the call whose media is ``channel_id``; None if it is not a stored call."""
        return self._admissions.get(channel_id)

    def _participants(self, cid: str) -> list[ParticipantResponse]:
        channel = self._hub.registry.get(cid)
        if channel is None:
            return []
        return [m.participant() for m in channel.members_oldest_first()]

    def _response(self, record: CallRecord) -> CallResponse:
        return CallResponse(
            type=record.type,
            id=record.id,
            cid=record.cid,
            created_by_id=record.created_by_id,
            custom=record.custom,
            settings=CallSettings.model_validate(record.settings),
            created_at=record.created_at,
            updated_at=record.updated_at,
            ended_at=record.ended_at,
            # An ended call's connections are being disconnected and no one
            # may join: it has no participants, whatever is still closing.
            participants=[] if record.ended_at is not None else self._participants(record.cid),
        )

    def call_snapshot(self, cid: str) -> CallResponse | None:
        """The call as ``GET`` would show it (live participants included); None if it is not stored."""
        record = self._calls.get(cid)
        return None if record is None else self._response(record)

    def _record(self, cid: str) -> CallRecord:
        record = self._calls.get(cid)
        if record is None:
            raise CallNotFoundError(cid)
        return record

    def _emit(
        self, event_type: str, cid: str, call: CallResponse | None, members: list[MemberResponse] | None = None
    ) -> None:
        self._hub.webhooks.emit(event_type, call_cid=cid, call=call, members=members)

    async def _members(self, cid: str, limit: int) -> list[MemberResponse]:
        if limit <= 0:
            return []
        return [_member_response(m) for m in await self.store.list_members(cid, limit)]

    # -- business methods ------------------------------------------------------------------

    async def get_or_create(
        self, call_type: str, call_id: str, data: CallRequest | None = None, members_limit: int = 25
    ) -> GetOrCreateCallResponse:
        """The call ``type:id``, created from ``data`` if it does not exist (``created`` says which)."""
        cid = f"{call_type}:{call_id}"
        data = data or CallRequest()
        if data.created_by_id is not None:
            _check_text(data.created_by_id, "data.created_by_id")
        _check_json(data.custom, "data.custom")
        async with self._lock:
            existing = self._calls.get(cid)
            created = False
            if existing is None:
                now = _now()
                settings = _merge_settings(CallSettings(), data.settings_override)
                record = CallRecord(
                    type=call_type,
                    id=call_id,
                    created_by_id=data.created_by_id,
                    custom=data.custom,
                    settings=settings.model_dump(),
                    created_at=now,
                    updated_at=now,
                )
                members = _member_records(cid, data.members, now)
                existing, created = await self.store.create_call(record, members)
                self._remember(existing)
        call = self._response(existing)
        members_out = await self._members(cid, members_limit)
        if created:
            log.info("call %s created by %s", cid, existing.created_by_id)
            initial = await self._members(cid, len(data.members)) if data.members else None
            self._emit("call.created", cid, call, initial)
        return GetOrCreateCallResponse(call=call, members=members_out, created=created)

    async def get(self, call_type: str, call_id: str, members_limit: int = 25) -> GetCallResponse:
        """The call and up to ``members_limit`` members (CallNotFoundError if none)."""
        cid = f"{call_type}:{call_id}"
        record = self._record(cid)
        return GetCallResponse(call=self._response(record), members=await self._members(cid, members_limit))

    async def update(self, call_type: str, call_id: str, request: UpdateCallRequest) -> UpdateCallResponse:
        """Replace the call's custom data and/or settings with those given.

        New settings apply to later joins; connections already in the call
        are not affected (lowering ``max_participants`` disconnects no one).
        """
        cid = f"{call_type}:{call_id}"
        if request.custom is not None:
            _check_json(request.custom, "custom")
        async with self._lock:
            record = self._record(cid)
            settings = _merge_settings(CallSettings.model_validate(record.settings), request.settings_override)
            updated = CallRecord(
                type=record.type,
                id=record.id,
                created_by_id=record.created_by_id,
                custom=record.custom if request.custom is None else request.custom,
                settings=settings.model_dump(),
                created_at=record.created_at,
                updated_at=_now(),
                ended_at=record.ended_at,
            )
            await self.store.update_call(updated)
            self._remember(updated)
        call = self._response(updated)
        self._emit("call.updated", cid, call)
        return UpdateCallResponse(call=call, members=await self._members(cid, QUERY_MEMBERS_LIMIT))

    async def update_members(
        self, call_type: str, call_id: str, request: UpdateCallMembersRequest
    ) -> UpdateCallMembersResponse:
        """Add or update ``update_members``, then remove ``remove_members``.

        Returns the members added or updated, as stored. Webhooks:
        ``call.member_added`` with the added or updated members,
        ``call.member_removed`` with the removed ones (users that were not
        members are ignored).
        """
        cid = f"{call_type}:{call_id}"
        for i, user_id in enumerate(request.remove_members):
            _check_text(user_id, f"remove_members[{i}]")
        async with self._lock:
            self._record(cid)
            records = _member_records(cid, request.update_members, _now())
            upserted = await self.store.upsert_members(cid, records) if records else []
            removed = await self.store.remove_members(cid, request.remove_members) if request.remove_members else []
        call = self.call_snapshot(cid)
        removed_ids = {m.user_id for m in removed}
        # A user both updated and removed by one request ends up removed.
        kept = [_member_response(m) for m in upserted if m.user_id not in removed_ids]
        if kept:
            self._emit("call.member_added", cid, call, kept)
        if removed:
            self._emit("call.member_removed", cid, call, [_member_response(m) for m in removed])
        return UpdateCallMembersResponse(members=kept)

    async def _end_locked(self, record: CallRecord) -> tuple[CallRecord, list[str]]:
        """End a live call (the lock is held): store ended_at, then disconnect its connections."""
        now = _now()
        ended = CallRecord(
            type=record.type,
            id=record.id,
            created_by_id=record.created_by_id,
            custom=record.custom,
            settings=record.settings,
            created_at=record.created_at,
            updated_at=now,
            ended_at=now,
        )
        await self.store.update_call(ended)
        # From here admission() refuses joins; everyone still in the channel
        # (including whoever joined while the write was on disk) is told and
        # disconnected.
        self._remember(ended)
        notify = CallEndedNotify(call_cid=ended.cid, ended_at=now).model_dump(mode="json")
        channel = self._hub.registry.get(ended.cid)
        members = channel.members_oldest_first() if channel is not None else []
        # Everyone hears that the call ended before anyone hears that someone left.
        for member in members:
            member.handle.notify(dict(notify))
        for member in members:
            member.handle.server_disconnect(close_codes.CALL_ENDED)
        connection_ids = [member.connection_id for member in members]
        log.info("call %s ended; disconnecting %d connection(s)", ended.cid, len(connection_ids))
        return ended, connection_ids

    async def end(self, call_type: str, call_id: str) -> EndCallResponse:
        """End the call: later joins are refused and every connection is told (``call.ended``
        notify) and disconnected (1000 ``CALL-ENDED``). Ending an ended call changes nothing."""
        cid = f"{call_type}:{call_id}"
        async with self._lock:
            record = self._record(cid)
            if record.ended_at is not None:
                return EndCallResponse(call=self._response(record), connection_ids=[])
            ended, connection_ids = await self._end_locked(record)
        call = self._response(ended)
        self._emit("call.ended", cid, call)
        return EndCallResponse(call=call, connection_ids=connection_ids)

    async def delete(self, call_type: str, call_id: str) -> DeleteCallResponse:
        """End the call if it is live, then remove it and its members.

        Its channel id is then an ordinary channel again (not a stored call).
        """
        cid = f"{call_type}:{call_id}"
        async with self._lock:
            record = self._record(cid)
            was_live = record.ended_at is None
            if was_live:
                record, _ = await self._end_locked(record)
            call = self._response(record)
            await self.store.delete_call(cid)
            self._forget(cid)
        if was_live:
            self._emit("call.ended", cid, call)
        self._emit("call.deleted", cid, call)
        log.info("call %s deleted", cid)
        return DeleteCallResponse(call=call)

    async def query(self, request: QueryCallsRequest) -> QueryCallsResponse:
        """A page of calls matching ``request.filter_conditions`` (see :class:`QueryCallsRequest`).

        Cursors are opaque (URL-safe base64 of the page's edge call's sort
        values, with the sort and a digest of the filter): keyset
        pagination, so calls created or deleted meanwhile never make a page
        skip or repeat another's calls.
        """
        if request.next is not None and request.prev is not None:
            raise CallRequestError("give next or prev, not both")
        conditions = parse_filter(request.filter_conditions)
        sort = [SortKey(p.field, p.direction) for p in request.sort] or [SortKey("created_at", -1)]
        digest = _filter_digest(request.filter_conditions)
        cursor: _Cursor | None = None
        if request.next is not None:
            cursor = _decode_cursor(request.next, "next", sort, digest)
        elif request.prev is not None:
            cursor = _decode_cursor(request.prev, "prev", sort, digest)
        reverse = cursor is not None and cursor.direction == "prev"
        rows = await self.store.query_calls(
            CallQuery(
                conditions=conditions,
                sort=sort,
                limit=request.limit + 1,  # one more tells whether another page follows
                after=None if cursor is None else cursor.after,
                reverse=reverse,
            )
        )
        more = len(rows) > request.limit
        rows = rows[: request.limit]
        if reverse:
            rows.reverse()
            has_prev, has_next = more, True
        else:
            has_prev, has_next = cursor is not None, more
        members = await self.store.list_members_of([r.cid for r in rows], QUERY_MEMBERS_LIMIT)
        return QueryCallsResponse(
            calls=[
                CallStateResponse(call=self._response(r), members=[_member_response(m) for m in members[r.cid]])
                for r in rows
            ],
            next=_encode_cursor("next", sort, digest, rows[-1]) if rows and has_next else None,
            prev=_encode_cursor("prev", sort, digest, rows[0]) if rows and has_prev else None,
        )
