//! A job's node streams: their lifecycle and credit, opening one (at placement or to replace a
//! lost node), and what happens when one breaks, is refused or ends.

use agent_proto::{Frame, FrameKind, JobProgress};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::inflight::Slot;
use super::node_stream::{self, StreamIo};
use super::plan;
use super::run::{JobRun, Outcome};
use crate::error::Error;

/// Where a node stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Request sent; the node has not answered yet (inputs may already be on their way).
    Opening,
    /// The node accepted: results flow.
    Open,
    /// INPUTS_END sent: results still flow, no more inputs.
    InputsClosed,
    /// The node sent END.
    Ended,
    /// The node answered with an error before any frame.
    Refused,
    /// The connection broke, the node died or it broke the protocol.
    Broken,
}

/// How a stream was lost, which decides what the coordinator concludes about its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The connection failed or ended without END: the node is dead at once.
    Connection,
    /// The registry declared the node dead (missed heartbeats).
    Silent,
    /// The node broke the protocol: this job stops using it.
    Protocol,
}

impl StreamState {
    /// Whether inputs may be sent on it.
    pub fn can_send_inputs(self) -> bool {
        matches!(self, Self::Opening | Self::Open)
    }

    /// Whether it may still deliver answers.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Opening | Self::Open | Self::InputsClosed)
    }
}

/// The job task's view of one node stream.
#[derive(Debug)]
pub struct NodeStream {
    /// The node.
    pub node_id: String,
    /// Its base URL.
    pub address: String,
    /// The id the node knows this part of the job by.
    pub node_job_id: String,
    /// Instances the node runs for it.
    pub share: u64,
    /// Lifecycle.
    pub state: StreamState,
    body: Option<tokio::sync::mpsc::UnboundedSender<Frame>>,
    relay: Option<tokio::task::AbortHandle>,
    /// Inputs in flight on it.
    pub items: usize,
    /// Payload bytes in flight on it.
    pub bytes: usize,
    window_items: usize,
    window_bytes: usize,
    /// Latest STATUS it sent.
    pub progress: JobProgress,
    /// A request to give back queued inputs is under way.
    pub releasing: bool,
    /// Its node had nothing queued to give back: not asked again.
    pub release_exhausted: bool,
    /// It gave inputs back (it is slower than the others): it gets no more.
    pub gave_back: bool,
}

impl NodeStream {
    /// Whether it takes inputs at all (open, and not a node that gave inputs back).
    pub fn takes_inputs(&self) -> bool {
        self.state.can_send_inputs() && !self.gave_back
    }

    /// Inputs it may take now.
    pub fn credit(&self) -> usize {
        if !self.state.can_send_inputs() || self.gave_back || self.bytes >= self.window_bytes {
            return 0;
        }
        self.window_items.saturating_sub(self.items)
    }

    /// Whether `self` has relatively more room than `other`.
    pub fn roomier_than(&self, other: &NodeStream) -> bool {
        (self.credit() as u128) * (other.window_items as u128)
            > (other.credit() as u128) * (self.window_items as u128)
    }

    /// Queues a frame on its request body (never waits: credit bounds what is queued).
    pub fn send(&self, frame: Frame) {
        if let Some(body) = &self.body {
            let _ = body.send(frame);
        }
    }

    /// Counts inputs handed to it.
    pub fn hold(&mut self, items: usize, bytes: usize) {
        self.items += items;
        self.bytes += bytes;
    }

    /// Counts one input answered.
    pub fn release(&mut self, bytes: usize) {
        self.items = self.items.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Sends INPUTS_END and ends the request body.
    pub fn close_inputs(&mut self) {
        if self.state.can_send_inputs() {
            self.send(Frame::empty(FrameKind::InputsEnd));
            self.body = None;
            self.state = StreamState::InputsClosed;
        }
    }

    /// Ends the request body and moves to `state`, leaving the relay to finish reading.
    fn settle(&mut self, state: StreamState) {
        self.body = None;
        self.state = state;
    }

    /// Drops the connection: the relay stops and the request body ends.
    pub fn stop(&mut self, state: StreamState) {
        if let Some(relay) = self.relay.take() {
            relay.abort();
        }
        self.settle(state);
    }
}

impl JobRun {
    /// Opens a stream of `share` instances on a node and returns its slot.
    pub(super) fn open_stream(&mut self, node_id: &str, address: &str, share: u64) -> Slot {
        let slot = self.streams.len();
        let node_job_id = if self.resumes > 0 {
            // Resumed by a restarted coordinator: the nodes may remember the earlier runs.
            let prefix: String = self.spec.job_id.chars().take(48).collect();
            format!("{prefix}-x{}r{slot}", self.resumes)
        } else if self.streams.iter().any(|s| s.node_id == node_id) {
            // Same job on the same node again (it came back): a fresh id avoids a conflict
            // with what the node may remember of the first attempt.
            let prefix: String = self.spec.job_id.chars().take(56).collect();
            format!("{prefix}-r{slot}")
        } else {
            self.spec.job_id.clone()
        };
        let mut spec = self.spec.clone();
        spec.job_id.clone_from(&node_job_id);
        spec.parallelism = i64::try_from(share).unwrap_or(i64::MAX);
        // The coordinator holds the client's connection; a node's part never outlives the
        // coordinator's stream to it.
        spec.detach = false;
        let prelude = vec![
            Frame::json(FrameKind::Spec, &spec),
            Frame::new(FrameKind::Function, self.function.clone()),
        ];
        let StreamIo { body, relay } = node_stream::open(
            &self.state.nodes,
            slot,
            address,
            prelude,
            self.events_tx.clone(),
            self.state.config.max_frame_bytes,
        );
        // Logged once the request is on its way: the line's write is not on the job's path.
        info!(job = %self.spec.job_id, node = %node_id, share, "stream opened");
        let per_instance = self.state.config.window_items_per_instance;
        let share_usize = usize::try_from(share).unwrap_or(usize::MAX);
        debug!(job = %self.spec.job_id, node = %node_id, node_job = %node_job_id, share, "job placed on node");
        self.streams.push(NodeStream {
            node_id: node_id.to_owned(),
            address: address.to_owned(),
            node_job_id,
            share,
            state: StreamState::Opening,
            body: Some(body),
            relay: Some(relay),
            items: 0,
            bytes: 0,
            window_items: per_instance
                .saturating_mul(share_usize)
                .clamp(per_instance, 1 << 20),
            window_bytes: self.state.config.window_bytes,
            progress: JobProgress::default(),
            releasing: false,
            release_exhausted: false,
            gave_back: false,
        });
        self.publish_nodes();
        slot
    }

    /// Makes sure some stream can take inputs, opening one on a live node if needed; false when
    /// no node can (the job then waits for one).
    pub(super) fn ensure_stream(&mut self) -> bool {
        if self.streams.iter().any(|s| s.takes_inputs()) {
            self.waiting_since = None;
            return true;
        }
        let now = Instant::now();
        let live = self.state.registry.live(now);
        let digest = self.spec.environment.recipe_digest();
        let pick = live
            .iter()
            .filter(|node| !self.excluded.contains(&node.node_id))
            .filter(|node| plan::can_run(&node.info, &self.spec))
            .max_by_key(|node| {
                let busy = self
                    .streams
                    .iter()
                    .any(|s| s.node_id == node.node_id && s.state.is_active());
                let holds = plan::holds_environment(&node.info, digest.as_deref());
                (
                    !busy,
                    holds,
                    plan::free(&node.info, &self.spec),
                    node.info.cpus,
                )
            });
        let Some(node) = pick else {
            if self.waiting_since.is_none() {
                warn!(job = %self.spec.job_id, held = self.pending.len(), "no live node can take the job's inputs; waiting for one");
                self.waiting_since = Some(now);
            }
            return false;
        };
        let running: u64 = self
            .streams
            .iter()
            .filter(|s| s.state.is_active())
            .map(|s| s.share)
            .sum();
        let room = self.spec.instance_cap().saturating_sub(running).max(1);
        let offer = match plan::free(&node.info, &self.spec) {
            0 => plan::capacity(&node.info, &self.spec),
            free => free,
        };
        let (node_id, address) = (node.node_id.clone(), node.address.clone());
        self.open_stream(&node_id, &address, offer.min(room).max(1));
        self.waiting_since = None;
        true
    }

    /// Takes back what `slot` held, to the front of the re-dispatch queue.
    fn requeue(&mut self, slot: Slot) -> usize {
        let items = self.inflight.take_slot(slot);
        let count = items.len();
        if let Some(stream) = self.streams.get_mut(slot) {
            stream.items = 0;
            stream.bytes = 0;
            stream.progress = JobProgress::default();
        }
        for item in items.into_iter().rev() {
            self.pending.push_front(item);
        }
        self.status_dirty = true;
        self.publish_nodes();
        count
    }

    /// After a stream stopped taking inputs: re-dispatch what it held (opening a stream on
    /// another node if needed), or fail admission when no node is left to accept the job.
    fn after_loss(&mut self, admission_error: impl FnOnce(&Self) -> Error) -> Result<(), Outcome> {
        self.flush_pending()?;
        if self.admission.is_some() && !self.streams.iter().any(|s| s.state.is_active()) {
            return Err(Outcome::refused(admission_error(self)));
        }
        Ok(())
    }

    /// The node answered the job with an error.
    pub(super) fn stream_refused(
        &mut self,
        slot: Slot,
        status: u16,
        body: agent_proto::ErrorBody,
    ) -> Result<(), Outcome> {
        let Some(stream) = self.streams.get_mut(slot) else {
            return Ok(());
        };
        if !stream.state.is_active() {
            return Ok(());
        }
        stream.stop(StreamState::Refused);
        let node = stream.node_id.clone();
        warn!(job = %self.spec.job_id, node = %node, status, cause = %body.error.message, "node refused the job");
        self.excluded.insert(node.clone());
        if self.first_refusal.is_none() {
            self.first_refusal = Some(Error::NodeRefused { node, status, body });
        }
        self.requeue(slot);
        self.after_loss(|run| match &run.first_refusal {
            Some(Error::NodeRefused { node, status, body }) => Error::NodeRefused {
                node: node.clone(),
                status: *status,
                body: body.clone(),
            },
            _ => Error::NoNodeAccepted("every node refused it".to_owned()),
        })
    }

    /// The stream broke: its inputs go to other streams (or wait for a node).
    pub(super) fn stream_broken(
        &mut self,
        slot: Slot,
        reason: &str,
        loss: Loss,
    ) -> Result<(), Outcome> {
        let Some(stream) = self.streams.get_mut(slot) else {
            return Ok(());
        };
        if !stream.state.is_active() {
            return Ok(());
        }
        stream.stop(StreamState::Broken);
        let node = stream.node_id.clone();
        match loss {
            Loss::Connection => {
                self.state
                    .registry
                    .connection_failed(&node, reason, Instant::now());
            }
            Loss::Protocol => {
                self.excluded.insert(node.clone());
            }
            Loss::Silent => {}
        }
        let moved = self.requeue(slot);
        warn!(job = %self.spec.job_id, node = %node, cause = %reason, redispatched = moved, "node stream lost");
        self.last_loss = Some(format!("node {node}: {reason}"));
        self.after_loss(|run| {
            Error::NoNodeAccepted(run.last_loss.clone().unwrap_or_else(|| reason.to_owned()))
        })
    }

    /// The node sent END for its part.
    pub(super) fn stream_ended(&mut self, slot: Slot) -> Result<(), Outcome> {
        if let Some(stream) = self.streams.get_mut(slot) {
            stream.settle(StreamState::Ended);
        }
        let left = self.requeue(slot);
        if left > 0 {
            warn!(job = %self.spec.job_id, slot, left, "node ended its part with inputs unanswered; re-dispatching them");
        }
        self.after_loss(|_| Error::NoNodeAccepted("the node ended the job at once".to_owned()))
    }

    /// A node appeared, died, came back or started draining: drop streams to dead nodes, stop
    /// sending inputs to draining ones (they finish what they hold), and place waiting inputs
    /// if a node can take them now.
    pub(super) fn on_fleet_change(&mut self) -> Result<(), Outcome> {
        let now = Instant::now();
        for slot in 0..self.streams.len() {
            let stream = &self.streams[slot];
            if stream.state.is_active() && !self.state.registry.is_alive(&stream.node_id, now) {
                self.stream_broken(slot, "it stopped heartbeating", Loss::Silent)?;
            } else if stream.state.can_send_inputs()
                && self.state.registry.is_draining(&stream.node_id)
            {
                debug!(job = %self.spec.job_id, node = %stream.node_id, held = stream.items, "node drains: its stream takes no more inputs");
                self.streams[slot].close_inputs();
            }
        }
        self.publish_nodes();
        self.flush_pending()
    }

    /// Publishes the nodes with an active stream, for `GET /v1/nodes`.
    pub(super) fn publish_nodes(&self) {
        let mut nodes: Vec<String> = self
            .streams
            .iter()
            .filter(|s| s.state.is_active())
            .map(|s| s.node_id.clone())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        self.handle.set_nodes(nodes);
    }
}
