//! The HTTP API (`docs/protocol.md` §3 "Daemon"). A request is first parsed into an
//! [`ApiRequest`] (route, path parameter, and for job submissions the SPEC and FUNCTION
//! frames); [`jobs`] and the small handlers here then apply it; [`error::response`] is the
//! only place an error becomes a status.

pub mod body;
pub mod error;
pub mod jobs;
pub mod route;

use std::convert::Infallible;

use agent_proto::{Frame, FrameKind, JobSpec, SOFTWARE_VERSION};
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::debug;

use self::body::{full, BodyFrames, ResponseBody};
use self::error::ApiError;
use self::route::{NoRoute, Route};
use crate::state::Daemon;

/// A request parsed into what it asks for.
#[derive(Debug)]
pub enum ApiRequest {
    /// `GET /v1/health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/node`.
    Node,
    /// `GET /v1/environments`.
    Environments,
    /// `POST /v1/drain`.
    Drain,
    /// `POST /v1/jobs/{id}/release?max_items=N`.
    ReleaseInputs {
        /// The job.
        job_id: String,
        /// Most items to give back.
        max_items: usize,
    },
    /// `GET /v1/jobs`.
    ListJobs,
    /// `GET /v1/jobs/{id}`.
    GetJob(String),
    /// `DELETE /v1/jobs/{id}`.
    CancelJob(String),
    /// `POST /v1/jobs`: SPEC and FUNCTION read, inputs still in the body.
    SubmitJob(Submission),
    /// `POST /v1/jobs/{id}/inputs`.
    JobInputs {
        /// The job.
        job_id: String,
        /// The body: INPUTS*, [INPUTS_END].
        frames: BodyFrames,
    },
}

/// A job submission whose SPEC and FUNCTION have been read.
#[derive(Debug)]
pub struct Submission {
    /// The SPEC frame's job spec (not yet validated).
    pub spec: JobSpec,
    /// The FUNCTION frame's body.
    pub function: Bytes,
    /// The rest of the body: inputs.
    pub inputs: BodyFrames,
}

/// Serves one request; never fails (errors become answers).
pub async fn handle(
    daemon: Daemon,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let answer = match parse(&daemon, request).await {
        Ok(parsed) => apply(&daemon, parsed).await,
        Err(err) => Err(err),
    };
    let response = answer.unwrap_or_else(|err| {
        debug!(%method, %path, code = ?err.code(), error = %err, "request refused");
        error::response(&err)
    });
    daemon.inner().metrics.observe_request(
        &path,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(response)
}

/// Turns a request into an [`ApiRequest`].
pub async fn parse(daemon: &Daemon, request: Request<Incoming>) -> Result<ApiRequest, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if let Some(token) = &daemon.inner().cluster_token {
        // Health stays open so probes and launchers need no secret.
        if path != "/v1/health" {
            let sent = parts
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            token.verify(sent)?;
        }
    }
    let route = route::route(&parts.method, path).map_err(|no| match no {
        NoRoute::NotFound => ApiError::NoRoute {
            path: path.to_string(),
        },
        NoRoute::MethodNotAllowed(allowed) => ApiError::Method {
            path: path.to_string(),
            method: parts.method.to_string(),
            allowed: allowed.join(", "),
        },
    })?;
    let max_frame = daemon.inner().limits.max_frame_bytes;
    Ok(match route {
        Route::Health => ApiRequest::Health,
        Route::Metrics => ApiRequest::Metrics,
        Route::Node => ApiRequest::Node,
        Route::Environments => ApiRequest::Environments,
        Route::Drain => ApiRequest::Drain,
        Route::ReleaseInputs(job_id) => ApiRequest::ReleaseInputs {
            job_id,
            max_items: max_items(parts.uri.query())?,
        },
        Route::ListJobs => ApiRequest::ListJobs,
        Route::GetJob(id) => ApiRequest::GetJob(id),
        Route::CancelJob(id) => ApiRequest::CancelJob(id),
        Route::JobInputs(job_id) => ApiRequest::JobInputs {
            job_id,
            frames: BodyFrames::new(body, max_frame),
        },
        Route::SubmitJob => {
            let mut frames = BodyFrames::new(body, max_frame);
            let head_timeout = daemon.inner().limits.request_head_timeout;
            let head = tokio::time::timeout(head_timeout, read_head(&mut frames))
                .await
                .unwrap_or(Err(ApiError::HeadTimeout(head_timeout.as_secs())));
            match head {
                Ok((spec, function)) => ApiRequest::SubmitJob(Submission {
                    spec,
                    function,
                    inputs: frames,
                }),
                Err(err) => {
                    frames.drain().await;
                    return Err(err);
                }
            }
        }
    })
}

/// The `max_items` query parameter of a release (1..=1,048,576).
fn max_items(query: Option<&str>) -> Result<usize, ApiError> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("max_items="));
    match value.map(str::parse::<usize>) {
        Some(Ok(n)) if (1..=1 << 20).contains(&n) => Ok(n),
        _ => Err(ApiError::BadQuery(
            "max_items must be given as a whole number from 1 to 1048576".to_owned(),
        )),
    }
}

/// Reads the SPEC and FUNCTION frames that open a submission.
async fn read_head(frames: &mut BodyFrames) -> Result<(JobSpec, Bytes), ApiError> {
    let spec: JobSpec = next_of(frames, FrameKind::Spec).await?.parse_json()?;
    let function = next_of(frames, FrameKind::Function).await?.body;
    Ok((spec, function))
}

async fn next_of(frames: &mut BodyFrames, kind: FrameKind) -> Result<Frame, ApiError> {
    let frame = frames.next().await?.ok_or(ApiError::Missing(kind.name()))?;
    frame.expect_kind(kind)?;
    Ok(frame)
}

/// Carries out a parsed request.
pub async fn apply(
    daemon: &Daemon,
    request: ApiRequest,
) -> Result<Response<ResponseBody>, ApiError> {
    match request {
        ApiRequest::Health => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "version": SOFTWARE_VERSION}),
        )),
        ApiRequest::Metrics => {
            let text = daemon.inner().metrics.render(daemon);
            let mut response = Response::new(full(text.into_bytes()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            Ok(response)
        }
        ApiRequest::Node => Ok(json(StatusCode::OK, &crate::node::info(daemon))),
        ApiRequest::Environments => Ok(json(StatusCode::OK, &daemon.inner().envs.info())),
        ApiRequest::ReleaseInputs { job_id, max_items } => {
            let job = daemon
                .inner()
                .registry
                .get(&job_id)
                .ok_or(ApiError::NoJob(job_id))?;
            let indices = job.queue().release_back(max_items);
            tracing::debug!(job = %job.id(), released = indices.len(), "queued inputs given back");
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "indices": indices }),
            ))
        }
        ApiRequest::Drain => {
            tracing::info!(
                jobs = daemon.inner().registry.live_count(),
                "drain requested"
            );
            daemon.inner().drain.request();
            Ok(json(StatusCode::ACCEPTED, &crate::node::info(daemon)))
        }
        ApiRequest::ListJobs => Ok(json(StatusCode::OK, &daemon.inner().registry.list())),
        ApiRequest::GetJob(id) => {
            let status = daemon
                .inner()
                .registry
                .status(&id)
                .ok_or(ApiError::NoJob(id))?;
            Ok(json(StatusCode::OK, &status))
        }
        ApiRequest::CancelJob(id) => jobs::cancel(daemon, id),
        ApiRequest::SubmitJob(submission) => jobs::submit(daemon, submission).await,
        ApiRequest::JobInputs { job_id, frames } => jobs::inputs(daemon, job_id, frames).await,
    }
}

/// A JSON answer.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    let mut response = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
