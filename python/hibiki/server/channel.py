"""The registry of channels and their connections.

A channel exists while it has at least one connection (in any state). Its
``session_id`` is created when it goes from 0 to 1 connection and dropped when
it returns to 0. Connection counts in notifies count only *connected*
connections (ICE and DTLS up), in the order they became connected.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from hibiki.server.ids import new_session_id
from hibiki.server.validation import ABSENT, Role

if TYPE_CHECKING:
    from hibiki.api.models import ParticipantResponse

__all__ = ["Channel", "ChannelRegistry", "ConnectionHandle", "Member"]


class ConnectionHandle(Protocol):
    """What the rest of the server may do to one connection (its signaling session).

    Every method queues and returns at once. Routing is the session's
    business: today everything goes over the WebSocket; with DataChannel
    signaling, notifies, pushes and the server's ``close`` go over their data
    channels.
    """

    def notify(self, message: dict[str, Any]) -> None:
        """Deliver a ``notify`` message (dropped if the connection turned notifies off)."""

    def push(self, data: dict[str, Any]) -> None:
        """Deliver ``{"type": "push", "data": data}``."""

    def server_disconnect(self, reason: str) -> None:
        """Close the connection from the server side, successfully (1000 ``reason``)."""

    def request_simulcast_rid(self, rid: str, sender_connection_id: str | None = None) -> None:
        """Receive simulcast layer ``rid`` from one sender or all; ValueError if impossible."""


def _now_us() -> int:
    return time.time_ns() // 1000


_connected_order = itertools.count()


@dataclass(eq=False)
class Member:
    """One connection of a channel, as the rest of the channel sees it."""

    connection_id: str
    channel_id: str
    client_id: str
    bundle_id: str
    role: Role
    audio: bool
    video: bool
    handle: ConnectionHandle
    notify_metadata: Any = ABSENT
    """The connection's ``signaling_notify_metadata`` (ABSENT if none was given)."""
    authz_metadata: Any = ABSENT
    """``metadata`` from the auth webhook answer or token (ABSENT if none): notify ``authz_metadata``."""
    audio_codec_type: str | None = None
    video_codec_type: str | None = None
    video_bit_rate: int | None = None
    simulcast: bool = False
    """The connection publishes its video as simulcast layers."""
    simulcast_rid: str | None = None
    """The layer it asked to receive at connect (``simulcast_rid``), if any."""
    spotlight: bool = False
    """The connection joined with ``spotlight: true`` (it gets ``spotlight.*`` notifies)."""
    created_time_us: int = field(default_factory=_now_us)
    """Wall-clock creation time in microseconds since the epoch (the HTTP API's ``created_time``)."""
    connected: bool = False
    connected_at: float | None = None
    """``time.monotonic()`` when ICE/DTLS came up."""
    connected_seq: int = -1
    joined_at: float = field(default_factory=time.monotonic)

    @property
    def created_at(self) -> datetime:
        """When the connection was created (UTC; ``created_time_us`` as a datetime)."""
        return datetime.fromtimestamp(self.created_time_us / 1e6, UTC)

    def participant(self) -> ParticipantResponse:
        """This connection as a participant of its call (``/v1`` responses and webhooks)."""
        from hibiki.api.models import ParticipantResponse

        return ParticipantResponse(
            user_id=self.client_id, connection_id=self.connection_id, role=self.role, joined_at=self.created_at
        )

    def minutes(self, now: float | None = None) -> int:
        """Whole minutes since the connection came up (0 if it never did)."""
        if self.connected_at is None:
            return 0
        now = time.monotonic() if now is None else now
        return int((now - self.connected_at) // 60)


@dataclass(eq=False)
class Channel:
    """A channel and its connections."""

    channel_id: str
    session_id: str
    members: dict[str, Member] = field(default_factory=dict)

    def members_oldest_first(self) -> list[Member]:
        """Every member, connected or not, in the order they joined."""
        return list(self.members.values())  # dicts keep insertion (= join) order

    def connected_members(self) -> list[Member]:
        """Connected members, oldest first."""
        return sorted((m for m in self.members.values() if m.connected), key=lambda m: m.connected_seq)

    @staticmethod
    def empty_counts() -> dict[str, int]:
        """The four connection counters of a channel with no connection."""
        return {
            "channel_connections": 0,
            "channel_sendrecv_connections": 0,
            "channel_sendonly_connections": 0,
            "channel_recvonly_connections": 0,
        }

    def counts(self) -> dict[str, int]:
        """The four connection counters of a notify, over connected members."""
        connected = [m for m in self.members.values() if m.connected]
        return {
            "channel_connections": len(connected),
            "channel_sendrecv_connections": sum(m.role == "sendrecv" for m in connected),
            "channel_sendonly_connections": sum(m.role == "sendonly" for m in connected),
            "channel_recvonly_connections": sum(m.role == "recvonly" for m in connected),
        }


class ChannelRegistry:
    """All channels of this server, and which channel each connection is in."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}
        self._by_connection: dict[str, Channel] = {}

    @property
    def channel_count(self) -> int:
        """Number of channels with at least one connection."""
        return len(self._channels)

    @property
    def connection_count(self) -> int:
        """Number of connections (any state) in all channels."""
        return len(self._by_connection)

    def channels(self) -> Iterator[Channel]:
        """Every channel, in no particular order (a snapshot: safe to change the registry meanwhile)."""
        return iter(list(self._channels.values()))

    def get(self, channel_id: str) -> Channel | None:
        """The channel, if it has connections."""
        return self._channels.get(channel_id)

    def channel_of(self, connection_id: str) -> Channel | None:
        """The channel a connection is in."""
        return self._by_connection.get(connection_id)

    def join(self, member: Member) -> Channel:
        """Add ``member`` to its channel, creating the channel (and its session_id) if needed."""
        if member.connection_id in self._by_connection:
            raise ValueError(f"duplicate connection_id: {member.connection_id}")
        channel = self._channels.get(member.channel_id)
        if channel is None:
            channel = Channel(member.channel_id, new_session_id())
            self._channels[member.channel_id] = channel
        channel.members[member.connection_id] = member
        self._by_connection[member.connection_id] = channel
        return channel

    def mark_connected(self, connection_id: str) -> tuple[Channel, Member] | None:
        """Record that a connection's media transport is up. None if it is unknown or already connected."""
        channel = self._by_connection.get(connection_id)
        if channel is None:
            return None
        member = channel.members[connection_id]
        if member.connected:
            return None
        member.connected = True
        member.connected_at = time.monotonic()
        member.connected_seq = next(_connected_order)
        return channel, member

    def leave(self, connection_id: str) -> tuple[Channel, Member] | None:
        """Remove a connection; drop its channel when it was the last. None if unknown."""
        channel = self._by_connection.pop(connection_id, None)
        if channel is None:
            return None
        member = channel.members.pop(connection_id)
        if not channel.members:
            del self._channels[channel.channel_id]
        return channel, member
