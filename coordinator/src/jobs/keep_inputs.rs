//! What a detached job keeps so a restarted coordinator can resume it: each INPUTS batch as it
//! is queued for the job task, and the mark that INPUTS_END arrived, within the store's result
//! budget (stored inputs count against it until the job ends).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use agent_proto::Frame;

use crate::store::{DetachedWrite, Store};

/// The keeper of one detached job's inputs.
#[derive(Debug)]
pub struct InputKeeper {
    store: Store,
    job_id: String,
    budget_bytes: u64,
    next_seq: AtomicU64,
    bytes: AtomicU64,
    complete: AtomicBool,
}

impl InputKeeper {
    /// A keeper for `job_id` that has stored nothing yet.
    pub fn new(store: Store, job_id: &str, budget_bytes: u64) -> Self {
        Self {
            store,
            job_id: job_id.to_owned(),
            budget_bytes,
            next_seq: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            complete: AtomicBool::new(false),
        }
    }

    /// A keeper for a resumed job whose `bytes` of inputs are all stored already.
    pub fn resumed(store: Store, job_id: &str, bytes: u64) -> Self {
        let keeper = Self::new(store, job_id, 0);
        keeper.bytes.store(bytes, Ordering::Release);
        keeper.complete.store(true, Ordering::Release);
        keeper
    }

    /// Stores one INPUTS frame; the sentence to fail the job with when it does not fit.
    pub async fn keep(&self, frame: &Frame) -> Result<(), String> {
        let len = frame.body.len() as u64;
        if !self.store.reserve_results(len) {
            return Err(format!(
                "the detached job {} and its results do not fit in the coordinator's store ({} bytes, --results-budget-bytes); raise it or send fewer inputs",
                self.job_id, self.budget_bytes
            ));
        }
        self.bytes.fetch_add(len, Ordering::AcqRel);
        let seq = self.next_seq.fetch_add(1, Ordering::AcqRel);
        self.store
            .put_detached(DetachedWrite::Inputs {
                job_id: self.job_id.clone(),
                seq,
                body: frame.body.clone(),
            })
            .await;
        Ok(())
    }

    /// INPUTS_END arrived: the job can be resumed from what is stored.
    pub async fn complete(&self) {
        self.complete.store(true, Ordering::Release);
        self.store
            .put_detached(DetachedWrite::InputsComplete(self.job_id.clone()))
            .await;
    }

    /// Whether every input is stored.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// The job ended: its stored inputs go and their bytes return to the budget.
    pub async fn forget(&self) {
        self.store
            .put_detached(DetachedWrite::Forget(self.job_id.clone()))
            .await;
        self.store
            .release_results(self.bytes.swap(0, Ordering::AcqRel));
    }
}
