//! The daemon's jobs: live ones by id, the final status of recently ended ones (bounded), and
//! running totals of what ended (jobs by state, inputs done, failures by kind) for `/metrics`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use agent_proto::{FailureKind, JobState, JobStatus};
use thiserror::Error;

use super::Job;

/// Why a job cannot be registered.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RegistryError {
    /// A live or remembered job has this id.
    #[error("job {0} already exists; use a new job_id for every job")]
    Duplicate(String),
    /// The daemon runs as many jobs as it may.
    #[error("this node already runs {0} jobs, its limit; retry when one has finished")]
    TooMany(usize),
}

/// What jobs have yielded since the daemon started: ended jobs by final state, and inputs done
/// and failed (by kind) in ended and live jobs together, so the counts only grow.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Jobs ended completed.
    pub completed: u64,
    /// Jobs ended failed.
    pub failed: u64,
    /// Jobs ended cancelled.
    pub cancelled: u64,
    /// Inputs that yielded a result.
    pub inputs_done: u64,
    /// Inputs that yielded a failure, indexed like [`FailureKind::ALL`].
    pub failures_by_kind: [u64; FailureKind::ALL.len()],
}

impl Totals {
    /// Counts a job that ended in `state` (nothing for a state that is not an end).
    fn count_end(&mut self, state: JobState) {
        match state {
            JobState::Completed => self.completed += 1,
            JobState::Failed => self.failed += 1,
            JobState::Cancelled => self.cancelled += 1,
            JobState::Starting | JobState::Running => {}
        }
    }

    fn add_inputs(&mut self, done: u64, failures: &[u64; FailureKind::ALL.len()]) {
        self.inputs_done += done;
        for (total, n) in self.failures_by_kind.iter_mut().zip(failures) {
            *total += n;
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Totals of the ended jobs.
    finished: Totals,
    live: HashMap<String, Job>,
    ended: HashMap<String, JobStatus>,
    /// Ended job ids, oldest first (forgotten past `keep`).
    order: VecDeque<String>,
}

/// Live and ended jobs. A std `Mutex`: map operations only, never held across an await.
#[derive(Debug)]
pub struct Registry {
    state: Mutex<State>,
    max_live: usize,
    keep: usize,
}

impl Registry {
    /// A registry running at most `max_live` jobs and remembering `keep` ended ones.
    pub fn new(max_live: usize, keep: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_live,
            keep,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a live job unless its id is taken or the daemon is full.
    pub fn insert(&self, job: Job) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let id = job.id().to_string();
        if state.live.contains_key(&id) || state.ended.contains_key(&id) {
            return Err(RegistryError::Duplicate(id));
        }
        if state.live.len() >= self.max_live {
            return Err(RegistryError::TooMany(self.max_live));
        }
        state.live.insert(id, job);
        Ok(())
    }

    /// The live job with this id.
    pub fn get(&self, job_id: &str) -> Option<Job> {
        self.lock().live.get(job_id).cloned()
    }

    /// The status of a live or remembered job.
    pub fn status(&self, job_id: &str) -> Option<JobStatus> {
        let job = {
            let state = self.lock();
            if let Some(status) = state.ended.get(job_id) {
                return Some(status.clone());
            }
            state.live.get(job_id).cloned()
        };
        job.map(|job| job.status())
    }

    /// Every live and remembered job, live ones first.
    pub fn list(&self) -> Vec<JobStatus> {
        let (live, ended): (Vec<Job>, Vec<JobStatus>) = {
            let state = self.lock();
            (
                state.live.values().cloned().collect(),
                state
                    .order
                    .iter()
                    .rev()
                    .filter_map(|id| state.ended.get(id).cloned())
                    .collect(),
            )
        };
        live.iter().map(Job::status).chain(ended).collect()
    }

    /// Live jobs.
    pub fn live(&self) -> Vec<Job> {
        self.lock().live.values().cloned().collect()
    }

    /// How many jobs run.
    pub fn live_count(&self) -> usize {
        self.lock().live.len()
    }

    /// Totals of ended jobs plus the inputs of live ones, read under one lock so a job moving
    /// from live to ended is counted once. A live job whose state is already final (its END
    /// is sent; its instances are still winding down) counts as ended: a client that saw the
    /// END sees it in `/metrics` too.
    pub fn totals(&self) -> Totals {
        let state = self.lock();
        let mut totals = state.finished.clone();
        for job in state.live.values() {
            let status = job.status();
            totals.add_inputs(status.done, &job.failures_by_kind());
            totals.count_end(status.state);
        }
        totals
    }

    /// Moves an ended job to the remembered ones, forgetting the oldest past the bound.
    pub fn ended(&self, job: &Job) {
        let status = job.status();
        let failures = job.failures_by_kind();
        let mut state = self.lock();
        if state.live.remove(job.id()).is_some() {
            state.finished.count_end(status.state);
            state.finished.add_inputs(status.done, &failures);
        }
        state.ended.insert(status.job_id.clone(), status);
        state.order.push_back(job.id().to_string());
        while state.order.len() > self.keep {
            if let Some(old) = state.order.pop_front() {
                state.ended.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use agent_proto::{JobSpec, JobState};
    use bytes::Bytes;

    use super::*;

    fn job(id: &str) -> Job {
        Job::new(JobSpec::new(id), Bytes::new(), "n", 10, 1024)
    }

    #[test]
    fn duplicates_and_limits() {
        let registry = Registry::new(2, 1);
        registry.insert(job("a")).expect("first");
        assert_eq!(
            registry.insert(job("a")),
            Err(RegistryError::Duplicate("a".into()))
        );
        registry.insert(job("b")).expect("second");
        assert_eq!(registry.insert(job("c")), Err(RegistryError::TooMany(2)));
        let a = registry.get("a").expect("live");
        a.finish(JobState::Completed, None);
        registry.ended(&a);
        assert_eq!(registry.live_count(), 1);
        assert_eq!(
            registry.status("a").map(|s| s.state),
            Some(JobState::Completed)
        );
        assert_eq!(
            registry.insert(job("a")),
            Err(RegistryError::Duplicate("a".into()))
        );
        let b = registry.get("b").expect("live");
        b.finish(JobState::Cancelled, None);
        registry.ended(&b);
        assert!(registry.status("a").is_none(), "forgotten past keep=1");
        assert_eq!(registry.list().len(), 1);
    }

    #[test]
    fn totals_count_live_and_ended_jobs_once_and_only_grow() {
        let registry = Registry::new(4, 1);
        registry.insert(job("a")).expect("a");
        registry.insert(job("b")).expect("b");
        let a = registry.get("a").expect("live");
        let b = registry.get("b").expect("live");
        a.answered(5);
        a.failed(FailureKind::Oom);
        b.failed(FailureKind::Oom);
        b.failed(FailureKind::Exception);
        let live = registry.totals();
        assert_eq!(live.inputs_done, 5);
        assert_eq!(live.failures_by_kind[FailureKind::Oom as usize], 2);
        assert_eq!(live.completed + live.failed + live.cancelled, 0);
        a.finish(JobState::Completed, None);
        registry.ended(&a);
        registry.ended(&a); // a second report of the same end counts nothing
        b.finish(JobState::Failed, "input 1 raised".to_string());
        registry.ended(&b);
        let ended = registry.totals();
        assert_eq!((ended.completed, ended.failed, ended.cancelled), (1, 1, 0));
        assert_eq!(ended.inputs_done, 5);
        assert_eq!(ended.failures_by_kind[FailureKind::Oom as usize], 2);
        assert_eq!(ended.failures_by_kind[FailureKind::Exception as usize], 1);
        // Forgetting ended statuses past `keep` keeps their totals.
        assert!(registry.status("a").is_none());
        assert_eq!(registry.totals(), ended);
    }
}
