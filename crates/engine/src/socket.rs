//! UDP sockets for media: bound non-blocking, with large kernel buffers.
//!
//! Video arrives in bursts (a keyframe is tens to hundreds of packets, and
//! many publishers' frames land at once), and one thread serves many peers:
//! with the kernel's default buffer (208 KiB) a burst that arrives while the
//! thread is busy elsewhere overflows the socket and turns into loss,
//! retransmissions and frozen pictures. The kernel caps what we ask for at
//! `net.core.rmem_max` / `wmem_max`.

use std::net::{SocketAddr, UdpSocket};

use socket2::SockRef;
use tracing::debug;

/// What we ask the kernel for, each direction.
const BUFFER_BYTES: usize = 4 << 20;

/// Bind a non-blocking UDP socket on `addr` with enlarged buffers.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    let s = SockRef::from(&socket);
    // Best effort: a smaller buffer is not a reason to fail.
    let _ = s.set_recv_buffer_size(BUFFER_BYTES);
    let _ = s.set_send_buffer_size(BUFFER_BYTES);
    debug!(
        addr = %addr,
        recv = s.recv_buffer_size().unwrap_or(0),
        send = s.send_buffer_size().unwrap_or(0),
        "udp socket buffers"
    );
    Ok(socket)
}
