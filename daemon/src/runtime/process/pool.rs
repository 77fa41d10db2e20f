//! The warm pool: idle workers that have sent HELLO, how many are being started, and who is
//! waiting for one. The zygote task reads [`Pool::claim_deficit`] to know how many to fork.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_proto::PoolInfo;
use tokio::sync::Notify;
use tracing::debug;

use crate::runtime::{ExitWatch, RuntimeError, WorkerConn};

/// A spawn request with no HELLO after this long is assumed lost (the fork failed, the child
/// died before connecting) and requested again.
const PENDING_TTL: Duration = Duration::from_secs(10);
/// How long starts may keep failing, with no worker joining, before an acquirer waiting for
/// one is told why instead of waiting on (the engine or interpreter is broken, not slow).
pub const STARTS_FAILING_LIMIT: Duration = Duration::from_secs(30);

/// A worker that has said HELLO and waits for a job.
#[derive(Debug)]
pub struct IdleWorker {
    /// Its process id (checked against the socket's peer credentials).
    pub pid: u32,
    /// Its socket.
    pub conn: WorkerConn,
    /// Its end, as the zygote reports it.
    pub exit: ExitWatch,
}

impl IdleWorker {
    fn usable(&self) -> bool {
        self.exit.get().is_none() && self.conn.looks_alive()
    }
}

#[derive(Debug, Default)]
struct PoolState {
    idle: VecDeque<IdleWorker>,
    /// When each outstanding spawn was asked for.
    pending: VecDeque<Instant>,
    /// Acquirers waiting because `idle` was empty: they count towards the deficit.
    waiters: u32,
    closed: bool,
    /// Starts have failed since this streak began, with no worker joining in between.
    failing: Option<Failing>,
}

/// A run of failed starts (times are when each attempt began).
#[derive(Debug, Clone)]
struct Failing {
    since: Instant,
    last: Instant,
    reason: String,
}

impl Failing {
    /// The error for an acquirer waiting since `waiting_since` once the streak has lasted
    /// `limit` and an attempt made while it waited failed too (one that came after the last
    /// attempt waits for the next: the cause may be gone); else how long until the streak
    /// reaches the limit (`None` once it has: the next attempt's outcome wakes the waiter).
    fn verdict(
        &self,
        now: Instant,
        waiting_since: Instant,
        limit: Duration,
    ) -> Result<Option<Duration>, RuntimeError> {
        let lasted = now.duration_since(self.since);
        if lasted < limit {
            return Ok(Some(limit - lasted));
        }
        if self.last >= waiting_since {
            return Err(RuntimeError::StartsFailing {
                for_s: lasted.as_secs(),
                reason: self.reason.clone(),
            });
        }
        Ok(None)
    }
}

/// Idle workers and the bookkeeping that keeps `target` of them warm. A std `Mutex`: every
/// critical section is a few queue operations, never an await.
#[derive(Debug)]
pub struct Pool {
    state: Mutex<PoolState>,
    target: u32,
    /// Wakes acquirers when a worker joins the pool or the pool closes.
    available: Notify,
    /// Wakes the zygote task when the deficit may have grown.
    replenish: Notify,
    /// See [`STARTS_FAILING_LIMIT`].
    failing_limit: Duration,
}

impl Pool {
    /// An empty pool that keeps `target` idle workers.
    pub fn new(target: u32) -> Self {
        Self::with_failing_limit(target, STARTS_FAILING_LIMIT)
    }

    /// Like [`Pool::new`], with acquirers told of failing starts after `limit`.
    pub fn with_failing_limit(target: u32, limit: Duration) -> Self {
        Self {
            state: Mutex::new(PoolState::default()),
            target,
            available: Notify::new(),
            replenish: Notify::new(),
            failing_limit: limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Idle count and target.
    pub fn info(&self) -> PoolInfo {
        PoolInfo {
            idle: u32::try_from(self.lock().idle.len()).unwrap_or(u32::MAX),
            target: self.target,
        }
    }

    /// Waits until the pool holds its target of idle workers, or `limit` passes; returns
    /// whether it is full. Start-up only: it polls.
    pub async fn wait_full(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let info = self.info();
            if info.idle >= info.target {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A worker finished its HELLO: it becomes idle. Returns it back if the pool is closed.
    pub fn push(&self, worker: IdleWorker) -> Result<(), IdleWorker> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(worker);
            }
            state.pending.pop_front();
            state.idle.push_back(worker);
            state.failing = None;
        }
        self.available.notify_waiters();
        Ok(())
    }

    /// A start begun at `attempted` failed for `reason`: it no longer counts as pending, and
    /// the failure streak grows (acquirers learn of it once it passes the limit).
    pub fn start_failed(&self, attempted: Instant, reason: String) {
        {
            let mut state = self.lock();
            state.pending.pop_front();
            let since = state.failing.as_ref().map_or(attempted, |f| f.since);
            let last = state
                .failing
                .as_ref()
                .map_or(attempted, |f| f.last.max(attempted));
            state.failing = Some(Failing {
                since,
                last,
                reason,
            });
        }
        self.replenish.notify_one();
        self.available.notify_waiters();
    }

    /// A spawned worker died before its HELLO: its spawn no longer counts as pending.
    pub fn spawn_lost(&self) {
        self.lock().pending.pop_front();
        self.replenish.notify_one();
    }

    /// The zygote is gone: nothing it was asked for will arrive.
    pub fn spawns_lost(&self) {
        self.lock().pending.clear();
    }

    /// How many workers to fork now to reach the target (plus one per waiting acquirer);
    /// they are counted as pending from here on.
    pub fn claim_deficit(&self) -> u32 {
        self.claim_deficit_within(u32::MAX)
    }

    /// Like [`Pool::claim_deficit`], but with at most `warmup_budget` starts in progress for
    /// the target's sake; starts that waiting acquirers need are claimed whatever the budget.
    pub fn claim_deficit_within(&self, warmup_budget: u32) -> u32 {
        let mut state = self.lock();
        if state.closed {
            return 0;
        }
        let now = Instant::now();
        while state
            .pending
            .front()
            .is_some_and(|t| now.duration_since(*t) > PENDING_TTL)
        {
            state.pending.pop_front();
        }
        let pending = state.pending.len();
        let have = state.idle.len() + pending;
        let want = self.target as usize + state.waiters as usize;
        let deficit = want.saturating_sub(have);
        let urgent = (state.waiters as usize).saturating_sub(pending);
        let warmup = deficit
            .saturating_sub(urgent)
            .min((warmup_budget as usize).saturating_sub(pending));
        let deficit = (urgent + warmup).min(deficit);
        for _ in 0..deficit {
            state.pending.push_back(now);
        }
        u32::try_from(deficit).unwrap_or(u32::MAX)
    }

    /// Resolves when the deficit may have grown (cancel-safe).
    pub async fn replenish_wanted(&self) {
        self.replenish.notified().await;
    }

    /// Asks the zygote task to check the deficit.
    pub fn request_replenish(&self) {
        self.replenish.notify_one();
    }

    /// Takes an idle worker, waiting for one if none is idle. Dead idle workers met on the way
    /// are handed to `discard`.
    pub async fn take(
        &self,
        mut discard: impl FnMut(IdleWorker),
    ) -> Result<IdleWorker, RuntimeError> {
        let mut waiting = WaitGuard {
            pool: self,
            counted: false,
        };
        let waiting_since = Instant::now();
        loop {
            let notified = self.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut dead = Vec::new();
            let mut patience = None;
            let taken = {
                let mut state = self.lock();
                if state.closed {
                    return Err(RuntimeError::ShuttingDown);
                }
                let mut taken = None;
                while let Some(worker) = state.idle.pop_front() {
                    if worker.usable() {
                        taken = Some(worker);
                        break;
                    }
                    dead.push(worker);
                }
                if taken.is_none() && !waiting.counted {
                    state.waiters += 1;
                    waiting.counted = true;
                }
                if taken.is_none() {
                    if let Some(failing) = &state.failing {
                        patience = Some(failing.verdict(
                            Instant::now(),
                            waiting_since,
                            self.failing_limit,
                        ));
                    }
                }
                taken
            };
            for worker in dead {
                debug!(pid = worker.pid, "dropping an idle worker that is gone");
                discard(worker);
            }
            self.replenish.notify_one();
            if let Some(worker) = taken {
                return Ok(worker);
            }
            match patience.transpose()?.flatten() {
                Some(patience) => {
                    let _ = tokio::time::timeout(patience, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Closes the pool: acquirers fail from now on; returns the idle workers to kill.
    pub fn close(&self) -> Vec<IdleWorker> {
        let idle = {
            let mut state = self.lock();
            state.closed = true;
            state.idle.drain(..).collect()
        };
        self.available.notify_waiters();
        idle
    }
}

/// Un-counts an acquirer that stops waiting (it got a worker or was cancelled).
struct WaitGuard<'a> {
    pool: &'a Pool,
    counted: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.counted {
            let mut state = self.pool.lock();
            state.waiters = state.waiters.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::UnixStream;

    use super::*;

    fn idle(pid: u32) -> (IdleWorker, UnixStream) {
        let (a, b) = UnixStream::pair().expect("pair");
        (
            IdleWorker {
                pid,
                conn: WorkerConn::new(a, 1024),
                exit: ExitWatch::new(),
            },
            b,
        )
    }

    #[test]
    fn deficit_counts_idle_pending_and_waiters() {
        let pool = Pool::new(2);
        assert_eq!(pool.claim_deficit(), 2);
        assert_eq!(pool.claim_deficit(), 0, "both are pending now");
        pool.spawn_lost();
        assert_eq!(pool.claim_deficit(), 1);
        pool.spawns_lost();
        assert_eq!(pool.claim_deficit(), 2);
    }

    #[tokio::test]
    async fn a_warmup_budget_bounds_target_starts_but_never_a_waiters() {
        let pool = Arc::new(Pool::new(3));
        assert_eq!(pool.claim_deficit_within(0), 0, "no free CPU: no warm-up");
        assert_eq!(pool.claim_deficit_within(1), 1);
        assert_eq!(pool.claim_deficit_within(1), 0, "one start already runs");
        let taker = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.take(|_| {}).await.map(|w| w.pid).ok() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            pool.claim_deficit_within(0),
            0,
            "the start in progress serves the waiter"
        );
        pool.spawn_lost();
        assert_eq!(pool.claim_deficit_within(0), 1, "a waiter is served anyway");
        assert_eq!(
            pool.claim_deficit_within(u32::MAX),
            3,
            "the rest of the target"
        );
        let (worker, _peer) = idle(7);
        pool.push(worker).expect("open");
        assert_eq!(taker.await.expect("taker"), Some(7));
    }

    #[tokio::test]
    async fn a_waiter_learns_why_starts_keep_failing_once_they_fail_past_the_limit() {
        let pool = Arc::new(Pool::with_failing_limit(1, Duration::from_millis(300)));
        let started = Instant::now();
        let taker = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.take(|_| {}).await.map(|w| w.pid) })
        };
        let failing = {
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    pool.start_failed(Instant::now(), "the engine does not answer".into());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let err = taker
            .await
            .expect("taker")
            .expect_err("starts keep failing");
        failing.abort();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(
            err.to_string().contains("the engine does not answer"),
            "{err}"
        );
        // A worker that joins ends the streak: the next taker gets it.
        let (worker, _peer) = idle(9);
        pool.push(worker).expect("open");
        assert_eq!(pool.take(|_| {}).await.expect("a worker").pid, 9);
    }

    #[tokio::test]
    async fn a_waiter_that_came_after_the_last_failed_attempt_waits_for_the_next() {
        let pool = Arc::new(Pool::with_failing_limit(1, Duration::from_millis(10)));
        let long_ago = Instant::now() - Duration::from_secs(60);
        pool.start_failed(long_ago, "the engine was down".into());
        pool.start_failed(Instant::now(), "the engine was down".into());
        let taker = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.take(|_| {}).await.map(|w| w.pid).ok() })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !taker.is_finished(),
            "failed on attempts made before it waited"
        );
        let (worker, _peer) = idle(4);
        pool.push(worker).expect("open");
        assert_eq!(taker.await.expect("taker"), Some(4));
    }

    #[tokio::test]
    async fn take_waits_for_a_worker_and_skips_dead_ones() {
        let pool = Arc::new(Pool::new(1));
        let (dead, peer) = idle(1);
        drop(peer);
        tokio::time::sleep(Duration::from_millis(10)).await;
        pool.push(dead).expect("open");
        let taker = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut discarded = Vec::new();
                let worker = pool.take(|w| discarded.push(w.pid)).await;
                (worker.map(|w| w.pid).ok(), discarded)
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(pool.claim_deficit(), 2, "target 1 plus one waiter");
        let (alive, _peer) = idle(2);
        pool.push(alive).expect("open");
        let (taken, discarded) = taker.await.expect("taker");
        assert_eq!(taken, Some(2));
        assert_eq!(discarded, vec![1]);
        assert_eq!(pool.lock().waiters, 0);
    }

    #[tokio::test]
    async fn close_fails_waiters_and_returns_idle_workers() {
        let pool = Arc::new(Pool::new(1));
        let taker = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.take(|_| {}).await.is_err() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(pool.close().is_empty());
        assert!(taker.await.expect("taker"));
        let (worker, _peer) = idle(3);
        assert!(pool.push(worker).is_err());
    }
}
