//! Simulcast layer selection for one subscription, as a pure state machine.
//!
//! A simulcast track arrives as up to three layers (r0 lowest .. r2
//! highest), each its own RTP stream. A subscription forwards exactly one of
//! them. Which one is decided per packet from what the subscriber asked for
//! ([`Selection::set_request`]), what its bandwidth allows
//! ([`Selection::set_cap`]) and which layers the publisher is sending right
//! now ([`Availability`]): the highest wanted layer that is live, else the
//! next lower live one, else the lowest live one above. A change of layer
//! waits for a keyframe of the new layer, so the subscriber's decoder never
//! sees a delta frame it has no reference for; until then the old layer
//! keeps flowing.
//!
//! Bandwidth: [`Selection::allocate`] caps a subscription to the highest
//! layer that fits the subscriber's send-side estimate (TWCC), measured per
//! layer with a [`RateMeter`]. Going down happens at once; going up needs
//! the next layer to fit with a margin and the last change to be a few
//! seconds old, so that an estimate hovering near a layer's rate does not
//! make the picture flap between sizes.
//!
//! VP8 carries its own frame numbering (PictureID, TL0PICIDX), which
//! differs per layer; [`Vp8Numbering`] rewrites it so that the subscriber
//! sees one continuous sequence, as [`crate::rewrite::Rewriter`] does for
//! RTP sequence numbers and timestamps.

use std::time::{Duration, Instant};

use crate::peer::{Vp8Header, Vp8Rewrite};

/// Index of a layer in the track's RID order: 0 is r0, the lowest quality.
pub type Layer = u8;

/// The most layers a track may have.
pub const MAX_LAYERS: usize = 3;

/// A layer whose last packet is older than this is paused: the publisher
/// stopped sending it (libwebrtc drops top layers when its own bandwidth
/// or CPU is short).
pub const PAUSED_AFTER: Duration = Duration::from_millis(1000);

/// Which layers of a track are live at one instant (bit i = layer i).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Availability(pub u8);

impl Availability {
    pub fn has(self, layer: Layer) -> bool {
        self.0 & (1 << layer) != 0
    }
}

/// The layer to forward: `want` when live, else the next lower live
/// layer, else the lowest live one above. None when `want` is None (the
/// subscriber asked for no video) or nothing is live.
pub fn choose(want: Option<Layer>, live: Availability) -> Option<Layer> {
    let want = want?;
    (0..=want)
        .rev()
        .chain(want + 1..MAX_LAYERS as Layer)
        .find(|l| live.has(*l))
}

/// What to do with one packet of a simulcast track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub forward: bool,
    /// The subscription moved to this layer with this packet (from the
    /// layer it had before, if any).
    pub switched: Option<(Option<Layer>, Layer)>,
    /// Ask the publisher for a keyframe of this layer (the caller throttles).
    pub want_keyframe: Option<Layer>,
}

/// Going up a layer needs its rate to fit in this share of the estimate.
pub const UP_MARGIN: f64 = 0.85;

/// After a change of the bandwidth cap, wait this long before going up.
pub const UP_HOLD: Duration = Duration::from_secs(3);

/// Layer selection state of one subscription to a simulcast track.
#[derive(Debug, Clone)]
pub struct Selection {
    /// What the subscriber asked for; None: no video at all.
    request: Option<Layer>,
    /// The highest layer its bandwidth allows; None: no limit.
    cap: Option<Layer>,
    /// When `cap` last changed.
    cap_changed: Option<Instant>,
    /// The bandwidth cap fell below the layer being forwarded: stop sending
    /// it now rather than pile more of it up in front of a link that cannot
    /// carry it, and wait for the lower layer's keyframe.
    cut: bool,
    /// The layer being forwarded.
    current: Option<Layer>,
}

impl Selection {
    /// Start with `request` (None: forward nothing).
    pub fn new(request: Option<Layer>) -> Self {
        Selection {
            request,
            cap: None,
            cap_changed: None,
            cut: false,
            current: None,
        }
    }

    pub fn request(&self) -> Option<Layer> {
        self.request
    }

    pub fn current(&self) -> Option<Layer> {
        self.current
    }

    pub fn cap(&self) -> Option<Layer> {
        self.cap
    }

    pub fn set_request(&mut self, request: Option<Layer>) {
        self.request = request;
    }

    pub fn set_cap(&mut self, cap: Option<Layer>) {
        self.cap = cap;
    }

    /// The layer to plan bandwidth for: the target without a bandwidth cap.
    pub fn wanted(&self, live: Availability) -> Option<Layer> {
        choose(self.request, live)
    }

    /// Apply a bandwidth `budget` (bit/s) given each layer's measured
    /// `rates` (0: unknown). Returns the layer planned for (whose rate the
    /// budget must then carry), None when nothing is forwarded.
    pub fn allocate(
        &mut self,
        rates: &[u64],
        live: Availability,
        budget: u64,
        now: Instant,
    ) -> Option<Layer> {
        let want = self.wanted(live)?;
        let rate = |l: Layer| rates.get(l as usize).copied().unwrap_or(0);
        let fits = |l: Layer, share: f64| rate(l) as f64 <= budget as f64 * share;
        let mut planned = self.cap.map_or(want, |c| c.min(want));
        if !live.has(planned) {
            planned = choose(Some(planned), live).unwrap_or(want);
        }
        let held = self
            .cap_changed
            .is_some_and(|t| now.saturating_duration_since(t) < UP_HOLD);
        // Up as far as fits, in one step.
        let next = (planned + 1..=want)
            .rev()
            .find(|l| live.has(*l) && fits(*l, UP_MARGIN));
        let new = if !fits(planned, 1.0) {
            // Down at once, to the best live layer that fits (or the lowest).
            (0..planned)
                .rev()
                .find(|l| live.has(*l) && fits(*l, 1.0))
                .or_else(|| (0..planned).find(|l| live.has(*l)))
                .unwrap_or(planned)
        } else {
            match next {
                Some(n) if !held => n,
                _ => planned,
            }
        };
        let cap = (new < want).then_some(new);
        if cap != self.cap {
            self.cap = cap;
            self.cap_changed = Some(now);
            self.cut = self.current.is_some_and(|c| c > new);
        }
        Some(new)
    }

    /// The layer this subscription should be on now.
    pub fn target(&self, live: Availability) -> Option<Layer> {
        let want = match (self.request, self.cap) {
            (Some(r), Some(c)) => Some(r.min(c)),
            (r, _) => r,
        };
        choose(want, live)
    }

    /// A packet of `layer` arrived; `keyframe` when it starts a keyframe.
    pub fn on_packet(&mut self, layer: Layer, keyframe: bool, live: Availability) -> Decision {
        let target = self.target(live);
        let mut d = Decision {
            forward: false,
            switched: None,
            want_keyframe: None,
        };
        if target == self.current {
            d.forward = self.current == Some(layer);
            return d;
        }
        if target == Some(layer) && keyframe {
            d.switched = Some((self.current, layer));
            self.current = Some(layer);
            self.cut = false;
            d.forward = true;
            return d;
        }
        if target.is_none() {
            // Asked for nothing: stop at once, no keyframe needed.
            self.current = None;
            return d;
        }
        d.want_keyframe = target;
        d.forward = self.current == Some(layer) && !self.cut;
        d
    }
}

/// Rewrites VP8 PictureID and TL0PICIDX across layer switches.
#[derive(Debug, Clone, Default)]
pub struct Vp8Numbering {
    state: Option<Vp8State>,
}

#[derive(Debug, Clone, Copy)]
struct Vp8State {
    layer: Layer,
    picture_offset: u16,
    tl0_offset: u8,
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
}

impl Vp8Numbering {
    /// The values to write into a packet of `layer` with descriptor `h`.
    pub fn rewrite(&mut self, layer: Layer, h: &Vp8Header) -> Vp8Rewrite {
        let modulus = |wide: bool| if wide { 1u32 << 15 } else { 1u32 << 7 };
        let state = match self.state {
            Some(s) if s.layer == layer => s,
            Some(s) => {
                // Continue right after the last numbers sent.
                let picture_offset = match (s.last_picture, h.picture_id) {
                    (Some(last), Some((p, wide))) => {
                        let m = modulus(wide);
                        ((last as u32 + 1 + m - p as u32 % m) % m) as u16
                    }
                    _ => 0,
                };
                let tl0_offset = match (s.last_tl0, h.tl0_pic_idx) {
                    (Some(last), Some(t)) => last.wrapping_add(1).wrapping_sub(t),
                    _ => 0,
                };
                Vp8State {
                    layer,
                    picture_offset,
                    tl0_offset,
                    last_picture: s.last_picture,
                    last_tl0: s.last_tl0,
                }
            }
            // The first layer keeps its own numbering.
            None => Vp8State {
                layer,
                picture_offset: 0,
                tl0_offset: 0,
                last_picture: None,
                last_tl0: None,
            },
        };
        let picture = h.picture_id.map(|(p, wide)| {
            let m = modulus(wide);
            ((p as u32 + state.picture_offset as u32) % m) as u16
        });
        let tl0 = h.tl0_pic_idx.map(|t| t.wrapping_add(state.tl0_offset));
        self.state = Some(Vp8State {
            last_picture: picture.or(state.last_picture),
            last_tl0: tl0.or(state.last_tl0),
            ..state
        });
        Vp8Rewrite {
            picture_id: picture,
            tl0_pic_idx: tl0,
        }
    }
}

/// Measures a stream's bit rate over windows of about a second, smoothed.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    rate: u64,
}

const RATE_WINDOW: Duration = Duration::from_millis(1000);

impl RateMeter {
    pub fn add(&mut self, now: Instant, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        self.bytes += bytes as u64;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let measured = (self.bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
            // Keyframes make single windows jumpy; average with the last.
            self.rate = if self.rate == 0 {
                measured
            } else {
                (self.rate + measured) / 2
            };
            self.window_start = Some(now);
            self.bytes = 0;
        }
    }

    /// Bits per second; 0 until a window has passed, or after a second of silence.
    pub fn rate(&self, now: Instant) -> u64 {
        match self.window_start {
            Some(t) if now.saturating_duration_since(t) < RATE_WINDOW * 2 => self.rate,
            _ => 0,
        }
    }
}

/// Per-layer facts a track keeps about its publisher's streams.
#[derive(Debug, Clone, Default)]
pub struct LayerStats {
    last_packet: Option<Instant>,
    last_keyframe_request: Option<Instant>,
    pub rate: RateMeter,
}

/// Keyframe requests for one layer are throttled like a whole track's.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);

impl LayerStats {
    pub fn saw_packet(&mut self, now: Instant, bytes: usize) {
        self.last_packet = Some(now);
        self.rate.add(now, bytes);
    }

    pub fn live(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < PAUSED_AFTER)
    }

    /// Whether a keyframe request may go out now; records it.
    pub fn allow_keyframe_request(&mut self, now: Instant) -> bool {
        match self.last_keyframe_request {
            Some(t) if now.saturating_duration_since(t) < KEYFRAME_REQUEST_INTERVAL => false,
            _ => {
                self.last_keyframe_request = Some(now);
                true
            }
        }
    }
}

/// Which of `layers` are live at `now`.
pub fn availability(layers: &[LayerStats], now: Instant) -> Availability {
    Availability(
        layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.live(now))
            .fold(0u8, |acc, (i, _)| acc | (1 << i)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Availability = Availability(0b111);

    #[test]
    fn choose_falls_back_down_then_up() {
        assert_eq!(choose(Some(2), ALL), Some(2));
        assert_eq!(choose(Some(2), Availability(0b011)), Some(1));
        assert_eq!(choose(Some(0), Availability(0b110)), Some(1));
        assert_eq!(choose(Some(1), Availability(0b100)), Some(2));
        assert_eq!(choose(Some(1), Availability(0)), None);
        assert_eq!(choose(None, ALL), None);
    }

    #[test]
    fn switch_waits_for_a_keyframe_of_the_target() {
        let mut s = Selection::new(Some(0));
        // r1 and r2 packets are dropped; r0 delta frames wait for a keyframe.
        assert!(!s.on_packet(1, true, ALL).forward);
        let d = s.on_packet(0, false, ALL);
        assert!(!d.forward);
        assert_eq!(d.want_keyframe, Some(0));
        let d = s.on_packet(0, true, ALL);
        assert!(d.forward);
        assert_eq!(d.switched, Some((None, 0)));
        assert!(s.on_packet(0, false, ALL).forward);
        // Ask for r2: r0 keeps flowing until r2's keyframe.
        s.set_request(Some(2));
        let d = s.on_packet(0, false, ALL);
        assert!(d.forward);
        assert_eq!(d.want_keyframe, Some(2));
        assert!(!s.on_packet(2, false, ALL).forward);
        let d = s.on_packet(2, true, ALL);
        assert_eq!(d.switched, Some((Some(0), 2)));
        assert!(!s.on_packet(0, false, ALL).forward);
        assert!(!s.on_packet(0, true, ALL).forward);
        assert!(s.on_packet(2, false, ALL).forward);
    }

    #[test]
    fn paused_layer_falls_back_and_cap_limits() {
        let mut s = Selection::new(Some(2));
        s.on_packet(2, true, ALL);
        assert_eq!(s.current(), Some(2));
        // r2 stops: the next r1 keyframe takes over.
        let live = Availability(0b011);
        let d = s.on_packet(1, false, live);
        assert_eq!(d.want_keyframe, Some(1));
        assert_eq!(s.on_packet(1, true, live).switched, Some((Some(2), 1)));
        // A bandwidth cap of r0 wins over the request.
        s.set_cap(Some(0));
        assert_eq!(s.on_packet(0, true, ALL).switched, Some((Some(1), 0)));
        s.set_cap(None);
        assert_eq!(s.target(ALL), Some(2));
    }

    #[test]
    fn request_none_stops_at_once() {
        let mut s = Selection::new(Some(1));
        s.on_packet(1, true, ALL);
        s.set_request(None);
        let d = s.on_packet(1, false, ALL);
        assert!(!d.forward);
        assert_eq!(d.want_keyframe, None);
        assert_eq!(s.current(), None);
    }

    fn vp8(p: u16, t: u8) -> Vp8Header {
        Vp8Header {
            picture_id: Some((p, true)),
            tl0_pic_idx: Some(t),
            keyframe: false,
        }
    }

    #[test]
    fn vp8_numbering_is_continuous_across_switches() {
        let mut n = Vp8Numbering::default();
        let a = n.rewrite(0, &vp8(100, 7));
        assert_eq!((a.picture_id, a.tl0_pic_idx), (Some(100), Some(7)));
        let a = n.rewrite(0, &vp8(101, 8));
        assert_eq!((a.picture_id, a.tl0_pic_idx), (Some(101), Some(8)));
        // Another layer with its own numbering continues at 102 / 9.
        let b = n.rewrite(2, &vp8(30000, 250));
        assert_eq!((b.picture_id, b.tl0_pic_idx), (Some(102), Some(9)));
        let b = n.rewrite(2, &vp8(30001, 251));
        assert_eq!((b.picture_id, b.tl0_pic_idx), (Some(103), Some(10)));
        // Wrapping at 2^15 and 2^8.
        let c = n.rewrite(1, &vp8(5, 3));
        assert_eq!((c.picture_id, c.tl0_pic_idx), (Some(104), Some(11)));
        let mut w = Vp8Numbering::default();
        w.rewrite(0, &vp8(32767, 255));
        let d = w.rewrite(1, &vp8(9, 9));
        assert_eq!((d.picture_id, d.tl0_pic_idx), (Some(0), Some(0)));
    }

    #[test]
    fn layers_go_paused_after_a_second() {
        let t0 = Instant::now();
        let mut layers = vec![LayerStats::default(); 3];
        layers[0].saw_packet(t0, 100);
        layers[2].saw_packet(t0 + Duration::from_millis(900), 100);
        assert_eq!(
            availability(&layers, t0 + Duration::from_millis(950)),
            Availability(0b101)
        );
        assert_eq!(
            availability(&layers, t0 + Duration::from_millis(1500)),
            Availability(0b100)
        );
        assert!(layers[1].allow_keyframe_request(t0));
        assert!(!layers[1].allow_keyframe_request(t0 + Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod bandwidth_tests {
    use super::*;

    const ALL: Availability = Availability(0b111);
    const RATES: [u64; 3] = [150_000, 500_000, 1_500_000];

    #[test]
    fn down_at_once_up_with_margin_and_hold() {
        let t0 = Instant::now();
        let mut s = Selection::new(Some(2));
        assert_eq!(s.allocate(&RATES, ALL, 3_000_000, t0), Some(2));
        assert_eq!(s.cap(), None);
        // The estimate drops under r2's rate: straight to r1.
        assert_eq!(s.allocate(&RATES, ALL, 800_000, t0), Some(1));
        assert_eq!(s.cap(), Some(1));
        // And under r1's: to r0, which is kept even when it does not fit.
        assert_eq!(s.allocate(&RATES, ALL, 100_000, t0), Some(0));
        // Room again, but within the hold: stay.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(s.allocate(&RATES, ALL, 3_000_000, t1), Some(0));
        // After the hold: as far up as fits, in one step.
        let t2 = t0 + Duration::from_secs(4);
        assert_eq!(s.allocate(&RATES, ALL, 1_000_000, t2), Some(1));
        let t3 = t2 + Duration::from_secs(4);
        assert_eq!(s.allocate(&RATES, ALL, 3_000_000, t3), Some(2));
        assert_eq!(s.cap(), None);
    }

    #[test]
    fn up_needs_the_margin() {
        let t0 = Instant::now();
        let mut s = Selection::new(Some(2));
        s.allocate(&RATES, ALL, 1_000_000, t0);
        assert_eq!(s.cap(), Some(1));
        let later = t0 + Duration::from_secs(10);
        // 1.6 Mbit/s carries r2 (1.5) but not with the 15 % margin: no flapping.
        assert_eq!(s.allocate(&RATES, ALL, 1_600_000, later), Some(1));
        assert_eq!(s.allocate(&RATES, ALL, 1_800_000, later), Some(2));
    }

    #[test]
    fn the_cap_limits_the_target_and_respects_the_request() {
        let t0 = Instant::now();
        let mut s = Selection::new(Some(1));
        assert_eq!(s.allocate(&RATES, ALL, 10_000_000, t0), Some(1));
        assert_eq!(s.target(ALL), Some(1), "never above the request");
        s.set_request(Some(2));
        s.allocate(&RATES, ALL, 400_000, t0);
        assert_eq!(s.target(ALL), Some(0));
        s.set_request(None);
        assert_eq!(s.allocate(&RATES, ALL, 400_000, t0), None);
    }

    #[test]
    fn rate_meter_measures_per_second() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        for i in 0..=100u64 {
            m.add(t0 + Duration::from_millis(i * 10), 1250); // 1 Mbit/s
        }
        let r = m.rate(t0 + Duration::from_millis(1000));
        assert!((950_000..=1_050_000).contains(&r), "{r}");
        assert_eq!(
            m.rate(t0 + Duration::from_secs(5)),
            0,
            "silence reads as nothing"
        );
    }
}

#[cfg(test)]
mod cut_tests {
    use super::*;

    #[test]
    fn a_bandwidth_downswitch_stops_the_old_layer_at_once() {
        let t0 = Instant::now();
        let all = Availability(0b111);
        let rates = [150_000, 500_000, 1_500_000];
        let mut s = Selection::new(Some(2));
        s.on_packet(2, true, all);
        s.allocate(&rates, all, 800_000, t0);
        // r2 no longer fits: nothing more of it while r1's keyframe is awaited.
        let d = s.on_packet(2, false, all);
        assert!(!d.forward);
        assert_eq!(d.want_keyframe, Some(1));
        assert!(s.on_packet(1, true, all).forward);
        // A requested switch (not bandwidth) keeps the old layer until then.
        s.set_request(Some(0));
        assert!(s.on_packet(1, false, all).forward);
    }
}
