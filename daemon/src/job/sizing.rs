//! Adaptive chunk size (`docs/protocol.md` §4.6): about 100 ms of work per chunk, from 1 to
//! 1024 items, one item until the first chunk has been timed; slow items never take more
//! than a fair share of what is queued.
//!
//! Why 100 ms: every chunk costs a worker a frame each way and the wake-ups around them, 0.2 to
//! 0.3 ms on a 2-CPU VM right after the function (measured in the 200 × 10 ms benchmark from
//! the workers' own clocks). At the former 2 ms target anything slower than 2 ms ran one item
//! per chunk and paid that per item: 2.5 % of a 10 ms function, the whole gap between
//! fleetmap and the floor there (1.042 s against 1.015; 1.028 s at 100 ms chunks, 1.030–1.034
//! at 50 ms). Results still stream: the worker sends what it has at least every 50 ms within a
//! chunk (its `RESULTS_EVERY_NS`), and print output goes out at once.

use std::time::{Duration, Instant};

/// Work aimed at per chunk.
pub const TARGET: Duration = Duration::from_millis(100);
/// Largest chunk.
pub const MAX_CHUNK: usize = 1024;
/// Items faster than this always get a second chunk in flight (see `in_flight_limit`).
pub const PIPELINE_ALWAYS_BELOW: Duration = Duration::from_millis(2);
/// Items at least this slow are capped by [`fair_share`]; faster ones are cheap to move around
/// and their chunk overhead matters more than the tail.
pub const SLOW_ITEM: Duration = Duration::from_millis(1);

/// Most items one chunk of a slow function takes when `queued` items wait for `instances`
/// instances: a quarter of each one's part (at least 1), so that near the end of a job no
/// instance sits on several items while another has none (each holds up to 2 chunks).
pub fn fair_share(queued: usize, instances: usize) -> usize {
    (queued / (4 * instances.max(1))).max(1)
}

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

    /// Items for the next chunk when `share` gives the job's [`fair_share`]: slow items are
    /// capped by it, fast ones are not (and do not ask for it: it takes the job's locks).
    pub fn next_size_within(&self, share: impl FnOnce() -> usize) -> usize {
        let size = self.next_size();
        match self.per_item_ns {
            Some(ns) if ns >= SLOW_ITEM.as_nanos() as f64 => size.min(share().max(1)),
            _ => size,
        }
    }

    /// Chunks to keep in flight (at most 2, §4.6). A second chunk hides the round trip
    /// between chunks. For slow items (2 ms or more, or not timed yet) it could hold back work
    /// another worker would start at once (the second of two slow inputs queued behind the
    /// first), so it is only taken then when `spare_work`: more is queued than there are
    /// instances to take it.
    pub fn in_flight_limit(&self, spare_work: bool) -> usize {
        let fast = self
            .per_item_ns
            .is_some_and(|ns| ns < PIPELINE_ALWAYS_BELOW.as_nanos() as f64);
        if spare_work || fast {
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
    fn one_item_until_timed_then_about_a_hundred_ms_of_work() {
        let mut sizer = ChunkSizer::new();
        assert_eq!(sizer.next_size(), 1);
        let t0 = Instant::now();
        // 1 item took 200 µs → 500 items fill 100 ms.
        sizer.observe(1, t0, t0 + Duration::from_micros(200));
        assert_eq!(sizer.next_size(), 500);
        let mut slow = ChunkSizer::new();
        slow.observe(1, t0, t0 + Duration::from_millis(10));
        assert_eq!(slow.next_size(), 10, "10 ms items: 10 per chunk");
    }

    #[test]
    fn slow_items_take_at_most_a_fair_share_and_fast_ones_are_not_capped() {
        let t0 = Instant::now();
        let mut slow = ChunkSizer::new();
        slow.observe(1, t0, t0 + Duration::from_millis(10));
        assert_eq!(
            slow.next_size_within(|| fair_share(200, 2)),
            10,
            "plenty queued"
        );
        assert_eq!(
            slow.next_size_within(|| fair_share(24, 2)),
            3,
            "a quarter of each part"
        );
        assert_eq!(slow.next_size_within(|| fair_share(12, 2)), 1, "the tail");
        assert_eq!(slow.next_size_within(|| fair_share(0, 2)), 1, "never 0");
        let mut fast = ChunkSizer::new();
        fast.observe(100, t0, t0 + Duration::from_micros(100));
        assert_eq!(fast.next_size_within(|| fair_share(12, 2)), MAX_CHUNK);
        assert_eq!(
            fast.next_size_within(|| unreachable!("fast items never ask for the share")),
            MAX_CHUNK
        );
        assert_eq!(fair_share(100, 0), 25, "no instance counted yet: as if one");
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
        assert_eq!(sizer.next_size(), 1000);
    }
}
