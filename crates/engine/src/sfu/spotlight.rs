//! Spotlight: who is speaking, from the audio levels publishers put on their
//! packets (RFC 6464), and which `number` of them are in focus.
//!
//! Receivers of a spotlight channel get the focused senders' video at a
//! high simulcast layer and everyone else's at a low one; the shard turns
//! the focus into layer requests ([`super::simulcast::Selection`]).
//!
//! Loudness is the mean level over each window between [`Spotlight::tick`]s
//! (the shard calls it every half second), smoothed, in
//! dB above silence (0 .. 127). The focus changes with hysteresis: a
//! speaker takes a focused one's place only when clearly louder, and a
//! focused speaker who falls silent keeps the focus until someone else
//! speaks, as people expect of a "last speakers" view.

use std::collections::HashMap;

/// Below this loudness (dB above silence) a publisher is not speaking.
/// Speech sits around 90 (-37 dBov), a quiet room below 40.
pub const SPEAKING: f64 = 50.0;

/// A speaker replaces a focused one only when this much louder (dB).
pub const MARGIN: f64 = 6.0;

/// One publisher's loudness.
#[derive(Debug, Clone, Default)]
struct Loudness {
    sum: f64,
    count: u32,
    score: f64,
}

/// The speakers of one channel and the focus among them.
#[derive(Debug, Clone)]
pub struct Spotlight {
    pub number: usize,
    focused: Vec<u64>,
    loudness: HashMap<u64, Loudness>,
}

impl Spotlight {
    pub fn new(number: usize) -> Self {
        Spotlight {
            number: number.max(1),
            focused: Vec::new(),
            loudness: HashMap::new(),
        }
    }

    /// A packet of `publisher` with audio level `level` (-dBov: 0 loudest,
    /// -127 silence).
    pub fn heard(&mut self, publisher: u64, level: i8) {
        let l = self.loudness.entry(publisher).or_default();
        l.sum += 127.0 + level.clamp(-127, 0) as f64;
        l.count += 1;
    }

    /// Forget a publisher that left.
    pub fn remove(&mut self, publisher: u64) {
        self.loudness.remove(&publisher);
        self.focused.retain(|p| *p != publisher);
    }

    pub fn focused(&self) -> &[u64] {
        &self.focused
    }

    pub fn is_focused(&self, publisher: u64) -> bool {
        self.focused.contains(&publisher)
    }

    /// Close the window: update loudness and the focus. Returns the
    /// publishers that gained and lost the focus.
    pub fn tick(&mut self) -> (Vec<u64>, Vec<u64>) {
        for l in self.loudness.values_mut() {
            // No packets in a window (DTX, muted) counts as silence.
            let mean = if l.count > 0 {
                l.sum / l.count as f64
            } else {
                0.0
            };
            l.score = (l.score + mean) / 2.0;
            l.sum = 0.0;
            l.count = 0;
        }
        let score = |p: &u64| self.loudness.get(p).map_or(0.0, |l| l.score);
        let mut speaking: Vec<(u64, f64)> = self
            .loudness
            .iter()
            .filter(|(_, l)| l.score >= SPEAKING)
            .map(|(p, l)| (*p, l.score))
            .collect();
        // Loudest first; ties by id so that the order is stable.
        speaking.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut focus = self.focused.clone();
        for (candidate, s) in speaking {
            if focus.contains(&candidate) {
                continue;
            }
            if focus.len() < self.number {
                focus.push(candidate);
                continue;
            }
            // Replace the quietest focused speaker if clearly louder.
            let (i, weakest) = focus
                .iter()
                .enumerate()
                .map(|(i, p)| (i, score(p)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("focus is full, so not empty");
            if s > weakest + MARGIN {
                focus[i] = candidate;
            }
        }
        let gained: Vec<u64> = focus
            .iter()
            .filter(|p| !self.focused.contains(p))
            .copied()
            .collect();
        let lost: Vec<u64> = self
            .focused
            .iter()
            .filter(|p| !focus.contains(p))
            .copied()
            .collect();
        self.focused = focus;
        (gained, lost)
    }
}

/// A connection's spotlight preferences: the simulcast layer it receives
/// from focused senders and from the others (None: no video).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpotlightLayers {
    pub focus: Option<super::simulcast::Layer>,
    pub unfocus: Option<super::simulcast::Layer>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speak(s: &mut Spotlight, levels: &[(u64, i8)], windows: usize) -> (Vec<u64>, Vec<u64>) {
        let (mut gained, mut lost) = (Vec::new(), Vec::new());
        for _ in 0..windows {
            for &(p, l) in levels {
                for _ in 0..25 {
                    s.heard(p, l);
                }
            }
            let (g, l) = s.tick();
            gained.extend(g);
            lost.extend(l);
        }
        (gained, lost)
    }

    #[test]
    fn the_loudest_get_the_focus_and_keep_it_through_silence() {
        let mut s = Spotlight::new(2);
        let (gained, _) = speak(&mut s, &[(1, -20), (2, -25), (3, -60), (4, -127)], 4);
        let mut f = s.focused().to_vec();
        f.sort();
        assert_eq!(f, vec![1, 2]);
        assert_eq!(gained.len(), 2);
        // Everyone goes quiet: the focus stays.
        speak(&mut s, &[(1, -127), (2, -127), (3, -127)], 6);
        assert!(s.is_focused(1) && s.is_focused(2));
        // Speaker 4 starts: it takes the place of the quietest focused one.
        let (gained, lost) = speak(&mut s, &[(4, -20)], 3);
        assert_eq!(gained, vec![4]);
        assert_eq!(lost.len(), 1);
        assert!(s.is_focused(4));
    }

    #[test]
    fn no_flapping_between_equally_loud_speakers() {
        let mut s = Spotlight::new(1);
        speak(&mut s, &[(1, -30)], 3);
        assert_eq!(s.focused(), &[1]);
        // 2 is as loud as 1: not enough to take over.
        let (gained, _) = speak(&mut s, &[(1, -30), (2, -28)], 10);
        assert!(gained.is_empty());
        // Clearly louder: takes over.
        let (gained, _) = speak(&mut s, &[(1, -40), (2, -20)], 4);
        assert_eq!(gained, vec![2]);
        s.remove(2);
        assert!(s.focused().is_empty());
    }
}
