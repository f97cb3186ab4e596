//! The publisher's capture clock, carried through the SFU.
//!
//! Receivers line audio up with video by the RTCP sender reports (SR) of
//! each stream: an SR ties an RTP timestamp to the sender's wall clock.
//! The SFU sends its own SRs to subscribers, built from the wall clock it
//! passes with every forwarded packet. Were that the arrival time, audio
//! and video that took different paths inside the publisher (different
//! encoders, queues) would arrive "in sync" by arrival, not by capture, and
//! lip sync would be lost. So each forwarded packet gets the instant at
//! which the publisher captured it, mapped from the publisher's NTP clock
//! onto ours by one offset per publisher, taken at its first SR: all its
//! tracks share that offset, so their relative timing survives exactly.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A capture time mapped onto our clock further than this from the packet's
/// arrival means a bogus or stale report: the arrival time is used instead.
const MAX_SKEW: Duration = Duration::from_secs(5);

/// One sender report: RTP time `rtp` was sender NTP time `ntp` (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SenderReport {
    pub ntp: f64,
    pub rtp: u32,
}

impl SenderReport {
    pub fn new(ntp: SystemTime, rtp: u64) -> Option<SenderReport> {
        let ntp = ntp.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
        Some(SenderReport {
            ntp,
            rtp: rtp as u32,
        })
    }
}

/// Maps a publisher's NTP seconds onto our `Instant`s; one per publisher.
#[derive(Debug, Clone, Copy)]
pub struct ClockBase {
    ntp: f64,
    at: Instant,
}

impl ClockBase {
    /// The first report of a publisher fixes the offset.
    pub fn new(report: SenderReport, received: Instant) -> ClockBase {
        ClockBase {
            ntp: report.ntp,
            at: received,
        }
    }

    /// Our instant for the capture of RTP time `rtp` (in `rate` Hz) of a
    /// track whose latest report is `report`; `arrival` when unknown or
    /// implausible.
    pub fn capture_instant(
        &self,
        report: Option<SenderReport>,
        rtp: u32,
        rate: u32,
        arrival: Instant,
    ) -> Instant {
        let Some(report) = report else {
            return arrival;
        };
        // RTP time wraps at 32 bits; a packet is near its track's report.
        let since_report = rtp.wrapping_sub(report.rtp) as i32 as f64 / rate.max(1) as f64;
        let since_base = report.ntp + since_report - self.ntp;
        let at = if since_base >= 0.0 {
            self.at.checked_add(Duration::from_secs_f64(since_base))
        } else {
            self.at.checked_sub(Duration::from_secs_f64(-since_base))
        };
        match at {
            Some(at) if at.max(arrival) - at.min(arrival) < MAX_SKEW => at,
            _ => arrival,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_of_one_publisher_keep_their_capture_offsets() {
        let t0 = Instant::now();
        // Video report at NTP 100.0 = rtp 9000; audio at NTP 100.5 = rtp 48000.
        let video = SenderReport {
            ntp: 100.0,
            rtp: 9000,
        };
        let audio = SenderReport {
            ntp: 100.5,
            rtp: 48_000,
        };
        let base = ClockBase::new(video, t0);
        // Video frame 1 s after its report, audio packet 0.5 s after its
        // own: both captured at NTP 101.0, whatever their arrival.
        let v = base.capture_instant(Some(video), 9000 + 90_000, 90_000, t0);
        let a = base.capture_instant(
            Some(audio),
            48_000 + 24_000,
            48_000,
            t0 + Duration::from_millis(200),
        );
        assert_eq!(v, t0 + Duration::from_secs(1));
        assert!(v.max(a) - v.min(a) < Duration::from_micros(10));
    }

    #[test]
    fn wrapping_and_fallbacks() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let report = SenderReport {
            ntp: 50.0,
            rtp: u32::MAX - 899,
        };
        let base = ClockBase::new(report, t0);
        // 1800 ticks later wraps past zero: 20 ms at 90 kHz.
        let at = base.capture_instant(Some(report), 900, 90_000, t0);
        assert_eq!(at, t0 + Duration::from_millis(20));
        // Before the track's first report: arrival.
        assert_eq!(base.capture_instant(None, 5, 90_000, t0), t0);
        // A report claiming a capture far from arrival: arrival.
        let far = SenderReport {
            ntp: 5000.0,
            rtp: 0,
        };
        assert_eq!(base.capture_instant(Some(far), 0, 90_000, t0), t0);
    }
}
