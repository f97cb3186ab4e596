"""``Sora`` and ``SoraConnection``: sora-sdk's factory and connection over :class:`hibiki.Connection`.

One implementation underneath: ``Sora`` is a :class:`hibiki.Hibiki` and a
``SoraConnection`` forwards to a :class:`hibiki.Connection`. What this
layer adds is sora-sdk's calling conventions:

* ``connect()`` returns at once (sora-sdk starts its signaling thread and
  returns); the outcome arrives through callbacks - ``on_set_offer``, then
  ``on_notify`` with the connection's own ``connection.created``, or
  ``on_disconnect`` with the error.
* ``disconnect()`` blocks until the connection is closed *and*
  ``on_disconnect`` has run (unless called from a callback, where waiting
  for the callback thread would deadlock).
* Callbacks get sora-sdk's types: ``SoraSignalingErrorCode``,
  ``SoraSignalingType``/``SoraSignalingDirection``, ``SoraMediaTrack``.

Callbacks run on the SDK's callback thread (``hibiki-callbacks``), one at a
time and in order; sora-sdk runs them on its signaling/libwebrtc threads.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hibiki.client import loop as sdk_loop
from hibiki.client.factory import Hibiki
from hibiki.client.sources import AudioSource, VideoSource

from ._base import no_constructor, wrap
from ._codecs import SoraVideoCodecPreference, check_preference
from ._enums import (
    SoraDegradationPreference,
    SoraSignalingDirection,
    SoraSignalingErrorCode,
    SoraSignalingType,
)
from ._tracks import (
    SoraAudioSource,
    SoraMediaTrack,
    SoraTrackInterface,
    SoraVideoSource,
)
from ._transform import (
    SoraAudioFrameTransformer,
    SoraVideoFrameTransformer,
)

if TYPE_CHECKING:  # pragma: no cover
    from hibiki.client.connection import Connection
    from hibiki.client.events import (
        SignalingDirection,
        SignalingErrorCode,
        SignalingType,
    )
    from hibiki.client.tracks import MediaTrack

__all__ = ["Sora", "SoraConnection"]

logger = logging.getLogger("hibiki.compat")

# How long disconnect() waits for on_disconnect to have run once the
# connection is closed. Only a user callback that blocks can take this long.
_CALLBACK_BARRIER_TIMEOUT_S = 10.0

def _plain_callback(name: str) -> property:
    """A callback whose arguments are the same in Hibiki and sora-sdk: set directly on the
    Hibiki connection, with no adapter in between."""

    def fget(self: SoraConnection) -> Any:
        return self._callbacks.get(name)

    def fset(self: SoraConnection, arg: Any, /) -> None:
        self._callbacks[name] = arg
        setattr(self._conn, name, arg)

    return property(fget, fset, doc=f"sora-sdk's ``{name}`` callback (see :class:`SoraConnection`).")


class SoraConnection:
    """A connection to a channel; from :meth:`Sora.create_connection`.

    Callbacks (properties; they can be set at any time, before :meth:`connect` to miss nothing):

    * ``on_set_offer(str)`` - the server's offer JSON, once applied.
    * ``on_notify(str)`` / ``on_push(str)`` - ``notify`` / ``push`` JSON.
    * ``on_track(SoraMediaTrack)`` - a received track appeared.
    * ``on_disconnect(SoraSignalingErrorCode, str)`` - the connection ended (always last).
    * ``on_ws_close(int, str)`` - the signaling WebSocket closed (code, reason).
    * ``on_signaling_message(SoraSignalingType, SoraSignalingDirection, str)``.
    * DataChannels: ``on_switched(str)``, ``on_data_channel(label)``,
      ``on_message(label, bytes)``, ``on_rpc(bytes)``.

    ``hibiki_connection`` is the underlying :class:`hibiki.Connection`
    (Hibiki extension: the asyncio face, counters, ``connection_id``).
    """

    _conn: Connection
    _callbacks: dict[str, Any]
    _connect_future: concurrent.futures.Future[None] | None
    _lock: threading.Lock

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        no_constructor(self)

    @classmethod
    def _create(cls, conn: Connection) -> SoraConnection:
        return wrap(cls, _conn=conn, _callbacks={}, _connect_future=None, _lock=threading.Lock())

    # -- connect / disconnect --------------------------------------------------------------

    def connect(self) -> None:
        """Start connecting and return at once, like sora-sdk.

        Success shows as ``on_set_offer`` and then the ``connection.created``
        notify about this connection (``on_notify``); failure as
        ``on_disconnect`` with the reason. A connection is used once.

        Raises:
            RuntimeError: ``connect()`` was already called on this connection.
        """
        conn = self._conn
        with self._lock:
            # Checked here, not only by Hibiki: the connect coroutine starts later on the SDK loop.
            if self._connect_future is not None or conn.state != "new":
                raise RuntimeError(f"connect() was already called (the connection is {conn.state}); "
                                   "a connection cannot be reused, create a new one")
            self._connect_future = sdk_loop.run_coroutine(conn.connect_async())
        self._connect_future.add_done_callback(self._connect_done)

    def _connect_done(self, future: concurrent.futures.Future[None]) -> None:
        # The failure was already reported through on_disconnect; keep a trace in the log.
        if not future.cancelled() and future.exception() is not None:
            logger.debug("[%s] connect failed: %s", self._conn.channel_id, future.exception())

    def disconnect(self) -> None:
        """Leave the channel; blocks until closed and ``on_disconnect`` has run. Idempotent."""
        conn = self._conn
        sdk_loop.run_coroutine(conn.disconnect_async()).result()
        if threading.current_thread().name == sdk_loop.CALLBACK_THREAD_NAME:
            return  # called from a callback: on_disconnect runs right after it returns
        # on_disconnect was queued to the callback thread before the close
        # completed; a marker queued now runs after it.
        barrier = threading.Event()
        sdk_loop.dispatch_callback(barrier.set, what="disconnect barrier")
        barrier.wait(_CALLBACK_BARRIER_TIMEOUT_S)

    # -- data and stats -----------------------------------------------------------------------

    def send_data_channel(self, label: str, data: bytes) -> bool:
        """Send ``data`` on the DataChannel ``label`` (``#...`` messaging labels, or ``rpc``).

        Returns False when the channel is not open (yet, or any more) or its
        buffer is full, as sora-sdk does. Needs ``data_channel_signaling=True``
        and the label in ``data_channels``.
        """
        send = getattr(self._conn, "send_data_channel", None)
        if send is None:  # pragma: no cover - an SDK without DataChannels
            return False
        return bool(send(label, data))

    def get_stats(self) -> str:
        """The connection's statistics: a JSON array of W3C-style RTCStats objects.

        Differs from sora-sdk (libwebrtc's full report): it holds what Hibiki
        counts - ``codec``, ``outbound-rtp``, ``inbound-rtp``,
        ``media-source``, ``transport``, ``peer-connection``,
        ``data-channel``, ``candidate-pair`` - with W3C field names; see
        :mod:`hibiki.client.stats`. ``"[]"`` before ``connect()``.
        """
        if self._conn.state == "new":
            return "[]"
        return self._conn.get_stats()

    # -- callbacks ------------------------------------------------------------------------------

    on_set_offer = _plain_callback("on_set_offer")
    on_ws_close = _plain_callback("on_ws_close")
    on_notify = _plain_callback("on_notify")
    on_push = _plain_callback("on_push")
    on_message = _plain_callback("on_message")
    on_rpc = _plain_callback("on_rpc")
    on_switched = _plain_callback("on_switched")
    on_data_channel = _plain_callback("on_data_channel")

    @property
    def on_disconnect(self) -> Callable[[SoraSignalingErrorCode, str], None] | None:
        """``on_disconnect(error_code, message)``: the connection ended; always the last callback."""
        return self._callbacks.get("on_disconnect")

    @on_disconnect.setter
    def on_disconnect(self, arg: Callable[[SoraSignalingErrorCode, str], None] | None, /) -> None:
        self._callbacks["on_disconnect"] = arg
        adapter = None
        if arg is not None:
            def adapter(code: SignalingErrorCode, message: str) -> None:
                arg(SoraSignalingErrorCode(int(code)), message)
        self._conn.on_disconnect = adapter

    @property
    def on_signaling_message(self) -> Callable[[SoraSignalingType, SoraSignalingDirection, str], None] | None:
        """``on_signaling_message(type, direction, message)``: a signaling message sent or received."""
        return self._callbacks.get("on_signaling_message")

    @on_signaling_message.setter
    def on_signaling_message(
        self, arg: Callable[[SoraSignalingType, SoraSignalingDirection, str], None] | None, /
    ) -> None:
        self._callbacks["on_signaling_message"] = arg
        adapter = None
        if arg is not None:
            def adapter(kind: SignalingType, direction: SignalingDirection, message: str) -> None:
                arg(SoraSignalingType(int(kind)), SoraSignalingDirection(int(direction)), message)
        self._conn.on_signaling_message = adapter

    @property
    def on_track(self) -> Callable[[SoraMediaTrack], None] | None:
        """``on_track(track)``: a received :class:`SoraMediaTrack` appeared (one call per track)."""
        return self._callbacks.get("on_track")

    @on_track.setter
    def on_track(self, arg: Callable[[SoraMediaTrack], None] | None, /) -> None:
        self._callbacks["on_track"] = arg
        adapter = None
        if arg is not None:
            def adapter(track: MediaTrack) -> None:
                arg(SoraMediaTrack._wrap(track))
        self._conn.on_track = adapter

    # -- Hibiki extensions -------------------------------------------------------------------------

    @property
    def hibiki_connection(self) -> Connection:
        """The underlying :class:`hibiki.Connection` (Hibiki extension)."""
        return self._conn

    def __repr__(self) -> str:
        conn = self._conn
        return f"<SoraConnection {conn.channel_id!r} {conn.role} {conn.state} id={conn.connection_id}>"


def _unwrap_source(value: Any, kind: str, name: str) -> AudioSource | VideoSource | None:
    """The Hibiki source for ``audio_source=``/``video_source=``."""
    if value is None:
        return None
    wanted = SoraAudioSource if kind == "audio" else SoraVideoSource
    native = AudioSource if kind == "audio" else VideoSource
    if isinstance(value, wanted):
        return value._inner
    if isinstance(value, native):
        return value
    if isinstance(value, SoraTrackInterface):
        raise TypeError(f"{name} must be a {wanted.__name__} from Sora.create_{kind}_source(), "
                        f"got a {type(value).__name__}")
    raise TypeError(f"{name} must be a {wanted.__name__}, got {type(value).__name__}")


class Sora:
    """sora-sdk's factory: creates sources and connections; one per process is enough.

    ``openh264`` is accepted and not used (Hibiki's codecs come from FFmpeg).
    ``video_codec_preference`` is checked against what this process can
    encode and decode (FFmpeg's encoders and decoders, opened for real): an
    engine that does not open here raises ``RuntimeError`` naming what is
    missing. ``hibiki`` is the underlying :class:`hibiki.Hibiki`.
    """

    def __init__(self, openh264: str | None = None,
                 video_codec_preference: SoraVideoCodecPreference | None = None) -> None:
        check_preference(video_codec_preference)
        self.hibiki = Hibiki(openh264=openh264, video_codec_preference=video_codec_preference)

    def create_audio_source(self, channels: int, sample_rate: int) -> SoraAudioSource:
        """A source to feed ``int16 [samples, channels]`` PCM at ``sample_rate`` Hz."""
        source: SoraAudioSource = SoraAudioSource._wrap(self.hibiki.create_audio_source(channels, sample_rate))
        return source

    def create_video_source(self) -> SoraVideoSource:
        """A source to feed ``uint8 [height, width, 3]`` BGR pictures."""
        source: SoraVideoSource = SoraVideoSource._wrap(self.hibiki.create_video_source())
        return source

    def create_connection(  # sora-sdk's signature, argument for argument
        self,
        signaling_urls: list[str],
        role: str,
        channel_id: str,
        client_id: str | None = None,
        bundle_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        signaling_notify_metadata: dict[str, Any] | None = None,
        audio_source: SoraTrackInterface | None = None,
        video_source: SoraTrackInterface | None = None,
        audio_frame_transformer: SoraAudioFrameTransformer | None = None,
        video_frame_transformer: SoraVideoFrameTransformer | None = None,
        audio: bool | None = None,
        video: bool | None = None,
        audio_codec_type: str | None = None,
        video_codec_type: str | None = None,
        video_bit_rate: int | None = None,
        audio_bit_rate: int | None = None,
        video_vp9_params: dict[str, Any] | None = None,
        video_av1_params: dict[str, Any] | None = None,
        video_h264_params: dict[str, Any] | None = None,
        audio_opus_params: dict[str, Any] | None = None,
        simulcast: bool | None = None,
        spotlight: bool | None = None,
        spotlight_number: int | None = None,
        simulcast_rid: str | None = None,
        spotlight_focus_rid: str | None = None,
        spotlight_unfocus_rid: str | None = None,
        forwarding_filter: dict[str, Any] | None = None,
        forwarding_filters: list[dict[str, Any]] | None = None,
        data_channels: list[dict[str, Any]] | None = None,
        data_channel_signaling: bool | None = None,
        ignore_disconnect_websocket: bool | None = None,
        data_channel_signaling_timeout: int | None = None,
        disconnect_wait_timeout: int | None = None,
        websocket_close_timeout: int | None = None,
        websocket_connection_timeout: int | None = None,
        audio_streaming_language_code: str | None = None,
        insecure: bool | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        ca_cert: bytes | None = None,
        proxy_url: str | None = None,
        proxy_username: str | None = None,
        proxy_password: str | None = None,
        proxy_agent: str | None = None,
        degradation_preference: SoraDegradationPreference | None = None,
        user_agent: str | None = None,
    ) -> SoraConnection:
        """Create a :class:`SoraConnection` (call ``connect()`` on it). Arguments as in sora-sdk.

        Timeouts are in seconds; bit rates in kbps. Differences from sora-sdk:

        * invalid ``signaling_urls``/``role``/``channel_id`` raise
          ``ValueError`` here rather than failing later in ``on_disconnect``;
        * frame transformers run ``on_transform`` on a Hibiki thread (see
          :mod:`hibiki.compat.sora_sdk._transform`); a transformer of the
          wrong kind raises ``TypeError`` here;
        * arguments Hibiki does not act on yet (forwarding filters, TLS client certificates, proxy credentials,
          ...) are accepted and ignored with a
          ``UserWarning`` when set.
        """
        options: dict[str, Any] = {
            "simulcast": simulcast, "spotlight": spotlight, "spotlight_number": spotlight_number,
            "simulcast_rid": simulcast_rid, "spotlight_focus_rid": spotlight_focus_rid,
            "spotlight_unfocus_rid": spotlight_unfocus_rid, "forwarding_filter": forwarding_filter,
            "forwarding_filters": forwarding_filters,
            "data_channel_signaling_timeout": data_channel_signaling_timeout,
            "audio_streaming_language_code": audio_streaming_language_code, "insecure": insecure,
            "client_cert": client_cert, "client_key": client_key, "ca_cert": ca_cert,
            "proxy_username": proxy_username, "proxy_password": proxy_password, "proxy_agent": proxy_agent,
        }
        # Hibiki warns about arguments it ignores; re-issue those warnings so
        # that they point at the user's create_connection() line.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            conn = self.hibiki.create_connection(
                signaling_urls=signaling_urls,
                role=role,
                channel_id=channel_id,
                client_id=client_id,
                bundle_id=bundle_id,
                metadata=metadata,
                signaling_notify_metadata=signaling_notify_metadata,
                audio_source=_unwrap_source(audio_source, "audio", "audio_source"),  # type: ignore[arg-type]
                video_source=_unwrap_source(video_source, "video", "video_source"),  # type: ignore[arg-type]
                audio=audio,
                video=video,
                audio_codec_type=audio_codec_type,
                video_codec_type=video_codec_type,
                video_bit_rate=video_bit_rate,
                audio_bit_rate=audio_bit_rate,
                audio_opus_params=audio_opus_params,
                video_vp9_params=video_vp9_params,
                video_av1_params=video_av1_params,
                video_h264_params=video_h264_params,
                websocket_connection_timeout=websocket_connection_timeout,
                websocket_close_timeout=websocket_close_timeout,
                proxy_url=proxy_url,
                user_agent=user_agent,
                data_channel_signaling=data_channel_signaling,
                ignore_disconnect_websocket=ignore_disconnect_websocket,
                data_channels=data_channels,
                disconnect_wait_timeout=disconnect_wait_timeout,
                audio_frame_transformer=audio_frame_transformer,
                video_frame_transformer=video_frame_transformer,
                degradation_preference=degradation_preference,
                **options,
            )
        for warning in caught:
            warnings.warn(warning.message, warning.category, stacklevel=2)
        return SoraConnection._create(conn)

