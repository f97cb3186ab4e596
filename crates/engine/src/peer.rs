//! The one module that touches str0m.
//!
//! str0m breaks its API on nearly every minor release, so everything the rest
//! of the engine needs from it goes through [`Peer`] and the plain types
//! below. An upgrade of str0m should only ever edit this file.
//!
//! A `Peer` is one `str0m::Rtc` plus the bits of negotiation state that
//! str0m leaves to the application (the pending local offer). The
//! single-mutation invariant is the caller's to honour: after every mutation
//! (`handle_*`, `write_*`, `request_keyframe*`, SDP operations) drain
//! [`Peer::poll`] until it returns [`Output::Timeout`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::config::DtlsCert;
use str0m::format::{Codec, CodecConfig, CodecExtra, PayloadParams};

use crate::event::FrameMeta;
use str0m::media::Simulcast;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo, Vp8Descriptor};
use str0m::{Candidate, Event, IceConnectionState, Input, Output as RtcOutput, Rtc};

pub use str0m::media::{Mid, Rid};
pub use str0m::net::DatagramSend as Datagram;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }
    fn from_str0m(k: MediaKind) -> Self {
        if k.is_audio() {
            Kind::Audio
        } else {
            Kind::Video
        }
    }
    fn to_str0m(self) -> MediaKind {
        match self {
            Kind::Audio => MediaKind::Audio,
            Kind::Video => MediaKind::Video,
        }
    }
}

/// One change in a local offer.
#[derive(Debug, Clone)]
pub enum OfferChange {
    /// An m-line on which we receive the remote's upstream track; with
    /// `rids`, as simulcast layers (`a=rid:<rid> recv`, `a=simulcast:recv`),
    /// lowest quality first.
    AddRecv { kind: Kind, rids: Vec<String> },
    /// An m-line on which we send a forwarded track, with its msid.
    AddSend {
        kind: Kind,
        stream_id: String,
        track_id: String,
    },
    /// Stop (port 0) an m-line.
    Stop(Mid),
    /// A data channel (the first one adds the application m-line). The
    /// offerer opens it once SCTP is up.
    AddChannel(ChannelSpec),
}

/// A data channel's label and SCTP options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    pub label: String,
    pub ordered: bool,
    /// Partial reliability: give up after this many milliseconds...
    pub max_packet_life_time: Option<u16>,
    /// ...or after this many retransmissions.
    pub max_retransmits: Option<u16>,
    pub protocol: String,
}

impl ChannelSpec {
    /// A reliable, ordered channel.
    pub fn reliable(label: &str) -> Self {
        ChannelSpec {
            label: label.to_string(),
            ordered: true,
            max_packet_life_time: None,
            max_retransmits: None,
            protocol: String::new(),
        }
    }

    fn to_str0m(&self) -> ChannelConfig {
        let reliability = match (self.max_packet_life_time, self.max_retransmits) {
            (Some(ms), _) => Reliability::MaxPacketLifetime { lifetime: ms },
            (None, Some(n)) => Reliability::MaxRetransmits { retransmits: n },
            (None, None) => Reliability::Reliable,
        };
        ChannelConfig {
            label: self.label.clone(),
            ordered: self.ordered,
            reliability,
            negotiated: None,
            protocol: self.protocol.clone(),
        }
    }
}

/// Opus fmtp parameters a connection asked for (Sora's `audio.opus_params`).
/// `None` keeps str0m's default for that parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpusFmtp {
    pub stereo: Option<bool>,
    pub sprop_stereo: Option<bool>,
    pub use_inband_fec: Option<bool>,
    pub use_dtx: Option<bool>,
    pub min_p_time: Option<u8>,
}

impl OpusFmtp {
    fn apply(&self, cfg: &mut CodecConfig) {
        if *self == OpusFmtp::default() {
            return;
        }
        let params = cfg
            .params()
            .iter()
            .cloned()
            .map(|p| {
                if p.spec().codec != Codec::Opus {
                    return p;
                }
                let mut spec = p.spec();
                let f = &mut spec.format;
                f.stereo = self.stereo.or(f.stereo);
                f.sprop_stereo = self.sprop_stereo.or(f.sprop_stereo);
                f.use_inband_fec = self.use_inband_fec.or(f.use_inband_fec);
                f.use_dtx = self.use_dtx.or(f.use_dtx);
                f.min_p_time = self.min_p_time.or(f.min_p_time);
                PayloadParams::new(p.pt(), p.resend(), spec)
            })
            .collect();
        *cfg = CodecConfig::new_from_payload_params(params);
    }
}

/// An RTP packet received in RTP mode, with what forwarding needs.
#[derive(Debug, Clone)]
pub struct RtpIn {
    pub mid: Mid,
    /// The simulcast layer (RID) the packet belongs to, if the m-line has layers.
    pub rid: Option<Rid>,
    pub pt: u8,
    /// Extended (64-bit) sequence number.
    pub seq: u64,
    /// Extended RTP time in the codec clock.
    pub time: u64,
    pub marker: bool,
    pub payload: Arc<[u8]>,
    pub audio_level: Option<(i8, bool)>,
    pub received: Instant,
}

/// A whole encoded frame received in frame mode.
#[derive(Debug, Clone)]
pub struct FrameIn {
    pub mid: Mid,
    pub codec: &'static str,
    pub kind: Kind,
    pub rtp_time: u64,
    pub keyframe: bool,
    pub contiguous: bool,
    pub data: Arc<[u8]>,
    pub meta: FrameMeta,
}

/// What a peer reports, in our vocabulary.
#[derive(Debug)]
pub enum PeerEvent {
    /// ICE and DTLS are up.
    Connected,
    /// ICE lost the remote (consent expired) or the remote closed DTLS;
    /// the text says which.
    Disconnected(&'static str),
    Rtp(RtpIn),
    Frame(FrameIn),
    /// The remote asks for a keyframe on one of our sending m-lines (and
    /// simulcast layer, when we send several).
    KeyframeRequest(Mid, Option<Rid>),
    /// Send-side bandwidth estimate, bits per second.
    Bitrate(u64),
    /// A data channel is open (ours or the remote's).
    ChannelOpen(String),
    /// A message on a data channel.
    ChannelData {
        label: String,
        data: Vec<u8>,
        binary: bool,
    },
    ChannelClose(String),
    /// An RTCP sender report on one of our receiving m-lines: RTP time
    /// `rtp` was the sender's wall clock `ntp`.
    SenderReport {
        mid: Mid,
        ntp: std::time::SystemTime,
        rtp: u64,
        received: Instant,
    },
}

/// Output of [`Peer::poll`].
pub enum Output {
    Timeout(Instant),
    Transmit {
        source: SocketAddr,
        destination: SocketAddr,
        data: Datagram,
    },
    Event(PeerEvent),
}

/// A media line as negotiated, for telling Python about tracks.
#[derive(Debug, Clone)]
pub struct MediaInfo {
    pub mid: Mid,
    pub kind: Kind,
    pub stream_id: String,
    pub track_id: String,
    pub receiving: bool,
    pub sending: bool,
    pub stopped: bool,
}

/// Codec names as they appear in signaling (`video.codec_type`).
pub fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Opus => "OPUS",
        Codec::Vp8 => "VP8",
        Codec::Vp9 => "VP9",
        Codec::Av1 => "AV1",
        Codec::H264 => "H264",
        Codec::H265 => "H265",
        Codec::H266 => "H266",
        Codec::PCMU => "PCMU",
        Codec::PCMA => "PCMA",
        Codec::G722 => "G722",
        _ => "UNKNOWN",
    }
}

fn codec_from_name(name: &str) -> Option<Codec> {
    Some(match name.to_ascii_uppercase().as_str() {
        "OPUS" => Codec::Opus,
        "VP8" => Codec::Vp8,
        "VP9" => Codec::Vp9,
        "AV1" => Codec::Av1,
        "H264" => Codec::H264,
        "H265" => Codec::H265,
        _ => return None,
    })
}

/// Whether `name` is a codec the engine can carry.
pub fn is_known_codec(name: &str) -> bool {
    codec_from_name(name).is_some()
}

/// One DTLS certificate per process: generating one costs milliseconds of
/// CPU, which would otherwise be paid on every join.
fn shared_cert() -> DtlsCert {
    static CERT: OnceLock<DtlsCert> = OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .expect("DTLS certificate generation")
    })
    .clone()
}

/// Above this audio level (dBov) a packet is flagged as voice.
const VOICE_LEVEL: i8 = -50;

/// Where a subscriber's bandwidth estimate starts, kbit/s.
const INITIAL_ESTIMATE_KBPS: u64 = 2500;

/// The role a peer plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// SFU side: ICE-lite, RTP mode (forward packets without repacketizing).
    Server,
    /// SFU side with a send-side bandwidth estimate (TWCC), for choosing
    /// simulcast layers. str0m then paces what it sends at the estimate,
    /// which costs keyframes some latency: only subscribers that can use
    /// the estimate get it.
    ServerWithEstimate,
    /// SDK side: full ICE, frame mode (whole encoded frames in and out).
    Client,
}

/// One WebRTC peer connection.
pub struct Peer {
    rtc: Rtc,
    pending: Option<SdpPendingOffer>,
    local_addr: Option<SocketAddr>,
    /// Open data channels by id; labels are how the rest of the engine
    /// and signaling name them.
    channels: HashMap<ChannelId, String>,
}

impl Peer {
    /// A new peer. `ufrag` lets the SFU choose the ICE username fragment so
    /// that it can route STUN by it.
    /// `preferred_video` moves that codec to the front of the offered list
    /// (the remote picks the first it supports) while keeping the others, so
    /// that tracks of any codec can still be forwarded to this peer.
    pub fn new(
        role: Role,
        now: Instant,
        ufrag: Option<&str>,
        preferred_video: Option<&str>,
        opus: OpusFmtp,
    ) -> Peer {
        // Audio sender reports every second rather than RFC 3550's five, so
        // that receivers can line audio up with video within a second.
        let mut cfg = Rtc::builder()
            .set_dtls_cert(shared_cert())
            .set_rtcp_report_interval_audio(std::time::Duration::from_secs(1));
        opus.apply(cfg.codec_config());
        if let Some(codec) = preferred_video.and_then(codec_from_name) {
            let mut params = cfg.codec_config().params().to_vec();
            // Stable: keeps each codec's own order (e.g. H.264 profiles).
            params.sort_by_key(|p| p.spec().codec != codec);
            *cfg.codec_config() = CodecConfig::new_from_payload_params(params);
        }
        if let Some(ufrag) = ufrag {
            cfg = cfg.set_local_ice_credentials(str0m::IceCreds {
                ufrag: ufrag.to_string(),
                pass: random_token(24),
            });
        }
        cfg = match role {
            Role::Server => cfg.set_ice_lite(true).set_rtp_mode(true),
            Role::ServerWithEstimate => cfg
                .set_ice_lite(true)
                .set_rtp_mode(true)
                // Loopback and LAN subscribers take a full layer at once; a
                // smaller link is found within a second or two.
                .enable_bwe(Some(str0m::bwe::Bitrate::kbps(INITIAL_ESTIMATE_KBPS))),
            Role::Client => cfg
                .enable_bwe(Some(str0m::bwe::Bitrate::kbps(1500)))
                // Our frames are small on loopback; a shorter audio reorder
                // window keeps receive latency low.
                .set_reordering_size_audio(5),
        };
        let rtc = cfg.build(now);
        Peer {
            rtc,
            pending: None,
            local_addr: None,
            channels: HashMap::new(),
        }
    }

    /// Add a host candidate on which this peer can be reached.
    pub fn add_local_candidate(&mut self, addr: SocketAddr) -> Result<(), String> {
        let c = Candidate::host(addr, "udp").map_err(|e| e.to_string())?;
        self.rtc.add_local_candidate(c);
        if self.local_addr.is_none() {
            self.local_addr = Some(addr);
        }
        Ok(())
    }

    /// Add a trickled remote candidate (`candidate:...`, with or without `a=`).
    pub fn add_remote_candidate(&mut self, line: &str) -> Result<(), String> {
        let line = line.trim().trim_start_matches("a=");
        let c = Candidate::from_sdp_string(line).map_err(|e| format!("bad candidate: {e}"))?;
        self.rtc.add_remote_candidate(c);
        Ok(())
    }

    /// Apply `changes` as a local offer. Returns the mids of the changes in
    /// order (None for `Stop`) and the SDP, or None if nothing needs
    /// negotiating. Only one local offer may be outstanding.
    pub fn create_offer(
        &mut self,
        changes: &[OfferChange],
    ) -> Result<(Vec<Option<Mid>>, Option<String>), String> {
        if self.pending.is_some() {
            return Err("an offer is already outstanding".into());
        }
        let mut api = self.rtc.sdp_api();
        let mut mids = Vec::with_capacity(changes.len());
        for change in changes {
            mids.push(match change {
                OfferChange::AddRecv { kind, rids } => {
                    let simulcast = (!rids.is_empty()).then(|| {
                        let mut s = Simulcast::new();
                        for rid in rids {
                            s.add_recv_layer(str0m::media::SimulcastLayer::new(rid));
                        }
                        s
                    });
                    Some(api.add_media(kind.to_str0m(), Direction::RecvOnly, None, None, simulcast))
                }
                OfferChange::AddSend {
                    kind,
                    stream_id,
                    track_id,
                } => Some(api.add_media(
                    kind.to_str0m(),
                    Direction::SendOnly,
                    Some(stream_id.clone()),
                    Some(track_id.clone()),
                    None,
                )),
                OfferChange::Stop(mid) => {
                    api.stop_media(*mid);
                    None
                }
                OfferChange::AddChannel(spec) => {
                    api.add_channel_with_config(spec.to_str0m());
                    None
                }
            });
        }
        match api.apply() {
            Some((offer, pending)) => {
                self.pending = Some(pending);
                Ok((mids, Some(offer.to_sdp_string())))
            }
            None => Ok((mids, None)),
        }
    }

    /// Whether a local offer waits for its answer.
    pub fn has_pending_offer(&self) -> bool {
        self.pending.is_some()
    }

    /// Apply the remote answer to our outstanding offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(sdp_error)?;
        let pending = self
            .pending
            .take()
            .ok_or_else(|| "no offer is outstanding".to_string())?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("answer rejected: {e}"))
    }

    /// Apply a remote offer and return our answer.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, String> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(sdp_error)?;
        self.pending = None;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| format!("offer rejected: {e}"))?;
        Ok(answer.to_sdp_string())
    }

    /// Every audio/video m-line as negotiated now.
    pub fn media_lines(&self, mids: impl IntoIterator<Item = Mid>) -> Vec<MediaInfo> {
        mids.into_iter()
            .filter_map(|mid| self.media_info(mid))
            .collect()
    }

    /// One m-line as negotiated now.
    pub fn media_info(&self, mid: Mid) -> Option<MediaInfo> {
        let m = self.rtc.media(mid)?;
        Some(MediaInfo {
            mid,
            kind: Kind::from_str0m(m.kind()),
            stream_id: m.stream_id().to_string(),
            track_id: m.track_id().to_string(),
            receiving: m.direction().is_receiving(),
            sending: m.direction().is_sending(),
            stopped: m.disabled(),
        })
    }

    /// Feed a received datagram.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        buf: &[u8],
    ) -> Result<(), String> {
        let recv = Receive::new(Protocol::Udp, source, destination, buf)
            .map_err(|e| format!("unparseable datagram: {e}"))?;
        self.rtc
            .handle_input(Input::Receive(now, recv))
            .map_err(|e| e.to_string())
    }

    /// Whether this peer would take a datagram from `source` (used to
    /// confirm a demultiplexing guess, never to scan).
    pub fn accepts(&self, source: SocketAddr, destination: SocketAddr, buf: &[u8]) -> bool {
        match Receive::new(Protocol::Udp, source, destination, buf) {
            Ok(recv) => self.rtc.accepts(&Input::Receive(Instant::now(), recv)),
            Err(_) => false,
        }
    }

    /// Advance time.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), String> {
        self.rtc
            .handle_input(Input::Timeout(now))
            .map_err(|e| e.to_string())
    }

    /// Whether the peer is still usable.
    pub fn is_alive(&self) -> bool {
        self.rtc.is_alive()
    }

    /// Hard stop.
    pub fn disconnect(&mut self) {
        self.rtc.disconnect();
    }

    /// Graceful stop: tells the remote (SCTP shutdown, DTLS close_notify)
    /// so it learns at once instead of after an ICE timeout. Drain the
    /// peer afterwards to send those packets.
    pub fn close(&mut self) {
        if self.rtc.close().is_err() {
            self.rtc.disconnect();
        }
    }

    /// Next output. Events str0m reports that we do not use come back as
    /// `Ok(None)`; keep polling.
    pub fn poll(&mut self) -> Result<Option<Output>, String> {
        let out = self.rtc.poll_output().map_err(|e| e.to_string())?;
        Ok(match out {
            RtcOutput::Timeout(t) => Some(Output::Timeout(t)),
            RtcOutput::Transmit(t) => Some(Output::Transmit {
                source: t.source,
                destination: t.destination,
                data: t.contents,
            }),
            RtcOutput::Event(e) => self.translate(e).map(Output::Event),
        })
    }

    fn translate(&mut self, e: Event) -> Option<PeerEvent> {
        match e {
            Event::Connected => Some(PeerEvent::Connected),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                Some(PeerEvent::Disconnected("ICE disconnected"))
            }
            Event::Closed => Some(PeerEvent::Disconnected("closed by the remote peer")),
            Event::RtpPacket(p) => {
                // Senders stop sending the MID and RID extensions once an
                // RTCP receiver report acknowledged their SSRC; str0m knows
                // the mapping from the receive stream.
                let (mid, rid) = match (p.header.ext_vals.mid, p.header.ext_vals.rid) {
                    (Some(m), Some(r)) => (m, Some(r)),
                    (ext_mid, _) => match self.rtc.direct_api().stream_rx(&p.header.ssrc) {
                        Some(rx) => (rx.mid(), rx.rid()),
                        None => (ext_mid?, None),
                    },
                };
                Some(PeerEvent::Rtp(RtpIn {
                    mid,
                    rid,
                    pt: *p.header.payload_type,
                    seq: *p.seq_no,
                    time: p.time.numer(),
                    marker: p.header.marker,
                    audio_level: p
                        .header
                        .ext_vals
                        .audio_level
                        .map(|l| (l, p.header.ext_vals.voice_activity.unwrap_or(false))),
                    payload: p.payload,
                    received: p.timestamp,
                }))
            }
            Event::MediaData(d) => {
                let keyframe = d.is_keyframe();
                let meta = self.frame_meta(&d);
                let spec = d.params.spec();
                Some(PeerEvent::Frame(FrameIn {
                    mid: d.mid,
                    codec: codec_name(spec.codec),
                    kind: if spec.codec.is_audio() {
                        Kind::Audio
                    } else {
                        Kind::Video
                    },
                    rtp_time: d.time.numer(),
                    keyframe,
                    contiguous: d.contiguous,
                    data: d.data,
                    meta,
                }))
            }
            Event::KeyframeRequest(r) => Some(PeerEvent::KeyframeRequest(r.mid, r.rid)),
            Event::SenderFeedback(f) => Some(PeerEvent::SenderReport {
                mid: f.mid,
                ntp: f.sender_info.ntp_time,
                rtp: f.sender_info.rtp_time.numer(),
                received: f.received_at,
            }),
            Event::ChannelOpen(id, label) => {
                self.channels.insert(id, label.clone());
                Some(PeerEvent::ChannelOpen(label))
            }
            Event::ChannelData(d) => Some(PeerEvent::ChannelData {
                label: self.channels.get(&d.id)?.clone(),
                data: d.data,
                binary: d.binary,
            }),
            Event::ChannelClose(id) => self.channels.remove(&id).map(PeerEvent::ChannelClose),
            Event::EgressBitrateEstimate(str0m::bwe::BweKind::Twcc { estimate: b, .. }) => {
                Some(PeerEvent::Bitrate(b.as_u64()))
            }
            _ => None,
        }
    }

    fn frame_meta(&mut self, d: &str0m::media::MediaData) -> FrameMeta {
        let ssrc = match &d.last_sender_info {
            Some(sr) => Some(*sr.ssrc),
            None => self
                .rtc
                .direct_api()
                .stream_rx_by_mid(d.mid, d.rid)
                .map(|s| *s.ssrc()),
        };
        let capture_time_ms = match (&d.ext_vals.abs_capture_time, &d.last_sender_info) {
            (Some(act), _) => unix_ms(act.capture_time),
            (None, Some(sr)) => {
                // RTP timestamps wrap at 32 bits; the frame is near the
                // report, so the wrapped difference is the real one.
                let diff = (d.time.numer() as u32).wrapping_sub(sr.rtp_time.numer() as u32) as i32;
                let rate = d.time.denom().max(1) as f64;
                unix_ms(sr.ntp_time).map(|ms| ms + diff as f64 * 1000.0 / rate)
            }
            (None, None) => None,
        };
        let (picture_id, temporal_index, spatial_index) = match &d.codec_extra {
            CodecExtra::Vp8(e) => (e.picture_id, Some(e.layer_index), None),
            CodecExtra::Vp9(e) => {
                let spatial = e.layers_scheme.iter().filter(|l| l.is_some()).count();
                (e.picture_id, e.tid, spatial.checked_sub(1).map(|s| s as u8))
            }
            _ => (None, None, None),
        };
        FrameMeta {
            payload_type: *d.pt,
            ssrc,
            sequence_number: **d.seq_range.start(),
            audio_level: d.ext_vals.audio_level,
            capture_time_ms,
            picture_id,
            temporal_index,
            spatial_index,
        }
    }

    /// The rate to keep sending at (padding fills up what media leaves, up
    /// to the estimate) and the rate we would like to reach (the estimator
    /// probes towards it), bit/s. Used by the SFU to climb to the next
    /// simulcast layer.
    pub fn set_bwe_rates(&mut self, minimum: u64, desired: u64) {
        self.rtc.bwe().set_bitrate(
            str0m::bwe::Bitrate::bps(minimum.min(desired)),
            str0m::bwe::Bitrate::bps(desired),
        );
    }

    /// Frame mode: the rate we would like to send at, so that the bandwidth
    /// estimator probes up to it (without this it only learns what is sent).
    pub fn set_desired_bitrate(&mut self, bps: u64) {
        self.rtc
            .bwe()
            .set_bitrate(str0m::bwe::Bitrate::ZERO, str0m::bwe::Bitrate::bps(bps));
    }

    /// Frame mode: the simulcast layers (RIDs) the remote asked us to send
    /// on `mid`, in SDP order; empty without simulcast.
    pub fn send_rids(&self, mid: Mid) -> Vec<String> {
        match self.rtc.media(mid).map(|m| m.rids_tx()) {
            Some(str0m::media::Rids::Specific(rids)) => {
                rids.iter().map(|r| r.to_string()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The codec (signaling name) of payload type `pt`, if negotiated.
    pub fn codec_of_pt(&self, pt: u8) -> Option<&'static str> {
        self.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| *p.pt() == pt)
            .map(|p| codec_name(p.spec().codec))
    }

    /// Frame mode: the payload type and SSRC our frames of `codec` go out
    /// with on `mid` (for encoded-frame transforms' metadata).
    pub fn send_info(&mut self, mid: Mid, codec: &str) -> Result<(u8, u32), String> {
        let codec = codec_from_name(codec).ok_or_else(|| format!("unknown codec {codec}"))?;
        let pt = self
            .rtc
            .writer(mid)
            .ok_or_else(|| format!("no sending m-line {mid}"))?
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .map(|p| *p.pt())
            .ok_or_else(|| format!("codec {} not negotiated on {mid}", codec_name(codec)))?;
        let ssrc = self
            .rtc
            .direct_api()
            .stream_tx_by_mid(mid, None)
            .map(|s| *s.ssrc())
            .ok_or_else(|| format!("no send stream on {mid} yet"))?;
        Ok((pt, ssrc))
    }

    /// RTP mode: send one forwarded packet on our sending m-line `mid`.
    /// Returns false when the m-line has no send stream yet (not negotiated).
    #[allow(clippy::too_many_arguments)]
    pub fn write_rtp(
        &mut self,
        mid: Mid,
        pt: u8,
        seq: u64,
        time: u32,
        wallclock: Instant,
        marker: bool,
        audio_level: Option<(i8, bool)>,
        payload: Arc<[u8]>,
        nackable: bool,
        vp8: Option<Vp8Rewrite>,
    ) -> bool {
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return false;
        };
        let mut ext = ExtensionValues::default();
        if let Some((level, voice)) = audio_level {
            ext.audio_level = Some(level);
            ext.voice_activity = Some(voice);
        }
        let patch = vp8.and_then(|v| v.patch(&payload));
        let mut write = RtpWrite::new(pt.into(), SeqNo::from(seq), time, wallclock, payload)
            .marker(marker)
            .ext_vals(ext)
            .nackable(nackable);
        if let Some(patch) = patch {
            write = write.vp8_patch(patch);
        }
        tx.write_rtp(write);
        true
    }

    /// RTP mode: ask the sender of our receiving m-line `mid` (simulcast
    /// layer `rid`) for a keyframe.
    pub fn request_keyframe_rx(&mut self, mid: Mid, rid: Option<Rid>) -> bool {
        let mut api = self.rtc.direct_api();
        match api.stream_rx_by_mid(mid, rid) {
            Some(rx) => {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                true
            }
            None => false,
        }
    }

    /// Frame mode: send one encoded frame on our sending m-line `mid`, as
    /// simulcast layer `rid` when given, with its audio level (-dBov, 0
    /// loudest) in the RFC 6464 header extension when given.
    #[allow(clippy::too_many_arguments)]
    pub fn write_frame(
        &mut self,
        mid: Mid,
        rid: Option<&str>,
        codec: &str,
        rtp_time: u64,
        wallclock: Instant,
        data: &[u8],
        audio_level: Option<i8>,
    ) -> Result<(), String> {
        let codec = codec_from_name(codec).ok_or_else(|| format!("unknown codec {codec}"))?;
        let mut writer = self
            .rtc
            .writer(mid)
            .ok_or_else(|| format!("no sending m-line {mid}"))?;
        if let Some(rid) = rid {
            writer = writer.rid(Rid::from(rid));
        }
        if let Some(level) = audio_level {
            let level = level.clamp(-127, 0);
            writer = writer.audio_level(level, level > VOICE_LEVEL);
        }
        let params = writer
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .ok_or_else(|| format!("codec {} not negotiated on {mid}", codec_name(codec)))?;
        let pt = params.pt();
        let rate = params.spec().clock_rate;
        writer
            .write(pt, wallclock, MediaTime::new(rtp_time, rate), data)
            .map_err(|e| e.to_string())
    }

    /// Send a message on the open data channel `label`. Ok(false) means
    /// the SCTP send buffer is full (back-pressure) and nothing was sent.
    pub fn send_channel(&mut self, label: &str, data: &[u8], binary: bool) -> Result<bool, String> {
        let id = self
            .channels
            .iter()
            .find(|(_, l)| l.as_str() == label)
            .map(|(id, _)| *id)
            .ok_or_else(|| format!("data channel {label:?} is not open"))?;
        let mut ch = self
            .rtc
            .channel(id)
            .ok_or_else(|| format!("data channel {label:?} is not open"))?;
        ch.write(binary, data).map_err(|e| e.to_string())
    }

    /// Whether the data channel `label` is open.
    pub fn has_channel(&self, label: &str) -> bool {
        self.channels.values().any(|l| l == label)
    }

    /// Close every data channel (SCTP stream reset), as the Sora protocol
    /// asks when a DataChannel-signaling connection ends.
    pub fn close_channels(&mut self) {
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        let mut api = self.rtc.direct_api();
        for id in ids {
            api.close_data_channel(id);
        }
    }

    /// Frame mode: ask the remote sender of `mid` for a keyframe.
    pub fn request_keyframe_frame(&mut self, mid: Mid) -> Result<(), String> {
        let mut writer = self
            .rtc
            .writer(mid)
            .ok_or_else(|| format!("no m-line {mid}"))?;
        writer
            .request_keyframe(None, KeyframeRequestKind::Pli)
            .map_err(|e| e.to_string())
    }
}

/// What the SFU reads from a VP8 RTP payload descriptor (RFC 7741).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Header {
    /// PictureID and whether it is the 15-bit form (else 7-bit).
    pub picture_id: Option<(u16, bool)>,
    pub tl0_pic_idx: Option<u8>,
    /// The packet starts a keyframe.
    pub keyframe: bool,
}

/// Parse a VP8 payload descriptor; None when malformed.
pub fn vp8_header(payload: &[u8]) -> Option<Vp8Header> {
    let d = Vp8Descriptor::parse(payload).ok()?;
    // str0m keeps the width to itself; the M bit of the first PictureID
    // byte (after the required and extension bytes) says it.
    let wide = payload.get(2).is_some_and(|b| b & 0x80 != 0);
    Some(Vp8Header {
        picture_id: d.picture_id().map(|p| (p, wide)),
        tl0_pic_idx: d.tl0_pic_idx(),
        keyframe: d.starts_keyframe(payload),
    })
}

/// New PictureID / TL0PICIDX values for a forwarded VP8 packet, so that a
/// subscriber sees one continuous numbering across simulcast switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Rewrite {
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
}

impl Vp8Rewrite {
    fn patch(&self, payload: &[u8]) -> Option<str0m::rtp::Vp8Patch> {
        let d = Vp8Descriptor::parse(payload).ok()?;
        let mut b = d.patch();
        if let (Some(p), Some(_)) = (self.picture_id, d.picture_id()) {
            b = b.picture_id(p);
        }
        if let (Some(t), Some(_)) = (self.tl0_pic_idx, d.tl0_pic_idx()) {
            b = b.tl0_pic_idx(t);
        }
        b.build().ok()
    }
}

/// A one-line message for an SDP that does not parse. str0m's parser error
/// spans lines and carries internal offsets, which mean nothing to a client.
fn sdp_error(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() || first.contains("PointerOffset") {
        "invalid SDP: could not parse".to_string()
    } else {
        let mut m = format!("invalid SDP: {first}");
        m.truncate(100);
        m
    }
}

/// Parse a mid from its string form.
pub fn mid_from_str(s: &str) -> Mid {
    Mid::from(s)
}

/// A random string of ICE characters.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// Milliseconds since the Unix epoch, None for a time before it.
fn unix_ms(t: std::time::SystemTime) -> Option<f64> {
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64() * 1000.0)
}
