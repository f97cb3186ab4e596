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
//! Only while audio flows in, no video does, and nothing goes out: a
//! sender's pacer and bandwidth probes need their timers on time, and so
//! do ICE and DTLS before the connection is up. So do a video receiver's
//! NACKs: sent late, a retransmission can come after str0m has given the
//! frame up, and the decoder then asks for a keyframe. (Video's packets
//! come several per frame, so its timer wake-ups matter less anyway.)

use std::time::{Duration, Instant};

/// How late a timer may fire on a connection that only receives: one Opus
/// packet's interval, so a stream of them always comes first.
pub(crate) const SLACK: Duration = Duration::from_millis(20);
/// Received within this: media is flowing in.
const FLOWING: Duration = Duration::from_millis(100);
/// Nothing sent for this long: the connection only receives.
const QUIET: Duration = Duration::from_secs(1);

/// The slack for a connection's timers (zero: on time). `eligible`: the
/// connection is up and receives no video.
pub(crate) fn timer_slack(
    eligible: bool,
    last_receive: Option<Instant>,
    last_send: Option<Instant>,
    now: Instant,
) -> Duration {
    let flowing = last_receive.is_some_and(|t| now.saturating_duration_since(t) < FLOWING);
    let quiet = last_send.is_none_or(|t| now.saturating_duration_since(t) >= QUIET);
    if eligible && flowing && quiet {
        SLACK
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_audio_receiver_with_media_flowing_and_nothing_sent_gets_slack() {
        let now = Instant::now() + Duration::from_secs(10);
        let ms = |n: u64| Some(now - Duration::from_millis(n));
        assert_eq!(timer_slack(true, ms(5), None, now), SLACK);
        assert_eq!(timer_slack(true, ms(5), ms(1500), now), SLACK);
        // Sending: the pacer's timers must be on time.
        assert_eq!(timer_slack(true, ms(5), ms(200), now), Duration::ZERO);
        // Nothing flowing in (or not yet): no packet would come first.
        assert_eq!(timer_slack(true, ms(500), None, now), Duration::ZERO);
        assert_eq!(timer_slack(true, None, None, now), Duration::ZERO);
        // ICE and DTLS are not up yet, or video comes in.
        assert_eq!(timer_slack(false, ms(5), None, now), Duration::ZERO);
    }
}
