//! The event queue from an engine thread to Python.
//!
//! Engine threads never take the GIL. They push events into a channel and
//! make a file descriptor readable when the queue goes from empty to
//! non-empty; Python watches the descriptor (`loop.add_reader`) and drains
//! the queue in batches. A socketpair rather than an eventfd keeps this
//! portable; the byte written carries no meaning.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::event::EngineEvent;

/// The producing half, owned by an engine thread.
#[derive(Clone)]
pub struct EventSender {
    tx: Sender<EngineEvent>,
    shared: Arc<Shared>,
}

/// The consuming half, owned by the Python object.
pub struct EventQueue {
    rx: Receiver<EngineEvent>,
    shared: Arc<Shared>,
    reader: UnixStream,
}

struct Shared {
    /// True while a wake-up byte is (or is about to be) in the socket.
    armed: AtomicBool,
    writer: UnixStream,
}

/// A new queue and its sender.
pub fn event_queue() -> std::io::Result<(EventSender, EventQueue)> {
    let (reader, writer) = UnixStream::pair()?;
    reader.set_nonblocking(true)?;
    writer.set_nonblocking(true)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        armed: AtomicBool::new(false),
        writer,
    });
    Ok((
        EventSender {
            tx,
            shared: shared.clone(),
        },
        EventQueue { rx, shared, reader },
    ))
}

impl EventSender {
    /// Queue an event and wake the consumer if it may be asleep.
    pub fn send(&self, event: EngineEvent) {
        if self.tx.send(event).is_err() {
            return; // consumer gone: nobody to tell
        }
        if !self.shared.armed.swap(true, Ordering::AcqRel) {
            // A full socket buffer means a wake-up is pending anyway.
            let _ = (&self.shared.writer).write(&[1]);
        }
    }
}

impl EventQueue {
    /// The descriptor that becomes readable when events are pending.
    pub fn fileno(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    /// Take up to `max` events without blocking.
    pub fn drain(&self, max: usize) -> Vec<EngineEvent> {
        // Disarm before reading so that an event pushed during the drain
        // re-arms and wakes the consumer again: no lost wake-ups.
        self.clear_wakeup();
        let mut out = Vec::new();
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(e) => out.push(e),
                Err(_) => break,
            }
        }
        if !self.rx.is_empty() && !self.shared.armed.swap(true, Ordering::AcqRel) {
            let _ = (&self.shared.writer).write(&[1]);
        }
        out
    }

    /// Block up to `timeout` for the first event, then drain.
    pub fn wait(&self, timeout: Duration, max: usize) -> Vec<EngineEvent> {
        match self.rx.recv_timeout(timeout) {
            Ok(first) => {
                let mut out = vec![first];
                out.extend(self.drain(max.saturating_sub(1)));
                out
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => Vec::new(),
        }
    }

    fn clear_wakeup(&self) {
        // Empty the socket first, then disarm. The other order loses
        // wake-ups: a producer could re-arm and write its byte between the
        // two steps, the byte would be swallowed here, and `armed` would
        // stay true with nothing in the socket, so no producer would ever
        // write again. In this order a producer that sees `armed` still
        // true has already queued its event, which the drain that follows
        // picks up.
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.reader).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        self.shared.armed.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EngineEvent, EventKind};

    fn readable(fd: RawFd) -> bool {
        let mut poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&fd),
                mio::Token(0),
                mio::Interest::READABLE,
            )
            .unwrap();
        let mut events = mio::Events::with_capacity(1);
        poll.poll(&mut events, Some(Duration::from_millis(0)))
            .unwrap();
        !events.is_empty()
    }

    #[test]
    fn wakes_once_and_drains() {
        let (tx, q) = event_queue().unwrap();
        assert!(!readable(q.fileno()));
        for _ in 0..3 {
            tx.send(EngineEvent::new(EventKind::Connected, "a".into()));
        }
        assert!(readable(q.fileno()));
        let got = q.drain(2);
        assert_eq!(got.len(), 2);
        // One left: the descriptor must be readable again.
        assert!(readable(q.fileno()));
        assert_eq!(q.drain(10).len(), 1);
        assert!(!readable(q.fileno()));
    }

    #[test]
    fn no_lost_wakeups_under_concurrency() {
        let (tx, q) = event_queue().unwrap();
        let producers: Vec<_> = (0..4)
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        tx.send(EngineEvent::new(EventKind::Frame, "a".into()));
                    }
                })
            })
            .collect();
        let mut got = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while got < 80_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "stuck at {got} events"
            );
            // Only drain when the descriptor says so, as an event loop does.
            if readable(q.fileno()) {
                got += q.drain(7).len();
            } else if producers.iter().all(|p| p.is_finished()) {
                // Everything is sent: if events remain, the fd must say so.
                assert!(q.rx.is_empty(), "events pending but no wake-up");
            }
        }
        for p in producers {
            p.join().unwrap();
        }
    }

    #[test]
    fn wait_times_out() {
        let (_tx, q) = event_queue().unwrap();
        assert!(q.wait(Duration::from_millis(10), 5).is_empty());
    }
}
