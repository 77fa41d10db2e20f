//! The tail of a job: once every input is handed out, nodes that run dry take queued work from
//! busy ones. The coordinator asks a busy node to give back queued inputs it has not started
//! (`POST /v1/jobs/{id}/release`); what comes back is moved, payload and all, to the streams
//! with idle instances. The in-flight table changes owner, so exactly-once still holds: a node
//! never runs what it gave back, and an answer from the old owner would be dropped as stale.
//!
//! Streams keep their inputs open while such a move may still be needed, and close (INPUTS_END)
//! once they are empty and no other stream holds queued work worth moving.

use tracing::{debug, warn};

use super::inflight::Slot;
use super::node_stream::{NodeEvent, NodeEventKind};
use super::run::{JobRun, Outcome};
use super::streams::NodeStream;

/// A stream holding more than this many inputs per instance (plus [`SLACK`]) has queued work
/// worth moving.
const BUSY_PER_INSTANCE: u64 = 2;

/// Inputs a busy stream may hold beyond [`BUSY_PER_INSTANCE`] per instance before moving any.
const SLACK: u64 = 4;

/// Most inputs asked back in one release.
const MAX_RELEASE: u64 = 65_536;

impl NodeStream {
    /// Whether it has idle instances (fewer inputs than instances) and can take more.
    fn is_dry(&self) -> bool {
        self.state.can_send_inputs() && !self.gave_back && (self.items as u64) < self.share
    }

    /// Inputs queued beyond what its instances run, if worth moving (and it was not found
    /// unable to give any back). A release under way still counts: its answer may move work.
    fn movable(&self) -> u64 {
        if !self.state.is_active() || self.release_exhausted {
            return 0;
        }
        let keep = BUSY_PER_INSTANCE * self.share + SLACK;
        (self.items as u64).saturating_sub(keep)
    }
}

impl JobRun {
    /// Whether every input was handed out: only then is there a tail to balance.
    fn in_tail(&self) -> bool {
        self.inputs_ended && self.pending.is_empty()
    }

    /// Whether some stream holds queued work that dry streams could take.
    pub(super) fn tail_unsettled(&self) -> bool {
        self.in_tail()
            && self.streams.iter().any(|s| s.is_dry())
            && self.streams.iter().any(|s| s.movable() > 0)
    }

    /// Asks the busiest stream to give back queued inputs for the dry ones (one request at a
    /// time per stream; the answer comes back as a node event).
    pub(super) fn rebalance(&mut self) {
        if !self.in_tail() {
            return;
        }
        let dry_instances: u64 = self
            .streams
            .iter()
            .filter(|s| s.is_dry())
            .map(|s| s.share.saturating_sub(s.items as u64))
            .sum();
        if dry_instances == 0 {
            return;
        }
        let Some((slot, movable)) = self
            .streams
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.releasing)
            .map(|(slot, s)| (slot, s.movable()))
            .filter(|(_, movable)| *movable > 0)
            .max_by_key(|(_, movable)| *movable)
        else {
            return;
        };
        // Share the busy stream's queue between it and the idle instances.
        let busy_share = self.streams[slot].share.max(1);
        let ask = (movable * dry_instances / (dry_instances + busy_share)).clamp(1, MAX_RELEASE);
        let stream = &mut self.streams[slot];
        stream.releasing = true;
        debug!(job = %self.spec.job_id, node = %stream.node_id, ask, dry_instances, "asking a busy node to give back queued inputs");
        let client = self.state.nodes.clone();
        let (address, node_job_id) = (stream.address.clone(), stream.node_job_id.clone());
        let timeout = self.state.config.node_cancel_timeout;
        let events = self.events_tx.clone();
        let job_id = self.spec.job_id.clone();
        tokio::spawn(async move {
            let indices = match client
                .release_inputs(
                    &address,
                    &node_job_id,
                    usize::try_from(ask).unwrap_or(usize::MAX),
                    timeout,
                )
                .await
            {
                Ok(indices) => indices,
                Err(err) => {
                    warn!(job = %job_id, cause = %err, "a node could not give back queued inputs");
                    Vec::new()
                }
            };
            let _ = events
                .send(NodeEvent {
                    slot,
                    kind: NodeEventKind::Released { indices },
                })
                .await;
        });
    }

    /// A node gave back queued inputs: they go to the streams with room (never back to it).
    pub(super) fn on_released(&mut self, slot: Slot, indices: Vec<u64>) -> Result<(), Outcome> {
        let Some(stream) = self.streams.get_mut(slot) else {
            return Ok(());
        };
        stream.releasing = false;
        if indices.is_empty() {
            stream.release_exhausted = true;
            return Ok(());
        }
        let taken = self.inflight.take_released(slot, &indices);
        let stream = &mut self.streams[slot];
        // It showed it is slower than the others: it gets no more inputs.
        stream.gave_back = true;
        for (_, bytes) in &taken {
            stream.release(*bytes);
        }
        debug!(job = %self.spec.job_id, node = %stream.node_id, moved = taken.len(), "queued inputs moved off a busy node");
        self.moved += taken.len() as u64;
        for (item, _) in taken.into_iter().rev() {
            self.pending.push_front(item);
        }
        self.status_dirty = true;
        self.flush_pending()
    }
}
