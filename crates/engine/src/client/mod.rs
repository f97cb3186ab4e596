//! The client engine: one thread per process hosting every client
//! connection (its own UDP socket each, full ICE, str0m in frame mode).
//!
//! Python hands it the server's offer and gets an answer back; then it
//! writes encoded frames and receives encoded frames as events.

mod connection;
mod slack;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use mio::{Events, Poll, Token};
use tracing::{debug, info, warn};

use crate::event::{EngineEvent, EventKind};
use crate::peer::{mid_from_str, Peer, Role};
use crate::queue::{event_queue, EventQueue, EventSender};
use crate::waker::{command_channel, CommandSender};
use connection::ClientConnection;
use slack::SlackTimers;

type Reply<T> = crossbeam_channel::Sender<Result<T, String>>;

enum Command {
    Connect(u64, String, bool, Reply<String>),
    AcceptOffer(u64, String, Reply<String>),
    Candidate(u64, String),
    WriteFrame {
        handle: u64,
        mid: String,
        rid: Option<String>,
        codec: String,
        data: Vec<u8>,
        rtp_time: u64,
        at: Instant,
        audio_level: Option<i8>,
    },
    RequestKeyframe(u64, String),
    SendInfo(u64, String, String, Reply<(u8, u32)>),
    SendRids(u64, String, Reply<Vec<String>>),
    DesiredBitrate(u64, u64),
    SendData(u64, String, Vec<u8>, Reply<bool>),
    CloseChannels(u64),
    Close(u64),
    Stop,
}

const WAKER: Token = Token(0);
const MAX_WAIT: Duration = Duration::from_millis(250);
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to the client engine thread.
pub struct ClientEngine {
    commands: CommandSender<Command>,
    thread: Option<JoinHandle<()>>,
    queue: EventQueue,
    next_handle: AtomicU64,
    /// Handles whose ICE and DTLS are up (frames written before are dropped
    /// by str0m, so writers ask first).
    connected: Arc<RwLock<HashMap<u64, bool>>>,
}

impl ClientEngine {
    pub fn start() -> std::io::Result<ClientEngine> {
        let (events, queue) = event_queue()?;
        let poll = Poll::new()?;
        let (commands, rx) = command_channel(&poll, WAKER)?;
        let connected = Arc::new(RwLock::new(HashMap::new()));
        let worker = Worker {
            poll,
            conns: HashMap::new(),
            timers: SlackTimers::default(),
            events,
            connected: connected.clone(),
            dying: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("hibiki-client-engine".into())
            .spawn(move || worker.run(rx))?;
        Ok(ClientEngine {
            commands,
            thread: Some(thread),
            queue,
            next_handle: AtomicU64::new(1),
            connected,
        })
    }

    pub fn events(&self) -> &EventQueue {
        &self.queue
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, String> {
        let (tx, rx) = bounded(1);
        if !self.commands.send(make(tx)) {
            return Err("client engine stopped".into());
        }
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| "client engine did not answer".to_string())?
    }

    /// Create a connection from the server's offer: (handle, answer SDP).
    ///
    /// With `route_frames`, each remote track's `track_added` event carries
    /// a [`FrameQueue`](crate::frames::FrameQueue) and that track's frames
    /// go there rather than to the event queue, for a decoder thread to
    /// take directly.
    pub fn connect(&self, offer: &str, route_frames: bool) -> Result<(u64, String), String> {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let answer = self.call(|r| Command::Connect(handle, offer.to_string(), route_frames, r))?;
        Ok((handle, answer))
    }

    pub fn accept_offer(&self, handle: u64, sdp: &str) -> Result<String, String> {
        self.call(|r| Command::AcceptOffer(handle, sdp.to_string(), r))
    }

    pub fn add_remote_candidate(&self, handle: u64, line: &str) {
        self.commands
            .send(Command::Candidate(handle, line.to_string()));
    }

    /// Queue a frame; false when the connection is not up (yet or anymore).
    /// `rid` names the simulcast layer it belongs to, if the m-line has
    /// several. `capture_age` is how long ago the frame was captured: the
    /// RTCP sender reports then map its RTP time to the capture instant,
    /// which is what receivers align audio and video by.
    #[allow(clippy::too_many_arguments)]
    pub fn write_frame(
        &self,
        handle: u64,
        mid: &str,
        rid: Option<&str>,
        codec: &str,
        data: &[u8],
        rtp_time: u64,
        capture_age: Option<Duration>,
        audio_level: Option<i8>,
    ) -> bool {
        let up = self
            .connected
            .read()
            .map(|m| m.get(&handle).copied().unwrap_or(false))
            .unwrap_or(false);
        if !up {
            return false;
        }
        self.commands.send(Command::WriteFrame {
            handle,
            mid: mid.to_string(),
            rid: rid.map(str::to_string),
            codec: codec.to_string(),
            data: data.to_vec(),
            rtp_time,
            at: capture_age
                .and_then(|age| Instant::now().checked_sub(age))
                .unwrap_or_else(Instant::now),
            audio_level,
        })
    }

    /// The total rate (bit/s) we would like to send at; the bandwidth
    /// estimator probes towards it and `bitrate` events follow.
    pub fn set_desired_bitrate(&self, handle: u64, bps: u64) {
        self.commands.send(Command::DesiredBitrate(handle, bps));
    }

    /// The (payload type, SSRC) that frames of `codec` go out with on `mid`.
    pub fn send_info(&self, handle: u64, mid: &str, codec: &str) -> Result<(u8, u32), String> {
        self.call(|r| Command::SendInfo(handle, mid.to_string(), codec.to_string(), r))
    }

    /// The simulcast layers (RIDs) the server asked for on our sending
    /// m-line `mid`, lowest quality first; empty without simulcast.
    pub fn send_rids(&self, handle: u64, mid: &str) -> Result<Vec<String>, String> {
        self.call(|r| Command::SendRids(handle, mid.to_string(), r))
    }

    /// Send a message on the data channel `label` (opened by the server).
    /// Ok(false): the send buffer is full, try again later.
    pub fn send_data(&self, handle: u64, label: &str, data: &[u8]) -> Result<bool, String> {
        let (tx, rx) = bounded(1);
        if !self.commands.send(Command::SendData(
            handle,
            label.to_string(),
            data.to_vec(),
            tx,
        )) {
            return Err("client engine stopped".into());
        }
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| "client engine did not answer".to_string())?
    }

    /// Close every data channel of a connection.
    pub fn close_channels(&self, handle: u64) {
        self.commands.send(Command::CloseChannels(handle));
    }

    pub fn request_keyframe(&self, handle: u64, mid: &str) {
        self.commands
            .send(Command::RequestKeyframe(handle, mid.to_string()));
    }

    pub fn close_connection(&self, handle: u64) {
        self.commands.send(Command::Close(handle));
    }

    pub fn stop(&mut self) {
        self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ClientEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    poll: Poll,
    conns: HashMap<u64, ClientConnection>,
    timers: SlackTimers,
    events: EventSender,
    connected: Arc<RwLock<HashMap<u64, bool>>>,
    dying: Vec<u64>,
}

impl Worker {
    fn run(mut self, commands: Receiver<Command>) {
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; 2048];
        loop {
            let now = Instant::now();
            let wait = self
                .timers
                .next_wake()
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT);
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    warn!(error = %e, "client poll failed");
                }
                continue;
            }
            for ev in events.iter() {
                if ev.token() != WAKER {
                    self.read(ev.token().0 as u64, &mut buf);
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(Command::Stop) => {
                        for (_, mut c) in self.conns.drain() {
                            c.peer.disconnect();
                        }
                        return;
                    }
                    Ok(cmd) => self.command(cmd),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            while let Some(h) = self.timers.pop_due(now) {
                self.with_conn(h, |c| c.peer.handle_timeout(now));
            }
            self.reap();
        }
    }

    fn read(&mut self, handle: u64, buf: &mut [u8]) {
        loop {
            let Some(conn) = self.conns.get(&handle) else {
                return;
            };
            match conn.socket.recv_from(buf) {
                Ok((n, source)) => {
                    let destination = conn.local_addr_for(source);
                    let data = &buf[..n];
                    let now = Instant::now();
                    self.with_conn(handle, |c| {
                        c.last_receive = Some(now);
                        // A bad datagram is the sender's problem.
                        if let Err(e) = c.peer.handle_receive(now, source, destination, data) {
                            debug!(handle, error = %e, "dropped datagram");
                        }
                        Ok(())
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!(handle, error = %e, "recv error");
                    continue;
                }
            }
        }
    }

    /// Mutate one connection, drain it, publish its events.
    fn with_conn(
        &mut self,
        handle: u64,
        f: impl FnOnce(&mut ClientConnection) -> Result<(), String>,
    ) {
        let Some(conn) = self.conns.get_mut(&handle) else {
            return;
        };
        let events = &self.events;
        let timers = &mut self.timers;
        let result = catch_unwind(AssertUnwindSafe(|| {
            f(conn)?;
            conn.drain(timers, events)
        }));
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("internal error (panic in engine)".to_string()),
        };
        if let Some(e) = failure {
            conn.dead.get_or_insert(e);
        }
        if conn.dead.is_some() {
            self.dying.push(handle);
        }
        if conn.connected_changed() {
            if let Ok(mut m) = self.connected.write() {
                m.insert(handle, conn.connected);
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Connect(handle, offer, route_frames, reply) => {
                let r = self.connect(handle, &offer, route_frames);
                let _ = reply.send(r);
            }
            Command::AcceptOffer(handle, sdp, reply) => {
                let mut r = Err(format!("unknown connection {handle}"));
                self.with_conn(handle, |c| {
                    r = c.accept_offer(&sdp);
                    Ok(())
                });
                let _ = reply.send(r);
            }
            Command::Candidate(handle, line) => {
                self.with_conn(handle, |c| {
                    if let Err(e) = c.peer.add_remote_candidate(&line) {
                        debug!(handle, error = %e, "ignored remote candidate");
                    }
                    Ok(())
                });
            }
            Command::WriteFrame {
                handle,
                mid,
                rid,
                codec,
                data,
                rtp_time,
                at,
                audio_level,
            } => {
                self.with_conn(handle, |c| {
                    c.last_write = Some(Instant::now());
                    if let Err(e) = c.peer.write_frame(
                        mid_from_str(&mid),
                        rid.as_deref(),
                        &codec,
                        rtp_time,
                        at,
                        &data,
                        audio_level,
                    ) {
                        debug!(handle, error = %e, "frame not written");
                    }
                    Ok(())
                });
            }
            Command::RequestKeyframe(handle, mid) => {
                self.with_conn(handle, |c| {
                    if let Err(e) = c.peer.request_keyframe_frame(mid_from_str(&mid)) {
                        debug!(handle, error = %e, "keyframe request not sent");
                    }
                    Ok(())
                });
            }
            Command::SendInfo(handle, mid, codec, reply) => {
                let mut r = Err(format!("unknown connection {handle}"));
                self.with_conn(handle, |c| {
                    r = c.peer.send_info(mid_from_str(&mid), &codec);
                    Ok(())
                });
                let _ = reply.send(r);
            }
            Command::SendRids(handle, mid, reply) => {
                let mut r = Err(format!("unknown connection {handle}"));
                self.with_conn(handle, |c| {
                    r = Ok(c.peer.send_rids(mid_from_str(&mid)));
                    Ok(())
                });
                let _ = reply.send(r);
            }
            Command::DesiredBitrate(handle, bps) => {
                self.with_conn(handle, |c| {
                    c.peer.set_desired_bitrate(bps);
                    Ok(())
                });
            }
            Command::SendData(handle, label, data, reply) => {
                let mut r = Err(format!("unknown connection {handle}"));
                self.with_conn(handle, |c| {
                    c.last_message = Some(Instant::now());
                    // The C++ Sora client sends every message as binary;
                    // so do we.
                    r = c.peer.send_channel(&label, &data, true);
                    Ok(())
                });
                let _ = reply.send(r);
            }
            Command::CloseChannels(handle) => {
                self.with_conn(handle, |c| {
                    c.peer.close_channels();
                    Ok(())
                });
            }
            Command::Close(handle) => {
                // Graceful close first, so the server hears it at once.
                self.with_conn(handle, |c| {
                    c.peer.close();
                    Ok(())
                });
                if let Some(mut c) = self.conns.remove(&handle) {
                    c.peer.disconnect();
                    let _ = self.poll.registry().deregister(&mut c.socket);
                    self.timers.remove(handle);
                    if let Ok(mut m) = self.connected.write() {
                        m.remove(&handle);
                    }
                }
            }
            Command::Stop => unreachable!("handled by the loop"),
        }
    }

    fn connect(&mut self, handle: u64, offer: &str, route_frames: bool) -> Result<String, String> {
        let peer = Peer::new(Role::Client, Instant::now(), None, None, Default::default());
        let mut conn =
            ClientConnection::new(handle, peer, route_frames).map_err(|e| e.to_string())?;
        self.poll
            .registry()
            .register(
                &mut conn.socket,
                Token(handle as usize),
                mio::Interest::READABLE,
            )
            .map_err(|e| e.to_string())?;
        let answer = conn.accept_offer(offer)?;
        info!(handle, local = ?conn.candidates, "client connection created");
        self.conns.insert(handle, conn);
        self.with_conn(handle, |_| Ok(()));
        Ok(answer)
    }

    /// Remove the connections that died since the last turn (no scan of
    /// every connection: `with_conn` lists the dying ones).
    fn reap(&mut self) {
        while let Some(handle) = self.dying.pop() {
            let Some(mut c) = self.conns.remove(&handle) else {
                continue;
            };
            let reason = c.dead.clone().unwrap_or_default();
            c.peer.disconnect();
            let _ = self.poll.registry().deregister(&mut c.socket);
            self.timers.remove(handle);
            if let Ok(mut m) = self.connected.write() {
                m.remove(&handle);
            }
            let mut ev = EngineEvent::new(EventKind::Closed, handle.to_string().into());
            ev.reason = Some(reason);
            self.events.send(ev);
        }
    }
}

/// The local address a datagram from `source` arrived on (we bind the
/// wildcard address, so the kernel does not tell us).
pub(crate) fn pick_local(candidates: &[SocketAddr], source: SocketAddr) -> SocketAddr {
    candidates
        .iter()
        .find(|c| {
            c.ip().is_loopback() == source.ip().is_loopback() && c.is_ipv4() == source.is_ipv4()
        })
        .or_else(|| candidates.first())
        .copied()
        .unwrap_or(source)
}
