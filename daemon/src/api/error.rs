//! Every way a request can fail, and the one function that turns them into HTTP answers with
//! the protocol's JSON error body.

use agent_proto::{AuthError, ErrorBody, ErrorCode, FrameError};
use http::{header, Response, StatusCode};
use thiserror::Error;

use super::body::{full, BodyError, ResponseBody};
use crate::job::admit::AdmitError;
use crate::job::feed::FeedError;
use crate::job::registry::RegistryError;
use crate::job::JobError;

/// Why a request was not served.
#[derive(Debug, Error)]
pub enum ApiError {
    /// No route has this path.
    #[error(
        "there is no route {path}; see agent-proto/openapi/daemon.json for the daemon's routes"
    )]
    NoRoute {
        /// The path asked for.
        path: String,
    },
    /// The path exists with other methods.
    #[error("{path} does not take {method}; use {allowed}")]
    Method {
        /// The path asked for.
        path: String,
        /// The method used.
        method: String,
        /// The methods it takes.
        allowed: String,
    },
    /// No live or remembered job has this id.
    #[error("job {0} does not exist; it may have finished and been forgotten")]
    NoJob(String),
    /// The body is not the frame stream the route takes.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The body ended before a frame the route needs.
    #[error("the body ended before its {0} frame; send SPEC, then FUNCTION, then inputs")]
    Missing(&'static str),
    /// The job cannot run on this node.
    #[error(transparent)]
    Admit(#[from] AdmitError),
    /// The job id is taken, or the node is full of jobs.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The job's state refuses the request.
    #[error(transparent)]
    Job(#[from] JobError),
    /// SPEC and FUNCTION did not arrive within the request head timeout.
    #[error("the job's SPEC and FUNCTION frames did not arrive within {0} s; send them at once, before any slow work")]
    HeadTimeout(u64),
    /// The daemon is stopping.
    #[error("this node is shutting down; send the job to another node")]
    ShuttingDown,
    /// A query parameter is invalid.
    #[error("the query parameter {0}")]
    BadQuery(String),
    /// The node drains: it finishes what it runs and takes no new job.
    #[error("this node is draining and takes no new jobs; send the job to another node")]
    Draining,
    /// The request lacks the cluster token or carries a wrong one.
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
}

impl From<FrameError> for ApiError {
    fn from(err: FrameError) -> Self {
        Self::Body(BodyError::Frame(err))
    }
}

impl From<FeedError> for ApiError {
    fn from(err: FeedError) -> Self {
        match err {
            FeedError::Body(err) => Self::Body(err),
            FeedError::Job(err) => Self::Job(err),
        }
    }
}

impl ApiError {
    /// The protocol's error code (and so the HTTP status) of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NoRoute { .. } | Self::NoJob(_) => ErrorCode::NotFound,
            Self::Method { .. } => ErrorCode::MethodNotAllowed,
            Self::Body(BodyError::Frame(FrameError::FrameTooLarge { .. })) => {
                ErrorCode::PayloadTooLarge
            }
            Self::Body(_) | Self::Missing(_) | Self::BadQuery(_) => ErrorCode::BadRequest,
            Self::Admit(AdmitError::Spec(_)) => ErrorCode::BadRequest,
            Self::Admit(_) => ErrorCode::Unprocessable,
            Self::Registry(RegistryError::Duplicate(_)) | Self::Job(_) => ErrorCode::Conflict,
            Self::Registry(RegistryError::TooMany(_)) => ErrorCode::TooMany,
            Self::HeadTimeout(_) => ErrorCode::RequestTimeout,
            Self::ShuttingDown | Self::Draining => ErrorCode::Unavailable,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
        }
    }
}

/// The answer for `err`: its status and `{"error":{"code","message"}}`.
pub fn response(err: &ApiError) -> Response<ResponseBody> {
    let code = err.code();
    let body = ErrorBody::new(code, err.to_string());
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(full(json));
    *response.status_mut() =
        StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let ApiError::Method { allowed, .. } = err {
        if let Ok(value) = header::HeaderValue::from_str(allowed) {
            response.headers_mut().insert(header::ALLOW, value);
        }
    }
    if code == ErrorCode::Unauthorized {
        // RFC 6750: say which scheme the route takes.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use agent_proto::FrameKind;
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn errors_map_to_statuses_with_a_json_body() {
        let cases: Vec<(ApiError, u16)> = vec![
            (ApiError::NoJob("x".into()), 404),
            (FrameError::FrameTooLarge { len: 10, limit: 5 }.into(), 413),
            (FrameError::UnknownKind(0x7f).into(), 400),
            (ApiError::Missing("FUNCTION"), 400),
            (
                ApiError::Registry(RegistryError::Duplicate("a".into())),
                409,
            ),
            (ApiError::Registry(RegistryError::TooMany(3)), 429),
            (ApiError::Admit(AdmitError::DoesNotFit("no".into())), 422),
            (ApiError::ShuttingDown, 503),
            (ApiError::HeadTimeout(60), 408),
            (ApiError::Draining, 503),
            (ApiError::Unauthorized(AuthError::Missing), 401),
            (
                FrameError::Unexpected {
                    got: FrameKind::Inputs,
                    expected: "SPEC",
                }
                .into(),
                400,
            ),
        ];
        for (err, status) in cases {
            let message = err.to_string();
            let response = response(&err);
            assert_eq!(response.status().as_u16(), status, "{message}");
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let body: ErrorBody = serde_json::from_slice(&bytes).expect("error body");
            assert_eq!(body.error.message, message);
            assert_eq!(body.error.code.status(), status);
        }
    }
}
