//! The end of a job: cancel its parts on the nodes (all at once, each bounded by the cancel
//! timeout), send END, record the outcome and leave the live table (a detached job stopped by
//! the coordinator's shutdown is left `running` in the store, to be resumed).

use std::time::Duration;

use agent_proto::{Frame, FrameKind, JobEnd, JobState};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use super::run::{JobRun, Outcome};
use super::streams::StreamState;
use crate::error::Error;
use crate::node_client::NodeCallError;

/// How long END may wait for a slow client.
const END_TIMEOUT: Duration = Duration::from_secs(5);

impl JobRun {
    /// Ends the job with `outcome`.
    pub(super) async fn finish(mut self, mut outcome: Outcome) {
        let job_id = self.spec.job_id.clone();
        // Final state first: whoever sees END and then asks for the job sees it ended.
        self.publish_counts();
        self.handle
            .set_state(outcome.state, outcome.message.clone());
        // A detached job with all its inputs stored that only the coordinator's shutdown
        // stopped stays `running` in the store: the next start resumes it.
        let suspended = outcome.state == JobState::Cancelled
            && self.state.shutdown.is_cancelled()
            && self.handle.keeper().is_some_and(|k| k.is_complete());
        // Counted before END too: a client that saw END sees the job in `/metrics`.
        if !suspended {
            self.state.metrics.job_finished(outcome.state);
        }
        let cancels = if outcome.state == JobState::Completed {
            JoinSet::new()
        } else {
            self.cancel_nodes()
        };
        if let Some(admission) = self.admission.take() {
            let err =
                outcome
                    .admission_error
                    .take()
                    .unwrap_or_else(|| Error::EndedBeforeAdmission {
                        job_id: job_id.clone(),
                        state: outcome.state,
                        message: outcome.message.clone().unwrap_or_default(),
                    });
            let _ = admission.send(Err(err));
        } else if let Some(tx) = self.client.sender() {
            let end = JobEnd {
                state: outcome.state,
                done: self.done,
                failed: self.failed,
                message: outcome.message.clone(),
            };
            let frame = Frame::json(FrameKind::End, &end);
            if tokio::time::timeout(END_TIMEOUT, tx.send(frame))
                .await
                .is_err()
            {
                warn!(job = %job_id, "client did not read END in time");
            }
        }
        self.client.disconnect();
        // Let the connection write END before the bookkeeping below runs on this thread.
        tokio::task::yield_now().await;
        cancels.join_all().await;
        let record = self.handle.record();
        info!(
            job = %job_id,
            state = %outcome.state,
            nodes = self.streams.len(),
            inputs = record.inputs,
            done = record.done,
            failed = record.failed,
            moved_in_tail = self.moved,
            message = outcome.message.as_deref().unwrap_or(""),
            "job ended"
        );
        let keeper = self.handle.keeper();
        if suspended {
            info!(job = %job_id, "detached job suspended by the shutdown; the next coordinator start on this database resumes it");
        } else {
            if let Some(keeper) = keeper {
                keeper.forget().await;
            }
            self.state.store.put(record).await;
        }
        self.state.jobs.remove(&self.handle);
        self.handle.mark_ended();
    }

    /// Stops every stream that may still run inputs and asks its node to cancel its part.
    fn cancel_nodes(&mut self) -> JoinSet<()> {
        let mut cancels = JoinSet::new();
        let timeout = self.state.config.node_cancel_timeout;
        for stream in &mut self.streams {
            if !stream.state.is_active() {
                continue;
            }
            // Dropping the connection alone cancels the part on the node (it is never
            // detached); the DELETE makes it explicit and bounded in time.
            stream.stop(StreamState::Ended);
            let client = self.state.nodes.clone();
            let (address, node_job_id, node) = (
                stream.address.clone(),
                stream.node_job_id.clone(),
                stream.node_id.clone(),
            );
            let job_id = self.spec.job_id.clone();
            let registry = self.state.registry.clone();
            cancels.spawn(async move {
                match client.cancel_job(&address, &node_job_id, timeout).await {
                    Ok(()) => {}
                    Err(NodeCallError::Connection(reason)) => {
                        registry.connection_failed(&node, &reason, Instant::now());
                    }
                    Err(err) => {
                        warn!(job = %job_id, node = %node, cause = %err, "cancel on node failed");
                    }
                }
            });
        }
        cancels
    }
}
