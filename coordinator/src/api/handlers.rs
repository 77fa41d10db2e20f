//! Applies parsed commands to the coordinator's state and builds the answers.

use std::time::Duration;

use agent_proto::{HeartbeatAnswer, SOFTWARE_VERSION};
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

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
}

/// Applies `command`.
pub async fn apply(state: &State, command: Command) -> Result<Response<Body>, Error> {
    match command {
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
        Command::ListNodes => Ok(Body::json_response(
            StatusCode::OK,
            &state.registry.views(Instant::now()),
        )),
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
