//! Per-connection HTTP limits: the hyper builder every connection uses (head size, head read
//! timeout), the 503 a connection beyond the limit gets (after its TLS handshake, when TLS is
//! on), and the count of result streams each
//! client address holds open (jobs per client), answered 429 beyond the limit.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fleetmap_service_tls::{serve_refusal, Acceptor};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::api::body::Body;
use crate::config::Config;
use crate::error::{error_response, Error};

/// Smallest read buffer hyper accepts (its `MINIMUM_MAX_BUFFER_SIZE`).
const MIN_BUF_BYTES: usize = 8 * 1024;
/// How long a refused connection may take to send its request head and read the 503.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// Refusals answered at once; connections beyond them are closed without an answer.
pub const MAX_REFUSALS: usize = 64;

/// A hyper HTTP/1 builder with the coordinator's limits on request heads applied.
pub fn builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(MIN_BUF_BYTES));
    builder
}

/// Answers one request on `stream` with 503 (the connection limit is reached) and closes it;
/// with TLS on, the handshake comes first, within the same short time. At most
/// [`MAX_REFUSALS`] run at once (`refusals`); beyond that the stream is just closed.
pub fn refuse_busy(
    stream: TcpStream,
    acceptor: &Acceptor,
    config: &Config,
    refusals: &Arc<Semaphore>,
) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    let err = Error::Busy(format!(
        "the coordinator already serves {} connections, its limit; retry in a moment or reuse a connection",
        config.max_connections
    ));
    let builder = builder(config);
    let acceptor = acceptor.clone();
    tokio::spawn(async move {
        let answer = move || {
            let mut response = error_response(&err);
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        };
        serve_refusal(&acceptor, stream, builder, REFUSAL_TIME, answer).await;
        drop(permit);
    });
}

/// Open job result streams per client address.
#[derive(Debug, Clone, Default)]
pub struct ClientJobs {
    // A std mutex: held only to bump a counter, never across an await.
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ClientJobs {
    /// Counts one more job for `client`, or `None` when it already has `max`.
    pub fn try_take(&self, client: IpAddr, max: usize) -> Option<ClientJobGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(client).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientJobGuard {
            jobs: self.clone(),
            client,
        })
    }

    /// Jobs `client` holds now.
    pub fn count(&self, client: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&client).copied().unwrap_or(0)
    }
}

/// One counted job; dropping it (the result stream ended or the client left) uncounts it.
#[derive(Debug)]
pub struct ClientJobGuard {
    jobs: ClientJobs,
    client: IpAddr,
}

impl Drop for ClientJobGuard {
    fn drop(&mut self) {
        let mut counts = self.jobs.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// A response body that keeps a client's job counted until the body ends or is dropped.
#[derive(Debug)]
pub struct Counted {
    body: Body,
    guard: Option<ClientJobGuard>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves one request from `client`: a job submission beyond the client's job limit is 429;
/// an accepted one stays counted while its result stream is open.
pub async fn serve(
    state: crate::state::State,
    jobs: ClientJobs,
    client: IpAddr,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Counted>, Infallible> {
    let is_submission = request.method() == Method::POST && request.uri().path() == "/v1/jobs";
    let guard = if is_submission {
        let max = state.config.max_jobs_per_client;
        match jobs.try_take(client, max) {
            Some(guard) => Some(guard),
            None => {
                let err = Error::TooMany(format!(
                    "client {client} already has {max} jobs streaming results, the most one client may run at once; wait for one to finish"
                ));
                let response = error_response(&err);
                return Ok(response.map(|body| Counted { body, guard: None }));
            }
        }
    } else {
        None
    };
    let response = crate::api::serve(state, request).await?;
    // Only a 200 result stream keeps the job counted.
    let guard = guard.filter(|_| response.status() == StatusCode::OK);
    Ok(response.map(|body| Counted { body, guard }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_jobs_are_counted_per_address_and_released_on_drop() {
        let jobs = ClientJobs::default();
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.1".parse().expect("ip");
        let first = jobs.try_take(a, 2).expect("first");
        let second = jobs.try_take(a, 2).expect("second");
        assert!(jobs.try_take(a, 2).is_none(), "third is over the limit");
        let other = jobs
            .try_take(b, 2)
            .expect("another client has its own count");
        assert_eq!(jobs.count(a), 2);
        drop(first);
        assert_eq!(jobs.count(a), 1);
        let third = jobs.try_take(a, 2).expect("room again");
        drop((second, third, other));
        assert_eq!(jobs.count(a), 0);
        assert_eq!(jobs.count(b), 0);
    }
}
