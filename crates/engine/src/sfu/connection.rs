//! One participant's connection as a shard sees it.

use std::collections::HashMap;
use std::sync::Arc;

use super::clock::ClockBase;
use super::simulcast::{Layer, Selection, Vp8Numbering};
use super::track::TrackKey;
use super::DataChannelSpec;
use crate::peer::{Kind, Mid, Peer};
use crate::rewrite::Rewriter;

/// A connection's receipt of another connection's track on one of its
/// sending m-lines.
pub struct Subscription {
    pub track: TrackKey,
    pub kind: Kind,
    /// False until the subscriber's answer for this m-line arrived.
    pub active: bool,
    pub rewriter: Rewriter,
    /// Which layer of a simulcast track goes to this subscriber (unused for
    /// single-stream tracks).
    pub selection: Selection,
    pub vp8: Vp8Numbering,
}

pub struct Connection {
    pub name: Arc<str>,
    pub channel: Arc<str>,
    pub peer: Peer,
    pub recv: bool,
    /// Our receiving m-lines: the client's upstream tracks.
    pub upstream: Vec<(Mid, Kind)>,
    /// The first answer was applied (re-offers may follow).
    pub answered: bool,
    pub connected: bool,
    /// Set when the connection must be reaped; the reason goes to Python.
    pub dead: Option<String>,
    pub subscriptions: HashMap<Mid, Subscription>,
    /// Tracks to add in the next re-offer.
    pub pending_add: Vec<TrackKey>,
    /// Our m-lines to stop in the next re-offer.
    pub pending_stop: Vec<Mid>,
    pub data_channels: Vec<DataChannelSpec>,
    /// Maps this publisher's capture clock onto ours (its first sender report).
    pub clock: Option<ClockBase>,
    /// The client publishes its video as simulcast layers with these RIDs.
    pub simulcast_rids: Vec<String>,
    /// The simulcast layer this subscriber wants from every sender (None:
    /// no video), and per sender where it asked otherwise.
    pub layer_request: Option<Layer>,
    pub layer_overrides: HashMap<u64, Option<Layer>>,
    /// The send-side bandwidth estimate towards this client, bit/s (only
    /// with bandwidth estimation on).
    pub estimate: Option<u64>,
    /// The (minimum, desired) rates last given to the estimator.
    pub bwe_rates: (u64, u64),
    /// Spotlight: the layers it gets from focused and other senders.
    pub spotlight: Option<super::spotlight::SpotlightLayers>,
}

impl Connection {
    pub fn needs_offer(&self) -> bool {
        self.answered
            && self.dead.is_none()
            && !self.peer.has_pending_offer()
            && (!self.pending_add.is_empty() || !self.pending_stop.is_empty())
    }

    pub fn mid_for(&self, kind: Kind) -> Option<String> {
        self.upstream
            .iter()
            .find(|(_, k)| *k == kind)
            .map(|(m, _)| m.to_string())
    }
}

impl Connection {
    pub fn data_channel(&self, label: &str) -> Option<&DataChannelSpec> {
        self.data_channels.iter().find(|d| d.channel.label == label)
    }

    /// The layer this subscriber wants from `publisher`'s simulcast tracks.
    pub fn layer_for(&self, publisher: u64) -> Option<Layer> {
        self.layer_overrides
            .get(&publisher)
            .copied()
            .unwrap_or(self.layer_request)
    }

    /// A new subscription of this connection to `track`.
    pub fn subscription(&self, track: TrackKey, kind: Kind) -> Subscription {
        Subscription {
            track,
            kind,
            active: false,
            rewriter: Rewriter::new(clock_rate(kind)),
            selection: Selection::new(self.layer_for(track.0)),
            vp8: Vp8Numbering::default(),
        }
    }
}

pub fn clock_rate(kind: Kind) -> u32 {
    match kind {
        Kind::Audio => 48_000,
        Kind::Video => 90_000,
    }
}
