//! Draining: a node asked to drain (`POST /v1/drain`, or SIGTERM in `fleetmapd`) takes no new
//! jobs, tells the coordinator at once (its heartbeats say `draining`, so the coordinator sends
//! its running jobs no more inputs), finishes what it holds, then leaves the fleet.
//!
//! [`Drain`] is the handle shared by whoever asks (the API, `main`'s signal handler) and the
//! daemon: `request` starts it, `finished` resolves once the node is idle and has left.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::state::Daemon;

/// How often a draining node checks whether its last job ended.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Shared drain state; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    requested: CancellationToken,
    finished: CancellationToken,
}

impl Drain {
    /// A node that is not draining.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining (again: no effect).
    pub fn request(&self) {
        self.requested.cancel();
    }

    /// Whether draining was asked for.
    pub fn is_requested(&self) -> bool {
        self.requested.is_cancelled()
    }

    /// Resolves once draining was asked for.
    pub async fn requested(&self) {
        self.requested.cancelled().await;
    }

    /// Marks the drain done: no job left and the node left the coordinator.
    pub fn finish(&self) {
        self.finished.cancel();
    }

    /// Whether the drain is done.
    pub fn is_finished(&self) -> bool {
        self.finished.is_cancelled()
    }

    /// Resolves once the drain is done.
    pub async fn finished(&self) {
        self.finished.cancelled().await;
    }
}

/// Waits until the daemon runs no job.
pub async fn wait_idle(daemon: &Daemon) {
    while daemon.inner().registry.live_count() > 0 {
        tokio::time::sleep(IDLE_POLL).await;
    }
}

/// For a node without a coordinator: finishes the drain once it is idle.
pub async fn finish_when_idle(daemon: Daemon, shutdown: CancellationToken) {
    let drain = daemon.inner().drain.clone();
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = drain.requested() => {}
    }
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = wait_idle(&daemon) => drain.finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requested_and_finished_are_shared_by_clones() {
        let drain = Drain::new();
        let asker = drain.clone();
        assert!(!drain.is_requested());
        asker.request();
        asker.request();
        drain.requested().await;
        assert!(drain.is_requested());
        assert!(!asker.is_finished());
        drain.finish();
        asker.finished().await;
    }
}
