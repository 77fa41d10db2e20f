//! The coordinator's error type and [`error_response`], the one place an error becomes an HTTP
//! status and an `ErrorBody` sentence.

use std::path::PathBuf;

use agent_proto::{AuthError, ErrorBody, ErrorCode, FrameError, JobState, SpecError};
use http::{header, HeaderValue, Method, Response, StatusCode};
use thiserror::Error;

use crate::api::body::Body;
use crate::keys::KeyError;
use crate::store::StoreError;

/// Everything that can go wrong while serving a request or starting the coordinator.
///
/// Messages are one sentence that says what to change: they reach the user unchanged.
#[derive(Debug, Error)]
pub enum Error {
    /// No route has this path.
    #[error("there is no route {path}; the coordinator's API is described in agent-proto/openapi/coordinator.json")]
    RouteNotFound {
        /// Path asked for.
        path: String,
    },
    /// The route exists but not with this method.
    #[error("{method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        /// Method used.
        method: Method,
        /// Path asked for.
        path: String,
        /// Methods the route takes.
        allow: &'static str,
    },
    /// A JSON body does not parse as the type the route takes.
    #[error("the request body is not a valid {what}: {reason}")]
    BadJson {
        /// Type expected.
        what: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// A query parameter is invalid.
    #[error("the query parameter {0}")]
    BadQuery(String),
    /// A request body is larger than the route accepts.
    #[error("the request body is larger than the limit of {limit} bytes; send less")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The client sent the start of its request (JSON body, or SPEC and FUNCTION) too slowly.
    #[error("the request's {what} did not arrive within {secs} s; send it at once")]
    RequestTimeout {
        /// What was awaited.
        what: &'static str,
        /// The limit in seconds.
        secs: u64,
    },
    /// The connection limit is reached.
    #[error("{0}")]
    Busy(String),
    /// The request body could not be read (the client went away mid-request).
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    /// A frame-stream body is not a valid frame sequence.
    #[error("the request body is not a valid frame stream: {0}")]
    Frames(#[from] FrameError),
    /// The body ended before a required frame.
    #[error("the request body ended before its {expected} frame; a job submission is SPEC, FUNCTION, then INPUTS")]
    MissingFrame {
        /// The frame that was expected.
        expected: &'static str,
    },
    /// The job specification breaks the contract.
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// A node route was called without the cluster token, or with a wrong one.
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    /// A client route was called without a valid API key, or the key table failed.
    /// (Boxed: the key table's SQLite error would make every `Result<_, Error>` large.)
    #[error("{0}")]
    ApiKey(Box<KeyError>),
    /// A detached job's results would exceed the result budget.
    #[error("job {job_id} stores more results than the coordinator's result budget of {budget} bytes allows; fetch and delete older results (fleetmap results JOB --delete) or raise --results-budget-bytes")]
    ResultBudget {
        /// The job.
        job_id: String,
        /// The budget.
        budget: u64,
    },
    /// Results were asked for while the job still runs.
    #[error("job {job_id} is still running ({done} of {inputs} inputs answered); fetch its results once it ended, or wait for it (fleetmap results JOB --wait)")]
    StillRunning {
        /// The job.
        job_id: String,
        /// Inputs answered.
        done: u64,
        /// Inputs received.
        inputs: u64,
    },
    /// The job kept no results (it was not detached, or they were deleted).
    #[error("job {0} has no stored results: only detach=True jobs keep them, until deleted")]
    NoResults(String),
    /// A node registration is unusable.
    #[error("the node registration is invalid: {0}")]
    BadNode(String),
    /// The job asks for an environment only the environment cache can provide.
    #[error("the {kind} environment needs the environment cache, which this cluster does not have yet; leave dockerfile and packages unset to run in the nodes' default Python environment")]
    EnvironmentUnsupported {
        /// Environment kind asked for.
        kind: &'static str,
    },
    /// No live node appeared within `--node-wait-ms`.
    #[error("no live node is registered with the coordinator (waited {waited_ms} ms); start fleetmapd on a machine and point it at this coordinator with --coordinator")]
    NoNode {
        /// How long the job waited.
        waited_ms: u64,
    },
    /// No live node can ever run one instance of the job (the sentence names what the fleet has).
    #[error("{0}")]
    NothingFits(String),
    /// The job is not running and has no record.
    #[error("job {0} does not exist; it may have finished and been forgotten")]
    JobNotFound(String),
    /// The node is not registered.
    #[error("node {0} is not registered; register it again with POST /v1/nodes")]
    NodeNotFound(String),
    /// A job with this id is running.
    #[error("job {0} is already running; submit the new job with a fresh job_id")]
    JobExists(String),
    /// The job has ended; the action needs a running job.
    #[error("job {job_id} has ended ({state}); it takes no more inputs and cannot be cancelled")]
    JobEnded {
        /// The job.
        job_id: String,
        /// Its final state.
        state: JobState,
    },
    /// More inputs after INPUTS_END.
    #[error("job {0} already received INPUTS_END; it takes no more inputs")]
    InputsClosed(String),
    /// A detached job's input could not be stored (over the result budget); the job fails.
    #[error("{0}")]
    InputsRefused(String),
    /// A limit on concurrent use was reached.
    #[error("{0}")]
    TooMany(String),
    /// A node refused the job; its status and sentence are passed through.
    #[error("{}", .body.error.message)]
    NodeRefused {
        /// The node that refused.
        node: String,
        /// Its HTTP status.
        status: u16,
        /// Its error body.
        body: ErrorBody,
    },
    /// Every node the job was sent to failed before accepting it.
    #[error("no node could take the job: {0}; check the nodes with GET /v1/nodes and retry")]
    NoNodeAccepted(String),
    /// The job ended before any node accepted it.
    #[error("job {job_id} was {state} before a node accepted it: {message}")]
    EndedBeforeAdmission {
        /// The job.
        job_id: String,
        /// How it ended.
        state: JobState,
        /// Why.
        message: String,
    },
    /// The coordinator is stopping.
    #[error("the coordinator is shutting down; retry against a running coordinator")]
    ShuttingDown,
    /// The job store failed.
    #[error("the job store failed: {0}")]
    Store(#[from] StoreError),
    /// The address file could not be written.
    #[error("cannot write the address file {path}: {source}")]
    AddrFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The listener could not be used.
    #[error("the listener failed: {0}")]
    Listener(std::io::Error),
}

impl From<KeyError> for Error {
    fn from(err: KeyError) -> Self {
        Self::ApiKey(Box::new(err))
    }
}

impl Error {
    /// The error class, which decides the HTTP status.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::RouteNotFound { .. } | Self::JobNotFound(_) | Self::NodeNotFound(_) => {
                ErrorCode::NotFound
            }
            Self::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::ApiKey(err) if err.is_refusal() => ErrorCode::Unauthorized,
            Self::ApiKey(_) => ErrorCode::Internal,
            // The job exists; its results do not (not detached, or deleted).
            Self::NoResults(_) | Self::StillRunning { .. } => ErrorCode::Conflict,
            Self::ResultBudget { .. } | Self::InputsRefused(_) => ErrorCode::PayloadTooLarge,
            Self::BadJson { .. }
            | Self::BadQuery(_)
            | Self::BodyRead(_)
            | Self::MissingFrame { .. }
            | Self::Spec(_)
            | Self::BadNode(_) => ErrorCode::BadRequest,
            Self::Frames(FrameError::FrameTooLarge { .. }) | Self::BodyTooLarge { .. } => {
                ErrorCode::PayloadTooLarge
            }
            Self::Frames(_) => ErrorCode::BadRequest,
            Self::EnvironmentUnsupported { .. } | Self::NothingFits(_) => ErrorCode::Unprocessable,
            Self::JobExists(_)
            | Self::JobEnded { .. }
            | Self::InputsClosed(_)
            | Self::EndedBeforeAdmission { .. } => ErrorCode::Conflict,
            Self::TooMany(_) => ErrorCode::TooMany,
            Self::RequestTimeout { .. } => ErrorCode::RequestTimeout,
            Self::Busy(_) => ErrorCode::Unavailable,
            Self::NodeRefused { body, .. } => body.error.code,
            Self::NoNode { .. } | Self::NoNodeAccepted(_) | Self::ShuttingDown => {
                ErrorCode::Unavailable
            }
            Self::Store(_) | Self::AddrFile { .. } | Self::Listener(_) => ErrorCode::Internal,
        }
    }
}

/// The one place errors become HTTP answers: status from [`Error::code`] (or the refusing node's
/// own status), body `{"error":{"code","message"}}`.
pub fn error_response(err: &Error) -> Response<Body> {
    let code = err.code();
    let status = match err {
        Error::NodeRefused { status, .. } => {
            StatusCode::from_u16(*status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY)
        }
        _ => StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let body = ErrorBody::new(code, err.to_string());
    let mut response = Body::json_response(status, &body);
    if let Error::MethodNotAllowed { allow, .. } = err {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    if code == ErrorCode::Unauthorized {
        // RFC 6750: say which scheme the route takes.
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_protocol() {
        let cases: Vec<(Error, u16)> = vec![
            (Error::JobNotFound("j".into()), 404),
            (Error::Frames(FrameError::UnknownKind(0x7f)), 400),
            (
                Error::Frames(FrameError::FrameTooLarge { len: 2, limit: 1 }),
                413,
            ),
            (Error::EnvironmentUnsupported { kind: "packages" }, 422),
            (Error::NoNode { waited_ms: 5 }, 503),
            (Error::JobExists("j".into()), 409),
            (Error::TooMany("x".into()), 429),
            (
                Error::RequestTimeout {
                    what: "SPEC",
                    secs: 1,
                },
                408,
            ),
            (Error::Busy("x".into()), 503),
            (Error::Unauthorized(AuthError::Wrong), 401),
            (KeyError::Missing.into(), 401),
            (KeyError::Revoked { id: "x".into() }.into(), 401),
            (KeyError::NoSuchKey("x".into()).into(), 500),
        ];
        for (err, status) in cases {
            assert_eq!(error_response(&err).status().as_u16(), status, "{err}");
        }
    }

    #[test]
    fn node_refusals_pass_through_status_and_sentence() {
        let err = Error::NodeRefused {
            node: "a".into(),
            status: 422,
            body: ErrorBody::new(ErrorCode::Unprocessable, "python 3.12 vs 3.11"),
        };
        assert_eq!(error_response(&err).status().as_u16(), 422);
        assert_eq!(err.to_string(), "python 3.12 vs 3.11");
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let err = Error::MethodNotAllowed {
            method: Method::PUT,
            path: "/v1/nodes".into(),
            allow: "GET, POST",
        };
        let response = error_response(&err);
        assert_eq!(response.status().as_u16(), 405);
        assert_eq!(
            response.headers().get(header::ALLOW),
            Some(&HeaderValue::from_static("GET, POST"))
        );
    }
}
