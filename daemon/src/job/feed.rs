//! Moves INPUTS frames from a request body into a job's queue, reading the body only as fast
//! as the queue frees up, until INPUTS_END or the body's end.

use agent_proto::{FrameError, FrameKind};
use futures_util::FutureExt;
use http_body::Body;
use thiserror::Error;

use super::chunk::Segment;
use super::{FeederGuard, JobError};
use crate::api::body::{BodyError, BodyFrames};

/// Why feeding stopped early.
#[derive(Debug, Error)]
pub enum FeedError {
    /// The body is not a valid frame stream of inputs.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The job's state refuses more inputs.
    #[error(transparent)]
    Job(#[from] JobError),
}

impl From<FrameError> for FeedError {
    fn from(err: FrameError) -> Self {
        Self::Body(BodyError::Frame(err))
    }
}

/// How a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// INPUTS_END arrived.
    InputsEnd,
    /// The body ended without INPUTS_END (more may come on another request).
    BodyEnd,
}

/// Queues every INPUTS frame of `frames`, the body `body` guards; returns how it ended.
pub async fn feed<B>(body: &FeederGuard, frames: &mut BodyFrames<B>) -> Result<Fed, FeedError>
where
    B: Body + Unpin,
    B::Error: std::fmt::Display,
{
    feed_then(body, frames, || {}).await
}

/// [`feed`], running `first_batch_queued` once: as soon as the first INPUTS batch is queued, or
/// before the body is first waited for, and at the latest when feeding ends.
///
/// A submission starts its instances from here: the first batch usually arrives in the same
/// read as SPEC and FUNCTION, and an instance that finds it queued sends its first chunk in
/// the same write as ASSIGN and FUNCTION instead of a round trip after READY.
pub async fn feed_then<B>(
    body: &FeederGuard,
    frames: &mut BodyFrames<B>,
    first_batch_queued: impl FnOnce() + Send,
) -> Result<Fed, FeedError>
where
    B: Body + Unpin,
    B::Error: std::fmt::Display,
{
    let mut hook = Some(first_batch_queued);
    let mut fire = move || {
        if let Some(hook) = hook.take() {
            hook();
        }
    };
    let fed = feed_frames(body, frames, &mut fire).await;
    fire();
    fed
}

async fn feed_frames<B>(
    body: &FeederGuard,
    frames: &mut BodyFrames<B>,
    first_batch_queued: &mut (dyn FnMut() + Send),
) -> Result<Fed, FeedError>
where
    B: Body + Unpin,
    B::Error: std::fmt::Display,
{
    let job = body.job();
    body.check_accepts()?;
    loop {
        // `next` keeps what it read in `frames`, so a poll that found nothing loses nothing.
        let next = match frames.next().now_or_never() {
            Some(next) => next,
            None => {
                first_batch_queued();
                frames.next().await
            }
        };
        let Some(frame) = next? else {
            return Ok(Fed::BodyEnd);
        };
        match frame.kind {
            FrameKind::Inputs => {
                let segment = Segment::parse(frame.body).map_err(|e| FrameError::Malformed {
                    kind: FrameKind::Inputs,
                    reason: e.to_string(),
                })?;
                body.check_accepts()?;
                if job.queue().push(segment).await.is_err() {
                    body.check_accepts()?;
                }
                job.inputs_queued();
                first_batch_queued();
            }
            FrameKind::InputsEnd => {
                job.end_inputs()?;
                if let Some(extra) = frames.next().await? {
                    return Err(FrameError::Unexpected {
                        got: extra.kind,
                        expected: "the end of the body after INPUTS_END",
                    }
                    .into());
                }
                return Ok(Fed::InputsEnd);
            }
            other => {
                return Err(FrameError::Unexpected {
                    got: other,
                    expected: "INPUTS or INPUTS_END",
                }
                .into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use agent_proto::{Frame, Item, ItemBatch, JobSpec, JobState};
    use bytes::{Bytes, BytesMut};
    use http_body_util::Full;

    use super::*;

    fn body(frames: &[Frame]) -> BodyFrames<Full<Bytes>> {
        let mut wire = BytesMut::new();
        for frame in frames {
            frame.encode_into(&mut wire);
        }
        BodyFrames::new(Full::new(wire.freeze()), 1 << 20)
    }

    fn inputs(range: std::ops::Range<u64>) -> Frame {
        ItemBatch::new(range.map(|i| Item::new(i, vec![1u8])).collect())
            .into_frame(FrameKind::Inputs)
    }

    use crate::job::Job;

    fn job() -> Job {
        Job::new(JobSpec::new("j"), Bytes::new(), "n", 100, 1 << 20)
    }

    #[tokio::test]
    async fn inputs_then_end() {
        let job = job();
        let mut frames = body(&[
            inputs(0..3),
            inputs(3..5),
            Frame::empty(FrameKind::InputsEnd),
        ]);
        assert_eq!(
            feed(&job.feeding(), &mut frames).await.expect("ok"),
            Fed::InputsEnd
        );
        assert_eq!(job.queue().len(), 5);
        let mut more = body(&[inputs(5..6)]);
        assert!(matches!(
            feed(&job.feeding(), &mut more).await,
            Err(FeedError::Job(JobError::InputsEnded { .. }))
        ));
    }

    #[tokio::test]
    async fn a_body_open_before_another_ends_the_inputs_still_feeds() {
        let job = job();
        let first = job.feeding();
        let mut second = body(&[inputs(2..4), Frame::empty(FrameKind::InputsEnd)]);
        assert_eq!(
            feed(&job.feeding(), &mut second).await.expect("ok"),
            Fed::InputsEnd
        );
        let mut first_frames = body(&[inputs(0..2)]);
        assert_eq!(
            feed(&first, &mut first_frames).await.expect("ok"),
            Fed::BodyEnd
        );
        assert_eq!(job.queue().len(), 4, "no input of the earlier body is lost");
    }

    #[tokio::test]
    async fn a_body_may_end_without_inputs_end() {
        let job = job();
        let mut frames = body(&[inputs(0..2)]);
        assert_eq!(
            feed(&job.feeding(), &mut frames).await.expect("ok"),
            Fed::BodyEnd
        );
    }

    #[tokio::test]
    async fn malformed_and_unexpected_frames_are_refused() {
        let job = job();
        let mut frames = body(&[Frame::new(FrameKind::Inputs, vec![9u8, 0, 0, 0])]);
        let err = feed(&job.feeding(), &mut frames)
            .await
            .expect_err("malformed");
        assert!(
            err.to_string().starts_with("malformed INPUTS frame"),
            "{err}"
        );
        let mut frames = body(&[Frame::empty(FrameKind::Spec)]);
        let err = feed(&job.feeding(), &mut frames)
            .await
            .expect_err("unexpected");
        assert_eq!(
            err.to_string(),
            "unexpected SPEC frame: expected INPUTS or INPUTS_END"
        );
    }

    #[tokio::test]
    async fn an_ended_job_takes_nothing() {
        let job = job();
        job.finish(JobState::Cancelled, None);
        let mut frames = body(&[inputs(0..1)]);
        assert!(matches!(
            feed(&job.feeding(), &mut frames).await,
            Err(FeedError::Job(JobError::Ended { .. }))
        ));
    }

    #[tokio::test]
    async fn the_first_batch_hook_runs_once_with_the_batch_queued() {
        let job = job();
        let mut frames = body(&[
            inputs(0..3),
            inputs(3..5),
            Frame::empty(FrameKind::InputsEnd),
        ]);
        let queued_then = std::sync::Mutex::new(Vec::new());
        let fed = feed_then(&job.feeding(), &mut frames, || {
            queued_then.lock().expect("lock").push(job.queue().len());
        })
        .await;
        assert_eq!(fed.expect("ok"), Fed::InputsEnd);
        assert_eq!(
            *queued_then.lock().expect("lock"),
            [3],
            "once, right after the first batch and before the second"
        );
    }

    #[tokio::test]
    async fn the_first_batch_hook_runs_before_waiting_for_the_body() {
        let job = job();
        let (tx, rx) = futures_channel_body();
        let mut frames = BodyFrames::new(rx, 1 << 20);
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = ran.clone();
        let feeding = job.feeding();
        let task = tokio::spawn(async move {
            feed_then(&feeding, &mut frames, move || {
                seen.store(true, std::sync::atomic::Ordering::SeqCst)
            })
            .await
        });
        for _ in 0..100 {
            if ran.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            ran.load(std::sync::atomic::Ordering::SeqCst),
            "no input arrived, yet instances must start"
        );
        let mut wire = BytesMut::new();
        Frame::empty(FrameKind::InputsEnd).encode_into(&mut wire);
        tx.send(Ok(http_body::Frame::data(wire.freeze())))
            .await
            .expect("send");
        drop(tx);
        assert_eq!(task.await.expect("join").expect("ok"), Fed::InputsEnd);
    }

    #[tokio::test]
    async fn the_first_batch_hook_runs_when_the_body_is_refused() {
        let job = job();
        let mut frames = body(&[Frame::empty(FrameKind::Spec)]);
        let mut ran = false;
        let fed = feed_then(&job.feeding(), &mut frames, || ran = true).await;
        assert!(fed.is_err());
        assert!(ran, "the supervisor must start to end the result stream");
    }

    type ChannelBody = http_body_util::StreamBody<
        std::pin::Pin<
            Box<
                dyn futures_util::Stream<
                        Item = Result<http_body::Frame<Bytes>, std::convert::Infallible>,
                    > + Send,
            >,
        >,
    >;

    /// A body fed from a channel: frames arrive when the test sends them.
    fn futures_channel_body() -> (
        tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, std::convert::Infallible>>,
        ChannelBody,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        (tx, http_body_util::StreamBody::new(Box::pin(stream)))
    }
}
