"""Type stub for ``hibiki._core``, the Rust data plane (crates/py over crates/engine).

Two engines live here:

* :class:`Sfu` — the server side. Shard threads own UDP sockets, channels and
  connections, and forward RTP without Python.
* :class:`ClientEngine` — the client side. One thread per process hosts every
  client connection, takes encoded frames in and gives encoded frames out.

Both report through a queue of :class:`Event` objects. ``fileno()`` is a file
descriptor that becomes readable when events are pending, so an asyncio loop
can ``loop.add_reader(engine.fileno(), drain)``; ``poll_events()`` drains
without blocking and clears the wake-up; ``wait_events(timeout)`` blocks (with
the GIL released) for callers without a loop.
"""

from typing import Literal, Required, TypedDict

from typing_extensions import Buffer

EventKind = Literal[
    # both engines
    "connected",  # ICE and DTLS are up
    "closed",  # the connection is gone; ``reason`` says why
    # Sfu only
    "offer",  # renegotiation: send ``sdp`` to the client as a re-offer
    "track_published",  # a connection's upstream track was negotiated
    "layer_switched",  # a subscription now forwards simulcast layer ``rid`` of ``stream_id``
    "spotlight_focused",  # the publisher ``connection`` is now one of its channel's loudest speakers
    "spotlight_unfocused",  # ... and is no longer
    # ClientEngine only
    "track_added",  # a remote track (m-line we receive) appeared
    "track_removed",  # a remote track was stopped/removed by the server
    "frame",  # an encoded frame of a remote track
    "keyframe_request",  # the far end asks for a keyframe on our track ``mid`` (layer ``rid``)
    "bitrate",  # send-side bandwidth estimate changed (``bitrate`` bps)
    # both engines: data channels (``label``)
    "channel_open",
    "channel_data",  # ``data`` holds the message; on the Sfu only for non-messaging labels
    "channel_close",
]

class Event:
    """One thing that happened in an engine. Fields not relevant to ``kind`` are None."""

    kind: EventKind
    connection: str
    """Server: the connection_id. Client: the handle returned by ``ClientEngine.connect``."""
    mid: str | None
    media: Literal["audio", "video"] | None
    codec: str | None
    """Codec name of a frame, e.g. ``"VP8"`` or ``"OPUS"``."""
    sdp: str | None
    data: bytes | None
    """Encoded frame payload (``frame``)."""
    rtp_time: int | None
    """Frame timestamp in the codec clock (90 kHz video, 48 kHz Opus), extended to 64 bits."""
    keyframe: bool | None
    contiguous: bool | None
    """False when frames were lost before this one (the decoder should expect a keyframe)."""
    stream_id: str | None
    """msid stream id of a remote track; on our server it is the sender's connection_id."""
    track_id: str | None
    bitrate: int | None
    reason: str | None
    label: str | None
    """Data channel label (``channel_*`` events)."""
    payload_type: int | None
    """``frame``: the RTP payload type it arrived with."""
    ssrc: int | None
    """``frame``: the sender's SSRC (None until str0m has mapped it)."""
    sequence_number: int | None
    """``frame``: extended RTP sequence number of the frame's first packet."""
    audio_level: int | None
    """``frame`` (audio): RFC 6464 level in -dBov, 0 loudest .. 127 silence."""
    capture_time_ms: float | None
    """``frame``: the sender's capture time, ms since the Unix epoch on the sender's
    clock (abs-capture-time, else the last RTCP sender report). Equal values on an
    audio and a video frame of one sender mean they were captured together."""
    picture_id: int | None
    """``frame`` (VP8/VP9): extended picture id from the payload descriptor."""
    temporal_index: int | None
    spatial_index: int | None
    rid: str | None
    """``layer_switched``: the simulcast layer now forwarded on the subscriber's
    ``mid`` (the sender is ``stream_id``). ``keyframe_request``: the layer the
    keyframe is asked for, when we send simulcast."""
    previous_rid: str | None
    """``layer_switched``: the layer forwarded before (None for the first)."""
    frames: FrameQueue | None
    """Client ``track_added`` on a connection made with ``route_frames=True``: the
    queue this track's ``frame`` events go to instead of the engine's event queue."""

class FrameQueue:
    """The received frames of one remote track, straight from the engine thread.

    A decoder thread blocks in :meth:`wait` (the GIL released) instead of the
    frames taking a detour through the asyncio loop: one wake-up per frame
    instead of two. Bounded (60 video frames, 100 audio packets): a consumer
    that falls behind loses the backlog and is told so.
    """

    def wait(self, timeout: float, max: int = 64) -> tuple[list[Event], bool, bool]:
        """Block up to ``timeout`` seconds until frames arrive, :meth:`wake` or :meth:`close`;
        return ``(frames, overflowed, closed)``: up to ``max`` ``frame`` events in arrival
        order, whether frames were dropped before them, and whether no frame will come again."""
    def wake(self) -> None:
        """Make the current or next :meth:`wait` return at once (the consumer has other work)."""
    def close(self) -> None:
        """Stop the queue: pending and later frames are dropped, waits return closed."""
    @property
    def closed(self) -> bool: ...
    @property
    def dropped(self) -> int:
        """Frames dropped so far because the consumer fell behind."""

class DataChannelSpec(TypedDict, total=False):
    """A data channel the server opens on a connection (for ``Sfu.create_connection``)."""

    label: Required[str]
    ordered: bool  # default True
    max_packet_life_time: int | None  # ms; partial reliability
    max_retransmits: int | None
    protocol: str
    messaging: bool
    """Forward messages between connections in the shard (default: label starts with '#').
    Other labels reach the control plane as ``channel_data`` events."""
    send: bool  # the client may send on it (default True)
    recv: bool  # the client receives others' messages on it (default True)
    header: bool  # prefix forwarded messages with the 26-byte sender connection_id (default False)
    compress: bool  # zlib on this label both ways; forwarding re-compresses per receiver (default False)

class OpusParams(TypedDict, total=False):
    """Opus fmtp a connection asks for (Sora's ``audio.opus_params``)."""

    stereo: bool
    sprop_stereo: bool
    useinbandfec: bool
    usedtx: bool
    minptime: int

class CreatedConnection:
    """The result of :meth:`Sfu.create_connection`."""

    sdp: str
    """The server's SDP offer (candidates included, upstream m-lines first)."""
    audio_mid: str | None
    video_mid: str | None

class ShardStats:
    rx_packets: int
    tx_packets: int
    forwarded_packets: int
    connections: int
    send_dropped: int
    """Datagrams the shard dropped because its socket's send buffer was full."""

class Sfu:
    """The SFU data plane.

    >>> sfu = Sfu("127.0.0.1", 0)
    >>> created = sfu.create_connection("room", "CONN1", send_audio=True, send_video=True, recv=True)
    >>> sfu.accept_answer("CONN1", answer_sdp)
    """

    def __init__(
        self,
        bind_ip: str = "127.0.0.1",
        port: int = 0,
        public_ip: str | None = None,
        shards: int = 1,
    ) -> None: ...
    @property
    def rtc_ports(self) -> list[int]:
        """The UDP port of each shard."""
    def fileno(self) -> int: ...
    def poll_events(self, max: int = 256) -> list[Event]: ...
    def wait_events(self, timeout: float, max: int = 256) -> list[Event]: ...
    def create_connection(
        self,
        channel_id: str,
        connection_id: str,
        *,
        send_audio: bool,
        send_video: bool,
        recv: bool,
        video_codec: str = "VP8",
        audio_codec: str = "OPUS",
        data_channels: list[DataChannelSpec] | None = None,
        opus_params: OpusParams | None = None,
        simulcast_rids: list[str] | None = None,
        simulcast_layer: int | None = 2,
        bandwidth_estimation: bool = False,
        spotlight: tuple[int, int | None, int | None] | None = None,
    ) -> CreatedConnection:
        """Create a connection in ``channel_id`` and return the server's offer.

        ``send_*``: the client publishes (the offer gets recvonly upstream m-lines).
        ``recv``: the client subscribes to the channel's other tracks.
        ``data_channels``: opened by the server once SCTP is up (the offer
        then has an application m-line).
        ``opus_params``: Sora's ``audio.opus_params``; stereo, sprop_stereo,
        useinbandfec, usedtx and minptime go into the offer's Opus fmtp.
        ``simulcast_rids``: the client publishes its video as these simulcast
        layers, lowest quality first (``a=simulcast:recv`` in the offer).
        ``simulcast_layer``: the layer (index into a sender's RIDs) this
        connection receives from simulcast senders; None: no video from them.
        ``bandwidth_estimation``: estimate the bandwidth towards the client
        (TWCC) and cap its simulcast layers to what fits (str0m then paces
        what it sends at the estimate).
        ``spotlight``: ``(number, focus_layer, unfocus_layer)``: the channel
        focuses on its ``number`` loudest speakers (RFC 6464 audio levels);
        this connection gets their video at ``focus_layer`` and the others'
        at ``unfocus_layer`` (None: no video). ``spotlight_focused`` /
        ``spotlight_unfocused`` events name the publisher (``connection``).
        Raises ValueError for a duplicate id, an unknown codec or a bad data channel.
        """
    def accept_answer(self, connection_id: str, sdp: str) -> None:
        """Apply the client's answer (or re-answer). Raises ValueError on a bad SDP or no pending offer."""
    def add_remote_candidate(self, connection_id: str, candidate: str) -> None: ...
    def request_keyframe(self, connection_id: str) -> None:
        """Ask a publisher for a keyframe on all its video tracks."""
    def set_simulcast_layer(self, connection_id: str, sender_connection_id: str | None,
                            layer: int | None) -> None:
        """Choose the simulcast layer ``connection_id`` receives from ``sender_connection_id``
        (None: every sender, now and later; clears per-sender choices). ``layer`` None
        stops their video. The switch happens on the layer's next keyframe (requested);
        a paused layer falls back to the next lower live one. Raises ValueError for an
        unknown connection."""
    def send_data(self, connection_id: str, label: str, data: bytes) -> bool:
        """Send a message on an open data channel. False: the send buffer is full.
        Raises ValueError if the channel is not open."""
    def close_channels(self, connection_id: str) -> None:
        """Close every data channel of a connection (SCTP stream reset)."""
    def close_connection(self, connection_id: str) -> None:
        """Remove a connection; its tracks disappear from the others (re-offer events follow)."""
    def stats(self) -> list[ShardStats]: ...
    def close(self) -> None:
        """Stop every shard thread. Idempotent."""

class ClientEngine:
    """The client data plane: one thread hosting every client connection of the process."""

    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def poll_events(self, max: int = 256) -> list[Event]: ...
    def wait_events(self, timeout: float, max: int = 256) -> list[Event]: ...
    def connect(self, offer_sdp: str, *, route_frames: bool = False) -> tuple[str, str]:
        """Create a connection from the server's offer: returns (handle, answer_sdp).

        ``route_frames``: each remote track's ``track_added`` event carries a
        :class:`FrameQueue` (``event.frames``) that takes that track's frames,
        which then no longer come through :meth:`poll_events`."""
    def accept_offer(self, handle: str, sdp: str) -> str:
        """Apply a re-offer and return the re-answer SDP."""
    def add_remote_candidate(self, handle: str, candidate: str) -> None: ...
    def write_frame(
        self,
        handle: str,
        mid: str,
        codec: str,
        data: bytes,
        rtp_time: int,
        capture_age: float | None = None,
        rid: str | None = None,
        audio_level: int | None = None,
    ) -> bool:
        """Queue an encoded frame for our track ``mid``. False if not sendable yet (not connected).

        ``rid``: the simulcast layer the frame belongs to (see ``send_rids``).
        ``audio_level``: audio only, the packet's level in dBov (-127 silence .. 0
        loudest), sent in the RFC 6464 header extension (spotlight, active speaker).

        ``capture_age``: seconds since the frame was captured. RTCP sender reports
        then tie its RTP time to the capture instant, so receivers can line up
        audio and video captured together (lip sync)."""
    def set_desired_bitrate(self, handle: str, bps: int) -> None:
        """The total rate we would like to send at. The bandwidth estimator probes
        towards it; ``bitrate`` events report what the path carries."""
    def send_info(self, handle: str, mid: str, codec: str) -> tuple[int, int]:
        """``(payload_type, ssrc)`` that frames of ``codec`` go out with on ``mid``.
        Raises ValueError before the m-line is negotiated."""
    def send_rids(self, handle: str, mid: str) -> list[str]:
        """The simulcast layers the server asked for on our sending m-line ``mid``,
        lowest quality first; empty without simulcast."""
    def request_keyframe(self, handle: str, mid: str) -> None:
        """Send a PLI for the remote track ``mid``."""
    def send_data(self, handle: str, label: str, data: bytes) -> bool:
        """Send on a data channel the server opened. False: the send buffer is full.
        Raises ValueError if the channel is not open."""
    def close_channels(self, handle: str) -> None:
        """Close every data channel of a connection."""
    def close_connection(self, handle: str) -> None: ...
    def close(self) -> None: ...

# -- audio level -------------------------------------------------------------------------------

def audio_level_dbov(pcm: Buffer) -> int:
    """RFC 6464 level of int16 PCM (any shape, channels interleaved): dBov, rounded,
    -127 (silence, or empty) .. 0 (full scale). Raises ValueError if ``pcm`` is not
    an int16 buffer."""

# -- pixel conversion (hibiki.media.pixels wraps these) ----------------------------------------

def bgr_to_i420(
    bgr: Buffer,
    planes: tuple[Buffer, Buffer, Buffer],
    strides: tuple[int, int, int],
    *,
    colorspace: int = 2,
    full_range: bool = False,
) -> None:
    """Write the C-contiguous ``(h, w, 3)`` uint8 BGR array ``bgr`` into the Y, U, V
    ``planes`` (writable buffers, e.g. an ``av.VideoFrame``'s, rows ``strides`` bytes
    apart), with the GIL released. ``colorspace`` is FFmpeg's AVColorSpace number
    (1 BT.709, 9 BT.2020, anything else BT.601). Raises ValueError on odd sizes,
    short, read-only or overlapping buffers."""

def i420_to_bgr(
    planes: tuple[Buffer, Buffer, Buffer],
    strides: tuple[int, int, int],
    out: Buffer,
    *,
    colorspace: int = 2,
    full_range: bool = False,
) -> None:
    """Convert I420 ``planes`` into ``out``, a writable C-contiguous ``(h, w, 3)`` uint8 array."""

def nv12_to_bgr(
    planes: tuple[Buffer, Buffer],
    strides: tuple[int, int],
    out: Buffer,
    *,
    colorspace: int = 2,
    full_range: bool = False,
) -> None:
    """Convert NV12 ``planes`` (Y, interleaved UV) into ``out``, as :func:`i420_to_bgr`."""
