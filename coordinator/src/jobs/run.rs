//! The job task: one per running job, owning all of the job's mutable state (streams, in-flight
//! table, re-dispatch queue, counters) so nothing on the hot path takes a lock. It reacts to node
//! events, client inputs, fleet changes, cancellation and a status tick.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use agent_proto::{Frame, Item, JobSpec, JobState};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::inflight::InFlight;
use super::node_stream::NodeEvent;
use super::plan::Placement;
use super::streams::NodeStream;
use super::{ClientInput, JobHandle};
use crate::error::Error;
use crate::state::State;

/// Aggregated STATUS frames go to the client at most this often.
pub const STATUS_EVERY: Duration = Duration::from_millis(200);

/// How often the tail is checked for queued work to move to idle instances.
const REBALANCE_EVERY: Duration = Duration::from_millis(100);

/// Node events queued for the job task before relays wait (backpressure to the nodes).
const EVENT_QUEUE: usize = 256;

/// How a job ended.
#[derive(Debug)]
pub struct Outcome {
    /// Final state.
    pub state: JobState,
    /// Why it failed or was cancelled.
    pub message: Option<String>,
    /// The answer to the submission when the job ends before a node accepted it.
    pub admission_error: Option<Error>,
}

impl Outcome {
    /// Every input was answered.
    pub fn completed() -> Self {
        Self {
            state: JobState::Completed,
            message: None,
            admission_error: None,
        }
    }

    /// The job failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            state: JobState::Failed,
            message: Some(message.into()),
            admission_error: None,
        }
    }

    /// The job was cancelled.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self {
            state: JobState::Cancelled,
            message: Some(message.into()),
            admission_error: None,
        }
    }

    /// No node accepted the job; `err` answers the submission.
    pub fn refused(err: Error) -> Self {
        Self {
            state: JobState::Failed,
            message: Some(err.to_string()),
            admission_error: Some(err),
        }
    }
}

/// The client's result stream; `None` once the client went away.
#[derive(Debug)]
pub struct ClientSink {
    tx: Option<mpsc::Sender<Frame>>,
}

impl ClientSink {
    /// Whether the client still reads.
    pub fn connected(&self) -> bool {
        self.tx.is_some()
    }

    /// Resolves when the client stops reading.
    pub async fn closed(&self) {
        match &self.tx {
            Some(tx) => tx.closed().await,
            None => std::future::pending().await,
        }
    }

    /// Forgets the client (a detached job goes on without it).
    pub fn disconnect(&mut self) {
        self.tx = None;
    }

    /// The sender, while the client reads.
    pub fn sender(&self) -> Option<&mpsc::Sender<Frame>> {
        self.tx.as_ref()
    }
}

/// Everything a job task owns.
pub struct JobRun {
    pub(super) state: State,
    pub(super) spec: JobSpec,
    pub(super) function: Bytes,
    pub(super) handle: Arc<JobHandle>,
    pub(super) streams: Vec<NodeStream>,
    pub(super) inflight: InFlight,
    /// Inputs taken back from lost streams, waiting for a stream with credit.
    pub(super) pending: VecDeque<Item>,
    pub(super) inputs: mpsc::Receiver<ClientInput>,
    pub(super) inputs_ended: bool,
    pub(super) events_tx: mpsc::Sender<NodeEvent>,
    events: mpsc::Receiver<NodeEvent>,
    pub(super) client: ClientSink,
    /// Answers the submission once a node accepted (or none will).
    pub(super) admission: Option<oneshot::Sender<Result<(), Error>>>,
    pub(super) changes: watch::Receiver<u64>,
    /// Nodes this job stops using (they refused it or broke the protocol).
    pub(super) excluded: HashSet<String>,
    pub(super) first_refusal: Option<Error>,
    pub(super) last_loss: Option<String>,
    /// Since when inputs wait for a node to appear.
    pub(super) waiting_since: Option<Instant>,
    pub(super) received: u64,
    pub(super) done: u64,
    pub(super) failed: u64,
    pub(super) status_dirty: bool,
    /// Result frames of a detached job stored so far (the next one's sequence number).
    pub(super) stored_frames: u64,
    /// Inputs moved off busy nodes in the tail.
    pub(super) moved: u64,
    /// What the job keeps of its output in the store, for `fleetmap logs`.
    pub(super) log: crate::store::LogKeeper,
    /// Times a restarted coordinator resumed this (detached) job.
    pub(super) resumes: u32,
}

impl JobRun {
    /// A job task for an admitted job; `client` carries its result stream.
    pub fn new(
        state: State,
        spec: JobSpec,
        function: Bytes,
        handle: Arc<JobHandle>,
        inputs: mpsc::Receiver<ClientInput>,
        client: mpsc::Sender<Frame>,
        admission: oneshot::Sender<Result<(), Error>>,
    ) -> Self {
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let log = crate::store::LogKeeper::new(state.config.log_bytes_per_job);
        let mut changes = state.registry.subscribe();
        changes.mark_unchanged();
        Self {
            state,
            spec,
            function,
            handle,
            streams: Vec::new(),
            inflight: InFlight::new(),
            pending: VecDeque::new(),
            inputs,
            inputs_ended: false,
            events_tx,
            events,
            client: ClientSink { tx: Some(client) },
            admission: Some(admission),
            changes,
            excluded: HashSet::new(),
            first_refusal: None,
            last_loss: None,
            waiting_since: None,
            received: 0,
            done: 0,
            failed: 0,
            status_dirty: false,
            stored_frames: 0,
            moved: 0,
            log,
            resumes: 0,
        }
    }

    /// Runs the job to its end: opens the placed streams, sends the inputs that came with the
    /// submission, then reacts until the job completes, fails or is cancelled.
    #[tracing::instrument(name = "job", skip_all, fields(job = %self.spec.job_id))]
    pub async fn run(mut self, placements: Vec<Placement>, initial: Vec<ClientInput>) {
        for placement in &placements {
            self.open_stream(&placement.node_id, &placement.address, placement.share);
        }
        let mut outcome = None;
        for input in initial {
            if let Err(ended) = self.on_input(input) {
                outcome = Some(ended);
                break;
            }
        }
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => self.drive().await,
        };
        self.finish(outcome).await;
    }

    /// The job's reaction loop.
    async fn drive(&mut self) -> Outcome {
        // The first STATUS comes after one period: a short job needs none.
        let mut status_tick = tokio::time::interval_at(Instant::now() + STATUS_EVERY, STATUS_EVERY);
        status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut rebalance_tick = tokio::time::interval(REBALANCE_EVERY);
        rebalance_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Credit came back: held (re-dispatched) inputs go before new client inputs.
            if !self.pending.is_empty() && self.has_credit() {
                if let Err(outcome) = self.flush_pending() {
                    return outcome;
                }
            }
            // Streams that emptied close their inputs (once nothing may move to them).
            self.close_node_inputs_if_done();
            if let Some(outcome) = self.completed() {
                return outcome;
            }
            let balance = self.tail_unsettled();
            let take_input = !self.inputs_ended && self.pending.is_empty() && self.has_credit();
            let give_up_at = self
                .waiting_since
                .map(|since| since + self.state.config.redispatch_wait);
            let far = Instant::now() + Duration::from_secs(86_400);
            let handle = Arc::clone(&self.handle);
            let step = tokio::select! {
                biased;
                _ = handle.cancelled() => Err(Outcome::cancelled(handle.cancel_reason())),
                Some(event) = self.events.recv() => self.on_node_event(event).await,
                Some(input) = self.inputs.recv(), if take_input => self.on_input(input),
                _ = self.client.closed(), if self.client.connected() => self.client_left(),
                Ok(()) = self.changes.changed() => self.on_fleet_change(),
                _ = status_tick.tick(), if self.status_dirty => self.send_status().await,
                _ = rebalance_tick.tick(), if balance => {
                    self.rebalance();
                    Ok(())
                }
                _ = tokio::time::sleep_until(give_up_at.unwrap_or(far)), if give_up_at.is_some() => {
                    Err(self.give_up().await)
                }
            };
            if let Err(outcome) = step {
                return outcome;
            }
        }
    }

    /// Whether every input is answered (and a node accepted the job).
    fn completed(&self) -> Option<Outcome> {
        (self.admission.is_none()
            && self.inputs_ended
            && self.pending.is_empty()
            && self.inflight.is_empty())
        .then(Outcome::completed)
    }

    /// The client stopped reading the result stream.
    fn client_left(&mut self) -> Result<(), Outcome> {
        self.client.disconnect();
        if self.spec.detach {
            tracing::info!(job = %self.spec.job_id, "client left; the detached job goes on");
            Ok(())
        } else {
            Err(Outcome::cancelled("the client disconnected"))
        }
    }

    /// Publishes the counters to status requests.
    pub(super) fn publish_counts(&self) {
        self.handle
            .set_counts(self.received, self.done, self.failed);
    }
}
