//! When a node counts as alive: it heartbeat within the timeout and no connection to it has
//! failed since. Pure functions of a clock reading, so they are tested under paused time.

use std::time::Duration;

use tokio::time::Instant;

/// What the registry remembers about a node's liveness.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// Last registration or heartbeat.
    pub last_seen: Instant,
    /// A connection to the node failed after `last_seen`: dead at once, until it heartbeats.
    pub failed: bool,
    /// The node's death was already announced (so each death is announced once).
    pub announced_dead: bool,
}

impl Liveness {
    /// A node seen `now`.
    pub fn seen(now: Instant) -> Self {
        Self {
            last_seen: now,
            failed: false,
            announced_dead: false,
        }
    }

    /// Whether the node is alive at `now`.
    pub fn is_alive(&self, now: Instant, timeout: Duration) -> bool {
        !self.failed && now.saturating_duration_since(self.last_seen) <= timeout
    }

    /// Records a heartbeat; returns whether the node comes back from the dead.
    pub fn heartbeat(&mut self, now: Instant, timeout: Duration) -> bool {
        let was_alive = self.is_alive(now, timeout);
        self.last_seen = now;
        self.failed = false;
        self.announced_dead = false;
        !was_alive
    }

    /// Records a failed connection; returns whether this kills a live node.
    pub fn connection_failed(&mut self, now: Instant, timeout: Duration) -> bool {
        let was_alive = self.is_alive(now, timeout);
        self.failed = true;
        self.announced_dead = true;
        was_alive
    }

    /// Returns true exactly once after the node stopped heartbeating.
    pub fn newly_dead(&mut self, now: Instant, timeout: Duration) -> bool {
        if self.announced_dead || self.is_alive(now, timeout) {
            return false;
        }
        self.announced_dead = true;
        true
    }

    /// Milliseconds since the last heartbeat.
    pub fn last_seen_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.last_seen).as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(5000);

    #[tokio::test(start_paused = true)]
    async fn a_node_dies_after_missing_heartbeats_for_the_timeout() {
        let mut node = Liveness::seen(Instant::now());
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(node.is_alive(Instant::now(), TIMEOUT));
        assert!(!node.newly_dead(Instant::now(), TIMEOUT));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!node.is_alive(Instant::now(), TIMEOUT));
        assert!(node.newly_dead(Instant::now(), TIMEOUT));
        assert!(!node.newly_dead(Instant::now(), TIMEOUT), "announced once");
        assert_eq!(node.last_seen_ms(Instant::now()), 5001);
        assert!(node.heartbeat(Instant::now(), TIMEOUT), "comes back");
        assert!(node.is_alive(Instant::now(), TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_connection_kills_at_once_until_the_next_heartbeat() {
        let mut node = Liveness::seen(Instant::now());
        assert!(node.connection_failed(Instant::now(), TIMEOUT));
        assert!(!node.is_alive(Instant::now(), TIMEOUT));
        assert!(
            !node.newly_dead(Instant::now(), TIMEOUT),
            "already announced"
        );
        assert!(
            !node.connection_failed(Instant::now(), TIMEOUT),
            "already dead"
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(node.heartbeat(Instant::now(), TIMEOUT));
        assert!(node.is_alive(Instant::now(), TIMEOUT));
        assert!(!node.heartbeat(Instant::now(), TIMEOUT), "was alive");
    }
}
