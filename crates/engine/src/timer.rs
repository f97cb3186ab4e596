//! A min-heap of deadlines, so that a shard wakes only the connections whose
//! timers are due instead of ticking every connection on every packet.
//!
//! Entries are never removed from the middle: a connection re-arming its
//! deadline bumps its generation, and stale entries are skipped when popped.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Deadlines keyed by `K`.
pub struct TimerHeap<K: Copy + Eq + Hash + Ord> {
    heap: BinaryHeap<Reverse<(Instant, u64, K)>>,
    current: HashMap<K, (Instant, u64)>,
    next_gen: u64,
}

impl<K: Copy + Eq + Hash + Ord> Default for TimerHeap<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash + Ord> TimerHeap<K> {
    pub fn new() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            current: HashMap::new(),
            next_gen: 0,
        }
    }

    /// Set `key`'s deadline, replacing any earlier one.
    pub fn set(&mut self, key: K, at: Instant) {
        if let Some((cur, _)) = self.current.get(&key) {
            if *cur == at {
                return;
            }
        }
        self.next_gen += 1;
        self.current.insert(key, (at, self.next_gen));
        self.heap.push(Reverse((at, self.next_gen, key)));
        // Stale entries pile up when deadlines move often; rebuild when
        // they outnumber live ones so the heap stays O(live).
        if self.heap.len() > 64 && self.heap.len() > 4 * self.current.len() {
            self.compact();
        }
    }

    /// Forget `key`.
    pub fn remove(&mut self, key: K) {
        self.current.remove(&key);
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.skip_stale();
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pop one key whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        self.skip_stale();
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                let Reverse((_, _, key)) = self.heap.pop().expect("peeked");
                self.current.remove(&key);
                Some(key)
            }
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    fn skip_stale(&mut self) {
        while let Some(Reverse((_, gen, key))) = self.heap.peek() {
            match self.current.get(key) {
                Some((_, g)) if g == gen => return,
                _ => {
                    self.heap.pop();
                }
            }
        }
    }

    fn compact(&mut self) {
        self.heap = self
            .current
            .iter()
            .map(|(k, (at, gen))| Reverse((*at, *gen, *k)))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order() {
        let t0 = Instant::now();
        let mut h = TimerHeap::new();
        h.set(1u32, t0 + Duration::from_millis(30));
        h.set(2u32, t0 + Duration::from_millis(10));
        h.set(3u32, t0 + Duration::from_millis(20));
        assert_eq!(h.next_deadline(), Some(t0 + Duration::from_millis(10)));
        let now = t0 + Duration::from_millis(25);
        assert_eq!(h.pop_due(now), Some(2));
        assert_eq!(h.pop_due(now), Some(3));
        assert_eq!(h.pop_due(now), None);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn rearm_replaces_and_remove_forgets() {
        let t0 = Instant::now();
        let mut h = TimerHeap::new();
        h.set(1u32, t0 + Duration::from_millis(5));
        h.set(1u32, t0 + Duration::from_millis(50));
        h.set(2u32, t0 + Duration::from_millis(6));
        h.remove(2);
        let now = t0 + Duration::from_millis(10);
        assert_eq!(h.pop_due(now), None, "stale entries must not fire");
        assert_eq!(h.next_deadline(), Some(t0 + Duration::from_millis(50)));
    }

    #[test]
    fn stays_compact_under_churn() {
        let t0 = Instant::now();
        let mut h = TimerHeap::new();
        for i in 0..10_000u64 {
            h.set((i % 10) as u32, t0 + Duration::from_micros(i));
        }
        assert_eq!(h.len(), 10);
        assert!(h.heap.len() <= 64.max(4 * 10) + 1);
    }
}
