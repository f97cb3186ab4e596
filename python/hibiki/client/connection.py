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

DataChannel signaling (§3.2, §3.3): with ``data_channel_signaling=True`` the
server opens ``signaling``/``notify``/``push``/``stats`` (and ``rpc``, ``#``
labels) once DTLS is up, then sends ``switched`` on the WebSocket. From then on
signaling has three modes, which decide how ``disconnect()`` ends (§4.1):

* WebSocket only (not switched): ``disconnect`` on the WS, success = the
  server's close frame within ``websocket_close_timeout``;
* DataChannel + WebSocket (switched, ``ignore_disconnect_websocket`` false):
  ``disconnect`` on the ``signaling`` DC, success = the server closes the
  WebSocket within ``disconnect_wait_timeout``;
* DataChannel only (switched with ``ignore_disconnect_websocket`` true: the
  SDK closed the WebSocket itself): ``disconnect`` on the DC, success = every
  DC closed within ``disconnect_wait_timeout``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import json
import logging
import threading
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
)
from typing import TYPE_CHECKING, Any, Literal

from hibiki.simulcast import RIDS, SimulcastLayer, layers_from_encodings

from . import loop as sdk_loop
from .datachannel import (
    MESSAGING_PREFIX,
    SYSTEM_LABELS,
    DataChannels,
    normalize_data_channels,
    sender_connection_id,
)
from .engine import get_engine
from .errors import HibikiConnectionError, HibikiError
from .events import (
    Connected,
    ConnectionEvent,
    DataChannelOpen,
    Disconnected,
    Message,
    Notify,
    Push,
    SignalingDirection,
    SignalingErrorCode,
    SignalingType,
    SimulcastSwitched,
    Switched,
    TrackAdded,
    TrackRemoved,
)
from .sdp import codec_for_mid, payload_types_for_mid
from .signaling import (
    SignalingChannel,
    SignalingClosed,
    SignalingOpenError,
    build_connect_message,
    dumps,
    parse_message,
    spawn,
)
from .sources import AudioSource, VideoSource, _Attachment
from .stats import build_report
from .tracks import MediaTrack
from .transform import FrameTransformer, check_transformer

if TYPE_CHECKING:  # pragma: no cover
    from hibiki._core import Event

    from .engine import EngineHub

__all__ = ["Connection", "Role"]

logger = logging.getLogger("hibiki.client")

Role = Literal["sendrecv", "sendonly", "recvonly"]
_ROLES = ("sendrecv", "sendonly", "recvonly")

# on_disconnect texts of a successful disconnect(), one per signaling mode.
# sora-sdk's official tests compare them verbatim (sora-signaling.md §12.2),
# spelling ("Websocket") included.
DISCONNECT_SUCCEEDED = "Succeeded to close WebSocket (DC signaling is not enabled)"
DISCONNECT_SUCCEEDED_DC_AND_WS = "Succeeded to close Websocket (DC signaling is enabled)"
DISCONNECT_SUCCEEDED_DC_ONLY = "Succeeded to close DataChannel"
# The synthetic close codes libsora reports locally (§12.2).
SELF_CLOSED = (1000, "SELF-CLOSED")
DISCONNECT_WAIT_TIMEOUT = (4999, "DISCONNECT-WAIT-TIMEOUT-ERROR")
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
    ``on_ws_close(int, str)``, and for DataChannels ``on_switched(str)``,
    ``on_data_channel(label)``, ``on_message(label, bytes)``, ``on_rpc(bytes)``.

    Messaging (needs ``data_channel_signaling=True``; sora-sdk names)::

        conn = sdk.create_connection(url, "sendrecv", "room", data_channel_signaling=True,
                                     data_channels=[{"label": "#chat", "direction": "sendrecv"}])
        conn.on_data_channel = lambda label: conn.send_data_channel(label, b"hello")
        conn.on_message = lambda label, data: print(label, data)

    asyncio face: ``await conn.wait_for_data_channel("#chat")``,
    ``await conn.send_message("#chat", b"hi")``, and the
    :class:`~hibiki.events.DataChannelOpen`, :class:`~hibiki.events.Message`
    and :class:`~hibiki.events.Switched` events.
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
        video_codec_preference: Any = None,
        degradation_preference: int | None = None,
        websocket_connection_timeout: float = 30.0,
        websocket_close_timeout: float = 3.0,
        connect_timeout: float | None = 30.0,
        proxy_url: str | None = None,
        user_agent: str | None = None,
        data_channel_signaling: bool | None = None,
        ignore_disconnect_websocket: bool | None = None,
        data_channels: list[dict[str, Any]] | None = None,
        disconnect_wait_timeout: float = 5.0,
        audio_frame_transformer: FrameTransformer | None = None,
        video_frame_transformer: FrameTransformer | None = None,
        simulcast: bool | None = None,
        simulcast_rid: str | None = None,
        simulcast_request_rid: str | None = None,
        spotlight: bool | None = None,
        spotlight_number: int | None = None,
        spotlight_focus_rid: str | None = None,
        spotlight_unfocus_rid: str | None = None,
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
        if simulcast_rid is not None and simulcast_rid not in RIDS:
            raise ValueError(f"simulcast_rid must be one of {', '.join(RIDS)}; got {simulcast_rid!r}")
        if simulcast_request_rid is not None and simulcast_request_rid not in ("none", *RIDS):
            raise ValueError(f"simulcast_request_rid must be none, {', '.join(RIDS)}; got {simulcast_request_rid!r}")
        for name, value in (("spotlight_focus_rid", spotlight_focus_rid),
                            ("spotlight_unfocus_rid", spotlight_unfocus_rid)):
            if value is not None and value not in ("none", *RIDS):
                raise ValueError(f"{name} must be none, {', '.join(RIDS)}; got {value!r}")
            if value is not None and not spotlight:
                raise ValueError(f"{name} needs spotlight=True")
        if spotlight_number is not None and not 1 <= spotlight_number <= 8:
            raise ValueError(f"spotlight_number must be 1..8; got {spotlight_number!r}")
        requested_channels = normalize_data_channels(data_channels)
        if requested_channels and not data_channel_signaling:
            # Sora opens messaging channels only with DataChannel signaling (§7).
            logger.warning("data_channels need data_channel_signaling=True; the server will not open them")

        self.signaling_urls = urls
        self.role = role
        self.channel_id = channel_id
        self.audio_source = audio_source
        self.video_source = video_source
        # Sending transformers of this connection (sora-sdk's create_connection arguments).
        self._frame_transformers: dict[str, FrameTransformer | None] = {
            "audio": check_transformer(audio_frame_transformer, "audio", "audio_frame_transformer"),
            "video": check_transformer(video_frame_transformer, "video", "video_frame_transformer"),
        }
        self._audio_bit_rate = audio_bit_rate
        from hibiki.media.adaptation import DegradationPreference

        # sora-sdk's SoraDegradationPreference values; checked now (ValueError).
        self._degradation = (
            None if degradation_preference is None else DegradationPreference(int(degradation_preference))
        )
        # One per simulcast layer, or a single one.
        self._video_attachments: list[_Attachment] = []
        # JSON-RPC on the ``rpc`` DataChannel: our request ids and their answers.
        self._rpc_ids = itertools.count(1)
        self._rpc_pending: dict[int, asyncio.Future[Any]] = {}
        self._plis_received = 0
        """Key frame requests (PLI/FIR) the server sent for our video (``pliCount``)."""
        if audio_opus_params:
            # Checked here, so that a bad value fails the call that passed it
            # (ValueError) rather than the encoder thread later on.
            from hibiki.media import opus_encoder_settings

            opus_encoder_settings(audio_opus_params)
        self._audio_opus_params = dict(audio_opus_params) if audio_opus_params else None
        self._video_bit_rate = video_bit_rate
        video_extra: dict[str, Any] = {}
        if video_vp9_params:
            video_extra["vp9_params"] = video_vp9_params
        if video_av1_params:
            video_extra["av1_params"] = video_av1_params
        if video_h264_params:
            video_extra["h264_params"] = video_h264_params
        # Which FFmpeg implementation encodes/decodes each codec (software
        # unless chosen) and the encoder parameters of each codec; checked
        # here so that a missing GPU or a parameter the encoder cannot honour
        # fails this call rather than the encoder thread later on.
        self._video_codec_params = {"VP9": video_vp9_params, "AV1": video_av1_params, "H264": video_h264_params}
        self._video_preference: Any = None
        if video_codec_preference is not None or any(self._video_codec_params.values()):
            from hibiki.media.codecs import CodecPreference
            from hibiki.media.video import VideoEncoder

            self._video_preference = CodecPreference.coerce(video_codec_preference)
            if self._video_preference is not None:
                self._video_preference.check()
            for codec, params in self._video_codec_params.items():
                if params:
                    VideoEncoder.check_params(codec, params, None if self._video_preference is None
                                              else self._video_preference.encoder(codec))
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
            data_channel_signaling=data_channel_signaling,
            ignore_disconnect_websocket=ignore_disconnect_websocket,
            data_channels=requested_channels,
            simulcast=simulcast,
            simulcast_rid=simulcast_rid,
            simulcast_request_rid=simulcast_request_rid,
            spotlight=spotlight,
            spotlight_number=spotlight_number,
            spotlight_focus_rid=spotlight_focus_rid,
            spotlight_unfocus_rid=spotlight_unfocus_rid,
        )
        self._ws_open_timeout = websocket_connection_timeout
        self._ws_close_timeout = websocket_close_timeout
        self._connect_timeout = connect_timeout
        self._proxy = proxy_url
        self._user_agent = user_agent
        self._disconnect_wait_timeout = disconnect_wait_timeout

        # Callback face (sora-sdk names). Plain attributes: set them before connect().
        self.on_set_offer: Callable[[str], None] | None = None
        self.on_notify: Callable[[str], None] | None = None
        self.on_push: Callable[[str], None] | None = None
        self.on_track: Callable[[MediaTrack], None] | None = None
        self.on_remove_track: Callable[[MediaTrack], None] | None = None
        self.on_disconnect: Callable[[SignalingErrorCode, str], None] | None = None
        self.on_signaling_message: Callable[[SignalingType, SignalingDirection, str], None] | None = None
        self.on_ws_close: Callable[[int, str], None] | None = None
        self.on_switched: Callable[[str], None] | None = None
        self.on_data_channel: Callable[[str], None] | None = None
        self.on_message: Callable[[str, bytes], None] | None = None
        self.on_rpc: Callable[[bytes], None] | None = None

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
        # DataChannel signaling (§3.2, §3.3). ``_ws_connected`` goes False when
        # we close the WebSocket ourselves after switched (ignore_disconnect_websocket).
        self._dc = DataChannels(f"{channel_id}/{role}")
        self._switched_message: dict[str, Any] | None = None
        self._ws_connected = False
        self._ws_close_reported = False
        self._channels_closed_waiters: list[asyncio.Future[None]] = []

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
        self.close_message: dict[str, Any] | None = None
        """The server's ``{"type": "close"}`` message on the ``signaling`` DataChannel, if one came (§5.12)."""

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

    @property
    def switched(self) -> bool:
        """True once the server switched signaling to DataChannels (``switched``, §5.10)."""
        return self._switched_message is not None

    @property
    def websocket_connected(self) -> bool:
        """True while the signaling WebSocket is open (False after the self-close of §3.3)."""
        return self._ws_connected

    @property
    def data_channel_labels(self) -> list[str]:
        """The labels of the offer's ``data_channels`` (the channels the server opens)."""
        return list(self._dc.labels)

    @property
    def open_data_channels(self) -> frozenset[str]:
        """The labels of the data channels open right now."""
        return frozenset(self._dc.open)

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
        self._ws_connected = True
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
        self._dc.set_tag(connection_id)
        # Which labels exist and which are compressed comes from the offer only (§5.3, §6.4).
        self._dc.load_offer(offer.get("data_channels"))
        mids = offer.get("mid")
        self._mids = {k: v for k, v in mids.items() if isinstance(v, str)} if isinstance(mids, dict) else {}
        self._hub = get_engine()
        try:
            # Each remote track's frames go straight to its decoder thread.
            handle, answer = self._hub.engine.connect(sdp, route_frames=True)
        except Exception as exc:
            raise HibikiConnectionError(
                SignalingErrorCode.ICE_FAILED, f"the engine could not apply the offer: {exc}"
            ) from None
        self._handle = handle
        self._hub.register(handle, self._on_engine_event)
        self._log(logging.INFO, "offer applied (channel %s, %s, mids %s, data channels %s)",
                  self.channel_id, self.role, self._mids, self.data_channel_labels or "none")
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

    def _report(self, direction: SignalingDirection, text: str,
                path: SignalingType = SignalingType.WEBSOCKET) -> None:
        sdk_loop.dispatch_callback(self.on_signaling_message, path, direction, text, what="on_signaling_message")

    async def _send(self, message: dict[str, Any], report: bool = True) -> None:
        """Send ``message`` on the WebSocket."""
        assert self._sig is not None
        text = await self._sig.send(message)
        if report:
            self._report(SignalingDirection.SENT, text)

    def _send_dc(self, label: str, message: dict[str, Any], report: bool = False) -> bool:
        """Send a JSON signaling message on DataChannel ``label`` (SDK loop). False if it could not go.

        Compressed when the offer says so; always binary, like libsora (§6.3).
        ``report`` passes it to ``on_signaling_message`` as a DataChannel message.
        """
        text = dumps(message)
        if self._try_send(label, text.encode()) != "sent":
            self._log(logging.WARNING, "could not send %r on DataChannel %r", message.get("type"), label)
            return False
        if report:
            self._report(SignalingDirection.SENT, text, SignalingType.DATACHANNEL)
        return True

    async def _send_signaling(self, message: dict[str, Any]) -> None:
        """Send a re-answer: on the ``signaling`` DC once switched and open, else on the WebSocket (§5.6)."""
        if self.switched and self._dc.is_open("signaling") and self._send_dc("signaling", message, report=True):
            return
        if self._ws_connected:
            await self._send(message)
        else:
            self._log(logging.WARNING, "no signaling path left to send %r", message.get("type"))

    async def _read_loop(self) -> None:
        assert self._sig is not None
        try:
            while True:
                text, msg = await self._sig.recv()
                await self._on_message(text, msg)
        except SignalingClosed as closed:
            if self._state in ("closing", "closed"):
                return  # our own disconnect is waiting for this close
            if self.switched and not self._ws_connected:
                return  # we closed it ourselves after switched (§3.3): the DataChannels carry on
            self._note_ws_close(closed)
            if not closed.clean:
                code, reason = (SignalingErrorCode.WEBSOCKET_ONERROR,
                                "the signaling WebSocket broke without a close frame")
            elif closed.code == 1000:
                code, reason = SignalingErrorCode.CLOSE_SUCCEEDED, f"the server closed the connection: {closed.reason}"
            else:
                code, reason = (SignalingErrorCode.WEBSOCKET_ONCLOSE,
                                f"the server closed the signaling WebSocket: {closed.code} {closed.reason}".rstrip())
            self._ws_connected = False
            self._log(logging.INFO, "%s", reason)
            if self.switched and code != SignalingErrorCode.CLOSE_SUCCEEDED:
                # DataChannel + WebSocket mode: like libsora, tell the server over
                # the DataChannel why we leave and give it time to close the channels.
                why = "WEBSOCKET-ONCLOSE" if closed.clean else "WEBSOCKET-ONERROR"
                self._send_dc("signaling", {"type": "disconnect", "reason": why}, report=True)
                await self._close(code, reason, polite=False, wait_channels=True)
            else:
                await self._close(code, reason, polite=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log(logging.ERROR, "signaling reader failed", exc_info=True)
            await self._close(SignalingErrorCode.INTERNAL_ERROR, f"signaling failed: {exc!r}", polite=False)

    async def _on_message(self, text: str, msg: dict[str, Any]) -> None:
        """A message on the WebSocket."""
        kind = msg["type"]
        if kind == "ping":
            await self._on_ping(msg)
        elif kind == "re-offer":
            self._report(SignalingDirection.RECEIVED, text)
            await self._on_reoffer(msg)
        elif kind == "notify":
            self._on_notify(text, msg)
        elif kind == "push":
            self._on_push(text, msg)
        elif kind == "switched":
            self._on_switched(text, msg)
        elif kind in ("redirect", "offer"):
            self._report(SignalingDirection.RECEIVED, text)
            self._log(logging.WARNING, "ignoring an unexpected %r after the offer", kind)
        else:
            self._log(logging.DEBUG, "ignoring signaling message %r", kind)

    async def _on_ping(self, msg: dict[str, Any]) -> None:
        # libsora answers a stats ping on the stats DataChannel once switched (§5.9).
        if msg.get("stats") is True and self.switched and self._dc.is_open("stats") and \
                self._send_dc("stats", {"type": "stats", "reports": build_report(self)}):
            return
        pong: dict[str, Any] = {"type": "pong"}
        if msg.get("stats") is True:
            pong["stats"] = build_report(self)
        await self._send(pong, report=False)

    def _on_notify(self, text: str, msg: dict[str, Any]) -> None:
        event_type = msg.get("event_type")
        if event_type == "connection.created" and msg.get("connection_id") == self._connection_id:
            self.self_notified = True
        sdk_loop.dispatch_callback(self.on_notify, text, what="on_notify")
        self._emit(Notify(msg))
        if event_type == "simulcast.switched":
            self._on_simulcast_switched(msg)

    def _on_simulcast_switched(self, msg: dict[str, Any]) -> None:
        """``simulcast.switched``: the server forwards another layer of one sender's video."""
        sender = msg.get("sender_connection_id")
        rid = msg.get("current_rid")
        previous = msg.get("previous_rid")
        for track in self._tracks.values():
            if track.kind == "video" and track.stream_id == sender:
                track.simulcast_rid = rid if isinstance(rid, str) else None
                self._log(logging.DEBUG, "simulcast layer of %s is now %s", sender, rid)
                self._emit(SimulcastSwitched(track, track.simulcast_rid,
                                             previous if isinstance(previous, str) else None, msg))

    # -- JSON-RPC on the ``rpc`` DataChannel -------------------------------------------------------

    def rpc(self, method: str, params: dict[str, Any] | None = None, *,
            timeout: float | None = 5.0) -> Awaitable[Any]:
        """Call a server method over JSON-RPC 2.0 on the ``rpc`` DataChannel (sora-signaling.md §9).

        Returns the ``result``; raises :class:`hibiki.HibikiError` with the
        server's error message, when the ``rpc`` channel is not open (it
        needs ``data_channel_signaling=True``), or on ``timeout`` seconds
        without an answer. Blocks in a plain thread; in a coroutine, returns
        an awaitable::

            await conn.rpc("2025.2.0/RequestSimulcastRid", {"rid": "r0"})
        """
        return _wait(sdk_loop.run_coroutine(self._rpc_call(method, params, timeout)), "rpc()")

    async def _rpc_call(self, method: str, params: dict[str, Any] | None, timeout: float | None) -> Any:
        if self._state != "connected":
            raise HibikiError(f"cannot call {method}: the connection is {self._state}")
        if not self._dc.is_open("rpc"):
            raise HibikiError(f"cannot call {method}: the rpc DataChannel is not open "
                              "(connect with data_channel_signaling=True to a server that offers it)")
        request_id = next(self._rpc_ids)
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            request["params"] = params
        answer = asyncio.get_running_loop().create_future()
        self._rpc_pending[request_id] = answer
        try:
            if self._try_send("rpc", dumps(request).encode()) != "sent":
                raise HibikiError(f"cannot call {method}: the rpc DataChannel did not take the request")
            try:
                async with asyncio.timeout(timeout):
                    reply = await answer
            except TimeoutError:
                raise HibikiError(f"{method}: no answer within {timeout} s") from None
        finally:
            self._rpc_pending.pop(request_id, None)
        error = reply.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            raise HibikiError(f"{method} failed: {message}")
        return reply.get("result")

    def _on_rpc_answer(self, data: bytes) -> None:
        try:
            reply = json.loads(data)
        except ValueError:
            return
        if not isinstance(reply, dict) or "method" in reply:
            return  # a request or notification from the server, not an answer
        waiter = self._rpc_pending.get(reply.get("id"))  # type: ignore[arg-type]
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def request_simulcast_rid(self, rid: str, sender_connection_id: str | None = None, *,
                              timeout: float | None = 5.0) -> Awaitable[None]:
        """Receive simulcast layer ``rid`` (``r0``, ``r1``, ``r2``, ``none`` or ``auto``) of one sender's video, or every sender's.

        The server switches at the layer's next keyframe and says so with a
        ``simulcast.switched`` notify (:class:`~hibiki.events.SimulcastSwitched`,
        ``track.simulcast_rid``); if the sender does not send that layer, the
        next lower one comes. Uses Sora's RPC ``2025.2.0/RequestSimulcastRid``,
        so the connection needs ``data_channel_signaling=True``. Blocks in a
        plain thread; awaitable in a coroutine. Raises ValueError for a bad
        rid and :class:`hibiki.HibikiError` when the server refuses.
        """
        if rid not in ("none", "auto", *RIDS):
            raise ValueError(f"rid must be none, auto or one of {', '.join(RIDS)}; got {rid!r}")
        params: dict[str, Any] = {"rid": rid}
        if sender_connection_id is not None:
            params["sender_connection_id"] = sender_connection_id

        async def call() -> None:
            await self._rpc_call("2025.2.0/RequestSimulcastRid", params, timeout)

        return _wait(sdk_loop.run_coroutine(call()), "request_simulcast_rid()")

    def _on_push(self, text: str, msg: dict[str, Any]) -> None:
        sdk_loop.dispatch_callback(self.on_push, text, what="on_push")
        self._emit(Push(msg.get("data"), msg))

    def _on_switched(self, text: str, msg: dict[str, Any]) -> None:
        """``switched``: signaling moves to DataChannels (§3.2); with ignore_disconnect_websocket, drop the WS (§3.3)."""
        if self.switched:
            self._log(logging.WARNING, "ignoring a second switched")
            return
        self._switched_message = msg
        ignore_ws = msg.get("ignore_disconnect_websocket") is True
        self._log(logging.INFO, "switched to DataChannel signaling (ignore_disconnect_websocket=%s, open: %s)",
                  ignore_ws, sorted(self._dc.open))
        if not self._dc.is_open("signaling"):
            self._log(logging.WARNING, "switched while the signaling DataChannel is not open; "
                      "re-answers go over the WebSocket until it opens")
        sdk_loop.dispatch_callback(self.on_switched, text, what="on_switched")
        self._emit(Switched(ignore_ws, msg))
        if ignore_ws and self._ws_connected:
            # Marked before closing so that the reader takes the close for ours.
            self._ws_connected = False
            spawn(self._self_close_websocket())

    async def _self_close_websocket(self) -> None:
        """Close the WebSocket after ``switched`` with ignore_disconnect_websocket (§3.3).

        libsora drops the TCP connection; a normal close frame is kinder to the
        server and allowed by the protocol (the JS SDK sends one). Reported as
        ``on_ws_close(1000, "SELF-CLOSED")`` either way.
        """
        sig = self._sig
        if sig is None:
            return
        await sig.close(timeout=self._ws_close_timeout)
        if self._ws_close_reported:
            return
        self.ws_close_code, self.ws_close_reason = SELF_CLOSED
        self._ws_close_reported = True
        self._log(logging.INFO, "closed the signaling WebSocket after switched (SELF-CLOSED)")
        sdk_loop.dispatch_callback(self.on_ws_close, *SELF_CLOSED, what="on_ws_close")

    async def _on_reoffer(self, msg: dict[str, Any]) -> None:
        sdp = msg.get("sdp")
        if not isinstance(sdp, str) or self._hub is None or self._handle is None:
            self._log(logging.WARNING, "ignoring a re-offer without sdp")
            return
        if self._state not in ("connecting", "connected"):
            return
        try:
            answer = self._hub.engine.accept_offer(self._handle, sdp)
        except Exception as exc:
            self._log(logging.ERROR, "the engine could not apply a re-offer: %s", exc)
            spawn(self._close(SignalingErrorCode.ICE_FAILED, f"the engine could not apply a re-offer: {exc}",
                              polite=True))
            return
        self._offer_sdp = sdp
        await self._send_signaling({"type": "re-answer", "sdp": answer})

    # -- data channels (SDK loop) ------------------------------------------------------------

    def _on_channel_open(self, label: str) -> None:
        info = self._dc.on_open(label)
        if info is None:
            # libsora ignores channels the offer does not list (§5.3). Our
            # server opens "hibiki" only to give a recvonly client in an empty
            # channel a transport to negotiate: expected, not worth a warning.
            level = logging.DEBUG if label == "hibiki" else logging.WARNING
            self._log(level, "DataChannel %r opened but the offer does not list it", label)
            return
        self._log(logging.DEBUG, "DataChannel %r open%s", label, " (zlib)" if info.compress else "")
        if not info.notified:
            # sora-sdk 2025.4 fires on_data_channel once for every label the
            # offer lists, system labels included (observed with the real
            # wheel against hibiki serve: signaling, notify, push, stats, #...).
            info.notified = True
            sdk_loop.dispatch_callback(self.on_data_channel, label, what="on_data_channel")
        if label.startswith(MESSAGING_PREFIX) or label == "rpc":
            self._emit(DataChannelOpen(label))

    def _on_channel_close(self, label: str) -> None:
        self._dc.on_close(label)
        self._log(logging.DEBUG, "DataChannel %r closed (%d still open)", label, len(self._dc.open))
        if self._dc.open:
            return
        waiters, self._channels_closed_waiters = self._channels_closed_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._state == "connected" and self.switched and not self._ws_connected:
            # DataChannel-only and no channel left: nothing can reach us any more.
            # A server close comes with a close message first; this one did not.
            reason = "the server closed every DataChannel without a close message"
            self._log(logging.WARNING, "%s", reason)
            spawn(self._close(SignalingErrorCode.CLOSE_SUCCEEDED, reason, polite=False))

    async def _wait_channels_closed(self, timeout: float) -> bool:
        """Wait until no data channel is open; False after ``timeout`` seconds."""
        if not self._dc.open:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._channels_closed_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        return True

    def _on_channel_data(self, label: str, raw: bytes) -> None:
        self._dc.count_received(label, len(raw))
        if label not in SYSTEM_LABELS and not label.startswith(MESSAGING_PREFIX):
            # libsora ignores every other label (e2ee, anything new) (§6.2).
            self._log(logging.DEBUG, "ignoring a message on DataChannel %r", label)
            return
        data = self._dc.decode(label, raw)
        if data is None:
            return  # not zlib on a compressed label: logged, dropped
        if label.startswith(MESSAGING_PREFIX):
            sdk_loop.dispatch_callback(self.on_message, label, data, what="on_message")
            self._emit(Message(label, data, sender_connection_id(self._dc.labels.get(label), data)))
            return
        if label == "rpc":
            self._on_rpc_answer(data)
            sdk_loop.dispatch_callback(self.on_rpc, data, what="on_rpc")
            self._emit(Message(label, data))
            return
        text = data.decode("utf-8", "replace")
        msg = parse_message(text, f"DataChannel {label!r}")
        if label == "signaling":
            # sora-sdk reports everything received on the signaling channel (§15b).
            self._report(SignalingDirection.RECEIVED, text, SignalingType.DATACHANNEL)
        if msg is None:
            return
        kind = msg["type"]
        if label == "signaling":
            if kind == "re-offer":
                spawn(self._on_reoffer(msg))
            elif kind == "close":
                self._on_server_close(msg)
            else:
                self._log(logging.DEBUG, "ignoring %r on the signaling DataChannel", kind)
        elif label == "notify" and kind == "notify":
            self._on_notify(text, msg)
        elif label == "push" and kind == "push":
            self._on_push(text, msg)
        elif label == "stats" and kind == "req-stats":
            self._send_dc("stats", {"type": "stats", "reports": build_report(self)})
        else:
            self._log(logging.DEBUG, "ignoring %r on DataChannel %r", kind, label)

    def _on_server_close(self, msg: dict[str, Any]) -> None:
        """``{"type":"close"}`` on ``signaling`` (§5.12): the server ends us and closes every DC."""
        self.close_message = msg
        code, reason = msg.get("code"), msg.get("reason")
        detail = str(reason) if code == 1000 else f"{code} {reason}"
        self._log(logging.INFO, "the server closes the connection over DataChannel: %s", detail)
        # libsora reports success whatever the code, once the channels are closed.
        spawn(self._close(SignalingErrorCode.CLOSE_SUCCEEDED, f"the server closed the connection: {detail}",
                          polite=False, wait_channels=True))

    def _try_send(self, label: str, payload: bytes) -> Literal["sent", "full", "closed"]:
        """Send ``payload`` (compressed here when the label is) on an open channel; any thread."""
        hub, handle = self._hub, self._handle
        if hub is None or handle is None or not self._dc.is_open(label) or self._state == "closed":
            return "closed"
        wire = self._dc.encode(label, payload)
        try:
            sent = hub.engine.send_data(handle, label, wire)
        except ValueError:  # closed in the meantime
            return "closed"
        except Exception as exc:
            self._log(logging.WARNING, "send on DataChannel %r failed: %s", label, exc)
            return "closed"
        if not sent:
            return "full"
        self._dc.count_sent(label, len(wire))
        return "sent"

    def send_data_channel(self, label: str, data: bytes) -> bool:
        """Send ``data`` on the data channel ``label`` (sora-sdk's name). Any thread.

        Compressed with zlib when the offer marks the label ``compress``. Returns
        False when the channel is not open (yet, or any more) or its send
        buffer is full; the message is then not sent.

        >>> conn.send_data_channel("#chat", b"hello")
        True
        """
        if isinstance(data, str):
            raise TypeError("send_data_channel takes bytes; encode the string first")
        if self._state != "connected":
            return False
        return self._try_send(label, bytes(data)) == "sent"

    async def send_message(self, label: str, data: bytes, *, timeout: float | None = 10.0) -> None:
        """Send ``data`` on ``label``, waiting while the channel's send buffer is full (asyncio face).

        Raises :class:`hibiki.HibikiError` when the channel is not open or the
        connection is not connected, and :class:`TimeoutError` when the buffer
        stays full for ``timeout`` seconds.
        """
        if isinstance(data, str):
            raise TypeError("send_message takes bytes; encode the string first")
        payload = bytes(data)
        delay = 0.002
        async with asyncio.timeout(timeout):
            while True:
                if self._state != "connected":
                    raise HibikiError(f"cannot send on {label!r}: the connection is {self._state}")
                result = self._try_send(label, payload)
                if result == "sent":
                    return
                if result == "closed":
                    raise HibikiError(f"data channel {label!r} is not open")
                await asyncio.sleep(delay)  # back-pressure: let SCTP drain
                delay = min(delay * 2, 0.05)

    async def wait_for_data_channel(self, label: str, timeout: float | None = None) -> None:
        """Await until the ``#`` (or ``rpc``) data channel ``label`` is open.

        >>> await conn.wait_for_data_channel("#chat", timeout=5)
        """
        loop = asyncio.get_running_loop()
        sub = await asyncio.wrap_future(sdk_loop.run_coroutine(self._subscribe_from(loop, True)))
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await sub.queue.get()
                    if isinstance(event, DataChannelOpen) and event.label == label and self._dc.is_open(label):
                        return
                    if isinstance(event, Disconnected):
                        raise HibikiConnectionError(event.code, f"connection closed: {event.reason}")
        finally:
            sdk_loop.call_soon(self._unsubscribe, sub)

    # -- stats ----------------------------------------------------------------------------------

    def _stats_reports(self) -> list[dict[str, Any]]:
        """What the SDK knows, as W3C-style stats dicts (for ``stats``/``pong`` and ``get_stats``)."""
        now = time.time() * 1000.0
        reports = self._dc.stats_reports(now)
        if self.send_bitrate is not None:
            reports.append({"id": "CP", "type": "candidate-pair", "timestamp": now,
                            "state": "succeeded", "availableOutgoingBitrate": self.send_bitrate})
        for track in list(self._tracks.values()):
            reports.append({
                "id": f"IT{track.mid}",
                "type": "inbound-rtp",
                "timestamp": now,
                "kind": track.kind,
                "mid": track.mid,
                "trackIdentifier": track.id,
                "framesReceived": track.frames_received,
                "framesDecoded": track.frames_decoded,
                "keyFramesRequested": track.keyframe_requests,
            })
        return reports

    def get_stats(self) -> str:
        """The connection's statistics as a JSON array of W3C-style stats objects (sora-sdk's shape).

        What the SDK counts, with W3C names: codecs, outbound-rtp per sent
        track, inbound-rtp per received track, media sources, the transport,
        data channels and the send bandwidth estimate (``hibiki.client.stats``).
        The server gets the same report with every ``pong``.
        """
        return json.dumps(build_report(self))

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
                self._plis_received += 1
                self.video_source.request_keyframe(event.rid)
        elif kind == "connected":
            self._on_connected()
        elif kind == "bitrate":
            self._on_bitrate(int(event.bitrate or 0))
        elif kind == "channel_data":
            self._on_channel_data(event.label or "", event.data or b"")
        elif kind == "channel_open":
            self._on_channel_open(event.label or "")
        elif kind == "channel_close":
            self._on_channel_close(event.label or "")
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

    def attach_sources(self, audio: AudioSource | None = None, video: VideoSource | None = None) -> None:
        """Start sending ``audio`` and/or ``video`` on this connection, after it connected.

        For sources that were not given to ``create_connection`` (the asyncio
        join API's ``add_tracks`` uses it): frames pushed with
        ``on_data`` / ``on_captured`` go out on this connection from now on,
        exactly as for a source given at creation. Callable from any thread
        (it blocks for a moment while the SDK loop attaches them)::

            conn = await hibiki.connect(url, role="sendrecv", channel_id="room")
            mic = hibiki.Hibiki().create_audio_source(1, 48000)
            conn.attach_sources(audio=mic)

        The connection must be connected, with a role that sends, and the
        server's offer must have an m-line of that kind (``audio``/``video``
        not False at creation, and the channel allows it). Giving the source
        already attached for a kind again does nothing.

        Raises:
            TypeError: ``audio`` is not an AudioSource or ``video`` not a VideoSource.
            ValueError: no source given, the role is ``recvonly``, the offer has no
                m-line of that kind, or another source already sends that kind.
            RuntimeError: the connection is not connected (not yet, or any more).
        """
        if audio is not None and not isinstance(audio, AudioSource):
            raise TypeError(f"audio must be an AudioSource, got {type(audio).__name__}")
        if video is not None and not isinstance(video, VideoSource):
            raise TypeError(f"video must be a VideoSource, got {type(video).__name__}")
        if audio is None and video is None:
            raise ValueError("attach_sources needs an audio or a video source")
        if self.role == "recvonly":
            raise ValueError("a recvonly connection sends nothing; connect as sendrecv or sendonly to attach sources")

        def attach() -> None:
            # On the SDK loop: state, mids and attachments only change there,
            # so the checks and the attach cannot race a close or a re-offer.
            if self._state != "connected" or self._hub is None or self._handle is None:
                raise RuntimeError(f"cannot attach sources: the connection is {self._state}, not connected")
            kinds: list[str] = []
            for kind, source, current in (("audio", audio, self.audio_source), ("video", video, self.video_source)):
                if source is None:
                    continue
                if kind not in self._mids:
                    raise ValueError(f"the server's offer has no {kind} m-line: connect with {kind}=True "
                                     f"(and a call that allows {kind}) to send {kind}")
                if source is current:
                    continue  # the same source again: attached at connect or by an earlier call
                if current is not None:
                    raise ValueError(f"this connection already sends {kind} from another source")
                kinds.append(kind)
            if not kinds:
                return
            if "audio" in kinds:
                self.audio_source = audio
            if "video" in kinds:
                self.video_source = video
            self._attach_sources(tuple(kinds))

        if sdk_loop.in_loop_thread():
            attach()
            return

        async def run() -> None:
            attach()

        sdk_loop.run_coroutine(run()).result(timeout=10.0)

    def _attach_sources(self, kinds: tuple[str, ...] = ("audio", "video")) -> None:
        """Attach this connection's sources of ``kinds`` to their m-lines (SDK loop).

        The desired send rate given to the engine counts every attached source,
        not only those of ``kinds``.
        """
        assert self._hub is not None and self._handle is not None
        pairs: list[tuple[AudioSource | VideoSource | None, str, str, int | None]] = [
            (self.audio_source, "audio", "OPUS", self._audio_bit_rate),
            (self.video_source, "video", "VP8", self._video_bit_rate),
        ]
        desired = 0
        for source, kind, default_codec, kbps in pairs:
            mid = self._mids.get(kind)
            if source is None or mid is None or self.role == "recvonly":
                continue
            desired += self._send_rate(kind)
            if kind not in kinds:
                continue  # attached earlier: only counted in the desired rate
            codec = codec_for_mid(self._offer_sdp, mid) or default_codec
            source._transforms.expect(self._handle, mid, self._frame_transformers[kind],
                                      payload_types_for_mid(self._offer_sdp, mid).get(codec.upper()))
            layers: list[SimulcastLayer | None] = [None]
            if kind == "video":
                layers = list(self._simulcast_layers(mid)) or [None]
            for layer in layers:
                bitrate = layer.max_bitrate if layer is not None else (kbps * 1000 if kbps else None)
                attachment = _Attachment(
                    engine=self._hub.engine, handle=self._handle, mid=mid, codec=codec,
                    label=self._tag, bitrate=bitrate,
                    rid=layer.rid if layer is not None else None,
                    scale=layer.scale if layer is not None else 1.0,
                    audio_params=self._audio_opus_params if kind == "audio" else None,
                    video_params=self._video_codec_params.get(codec.upper()) if kind == "video" else None,
                    implementation=(self._video_preference.encoder(codec)
                                    if kind == "video" and self._video_preference is not None else None),
                    degradation=self._degradation if kind == "video" else None,
                )
                if kind == "video":
                    self._video_attachments.append(attachment)
                source._attach(attachment)
        if desired:
            # Without a goal the estimator only learns what we already send
            # and would never let the encoder climb past its first estimate.
            self._hub.engine.set_desired_bitrate(self._handle, desired)

    def _simulcast_layers(self, mid: str) -> list[SimulcastLayer]:
        """The active simulcast layers to encode on our video ``mid`` (empty without simulcast).

        The RIDs are those the SDP negotiated, their sizes and rates the
        offer's ``encodings`` (sora-signaling.md §8), as libwebrtc applies them.
        """
        offer = self._offer or {}
        if offer.get("simulcast") is not True or self._hub is None or self._handle is None:
            return []
        try:
            rids = self._hub.engine.send_rids(self._handle, mid)
        except Exception as exc:
            self._log(logging.WARNING, "cannot read the simulcast layers of mid %s: %s", mid, exc)
            return []
        layers = [layer for layer in layers_from_encodings(rids, offer.get("encodings"), self._video_bit_rate)
                  if layer.active]
        if layers:
            self._log(logging.INFO, "simulcast: %s", ", ".join(
                f"{layer.rid} /{layer.scale:g} {layer.max_bitrate // 1000} kbps" for layer in layers))
        return layers

    def set_simulcast_active(self, rid: str, active: bool) -> None:
        """Pause (``active=False``) or resume one simulcast layer we send, like
        ``RTCRtpSender.setParameters`` with ``encodings[i].active``.

        A paused layer is neither encoded nor sent; the server moves its
        receivers to the next lower layer and back once it resumes (with a
        keyframe). Raises ValueError when the connection sends no such layer.
        """
        layers = [a for a in self._video_attachments if a.rid == rid]
        if not layers:
            sent = [a.rid for a in self._video_attachments if a.rid is not None]
            raise ValueError(f"this connection sends no simulcast layer {rid!r} (it sends {sent or 'none'})")
        for attachment in layers:
            if active and not attachment.active:
                attachment.waiting_keyframe = True  # a resumed layer starts with a keyframe
            attachment.active = bool(active)
        self._log(logging.INFO, "simulcast layer %s %s", rid, "resumed" if active else "paused")

    def _send_rate(self, kind: str) -> int:
        """The configured (maximum) send rate of ``kind`` in bit/s."""
        from .sources import DEFAULT_AUDIO_BITRATE, DEFAULT_VIDEO_BITRATE

        if kind == "audio":
            return (self._audio_bit_rate or 0) * 1000 or DEFAULT_AUDIO_BITRATE
        simulcast = sum(a.bitrate or 0 for a in self._video_attachments if a.rid is not None)
        return simulcast or (self._video_bit_rate or 0) * 1000 or DEFAULT_VIDEO_BITRATE

    def _on_bitrate(self, bps: int) -> None:
        """The engine's send-side estimate changed: give video what audio leaves.

        Simulcast layers share it in proportion to their maximum rates.
        """
        self.send_bitrate = bps
        attachments = self._video_attachments
        if not attachments:
            return
        audio = self._send_rate("audio") if self.audio_source is not None and "audio" in self._mids else 0
        video = max(0, bps - audio)
        total = sum(a.bitrate or 0 for a in attachments)
        for a in attachments:
            a.estimate = video if not total or len(attachments) == 1 else video * (a.bitrate or 0) // total

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
            request_simulcast_rid=self.request_simulcast_rid,
            video_codec_preference=self._video_preference,
            frames=event.frames,
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

        Sends ``disconnect`` and waits for the server to acknowledge it the way
        the current signaling mode asks (sora-signaling.md §4.1), then closes
        the media connection:

        * WebSocket only: ``disconnect`` on the WebSocket; the server closes it
          (at most ``websocket_close_timeout``, 3 s);
        * DataChannel + WebSocket: ``disconnect`` on the ``signaling``
          DataChannel; the server closes the WebSocket (at most
          ``disconnect_wait_timeout``, 5 s);
        * DataChannel only: ``disconnect`` on the ``signaling`` DataChannel;
          the server closes every DataChannel (at most ``disconnect_wait_timeout``).

        ``on_disconnect`` gets ``CLOSE_SUCCEEDED`` with sora-sdk's text for the
        mode, or ``CLOSE_FAILED`` when the server did not answer in time
        (``on_ws_close(4999, "DISCONNECT-WAIT-TIMEOUT-ERROR")`` while a
        WebSocket was involved). Blocks in a plain thread; in a coroutine
        returns an awaitable (``await conn.disconnect()``).
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
            success = {
                "ws": DISCONNECT_SUCCEEDED,
                "dc+ws": DISCONNECT_SUCCEEDED_DC_AND_WS,
                "dc": DISCONNECT_SUCCEEDED_DC_ONLY,
            }[self._signaling_mode()]
            await self._close(SignalingErrorCode.CLOSE_SUCCEEDED, success, polite=True)
        await asyncio.wrap_future(self._closed_future)

    def _signaling_mode(self) -> Literal["ws", "dc+ws", "dc"]:
        """Which of libsora's three disconnect paths applies now (§4.1)."""
        if not self.switched:
            return "ws"
        return "dc+ws" if self._ws_connected else "dc"

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the connection is closed (by anyone). Returns False on timeout."""
        try:
            self._closed_future.result(timeout)
        except concurrent.futures.TimeoutError:
            return False
        return True

    async def _close(self, code: SignalingErrorCode, reason: str, *, polite: bool,
                     wait_channels: bool = False) -> None:
        """Tear everything down once, whoever asks first; later callers wait for the end.

        ``polite``: say goodbye to the server first (``disconnect``).
        ``wait_channels``: the server is closing the DataChannels (after its
        ``close`` message, or after our DataChannel ``disconnect``): give it
        ``disconnect_wait_timeout`` to finish, as libsora waits for them.
        """
        if self._state in ("closing", "closed"):
            await asyncio.wrap_future(self._closed_future)
            return
        self._state = "closing"
        sig = self._sig
        if polite and sig is not None:
            code, reason = await self._say_goodbye(sig, code, reason)
        elif wait_channels:
            await self._wait_server_close(sig)
        if sig is not None:
            closed = sig.closed_info()
            if closed is not None and self._ws_connected and self.ws_close_code is None:
                self._note_ws_close(closed)  # the server closed it while we waited
            if self.ws_close_code == DISCONNECT_WAIT_TIMEOUT[0]:
                sig.abort()  # the server ignored us; do not wait another close timeout
            elif closed is None:
                # After a failure the server may be unresponsive: do not let
                # closing add seconds to the error the user is waiting for.
                await sig.close(timeout=self._ws_close_timeout if polite else 1.0)
            self._ws_connected = False
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
        self._dc.open.clear()  # the engine connection (and with it every channel) is gone
        for pending in self._rpc_pending.values():
            if not pending.done():
                pending.set_exception(HibikiError(f"the connection closed before the RPC answer: {reason}"))
                pending.exception()
        self._rpc_pending.clear()
        for channels_waiter in self._channels_closed_waiters:
            if not channels_waiter.done():
                channels_waiter.set_result(None)
        self._channels_closed_waiters.clear()
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
        if self.ws_close_code is not None and not self._ws_close_reported:
            self._ws_close_reported = True
            sdk_loop.dispatch_callback(self.on_ws_close, self.ws_close_code, self.ws_close_reason or "",
                                       what="on_ws_close")
        sdk_loop.dispatch_callback(self.on_disconnect, code, reason, what="on_disconnect")
        self._emit(Disconnected(code, reason, self.ws_close_code, self.ws_close_reason))
        _live.discard(self)
        if not self._closed_future.done():
            self._closed_future.set_result(None)

    async def _wait_server_close(self, sig: SignalingChannel | None) -> None:
        """The server is closing us: give it ``disconnect_wait_timeout`` to finish.

        DataChannel only: until every DataChannel is closed (libsora waits for
        them). DataChannel + WebSocket: until the server's WebSocket close,
        which ends that mode (and lets ``on_ws_close`` show its reason), or
        until the channels closed and then the WebSocket too.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._disconnect_wait_timeout
        hybrid = sig is not None and self._ws_connected
        if hybrid and sig is not None and sig.closed_info() is not None:
            return  # the server already closed the WebSocket (our reader has not seen it yet)
        channels = asyncio.ensure_future(self._wait_channels_closed(self._disconnect_wait_timeout))
        waits: set[asyncio.Future[Any]] = {channels}
        if hybrid:
            assert sig is not None
            waits.add(asyncio.ensure_future(sig.ws.wait_closed()))
        try:
            await asyncio.wait(waits, timeout=self._disconnect_wait_timeout, return_when=asyncio.FIRST_COMPLETED)
            if hybrid:
                assert sig is not None
                ws_wait = next(w for w in waits if w is not channels)
                if not ws_wait.done():
                    await asyncio.wait({ws_wait}, timeout=max(0.0, deadline - loop.time()))
                if sig.closed_info() is None:
                    self._log(logging.DEBUG, "the server left the WebSocket open; closing it")
            elif not (channels.done() and channels.result()):
                self._log(logging.WARNING, "DataChannels %s still open %g s after the close; closing anyway",
                          sorted(self._dc.open), self._disconnect_wait_timeout)
        finally:
            for w in waits:
                w.cancel()

    async def _say_goodbye(self, sig: SignalingChannel, code: SignalingErrorCode,
                           reason: str) -> tuple[SignalingErrorCode, str]:
        """Send ``disconnect`` and wait for the acknowledgement of the current mode (§4.1).

        Returns the (code, reason) to report: unchanged on success, or
        ``CLOSE_FAILED`` with what went wrong when a successful close was expected.
        """
        mode = self._signaling_mode()
        if mode == "ws":
            return await self._goodbye_websocket(sig, code, reason)
        disconnect = {"type": "disconnect", "reason": "NO-ERROR"}
        sent = self._dc.is_open("signaling") and self._send_dc("signaling", disconnect, report=True)
        if mode == "dc+ws":
            if not sent:  # the signaling channel is gone; the WebSocket is still there
                return await self._goodbye_websocket(sig, code, reason)
            self._log(logging.DEBUG, "disconnect sent on the signaling DataChannel; waiting for the WebSocket close")
            return await self._await_ws_close(sig, code, reason, self._disconnect_wait_timeout,
                                              "Websocket (DC signaling is enabled)")
        if not sent:
            failed = "Failed to close DataChannel: the signaling DataChannel is not open"
        elif await self._wait_channels_closed(self._disconnect_wait_timeout):
            return code, reason
        else:
            failed = (f"Failed to close DataChannel: the server did not close the DataChannels within "
                      f"{self._disconnect_wait_timeout:g} s ({DISCONNECT_WAIT_TIMEOUT[1]})")
        self._log(logging.WARNING, "%s", failed)
        if code == SignalingErrorCode.CLOSE_SUCCEEDED:
            return SignalingErrorCode.CLOSE_FAILED, failed
        return code, reason

    async def _goodbye_websocket(self, sig: SignalingChannel, code: SignalingErrorCode,
                                 reason: str) -> tuple[SignalingErrorCode, str]:
        """WebSocket path: ``disconnect`` on the WS, then the server's close frame (§4.1 path 3)."""
        try:
            await self._send({"type": "disconnect", "reason": "NO-ERROR"})
        except Exception as exc:  # the socket was already going away
            self._log(logging.DEBUG, "sending disconnect failed: %r", exc)
        return await self._await_ws_close(sig, code, reason, self._ws_close_timeout, "WebSocket")

    async def _await_ws_close(self, sig: SignalingChannel, code: SignalingErrorCode, reason: str,
                              timeout: float, what: str) -> tuple[SignalingErrorCode, str]:
        """Wait for the server to close the WebSocket; 4999 and ``CLOSE_FAILED`` after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                await sig.ws.wait_closed()
        except TimeoutError:
            self.ws_close_code, self.ws_close_reason = DISCONNECT_WAIT_TIMEOUT
            self._log(logging.WARNING, "the server did not close the WebSocket within %g s", timeout)
            if code == SignalingErrorCode.CLOSE_SUCCEEDED:
                return (SignalingErrorCode.CLOSE_FAILED,
                        (f"Failed to close {what}: the server did not close it within "
                         f"{timeout:g} s ({DISCONNECT_WAIT_TIMEOUT[1]})"))
            return code, reason
        closed = sig.closed_info()
        if closed is not None:
            self._note_ws_close(closed)
            if code == SignalingErrorCode.CLOSE_SUCCEEDED and not (closed.clean and closed.code == 1000):
                return (SignalingErrorCode.CLOSE_FAILED,
                        f"Failed to close {what}: {closed.code} {closed.reason}".rstrip())
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
            if self._switched_message is not None and self._state != "closed":
                initial.append(Switched(self._switched_message.get("ignore_disconnect_websocket") is True,
                                        self._switched_message))
            initial.extend(DataChannelOpen(label) for label in sorted(self._dc.open)
                           if self._dc.listed(label) and (label.startswith(MESSAGING_PREFIX) or label == "rpc"))
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
        (``Connected``, a ``TrackAdded`` per live track, ``Switched``, a
        ``DataChannelOpen`` per open messaging channel).
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
