//! The daemon's jobs: live ones by id, and the final status of recently ended ones (bounded).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use agent_proto::JobStatus;
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

#[derive(Debug, Default)]
struct State {
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

    /// Moves an ended job to the remembered ones, forgetting the oldest past the bound.
    pub fn ended(&self, job: &Job) {
        let status = job.status();
        let mut state = self.lock();
        state.live.remove(job.id());
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
}
