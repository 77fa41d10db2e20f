//! Adaptive chunk size (`docs/protocol.md` §4.6): about 2 ms of work per chunk, from 1 to
//! 1024 items, one item until the first chunk has been timed.

use std::time::{Duration, Instant};

/// Work aimed at per chunk.
pub const TARGET: Duration = Duration::from_millis(2);
/// Largest chunk.
pub const MAX_CHUNK: usize = 1024;

/// Per-worker estimate of the time one item takes.
#[derive(Debug, Clone, Default)]
pub struct ChunkSizer {
    /// Smoothed nanoseconds per item; `None` until a chunk was timed.
    per_item_ns: Option<f64>,
    /// When the previous chunk finished: a pipelined chunk starts no earlier than that.
    last_done: Option<Instant>,
}

impl ChunkSizer {
    /// A sizer that has timed nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Items for the next chunk.
    pub fn next_size(&self) -> usize {
        match self.per_item_ns {
            None => 1,
            Some(ns) => {
                let items = TARGET.as_nanos() as f64 / ns.max(1.0);
                (items as usize).clamp(1, MAX_CHUNK)
            }
        }
    }

    /// Chunks to keep in flight (at most 2, §4.6). A second chunk hides the round trip
    /// between chunks. For slow items (2 ms or more, or not timed yet) it could hold back work
    /// another worker would start at once (the second of two slow inputs queued behind the
    /// first), so it is only taken then when `spare_work`: more is queued than there are
    /// instances to take it.
    pub fn in_flight_limit(&self, spare_work: bool) -> usize {
        if spare_work || self.next_size() > 1 {
            2
        } else {
            1
        }
    }

    /// A chunk of `items` sent at `sent` finished at `done`. With two chunks in flight a chunk
    /// waits behind the previous one, so its service time starts at the later of its send and
    /// the previous chunk's end.
    pub fn observe(&mut self, items: usize, sent: Instant, done: Instant) {
        if items == 0 {
            return;
        }
        let start = match self.last_done {
            Some(prev) if prev > sent => prev,
            _ => sent,
        };
        self.last_done = Some(done);
        let sample = done.saturating_duration_since(start).as_nanos() as f64 / items as f64;
        self.per_item_ns = Some(match self.per_item_ns {
            None => sample,
            Some(old) => 0.5 * old + 0.5 * sample,
        });
    }

    /// Forgets the pipeline position (a fresh worker starts with nothing in flight).
    pub fn restart(&mut self) {
        self.last_done = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_item_until_timed_then_about_two_ms_of_work() {
        let mut sizer = ChunkSizer::new();
        assert_eq!(sizer.next_size(), 1);
        let t0 = Instant::now();
        // 1 item took 100 µs → 20 items fill 2 ms.
        sizer.observe(1, t0, t0 + Duration::from_micros(100));
        assert_eq!(sizer.next_size(), 20);
    }

    #[test]
    fn slow_items_are_pipelined_only_with_spare_work() {
        let mut sizer = ChunkSizer::new();
        assert_eq!(sizer.in_flight_limit(false), 1, "untimed");
        assert_eq!(sizer.in_flight_limit(true), 2, "untimed, plenty queued");
        let t0 = Instant::now();
        sizer.observe(1, t0, t0 + Duration::from_millis(5));
        assert_eq!(sizer.in_flight_limit(false), 1, "slow items");
        let mut fast = ChunkSizer::new();
        fast.observe(10, t0, t0 + Duration::from_micros(50));
        assert_eq!(fast.in_flight_limit(false), 2);
    }

    #[test]
    fn sizes_are_clamped() {
        let mut fast = ChunkSizer::new();
        let t0 = Instant::now();
        fast.observe(1000, t0, t0 + Duration::from_micros(100));
        assert_eq!(fast.next_size(), MAX_CHUNK);
        let mut slow = ChunkSizer::new();
        slow.observe(1, t0, t0 + Duration::from_secs(1));
        assert_eq!(slow.next_size(), 1);
    }

    #[test]
    fn pipelined_chunks_are_timed_from_the_previous_end() {
        let mut sizer = ChunkSizer::new();
        let t0 = Instant::now();
        sizer.observe(10, t0, t0 + Duration::from_micros(1000));
        // Sent at t0 too, but it could only start when the first ended: 10 items in 1 ms.
        sizer.observe(10, t0, t0 + Duration::from_micros(2000));
        assert_eq!(sizer.next_size(), 20);
    }
}
