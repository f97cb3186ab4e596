//! A shard: one thread, one UDP socket, and every channel and connection
//! pinned to it.
//!
//! Loop: wait (mio) for datagrams, commands or the earliest timer; route
//! each datagram (address map, else STUN username) to its connection; feed
//! it to the peer and drain; forward RTP to the subscriptions of the track;
//! fire due timers from the heap; apply commands. Per-connection work runs
//! under `catch_unwind` so a panic in str0m kills that connection only.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use tracing::{debug, info, warn};

use super::clock::{ClockBase, SenderReport};
use super::connection::Connection;
use super::simulcast::{availability, Layer, UP_MARGIN};
use super::spotlight::Spotlight;
use super::track::{Track, TrackKey};
use super::{next_id, Command, ConnectionSpec, Created};
use crate::demux::Demux;
use crate::event::{EngineEvent, EventKind};
use crate::keyframe::starts_keyframe;
use crate::peer::{
    random_token, vp8_header, ChannelSpec, Kind, Mid, OfferChange, Output, Peer, PeerEvent, Role,
};
use crate::queue::EventSender;
use crate::timer::TimerHeap;
use crate::waker::{command_channel, CommandSender};

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// Upper bound on a poll wait, so a shard notices shutdown even if a waker
/// were lost.
const MAX_WAIT: Duration = Duration::from_millis(250);
/// How often subscribers' simulcast layers are fitted to their bandwidth
/// estimates (besides whenever an estimate changes).
const ALLOCATION_INTERVAL: Duration = Duration::from_millis(500);

/// Counters a shard publishes for stats and benchmarks.
#[derive(Default, Debug)]
pub struct ShardCounters {
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    pub forwarded_packets: AtomicU64,
    pub connections: AtomicU64,
    pub unroutable: AtomicU64,
    /// Datagrams dropped because the socket's send buffer was full.
    pub send_dropped: AtomicU64,
}

/// Start a shard thread bound to `bind`.
pub(crate) fn spawn(
    index: usize,
    bind: SocketAddr,
    advertised_ip: IpAddr,
    events: EventSender,
) -> std::io::Result<(
    CommandSender<Command>,
    JoinHandle<()>,
    u16,
    Arc<ShardCounters>,
)> {
    let poll = Poll::new()?;
    let mut socket = UdpSocket::from_std(crate::socket::bind_udp(bind)?);
    let local = socket.local_addr()?;
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE)?;
    let (commands, rx) = command_channel(&poll, WAKER)?;
    let counters = Arc::new(ShardCounters::default());
    let shard = Shard {
        index,
        socket,
        candidate: SocketAddr::new(advertised_ip, local.port()),
        conns: HashMap::new(),
        by_name: HashMap::new(),
        channels: HashMap::new(),
        tracks: HashMap::new(),
        demux: Demux::new(),
        timers: TimerHeap::new(),
        events,
        counters: counters.clone(),
        deferred: Vec::new(),
        scratch: Vec::new(),
        dying: Vec::new(),
        spotlights: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("hibiki-shard-{index}"))
        .spawn(move || shard.run(poll, rx))?;
    info!(shard = index, addr = %local, "shard started");
    Ok((commands, thread, local.port(), counters))
}

struct Shard {
    index: usize,
    socket: UdpSocket,
    /// The address in our ICE candidates.
    candidate: SocketAddr,
    conns: HashMap<u64, Connection>,
    by_name: HashMap<Arc<str>, u64>,
    channels: HashMap<Arc<str>, Vec<u64>>,
    tracks: HashMap<TrackKey, Track>,
    demux: Demux<u64>,
    timers: TimerHeap<u64>,
    events: EventSender,
    counters: Arc<ShardCounters>,
    /// Events raised while draining a peer that must be handled after the
    /// drain (handling them mutates other peers).
    deferred: Vec<(u64, PeerEvent)>,
    /// Reused buffer for one peer's drained events.
    scratch: Vec<PeerEvent>,
    /// Connections marked dead since the last reap.
    dying: Vec<u64>,
    /// Spotlight state of the channels that have spotlight connections.
    spotlights: HashMap<Arc<str>, Spotlight>,
}

/// Drain a peer until it asks for a timeout: send its datagrams, arm its
/// timer, collect its events. Returns an error text if the peer failed.
fn drain(
    conn_id: u64,
    peer: &mut Peer,
    socket: &UdpSocket,
    timers: &mut TimerHeap<u64>,
    counters: &ShardCounters,
    out: &mut Vec<PeerEvent>,
) -> Result<(), String> {
    loop {
        match peer.poll()? {
            Some(Output::Timeout(t)) => {
                timers.set(conn_id, t);
                return Ok(());
            }
            Some(Output::Transmit {
                destination, data, ..
            }) => {
                match socket.send_to(&data, destination) {
                    Ok(_) => {
                        counters.tx_packets.fetch_add(1, Ordering::Relaxed);
                    }
                    // UDP: a full socket buffer drops, like the network would.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        counters.send_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => debug!(conn = conn_id, error = %e, "send failed"),
                }
            }
            Some(Output::Event(e)) => out.push(e),
            None => {}
        }
    }
}

impl Shard {
    fn run(mut self, mut poll: Poll, commands: Receiver<Command>) {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 2048];
        let mut next_allocation = Instant::now() + ALLOCATION_INTERVAL;
        loop {
            let now = Instant::now();
            let wait = self
                .timers
                .next_deadline()
                .map(|d| d.min(next_allocation).saturating_duration_since(now))
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT);
            if let Err(e) = poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    warn!(shard = self.index, error = %e, "poll failed");
                }
                continue;
            }
            for ev in events.iter() {
                if ev.token() == SOCKET {
                    self.read_socket(&mut buf);
                }
            }
            // Commands are checked every turn (not only on the waker token)
            // so none waits behind a burst of datagrams.
            loop {
                match commands.try_recv() {
                    Ok(Command::Stop) => {
                        info!(shard = self.index, "shard stopping");
                        return;
                    }
                    Ok(cmd) => self.command(cmd),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            while let Some(id) = self.timers.pop_due(now) {
                self.with_peer(id, |peer| peer.handle_timeout(now));
            }
            if now >= next_allocation {
                // Layer rates move even when the estimate does not.
                next_allocation = now + ALLOCATION_INTERVAL;
                let estimated: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.estimate.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                self.spotlight_tick();
                for id in estimated {
                    self.allocate(id, now);
                }
            }
            self.handle_deferred();
            self.reap();
        }
    }

    fn read_socket(&mut self, buf: &mut [u8]) {
        loop {
            match self.socket.recv_from(buf) {
                Ok((n, source)) => {
                    self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                    self.datagram(source, n, buf);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ICMP errors surface here on Linux; they concern one peer
                // and are not fatal to the socket.
                Err(e) => {
                    debug!(shard = self.index, error = %e, "recv error");
                    continue;
                }
            }
        }
    }

    fn datagram(&mut self, source: SocketAddr, n: usize, buf: &[u8]) {
        let data = &buf[..n];
        let Some((id, by_addr)) = self.demux.route(source, data) else {
            self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let destination = self.candidate;
        if !by_addr {
            // A STUN request naming our ufrag from a new address: learn the
            // address only if ICE agrees it belongs to this peer.
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            if !conn.peer.accepts(source, destination, data) {
                return;
            }
            self.demux.learn_addr(source, id);
        }
        let now = Instant::now();
        self.with_peer(id, |peer| {
            peer.handle_receive(now, source, destination, data)
        });
    }

    /// Run a mutation on one connection's peer, drain it and handle what it
    /// produced. Errors and panics mark the connection dead.
    fn with_peer(&mut self, id: u64, f: impl FnOnce(&mut Peer) -> Result<(), String>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.dead.is_some() {
            return;
        }
        let mut out = std::mem::take(&mut self.scratch);
        let socket = &self.socket;
        let timers = &mut self.timers;
        let counters = &*self.counters;
        let result = catch_unwind(AssertUnwindSafe(|| {
            f(&mut conn.peer)?;
            drain(id, &mut conn.peer, socket, timers, counters, &mut out)
        }));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Input errors (a bad datagram) are the remote's problem,
                // not fatal; poll errors are.
                debug!(conn = %conn.name, error = %e, "peer error");
                if !conn.peer.is_alive() {
                    conn.dead = Some(format!("peer failed: {e}"));
                }
            }
            Err(_) => {
                warn!(conn = %conn.name, channel = %conn.channel, "panic in peer; closing connection");
                conn.dead = Some("internal error".into());
            }
        }
        if conn.dead.is_some() {
            self.dying.push(id);
        }
        for ev in out.drain(..) {
            match ev {
                PeerEvent::Rtp(pkt) => self.forward(id, pkt),
                other => self.deferred.push((id, other)),
            }
        }
        self.scratch = out;
    }

    /// Forward one packet of `publisher` to every active subscription; for
    /// a simulcast track, to those whose selected layer it belongs to.
    fn forward(&mut self, publisher: u64, pkt: crate::peer::RtpIn) {
        let key = (publisher, pkt.mid);
        let now = Instant::now();
        if let (Some((level, _)), false) = (pkt.audio_level, self.spotlights.is_empty()) {
            self.hear(publisher, level);
        }
        let Some(track) = self.tracks.get_mut(&key) else {
            return;
        };
        let Ok(layer) = track.layer_of(pkt.rid) else {
            return; // a RID we did not offer
        };
        // Only simulcast switching needs to look into payloads.
        let mut keyframe = false;
        let mut vp8 = None;
        track.rate.add(now, pkt.payload.len());
        if let Some(l) = layer {
            track.layers[l as usize].saw_packet(now, pkt.payload.len());
            let codec = match track.codec {
                Some((pt, c)) if pt == pkt.pt => Some(c),
                _ => {
                    let c = self
                        .conns
                        .get(&publisher)
                        .and_then(|c| c.peer.codec_of_pt(pkt.pt));
                    track.codec = c.map(|c| (pkt.pt, c));
                    c
                }
            };
            match codec {
                // VP8's descriptor is read once, for the keyframe bit and
                // the numbering to rewrite.
                Some("VP8") => {
                    vp8 = vp8_header(&pkt.payload);
                    keyframe = vp8.is_some_and(|h| h.keyframe);
                }
                Some(codec) => keyframe = starts_keyframe(codec, &pkt.payload),
                None => {}
            }
        }
        // Which layers are live matters only to simulcast packets.
        let live = match layer {
            Some(_) => availability(&track.layers, now),
            None => Default::default(),
        };
        let track = &*track;
        let nackable = track.kind == Kind::Video;
        // The publisher's capture instant, so that our sender reports keep
        // its audio and video in sync (see clock.rs).
        let wallclock = track.capture_instant(pkt.time as u32, pkt.received);
        // Sequence numbers and timestamps restart per layer (stream).
        let source = publisher * 4 + layer.unwrap_or(0) as u64;
        let mut wanted_keyframes: Vec<Layer> = Vec::new();
        let mut out = std::mem::take(&mut self.scratch);
        for &(sub_id, sub_mid) in &track.subscribers {
            let Some(conn) = self.conns.get_mut(&sub_id) else {
                continue;
            };
            if conn.dead.is_some() || !conn.connected {
                continue;
            }
            let Some(sub) = conn.subscriptions.get_mut(&sub_mid) else {
                continue;
            };
            if !sub.active {
                continue;
            }
            let mut rewrite = None;
            if let Some(l) = layer {
                let d = sub.selection.on_packet(l, keyframe, live);
                if let Some(k) = d.want_keyframe {
                    if !wanted_keyframes.contains(&k) {
                        wanted_keyframes.push(k);
                    }
                }
                if let Some((previous, new)) = d.switched {
                    let mut ev = EngineEvent::new(EventKind::LayerSwitched, conn.name.clone());
                    ev.mid = Some(sub_mid.to_string());
                    ev.stream_id = Some(track.publisher_name.to_string());
                    ev.rid = track.rid(new).map(|r| r.to_string());
                    ev.previous_rid = previous.and_then(|p| track.rid(p)).map(|r| r.to_string());
                    self.events.send(ev);
                    debug!(conn = %conn.name, publisher = %track.publisher_name, layer = new, "simulcast layer switched");
                }
                if !d.forward {
                    continue;
                }
                // Only descriptors with numbering need patching (str0m's
                // packetizer sends none; libwebrtc's does).
                rewrite = vp8
                    .filter(|h| h.picture_id.is_some() || h.tl0_pic_idx.is_some())
                    .map(|h| sub.vp8.rewrite(l, &h));
            }
            let (seq, ts) = sub.rewriter.rewrite(source, pkt.seq, pkt.time, now);
            let socket = &self.socket;
            let timers = &mut self.timers;
            let counters = &*self.counters;
            let payload = pkt.payload.clone();
            let result = catch_unwind(AssertUnwindSafe(|| {
                // PTs are the same on both sides: every server peer is built
                // from the same codec table and clients answer with our PTs.
                if conn.peer.write_rtp(
                    sub_mid,
                    pkt.pt,
                    seq,
                    ts,
                    wallclock,
                    pkt.marker,
                    pkt.audio_level,
                    payload,
                    nackable,
                    rewrite,
                ) {
                    counters.forwarded_packets.fetch_add(1, Ordering::Relaxed);
                }
                drain(sub_id, &mut conn.peer, socket, timers, counters, &mut out)
            }));
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => conn.dead = Some(format!("peer failed: {e}")),
                Err(_) => {
                    warn!(conn = %conn.name, "panic while forwarding; closing connection");
                    conn.dead = Some("internal error".into());
                }
            }
            if conn.dead.is_some() {
                self.dying.push(sub_id);
            }
            for ev in out.drain(..) {
                self.deferred.push((sub_id, ev));
            }
        }
        self.scratch = out;
        for l in wanted_keyframes {
            self.request_layer_keyframe(key, l);
        }
    }

    fn handle_deferred(&mut self) {
        // Handling can defer more events (a keyframe request drains the
        // publisher); loop until quiet.
        while !self.deferred.is_empty() {
            let batch = std::mem::take(&mut self.deferred);
            for (id, ev) in batch {
                self.peer_event(id, ev);
            }
        }
    }

    fn peer_event(&mut self, id: u64, ev: PeerEvent) {
        match ev {
            PeerEvent::Connected => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                conn.connected = true;
                info!(conn = %conn.name, channel = %conn.channel, "connected");
                self.events
                    .send(EngineEvent::new(EventKind::Connected, conn.name.clone()));
                // Subscriptions negotiated before DTLS was up had their
                // keyframe requests ignored; ask again now.
                let tracks: Vec<TrackKey> = conn
                    .subscriptions
                    .values()
                    .filter(|s| s.active)
                    .map(|s| s.track)
                    .collect();
                for t in tracks {
                    self.request_keyframe(t, true);
                }
            }
            PeerEvent::Disconnected(why) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.dead.get_or_insert_with(|| why.into());
                    self.dying.push(id);
                }
            }
            PeerEvent::KeyframeRequest(mid, _) => {
                let sub = self
                    .conns
                    .get(&id)
                    .and_then(|c| c.subscriptions.get(&mid))
                    .map(|s| (s.track, s.selection.current()));
                let simulcast = sub
                    .and_then(|(t, _)| self.tracks.get(&t))
                    .is_some_and(|t| t.is_simulcast());
                match sub {
                    // A simulcast subscriber needs a keyframe of its layer only.
                    Some((t, Some(layer))) if simulcast => self.request_layer_keyframe(t, layer),
                    Some((_, None)) if simulcast => {} // its first keyframe is on its way
                    Some((t, _)) => self.request_keyframe(t, false),
                    None => {}
                }
            }
            PeerEvent::Rtp(pkt) => self.forward(id, pkt),
            PeerEvent::ChannelOpen(label) => {
                if let Some(conn) = self.conns.get(&id) {
                    debug!(conn = %conn.name, label = %label, "data channel open");
                    let name = conn.name.clone();
                    self.events.send(EngineEvent::channel(
                        EventKind::ChannelOpen,
                        name,
                        label,
                        None,
                    ));
                }
            }
            PeerEvent::ChannelClose(label) => {
                if let Some(conn) = self.conns.get(&id) {
                    let name = conn.name.clone();
                    self.events.send(EngineEvent::channel(
                        EventKind::ChannelClose,
                        name,
                        label,
                        None,
                    ));
                }
            }
            PeerEvent::ChannelData { label, data, .. } => {
                let Some(conn) = self.conns.get(&id) else {
                    return;
                };
                match conn.data_channel(&label) {
                    Some(spec) if spec.messaging => {
                        if spec.send {
                            self.forward_message(id, &label, &data);
                        }
                    }
                    _ => {
                        let name = conn.name.clone();
                        self.events.send(EngineEvent::channel(
                            EventKind::ChannelData,
                            name,
                            label,
                            Some(data),
                        ));
                    }
                }
            }
            PeerEvent::SenderReport {
                mid,
                ntp,
                rtp,
                received,
            } => {
                let Some(report) = SenderReport::new(ntp, rtp) else {
                    return;
                };
                let (Some(track), Some(conn)) =
                    (self.tracks.get_mut(&(id, mid)), self.conns.get_mut(&id))
                else {
                    return;
                };
                // One base per publisher, from its first report: all its
                // tracks share it, so their relative timing is kept.
                let base = *conn
                    .clock
                    .get_or_insert_with(|| ClockBase::new(report, received));
                track.sender_report = Some((base, report));
            }
            PeerEvent::Bitrate(bps) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    debug!(conn = %conn.name, bps, "bandwidth estimate");
                    conn.estimate = Some(bps);
                }
                self.allocate(id, Instant::now());
            }
            PeerEvent::Frame(_) => {}
        }
    }

    /// An audio level from `publisher`, for the spotlight of its channel.
    fn hear(&mut self, publisher: u64, level: i8) {
        let Some(conn) = self.conns.get(&publisher) else {
            return;
        };
        if let Some(spot) = self.spotlights.get_mut(&conn.channel) {
            spot.heard(publisher, level);
        }
    }

    /// Reconsider every spotlight channel's focus; tell Python of changes
    /// and give each spotlight receiver its focus/unfocus layers.
    fn spotlight_tick(&mut self) {
        let channels: Vec<Arc<str>> = self.spotlights.keys().cloned().collect();
        for channel in channels {
            let Some(spot) = self.spotlights.get_mut(&channel) else {
                continue;
            };
            let (gained, lost) = spot.tick();
            let spot = &*spot;
            for (ids, kind) in [
                (gained, EventKind::SpotlightFocused),
                (lost, EventKind::SpotlightUnfocused),
            ] {
                for p in ids {
                    if let Some(c) = self.conns.get(&p) {
                        info!(conn = %c.name, channel = %channel, focused = kind == EventKind::SpotlightFocused, "spotlight");
                        self.events.send(EngineEvent::new(kind, c.name.clone()));
                    }
                }
            }
            for member in self.channels.get(&channel).into_iter().flatten() {
                let Some(conn) = self.conns.get_mut(member) else {
                    continue;
                };
                let Some(layers) = conn.spotlight else {
                    continue;
                };
                for sub in conn.subscriptions.values_mut() {
                    let want = if spot.is_focused(sub.track.0) {
                        layers.focus
                    } else {
                        layers.unfocus
                    };
                    if sub.selection.request() != want {
                        sub.selection.set_request(want);
                    }
                }
            }
        }
    }

    /// Fit the simulcast layers a subscriber gets into its bandwidth
    /// estimate, and tell the estimator what to probe for: the layers it
    /// asked for (desired) and the next layer up (kept up with padding).
    fn allocate(&mut self, id: u64, now: Instant) {
        let tracks = &self.tracks;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(estimate) = conn.estimate else {
            return;
        };
        let mut fixed = 0u64;
        let mut simulcast: Vec<Mid> = Vec::new();
        for (mid, sub) in &conn.subscriptions {
            match tracks.get(&sub.track) {
                Some(t) if t.is_simulcast() => simulcast.push(*mid),
                Some(t) if sub.active => fixed += t.rate.rate(now),
                _ => {}
            }
        }
        if simulcast.is_empty() {
            return;
        }
        // Every subscription keeps room for its lowest live layer; what is
        // left goes to them in a stable order.
        simulcast.sort();
        let layers: Vec<(Mid, Vec<u64>, _)> = simulcast
            .into_iter()
            .filter_map(|mid| {
                let track = tracks.get(&conn.subscriptions.get(&mid)?.track)?;
                let rates = track.layers.iter().map(|l| l.rate.rate(now)).collect();
                Some((mid, rates, availability(&track.layers, now)))
            })
            .collect();
        let lowest = |rates: &[u64], live: super::simulcast::Availability| {
            (0..rates.len())
                .find(|l| live.has(*l as Layer))
                .map_or(0, |l| rates[l])
        };
        let mut reserved: u64 = layers.iter().map(|(_, r, live)| lowest(r, *live)).sum();
        let mut budget = estimate.saturating_sub(fixed);
        let (mut minimum, mut desired) = (fixed, fixed);
        for (mid, rates, live) in layers {
            let Some(sub) = conn.subscriptions.get_mut(&mid) else {
                continue;
            };
            let own = lowest(&rates, live);
            reserved -= own;
            let before = sub.selection.cap();
            let planned =
                sub.selection
                    .allocate(&rates, live, budget.saturating_sub(reserved), now);
            if sub.selection.cap() != before {
                info!(conn = %conn.name, channel = %conn.channel, estimate, budget, ?rates, cap = ?sub.selection.cap(), "simulcast bandwidth cap changed");
            }
            let wanted = sub.selection.wanted(live);
            let rate = |l: Option<Layer>| l.map_or(0, |l| rates[l as usize]);
            budget = budget.saturating_sub(rate(planned));
            // Probe for enough headroom to go up (see UP_MARGIN).
            desired += (rate(wanted) as f64 / UP_MARGIN) as u64;
            // Keep the next layer's rate flowing (padding) so the estimate
            // can show it fits.
            let next = match (planned, wanted) {
                (Some(p), Some(w)) if p < w => Some(p + 1),
                (p, _) => p,
            };
            minimum += rate(next);
        }
        let (old_min, old_desired) = conn.bwe_rates;
        let moved = |a: u64, b: u64| a.abs_diff(b) * 10 > b.max(1);
        if moved(minimum, old_min) || moved(desired, old_desired) {
            conn.bwe_rates = (minimum, desired);
            self.with_peer(id, |peer| {
                peer.set_bwe_rates(minimum, desired);
                Ok(())
            });
        }
    }

    /// Forward a messaging data-channel message to every other connection
    /// of the channel that receives on the same label.
    fn forward_message(&mut self, from: u64, label: &str, data: &[u8]) {
        let Some(sender) = self.conns.get(&from) else {
            return;
        };
        let sender_name = sender.name.clone();
        let sender_compressed = sender.data_channel(label).is_some_and(|d| d.compress);
        let targets: Vec<(u64, bool, bool)> = self
            .channels
            .get(&sender.channel)
            .into_iter()
            .flatten()
            .filter(|m| **m != from)
            .filter_map(|m| {
                let c = self.conns.get(m)?;
                let spec = c.data_channel(label)?;
                (spec.recv && c.peer.has_channel(label)).then_some((*m, spec.header, spec.compress))
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        // The common case (no header, same compression on both sides)
        // forwards the bytes untouched; otherwise work on the plain message.
        let plain = if sender_compressed {
            match inflate(data) {
                Some(p) => Some(p),
                None => {
                    debug!(
                        label,
                        "dropped a message that is not zlib on a compressed label"
                    );
                    return;
                }
            }
        } else {
            None
        };
        let plain: &[u8] = plain.as_deref().unwrap_or(data);
        let mut variants: HashMap<(bool, bool), Vec<u8>> = HashMap::new();
        for (target, header, compress) in targets {
            let payload: &[u8] = if !header && compress == sender_compressed {
                data
            } else {
                variants.entry((header, compress)).or_insert_with(|| {
                    let mut m = Vec::with_capacity(plain.len() + 26);
                    if header {
                        m.extend_from_slice(sender_name.as_bytes());
                    }
                    m.extend_from_slice(plain);
                    if compress {
                        deflate(&m)
                    } else {
                        m
                    }
                })
            };
            self.with_peer(target, |peer| {
                if let Ok(false) | Err(_) = peer.send_channel(label, payload, true) {
                    debug!(
                        label,
                        "message not forwarded (buffer full or channel closed)"
                    );
                }
                Ok(())
            });
        }
    }

    /// Ask a track's publisher for a keyframe (throttled unless `force`);
    /// for a simulcast track, of every layer.
    fn request_keyframe(&mut self, key: TrackKey, force: bool) {
        let now = Instant::now();
        let Some(track) = self.tracks.get_mut(&key) else {
            return;
        };
        if track.kind != Kind::Video {
            return;
        }
        if !track.allow_keyframe_request(now) && !force {
            return;
        }
        let rids: Vec<_> = if track.is_simulcast() {
            track.rids.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        let (publisher, mid) = key;
        self.with_peer(publisher, |peer| {
            for rid in rids {
                peer.request_keyframe_rx(mid, rid);
            }
            Ok(())
        });
    }

    /// Ask for a keyframe of one simulcast layer (throttled per layer).
    fn request_layer_keyframe(&mut self, key: TrackKey, layer: Layer) {
        let now = Instant::now();
        let Some(track) = self.tracks.get_mut(&key) else {
            return;
        };
        let Some(rid) = track.rid(layer) else {
            return;
        };
        if !track.layers[layer as usize].allow_keyframe_request(now) {
            return;
        }
        let (publisher, mid) = key;
        self.with_peer(publisher, |peer| {
            peer.request_keyframe_rx(mid, Some(rid));
            Ok(())
        });
    }

    /// A subscriber's simulcast layer request, for one sender or (None)
    /// every sender.
    fn set_layer(
        &mut self,
        name: &str,
        sender: Option<&str>,
        layer: Option<Layer>,
    ) -> Result<(), String> {
        let id = *self
            .by_name
            .get(name)
            .ok_or_else(|| format!("unknown connection {name}"))?;
        let sender = match sender {
            Some(s) => Some(
                *self
                    .by_name
                    .get(s)
                    .ok_or_else(|| format!("unknown sender connection {s}"))?,
            ),
            None => None,
        };
        let conn = self
            .conns
            .get_mut(&id)
            .expect("by_name is in step with conns");
        match sender {
            Some(p) => {
                conn.layer_overrides.insert(p, layer);
            }
            None => {
                conn.layer_request = layer;
                conn.layer_overrides.clear();
            }
        }
        for sub in conn.subscriptions.values_mut() {
            if sender.is_none_or(|p| p == sub.track.0) {
                sub.selection.set_request(layer);
            }
        }
        Ok(())
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Create(spec, reply) => {
                let r = self.create(spec);
                let _ = reply.send(r);
            }
            Command::Answer(name, sdp, reply) => {
                let r = self.answer(&name, &sdp);
                let _ = reply.send(r);
            }
            Command::Candidate(name, line, reply) => {
                let r = match self.by_name.get(name.as_str()).copied() {
                    Some(id) => {
                        let mut res = Ok(());
                        self.with_peer(id, |peer| {
                            res = peer.add_remote_candidate(&line);
                            Ok(())
                        });
                        res
                    }
                    None => Err(format!("unknown connection {name}")),
                };
                let _ = reply.send(r);
            }
            Command::RequestKeyframe(name) => {
                if let Some(id) = self.by_name.get(name.as_str()).copied() {
                    let keys: Vec<TrackKey> = self
                        .tracks
                        .keys()
                        .filter(|(p, _)| *p == id)
                        .copied()
                        .collect();
                    for k in keys {
                        self.request_keyframe(k, true);
                    }
                }
            }
            Command::SendData(name, label, data, reply) => {
                let r = match self.by_name.get(name.as_str()).copied() {
                    Some(id) => {
                        let mut res = Ok(false);
                        self.with_peer(id, |peer| {
                            res = peer.send_channel(&label, &data, true);
                            Ok(())
                        });
                        res
                    }
                    None => Err(format!("unknown connection {name}")),
                };
                let _ = reply.send(r);
            }
            Command::CloseChannels(name) => {
                if let Some(id) = self.by_name.get(name.as_str()).copied() {
                    self.with_peer(id, |peer| {
                        peer.close_channels();
                        Ok(())
                    });
                }
            }
            Command::SetLayer(name, sender, layer, reply) => {
                let r = self.set_layer(&name, sender.as_deref(), layer);
                let _ = reply.send(r);
            }
            Command::Close(name) => {
                if let Some(id) = self.by_name.get(name.as_str()).copied() {
                    self.remove(id, None);
                }
            }
            Command::Stop => unreachable!("handled by the loop"),
        }
    }

    fn create(&mut self, spec: ConnectionSpec) -> Result<Created, String> {
        if self.by_name.contains_key(spec.connection_id.as_str()) {
            return Err(format!("duplicate connection id {}", spec.connection_id));
        }
        let now = Instant::now();
        let id = next_id();
        let name: Arc<str> = spec.connection_id.as_str().into();
        let channel: Arc<str> = spec.channel_id.as_str().into();
        let mut ufrag = random_token(8);
        while self.demux.has_ufrag(&ufrag) {
            ufrag = random_token(8);
        }
        let role = if spec.bandwidth_estimation {
            Role::ServerWithEstimate
        } else {
            Role::Server
        };
        let mut peer = Peer::new(role, now, Some(&ufrag), Some(&spec.video_codec), spec.opus);
        peer.add_local_candidate(self.candidate)?;

        // Upstream m-lines first: libwebrtc binds the client's tracks to the
        // first unused transceivers of their kind.
        let mut changes = Vec::new();
        if spec.send_audio {
            changes.push(OfferChange::AddRecv {
                kind: Kind::Audio,
                rids: Vec::new(),
            });
        }
        if spec.send_video {
            changes.push(OfferChange::AddRecv {
                kind: Kind::Video,
                rids: spec.simulcast_rids.clone(),
            });
        }
        let upstream_count = changes.len();
        let mut offered_tracks = Vec::new();
        if spec.recv {
            for member in self.channels.get(&channel).into_iter().flatten() {
                for (key, track) in self.tracks.iter().filter(|(k, _)| k.0 == *member) {
                    changes.push(OfferChange::AddSend {
                        kind: track.kind,
                        stream_id: track.publisher_name.to_string(),
                        track_id: track.track_id.clone(),
                    });
                    offered_tracks.push((*key, track.kind));
                }
            }
        }
        for dc in &spec.data_channels {
            changes.push(OfferChange::AddChannel(dc.channel.clone()));
        }
        if changes.is_empty() {
            // A recvonly client in an empty channel still needs a transport
            // to be negotiated; a data channel m-line gives it one.
            changes.push(OfferChange::AddChannel(ChannelSpec::reliable("hibiki")));
        }
        let (mids, sdp) = peer.create_offer(&changes)?;
        let sdp = sdp.ok_or("nothing to offer")?;

        let mut conn = Connection {
            name: name.clone(),
            channel: channel.clone(),
            peer,
            recv: spec.recv,
            upstream: Vec::new(),
            answered: false,
            connected: false,
            dead: None,
            subscriptions: HashMap::new(),
            pending_add: Vec::new(),
            pending_stop: Vec::new(),
            data_channels: spec.data_channels.clone(),
            clock: None,
            simulcast_rids: spec.simulcast_rids.clone(),
            layer_request: spec.layer_request,
            layer_overrides: HashMap::new(),
            estimate: None,
            bwe_rates: (0, 0),
            spotlight: spec.spotlight.map(|(_, layers)| layers),
        };
        if let Some((number, layers)) = spec.spotlight {
            // Until the first focus is known, everyone is unfocused.
            conn.layer_request = layers.unfocus;
            self.spotlights
                .entry(channel.clone())
                .or_insert_with(|| Spotlight::new(number));
        }
        for (i, change) in changes.iter().enumerate().take(upstream_count) {
            if let (OfferChange::AddRecv { kind, .. }, Some(mid)) = (change, mids[i]) {
                conn.upstream.push((mid, *kind));
            }
        }
        for (j, (key, kind)) in offered_tracks.into_iter().enumerate() {
            if let Some(mid) = mids[upstream_count + j] {
                let sub = conn.subscription(key, kind);
                conn.subscriptions.insert(mid, sub);
            }
        }
        let created = Created {
            sdp,
            audio_mid: conn.mid_for(Kind::Audio),
            video_mid: conn.mid_for(Kind::Video),
        };
        self.demux.insert_ufrag(&ufrag, id);
        self.by_name.insert(name.clone(), id);
        self.channels.entry(channel.clone()).or_default().push(id);
        self.conns.insert(id, conn);
        self.counters
            .connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
        // Creating the offer mutated the peer: drain it.
        self.with_peer(id, |_| Ok(()));
        info!(conn = %name, channel = %channel, shard = self.index, "connection created");
        Ok(created)
    }

    fn answer(&mut self, name: &str, sdp: &str) -> Result<(), String> {
        let id = *self
            .by_name
            .get(name)
            .ok_or_else(|| format!("unknown connection {name}"))?;
        let mut result = Ok(());
        self.with_peer(id, |peer| {
            result = peer.accept_answer(sdp);
            Ok(())
        });
        result?;
        let conn = self.conns.get_mut(&id).expect("present");
        let first = !conn.answered;
        conn.answered = true;

        // Subscriptions in the answered offer become live.
        let mut activated = Vec::new();
        let mut vanished = Vec::new();
        for (mid, sub) in conn.subscriptions.iter_mut() {
            if !sub.active {
                sub.active = true;
                activated.push((*mid, sub.track));
            }
        }
        let channel = conn.channel.clone();
        let publisher_name = conn.name.clone();
        let simulcast_rids = conn.simulcast_rids.clone();
        let mut new_tracks = Vec::new();
        if first {
            for (mid, kind) in conn.upstream.clone() {
                let live = conn
                    .peer
                    .media_info(mid)
                    .map(|m| m.receiving && !m.stopped)
                    .unwrap_or(false);
                if live {
                    new_tracks.push((mid, kind));
                }
            }
        }
        for (mid, key) in activated {
            match self.tracks.get_mut(&key) {
                Some(t) => {
                    t.subscribers.push((id, mid));
                }
                None => vanished.push(mid),
            }
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            // The track left while this m-line was being negotiated.
            for mid in vanished {
                conn.subscriptions.remove(&mid);
                conn.pending_stop.push(mid);
            }
        }
        for (mid, kind) in new_tracks {
            let key = (id, mid);
            let track_id = format!("{}-{}", kind.as_str(), mid);
            let mut track = Track::new(kind, publisher_name.clone(), track_id.clone());
            if kind == Kind::Video {
                track = track.with_layers(&simulcast_rids);
            }
            self.tracks.insert(key, track);
            let mut ev = EngineEvent::new(EventKind::TrackPublished, publisher_name.clone());
            ev.mid = Some(mid.to_string());
            ev.media = Some(kind.as_str());
            ev.track_id = Some(track_id);
            self.events.send(ev);
            for other in self.channels.get(&channel).into_iter().flatten() {
                if *other == id {
                    continue;
                }
                if let Some(o) = self.conns.get_mut(other) {
                    if o.recv && o.dead.is_none() {
                        o.pending_add.push(key);
                    }
                }
            }
        }
        // New subscribers need a picture now, not at the next periodic
        // keyframe.
        let wanted: Vec<TrackKey> = self
            .conns
            .get(&id)
            .map(|c| {
                c.subscriptions
                    .values()
                    .filter(|s| s.active && s.kind == Kind::Video)
                    .map(|s| s.track)
                    .collect()
            })
            .unwrap_or_default();
        for key in wanted {
            self.request_keyframe(key, false);
        }
        self.renegotiate(&channel);
        Ok(())
    }

    /// Send a re-offer to every connection of `channel` that has changes
    /// and no offer outstanding. Renegotiation is serialised per
    /// connection: changes that arrive meanwhile wait for the answer.
    fn renegotiate(&mut self, channel: &Arc<str>) {
        let members: Vec<u64> = self.channels.get(channel).cloned().unwrap_or_default();
        for id in members {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if !conn.needs_offer() {
                continue;
            }
            let stops = std::mem::take(&mut conn.pending_stop);
            let adds = std::mem::take(&mut conn.pending_add);
            let mut changes = Vec::new();
            for mid in &stops {
                conn.subscriptions.remove(mid);
                changes.push(OfferChange::Stop(*mid));
            }
            let mut added = Vec::new();
            for key in adds {
                let already = conn.subscriptions.values().any(|s| s.track == key);
                if already {
                    continue;
                }
                if let Some(t) = self.tracks.get(&key) {
                    changes.push(OfferChange::AddSend {
                        kind: t.kind,
                        stream_id: t.publisher_name.to_string(),
                        track_id: t.track_id.clone(),
                    });
                    added.push((key, t.kind));
                }
            }
            if changes.is_empty() {
                continue;
            }
            let (mids, sdp) = match conn.peer.create_offer(&changes) {
                Ok(x) => x,
                Err(e) => {
                    warn!(conn = %conn.name, error = %e, "could not create re-offer");
                    continue;
                }
            };
            let offset = stops.len();
            for (j, (key, kind)) in added.into_iter().enumerate() {
                if let Some(mid) = mids[offset + j] {
                    let sub = conn.subscription(key, kind);
                    conn.subscriptions.insert(mid, sub);
                }
            }
            let name = conn.name.clone();
            if let Some(sdp) = sdp {
                let mut ev = EngineEvent::new(EventKind::Offer, name.clone());
                ev.sdp = Some(sdp);
                self.events.send(ev);
                debug!(conn = %name, channel = %channel, "re-offer");
            }
            self.with_peer(id, |_| Ok(()));
        }
    }

    /// Remove a connection. `reason` is Some when the engine decided it
    /// (Python is then told); None when Python asked.
    fn remove(&mut self, id: u64, reason: Option<String>) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        // Say goodbye (DTLS close_notify, SCTP shutdown) so the client
        // notices now, not after its ICE timeout; then stop for good.
        let mut scratch = Vec::new();
        let socket = &self.socket;
        let counters = &*self.counters;
        let timers = &mut self.timers;
        let _ = catch_unwind(AssertUnwindSafe(|| {
            conn.peer.close();
            drain(id, &mut conn.peer, socket, timers, counters, &mut scratch)
        }));
        conn.peer.disconnect();
        self.demux.remove(id);
        self.timers.remove(id);
        self.by_name.remove(&conn.name);
        let channel = conn.channel.clone();
        if let Some(members) = self.channels.get_mut(&channel) {
            members.retain(|m| *m != id);
            if members.is_empty() {
                self.channels.remove(&channel);
                self.spotlights.remove(&channel);
            }
        }
        if let Some(spot) = self.spotlights.get_mut(&channel) {
            spot.remove(id);
        }
        // Its tracks disappear from every subscriber.
        let keys: Vec<TrackKey> = self
            .tracks
            .keys()
            .filter(|(p, _)| *p == id)
            .copied()
            .collect();
        for key in keys {
            if let Some(track) = self.tracks.remove(&key) {
                for (sub_id, sub_mid) in track.subscribers {
                    if let Some(sub) = self.conns.get_mut(&sub_id) {
                        sub.pending_stop.push(sub_mid);
                    }
                }
            }
            for other in self.conns.values_mut() {
                other.pending_add.retain(|k| *k != key);
                // Offered but not yet answered: stop it too.
                let stale: Vec<Mid> = other
                    .subscriptions
                    .iter()
                    .filter(|(_, s)| s.track == key && !s.active)
                    .map(|(m, _)| *m)
                    .collect();
                other.pending_stop.extend(stale);
            }
        }
        // Its subscriptions stop receiving.
        for sub in conn.subscriptions.values() {
            if let Some(t) = self.tracks.get_mut(&sub.track) {
                t.subscribers.retain(|(s, _)| *s != id);
            }
        }
        self.counters
            .connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
        info!(conn = %conn.name, channel = %channel, reason = reason.as_deref().unwrap_or("closed by control plane"), "connection removed");
        if let Some(reason) = reason {
            let mut ev = EngineEvent::new(EventKind::Closed, conn.name.clone());
            ev.reason = Some(reason);
            self.events.send(ev);
        }
        self.renegotiate(&channel);
    }

    fn reap(&mut self) {
        while let Some(id) = self.dying.pop() {
            let reason = self.conns.get(&id).and_then(|c| c.dead.clone());
            if let Some(reason) = reason {
                self.remove(id, Some(reason));
            }
        }
    }
}

/// zlib (RFC 1950) decompression, bounded so a small bomb cannot allocate
/// without limit.
fn inflate(data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    const MAX: u64 = 1 << 20;
    let mut out = Vec::new();
    let mut d = flate2::read::ZlibDecoder::new(data).take(MAX + 1);
    d.read_to_end(&mut out).ok()?;
    (out.len() as u64 <= MAX).then_some(out)
}

/// zlib (RFC 1950) compression.
fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}
