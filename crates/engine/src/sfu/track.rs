//! A published track and who receives it.

use std::time::{Duration, Instant};

use super::clock::{ClockBase, SenderReport};
use super::simulcast::{Layer, LayerStats, RateMeter};
use crate::peer::{Kind, Mid, Rid};

/// A track is identified by its publisher and the publisher's m-line.
pub type TrackKey = (u64, Mid);

/// Keyframe requests to one publisher are throttled: a burst of joiners or
/// lossy subscribers must not make the encoder emit keyframes back to back.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);

pub struct Track {
    pub kind: Kind,
    pub publisher_name: std::sync::Arc<str>,
    pub track_id: String,
    /// (subscriber connection, subscriber's m-line).
    pub subscribers: Vec<(u64, Mid)>,
    /// The publisher's latest RTCP sender report for this track, with the
    /// publisher's clock base (copied here so forwarding needs no lookup).
    pub sender_report: Option<(ClockBase, SenderReport)>,
    last_keyframe_request: Option<Instant>,
    /// Simulcast: the layers' RIDs, lowest quality first, and what we know
    /// of each; empty for a single-stream track.
    pub rids: Vec<Rid>,
    pub layers: Vec<LayerStats>,
    /// The codec of the last packet's payload type (learned on the first
    /// packet and when the payload type changes).
    pub codec: Option<(u8, &'static str)>,
    /// What the track carries (all layers), for bandwidth allocation.
    pub rate: RateMeter,
}

impl Track {
    pub fn new(kind: Kind, publisher_name: std::sync::Arc<str>, track_id: String) -> Self {
        Track {
            kind,
            publisher_name,
            track_id,
            subscribers: Vec::new(),
            sender_report: None,
            last_keyframe_request: None,
            rids: Vec::new(),
            layers: Vec::new(),
            codec: None,
            rate: RateMeter::default(),
        }
    }

    /// A simulcast track with these layers, lowest quality first.
    pub fn with_layers(mut self, rids: &[String]) -> Self {
        self.rids = rids.iter().map(|r| Rid::from(r.as_str())).collect();
        self.layers = vec![LayerStats::default(); self.rids.len()];
        self
    }

    pub fn is_simulcast(&self) -> bool {
        !self.rids.is_empty()
    }

    /// The layer a packet belongs to: None for a single-stream track or a
    /// packet without RID, Err for a RID the track does not have.
    pub fn layer_of(&self, rid: Option<Rid>) -> Result<Option<Layer>, ()> {
        match rid {
            Some(r) if self.is_simulcast() => self
                .rids
                .iter()
                .position(|x| *x == r)
                .map(|i| Some(i as Layer))
                .ok_or(()),
            _ => Ok(None),
        }
    }

    /// The RID of `layer`.
    pub fn rid(&self, layer: Layer) -> Option<Rid> {
        self.rids.get(layer as usize).copied()
    }

    /// Our instant for the capture of a packet at RTP time `rtp`, or its
    /// arrival before the publisher's first sender report (see clock.rs).
    pub fn capture_instant(&self, rtp: u32, arrival: Instant) -> Instant {
        match self.sender_report {
            Some((base, report)) => {
                base.capture_instant(Some(report), rtp, self.clock_rate(), arrival)
            }
            None => arrival,
        }
    }

    /// RTP clock rate of the track's codec (Opus 48 kHz, video 90 kHz).
    pub fn clock_rate(&self) -> u32 {
        match self.kind {
            Kind::Audio => 48_000,
            Kind::Video => 90_000,
        }
    }

    /// Whether a keyframe request may go to the publisher now; records it.
    pub fn allow_keyframe_request(&mut self, now: Instant) -> bool {
        if self.kind != Kind::Video {
            return false;
        }
        match self.last_keyframe_request {
            Some(t) if now.saturating_duration_since(t) < KEYFRAME_REQUEST_INTERVAL => false,
            _ => {
                self.last_keyframe_request = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_requests_are_throttled_per_track() {
        let mut t = Track::new(Kind::Video, "p".into(), "v".into());
        let t0 = Instant::now();
        assert!(t.allow_keyframe_request(t0));
        assert!(!t.allow_keyframe_request(t0 + Duration::from_millis(100)));
        assert!(t.allow_keyframe_request(t0 + Duration::from_millis(400)));
        let mut a = Track::new(Kind::Audio, "p".into(), "a".into());
        assert!(!a.allow_keyframe_request(t0), "audio has no keyframes");
    }
}
