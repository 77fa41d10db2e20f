//! How a worker process ended, published once by whoever reaps it and awaited by its instance.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

/// A worker's end: an exit code or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code when it exited.
    pub code: Option<i32>,
    /// Signal number when a signal killed it.
    pub signal: Option<i32>,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (_, Some(signal)) => write!(f, "killed by signal {signal}"),
            (Some(code), None) => write!(f, "exit code {code}"),
            (None, None) => f.write_str("status unknown"),
        }
    }
}

/// One worker's exit, set at most once; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ExitWatch(Arc<ExitCell>);

#[derive(Debug, Default)]
struct ExitCell {
    status: OnceLock<ExitStatus>,
    notify: Notify,
}

impl ExitWatch {
    /// A watch nobody has reported on yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the exit (the first report wins) and wakes every waiter.
    pub fn set(&self, status: ExitStatus) {
        let _ = self.0.status.set(status);
        self.0.notify.notify_waiters();
    }

    /// The exit, if already known.
    pub fn get(&self) -> Option<ExitStatus> {
        self.0.status.get().copied()
    }

    /// Waits up to `limit` for the exit to be reported.
    pub async fn wait(&self, limit: Duration) -> Option<ExitStatus> {
        let notified = self.0.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(status) = self.get() {
            return Some(status);
        }
        let _ = tokio::time::timeout(limit, notified).await;
        self.get()
    }

    /// Whether `other` is the same watch (not merely an equal status).
    pub fn same(&self, other: &ExitWatch) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_see_the_first_report() {
        let watch = ExitWatch::new();
        let waiter = {
            let watch = watch.clone();
            tokio::spawn(async move { watch.wait(Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        watch.set(ExitStatus {
            code: Some(3),
            signal: None,
        });
        watch.set(ExitStatus {
            code: None,
            signal: Some(9),
        });
        let seen = waiter.await.expect("waiter ran");
        assert_eq!(seen.and_then(|s| s.code), Some(3));
        assert_eq!(watch.get().and_then(|s| s.code), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_gives_up_after_its_limit() {
        let watch = ExitWatch::new();
        assert_eq!(watch.wait(Duration::from_millis(100)).await, None);
    }
}
