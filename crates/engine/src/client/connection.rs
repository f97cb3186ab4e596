//! One client connection: a peer, its UDP socket and the remote tracks it
//! has announced to Python.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;

use super::pick_local;
use super::slack::{Activity, SlackTimers};
use crate::event::{EngineEvent, EventKind};
use crate::frames::FrameQueue;
use crate::peer::{mid_from_str, Kind, Mid, Output, Peer, PeerEvent};
use crate::queue::EventSender;

/// Frames a remote track's queue holds for a decoder that fell behind:
/// 2 s of 30 fps video, 2 s of 20 ms audio packets.
const VIDEO_QUEUE: usize = 60;
const AUDIO_QUEUE: usize = 100;

pub(crate) struct ClientConnection {
    pub handle: u64,
    name: Arc<str>,
    pub peer: Peer,
    pub socket: UdpSocket,
    pub candidates: Vec<SocketAddr>,
    /// Remote tracks announced to Python, by mid, with their frame queue
    /// when frames are routed per track.
    remote: HashMap<Mid, Option<Arc<FrameQueue>>>,
    /// Whether any m-line sends video, and whether any receives video, as
    /// negotiated now (see [`super::slack`]).
    sends_video: bool,
    receives_video: bool,
    /// Give each remote track its own [`FrameQueue`] (see `ClientEngine::connect`).
    route_frames: bool,
    pub connected: bool,
    reported_connected: bool,
    pub dead: Option<String>,
    /// Events produced outside a drain (SDP handling), sent at the next one.
    pending: Vec<EngineEvent>,
    last_bitrate: u64,
    /// When a datagram last came in, a media frame was last written, and a
    /// data-channel message last went out (see [`super::slack`]).
    pub last_receive: Option<Instant>,
    pub last_write: Option<Instant>,
    pub last_message: Option<Instant>,
}

/// Host candidates: every IPv4 interface address (loopback included, so
/// that a server on 127.0.0.1 is reachable).
fn host_ips() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|v| {
            v.into_iter()
                .map(|i| i.ip())
                .filter(|ip| ip.is_ipv4())
                .collect()
        })
        .unwrap_or_default();
    if ips.is_empty() {
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    ips.sort_by_key(|ip| !ip.is_loopback());
    ips.dedup();
    ips
}

impl ClientConnection {
    pub fn new(handle: u64, mut peer: Peer, route_frames: bool) -> std::io::Result<Self> {
        let std_socket =
            crate::socket::bind_udp(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))?;
        let port = std_socket.local_addr()?.port();
        let socket = UdpSocket::from_std(std_socket);
        let mut candidates = Vec::new();
        for ip in host_ips() {
            let addr = SocketAddr::new(ip, port);
            if peer.add_local_candidate(addr).is_ok() {
                candidates.push(addr);
            }
        }
        Ok(ClientConnection {
            handle,
            name: handle.to_string().into(),
            peer,
            socket,
            candidates,
            remote: HashMap::new(),
            sends_video: false,
            receives_video: false,
            route_frames,
            connected: false,
            reported_connected: false,
            dead: None,
            pending: Vec::new(),
            last_bitrate: 0,
            last_receive: None,
            last_write: None,
            last_message: None,
        })
    }

    pub fn local_addr_for(&self, source: SocketAddr) -> SocketAddr {
        pick_local(&self.candidates, source)
    }

    /// Apply an offer (first or re-offer), return the answer, and queue
    /// track_added / track_removed for what changed.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, String> {
        let answer = self.peer.accept_offer(sdp)?;
        let mids: Vec<Mid> = sdp
            .lines()
            .filter_map(|l| l.trim().strip_prefix("a=mid:"))
            .map(mid_from_str)
            .collect();
        let lines = self.peer.media_lines(mids);
        let video = || lines.iter().filter(|i| i.kind == Kind::Video && !i.stopped);
        self.sends_video = video().any(|info| info.sending);
        self.receives_video = video().any(|info| info.receiving);
        for info in lines {
            let known = self.remote.contains_key(&info.mid);
            let live = info.receiving && !info.stopped;
            if live && !known {
                let queue = self.route_frames.then(|| {
                    Arc::new(FrameQueue::new(match info.kind.as_str() {
                        "audio" => AUDIO_QUEUE,
                        _ => VIDEO_QUEUE,
                    }))
                });
                self.remote.insert(info.mid, queue.clone());
                let mut ev = EngineEvent::new(EventKind::TrackAdded, self.name.clone());
                ev.mid = Some(info.mid.to_string());
                ev.media = Some(info.kind.as_str());
                ev.stream_id = Some(info.stream_id);
                ev.track_id = Some(info.track_id);
                ev.frames = queue;
                self.pending.push(ev);
            } else if !live && known {
                if let Some(Some(queue)) = self.remote.remove(&info.mid) {
                    queue.close();
                }
                let mut ev = EngineEvent::new(EventKind::TrackRemoved, self.name.clone());
                ev.mid = Some(info.mid.to_string());
                ev.media = Some(info.kind.as_str());
                self.pending.push(ev);
            }
        }
        Ok(answer)
    }

    /// How late this connection's timers may fire (see [`super::slack`]).
    pub fn timer_slack(&self, now: Instant) -> Duration {
        Activity {
            connected: self.connected,
            sends_video: self.sends_video,
            receives_video: self.receives_video,
            last_receive: self.last_receive,
            last_write: self.last_write,
            last_send: self.last_message,
        }
        .timer_slack(now)
    }

    /// True once after each change of `connected`.
    pub fn connected_changed(&mut self) -> bool {
        if self.connected != self.reported_connected {
            self.reported_connected = self.connected;
            true
        } else {
            false
        }
    }

    /// Drain the peer until it asks for a timeout.
    pub fn drain(&mut self, timers: &mut SlackTimers, events: &EventSender) -> Result<(), String> {
        for ev in self.pending.drain(..) {
            events.send(ev);
        }
        loop {
            match self.peer.poll()? {
                Some(Output::Timeout(t)) => {
                    timers.set(self.handle, t, self.timer_slack(Instant::now()));
                    return Ok(());
                }
                Some(Output::Transmit {
                    destination, data, ..
                }) => match self.socket.send_to(&data, destination) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => tracing::debug!(handle = self.handle, error = %e, "send failed"),
                },
                Some(Output::Event(e)) => self.event(e, events),
                None => {}
            }
        }
    }

    fn event(&mut self, e: PeerEvent, events: &EventSender) {
        let name = self.name.clone();
        match e {
            PeerEvent::Connected => {
                self.connected = true;
                events.send(EngineEvent::new(EventKind::Connected, name));
            }
            PeerEvent::Disconnected(why) => {
                self.connected = false;
                self.dead.get_or_insert_with(|| why.into());
            }
            PeerEvent::Frame(f) => {
                let queue = self.remote.get(&f.mid).and_then(|q| q.as_ref());
                let mut ev = EngineEvent::new(EventKind::Frame, name);
                ev.mid = Some(f.mid.to_string());
                ev.media = Some(f.kind.as_str());
                ev.codec = Some(f.codec);
                ev.rtp_time = Some(f.rtp_time);
                ev.keyframe = Some(f.keyframe);
                ev.contiguous = Some(f.contiguous);
                ev.data = Some(f.data);
                ev.frame = Some(f.meta);
                match queue {
                    Some(q) => q.push(ev),
                    None => events.send(ev),
                }
            }
            PeerEvent::KeyframeRequest(mid, rid) => {
                let mut ev = EngineEvent::new(EventKind::KeyframeRequest, name);
                ev.mid = Some(mid.to_string());
                ev.rid = rid.map(|r| r.to_string());
                events.send(ev);
            }
            PeerEvent::Bitrate(bps) => {
                // Only changes worth retuning an encoder for (> 10 %).
                let last = self.last_bitrate.max(1);
                if bps.abs_diff(last) * 10 > last {
                    self.last_bitrate = bps;
                    let mut ev = EngineEvent::new(EventKind::Bitrate, name);
                    ev.bitrate = Some(bps);
                    events.send(ev);
                }
            }
            PeerEvent::ChannelOpen(label) => {
                events.send(EngineEvent::channel(
                    EventKind::ChannelOpen,
                    name,
                    label,
                    None,
                ));
            }
            PeerEvent::ChannelData { label, data, .. } => {
                events.send(EngineEvent::channel(
                    EventKind::ChannelData,
                    name,
                    label,
                    Some(data),
                ));
            }
            PeerEvent::ChannelClose(label) => {
                events.send(EngineEvent::channel(
                    EventKind::ChannelClose,
                    name,
                    label,
                    None,
                ));
            }
            PeerEvent::Rtp(_) | PeerEvent::SenderReport { .. } => {}
        }
    }
}

impl Drop for ClientConnection {
    /// Decoder threads blocked on a frame queue learn that nothing more comes.
    fn drop(&mut self) {
        for queue in self.remote.values().flatten() {
            queue.close();
        }
    }
}
