//! Sequence number and timestamp rewriting for one subscription.
//!
//! A subscriber sees one continuous stream on its own SSRC, whatever happens
//! upstream: the first packet forwarded, a publisher that restarts its
//! stream, or (with simulcast) a switch to another layer. Output sequence
//! numbers stay gap-free across switches and timestamps move forward by the
//! wall-clock time between the last packet of the old source and the first
//! of the new one.

use std::time::Instant;

/// Per-subscription rewriting state.
#[derive(Debug, Clone)]
pub struct Rewriter {
    clock_rate: u32,
    state: Option<State>,
}

#[derive(Debug, Clone)]
struct State {
    source: u64,
    seq_offset: u64,
    ts_offset: u64,
    highest_out_seq: u64,
    last_out_ts: u64,
    last_wallclock: Instant,
}

impl Rewriter {
    pub fn new(clock_rate: u32) -> Self {
        Rewriter {
            clock_rate,
            state: None,
        }
    }

    /// Rewrite a packet of `source` (any id that changes when the upstream
    /// stream does). Returns (sequence number, 32-bit timestamp).
    pub fn rewrite(&mut self, source: u64, seq: u64, time: u64, now: Instant) -> (u64, u32) {
        match &mut self.state {
            Some(s) if s.source == source => {
                let out_seq = seq.wrapping_add(s.seq_offset);
                let out_ts = time.wrapping_add(s.ts_offset);
                if out_seq > s.highest_out_seq {
                    s.highest_out_seq = out_seq;
                    s.last_out_ts = out_ts;
                    s.last_wallclock = now;
                }
                (out_seq, out_ts as u32)
            }
            Some(s) => {
                // New source: continue right after the highest sequence
                // number sent, and advance time by the real gap.
                let elapsed = now.saturating_duration_since(s.last_wallclock);
                let ticks = (elapsed.as_secs_f64() * self.clock_rate as f64) as u64;
                let out_seq = s.highest_out_seq + 1;
                let out_ts = s.last_out_ts + ticks.max(1);
                *s = State {
                    source,
                    seq_offset: out_seq.wrapping_sub(seq),
                    ts_offset: out_ts.wrapping_sub(time),
                    highest_out_seq: out_seq,
                    last_out_ts: out_ts,
                    last_wallclock: now,
                };
                (out_seq, out_ts as u32)
            }
            None => {
                // First packet: start from a random point as RFC 3550
                // asks, far enough from zero that early reordering never
                // underflows, and below 2^16: SRTP assumes the first packet
                // has a rollover counter of 0.
                let out_seq = fastrand::u64((1 << 14)..(1 << 15));
                let out_ts = fastrand::u64(0..(1 << 31));
                self.state = Some(State {
                    source,
                    seq_offset: out_seq.wrapping_sub(seq),
                    ts_offset: out_ts.wrapping_sub(time),
                    highest_out_seq: out_seq,
                    last_out_ts: out_ts,
                    last_wallclock: now,
                });
                (out_seq, out_ts as u32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn continuous_for_one_source_with_reordering() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        let (s0, t_0) = r.rewrite(1, 1000, 5000, t0);
        let (s1, t_1) = r.rewrite(1, 1001, 8000, t0);
        let (s3, _) = r.rewrite(1, 1003, 11000, t0);
        let (s2, _) = r.rewrite(1, 1002, 8000, t0); // late packet
        assert_eq!(s1, s0 + 1);
        assert_eq!(s2, s0 + 2);
        assert_eq!(s3, s0 + 3);
        assert_eq!(t_1.wrapping_sub(t_0), 3000);
    }

    #[test]
    fn source_switch_keeps_sequence_and_time_moving_forward() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        let (a, ta) = r.rewrite(1, 50, 1_000_000, t0);
        let (b, tb) = r.rewrite(1, 51, 1_003_000, t0);
        // Switch to a source with unrelated numbering 100 ms later.
        let (c, tc) = r.rewrite(2, 7, 42, t0 + Duration::from_millis(100));
        let (d, td) = r.rewrite(2, 8, 3042, t0 + Duration::from_millis(133));
        assert_eq!(b, a + 1);
        assert_eq!(c, b + 1, "no gap in sequence numbers across a switch");
        assert_eq!(d, c + 1);
        assert_eq!(tb.wrapping_sub(ta), 3000);
        let gap = tc.wrapping_sub(tb);
        assert!((8900..=9100).contains(&gap), "timestamp gap {gap} ~ 100 ms");
        assert_eq!(td.wrapping_sub(tc), 3000);
    }

    #[test]
    fn timestamps_wrap_like_rtp() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000);
        let (_, a) = r.rewrite(1, 0, u32::MAX as u64 - 10, t0);
        let (_, b) = r.rewrite(1, 1, u32::MAX as u64 + 950, t0);
        assert_eq!(b.wrapping_sub(a), 960);
    }
}
