"""``Hibiki``: the sora-sdk style factory of sources and connections."""

from __future__ import annotations

import warnings
from typing import Any

from .connection import Connection
from .sources import AudioSource, VideoSource
from .transform import AudioFrameTransformer, VideoFrameTransformer

__all__ = ["Hibiki", "split_kwargs"]

# sora-sdk ``create_connection`` arguments we accept but do not implement yet.
# They are ignored with a warning rather than rejected, so sora-sdk programs run.
_SORA_UNSUPPORTED = frozenset({
    "forwarding_filter", "forwarding_filters",
    "audio_streaming_language_code", "insecure", "client_cert",
    "client_key", "ca_cert", "proxy_username", "proxy_password", "proxy_agent",
    "video_h265_params",
})
# Accepted and meaningless here: we race all URLs at once anyway, and libsora
# itself never uses data_channel_signaling_timeout (sora-signaling.md §12.3).
_SORA_NOOP = frozenset({"disable_signaling_url_randomization", "data_channel_signaling_timeout"})


def split_kwargs(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """Drop (with a warning) the keyword arguments Hibiki does not implement."""
    for name in list(kwargs):
        if name in _SORA_NOOP:
            kwargs.pop(name)
        elif name in _SORA_UNSUPPORTED:
            value = kwargs.pop(name)
            if value not in (None, False):
                warnings.warn(
                    f"{where}: {name}={value!r} is not supported by Hibiki yet and is ignored",
                    UserWarning,
                    stacklevel=3,
                )
        else:
            kwargs.pop(name)
            warnings.warn(
                f"{where}: unknown argument {name!r} is ignored (check its spelling)",
                UserWarning,
                stacklevel=3,
            )
    return kwargs


class Hibiki:
    """Factory of sources and connections, with sora-sdk's ``Sora`` names.

    One instance can create any number of connections; a source can be given
    to several connections and is encoded once for all of them.

    >>> sdk = hibiki.Hibiki()
    >>> video = sdk.create_video_source()
    >>> conn = sdk.create_connection(
    ...     signaling_urls=["ws://127.0.0.1:5000/signaling"],
    ...     role="sendonly", channel_id="room", video_source=video)
    >>> conn.connect()
    >>> video.on_captured(bgr)          # uint8 [h, w, 3]
    >>> conn.disconnect()

    ``video_codec_preference`` chooses the FFmpeg implementation of each
    codec for every connection (software unless set): an
    :class:`~hibiki.media.codecs.Implementation` or its name
    (``"nvidia_video_codec_sdk"``), a mapping codec -> implementation, a
    :class:`~hibiki.media.codecs.CodecPreference` or sora-sdk's
    ``SoraVideoCodecPreference``. As in sora-sdk, an implementation this
    machine lacks raises ``RuntimeError`` here, naming what is missing.
    ``openh264`` and other sora-sdk constructor arguments are accepted for
    compatibility and ignored (codecs come from FFmpeg).
    """

    def __init__(self, openh264: str | None = None, video_codec_preference: Any = None,
                 **kwargs: Any) -> None:
        self.openh264 = openh264
        if video_codec_preference is not None:
            # Imported only when used: hibiki.media imports PyAV.
            from hibiki.media.codecs import CodecPreference

            video_codec_preference = CodecPreference.coerce(video_codec_preference)
            video_codec_preference.check()
        self.video_codec_preference = video_codec_preference
        """The :class:`~hibiki.media.codecs.CodecPreference` given to every connection (None: software)."""
        self._extra = kwargs

    def create_audio_source(self, channels: int, sample_rate: int, *,
                            queue_size_ms: int | None = None) -> AudioSource:
        """A source to feed ``int16 [samples, channels]`` PCM at ``sample_rate`` Hz.

        ``queue_size_ms`` (a Hibiki extension) makes it play its audio out in
        real time from a queue of that size, for producers that run ahead
        such as a TTS; see :class:`~hibiki.AudioSource`.
        """
        return AudioSource(channels, sample_rate, queue_size_ms=queue_size_ms)

    def create_video_source(self) -> VideoSource:
        """A source to feed ``uint8 [height, width, 3]`` BGR pictures."""
        return VideoSource()

    def create_connection(
        self,
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
        video_bit_rate: int | None = None,
        audio_bit_rate: int | None = None,
        audio_opus_params: dict[str, Any] | None = None,
        video_vp9_params: dict[str, Any] | None = None,
        video_av1_params: dict[str, Any] | None = None,
        video_h264_params: dict[str, Any] | None = None,
        video_codec_preference: Any = None,
        websocket_connection_timeout: float | None = None,
        websocket_close_timeout: float | None = None,
        connect_timeout: float | None = 30.0,
        proxy_url: str | None = None,
        user_agent: str | None = None,
        data_channel_signaling: bool | None = None,
        ignore_disconnect_websocket: bool | None = None,
        data_channels: list[dict[str, Any]] | None = None,
        disconnect_wait_timeout: float | None = None,
        audio_frame_transformer: AudioFrameTransformer | None = None,
        video_frame_transformer: VideoFrameTransformer | None = None,
        degradation_preference: int | None = None,
        simulcast: bool | None = None,
        simulcast_rid: str | None = None,
        simulcast_request_rid: str | None = None,
        spotlight: bool | None = None,
        spotlight_number: int | None = None,
        spotlight_focus_rid: str | None = None,
        spotlight_unfocus_rid: str | None = None,
        **kwargs: Any,
    ) -> Connection:
        """Create a :class:`~hibiki.Connection` (not connected yet: call ``connect()``).

        Arguments follow sora-sdk's ``Sora.create_connection``. ``video_bit_rate``
        and ``audio_bit_rate`` are in kbps. sora-sdk arguments that Hibiki does
        not implement yet (forwarding filters, TLS options...) are
        ignored with a ``UserWarning``. ``connect_timeout`` (seconds) bounds
        ``connect()`` as a whole.

        ``audio_opus_params`` (sora-sdk's keys: ``stereo``, ``sprop_stereo``,
        ``channels``, ``useinbandfec``, ``usedtx``, ``ptime``, ``minptime``,
        ``maxplaybackrate``, ``clock_rate``) go to the server and drive this
        connection's Opus encoder (:func:`hibiki.media.opus_encoder_settings`);
        a bad value raises ``ValueError`` here.

        DataChannels: ``data_channel_signaling=True`` moves signaling to
        DataChannels once the server sends ``switched``;
        ``ignore_disconnect_websocket=True`` then drops the WebSocket;
        ``data_channels`` asks for messaging labels, each a dict with
        ``label`` (``"#..."``) and ``direction`` and optionally ``ordered``,
        ``compress``, ``max_packet_life_time``, ``max_retransmits``,
        ``protocol``, ``header``; ``disconnect_wait_timeout`` (seconds, default
        5) bounds a disconnect over DataChannels.

        ``video_codec_preference`` (Hibiki extension) overrides the factory's
        for this connection; same forms as ``Hibiki(video_codec_preference=...)``.

        Encoded-frame transforms: ``audio_frame_transformer`` /
        ``video_frame_transformer`` (an
        :class:`~hibiki.client.transform.AudioFrameTransformer` /
        :class:`~hibiki.client.transform.VideoFrameTransformer`) see every
        frame this connection sends, after encoding and before packetizing,
        as in sora-sdk (e.g. :mod:`hibiki.client.e2ee`).

        Sending video follows the connection's bandwidth estimate (up to
        ``video_bit_rate``); when that is too low for the captured picture,
        ``degradation_preference`` (sora-sdk's ``SoraDegradationPreference``:
        ``MAINTAIN_FRAMERATE`` scales the picture down, ``MAINTAIN_RESOLUTION``
        lowers the frame rate, ``BALANCED``, the default, does both,
        ``DISABLED`` neither) says what gives; see :mod:`hibiki.media.adaptation`.

        Simulcast: ``simulcast=True`` publishes the video source as three
        layers, ``r0`` (a quarter of the width and height), ``r1`` (half)
        and ``r2`` (full), with ``video_bit_rate`` split over them, as the
        server's offer (``encodings``) says; one source, three encoders.
        Receivers choose the layer they get with ``simulcast_rid``
        (``r0``..``r2``; ``simulcast_request_rid`` also takes ``none``) and
        change it at run time with ``conn.request_simulcast_rid(rid)`` or
        ``track.request_simulcast_rid(rid)``.

        Spotlight: ``spotlight=True`` joins a spotlight channel: senders
        send simulcast, and the server focuses on the ``spotlight_number``
        loudest speakers (1 by default), whose video this connection gets
        at ``spotlight_focus_rid`` (``r2``) while the others come at
        ``spotlight_unfocus_rid`` (``r0``). ``spotlight.focused`` /
        ``spotlight.unfocused`` notifies say who is in focus.
        """
        split_kwargs(kwargs, "create_connection")
        return Connection(
            signaling_urls=signaling_urls,
            role=role,
            channel_id=channel_id,
            client_id=client_id,
            bundle_id=bundle_id,
            metadata=metadata,
            signaling_notify_metadata=signaling_notify_metadata,
            audio_source=audio_source,
            video_source=video_source,
            audio=audio,
            video=video,
            audio_codec_type=audio_codec_type,
            video_codec_type=video_codec_type,
            audio_bit_rate=audio_bit_rate,
            video_bit_rate=video_bit_rate,
            audio_opus_params=audio_opus_params,
            video_vp9_params=video_vp9_params,
            video_av1_params=video_av1_params,
            video_h264_params=video_h264_params,
            video_codec_preference=(
                self.video_codec_preference if video_codec_preference is None else video_codec_preference),
            websocket_connection_timeout=(
                30.0 if websocket_connection_timeout is None else websocket_connection_timeout),
            websocket_close_timeout=3.0 if websocket_close_timeout is None else websocket_close_timeout,
            connect_timeout=connect_timeout,
            proxy_url=proxy_url,
            user_agent=user_agent,
            data_channel_signaling=data_channel_signaling,
            ignore_disconnect_websocket=ignore_disconnect_websocket,
            data_channels=data_channels,
            disconnect_wait_timeout=5.0 if disconnect_wait_timeout is None else disconnect_wait_timeout,
            audio_frame_transformer=audio_frame_transformer,
            video_frame_transformer=video_frame_transformer,
            degradation_preference=degradation_preference,
            simulcast=simulcast,
            simulcast_rid=simulcast_rid,
            simulcast_request_rid=simulcast_request_rid,
            spotlight=spotlight,
            spotlight_number=spotlight_number,
            spotlight_focus_rid=spotlight_focus_rid,
            spotlight_unfocus_rid=spotlight_unfocus_rid,
        )
