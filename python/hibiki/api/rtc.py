"""Joining a call's media from asyncio, Stream-style: ``client.video.rtc_call(type, id).join(user_id)``.

A call's media is the Sora channel ``"<type>:<id>"``; :meth:`RtcCall.join`
gets or creates the call over REST, makes a user token for it when the client
has the API secret, connects a :class:`hibiki.Connection` (the same object
the callback face uses, not a second stack) and turns what happens on it into
:class:`CallEvent` s, each carrying exactly one thing::

    import asyncio
    import hibiki
    from hibiki.api import AsyncClient

    async def main() -> None:
        client = AsyncClient(api_key="key", api_secret="secret", base_url="http://127.0.0.1:5000")
        sdk = hibiki.Hibiki()
        mic = sdk.create_audio_source(channels=1, sample_rate=48000)
        camera = sdk.create_video_source()
        async with client.video.rtc_call("default", "standup").join("alice", timeout=10.0) as connection:
            await connection.add_tracks(audio=mic, video=camera)   # then mic.on_data(pcm), camera.on_captured(bgr)
            async for event in connection:
                if event.participant_joined:
                    print("joined:", event.participant_joined.user_id)
                elif event.rtc_packet and event.rtc_packet.video:
                    bgr = event.rtc_packet.video.data()             # uint8 [h, w, 3]
                elif event.data_message:
                    print(event.data_message.participant, "says", event.data_message.data)
                    await connection.send_data(b"got it")          # to everyone else in the call
                elif event.call_ended:
                    print("the call was ended at", event.call_ended.ended_at)
            # the loop ends after the `disconnected` event (ours, the server's, or the call's end)

    asyncio.run(main())

Events, in the order they happen (``event.type`` names the field that is set):

* ``participant_joined`` / ``participant_left``: another connection entered or
  left the call (from the server's ``connection.created`` / ``connection.destroyed``
  notifies). Those already in the call when we join come first, from our own
  ``connection.created`` notify. Never about ourselves.
* ``track_published`` / ``track_unpublished``: a participant's audio or video
  track reached us or went away; ``track`` is the :class:`hibiki.MediaTrack`.
* ``rtc_packet``: one decoded audio or video frame of a track, with its
  participant (only with ``receive_frames=True``, the default).
* ``data_message``: bytes a participant sent on the call's messaging label.
* ``custom_event``: a message pushed by the server (``POST /v1/calls/{type}/{id}/messages``).
* ``call_ended``: the call was ended (REST ``end``); the server then closes the connection.
* ``disconnected``: the connection is closed; always the last event.

Slow consumers: media frames wait in a queue bounded per track
(``frame_queue_size``); when it is full the oldest frame of that track is
dropped and counted (:attr:`CallConnection.frames_dropped`), so a consumer that
falls behind never makes memory grow. Every other event is kept.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from hibiki.client.errors import HibikiError, TrackEnded
from hibiki.client.events import Disconnected, Message, Notify, Push, TrackAdded, TrackRemoved
from hibiki.client.tracks import AudioFrame, MediaTrack, VideoFrame

if TYPE_CHECKING:  # pragma: no cover
    from hibiki.client.connection import Connection
    from hibiki.client.sources import AudioSource, VideoSource

__all__ = [
    "CallConnection",
    "CallEnded",
    "CallEvent",
    "CallEventType",
    "CustomEvent",
    "DataMessage",
    "Disconnected",
    "JoinContext",
    "Participant",
    "RtcCall",
    "RtcPacket",
    "TrackEvent",
]

logger = logging.getLogger("hibiki.api")

CallEventType = Literal[
    "participant_joined",
    "participant_left",
    "track_published",
    "track_unpublished",
    "rtc_packet",
    "data_message",
    "call_ended",
    "custom_event",
    "disconnected",
]

DEFAULT_FRAME_QUEUE_SIZE = 50
"""Decoded frames kept per track for a slow reader (1 s of 20 ms audio, ~1.7 s of 30 fps video)."""
# How long the end of a track (or of the connection) waits for its frame pump
# to hand over the frames already decoded, so that they come before the
# track_unpublished / disconnected event rather than after it.
_PUMP_DRAIN_S = 1.0


# -- event payloads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Participant:
    """Another connection in the call.

    ``user_id`` is its ``client_id`` (the ``user_id`` of the token it joined
    with); ``role`` is its connection role (``sendrecv``, ``sendonly``,
    ``recvonly``), None when the server did not say (participants already in
    the call at join are listed without roles by Sora's ``connection.created``).
    """

    user_id: str
    connection_id: str
    role: str | None = None


@dataclass(frozen=True)
class TrackEvent:
    """A participant's track reached us (``track_published``) or went away (``track_unpublished``)."""

    participant: Participant
    track: MediaTrack
    kind: Literal["audio", "video"]


@dataclass(frozen=True)
class RtcPacket:
    """One decoded frame of a participant's track: ``audio`` or ``video`` is set, as ``kind`` says."""

    participant: Participant
    track: MediaTrack
    kind: Literal["audio", "video"]
    audio: AudioFrame | None = None
    """``frame.data()`` is int16 PCM ``[samples, channels]`` at ``frame.sample_rate`` Hz."""
    video: VideoFrame | None = None
    """``frame.data()`` is a BGR uint8 ``[height, width, 3]`` picture (converted on first use)."""


@dataclass(frozen=True)
class DataMessage:
    """Bytes received on a messaging label; ``participant`` is the sender when it is known."""

    participant: Participant | None
    data: bytes
    label: str


@dataclass(frozen=True)
class CallEnded:
    """The call was ended (``POST /v1/calls/{type}/{id}/end``); the server closes the connection next."""

    call_cid: str
    ended_at: datetime | None


@dataclass(frozen=True)
class CustomEvent:
    """A message the server pushed to the call or to this connection (Sora ``push``)."""

    data: Any


@dataclass(frozen=True)
class CallEvent:
    """Something that happened in the call: exactly one field is set, the others are None.

    >>> if event.participant_joined:
    ...     print(event.participant_joined.user_id)
    >>> event.type
    'participant_joined'
    """

    participant_joined: Participant | None = None
    participant_left: Participant | None = None
    track_published: TrackEvent | None = None
    track_unpublished: TrackEvent | None = None
    rtc_packet: RtcPacket | None = None
    data_message: DataMessage | None = None
    call_ended: CallEnded | None = None
    custom_event: CustomEvent | None = None
    disconnected: Disconnected | None = None
    """:class:`hibiki.events.Disconnected`: ``code``, ``reason``, ``ws_close_code``, ``ws_close_reason``."""

    def __post_init__(self) -> None:
        given = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        if len(given) != 1:
            raise ValueError(f"a CallEvent carries exactly one field, got {given or 'none'}")

    @property
    def type(self) -> CallEventType:
        """The name of the field that is set (``"participant_joined"``, ``"rtc_packet"``...)."""
        for f in fields(self):
            if getattr(self, f.name) is not None:
                return f.name  # type: ignore[return-value]
        raise AssertionError("unreachable: __post_init__ checked one field is set")  # pragma: no cover

    def __repr__(self) -> str:
        return f"CallEvent({self.type}={getattr(self, self.type)!r})"


# -- the event queue ---------------------------------------------------------------------------


class _EventQueue:
    """Events in arrival order; media frames bounded per track (drop oldest), the rest never dropped.

    Every item gets a sequence number; control events wait in one deque and
    each track's frames in a deque of its own with a maximum length, and
    :meth:`get` returns the item with the smallest number. Everything runs on
    the consumer's event loop, so no lock is needed.
    """

    def __init__(self, frame_queue_size: int) -> None:
        self._seq = itertools.count()
        self._control: deque[tuple[int, CallEvent]] = deque()
        self._media: dict[MediaTrack, deque[tuple[int, CallEvent]]] = {}
        self._size = frame_queue_size
        self._wakeup = asyncio.Event()
        self.dropped: dict[MediaTrack, int] = {}

    def put(self, event: CallEvent) -> None:
        self._control.append((next(self._seq), event))
        self._wakeup.set()

    def put_frame(self, track: MediaTrack, event: CallEvent) -> None:
        queue = self._media.get(track)
        if queue is None:
            queue = self._media[track] = deque(maxlen=self._size)
        if len(queue) == self._size:
            count = self.dropped.get(track, 0) + 1
            self.dropped[track] = count
            if count == 1:
                logger.warning("%s track from %s: frames are not read fast enough; dropping the oldest "
                               "(at most %d wait per track)", track.kind, track.stream_id, self._size)
        queue.append((next(self._seq), event))
        self._wakeup.set()

    def _pop(self) -> CallEvent | None:
        best: deque[tuple[int, CallEvent]] | None = self._control if self._control else None
        for queue in self._media.values():
            if queue and (best is None or queue[0][0] < best[0][0]):
                best = queue
        if best is None:
            return None
        _, event = best.popleft()
        # Forget the queues of tracks that ended once they are drained.
        for track in [t for t, q in self._media.items() if not q and t.ended]:
            del self._media[track]
        return event

    async def get(self) -> CallEvent:
        while True:
            event = self._pop()
            if event is not None:
                return event
            self._wakeup.clear()
            await self._wakeup.wait()


# -- the connection ----------------------------------------------------------------------------


class CallConnection:
    """A user's connection to a call's media: an async iterator of :class:`CallEvent`.

    Made by :meth:`RtcCall.join`. ``async for event in connection`` yields
    events until (and including) the ``disconnected`` event; iterate from one
    task (events are not copied to several readers).

    Attributes:
        connection: the underlying :class:`hibiki.Connection` (callback
            attributes, ``tracks``, ``get_stats()``... all work on it).
        user_id: who we joined as.
        call_cid: the call, ``"<type>:<id>"`` (also the Sora ``channel_id``).
        messaging_label: the data channel label of :meth:`send_data`, or None.
    """

    def __init__(self, connection: Connection, *, user_id: str, call_cid: str, messaging_label: str | None,
                 receive_frames: bool, frame_queue_size: int) -> None:
        self.connection = connection
        self.user_id = user_id
        self.call_cid = call_cid
        self.messaging_label = messaging_label
        self._receive_frames = receive_frames
        self._queue = _EventQueue(frame_queue_size)
        self._participants: dict[str, Participant] = {}
        # Tracks whose sender we do not know yet (the initial offer carries the
        # tracks of those already in the call before our connection.created
        # notify lists them): announced once their participant_joined is out.
        self._pending_tracks: dict[str, list[MediaTrack]] = {}
        self._announced: dict[MediaTrack, Participant] = {}
        self._pumps: dict[MediaTrack, asyncio.Task[None]] = {}
        self._self_notified = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._finished = False
        self._iterating = False
        self._delivered_end = False

    # -- public surface ------------------------------------------------------------------------

    @property
    def connection_id(self) -> str | None:
        """Our connection_id in the call."""
        return self.connection.connection_id

    @property
    def participants(self) -> dict[str, Participant]:
        """The other participants now, connection_id -> :class:`Participant` (a copy)."""
        return dict(self._participants)

    @property
    def frames_dropped(self) -> int:
        """Decoded frames dropped because they were not read in time (all tracks)."""
        return sum(self._queue.dropped.values())

    def frames_dropped_by_track(self, track: MediaTrack) -> int:
        """Decoded frames of ``track`` dropped because they were not read in time."""
        return self._queue.dropped.get(track, 0)

    async def add_tracks(self, audio: AudioSource | None = None, video: VideoSource | None = None) -> None:
        """Publish sources on this connection: frames given to them from now on are sent.

        Takes the sources of the callback face (``Hibiki().create_audio_source(channels,
        sample_rate)``, ``create_video_source()``); feed them with
        ``on_data(pcm)`` / ``on_captured(bgr)`` from any thread. A source may
        also be sent on other connections at the same time (encoded once).
        Needs a role that sends and the kind enabled at join (``audio=True`` /
        ``video=True``); raises ValueError or RuntimeError otherwise (see
        :meth:`hibiki.Connection.attach_sources`).
        """
        # attach_sources blocks for a moment on the SDK loop; keep this loop free meanwhile.
        await asyncio.to_thread(self.connection.attach_sources, audio, video)

    async def send_data(self, data: bytes | str, *, timeout: float | None = 10.0) -> None:
        """Send ``data`` (str is sent as UTF-8) to every other participant on the messaging label.

        Waits until the label's data channel is open (it opens just after the
        join) and while its send buffer is full, at most ``timeout`` seconds.
        Raises :class:`hibiki.HibikiError` without a messaging label or once
        disconnected, TimeoutError after ``timeout``.
        """
        label = self.messaging_label
        if label is None:
            raise HibikiError("this connection has no messaging label (joined with messaging_label=None)")
        payload = data.encode() if isinstance(data, str) else bytes(data)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if label not in self.connection.open_data_channels:
            await self.connection.wait_for_data_channel(label, timeout=timeout)
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        await self.connection.send_message(label, payload, timeout=remaining)

    async def leave(self) -> None:
        """Leave the call: disconnect, and end the event stream with ``disconnected``. Idempotent."""
        await self.connection.disconnect_async()
        dispatcher = self._dispatcher
        if dispatcher is not None and not dispatcher.done():
            # The dispatcher queues `disconnected` once it sees the close; wait
            # for that so that a reader after leave() finds the stream complete.
            try:
                await asyncio.wait_for(asyncio.shield(dispatcher), 5.0)
            except TimeoutError:
                logger.warning("[%s] the event dispatcher did not finish after leave()", self.call_cid)

    def __aiter__(self) -> AsyncIterator[CallEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[CallEvent]:
        if self._iterating:
            raise RuntimeError("this CallConnection is already being iterated; read it from one task")
        if self._delivered_end:
            return  # the stream already ended with `disconnected`: nothing more will come
        self._iterating = True
        try:
            while True:
                event = await self._queue.get()
                if event.disconnected is not None:
                    self._delivered_end = True
                yield event
                if event.disconnected is not None:
                    return
        finally:
            self._iterating = False

    def __repr__(self) -> str:
        return (f"CallConnection({self.call_cid!r}, user_id={self.user_id!r}, id={self.connection_id}, "
                f"{self.connection.state}, participants={len(self._participants)})")

    # -- event dispatch (the consumer's loop) ----------------------------------------------

    def _start(self) -> None:
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name="hibiki-call-events")

    async def _dispatch(self) -> None:
        """Turn the connection's events into CallEvents until it is closed."""
        try:
            # events() claims the subscription hibiki.connect made before
            # connecting, so nothing that happened during the join is missed.
            async for event in self.connection.events():
                if isinstance(event, Notify):
                    self._on_notify(event.message)
                elif isinstance(event, TrackAdded):
                    self._on_track_added(event.track)
                elif isinstance(event, TrackRemoved):
                    await self._on_track_removed(event.track)
                elif isinstance(event, Push):
                    self._queue.put(CallEvent(custom_event=CustomEvent(event.data)))
                elif isinstance(event, Message):
                    self._on_message(event)
                elif isinstance(event, Disconnected):
                    await self._finish(event)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must still end the stream for the reader
            logger.exception("[%s] call event dispatch failed", self.call_cid)
            from hibiki.client.events import SignalingErrorCode

            await self._finish(Disconnected(SignalingErrorCode.INTERNAL_ERROR, f"event dispatch failed: {exc!r}"))
            await self.connection.disconnect_async()

    def _participant_from(self, item: dict[str, Any], role: Any = None) -> Participant | None:
        connection_id = item.get("connection_id")
        if not isinstance(connection_id, str) or not connection_id:
            return None
        user_id = item.get("client_id")
        return Participant(
            user_id=user_id if isinstance(user_id, str) and user_id else connection_id,
            connection_id=connection_id,
            role=role if isinstance(role, str) else None,
        )

    def _on_notify(self, msg: dict[str, Any]) -> None:
        event_type = msg.get("event_type")
        me = self.connection.connection_id
        if event_type == "connection.created":
            if msg.get("connection_id") == me:
                # Our own notify lists everyone connected, oldest first, us last.
                data = msg.get("data")
                for item in data if isinstance(data, list) else ():
                    if isinstance(item, dict) and item.get("connection_id") != me:
                        self._joined(self._participant_from(item, item.get("role")))
                self._self_notified.set()
            else:
                self._joined(self._participant_from(msg, msg.get("role")))
        elif event_type == "connection.destroyed":
            connection_id = msg.get("connection_id")
            participant = self._participants.pop(connection_id, None) if isinstance(connection_id, str) else None
            if participant is not None:
                self._pending_tracks.pop(participant.connection_id, None)
                self._queue.put(CallEvent(participant_left=participant))
        elif event_type == "call.ended":
            from pydantic import ValidationError

            from hibiki.api.models import CallEndedNotify

            try:
                notify = CallEndedNotify.model_validate(msg)
                ended = CallEnded(call_cid=notify.call_cid, ended_at=notify.ended_at)
            except ValidationError:  # a server that says less: the call ended all the same
                ended = CallEnded(call_cid=self.call_cid, ended_at=None)
            self._queue.put(CallEvent(call_ended=ended))

    def _joined(self, participant: Participant | None) -> None:
        if participant is None or participant.connection_id == self.connection.connection_id:
            return
        known = self._participants.get(participant.connection_id)
        if known is not None:
            return  # listed by our own notify and announced again: once is enough
        self._participants[participant.connection_id] = participant
        self._queue.put(CallEvent(participant_joined=participant))
        for track in self._pending_tracks.pop(participant.connection_id, []):
            if not track.ended:
                self._announce(track, participant)

    def _on_track_added(self, track: MediaTrack) -> None:
        participant = self._participants.get(track.stream_id)
        if participant is None:
            self._pending_tracks.setdefault(track.stream_id, []).append(track)
            return
        self._announce(track, participant)

    def _announce(self, track: MediaTrack, participant: Participant) -> None:
        self._announced[track] = participant
        self._queue.put(CallEvent(track_published=TrackEvent(participant, track, track.kind)))
        if self._receive_frames:
            self._pumps[track] = asyncio.get_running_loop().create_task(
                self._pump(track, participant), name=f"hibiki-call-{track.kind}-frames")

    async def _on_track_removed(self, track: MediaTrack) -> None:
        pending = self._pending_tracks.get(track.stream_id)
        if pending is not None and track in pending:
            pending.remove(track)  # never announced: nothing to take back
            return
        participant = self._announced.pop(track, None)
        if participant is None:
            return
        await self._drain_pump(track)
        self._queue.put(CallEvent(track_unpublished=TrackEvent(participant, track, track.kind)))

    async def _drain_pump(self, track: MediaTrack) -> None:
        """Let a (now ended) track's pump hand over its last frames, then forget it."""
        pump = self._pumps.pop(track, None)
        if pump is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(pump), _PUMP_DRAIN_S)
        except TimeoutError:
            pump.cancel()

    def _on_message(self, event: Message) -> None:
        label = event.label
        if not label.startswith("#"):
            return  # rpc
        sender = event.sender_connection_id
        participant = self._participants.get(sender) if sender else None
        self._queue.put(CallEvent(data_message=DataMessage(participant, event.payload, label)))

    async def _pump(self, track: MediaTrack, participant: Participant) -> None:
        """Move a track's decoded frames into the event queue until the track ends."""
        kind = track.kind
        try:
            while True:
                frame = await track.recv()
                packet = (RtcPacket(participant, track, kind, audio=frame) if kind == "audio"
                          else RtcPacket(participant, track, kind, video=frame))
                self._queue.put_frame(track, CallEvent(rtc_packet=packet))
        except TrackEnded:
            return

    async def _finish(self, event: Disconnected) -> None:
        if self._finished:
            return
        self._finished = True
        # Every track ended with the connection: let the pumps hand over what was decoded first.
        for track in list(self._pumps):
            await self._drain_pump(track)
        self._self_notified.set()  # a join still waiting for it must not wait any more
        self._queue.put(CallEvent(disconnected=event))

    async def _close(self) -> None:
        """Leave and stop every task (the join context's exit)."""
        try:
            await self.leave()
        finally:
            for task in [*self._pumps.values(), self._dispatcher]:
                if task is not None and not task.done():
                    task.cancel()
            self._pumps.clear()


# -- joining ------------------------------------------------------------------------------------


def _signaling_url(base_url: str) -> str:
    """``http://host:port/prefix`` -> ``ws://host:port/prefix/signaling`` (https -> wss)."""
    url = base_url.rstrip("/")
    if url.startswith("https://"):
        url = "wss://" + url[len("https://"):]
    elif url.startswith("http://"):
        url = "ws://" + url[len("http://"):]
    elif not url.startswith(("ws://", "wss://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    return url + "/signaling"


async def _call_client(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a REST client method: awaited for an AsyncClient, in a thread for a blocking Client."""
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    result = await asyncio.to_thread(method, *args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


class JoinContext:
    """What :meth:`RtcCall.join` returns: use it with ``async with``, or ``await`` it.

    ``async with call.join("alice") as connection:`` leaves the call on exit;
    ``connection = await call.join("alice")`` leaves that to you
    (``await connection.leave()``).
    """

    def __init__(self, opener: Callable[[], Awaitable[CallConnection]]) -> None:
        self._opener = opener
        self._connection: CallConnection | None = None

    def __await__(self) -> Generator[Any, None, CallConnection]:
        return self._open().__await__()

    async def _open(self) -> CallConnection:
        self._connection = await self._opener()
        return self._connection

    async def __aenter__(self) -> CallConnection:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection._close()


class RtcCall:
    """A call's media, for one client: ``client.video.rtc_call(type, id)``.

    ``client`` is a :class:`hibiki.api.Client` or :class:`hibiki.api.AsyncClient`
    (for the REST get-or-create, the user token and the server's address).
    """

    def __init__(self, client: Any, type: str, id: str) -> None:
        self.client = client
        self._type = type
        self._id = id

    @property
    def type(self) -> str:
        """The call type (``"default"``...)."""
        return self._type

    @property
    def id(self) -> str:
        """The call id."""
        return self._id

    @property
    def cid(self) -> str:
        """``"<type>:<id>"``: the call's id, also its media channel_id."""
        return f"{self._type}:{self._id}"

    def __repr__(self) -> str:
        return f"RtcCall({self.cid!r})"

    def join(
        self,
        user_id: str,
        *,
        timeout: float = 10.0,
        role: str = "sendrecv",
        audio: bool = True,
        video: bool = True,
        create: bool = True,
        messaging_label: str | None = "#call",
        receive_frames: bool = True,
        frame_queue_size: int = DEFAULT_FRAME_QUEUE_SIZE,
        token: str | None = None,
        **connection_kwargs: Any,
    ) -> JoinContext:
        """Join the call's media as ``user_id``; an async context manager yielding a :class:`CallConnection`.

        Steps, all within ``timeout`` seconds:

        1. with ``create`` (default), get or create the call over REST
           (``created_by_id=user_id``);
        2. a user token for this call (``client.create_token(user_id,
           call_cids=[cid])``) when the client has the API secret, unless
           ``token`` gives one (e.g. from ``POST /v1/tokens`` on your backend);
           without either, no token is sent (a server without a secret);
        3. connect to ``<base_url as ws(s)>/signaling`` with ``channel_id=cid``,
           ``client_id=user_id``, ``role``, ``audio``/``video`` (whether the
           connection has audio/video m-lines: to receive, and to send what
           :meth:`CallConnection.add_tracks` gives), and DataChannel signaling
           with the messaging label ``messaging_label`` (None: no messaging);
        4. wait for the server's ``connection.created`` about us, so that
           :attr:`CallConnection.participants` lists who is already there, and
           for the messaging data channel to open, so that messages sent to
           us from then on arrive.

        ``receive_frames`` (default True) decodes every remote track into
        ``rtc_packet`` events; False gives only ``track_published`` and leaves
        reading to you (``await event.track_published.track.recv()``).
        ``frame_queue_size`` bounds the frames waiting per track.
        Other keyword arguments go to :func:`hibiki.connect`
        (``video_codec_type``, ``audio_codec_type``, ``video_bit_rate``,
        ``signaling_urls`` to override the URL...).

        Raises :class:`hibiki.ConnectionError` when the server refuses the join
        (e.g. ``ws_close_code`` 4403 for an ended or full call, 4401 for a bad
        token), :class:`hibiki.api.ApiError` from the REST step, TimeoutError.
        """
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty string")
        if messaging_label is not None and (not messaging_label.startswith("#") or len(messaging_label) < 2):
            raise ValueError(f"messaging_label must start with '#' (Sora's messaging labels), got {messaging_label!r}")
        if frame_queue_size < 1:
            raise ValueError("frame_queue_size must be at least 1")

        async def open_connection() -> CallConnection:
            async with asyncio.timeout(timeout):
                return await self._join(user_id, timeout=timeout, role=role, audio=audio, video=video,
                                        create=create, messaging_label=messaging_label,
                                        receive_frames=receive_frames, frame_queue_size=frame_queue_size,
                                        token=token, connection_kwargs=connection_kwargs)

        return JoinContext(open_connection)

    async def _join(self, user_id: str, *, timeout: float, role: str, audio: bool, video: bool, create: bool,
                    messaging_label: str | None, receive_frames: bool, frame_queue_size: int,
                    token: str | None, connection_kwargs: dict[str, Any]) -> CallConnection:
        from hibiki.client.aio import connect

        client = self.client
        if create:
            from hibiki.api.models import CallRequest

            call = client.video.call(self._type, self._id)
            await _call_client(call.get_or_create, data=CallRequest(created_by_id=user_id))
        if token is None and getattr(client, "api_secret", None):
            made = client.create_token(user_id, call_cids=[self.cid])
            token = await made if inspect.isawaitable(made) else made

        kwargs = dict(connection_kwargs)
        urls = kwargs.pop("signaling_urls", None) or _signaling_url(str(client.base_url))
        metadata = kwargs.pop("metadata", None)
        if token is not None:
            if metadata is None:
                metadata = {}
            if not isinstance(metadata, dict):
                raise TypeError("metadata must be a dict to carry the access token")
            metadata = {**metadata, "access_token": token}
        if messaging_label is not None:
            if kwargs.get("data_channel_signaling") is False:
                # Sora opens messaging channels only with DataChannel signaling.
                raise ValueError("a messaging_label needs data_channel_signaling; "
                                 "join with messaging_label=None to go without")
            channels = list(kwargs.pop("data_channels", None) or [])
            if not any(c.get("label") == messaging_label for c in channels):
                # The sender header lets a data_message name its participant.
                channels.append({"label": messaging_label, "direction": "sendrecv",
                                 "header": [{"type": "sender_connection_id"}]})
            kwargs["data_channels"] = channels
            kwargs.setdefault("data_channel_signaling", True)
        context = connect(urls, role=role, channel_id=self.cid, client_id=user_id, metadata=metadata,
                          audio=audio, video=video, timeout=timeout, **kwargs)
        conn = context.connection
        try:
            await context
        except BaseException:
            # connect() closes a connection it could not set up; make sure of it on cancellation too.
            await asyncio.shield(conn.disconnect_async())
            raise
        call_connection = CallConnection(conn, user_id=user_id, call_cid=self.cid, messaging_label=messaging_label,
                                         receive_frames=receive_frames, frame_queue_size=frame_queue_size)
        call_connection._start()
        try:
            # Our connection.created lists who is there already: wait for it, so
            # that `participants` is complete once join returns.
            await call_connection._self_notified.wait()
            if messaging_label is not None and not conn.closed:
                # And for the messaging channel: once join returns, what others
                # send reaches us and send_data goes out at once.
                await conn.wait_for_data_channel(messaging_label)
        except BaseException:
            await asyncio.shield(call_connection._close())
            raise
        if conn.closed:
            # Closed before the server even listed us (e.g. the call ended right then).
            await call_connection._close()
            from hibiki.client.errors import HibikiConnectionError
            from hibiki.client.events import SignalingErrorCode

            raise HibikiConnectionError(conn.disconnect_code or SignalingErrorCode.INTERNAL_ERROR,
                                        f"the connection closed during the join: {conn.disconnect_reason}",
                                        conn.ws_close_code)
        logger.info("[%s] joined as %s (connection %s, %d other participant(s))", self.cid, user_id,
                    conn.connection_id, len(call_connection._participants))
        return call_connection
