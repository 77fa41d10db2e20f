//! Client inputs on their way to a job task: decoded INPUTS batches from the submission's body
//! and from `POST /v1/jobs/{id}/inputs`, queued with backpressure (a full queue stops reading
//! the client's body).

use std::sync::Arc;

use agent_proto::{BatchView, Frame, FrameError, FrameKind};
use tracing::debug;

use super::handle::FeederGuard;
use super::JobHandle;
use crate::api::frames_in::ReadError;
use crate::api::request::ClientFrames;
use crate::error::Error;

/// One step of a client's input stream.
#[derive(Debug)]
pub enum ClientInput {
    /// An INPUTS frame, kept whole so it can be forwarded unchanged, and its decoded items.
    Batch {
        /// The frame as received.
        frame: Frame,
        /// Its items, checked.
        batch: BatchView,
    },
    /// INPUTS_END: no more inputs.
    End,
    /// The submission's body broke the protocol after the job was admitted.
    Invalid(String),
    /// The submission's body could not be read: the client went away.
    Disconnected(String),
    /// The input could not be kept (a detached job over the store's budget): the job fails.
    Refused(String),
}

impl ClientInput {
    /// Decodes an input-stream frame.
    pub fn from_frame(frame: Frame) -> Result<Self, FrameError> {
        match frame.kind {
            FrameKind::Inputs => {
                let batch = BatchView::from_frame(&frame)?;
                Ok(Self::Batch { frame, batch })
            }
            FrameKind::InputsEnd => Ok(Self::End),
            got => Err(FrameError::Unexpected {
                got,
                expected: "INPUTS or INPUTS_END",
            }),
        }
    }
}

/// Queues `input`, waiting while the queue is full; false once the job has ended.
async fn queue(handle: &JobHandle, input: ClientInput) -> bool {
    tokio::select! {
        sent = handle.inputs().send(input) => sent.is_ok(),
        _ = handle.ended() => false,
    }
}

/// Reads the rest of a submission's body into the job (a task per job). The body may end
/// without INPUTS_END: the client then sends the rest with `POST /v1/jobs/{id}/inputs`.
pub async fn pump_submission(
    handle: Arc<JobHandle>,
    mut frames: ClientFrames,
    _feeding: FeederGuard,
) {
    loop {
        let input = match frames.next().await {
            Ok(Some(frame)) => match ClientInput::from_frame(frame) {
                Ok(input) => input,
                Err(err) => ClientInput::Invalid(err.to_string()),
            },
            Ok(None) => return,
            Err(ReadError::Frame(err)) => ClientInput::Invalid(err.to_string()),
            Err(ReadError::Body(err)) => ClientInput::Disconnected(err),
        };
        let last = !matches!(input, ClientInput::Batch { .. });
        if matches!(input, ClientInput::End) {
            if !handle.close_inputs() {
                return;
            }
            handle.other_feeders_done().await;
        }
        let input = kept(&handle, input).await;
        if !queue(&handle, input).await || last {
            debug!(job = %handle.job_id, "submission body done");
            return;
        }
    }
}

/// Queues the frames of a `POST /v1/jobs/{id}/inputs` body; the error becomes the answer to
/// that request (the job goes on).
pub async fn push_inputs(handle: &Arc<JobHandle>, mut frames: ClientFrames) -> Result<(), Error> {
    let _feeding = handle.feeding();
    // Only a body opened after INPUTS_END is refused: one that was already open when another
    // body sent INPUTS_END still belongs to the job (that INPUTS_END waits for it).
    if handle.inputs_closed() {
        return Err(Error::InputsClosed(handle.job_id.clone()));
    }
    loop {
        let frame = match frames.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(ReadError::Frame(err)) => return Err(Error::Frames(err)),
            Err(ReadError::Body(err)) => return Err(Error::BodyRead(err)),
        };
        let input = ClientInput::from_frame(frame)?;
        if matches!(input, ClientInput::End) {
            if !handle.close_inputs() {
                return Err(Error::InputsClosed(handle.job_id.clone()));
            }
            handle.other_feeders_done().await;
        }
        let end = matches!(input, ClientInput::End);
        let input = kept(handle, input).await;
        let refused = match &input {
            ClientInput::Refused(reason) => Some(reason.clone()),
            _ => None,
        };
        if !queue(handle, input).await {
            return Err(Error::JobEnded {
                job_id: handle.job_id.clone(),
                state: handle.state(),
            });
        }
        if let Some(reason) = refused {
            return Err(Error::InputsRefused(reason));
        }
        if end {
            return Ok(());
        }
    }
}

/// A detached job stores `input` before the job task sees it (so a restarted coordinator can
/// resume the job); an input that does not fit becomes the refusal that fails the job.
pub async fn kept(handle: &JobHandle, input: ClientInput) -> ClientInput {
    let Some(keeper) = handle.keeper() else {
        return input;
    };
    match &input {
        ClientInput::Batch { frame, .. } => match keeper.keep(frame).await {
            Ok(()) => input,
            Err(reason) => ClientInput::Refused(reason),
        },
        ClientInput::End => {
            keeper.complete().await;
            input
        }
        _ => input,
    }
}
