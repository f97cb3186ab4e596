"""A connection: signaling WebSocket + one engine connection + tracks, with two faces.

All the work happens in coroutines on the SDK loop (``hibiki-loop``). The two
faces only differ in how they wait for those coroutines:

* callback face (sora-sdk style): ``conn.connect()`` / ``conn.disconnect()``
  block the calling thread; ``on_*`` attributes are called on the
  ``hibiki-callbacks`` thread.
* asyncio face: ``await conn.connect()`` (or ``connect_async()``) from any
  event loop; ``async for event in conn`` yields typed events delivered with
  ``call_soon_threadsafe`` into a queue on the user's loop.

``connect()``/``disconnect()`` return an awaitable when called from a
coroutine (a thread with a running event loop), and block otherwise, so the
same method names serve both faces.

Lifecycle (sora-signaling.md §3.1, §4.1)::

    new ──connect()──▶ connecting ──engine "connected"──▶ connected
                          │ failure/timeout                   │ disconnect() / server close /
                          ▼                                   ▼ media failure
                        closed ◀────────── closing ◀──────────┘

A connection is used once: after it closed, create a new one.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Literal

from . import loop as sdk_loop
from .engine import get_engine
from .errors import HibikiConnectionError, HibikiError
from .events import (
    Connected,
    ConnectionEvent,
    Disconnected,
    Notify,
    Push,
    SignalingDirection,
    SignalingErrorCode,
    SignalingType,
    TrackAdded,
    TrackRemoved,
)
from .sdp import codec_for_mid
from .signaling import (
    SignalingChannel,
    SignalingClosed,
    SignalingOpenError,
    build_connect_message,
    spawn,
)
from .sources import AudioSource, VideoSource, _Attachment
from .tracks import MediaTrack

if TYPE_CHECKING:  # pragma: no cover
    from hibiki._core import Event

    from .engine import EngineHub

__all__ = ["Connection", "Role"]

logger = logging.getLogger("hibiki.client")

Role = Literal["sendrecv", "sendonly", "recvonly"]
_ROLES = ("sendrecv", "sendonly", "recvonly")

DISCONNECT_SUCCEEDED = "Succeeded to close WebSocket (DC signaling is not enabled)"
_EVENT_QUEUE_WARN = 10_000

# Connections not yet closed, so that interpreter exit can disconnect them.
_live: weakref.WeakSet[Connection] = weakref.WeakSet()


class _Done:
    """An already-finished awaitable: what blocking calls return (awaiting it is a no-op)."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


_DONE = _Done()


def _wait(cf: concurrent.futures.Future[Any], what: str) -> Awaitable[None]:
    """Block on ``cf`` in a plain thread; hand back an awaitable inside a coroutine."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return asyncio.wrap_future(cf)
    if sdk_loop.in_loop_thread():  # pragma: no cover - only reachable from SDK internals
        raise RuntimeError(f"{what} would block the SDK loop")
    try:
        cf.result()
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C while blocked: stop the operation rather than leave it running.
        cf.cancel()
        raise
    return _DONE


class _Subscriber:
    """One ``async for event in conn`` consumer: a queue on the consumer's loop."""

    __slots__ = ("claimed", "loop", "queue", "warned")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[ConnectionEvent] = asyncio.Queue()
        self.claimed = False
        self.warned = False


class Connection:
    """One participant's session in a channel.

    Create it with :meth:`hibiki.Hibiki.create_connection` (callback face) or
    :func:`hibiki.connect` (asyncio face); both give this class.

    Callback face (sora-sdk names)::

        conn = hibiki.Hibiki().create_connection(
            signaling_urls=["ws://127.0.0.1:5000/signaling"], role="recvonly", channel_id="room")
        conn.on_track = lambda track: print("track", track.kind, track.stream_id)
        conn.connect()          # blocks until media is up; raises hibiki.ConnectionError
        ...
        conn.disconnect()       # blocks until closed (at most ~3 s)

    asyncio face::

        async with hibiki.connect(urls, role="recvonly", channel_id="room") as conn:
            async for event in conn:
                ...

    Callback attributes (all optional, called on the ``hibiki-callbacks``
    thread; exceptions are logged and never reach the SDK):
    ``on_set_offer(str)``, ``on_notify(str)``, ``on_push(str)``,
    ``on_track(MediaTrack)``, ``on_remove_track(MediaTrack)``,
    ``on_disconnect(SignalingErrorCode, str)``,
    ``on_signaling_message(SignalingType, SignalingDirection, str)``,
    ``on_ws_close(int, str)``.
    """

    def __init__(
        self,
        *,
        signaling_urls: list[str] | str,
        role: str,
        channel_id: str,
        client_id: str | None = None,
        bundle_id: str | None = None,
        metadata: Any = None,
        signaling_notify_metadata: Any = None,
        audio_source: AudioSource | None = None,
        video_source: VideoSource | None = None,
        audio: bool | None = None,
        video: bool | None = None,
        audio_codec_type: str | None = None,
        video_codec_type: str | None = None,
        audio_bit_rate: int | None = None,
        video_bit_rate: int | None = None,
        audio_opus_params: dict[str, Any] | None = None,
        video_vp9_params: dict[str, Any] | None = None,
        video_av1_params: dict[str, Any] | None = None,
        video_h264_params: dict[str, Any] | None = None,
        websocket_connection_timeout: float = 30.0,
        websocket_close_timeout: float = 3.0,
        connect_timeout: float | None = 30.0,
        proxy_url: str | None = None,
        user_agent: str | None = None,
    ) -> None:
        if isinstance(signaling_urls, str):
            signaling_urls = [signaling_urls]
        urls = [u for u in signaling_urls if u]
        if not urls:
            raise ValueError("signaling_urls must contain at least one ws:// or wss:// URL")
        for url in urls:
            if not url.startswith(("ws://", "wss://")):
                raise ValueError(f"signaling URL must start with ws:// or wss://: {url!r}")
        if role not in _ROLES:
            raise ValueError(f"role must be one of {', '.join(_ROLES)}; got {role!r}")
        if not channel_id:
            raise ValueError("channel_id must be a non-empty string")
        if audio_source is not None and not isinstance(audio_source, AudioSource):
            raise TypeError(f"audio_source must be an AudioSource, got {type(audio_source).__name__}")
        if video_source is not None and not isinstance(video_source, VideoSource):
            raise TypeError(f"video_source must be a VideoSource, got {type(video_source).__name__}")
        if role == "recvonly" and (audio_source is not None or video_source is not None):
            logger.warning("role is recvonly: the given audio/video source will not be sent")

        self.signaling_urls = urls
        self.role = role
        self.channel_id = channel_id
        self.audio_source = audio_source
        self.video_source = video_source
        self._audio_bit_rate = audio_bit_rate
        self._video_bit_rate = video_bit_rate
        video_extra: dict[str, Any] = {}
        if video_vp9_params:
            video_extra["vp9_params"] = video_vp9_params
        if video_av1_params:
            video_extra["av1_params"] = video_av1_params
        if video_h264_params:
            video_extra["h264_params"] = video_h264_params
        self._connect_message = build_connect_message(
            role=role,
            channel_id=channel_id,
            client_id=client_id,
            bundle_id=bundle_id,
            metadata=metadata,
            signaling_notify_metadata=signaling_notify_metadata,
            audio=audio,
            video=video,
            audio_codec_type=audio_codec_type,
            video_codec_type=video_codec_type,
            audio_bit_rate=audio_bit_rate,
            video_bit_rate=video_bit_rate,
            audio_extra={"opus_params": audio_opus_params} if audio_opus_params else None,
            video_extra=video_extra or None,
        )
        self._ws_open_timeout = websocket_connection_timeout
        self._ws_close_timeout = websocket_close_timeout
        self._connect_timeout = connect_timeout
        self._proxy = proxy_url
        self._user_agent = user_agent

        # Callback face (sora-sdk names). Plain attributes: set them before connect().
        self.on_set_offer: Callable[[str], None] | None = None
        self.on_notify: Callable[[str], None] | None = None
        self.on_push: Callable[[str], None] | None = None
        self.on_track: Callable[[MediaTrack], None] | None = None
        self.on_remove_track: Callable[[MediaTrack], None] | None = None
        self.on_disconnect: Callable[[SignalingErrorCode, str], None] | None = None
        self.on_signaling_message: Callable[[SignalingType, SignalingDirection, str], None] | None = None
        self.on_ws_close: Callable[[int, str], None] | None = None

        self._state: Literal["new", "connecting", "connected", "closing", "closed"] = "new"
        self._lock = threading.Lock()
        self._connect_future: concurrent.futures.Future[None] | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._disconnect_requested = False
        self._closed_future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._sig: SignalingChannel | None = None
        self._reader: asyncio.Task[None] | None = None
        self._hub: EngineHub | None = None
        self._handle: str | None = None
        self._connected_waiter: asyncio.Future[None] | None = None
        self._connection_id: str | None = None
        self._offer: dict[str, Any] | None = None
        self._offer_sdp = ""
        self._mids: dict[str, str] = {}
        self._tracks: dict[str, MediaTrack] = {}
        self._subscribers: list[_Subscriber] = []
        self._primary: _Subscriber | None = None
        self._phase = "starting"

        self.signaling_url: str | None = None
        """The URL whose WebSocket won the race (after connect)."""
        self.self_notified = False
        """True once the server's ``connection.created`` notify about us arrived."""
        self.send_bitrate: int | None = None
        """Latest send-side bandwidth estimate from the engine (bps), if any."""
        self.disconnect_code: SignalingErrorCode | None = None
        self.disconnect_reason: str | None = None
        self.ws_close_code: int | None = None
        self.ws_close_reason: str | None = None

    # -- properties ---------------------------------------------------------------------

    @property
    def connection_id(self) -> str | None:
        """Our connection_id, from the server's offer (None before it)."""
        return self._connection_id

    @property
    def client_id(self) -> str | None:
        return self._offer.get("client_id") if self._offer else None

    @property
    def session_id(self) -> str | None:
        return self._offer.get("session_id") if self._offer else None

    @property
    def connected(self) -> bool:
        """True between the media connection coming up and the start of closing."""
        return self._state == "connected"

    @property
    def state(self) -> str:
        """``new``, ``connecting``, ``connected``, ``closing`` or ``closed``."""
        return self._state

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    @property
    def tracks(self) -> list[MediaTrack]:
        """The remote tracks currently received."""
        return list(self._tracks.values())

    @property
    def offer(self) -> dict[str, Any] | None:
        """The server's ``offer`` message, once received."""
        return self._offer

    def __repr__(self) -> str:
        return (f"Connection({self.channel_id!r}, {self.role}, id={self._connection_id}, "
                f"{self._state}, tracks={len(self._tracks)})")

    # -- logging -------------------------------------------------------------------------

    @property
    def _tag(self) -> str:
        return self._connection_id or f"{self.channel_id}/{self.role}"

    def _log(self, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        logger.log(level, "[%s] " + msg, self._tag, *args, exc_info=exc_info)

    # -- connect ---------------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> Awaitable[None]:
        """Connect: signaling, offer/answer, then wait until media is up.

        Blocks in a plain thread; in a coroutine, returns an awaitable
        (``await conn.connect()``). ``timeout`` (seconds, default the
        ``connect_timeout`` given at creation, 30 s) bounds the whole setup.

        Raises :class:`hibiki.ConnectionError` (also a builtin
        ``ConnectionError``) with the reason; ``on_disconnect`` is called
        with the same code and message.
        """
        return _wait(self._start_connect(timeout), "connect()")

    async def connect_async(self, timeout: float | None = None) -> None:
        """``await``-only form of :meth:`connect`, usable from any event loop."""
        await asyncio.wrap_future(self._start_connect(timeout))

    def _start_connect(self, timeout: float | None) -> concurrent.futures.Future[None]:
        with self._lock:
            future = self._connect_future
            if future is not None and (not future.done() or self._state == "connected"):
                return future  # connecting or connected: the same outcome for every caller
            if self._state != "new":
                raise HibikiError(
                    "this connection was closed; a connection cannot be reused, create a new one"
                )
            self._state = "connecting"
            effective = self._connect_timeout if timeout is None else timeout
            self._connect_future = sdk_loop.run_coroutine(self._connect_coro(effective))
            _live.add(self)
            return self._connect_future

    async def _connect_coro(self, timeout: float | None) -> None:
        self._connect_task = asyncio.current_task()
        self._connected_waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._establish()
        except HibikiConnectionError as exc:
            await self._close(exc.code, exc.reason, polite=self._handle is not None)
            raise self._failure() from None
        except TimeoutError:
            reason = f"connect timed out after {timeout:g} s while {self._phase}"
            if self._sig is None:
                code = SignalingErrorCode.WEBSOCKET_HANDSHAKE_FAILED
            elif self._handle is None:
                code = SignalingErrorCode.WEBSOCKET_ONERROR  # the server never offered
            else:
                code = SignalingErrorCode.PEER_CONNECTION_STATE_FAILED  # ICE/DTLS never came up
            await self._close(code, reason, polite=self._handle is not None)
            raise self._failure() from None
        except asyncio.CancelledError:
            if self._disconnect_requested:
                await self._close(SignalingErrorCode.CLOSE_SUCCEEDED,
                                  "disconnect() was called while connecting", polite=self._handle is not None)
                raise self._failure() from None
            await self._close(SignalingErrorCode.CLOSE_FAILED, "connect() was cancelled",
                              polite=self._handle is not None)
            raise
        except HibikiError as exc:
            await self._close(SignalingErrorCode.INTERNAL_ERROR, str(exc), polite=False)
            raise self._failure() from None
        except Exception as exc:
            self._log(logging.ERROR, "unexpected error while %s", self._phase, exc_info=True)
            await self._close(SignalingErrorCode.INTERNAL_ERROR,
                              f"unexpected error while {self._phase}: {exc!r}", polite=self._handle is not None)
            raise self._failure() from exc
        finally:
            self._connect_task = None

    def _failure(self) -> HibikiConnectionError:
        return HibikiConnectionError(
            SignalingErrorCode.INTERNAL_ERROR if self.disconnect_code is None else self.disconnect_code,
            self.disconnect_reason or "connection failed",
            self.ws_close_code,
        )

    async def _establish(self) -> None:
        if self._disconnect_requested:  # disconnect() ran before this coroutine started
            raise asyncio.CancelledError
        self._phase = "opening the signaling WebSocket"
        try:
            self._sig = await SignalingChannel.open(
                self.signaling_urls, self._ws_open_timeout, proxy=self._proxy, user_agent=self._user_agent
            )
        except SignalingOpenError as exc:
            raise HibikiConnectionError(SignalingErrorCode.WEBSOCKET_HANDSHAKE_FAILED, str(exc)) from None
        self.signaling_url = self._sig.url
        self._log(logging.DEBUG, "signaling open at %s", self._sig.url)

        self._phase = "waiting for the offer"
        await self._send(self._connect_message)
        offer_text, offer = await self._wait_offer()

        self._phase = "applying the offer"
        sdp = offer.get("sdp")
        connection_id = offer.get("connection_id")
        if not isinstance(sdp, str) or not isinstance(connection_id, str):
            raise HibikiConnectionError(
                SignalingErrorCode.INVALID_PARAMETER, "the server's offer lacks a string sdp or connection_id"
            )
        self._offer, self._offer_sdp, self._connection_id = offer, sdp, connection_id
        mids = offer.get("mid")
        self._mids = {k: v for k, v in mids.items() if isinstance(v, str)} if isinstance(mids, dict) else {}
        self._hub = get_engine()
        try:
            handle, answer = self._hub.engine.connect(sdp)
        except Exception as exc:
            raise HibikiConnectionError(
                SignalingErrorCode.ICE_FAILED, f"the engine could not apply the offer: {exc}"
            ) from None
        self._handle = handle
        self._hub.register(handle, self._on_engine_event)
        self._log(logging.INFO, "offer applied (channel %s, %s, mids %s)", self.channel_id, self.role, self._mids)
        sdk_loop.dispatch_callback(self.on_set_offer, offer_text, what="on_set_offer")
        await self._send({"type": "answer", "sdp": answer})
        self._reader = spawn(self._read_loop())

        self._phase = "waiting for the media connection (ICE/DTLS)"
        assert self._connected_waiter is not None
        await self._connected_waiter

    async def _wait_offer(self) -> tuple[str, dict[str, Any]]:
        """Read until the offer; follow a ``redirect`` (§3.4); drop everything else (§1)."""
        assert self._sig is not None
        redirected = False
        while True:
            try:
                text, msg = await self._sig.recv()
            except SignalingClosed as closed:
                self._note_ws_close(closed)
                if closed.clean:
                    code = (SignalingErrorCode.CLOSE_SUCCEEDED if closed.code == 1000
                            else SignalingErrorCode.WEBSOCKET_ONCLOSE)
                    raise HibikiConnectionError(
                        code,
                        f"the server closed the signaling WebSocket before sending an offer: "
                        f"{closed.code} {closed.reason}".rstrip(),
                        closed.code,
                    ) from None
                raise HibikiConnectionError(
                    SignalingErrorCode.WEBSOCKET_ONERROR,
                    "the signaling WebSocket broke before the offer arrived",
                ) from None
            kind = msg["type"]
            if kind == "offer":
                self._report(SignalingDirection.RECEIVED, text)
                return text, msg
            if kind == "redirect" and not redirected:
                self._report(SignalingDirection.RECEIVED, text)
                location = msg.get("location")
                if not isinstance(location, str):
                    raise HibikiConnectionError(SignalingErrorCode.INVALID_PARAMETER,
                                                "redirect without a location")
                self._log(logging.INFO, "redirected to %s", location)
                await self._sig.close()
                try:
                    self._sig = await SignalingChannel.open(
                        [location], self._ws_open_timeout, proxy=self._proxy, user_agent=self._user_agent
                    )
                except SignalingOpenError as exc:
                    raise HibikiConnectionError(SignalingErrorCode.WEBSOCKET_HANDSHAKE_FAILED, str(exc)) from None
                self.signaling_url = location
                redirected = True
                await self._send({**self._connect_message, "redirect": True})
                continue
            self._log(logging.DEBUG, "ignoring %r before the offer", kind)

    # -- signaling I/O ---------------------------------------------------------------------

    def _report(self, direction: SignalingDirection, text: str) -> None:
        sdk_loop.dispatch_callback(
            self.on_signaling_message, SignalingType.WEBSOCKET, direction, text, what="on_signaling_message"
        )

    async def _send(self, message: dict[str, Any], report: bool = True) -> None:
        assert self._sig is not None
        text = await self._sig.send(message)
        if report:
            self._report(SignalingDirection.SENT, text)

    async def _read_loop(self) -> None:
        assert self._sig is not None
        try:
            while True:
                text, msg = await self._sig.recv()
                await self._on_message(text, msg)
        except SignalingClosed as closed:
            if self._state in ("closing", "closed"):
                return  # our own disconnect is waiting for this close
            self._note_ws_close(closed)
            if not closed.clean:
                code, reason = (SignalingErrorCode.WEBSOCKET_ONERROR,
                                "the signaling WebSocket broke without a close frame")
            elif closed.code == 1000:
                code, reason = SignalingErrorCode.CLOSE_SUCCEEDED, f"the server closed the connection: {closed.reason}"
            else:
                code, reason = (SignalingErrorCode.WEBSOCKET_ONCLOSE,
                                f"the server closed the signaling WebSocket: {closed.code} {closed.reason}".rstrip())
            self._log(logging.INFO, "%s", reason)
            await self._close(code, reason, polite=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log(logging.ERROR, "signaling reader failed", exc_info=True)
            await self._close(SignalingErrorCode.INTERNAL_ERROR, f"signaling failed: {exc!r}", polite=False)

    async def _on_message(self, text: str, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "ping":
            pong: dict[str, Any] = {"type": "pong"}
            if msg.get("stats") is True:
                pong["stats"] = []  # no RTCStats report yet
            await self._send(pong, report=False)
        elif kind == "re-offer":
            self._report(SignalingDirection.RECEIVED, text)
            await self._on_reoffer(msg)
        elif kind == "notify":
            if msg.get("event_type") == "connection.created" and msg.get("connection_id") == self._connection_id:
                self.self_notified = True
            sdk_loop.dispatch_callback(self.on_notify, text, what="on_notify")
            self._emit(Notify(msg))
        elif kind == "push":
            sdk_loop.dispatch_callback(self.on_push, text, what="on_push")
            self._emit(Push(msg.get("data"), msg))
        elif kind in ("redirect", "offer"):
            self._report(SignalingDirection.RECEIVED, text)
            self._log(logging.WARNING, "ignoring an unexpected %r after the offer", kind)
        else:
            self._log(logging.DEBUG, "ignoring signaling message %r", kind)

    async def _on_reoffer(self, msg: dict[str, Any]) -> None:
        sdp = msg.get("sdp")
        if not isinstance(sdp, str) or self._hub is None or self._handle is None:
            self._log(logging.WARNING, "ignoring a re-offer without sdp")
            return
        try:
            answer = self._hub.engine.accept_offer(self._handle, sdp)
        except Exception as exc:
            self._log(logging.ERROR, "the engine could not apply a re-offer: %s", exc)
            spawn(self._close(SignalingErrorCode.ICE_FAILED, f"the engine could not apply a re-offer: {exc}",
                              polite=True))
            return
        self._offer_sdp = sdp
        await self._send({"type": "re-answer", "sdp": answer})

    # -- engine events (SDK loop) -----------------------------------------------------------

    def _on_engine_event(self, event: Event) -> None:
        kind = event.kind
        if kind == "frame":
            track = self._tracks.get(event.mid or "")
            if track is not None:
                track._push(event)
        elif kind == "track_added":
            self._on_track_added(event)
        elif kind == "track_removed":
            self._on_track_removed(event.mid or "")
        elif kind == "keyframe_request":
            if self.video_source is not None and event.mid == self._mids.get("video"):
                self.video_source.request_keyframe()
        elif kind == "connected":
            self._on_connected()
        elif kind == "bitrate":
            self.send_bitrate = event.bitrate
        elif kind == "closed":
            if self._state in ("connecting", "connected"):
                reason = f"the media connection closed: {event.reason or 'unknown reason'}"
                self._log(logging.WARNING, "%s", reason)
                spawn(self._close(SignalingErrorCode.PEER_CONNECTION_STATE_FAILED, reason, polite=True))

    def _on_connected(self) -> None:
        if self._state != "connecting":
            return
        self._state = "connected"
        self._attach_sources()
        self._log(logging.INFO, "connected")
        if self._connected_waiter is not None and not self._connected_waiter.done():
            self._connected_waiter.set_result(None)
        self._emit(Connected(self._connection_id or ""))

    def _attach_sources(self) -> None:
        assert self._hub is not None and self._handle is not None
        pairs: list[tuple[AudioSource | VideoSource | None, str, str, int | None]] = [
            (self.audio_source, "audio", "OPUS", self._audio_bit_rate),
            (self.video_source, "video", "VP8", self._video_bit_rate),
        ]
        for source, kind, default_codec, kbps in pairs:
            mid = self._mids.get(kind)
            if source is None or mid is None or self.role == "recvonly":
                continue
            codec = codec_for_mid(self._offer_sdp, mid) or default_codec
            source._attach(_Attachment(
                engine=self._hub.engine, handle=self._handle, mid=mid, codec=codec,
                label=self._tag, bitrate=kbps * 1000 if kbps else None,
            ))

    def _on_track_added(self, event: Event) -> None:
        mid = event.mid or ""
        media = event.media
        if media not in ("audio", "video"):
            self._log(logging.DEBUG, "ignoring a track of media %r", media)
            return
        old = self._tracks.pop(mid, None)
        if old is not None:  # a recycled mid without a removal first
            self._finish_track(old)
        track = MediaTrack(
            kind=media,
            mid=mid,
            stream_id=event.stream_id or "",
            track_id=event.track_id or "",
            connection_id=self._tag,
            request_keyframe=self._request_keyframe,
        )
        self._tracks[mid] = track
        self._log(logging.INFO, "track added: %s mid %s from %s", media, mid, track.stream_id)
        sdk_loop.dispatch_callback(self.on_track, track, what="on_track")
        self._emit(TrackAdded(track))

    def _on_track_removed(self, mid: str) -> None:
        track = self._tracks.pop(mid, None)
        if track is None:
            return
        self._log(logging.INFO, "track removed: %s mid %s from %s", track.kind, mid, track.stream_id)
        self._finish_track(track)

    def _finish_track(self, track: MediaTrack) -> None:
        track._end()
        sdk_loop.dispatch_callback(self.on_remove_track, track, what="on_remove_track")
        self._emit(TrackRemoved(track))

    def _request_keyframe(self, mid: str) -> None:
        """Ask the sender of our remote track ``mid`` for a keyframe (any thread)."""
        hub, handle = self._hub, self._handle
        if hub is None or handle is None or self._state != "connected":
            return

        def send() -> None:
            if self._state == "connected":
                try:
                    hub.engine.request_keyframe(handle, mid)
                except Exception as exc:
                    self._log(logging.DEBUG, "request_keyframe failed: %s", exc)

        sdk_loop.call_soon(send)

    # -- disconnect -----------------------------------------------------------------------------

    def disconnect(self) -> Awaitable[None]:
        """Leave the channel and release everything. Idempotent.

        Sends ``disconnect``, waits (at most ``websocket_close_timeout``, 3 s)
        for the server to close the WebSocket, then closes the media
        connection. Blocks in a plain thread; in a coroutine returns an
        awaitable (``await conn.disconnect()``). ``on_disconnect`` is called
        with ``CLOSE_SUCCEEDED`` on a clean close.
        """
        return _wait(self._start_disconnect(), "disconnect()")

    async def disconnect_async(self) -> None:
        """``await``-only form of :meth:`disconnect`."""
        await asyncio.wrap_future(self._start_disconnect())

    def _start_disconnect(self) -> concurrent.futures.Future[None]:
        with self._lock:
            if self._state == "new":
                # Never connected: nothing to tell anyone.
                self._state = "closed"
                if not self._closed_future.done():
                    self._closed_future.set_result(None)
                return self._closed_future
        return sdk_loop.run_coroutine(self._disconnect_coro())

    async def _disconnect_coro(self) -> None:
        if self._state == "connecting":
            self._disconnect_requested = True
            task = self._connect_task
            if task is not None and not task.done():
                task.cancel()
        elif self._state == "connected":
            await self._close(SignalingErrorCode.CLOSE_SUCCEEDED, DISCONNECT_SUCCEEDED, polite=True)
        await asyncio.wrap_future(self._closed_future)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the connection is closed (by anyone). Returns False on timeout."""
        try:
            self._closed_future.result(timeout)
        except concurrent.futures.TimeoutError:
            return False
        return True

    async def _close(self, code: SignalingErrorCode, reason: str, *, polite: bool) -> None:
        """Tear everything down once, whoever asks first; later callers wait for the end."""
        if self._state in ("closing", "closed"):
            await asyncio.wrap_future(self._closed_future)
            return
        self._state = "closing"
        sig = self._sig
        if sig is not None:
            if polite:
                code, reason = await self._say_goodbye(sig, code, reason)
            if self.ws_close_code == 4999:
                sig.abort()  # the server ignored us; do not wait another close timeout
            else:
                # After a failure the server may be unresponsive: do not let
                # closing add seconds to the error the user is waiting for.
                await sig.close(timeout=self._ws_close_timeout if polite else 1.0)
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        if self._hub is not None and self._handle is not None:
            try:
                self._hub.engine.close_connection(self._handle)
            except Exception as exc:
                self._log(logging.DEBUG, "close_connection: %s", exc)
            self._hub.unregister(self._handle)
            for source in (self.audio_source, self.video_source):
                if source is not None:
                    source._detach(self._handle)
        tracks = list(self._tracks.values())
        self._tracks.clear()
        for track in tracks:
            track._end()
        self.disconnect_code, self.disconnect_reason = code, reason
        self._state = "closed"
        self._log(logging.INFO if code == SignalingErrorCode.CLOSE_SUCCEEDED else logging.WARNING,
                  "closed: %s %s", code.name, reason)
        waiter = self._connected_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._failure())
            waiter.exception()  # retrieved here: connect() raises its own copy
        if self.ws_close_code is not None:
            sdk_loop.dispatch_callback(self.on_ws_close, self.ws_close_code, self.ws_close_reason or "",
                                       what="on_ws_close")
        sdk_loop.dispatch_callback(self.on_disconnect, code, reason, what="on_disconnect")
        self._emit(Disconnected(code, reason, self.ws_close_code, self.ws_close_reason))
        _live.discard(self)
        if not self._closed_future.done():
            self._closed_future.set_result(None)

    async def _say_goodbye(self, sig: SignalingChannel, code: SignalingErrorCode,
                           reason: str) -> tuple[SignalingErrorCode, str]:
        """Send ``disconnect`` and wait for the server's close frame (§4.1 path 3)."""
        try:
            await self._send({"type": "disconnect", "reason": "NO-ERROR"})
            async with asyncio.timeout(self._ws_close_timeout):
                await sig.ws.wait_closed()
        except TimeoutError:
            self.ws_close_code, self.ws_close_reason = 4999, "DISCONNECT-WAIT-TIMEOUT-ERROR"
            self._log(logging.WARNING, "the server did not close the WebSocket within %g s", self._ws_close_timeout)
            if code == SignalingErrorCode.CLOSE_SUCCEEDED:
                return (SignalingErrorCode.CLOSE_FAILED,
                        f"Failed to close WebSocket: the server did not close it within "
                        f"{self._ws_close_timeout:g} s (DISCONNECT-WAIT-TIMEOUT-ERROR)")
            return code, reason
        except Exception as exc:  # the socket was already going away
            self._log(logging.DEBUG, "sending disconnect failed: %r", exc)
        closed = sig.closed_info()
        if closed is not None:
            self._note_ws_close(closed)
            if code == SignalingErrorCode.CLOSE_SUCCEEDED and not (closed.clean and closed.code == 1000):
                return (SignalingErrorCode.CLOSE_FAILED,
                        f"Failed to close WebSocket: {closed.code} {closed.reason}".rstrip())
        return code, reason

    def _note_ws_close(self, closed: SignalingClosed) -> None:
        if closed.clean:
            self.ws_close_code, self.ws_close_reason = closed.code, closed.reason

    # -- asyncio face: events ---------------------------------------------------------------------

    def _emit(self, event: ConnectionEvent) -> None:
        """Deliver ``event`` to every ``async for`` consumer (SDK loop)."""
        for sub in list(self._subscribers):
            if sub.queue.qsize() >= _EVENT_QUEUE_WARN and not sub.warned:
                sub.warned = True
                self._log(logging.WARNING, "%d connection events are waiting to be read; "
                          "iterate the connection or stop subscribing", _EVENT_QUEUE_WARN)
            try:
                sub.loop.call_soon_threadsafe(sub.queue.put_nowait, event)
            except RuntimeError:  # that loop is closed: nobody will read
                self._subscribers.remove(sub)

    def _subscribe(self, loop: asyncio.AbstractEventLoop, snapshot: bool) -> _Subscriber:
        """Register a consumer (SDK loop). With ``snapshot``, it first gets the current state."""
        sub = _Subscriber(loop)
        if snapshot:
            initial: list[ConnectionEvent] = []
            if self._state in ("connected", "closing", "closed") and self._connection_id and \
                    self.disconnect_code in (None, SignalingErrorCode.CLOSE_SUCCEEDED):
                initial.append(Connected(self._connection_id))
            initial.extend(TrackAdded(t) for t in self._tracks.values())
            if self._state == "closed" and self.disconnect_code is not None:
                initial.append(Disconnected(self.disconnect_code, self.disconnect_reason or "",
                                            self.ws_close_code, self.ws_close_reason))
            for event in initial:
                loop.call_soon_threadsafe(sub.queue.put_nowait, event)
        self._subscribers.append(sub)
        return sub

    async def _subscribe_from(self, loop: asyncio.AbstractEventLoop, snapshot: bool) -> _Subscriber:
        return self._subscribe(loop, snapshot)

    async def _subscribe_primary(self) -> None:
        """Subscribe the running loop before connecting, so no event is missed (asyncio face)."""
        loop = asyncio.get_running_loop()
        self._primary = await asyncio.wrap_future(sdk_loop.run_coroutine(self._subscribe_from(loop, False)))

    def __aiter__(self) -> AsyncIterator[ConnectionEvent]:
        return self.events()

    async def events(self) -> AsyncGenerator[ConnectionEvent, None]:
        """Yield :mod:`hibiki.events` until (and including) :class:`~hibiki.events.Disconnected`.

        A consumer that starts late first gets the current state
        (``Connected``, a ``TrackAdded`` per live track).
        """
        loop = asyncio.get_running_loop()
        primary = self._primary
        if primary is not None and primary.loop is loop and not primary.claimed:
            primary.claimed = True
            sub = primary
        else:
            sub = await asyncio.wrap_future(sdk_loop.run_coroutine(self._subscribe_from(loop, True)))
        try:
            while True:
                event = await sub.queue.get()
                yield event
                if isinstance(event, Disconnected):
                    return
        finally:
            sdk_loop.call_soon(self._unsubscribe, sub)

    def _unsubscribe(self, sub: _Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
        if self._primary is sub:
            self._primary = None

    async def wait_for_track(
        self, kind: str | None = None, stream_id: str | None = None, timeout: float | None = None
    ) -> MediaTrack:
        """Await a live remote track matching ``kind``/``stream_id`` (present or future).

        >>> video = await conn.wait_for_track("video", timeout=5)
        """
        loop = asyncio.get_running_loop()
        sub = await asyncio.wrap_future(sdk_loop.run_coroutine(self._subscribe_from(loop, True)))
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await sub.queue.get()
                    if isinstance(event, TrackAdded):
                        t = event.track
                        if (kind is None or t.kind == kind) and (stream_id is None or t.stream_id == stream_id) \
                                and not t.ended:
                            return t
                    elif isinstance(event, Disconnected):
                        raise HibikiConnectionError(event.code, f"connection closed: {event.reason}")
        finally:
            sdk_loop.call_soon(self._unsubscribe, sub)

    # -- context managers ---------------------------------------------------------------------

    def __enter__(self) -> Connection:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    async def __aenter__(self) -> Connection:
        if self._primary is None and self._state == "new":
            await self._subscribe_primary()
        await self.connect_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect_async()


def _disconnect_all_at_exit() -> None:
    """Say goodbye to the server for connections still open when the interpreter exits."""
    live = [c for c in list(_live) if c.state in ("connecting", "connected")]
    if not live:
        return
    futures = [c._start_disconnect() for c in live]
    concurrent.futures.wait(futures, timeout=4.0)


atexit.register(_disconnect_all_at_exit)
