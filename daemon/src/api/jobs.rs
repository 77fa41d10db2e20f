//! Applying job requests: admission and the streaming answer of a submission, more inputs,
//! cancellation.

use agent_proto::{JobSpec, JobState, FRAMES_CONTENT_TYPE};
use bytes::Bytes;
use http::{header, Response, StatusCode};
use tracing::{info, warn};

use super::body::{empty, BodyError, BodyFrames, ResponseBody};
use super::error::ApiError;
use super::{json, Submission};
use crate::job::feed::{feed, feed_then, FeedError};
use crate::job::sink::ResultSink;
use crate::job::supervisor;
use crate::job::{admit, Job};
use crate::state::Daemon;

/// Admits a job and answers with its result stream; the inputs already received are queued
/// first, the rest of the body is read by a task of its own while the answer streams.
pub async fn submit(
    daemon: &Daemon,
    submission: Submission,
) -> Result<Response<ResponseBody>, ApiError> {
    let Submission {
        spec,
        function,
        mut inputs,
    } = submission;
    let job = match admit_job(daemon, spec, function) {
        Ok(job) => job,
        Err(err) => {
            inputs.drain().await;
            return Err(err);
        }
    };
    let d = daemon.inner();
    let (sink, body) = ResultSink::channel(d.limits.stream_frames);
    // Counted before the response goes out, so an INPUTS_END on a later `/inputs` request
    // cannot complete the job while this body still has inputs to queue.
    let feeding = job.feeding();
    let (fed, starting, ctx) = (job.clone(), job.clone(), daemon.job_context());
    let mut feeding_task = Box::pin(async move {
        let job = fed;
        let start = move || supervisor::start(starting, ctx, sink);
        match feed_then(&feeding, &mut inputs, start).await {
            Ok(_) => {}
            // The client went away mid-body: the result stream's closing cancels the job.
            Err(FeedError::Body(BodyError::Http(err))) => {
                info!(job = %job.id(), cause = %err, "input stream ended early");
            }
            Err(FeedError::Job(_)) => {}
            Err(err) => {
                warn!(job = %job.id(), cause = %err, "bad input stream; failing the job");
                job.finish(
                    JobState::Failed,
                    format!("the job's input stream was refused: {err}"),
                );
            }
        }
    });
    // Queued here, before the answer is written, the body's first batch (it came in the same
    // read as SPEC and FUNCTION) starts the instances at once; what the body has not sent yet
    // is fed by a task of its own.
    if futures_util::poll!(feeding_task.as_mut()).is_pending() {
        tokio::spawn(feeding_task);
    }
    // Logged once the instances are on their way: the line's write is not on their path.
    info!(
        job = %job.id(),
        func_cpu = job.spec().func_cpu,
        func_ram_gb = job.spec().func_ram_gb,
        expected_inputs = ?job.spec().expected_inputs,
        "job admitted"
    );
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(FRAMES_CONTENT_TYPE),
    );
    Ok(response)
}

/// Checks a job against this node and registers it.
fn admit_job(daemon: &Daemon, spec: JobSpec, function: Bytes) -> Result<Job, ApiError> {
    let d = daemon.inner();
    if d.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    if d.drain.is_requested() {
        return Err(ApiError::Draining);
    }
    admit::check(
        &spec,
        &d.runtime.python_version(),
        &d.capacity,
        d.envs.runtime(),
    )?;
    let job = Job::new(
        spec,
        function,
        d.node_id.clone(),
        d.limits.queue_items,
        d.limits.queue_bytes,
    );
    d.registry.insert(job.clone())?;
    Ok(job)
}

/// Queues more inputs for a job; answers 204 once the body is queued.
pub async fn inputs(
    daemon: &Daemon,
    job_id: String,
    mut frames: BodyFrames,
) -> Result<Response<ResponseBody>, ApiError> {
    let registry = &daemon.inner().registry;
    let Some(job) = registry.get(&job_id) else {
        frames.drain().await;
        return Err(match registry.status(&job_id) {
            Some(status) => crate::job::JobError::Ended {
                job_id,
                state: status.state,
            }
            .into(),
            None => ApiError::NoJob(job_id),
        });
    };
    let feeding = job.feeding();
    let fed = feed(&feeding, &mut frames).await;
    drop(feeding);
    if let Err(err) = fed {
        frames.drain().await;
        return Err(err.into());
    }
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// Cancels a job: its workers are killed and its stream ends with END `cancelled`. An ended
/// job is answered with its final status.
pub fn cancel(daemon: &Daemon, job_id: String) -> Result<Response<ResponseBody>, ApiError> {
    let registry = &daemon.inner().registry;
    if let Some(job) = registry.get(&job_id) {
        if job.finish(
            JobState::Cancelled,
            format!("job {job_id} was cancelled by DELETE /v1/jobs/{job_id}"),
        ) {
            info!(job = %job_id, "job cancelled");
        }
    }
    let status = registry.status(&job_id).ok_or(ApiError::NoJob(job_id))?;
    Ok(json(StatusCode::ACCEPTED, &status))
}
