//! The SFU: shard threads that own UDP sockets, channels and connections.
//!
//! A channel is pinned to one shard (by hash of its id), so fan-out never
//! crosses threads. The control plane talks to shards with [`Command`]s and
//! hears back through the shared [`EventQueue`].

mod clock;
mod connection;
mod shard;
pub mod simulcast;
pub mod spotlight;
mod track;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::bounded;

pub use crate::peer::{ChannelSpec, OpusFmtp};
use crate::queue::{event_queue, EventQueue};
use crate::waker::CommandSender;

pub use shard::ShardCounters;

/// Reply channel of a command.
type Reply<T> = crossbeam_channel::Sender<Result<T, String>>;

/// What a new connection is allowed and expected to do.
#[derive(Debug, Clone)]
pub struct ConnectionSpec {
    pub channel_id: String,
    pub connection_id: String,
    pub send_audio: bool,
    pub send_video: bool,
    pub recv: bool,
    /// The codec the client asked for (`video.codec_type`); offered first.
    pub video_codec: String,
    /// Opus fmtp for this connection's offer (`audio.opus_params`).
    pub opus: OpusFmtp,
    /// Data channels the server opens on this connection.
    pub data_channels: Vec<DataChannelSpec>,
    /// The client publishes video as simulcast layers with these RIDs,
    /// lowest quality first (empty: one stream).
    pub simulcast_rids: Vec<String>,
    /// The simulcast layer (index into the sender's RIDs) this connection
    /// receives from every simulcast sender; None: no video from them.
    pub layer_request: Option<simulcast::Layer>,
    /// Estimate the bandwidth towards this client (TWCC) and cap the
    /// simulcast layers it gets to what fits.
    pub bandwidth_estimation: bool,
    /// Spotlight: the channel focuses on its `number` loudest speakers and
    /// this connection gets their video at `layers.focus`, the others' at
    /// `layers.unfocus`.
    pub spotlight: Option<(usize, spotlight::SpotlightLayers)>,
}

/// A data channel of a connection and how the SFU treats its messages.
#[derive(Debug, Clone)]
pub struct DataChannelSpec {
    pub channel: ChannelSpec,
    /// Messages are forwarded by the shard to the other connections of the
    /// channel that have the same label (Sora's `#` labels); others go to
    /// the control plane as events.
    pub messaging: bool,
    /// The client may send on it (its messages are forwarded).
    pub send: bool,
    /// The client receives what others send on it.
    pub recv: bool,
    /// Prefix forwarded messages with the sender's connection id.
    pub header: bool,
    /// Every message on this label, both ways, is zlib-compressed (Sora's
    /// `compress`): forwarding decompresses and recompresses as each side
    /// asked, with the header inside the compressed message.
    pub compress: bool,
}

/// The result of creating a connection: the server's offer.
#[derive(Debug, Clone)]
pub struct Created {
    pub sdp: String,
    pub audio_mid: Option<String>,
    pub video_mid: Option<String>,
}

pub(crate) enum Command {
    Create(ConnectionSpec, Reply<Created>),
    Answer(String, String, Reply<()>),
    Candidate(String, String, Reply<()>),
    RequestKeyframe(String),
    SendData(String, String, Vec<u8>, Reply<bool>),
    CloseChannels(String),
    SetLayer(String, Option<String>, Option<simulcast::Layer>, Reply<()>),
    Close(String),
    Stop,
}

struct ShardHandle {
    commands: CommandSender<Command>,
    thread: Option<JoinHandle<()>>,
    port: u16,
    counters: Arc<ShardCounters>,
}

/// Handle to the running SFU.
pub struct Sfu {
    shards: Vec<ShardHandle>,
    queue: EventQueue,
    /// connection_id -> shard index.
    placement: HashMap<String, usize>,
}

const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

impl Sfu {
    /// Start `shards` shard threads, each on its own UDP port. With
    /// `port != 0` the shards take consecutive ports from it.
    pub fn start(
        bind_ip: IpAddr,
        port: u16,
        public_ip: Option<IpAddr>,
        shards: usize,
    ) -> std::io::Result<Sfu> {
        let (events, queue) = event_queue()?;
        let mut handles = Vec::new();
        for i in 0..shards.max(1) {
            let p = if port == 0 { 0 } else { port + i as u16 };
            let bind = SocketAddr::new(bind_ip, p);
            let advertised_ip = public_ip.unwrap_or(bind_ip);
            let (commands, thread, port, counters) =
                shard::spawn(i, bind, advertised_ip, events.clone())?;
            handles.push(ShardHandle {
                commands,
                thread: Some(thread),
                port,
                counters,
            });
        }
        Ok(Sfu {
            shards: handles,
            queue,
            placement: HashMap::new(),
        })
    }

    pub fn events(&self) -> &EventQueue {
        &self.queue
    }

    pub fn ports(&self) -> Vec<u16> {
        self.shards.iter().map(|s| s.port).collect()
    }

    pub fn counters(&self) -> Vec<Arc<ShardCounters>> {
        self.shards.iter().map(|s| s.counters.clone()).collect()
    }

    fn shard_for_channel(&self, channel_id: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        channel_id.hash(&mut h);
        (h.finish() % self.shards.len() as u64) as usize
    }

    fn shard_of(&self, connection_id: &str) -> Result<&ShardHandle, String> {
        self.placement
            .get(connection_id)
            .map(|i| &self.shards[*i])
            .ok_or_else(|| format!("unknown connection {connection_id}"))
    }

    fn call<T>(shard: &ShardHandle, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, String> {
        let (tx, rx) = bounded(1);
        if !shard.commands.send(make(tx)) {
            return Err("shard stopped".into());
        }
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| "shard did not answer".to_string())?
    }

    /// Create a connection and return the server's offer.
    pub fn create_connection(&mut self, spec: ConnectionSpec) -> Result<Created, String> {
        if self.placement.contains_key(&spec.connection_id) {
            return Err(format!("duplicate connection id {}", spec.connection_id));
        }
        let idx = self.shard_for_channel(&spec.channel_id);
        let id = spec.connection_id.clone();
        let created = Self::call(&self.shards[idx], |r| Command::Create(spec, r))?;
        self.placement.insert(id, idx);
        Ok(created)
    }

    pub fn accept_answer(&self, connection_id: &str, sdp: &str) -> Result<(), String> {
        let shard = self.shard_of(connection_id)?;
        Self::call(shard, |r| {
            Command::Answer(connection_id.to_string(), sdp.to_string(), r)
        })
    }

    pub fn add_remote_candidate(&self, connection_id: &str, line: &str) -> Result<(), String> {
        let shard = self.shard_of(connection_id)?;
        Self::call(shard, |r| {
            Command::Candidate(connection_id.to_string(), line.to_string(), r)
        })
    }

    pub fn request_keyframe(&self, connection_id: &str) -> Result<(), String> {
        let shard = self.shard_of(connection_id)?;
        shard
            .commands
            .send(Command::RequestKeyframe(connection_id.to_string()));
        Ok(())
    }

    /// Send a message to a client on its data channel `label`.
    pub fn send_data(&self, connection_id: &str, label: &str, data: &[u8]) -> Result<bool, String> {
        let shard = self.shard_of(connection_id)?;
        Self::call(shard, |r| {
            Command::SendData(
                connection_id.to_string(),
                label.to_string(),
                data.to_vec(),
                r,
            )
        })
    }

    /// Choose the simulcast layer `connection_id` receives from `sender`
    /// (None: from every sender, now and later); `layer` None stops video
    /// from them. The switch happens at the layer's next keyframe, which is
    /// requested.
    pub fn set_layer(
        &self,
        connection_id: &str,
        sender: Option<&str>,
        layer: Option<simulcast::Layer>,
    ) -> Result<(), String> {
        let shard = self.shard_of(connection_id)?;
        Self::call(shard, |r| {
            Command::SetLayer(
                connection_id.to_string(),
                sender.map(str::to_string),
                layer,
                r,
            )
        })
    }

    /// Close all data channels of a connection (the media stays up).
    pub fn close_channels(&self, connection_id: &str) -> Result<(), String> {
        let shard = self.shard_of(connection_id)?;
        shard
            .commands
            .send(Command::CloseChannels(connection_id.to_string()));
        Ok(())
    }

    /// Remove a connection. Unknown ids are ignored (closing is idempotent).
    pub fn close_connection(&mut self, connection_id: &str) {
        if let Some(i) = self.placement.remove(connection_id) {
            self.shards[i]
                .commands
                .send(Command::Close(connection_id.to_string()));
        }
    }

    /// Forget a connection the engine closed by itself.
    pub fn forget(&mut self, connection_id: &str) {
        self.placement.remove(connection_id);
    }

    /// Stop all shards and join their threads.
    pub fn stop(&mut self) {
        for s in &self.shards {
            s.commands.send(Command::Stop);
        }
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Sfu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Monotonic ids for connections inside a shard.
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
