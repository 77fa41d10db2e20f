//! One job's stream to one node: a task that opens `POST {node}/v1/jobs`, reports whether the
//! node accepted, then relays the node's frames to the job task as events. The request body is
//! fed by the job task through an unbounded channel whose use it bounds by credit.

use std::time::Duration;

use agent_proto::{ErrorBody, ErrorCode, Frame, FrameKind};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use super::inflight::Slot;
use super::streams::Loss;
use crate::api::frames_in::{FrameReader, ReadError};
use crate::node_client::{NodeClient, ResponseFuture};

/// Largest error body read from a refusing node.
const MAX_REFUSAL_BYTES: usize = 64 * 1024;

/// How long a stream whose job stopped listening keeps draining so its connection can be
/// pooled again.
const DRAIN_FOR: Duration = Duration::from_secs(5);

/// What happened on a node stream.
#[derive(Debug)]
pub enum NodeEventKind {
    /// The node answered 200: frames follow.
    Accepted,
    /// The node answered with an error before any frame.
    Refused {
        /// HTTP status.
        status: u16,
        /// Its error body (or one made from its text).
        body: ErrorBody,
    },
    /// A frame from the node.
    Frame(Frame),
    /// The node gave back these queued, never started inputs (empty: none, or the call failed).
    Released {
        /// Their indices.
        indices: Vec<u64>,
    },
    /// The stream broke before END.
    Broken {
        /// What happened.
        reason: String,
        /// What the loss says about the node.
        loss: Loss,
    },
}

/// An event of the stream in `slot`.
#[derive(Debug)]
pub struct NodeEvent {
    /// Which stream of the job.
    pub slot: Slot,
    /// What happened.
    pub kind: NodeEventKind,
}

/// The job task's end of a stream.
#[derive(Debug)]
pub struct StreamIo {
    /// Request body: frames to the node.
    pub body: mpsc::UnboundedSender<Frame>,
    /// Stops the relay task (dropping its connection).
    pub relay: AbortHandle,
}

/// Opens the stream: `prelude` frames (SPEC, FUNCTION) go first in the body.
pub fn open(
    client: &NodeClient,
    slot: Slot,
    address: &str,
    prelude: Vec<Frame>,
    events: mpsc::Sender<NodeEvent>,
    max_frame_bytes: usize,
) -> StreamIo {
    let opened = client.open_job(address);
    let (body, relay) = match opened {
        Ok((body, response)) => {
            for frame in prelude {
                // Cannot fail: the receiver lives in the request we just built.
                let _ = body.send(frame);
            }
            let task = tokio::spawn(relay(slot, response, events, max_frame_bytes));
            (body, task.abort_handle())
        }
        Err(err) => {
            let (body, _) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                let _ = events
                    .send(NodeEvent {
                        slot,
                        kind: NodeEventKind::Broken {
                            reason: err.to_string(),
                            loss: Loss::Protocol,
                        },
                    })
                    .await;
            });
            (body, task.abort_handle())
        }
    };
    StreamIo { body, relay }
}

async fn relay(
    slot: Slot,
    response: ResponseFuture,
    events: mpsc::Sender<NodeEvent>,
    max_frame_bytes: usize,
) {
    let emit = |kind| NodeEvent { slot, kind };
    let response = match response.await {
        Ok(response) => response,
        Err(err) => {
            let _ = events
                .send(emit(NodeEventKind::Broken {
                    reason: err.to_string(),
                    loss: Loss::Connection,
                }))
                .await;
            return;
        }
    };
    let status = response.status();
    if !status.is_success() {
        let bytes = Limited::new(response.into_body(), MAX_REFUSAL_BYTES)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let body = refusal_body(status.as_u16(), &bytes);
        let _ = events
            .send(emit(NodeEventKind::Refused {
                status: status.as_u16(),
                body,
            }))
            .await;
        return;
    }
    if events.send(emit(NodeEventKind::Accepted)).await.is_err() {
        return;
    }
    let mut frames = FrameReader::new(response.into_body(), max_frame_bytes);
    loop {
        match frames.next().await {
            Ok(Some(frame)) => {
                let end = frame.kind == FrameKind::End;
                if events
                    .send(emit(NodeEventKind::Frame(frame)))
                    .await
                    .is_err()
                {
                    drain(frames).await;
                    return;
                }
                if end {
                    // Reading to the body's end returns the connection to the pool.
                    drain(frames).await;
                    return;
                }
            }
            Ok(None) => {
                let _ = events
                    .send(emit(NodeEventKind::Broken {
                        reason: "its result stream ended without END".to_owned(),
                        loss: Loss::Connection,
                    }))
                    .await;
                return;
            }
            Err(ReadError::Frame(err)) => {
                warn!(slot, cause = %err, "node sent an invalid frame stream");
                let _ = events
                    .send(emit(NodeEventKind::Broken {
                        reason: format!("it sent an invalid frame stream: {err}"),
                        loss: Loss::Protocol,
                    }))
                    .await;
                return;
            }
            Err(ReadError::Body(err)) => {
                let _ = events
                    .send(emit(NodeEventKind::Broken {
                        reason: format!("its result stream broke: {err}"),
                        loss: Loss::Connection,
                    }))
                    .await;
                return;
            }
        }
    }
}

/// Reads what is left of a stream nobody listens to, for a while, so the connection can be
/// reused.
async fn drain(mut frames: FrameReader<hyper::body::Incoming>) {
    let reading = async {
        while let Ok(Some(frame)) = frames.next().await {
            debug!(kind = %frame.kind, "dropping a frame after the job stopped listening");
        }
    };
    let _ = tokio::time::timeout(DRAIN_FOR, reading).await;
}

/// The node's error body, or one built from its text when it is not an `ErrorBody`.
fn refusal_body(status: u16, bytes: &Bytes) -> ErrorBody {
    serde_json::from_slice(bytes).unwrap_or_else(|_| {
        let code = match status {
            400 => ErrorCode::BadRequest,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::PayloadTooLarge,
            422 => ErrorCode::Unprocessable,
            429 => ErrorCode::TooMany,
            503 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        let text = String::from_utf8_lossy(bytes);
        ErrorBody::new(code, format!("the node answered {status}: {}", text.trim()))
    })
}
