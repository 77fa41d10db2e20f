//! Applies parsed commands to the coordinator's state and builds the answers.

use std::time::Duration;

use agent_proto::{Frame, FrameKind, HeartbeatAnswer, JobEnd, SOFTWARE_VERSION};
use http::{Response, StatusCode};
use serde::Serialize;
use tokio::time::Instant;

use super::body::Body;
use super::request::Command;
use crate::error::Error;
use crate::jobs;
use crate::state::State;
use crate::store::JobRecord;

/// How long `DELETE /v1/jobs/{id}` waits for the job to finish cancelling before answering.
const CANCEL_WAIT: Duration = Duration::from_secs(3);

/// Payload bytes of stored results read from the database per page.
const RESULT_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Stored result frames queued for a fetching client before reading waits.
const RESULT_QUEUE: usize = 16;

/// `GET /v1/jobs/{id}/logs`.
#[derive(Serialize)]
struct JobLogs {
    job_id: String,
    /// The job's state when the page was read: a client following a running job asks again.
    state: agent_proto::JobState,
    entries: Vec<crate::store::LogEntry>,
    /// Ask again from here for the rest of a long log; `None`: this was all stored now.
    next_seq: Option<u64>,
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
}

/// Applies `command`.
pub async fn apply(state: &State, command: Command) -> Result<Response<Body>, Error> {
    match command {
        Command::Metrics => {
            let mut response = Response::new(Body::full(state.metrics.render(state)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            Ok(response)
        }
        Command::Health => Ok(Body::json_response(
            StatusCode::OK,
            &Health {
                status: "ok",
                version: SOFTWARE_VERSION,
            },
        )),
        Command::RegisterNode(registration) => {
            state.registry.register(registration, Instant::now())?;
            let interval = state.config.heartbeat_interval;
            Ok(Body::json_response(
                StatusCode::OK,
                &HeartbeatAnswer {
                    heartbeat_interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
                },
            ))
        }
        Command::Heartbeat { node_id, info } => {
            state.registry.heartbeat(&node_id, info, Instant::now())?;
            Ok(Body::status_response(StatusCode::NO_CONTENT))
        }
        Command::ListNodes => {
            let mut views = state.registry.views(Instant::now());
            let jobs: Vec<(String, Vec<String>)> = state
                .jobs
                .all()
                .iter()
                .map(|job| (job.job_id.clone(), job.nodes()))
                .collect();
            for view in &mut views {
                view.jobs_running = jobs
                    .iter()
                    .filter(|(_, nodes)| nodes.contains(&view.info.node_id))
                    .map(|(job_id, _)| job_id.clone())
                    .collect();
                view.jobs_running.sort_unstable();
            }
            Ok(Body::json_response(StatusCode::OK, &views))
        }
        Command::LeaveNode { node_id } => {
            state.registry.leave(&node_id)?;
            Ok(Body::status_response(StatusCode::NO_CONTENT))
        }
        Command::JobResults { job_id } => stored_results(state, job_id).await,
        Command::JobLogs {
            job_id,
            from_seq,
            input,
        } => {
            // The record first: a page read after it holds every entry the job had then.
            let record = match state.jobs.get(&job_id) {
                Some(handle) => handle.record(),
                None => stored(state, &job_id).await?,
            };
            let page = state.store.log_page(&job_id, from_seq, input).await?;
            Ok(Body::json_response(
                StatusCode::OK,
                &JobLogs {
                    job_id,
                    state: record.state,
                    entries: page.entries,
                    next_seq: page.next_seq,
                },
            ))
        }
        Command::DeleteResults { job_id } => {
            if let Some(handle) = state.jobs.get(&job_id) {
                let record = handle.record();
                return Err(Error::StillRunning {
                    job_id,
                    done: record.done + record.failed,
                    inputs: record.inputs,
                });
            }
            let record = stored(state, &job_id).await?;
            if !record.stored_results {
                return Err(Error::NoResults(job_id));
            }
            state.store.delete_results(&job_id).await?;
            Ok(Body::status_response(StatusCode::NO_CONTENT))
        }
        Command::SubmitJob(submission) => jobs::submit(state, *submission).await,
        Command::AddInputs { job_id, frames } => {
            let Some(handle) = state.jobs.get(&job_id) else {
                return Err(ended_or_unknown(state, job_id).await);
            };
            jobs::push_inputs(&handle, frames).await?;
            Ok(Body::status_response(StatusCode::NO_CONTENT))
        }
        Command::ListJobs { limit } => {
            let mut records = state.store.list(limit).await?;
            for record in &mut records {
                if let Some(handle) = state.jobs.get(&record.job_id) {
                    *record = handle.record();
                }
            }
            Ok(Body::json_response(StatusCode::OK, &records))
        }
        Command::GetJob { job_id } => {
            let record = match state.jobs.get(&job_id) {
                Some(handle) => handle.record(),
                None => stored(state, &job_id).await?,
            };
            Ok(Body::json_response(StatusCode::OK, &record))
        }
        Command::CancelJob { job_id } => {
            let Some(handle) = state.jobs.get(&job_id) else {
                return Err(ended_or_unknown(state, job_id).await);
            };
            handle.cancel("the client cancelled the job");
            // The job task cancels every node (each within the node cancel timeout) and sends
            // END; answering after that lets the caller rely on the cancel having happened.
            let _ = tokio::time::timeout(CANCEL_WAIT, handle.ended()).await;
            let record = if handle.is_ended() {
                stored(state, &job_id).await?
            } else {
                handle.record()
            };
            Ok(Body::json_response(StatusCode::ACCEPTED, &record))
        }
    }
}

/// `GET /v1/jobs/{id}/results`: the stored RESULTS and FAILURE frames of an ended detached
/// job, read from the database page by page as the client reads, then END.
async fn stored_results(state: &State, job_id: String) -> Result<Response<Body>, Error> {
    if let Some(handle) = state.jobs.get(&job_id) {
        let record = handle.record();
        return Err(Error::StillRunning {
            job_id,
            done: record.done + record.failed,
            inputs: record.inputs,
        });
    }
    let record = stored(state, &job_id).await?;
    if !record.stored_results {
        return Err(Error::NoResults(job_id));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(RESULT_QUEUE);
    let store = state.store.clone();
    state.tasks.spawn(async move {
        let mut next = Some(0);
        while let Some(from) = next {
            let page = match store.result_page(&job_id, from, RESULT_PAGE_BYTES).await {
                Ok(page) => page,
                Err(err) => {
                    // Ending without END tells the client the stream broke.
                    tracing::error!(job = %job_id, cause = %err, "cannot read stored results");
                    return;
                }
            };
            for frame in page.frames {
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
            next = page.next_seq;
        }
        let end = JobEnd {
            state: record.state,
            done: record.done,
            failed: record.failed,
            message: record.message,
        };
        let _ = tx.send(Frame::json(FrameKind::End, &end)).await;
    });
    Ok(Body::frames_response(rx))
}

async fn stored(state: &State, job_id: &str) -> Result<JobRecord, Error> {
    state
        .store
        .get(job_id)
        .await?
        .ok_or_else(|| Error::JobNotFound(job_id.to_owned()))
}

/// The error for an action on a job that is not running: ended (409) or unknown (404).
async fn ended_or_unknown(state: &State, job_id: String) -> Error {
    match stored(state, &job_id).await {
        Ok(record) => Error::JobEnded {
            job_id,
            state: record.state,
        },
        Err(err) => err,
    }
}
