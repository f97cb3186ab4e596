//! A per-track queue of received frames, from the client engine thread
//! straight to that track's decoder thread.
//!
//! Without it every received frame goes engine thread -> event queue ->
//! asyncio loop -> decoder thread: two wake-ups per frame, the loop's
//! costing as much as a small decoder's work (B6 in BENCHMARKS.md). The
//! decoder thread blocks here instead, with the GIL released, and takes
//! what has arrived in one batch.
//!
//! The queue is bounded: a decoder far behind loses its backlog and is told
//! (`Batch::overflowed`) so it can restart at a keyframe rather than decode
//! pictures nobody wants any more.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::event::EngineEvent;

/// Frames of one remote track (see the module docs).
#[derive(Debug)]
pub struct FrameQueue {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<EngineEvent>,
    /// A `wake` since the last `wait` returned: the consumer has other
    /// work (Python-side items) and must not sleep.
    woken: bool,
    overflowed: bool,
    closed: bool,
    /// Frames thrown away because the consumer fell behind.
    dropped: u64,
}

/// What one `wait` returns.
#[derive(Debug, Default)]
pub struct Batch {
    pub frames: Vec<EngineEvent>,
    /// Frames were dropped before these (the consumer fell behind).
    pub overflowed: bool,
    /// No frame will ever come again.
    pub closed: bool,
}

impl FrameQueue {
    /// A queue holding at most `capacity` frames.
    pub fn new(capacity: usize) -> FrameQueue {
        FrameQueue {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A consumer that panicked holding the lock left consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a frame (engine thread). Dropped once the queue is closed.
    pub fn push(&self, frame: EngineEvent) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        if s.frames.len() >= self.capacity {
            s.dropped += s.frames.len() as u64;
            s.frames.clear();
            s.overflowed = true;
        }
        let was_empty = s.frames.is_empty();
        s.frames.push_back(frame);
        drop(s);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Block up to `timeout` until frames arrive, `wake` or `close` is
    /// called; then take up to `max` frames.
    pub fn wait(&self, timeout: Duration, max: usize) -> Batch {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.frames.is_empty() && !s.woken && !s.closed {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = self
                .ready
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.woken = false;
        let n = s.frames.len().min(max.max(1));
        Batch {
            frames: s.frames.drain(..n).collect(),
            overflowed: std::mem::take(&mut s.overflowed),
            closed: s.closed && s.frames.is_empty(),
        }
    }

    /// Make the current or next `wait` return at once (any thread).
    pub fn wake(&self) {
        self.lock().woken = true;
        self.ready.notify_one();
    }

    /// No more frames: pending ones are dropped and `wait` returns closed.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.frames.clear();
        drop(s);
        self.ready.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Frames dropped so far because the consumer fell behind.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use std::sync::Arc;

    fn frame(n: u64) -> EngineEvent {
        let mut e = EngineEvent::new(EventKind::Frame, "1".into());
        e.rtp_time = Some(n);
        e
    }

    #[test]
    fn frames_come_in_order_and_in_batches() {
        let q = FrameQueue::new(10);
        for n in 0..5 {
            q.push(frame(n));
        }
        let b = q.wait(Duration::from_secs(1), 3);
        let got: Vec<_> = b.frames.iter().map(|f| f.rtp_time.unwrap()).collect();
        assert_eq!(got, [0, 1, 2]);
        assert!(!b.overflowed && !b.closed);
        let b = q.wait(Duration::from_secs(1), 10);
        assert_eq!(b.frames.len(), 2);
    }

    #[test]
    fn wait_times_out_empty() {
        let q = FrameQueue::new(10);
        let t = Instant::now();
        let b = q.wait(Duration::from_millis(50), 10);
        assert!(b.frames.is_empty() && !b.closed);
        assert!(t.elapsed() >= Duration::from_millis(45));
    }

    #[test]
    fn a_push_or_wake_from_another_thread_ends_the_wait() {
        let q = Arc::new(FrameQueue::new(10));
        let q2 = q.clone();
        let t = Instant::now();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            q2.push(frame(7));
        });
        let b = q.wait(Duration::from_secs(5), 10);
        assert_eq!(b.frames.len(), 1);
        assert!(t.elapsed() < Duration::from_secs(2));
        h.join().unwrap();

        // A wake before the wait is not lost.
        q.wake();
        let t = Instant::now();
        let b = q.wait(Duration::from_secs(5), 10);
        assert!(b.frames.is_empty() && t.elapsed() < Duration::from_secs(1));
        // ...and counts once.
        let b = q.wait(Duration::from_millis(20), 10);
        assert!(b.frames.is_empty());
    }

    #[test]
    fn overflow_drops_the_backlog_and_says_so() {
        let q = FrameQueue::new(3);
        for n in 0..5 {
            q.push(frame(n));
        }
        let b = q.wait(Duration::from_secs(1), 10);
        let got: Vec<_> = b.frames.iter().map(|f| f.rtp_time.unwrap()).collect();
        assert_eq!(got, [3, 4]);
        assert!(b.overflowed);
        assert_eq!(q.dropped(), 3);
        q.push(frame(5));
        assert!(!q.wait(Duration::from_secs(1), 10).overflowed);
    }

    #[test]
    fn close_ends_waits_and_later_pushes() {
        let q = Arc::new(FrameQueue::new(3));
        let q2 = q.clone();
        let h = std::thread::spawn(move || q2.wait(Duration::from_secs(5), 10));
        std::thread::sleep(Duration::from_millis(20));
        q.close();
        assert!(h.join().unwrap().closed);
        q.push(frame(1));
        let b = q.wait(Duration::from_secs(1), 10);
        assert!(b.closed && b.frames.is_empty());
    }
}
