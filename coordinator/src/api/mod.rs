//! The HTTP API: requests are parsed into typed commands ([`request`]), commands are applied by
//! [`handlers`], and errors become answers in one place ([`crate::error::error_response`]).

pub mod body;
pub mod frames_in;
pub mod handlers;
pub mod request;

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use tracing::debug;

use crate::error::error_response;
use crate::state::State;
use body::Body;
use request::Limits;

/// Serves one request: parse, apply, answer.
pub async fn serve(state: State, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let limits = Limits {
        max_json_bytes: state.config.max_json_bytes,
        max_frame_bytes: state.config.max_frame_bytes,
        head_timeout: state.config.request_head_timeout,
    };
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let answer = match request::parse(
        req,
        limits,
        state.config.cluster_token.as_ref(),
        state.api_keys.as_ref(),
    )
    .await
    {
        Ok(command) => handlers::apply(&state, command).await,
        Err(err) => Err(err),
    };
    let response = match answer {
        Ok(response) => response,
        Err(err) => {
            debug!(%method, %path, status = err.code().status(), cause = %err, "request refused");
            error_response(&err)
        }
    };
    state.metrics.observe_request(
        &path,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(response)
}
