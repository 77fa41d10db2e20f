//! The JSON body of every non-2xx HTTP answer, and the codes that map to statuses.

use serde::{Deserialize, Serialize};

/// Machine-readable class of an API error; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request is malformed.
    BadRequest,
    /// 401: missing or wrong credential.
    Unauthorized,
    /// 404: no such route, job or node.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 408: the client sent the start of its request too slowly.
    RequestTimeout,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 413: the body or a frame is too large.
    PayloadTooLarge,
    /// 422: well-formed but cannot be satisfied.
    Unprocessable,
    /// 429: a limit on concurrent use was reached.
    TooMany,
    /// 500: a fault of the server.
    Internal,
    /// 503: a dependency is missing (no node registered, shutting down).
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::Unprocessable => 422,
            Self::TooMany => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }
}

/// `{"code": ..., "message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Class of the error.
    pub code: ErrorCode,
    /// One sentence saying what is wrong and what to change.
    pub message: String,
}

/// The whole error body: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

impl ErrorBody {
    /// A body for `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ApiError {
                code,
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape() {
        let body = ErrorBody::new(ErrorCode::Unprocessable, "nothing fits");
        assert_eq!(
            serde_json::to_string(&body).expect("serializes"),
            r#"{"error":{"code":"unprocessable","message":"nothing fits"}}"#
        );
        assert_eq!(ErrorCode::TooMany.status(), 429);
        assert_eq!(
            serde_json::to_string(&ErrorCode::RequestTimeout).expect("serializes"),
            r#""request_timeout""#
        );
        assert_eq!(ErrorCode::RequestTimeout.status(), 408);
    }
}
