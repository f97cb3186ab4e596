//! Events the engines report to the control plane (Python), as plain data.

use std::sync::Arc;

use crate::frames::FrameQueue;

/// What happened. Mirrors `EventKind` in `_core.pyi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Connected,
    Closed,
    Offer,
    TrackPublished,
    TrackAdded,
    TrackRemoved,
    Frame,
    KeyframeRequest,
    Bitrate,
    ChannelOpen,
    ChannelData,
    ChannelClose,
    /// SFU: a subscription moved to another simulcast layer.
    LayerSwitched,
    /// SFU: a publisher (`connection`) came into / went out of the spotlight.
    SpotlightFocused,
    SpotlightUnfocused,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connected => "connected",
            EventKind::Closed => "closed",
            EventKind::Offer => "offer",
            EventKind::TrackPublished => "track_published",
            EventKind::TrackAdded => "track_added",
            EventKind::TrackRemoved => "track_removed",
            EventKind::Frame => "frame",
            EventKind::KeyframeRequest => "keyframe_request",
            EventKind::Bitrate => "bitrate",
            EventKind::ChannelOpen => "channel_open",
            EventKind::ChannelData => "channel_data",
            EventKind::ChannelClose => "channel_close",
            EventKind::LayerSwitched => "layer_switched",
            EventKind::SpotlightFocused => "spotlight_focused",
            EventKind::SpotlightUnfocused => "spotlight_unfocused",
        }
    }
}

/// One event. Fields that do not apply to `kind` are `None`.
#[derive(Debug, Clone)]
pub struct EngineEvent {
    pub kind: EventKind,
    /// Server: connection_id. Client: connection handle.
    pub connection: Arc<str>,
    pub mid: Option<String>,
    pub media: Option<&'static str>,
    pub codec: Option<&'static str>,
    pub sdp: Option<String>,
    pub data: Option<Arc<[u8]>>,
    pub rtp_time: Option<u64>,
    pub keyframe: Option<bool>,
    pub contiguous: Option<bool>,
    pub stream_id: Option<String>,
    pub track_id: Option<String>,
    pub bitrate: Option<u64>,
    pub reason: Option<String>,
    /// Data channel label (`channel_*` events).
    pub label: Option<String>,
    /// What the RTP layer knew about a received frame (`frame` events).
    pub frame: Option<FrameMeta>,
    /// Simulcast layer: the one now forwarded (`layer_switched`), or the
    /// one asked for (`keyframe_request` on the client).
    pub rid: Option<String>,
    pub previous_rid: Option<String>,
    /// Client `track_added` on a connection made with frame routing: the
    /// queue that this track's frames go to instead of the event queue.
    pub frames: Option<Arc<FrameQueue>>,
}

/// RTP-level facts about a received frame, for encoded-frame transforms
/// and A/V sync. Everything the receiver can know without the codec.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameMeta {
    pub payload_type: u8,
    /// The sender's SSRC, once str0m has mapped it.
    pub ssrc: Option<u32>,
    /// Extended sequence number of the frame's first packet.
    pub sequence_number: u64,
    /// RFC 6464 level, -dBov (0 loudest .. 127 silence), from the first packet.
    pub audio_level: Option<i8>,
    /// When the sender captured the frame, in ms since the Unix epoch on the
    /// sender's clock: from abs-capture-time when present, else from the
    /// last RTCP sender report's NTP/RTP pair.
    pub capture_time_ms: Option<f64>,
    /// Codec picture id (VP8/VP9 payload descriptor), extended.
    pub picture_id: Option<u64>,
    pub temporal_index: Option<u8>,
    pub spatial_index: Option<u8>,
}

impl EngineEvent {
    pub fn new(kind: EventKind, connection: Arc<str>) -> Self {
        EngineEvent {
            kind,
            connection,
            mid: None,
            media: None,
            codec: None,
            sdp: None,
            data: None,
            rtp_time: None,
            keyframe: None,
            contiguous: None,
            stream_id: None,
            track_id: None,
            bitrate: None,
            reason: None,
            label: None,
            frame: None,
            rid: None,
            previous_rid: None,
            frames: None,
        }
    }
}

impl EngineEvent {
    /// A data channel event.
    pub fn channel(
        kind: EventKind,
        connection: Arc<str>,
        label: String,
        data: Option<Vec<u8>>,
    ) -> Self {
        let mut e = EngineEvent::new(kind, connection);
        e.label = Some(label);
        e.data = data.map(Arc::from);
        e
    }
}
