//! The live jobs table and each running job's handle: how requests other than the submission
//! (more inputs, cancel, status) reach a job task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use agent_proto::{JobSpec, JobState};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::ClientInput;
use crate::error::Error;
use crate::store::JobRecord;

/// Client input frames queued for a job task before senders wait (backpressure to the client).
pub const INPUT_QUEUE: usize = 16;

/// Lifecycle as status requests see it.
#[derive(Debug, Clone)]
struct StateNow {
    state: JobState,
    message: Option<String>,
    finished_at_ms: Option<u64>,
}

/// Counters the job task updates and status requests read.
#[derive(Debug)]
struct Live {
    created_at_ms: u64,
    func_cpu: u32,
    func_ram_gb: u32,
    inputs: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    /// std Mutex: state changes a few times per job and nothing awaits under it.
    state: Mutex<StateNow>,
}

/// A running job as the rest of the coordinator sees it.
#[derive(Debug)]
pub struct JobHandle {
    /// The client's job id.
    pub job_id: String,
    /// Whether the job outlives its client's connection.
    pub detach: bool,
    inputs: mpsc::Sender<ClientInput>,
    inputs_closed: AtomicBool,
    /// Input bodies being read (the submission's rest and `/inputs` requests): INPUTS_END
    /// from one is queued only after the others, so no batch lands behind the end.
    feeders: AtomicUsize,
    /// Wakes an INPUTS_END waiting for the other bodies.
    feeder_done: Notify,
    cancel: CancellationToken,
    cancel_reason: OnceLock<String>,
    ended: CancellationToken,
    live: Live,
    /// Nodes the job has an active stream on (for `GET /v1/nodes`). std Mutex: replaced
    /// whole when streams change, never held across an await.
    nodes: Mutex<Vec<String>>,
    /// A detached job's stored inputs (set once, at admission or resumption).
    keeper: OnceLock<super::keep_inputs::InputKeeper>,
}

impl JobHandle {
    /// A handle for `spec` and the receiving end of its input queue.
    pub fn new(spec: &JobSpec, created_at_ms: u64) -> (Arc<Self>, mpsc::Receiver<ClientInput>) {
        let (inputs, rx) = mpsc::channel(INPUT_QUEUE);
        let handle = Arc::new(Self {
            job_id: spec.job_id.clone(),
            detach: spec.detach,
            inputs,
            inputs_closed: AtomicBool::new(false),
            feeders: AtomicUsize::new(0),
            feeder_done: Notify::new(),
            cancel: CancellationToken::new(),
            cancel_reason: OnceLock::new(),
            ended: CancellationToken::new(),
            nodes: Mutex::new(Vec::new()),
            keeper: OnceLock::new(),
            live: Live {
                created_at_ms,
                func_cpu: spec.func_cpu,
                func_ram_gb: spec.func_ram_gb,
                inputs: AtomicU64::new(0),
                done: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                state: Mutex::new(StateNow {
                    state: JobState::Starting,
                    message: None,
                    finished_at_ms: None,
                }),
            },
        });
        (handle, rx)
    }

    fn state_lock(&self) -> MutexGuard<'_, StateNow> {
        // Each critical section is a single assignment or copy, so a poisoned lock is usable.
        self.live
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `keeper` keep this (detached) job's inputs; only the first call counts.
    pub fn keep_inputs(&self, keeper: super::keep_inputs::InputKeeper) {
        let _ = self.keeper.set(keeper);
    }

    /// The keeper of a detached job's inputs.
    pub fn keeper(&self) -> Option<&super::keep_inputs::InputKeeper> {
        self.keeper.get()
    }

    /// Asks the job to stop; the first reason given wins.
    pub fn cancel(&self, reason: &str) {
        let _ = self.cancel_reason.set(reason.to_owned());
        self.cancel.cancel();
    }

    /// Resolves once cancellation was asked for.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Why the job was cancelled.
    pub fn cancel_reason(&self) -> String {
        self.cancel_reason
            .get()
            .cloned()
            .unwrap_or_else(|| "the job was cancelled".to_owned())
    }

    /// Resolves once the job task has finished (END sent, nodes cancelled, record queued).
    pub fn ended(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.ended.cancelled()
    }

    /// Whether the job task has finished.
    pub fn is_ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Called by the job task when it is done.
    pub(crate) fn mark_ended(&self) {
        self.ended.cancel();
    }

    /// The sender of the job's input queue.
    pub fn inputs(&self) -> &mpsc::Sender<ClientInput> {
        &self.inputs
    }

    /// Marks INPUTS_END received; false if it already was.
    pub fn close_inputs(&self) -> bool {
        // SeqCst here and in `feeding` / `inputs_closed` / `other_feeders_done`: a body that
        // registers while INPUTS_END closes must either see the close or be waited for.
        !self.inputs_closed.swap(true, Ordering::SeqCst)
    }

    /// An input body starts being read; INPUTS_END waits for its guard to drop.
    pub fn feeding(self: &Arc<Self>) -> FeederGuard {
        self.feeders.fetch_add(1, Ordering::SeqCst);
        FeederGuard(self.clone())
    }

    /// Waits until no input body but the caller's own is being read (or the job ends).
    pub async fn other_feeders_done(&self) {
        loop {
            let done = self.feeder_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.feeders.load(Ordering::SeqCst) <= 1 || self.ended.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = done => {}
                _ = self.ended.cancelled() => return,
            }
        }
    }

    /// Whether INPUTS_END was received.
    pub fn inputs_closed(&self) -> bool {
        self.inputs_closed.load(Ordering::SeqCst)
    }

    /// Updates the counters status requests see.
    pub(crate) fn set_counts(&self, inputs: u64, done: u64, failed: u64) {
        self.live.inputs.store(inputs, Ordering::Relaxed);
        self.live.done.store(done, Ordering::Relaxed);
        self.live.failed.store(failed, Ordering::Relaxed);
    }

    /// Moves the job to `state`; a final state stamps the end time.
    pub(crate) fn set_state(&self, state: JobState, message: Option<String>) {
        let finished_at_ms = state.is_terminal().then(crate::store::now_ms);
        *self.state_lock() = StateNow {
            state,
            message,
            finished_at_ms,
        };
    }

    /// Records the nodes the job runs on now.
    pub(crate) fn set_nodes(&self, nodes: Vec<String>) {
        *self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = nodes;
    }

    /// The nodes the job runs on now.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The job's current state.
    pub fn state(&self) -> JobState {
        self.state_lock().state
    }

    /// The record as of now.
    pub fn record(&self) -> JobRecord {
        let StateNow {
            state,
            message,
            finished_at_ms,
        } = self.state_lock().clone();
        JobRecord {
            job_id: self.job_id.clone(),
            state,
            created_at_ms: self.live.created_at_ms,
            finished_at_ms,
            inputs: self.live.inputs.load(Ordering::Relaxed),
            done: self.live.done.load(Ordering::Relaxed),
            failed: self.live.failed.load(Ordering::Relaxed),
            func_cpu: self.live.func_cpu,
            func_ram_gb: self.live.func_ram_gb,
            message,
            stored_results: self.detach,
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// std Mutex: lookups and inserts only, never held across an await.
    map: Mutex<HashMap<String, Arc<JobHandle>>>,
    max_jobs: usize,
}

/// Cheap cloneable handle to the table of running jobs.
#[derive(Debug, Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl Jobs {
    /// An empty table admitting at most `max_jobs` running jobs.
    pub fn new(max_jobs: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                map: Mutex::new(HashMap::new()),
                max_jobs,
            }),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<JobHandle>>> {
        // Single insert/remove/lookup per critical section: a poisoned lock is still consistent.
        self.inner
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a job with this id is running.
    pub fn contains(&self, job_id: &str) -> bool {
        self.map().contains_key(job_id)
    }

    /// Adds a running job; refuses a duplicate id or one job too many.
    pub fn insert(&self, handle: Arc<JobHandle>) -> Result<(), Error> {
        let mut map = self.map();
        if map.contains_key(&handle.job_id) {
            return Err(Error::JobExists(handle.job_id.clone()));
        }
        if map.len() >= self.inner.max_jobs {
            return Err(Error::TooMany(format!(
                "the coordinator already runs {} jobs, its limit; wait for some to finish",
                map.len()
            )));
        }
        map.insert(handle.job_id.clone(), handle);
        Ok(())
    }

    /// The running job `job_id`.
    pub fn get(&self, job_id: &str) -> Option<Arc<JobHandle>> {
        self.map().get(job_id).cloned()
    }

    /// Removes `handle` (and not a newer job that reused its id).
    pub fn remove(&self, handle: &Arc<JobHandle>) {
        let mut map = self.map();
        if map
            .get(&handle.job_id)
            .is_some_and(|current| Arc::ptr_eq(current, handle))
        {
            map.remove(&handle.job_id);
        }
    }

    /// Every running job.
    pub fn all(&self) -> Vec<Arc<JobHandle>> {
        self.map().values().cloned().collect()
    }

    /// Cancels every running job with `reason`.
    pub fn cancel_all(&self, reason: &str) {
        for handle in self.all() {
            handle.cancel(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_refuses_duplicates_and_limits() {
        let jobs = Jobs::new(2);
        let (a, _rx_a) = JobHandle::new(&JobSpec::new("a"), 1);
        let (a2, _rx_a2) = JobHandle::new(&JobSpec::new("a"), 2);
        let (b, _rx_b) = JobHandle::new(&JobSpec::new("b"), 3);
        let (c, _rx_c) = JobHandle::new(&JobSpec::new("c"), 4);
        jobs.insert(a.clone()).expect("new");
        assert!(matches!(jobs.insert(a2.clone()), Err(Error::JobExists(_))));
        jobs.insert(b).expect("new");
        assert!(matches!(jobs.insert(c), Err(Error::TooMany(_))));
        jobs.remove(&a2);
        assert!(jobs.contains("a"), "only the same handle is removed");
        jobs.remove(&a);
        assert!(!jobs.contains("a"));
    }

    #[test]
    fn cancel_keeps_the_first_reason_and_records_snapshot_counts() {
        let (job, _rx) = JobHandle::new(&JobSpec::new("a"), 5);
        job.cancel("the client disconnected");
        job.cancel("the coordinator is shutting down");
        assert_eq!(job.cancel_reason(), "the client disconnected");
        job.set_counts(10, 7, 1);
        job.set_state(JobState::Cancelled, Some(job.cancel_reason()));
        let record = job.record();
        assert_eq!(
            (record.inputs, record.done, record.failed, record.state),
            (10, 7, 1, JobState::Cancelled)
        );
        assert!(record.finished_at_ms.is_some());
        assert!(job.close_inputs());
        assert!(!job.close_inputs());
    }

    #[tokio::test]
    async fn inputs_end_waits_for_the_other_input_bodies() {
        let (job, _rx) = JobHandle::new(&JobSpec::new("f"), 6);
        let submission_body = job.feeding();
        let inputs_body = job.feeding();
        let waiter = {
            let job = job.clone();
            tokio::spawn(async move { job.other_feeders_done().await })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "the submission body is still being read"
        );
        drop(submission_body);
        waiter.await.expect("waiter");
        drop(inputs_body);
        job.other_feeders_done().await;
    }
}

/// Marks one input body of a job as being read, until dropped.
#[derive(Debug)]
pub struct FeederGuard(Arc<JobHandle>);

impl Drop for FeederGuard {
    fn drop(&mut self) {
        self.0.feeders.fetch_sub(1, Ordering::AcqRel);
        self.0.feeder_done.notify_waiters();
    }
}
