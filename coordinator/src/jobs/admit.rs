//! Admission of a submitted job: environment check, waiting for a first live node, placement,
//! then the job task is started and the submission is answered once a node accepted.

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::inputs::{pump_submission, ClientInput};
use super::keep_inputs::InputKeeper;
use super::plan::{self, Placement};
use super::run::JobRun;
use super::JobHandle;
use crate::api::body::Body;
use crate::api::request::Submission;
use crate::error::Error;
use crate::state::State;
use crate::store::{now_ms, JobRecord};

/// Result frames queued for the client before the job waits (backpressure to the nodes).
const CLIENT_QUEUE: usize = 64;

/// Admits a submission and answers with its result stream.
pub async fn submit(state: &State, submission: Submission) -> Result<http::Response<Body>, Error> {
    let Submission {
        spec,
        function,
        initial,
        rest,
    } = submission;
    if state.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    if state.jobs.contains(&spec.job_id) {
        return Err(Error::JobExists(spec.job_id.clone()));
    }
    let created_at_ms = now_ms();
    let placements = match place(state, &spec, state.config.node_wait).await {
        Ok(placements) => placements,
        Err(err) => {
            record_refusal(state, &spec, created_at_ms, &err).await;
            return Err(err);
        }
    };
    let (handle, inputs) = JobHandle::new(&spec, created_at_ms);
    state.jobs.insert(handle.clone())?;
    let initial = if spec.detach {
        keep_detached(state, &handle, &spec, &function, initial).await
    } else {
        initial
    };
    debug!(
        job = %spec.job_id,
        func_cpu = spec.func_cpu,
        func_ram_gb = spec.func_ram_gb,
        nodes = placements.len(),
        instances = placements.iter().map(|p| p.share).sum::<u64>(),
        "job admitted"
    );
    state.store.put(handle.record()).await;
    let (client_tx, client_rx) = mpsc::channel(CLIENT_QUEUE);
    let (admission_tx, admission) = oneshot::channel();
    let run = JobRun::new(
        state.clone(),
        spec,
        function,
        handle.clone(),
        inputs,
        client_tx,
        admission_tx,
    );
    state.tasks.spawn(run.run(placements, initial));
    // Counted before the client can learn the job is admitted, so an INPUTS_END on its
    // `/inputs` request waits for the rest of this body.
    let feeding = handle.feeding();
    state.tasks.spawn(pump_submission(handle, rest, feeding));
    match admission.await {
        Ok(Ok(())) => Ok(Body::frames_response(client_rx)),
        Ok(Err(err)) => Err(err),
        // The job task always answers before it ends; only a runtime shutting down drops it.
        Err(_) => Err(Error::ShuttingDown),
    }
}

/// Stores what resumes a detached job (spec, function, the inputs that came with it) before
/// the job task starts, and makes the rest of its inputs stored as they arrive.
async fn keep_detached(
    state: &State,
    handle: &JobHandle,
    spec: &agent_proto::JobSpec,
    function: &bytes::Bytes,
    initial: Vec<ClientInput>,
) -> Vec<ClientInput> {
    let spec_json = serde_json::to_string(spec).unwrap_or_default();
    state
        .store
        .put_detached(crate::store::DetachedWrite::Job {
            job_id: spec.job_id.clone(),
            spec: spec_json,
            function: function.clone(),
        })
        .await;
    handle.keep_inputs(InputKeeper::new(
        state.store.clone(),
        &spec.job_id,
        state.config.results_budget_bytes,
    ));
    let mut kept = Vec::with_capacity(initial.len());
    for input in initial {
        kept.push(super::inputs::kept(handle, input).await);
    }
    kept
}

/// Waits up to `wait` for a live node, then places the job on the live nodes.
pub(super) async fn place(
    state: &State,
    spec: &agent_proto::JobSpec,
    wait: std::time::Duration,
) -> Result<Vec<Placement>, Error> {
    plan::check_environment(spec)?;
    let started = Instant::now();
    let deadline = started + wait;
    let mut changes = state.registry.subscribe();
    loop {
        changes.mark_unchanged();
        let live = state.registry.live(Instant::now());
        if !live.is_empty() {
            return plan::place(spec, &live);
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Err(Error::ShuttingDown);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Error::NoNode {
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
            _ = state.shutdown.cancelled() => return Err(Error::ShuttingDown),
        }
    }
}

/// Records a job refused before it started, so `GET /v1/jobs` shows why.
async fn record_refusal(
    state: &State,
    spec: &agent_proto::JobSpec,
    created_at_ms: u64,
    err: &Error,
) {
    state
        .store
        .put(JobRecord {
            job_id: spec.job_id.clone(),
            state: agent_proto::JobState::Failed,
            created_at_ms,
            finished_at_ms: Some(now_ms()),
            inputs: 0,
            done: 0,
            failed: 0,
            func_cpu: spec.func_cpu,
            func_ram_gb: spec.func_ram_gb,
            message: Some(err.to_string()),
            stored_results: false,
        })
        .await;
}
