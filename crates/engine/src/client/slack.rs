//! How late a client connection's timers may fire.
//!
//! str0m asks to be woken for a TWCC report every 50 ms whenever packets
//! arrived since the last one, and for RTCP reports and NACK checks. A
//! connection receiving a media stream is woken by its packets anyway
//! (every 20 ms for Opus, every few ms for video), and each wake handles
//! every timer due by then; so its timers may wait a little for the next
//! packet instead of waking the engine thread on their own. On a small VM
//! a wake-up costs tens of microseconds: these were 0.4 extra wake-ups per
//! received Opus packet (B6 in BENCHMARKS.md).
//!
//! The same holds for a connection that sends audio: it writes a packet
//! every 20 ms, and each write wakes the thread too. A voice agent, which
//! sends and receives Opus on one connection, woke 2.9-3.4 times per packet
//! sent with its timers on time and 2.7-2.9 with the slack
//! (`benches/voice_engine.py`).
//!
//! Only on a connection that neither sends nor receives video, while audio
//! flows in or out, and no message went out for a second. A video sender's
//! pacer and bandwidth probes need their timers on time, and that includes
//! the time before its first frame: a publisher's link is probed from the
//! moment it connects. With its timers late, a simulcast publisher's first
//! estimate came out lower (1.8-2.6 Mbit/s against 2.7) and its layers went
//! out at a fifth to a half of their rate for the first 3 s, which changed
//! what the bandwidth-cap test in `tests/test_simulcast.py` saw. Audio needs
//! neither: str0m never paces audio packets (they go out in the write's own
//! wake), probes with video padding only, and an Opus stream's bitrate does
//! not follow the estimate. ICE and DTLS need their timers on time before
//! the connection is up. So do a video receiver's NACKs: sent late, a
//! retransmission can come after str0m has given the frame up, and the
//! decoder then asks for a keyframe. (Video's packets come several per
//! frame, so its timer wake-ups matter less anyway.)

use std::time::{Duration, Instant};

use crate::timer::TimerHeap;

/// How late a timer may fire on an audio-only connection: one Opus
/// packet's interval, so a stream of them always comes first.
pub(crate) const SLACK: Duration = Duration::from_millis(20);
/// Received or written within this: media is flowing.
const FLOWING: Duration = Duration::from_millis(100);
/// No data-channel message sent for this long: SCTP has nothing in flight.
const QUIET: Duration = Duration::from_secs(1);

/// What a connection is doing, as far as its timers' slack goes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Activity {
    /// ICE and DTLS are up.
    pub connected: bool,
    /// An m-line sends video, as negotiated now (whether or not a frame
    /// has been written yet).
    pub sends_video: bool,
    /// An m-line receives video.
    pub receives_video: bool,
    /// When a datagram last came in.
    pub last_receive: Option<Instant>,
    /// When a media frame was last written.
    pub last_write: Option<Instant>,
    /// When a data-channel message last went out.
    pub last_send: Option<Instant>,
}

impl Activity {
    /// The slack for this connection's timers (zero: on time).
    pub fn timer_slack(&self, now: Instant) -> Duration {
        let since = |t: Instant| now.saturating_duration_since(t);
        let recent = |t: Option<Instant>| t.is_some_and(|t| since(t) < FLOWING);
        let flowing = recent(self.last_receive) || recent(self.last_write);
        let quiet = self.last_send.is_none_or(|t| since(t) >= QUIET);
        if self.connected && !self.sends_video && !self.receives_video && flowing && quiet {
            SLACK
        } else {
            Duration::ZERO
        }
    }
}

/// Every connection's timer, on time and with its slack.
///
/// Two heaps, so that finding when to wake stays O(log n) with many
/// connections: `due` holds the deadlines themselves (every timer due when
/// the thread wakes, for whatever reason, is handled), `wake` the deadline
/// plus the slack the connection had when the deadline was set (when the
/// thread must wake for it at the latest).
#[derive(Default)]
pub(crate) struct SlackTimers {
    due: TimerHeap<u64>,
    wake: TimerHeap<u64>,
}

impl SlackTimers {
    pub fn set(&mut self, handle: u64, at: Instant, slack: Duration) {
        self.due.set(handle, at);
        self.wake.set(handle, at + slack);
    }

    pub fn remove(&mut self, handle: u64) {
        self.due.remove(handle);
        self.wake.remove(handle);
    }

    /// When the engine thread must wake for a timer.
    pub fn next_wake(&mut self) -> Option<Instant> {
        self.wake.next_deadline()
    }

    /// Pop one connection whose timer is due at `now` (slack or not).
    pub fn pop_due(&mut self, now: Instant) -> Option<u64> {
        let handle = self.due.pop_due(now)?;
        self.wake.remove(handle);
        Some(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_audio_flowing_in_or_out_with_no_message_sent_gets_slack() {
        let now = Instant::now() + Duration::from_secs(10);
        let ms = |n: u64| Some(now - Duration::from_millis(n));
        let receiver = Activity {
            connected: true,
            last_receive: ms(5),
            ..Activity::default()
        };
        assert_eq!(receiver.timer_slack(now), SLACK);
        let messaged_long_ago = Activity {
            last_send: ms(1500),
            ..receiver
        };
        assert_eq!(messaged_long_ago.timer_slack(now), SLACK);
        // Just sent a message: SCTP's timers must be on time.
        let messaged = Activity {
            last_send: ms(200),
            ..receiver
        };
        assert_eq!(messaged.timer_slack(now), Duration::ZERO);
        // A video publisher, even before its first frame: its link is being probed.
        let publisher = Activity {
            sends_video: true,
            ..receiver
        };
        assert_eq!(publisher.timer_slack(now), Duration::ZERO);
        // An audio publisher: its writes wake the thread, as packets would.
        let speaker = Activity {
            last_receive: None,
            last_write: ms(15),
            ..receiver
        };
        assert_eq!(speaker.timer_slack(now), SLACK);
        let stopped_speaking = Activity {
            last_write: ms(300),
            ..speaker
        };
        assert_eq!(stopped_speaking.timer_slack(now), Duration::ZERO);
        // Nothing flowing in (or not yet): no packet would come first.
        let idle = Activity {
            last_receive: ms(500),
            ..receiver
        };
        assert_eq!(idle.timer_slack(now), Duration::ZERO);
        let silent = Activity {
            last_receive: None,
            ..receiver
        };
        assert_eq!(silent.timer_slack(now), Duration::ZERO);
        // ICE and DTLS are not up yet, or video comes in.
        let connecting = Activity {
            connected: false,
            ..receiver
        };
        assert_eq!(connecting.timer_slack(now), Duration::ZERO);
        let video = Activity {
            receives_video: true,
            ..receiver
        };
        assert_eq!(video.timer_slack(now), Duration::ZERO);
    }

    #[test]
    fn a_slackened_timer_wakes_late_but_fires_with_any_earlier_wake() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut timers = SlackTimers::default();
        timers.set(1, ms(10), SLACK);
        timers.set(2, ms(15), Duration::ZERO);
        assert_eq!(timers.next_wake(), Some(ms(15)));
        // Woken at 15 for connection 2: connection 1's timer is due too.
        assert_eq!(timers.pop_due(ms(15)), Some(1));
        assert_eq!(timers.pop_due(ms(15)), Some(2));
        assert_eq!(timers.pop_due(ms(15)), None);
        assert_eq!(timers.next_wake(), None);
        // Alone, it waits for its slack.
        timers.set(1, ms(40), SLACK);
        assert_eq!(timers.next_wake(), Some(ms(60)));
        timers.remove(1);
        assert_eq!(timers.next_wake(), None);
        assert_eq!(timers.pop_due(ms(100)), None);
    }
}
