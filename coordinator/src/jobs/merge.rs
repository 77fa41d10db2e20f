//! Node frames to the client: each answer counts only if its index is in flight on the stream
//! that sent it (so every index reaches the client exactly once); RESULTS frames are forwarded
//! unchanged unless something in them must be dropped; STATUS is aggregated over the nodes.

use agent_proto::batch::encode_items;
use agent_proto::{
    BatchView, Failure, FailureInfo, FailureKind, Frame, FrameKind, JobEnd, JobProgress, JobState,
    Output, NO_INDEX,
};
use tracing::{debug, warn};

use super::inflight::Slot;
use super::node_stream::{NodeEvent, NodeEventKind};
use super::run::{JobRun, Outcome};
use super::streams::{Loss, StreamState};

impl JobRun {
    /// Applies one event of a node stream.
    pub(super) async fn on_node_event(&mut self, event: NodeEvent) -> Result<(), Outcome> {
        let slot = event.slot;
        match event.kind {
            NodeEventKind::Accepted => {
                if let Some(stream) = self.streams.get_mut(slot) {
                    if stream.state == StreamState::Opening {
                        stream.state = StreamState::Open;
                    }
                }
                if let Some(admission) = self.admission.take() {
                    let _ = admission.send(Ok(()));
                    self.handle.set_state(JobState::Running, None);
                }
                self.status_dirty = true;
                Ok(())
            }
            NodeEventKind::Refused { status, body } => self.stream_refused(slot, status, body),
            NodeEventKind::Released { indices } => self.on_released(slot, indices),
            NodeEventKind::Broken { reason, loss } => self.stream_broken(slot, &reason, loss),
            NodeEventKind::Frame(frame) => {
                let active = self.streams.get(slot).is_some_and(|s| s.state.is_active());
                if !active {
                    debug!(job = %self.spec.job_id, slot, kind = %frame.kind, "frame from a stream already given up dropped");
                    return Ok(());
                }
                self.on_frame(slot, frame).await
            }
        }
    }

    async fn on_frame(&mut self, slot: Slot, frame: Frame) -> Result<(), Outcome> {
        match frame.kind {
            FrameKind::Results => self.on_results(slot, frame).await,
            FrameKind::Failure => self.on_failure(slot, frame).await,
            FrameKind::Output => self.on_output(slot, frame).await,
            FrameKind::Status => {
                match frame.parse_json::<JobProgress>() {
                    Ok(progress) => self.streams[slot].progress = progress,
                    Err(err) => {
                        warn!(job = %self.spec.job_id, slot, cause = %err, "node sent an unreadable STATUS")
                    }
                }
                self.status_dirty = true;
                Ok(())
            }
            FrameKind::End => self.on_end(slot, frame),
            other => self.stream_broken(
                slot,
                &format!("it sent a {other} frame in a result stream"),
                Loss::Protocol,
            ),
        }
    }

    async fn on_results(&mut self, slot: Slot, frame: Frame) -> Result<(), Outcome> {
        let batch = match BatchView::from_frame(&frame) {
            Ok(batch) => batch,
            Err(err) => return self.stream_broken(slot, &err.to_string(), Loss::Protocol),
        };
        // `keep` stays None while every item counts, so the common case forwards the frame as is.
        let mut keep: Option<Vec<bool>> = None;
        let mut accepted = 0u64;
        for (i, (index, _, _)) in batch.iter().enumerate() {
            match self.inflight.complete(index, slot) {
                Some(bytes) => {
                    self.streams[slot].release(bytes);
                    accepted += 1;
                    if let Some(keep) = &mut keep {
                        keep.push(true);
                    }
                }
                None => {
                    keep.get_or_insert_with(|| vec![true; i]).push(false);
                }
            }
        }
        if accepted == 0 {
            debug!(job = %self.spec.job_id, slot, items = batch.len(), "stale RESULTS dropped");
            return Ok(());
        }
        self.done += accepted;
        self.state.metrics.inputs_done(accepted);
        self.status_dirty = true;
        let frame = match keep {
            None => frame,
            Some(keep) => {
                let items: Vec<_> = batch
                    .items()
                    .zip(keep)
                    .filter_map(|(item, kept)| kept.then_some(item))
                    .collect();
                debug!(job = %self.spec.job_id, slot, kept = items.len(), "RESULTS trimmed of stale or duplicate answers");
                Frame::new(FrameKind::Results, encode_items(&items))
            }
        };
        self.forward(frame).await
    }

    async fn on_failure(&mut self, slot: Slot, frame: Frame) -> Result<(), Outcome> {
        let failure = match Failure::from_frame(&frame) {
            Ok(failure) => failure,
            Err(err) => return self.stream_broken(slot, &err.to_string(), Loss::Protocol),
        };
        if failure.index != NO_INDEX {
            let Some(bytes) = self.inflight.complete(failure.index, slot) else {
                debug!(job = %self.spec.job_id, slot, index = failure.index, "stale FAILURE dropped");
                return Ok(());
            };
            self.streams[slot].release(bytes);
            self.failed += 1;
            self.state.metrics.input_failed(failure.info.kind);
            self.status_dirty = true;
        }
        self.forward(frame).await?;
        let kind = failure.info.kind;
        if kind == FailureKind::FunctionLoad || (kind.stops_job() && self.spec.stop_on_exception) {
            return Err(Outcome::failed(failure.info.message));
        }
        Ok(())
    }

    async fn on_output(&mut self, slot: Slot, frame: Frame) -> Result<(), Outcome> {
        let output = match Output::from_frame(&frame) {
            Ok(output) => output,
            Err(err) => {
                warn!(job = %self.spec.job_id, slot, cause = %err, "node sent an unreadable OUTPUT; dropped");
                return Ok(());
            }
        };
        if output.index != NO_INDEX && self.inflight.owner(output.index) != Some(slot) {
            return Ok(());
        }
        let at_ms = crate::store::now_ms();
        if let Some(rows) = self.log.admit(&self.spec.job_id, &output, at_ms) {
            self.state.store.put_logs(rows).await;
        }
        self.forward(frame).await
    }

    fn on_end(&mut self, slot: Slot, frame: Frame) -> Result<(), Outcome> {
        let end: JobEnd = match frame.parse_json() {
            Ok(end) => end,
            Err(err) => return self.stream_broken(slot, &err.to_string(), Loss::Protocol),
        };
        let node = self.streams[slot].node_id.clone();
        match end.state {
            JobState::Completed => self.stream_ended(slot),
            JobState::Failed => Err(Outcome::failed(
                end.message
                    .unwrap_or_else(|| format!("node {node} failed the job")),
            )),
            JobState::Cancelled => {
                Err(Outcome::cancelled(end.message.unwrap_or_else(|| {
                    format!("node {node} cancelled the job")
                })))
            }
            JobState::Starting | JobState::Running => self.stream_broken(
                slot,
                &format!("it ended its stream in state {}", end.state),
                Loss::Protocol,
            ),
        }
    }

    /// Sends a frame to the client; a non-detached job ends when the client is gone. A detached
    /// job also stores its RESULTS and FAILURE frames, to be fetched later.
    pub(super) async fn forward(&mut self, frame: Frame) -> Result<(), Outcome> {
        if self.spec.detach && matches!(frame.kind, FrameKind::Results | FrameKind::Failure) {
            self.keep(&frame).await?;
        }
        let Some(tx) = self.client.sender() else {
            return Ok(());
        };
        let handle = std::sync::Arc::clone(&self.handle);
        let delivered = tokio::select! {
            biased;
            sent = tx.send(frame) => sent.is_ok(),
            // Cancelled while the client is slow: the loop sees the cancel next.
            _ = handle.cancelled() => true,
        };
        if delivered {
            Ok(())
        } else {
            self.client_gone()
        }
    }

    /// Stores a result frame of a detached job, within the coordinator's result budget.
    async fn keep(&mut self, frame: &Frame) -> Result<(), Outcome> {
        let store = &self.state.store;
        if !store.reserve_results(frame.body.len() as u64) {
            let err = crate::error::Error::ResultBudget {
                job_id: self.spec.job_id.clone(),
                budget: self.state.config.results_budget_bytes,
            };
            return Err(Outcome::failed(err.to_string()));
        }
        let rows = crate::store::ResultRows {
            job_id: self.spec.job_id.clone(),
            first_seq: self.stored_frames,
            frames: vec![frame.clone()],
        };
        self.stored_frames += 1;
        store.put_results(rows).await;
        Ok(())
    }

    fn client_gone(&mut self) -> Result<(), Outcome> {
        self.client.disconnect();
        if self.spec.detach {
            Ok(())
        } else {
            Err(Outcome::cancelled("the client disconnected"))
        }
    }

    /// Sends the aggregated STATUS.
    pub(super) async fn send_status(&mut self) -> Result<(), Outcome> {
        self.status_dirty = false;
        self.publish_counts();
        let mut progress = JobProgress {
            queued: self.pending.len() as u64,
            done: self.done,
            failed: self.failed,
            ..JobProgress::default()
        };
        for stream in self.streams.iter().filter(|s| s.state.is_active()) {
            progress.queued += stream.progress.queued;
            progress.running += stream.progress.running;
            progress.instances += stream.progress.instances;
            if stream.state != StreamState::Opening {
                progress.nodes += 1;
            }
        }
        self.forward(Frame::json(FrameKind::Status, &progress))
            .await
    }

    /// No node came back for the held inputs: each fails `lost`, then the job fails.
    pub(super) async fn give_up(&mut self) -> Outcome {
        let waited = self.state.config.redispatch_wait.as_secs();
        let mut lost: Vec<u64> = self.pending.drain(..).map(|item| item.index).collect();
        lost.extend(self.inflight.take_all().into_iter().map(|item| item.index));
        warn!(job = %self.spec.job_id, lost = lost.len(), "no node came back for the job's inputs");
        for index in lost {
            let info = FailureInfo::new(
                FailureKind::Lost,
                format!("input {index} was lost: the nodes that could run it died and none came back within {waited} s; restart a node or add one and run it again"),
            );
            self.failed += 1;
            self.state.metrics.input_failed(FailureKind::Lost);
            if let Err(outcome) = self.forward(Failure::new(index, info).to_frame()).await {
                return outcome;
            }
        }
        Outcome::failed(format!(
            "the job's nodes died and no node could take its inputs within {waited} s; restart a node or add one and submit the job again"
        ))
    }
}
