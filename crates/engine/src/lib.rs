//! Hibiki's data plane.
//!
//! * [`sfu`]: shard threads that own UDP sockets, channels and connections
//!   and forward RTP between them (str0m in RTP mode, ICE-lite).
//! * [`client`]: one thread per process hosting every client connection
//!   (str0m in frame mode, full ICE).
//!
//! Both are driven by commands over channels and report [`event::EngineEvent`]s
//! through a [`queue::EventQueue`] whose file descriptor an asyncio loop can
//! watch; the client can instead hand each remote track's frames to a
//! [`frames::FrameQueue`] that the track's decoder thread waits on. No Python
//! runs on these threads. str0m is only touched in [`peer`].
//!
//! [`pixels`] converts between packed BGR and I420/NV12 for the SDK's
//! encoders and decoders (SIMD, in place); [`audio_level`] measures the
//! RFC 6464 level the SDK puts on the audio it sends.

pub mod audio_level;
pub mod client;
pub mod demux;
pub mod event;
pub mod frames;
pub mod keyframe;
pub mod peer;
pub mod pixels;
pub mod queue;
pub mod rewrite;
pub mod sfu;
pub mod socket;
pub mod timer;
mod waker;
