//! Jobs: a [`Job`] is a cheap, cloneable handle on one job's spec, function, input queue,
//! counters and lifecycle. Its supervisor task starts instances and ends the result stream;
//! each instance task drives one worker at a time over the queue.

pub mod admit;
pub mod chunk;
pub mod death;
pub mod feed;
pub mod instance;
pub mod progress;
pub mod queue;
pub mod registry;
pub mod sink;
pub mod sizing;
pub mod supervisor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use agent_proto::{FailureKind, JobEnd, JobProgress, JobSpec, JobState, JobStatus};
use bytes::Bytes;
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::queue::InputQueue;

/// Workers of one job that may die between inputs (nothing to blame) before the job fails:
/// guards against a loop of replacements that all die the same way.
const MAX_UNATTRIBUTED_DEATHS: u32 = 10;

/// A request the job's current state does not allow.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JobError {
    /// The job has ended.
    #[error("job {job_id} has ended ({state}); it takes no more inputs")]
    Ended {
        /// The job.
        job_id: String,
        /// Its final state.
        state: JobState,
    },
    /// INPUTS_END was already received.
    #[error("job {job_id} already received INPUTS_END; send all inputs before INPUTS_END")]
    InputsEnded {
        /// The job.
        job_id: String,
    },
}

/// How instances leave when the job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Completed: workers get SHUTDOWN and exit by themselves.
    Shutdown,
    /// Failed or cancelled: workers are SIGKILLed at once.
    Kill,
}

#[derive(Debug)]
struct Counters {
    state: JobState,
    /// Why the job ended, once decided.
    message: Option<String>,
    inputs_ended: bool,
    /// Input bodies still being read (the first request's and any `/inputs` ones): INPUTS_END
    /// in one of them must not complete the job while another still has inputs to queue.
    feeders: u32,
    done: u64,
    failed: u64,
    /// Failures by kind, indexed like [`FailureKind::ALL`].
    failures_by_kind: [u64; FailureKind::ALL.len()],
    instances: u64,
    /// Runs of inputs that were retried (absent: 1).
    attempts: HashMap<u64, u32>,
    unattributed_deaths: u32,
}

#[derive(Debug)]
struct JobInner {
    spec: JobSpec,
    function: Bytes,
    node_id: String,
    queue: InputQueue,
    /// Cancelled when the job's end is decided: instances stop, the supervisor drains.
    stop: CancellationToken,
    /// Wakes the supervisor: progress, inputs, instance changes.
    changed: Notify,
    /// A std `Mutex`: counter updates only, never held across an await.
    counters: Mutex<Counters>,
}

/// Handle on one job; clones share it.
#[derive(Debug, Clone)]
pub struct Job(Arc<JobInner>);

impl Job {
    /// A job in state `starting` with an empty queue bounded by `queue_items`/`queue_bytes`.
    pub fn new(
        spec: JobSpec,
        function: Bytes,
        node_id: impl Into<String>,
        queue_items: usize,
        queue_bytes: usize,
    ) -> Self {
        Self(Arc::new(JobInner {
            spec,
            function,
            node_id: node_id.into(),
            queue: InputQueue::new(queue_items, queue_bytes),
            stop: CancellationToken::new(),
            changed: Notify::new(),
            counters: Mutex::new(Counters {
                state: JobState::Starting,
                message: None,
                inputs_ended: false,
                feeders: 0,
                done: 0,
                failed: 0,
                failures_by_kind: [0; FailureKind::ALL.len()],
                instances: 0,
                attempts: HashMap::new(),
                unattributed_deaths: 0,
            }),
        }))
    }

    fn counters(&self) -> MutexGuard<'_, Counters> {
        self.0.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.0.spec.job_id
    }

    /// What the client asked for.
    pub fn spec(&self) -> &JobSpec {
        &self.0.spec
    }

    /// The cloudpickled function (opaque).
    pub fn function(&self) -> &Bytes {
        &self.0.function
    }

    /// The node running it (stamped into failures).
    pub fn node_id(&self) -> &str {
        &self.0.node_id
    }

    /// Its input queue.
    pub fn queue(&self) -> &InputQueue {
        &self.0.queue
    }

    /// Cancelled once the job's end is decided.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.0.stop
    }

    /// Resolves when something the supervisor cares about changed (a permit is kept if
    /// nobody waits, so no change is missed).
    pub async fn changed(&self) {
        self.0.changed.notified().await;
    }

    fn notify(&self) {
        self.0.changed.notify_one();
    }

    /// Current lifecycle state.
    pub fn state(&self) -> JobState {
        self.counters().state
    }

    /// The status report of `GET /v1/jobs/{id}`.
    pub fn status(&self) -> JobStatus {
        let queued = self.0.queue.len() as u64;
        let running = self.0.queue.running();
        let c = self.counters();
        JobStatus {
            job_id: self.id().to_string(),
            state: c.state,
            queued,
            running,
            done: c.done,
            failed: c.failed,
            instances: c.instances,
        }
    }

    /// The periodic STATUS frame's body.
    pub fn progress(&self) -> JobProgress {
        let status = self.status();
        JobProgress {
            queued: status.queued,
            running: status.running,
            done: status.done,
            failed: status.failed,
            instances: status.instances,
            nodes: 1,
        }
    }

    /// The END frame's body.
    pub fn end(&self) -> JobEnd {
        let c = self.counters();
        JobEnd {
            state: c.state,
            done: c.done,
            failed: c.failed,
            message: c.message.clone(),
        }
    }

    /// Fails unless the job is in a state that takes inputs (inputs of a body that was open
    /// before INPUTS_END still belong to the job; see [`FeederGuard::check_accepts`]).
    pub fn check_running(&self) -> Result<(), JobError> {
        let state = self.counters().state;
        if !state.can_accept_inputs() {
            return Err(JobError::Ended {
                job_id: self.id().to_string(),
                state,
            });
        }
        Ok(())
    }

    /// Fails unless the job still takes inputs.
    pub fn check_accepts_inputs(&self) -> Result<(), JobError> {
        let c = self.counters();
        if !c.state.can_accept_inputs() {
            return Err(JobError::Ended {
                job_id: self.id().to_string(),
                state: c.state,
            });
        }
        if c.inputs_ended {
            return Err(JobError::InputsEnded {
                job_id: self.id().to_string(),
            });
        }
        Ok(())
    }

    /// Records INPUTS_END.
    pub fn end_inputs(&self) -> Result<(), JobError> {
        self.check_accepts_inputs()?;
        self.counters().inputs_ended = true;
        self.notify();
        Ok(())
    }

    /// An input body starts being read; the job cannot complete until the guard drops. A
    /// body opened after INPUTS_END is refused by its guard.
    pub fn feeding(&self) -> FeederGuard {
        let late = {
            let mut c = self.counters();
            c.feeders += 1;
            c.inputs_ended
        };
        FeederGuard {
            job: self.clone(),
            late,
        }
    }

    /// Inputs were queued (the supervisor may start instances).
    pub fn inputs_queued(&self) {
        self.notify();
    }

    /// An instance loaded the function: `starting` becomes `running`.
    pub fn instance_ready(&self) {
        let mut c = self.counters();
        if c.state == JobState::Starting {
            c.state = JobState::Running;
        }
    }

    /// The supervisor's count of live instances.
    pub fn set_instances(&self, instances: u64) {
        self.counters().instances = instances;
    }

    /// `results` items yielded a result.
    pub fn answered(&self, results: u64) {
        self.0.queue.answered(results);
        self.counters().done += results;
        self.notify();
    }

    /// One item yielded a failure of `kind`.
    pub fn failed(&self, kind: FailureKind) {
        self.0.queue.answered(1);
        {
            let mut c = self.counters();
            c.failed += 1;
            c.failures_by_kind[kind as usize] += 1;
        }
        self.notify();
    }

    /// Failures so far by kind, indexed like [`FailureKind::ALL`].
    pub fn failures_by_kind(&self) -> [u64; FailureKind::ALL.len()] {
        self.counters().failures_by_kind
    }

    /// Whether every input has been answered and no more will come.
    pub fn is_complete(&self) -> bool {
        let c = self.counters();
        c.inputs_ended && c.feeders == 0 && self.0.queue.is_idle()
    }

    /// Instances the job could use now: its cap (parallelism, expected inputs), limited to its
    /// backlog, except that a job announcing its input count starts its instances before the
    /// inputs arrive (their function loads while the client sends).
    pub fn wanted_instances(&self) -> u64 {
        let cap = self.0.spec.instance_cap();
        let c = self.counters();
        if !c.state.can_accept_inputs() {
            return 0;
        }
        if !c.inputs_ended && self.0.spec.expected_inputs.is_some() {
            return cap;
        }
        drop(c);
        cap.min(self.0.queue.len() as u64 + self.0.queue.running())
    }

    /// Whether more inputs are queued than the job has instances (so one instance taking a
    /// second chunk leaves every other one something to do).
    pub fn has_spare_work(&self) -> bool {
        let instances = self.counters().instances;
        self.0.queue.len() as u64 > instances
    }

    /// The most items a chunk may take now so that every instance of the job keeps a share:
    /// a fair part of what is queued (`ChunkSizer::next_size_within`).
    pub fn chunk_share(&self) -> usize {
        let instances = usize::try_from(self.counters().instances).unwrap_or(usize::MAX);
        sizing::fair_share(self.0.queue.len(), instances)
    }

    /// How many times input `index` has run (1 unless retried).
    pub fn attempts(&self, index: u64) -> u32 {
        self.counters().attempts.get(&index).copied().unwrap_or(1)
    }

    /// Whether input `index`, whose instance died, may run again; counts the new attempt.
    pub fn retry(&self, index: u64) -> bool {
        let retries = self.0.spec.retries;
        let mut c = self.counters();
        let attempts = c.attempts.entry(index).or_insert(1);
        if *attempts <= retries {
            *attempts += 1;
            true
        } else {
            false
        }
    }

    /// A worker died between inputs; fails the job if that keeps happening.
    pub fn unattributed_death(&self) {
        let deaths = {
            let mut c = self.counters();
            c.unattributed_deaths += 1;
            c.unattributed_deaths
        };
        if deaths >= MAX_UNATTRIBUTED_DEATHS {
            self.finish(
                JobState::Failed,
                format!("workers of this job died {deaths} times between inputs; check the function for code that kills its process outside the per-input call"),
            );
        }
    }

    /// Decides the job's end (the first decision wins; returns whether this one did): sets
    /// the state, closes the queue and stops the instances.
    pub fn finish(&self, state: JobState, message: impl Into<Option<String>>) -> bool {
        {
            let mut c = self.counters();
            if !c.state.can_cancel() || !state.is_terminal() {
                return false;
            }
            c.state = state;
            c.message = message.into();
        }
        self.0.stop.cancel();
        self.0.queue.close();
        self.notify();
        true
    }

    /// How instances leave now that the job ends.
    pub fn stop_mode(&self) -> StopMode {
        match self.state() {
            JobState::Completed => StopMode::Shutdown,
            _ => StopMode::Kill,
        }
    }
}

/// Marks one input body of a job as being read; dropping it (body read, refused or cut)
/// lets the job complete once its inputs have ended and been answered.
#[derive(Debug)]
pub struct FeederGuard {
    job: Job,
    /// Opened after INPUTS_END: nothing it carries belongs to the job.
    late: bool,
}

impl FeederGuard {
    /// The job this body feeds.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// Fails unless this body may still queue inputs: the job takes inputs and the body was
    /// opened before INPUTS_END. A body already open when another body sent INPUTS_END keeps
    /// feeding — INPUTS_END means "nothing after what the open bodies carry".
    pub fn check_accepts(&self) -> Result<(), JobError> {
        if self.late {
            return self.job.check_accepts_inputs();
        }
        self.job.check_running()
    }
}

impl Drop for FeederGuard {
    fn drop(&mut self) {
        {
            let mut c = self.job.counters();
            c.feeders = c.feeders.saturating_sub(1);
        }
        self.job.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(f: impl FnOnce(&mut JobSpec)) -> Job {
        let mut spec = JobSpec::new("j1");
        f(&mut spec);
        Job::new(spec, Bytes::from_static(b"fn"), "node", 100, 1 << 20)
    }

    #[test]
    fn lifecycle_guards() {
        let job = job(|_| {});
        assert_eq!(job.state(), JobState::Starting);
        job.instance_ready();
        assert_eq!(job.state(), JobState::Running);
        job.end_inputs().expect("first INPUTS_END");
        assert_eq!(
            job.end_inputs(),
            Err(JobError::InputsEnded {
                job_id: "j1".into()
            })
        );
        assert!(job.finish(JobState::Cancelled, Some("bye".to_string())));
        assert!(!job.finish(JobState::Failed, None), "first decision wins");
        assert!(job.stop_token().is_cancelled());
        assert_eq!(job.stop_mode(), StopMode::Kill);
        let err = job.check_accepts_inputs().expect_err("ended");
        assert_eq!(
            err.to_string(),
            "job j1 has ended (cancelled); it takes no more inputs"
        );
        assert_eq!(job.end().message.as_deref(), Some("bye"));
        assert!(!job.finish(JobState::Running, None));
    }

    fn queue_three(job: &Job) {
        let items = (0..3)
            .map(|i| agent_proto::Item::new(i, vec![0u8]))
            .collect();
        let segment =
            chunk::Segment::parse(agent_proto::ItemBatch::new(items).encode()).expect("valid");
        futures_util::FutureExt::now_or_never(job.queue().push(segment))
            .expect("room")
            .expect("open");
    }

    #[test]
    fn completion_needs_inputs_end_and_nothing_running() {
        let job = job(|_| {});
        assert!(!job.is_complete());
        queue_three(&job);
        assert_eq!(job.queue().pop(10).map(|c| c.len()), Some(3));
        job.end_inputs().expect("ok");
        assert!(!job.is_complete());
        job.answered(2);
        job.failed(FailureKind::Exception);
        assert!(job.is_complete());
        let end = job.end();
        assert_eq!((end.done, end.failed), (2, 1));
        assert!(job.finish(JobState::Completed, None));
        assert_eq!(job.stop_mode(), StopMode::Shutdown);
    }

    #[test]
    fn inputs_end_on_one_body_waits_for_the_others_to_be_read() {
        let job = job(|_| {});
        let first_body = job.feeding();
        let second_body = job.feeding();
        job.end_inputs().expect("ok");
        drop(second_body);
        assert!(
            !job.is_complete(),
            "the first body may still hold inputs not queued yet"
        );
        assert!(
            first_body.check_accepts().is_ok(),
            "a body open before INPUTS_END still feeds"
        );
        assert!(matches!(
            job.feeding().check_accepts(),
            Err(JobError::InputsEnded { .. })
        ));
        drop(first_body);
        assert!(job.is_complete());
    }

    #[test]
    fn retries_are_counted_per_input() {
        let job = job(|s| s.retries = 2);
        assert_eq!(job.attempts(5), 1);
        assert!(job.retry(5));
        assert!(job.retry(5));
        assert!(!job.retry(5));
        assert_eq!(job.attempts(5), 3);
        assert_eq!(job.attempts(6), 1);
    }

    #[test]
    fn wanted_instances_follow_backlog_or_expected_count() {
        let known = job(|s| {
            s.expected_inputs = Some(3);
            s.parallelism = 2;
        });
        assert_eq!(known.wanted_instances(), 2, "started before inputs arrive");
        let unknown = job(|_| {});
        assert_eq!(unknown.wanted_instances(), 0);
        queue_three(&unknown);
        unknown.queue().pop(1);
        assert_eq!(unknown.wanted_instances(), 3, "queued plus running");
        unknown.finish(JobState::Cancelled, None);
        assert_eq!(unknown.wanted_instances(), 0);
    }

    #[test]
    fn repeated_unattributed_deaths_fail_the_job() {
        let job = job(|_| {});
        for _ in 0..MAX_UNATTRIBUTED_DEATHS {
            job.unattributed_death();
        }
        assert_eq!(job.state(), JobState::Failed);
    }
}
