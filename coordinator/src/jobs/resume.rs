//! Resuming detached jobs after a coordinator restart: a detached job that had all its inputs
//! stored when the previous coordinator stopped (killed or shut down) runs again with the
//! inputs that have no stored answer yet, on whichever nodes are live once they re-register
//! (waiting up to `--redispatch-wait-ms`). Its stored results stay, new ones are appended, so
//! every input is answered exactly once across the runs.

use std::collections::HashSet;

use agent_proto::batch::encode_items;
use agent_proto::{BatchView, Failure, Frame, FrameKind, Item, JobSpec, JobState, NO_INDEX};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::admit::place;
use super::inputs::ClientInput;
use super::keep_inputs::InputKeeper;
use super::run::JobRun;
use super::JobHandle;
use crate::state::State;
use crate::store::{now_ms, DetachedWrite, Resumable};

/// Stored result bytes read per page while counting what was answered.
const PAGE_BYTES: usize = 4 << 20;

/// Starts a task per detached job the previous coordinator left running.
pub fn resume_all(state: &State) {
    for job in state.store.take_resumable() {
        let state = state.clone();
        state.tasks.clone().spawn(async move {
            let job_id = job.record.job_id.clone();
            let input_bytes = job.input_bytes;
            if let Err(message) = resume(&state, job).await {
                warn!(job = %job_id, cause = %message, "detached job not resumed");
                fail(&state, &job_id, message).await;
                state.store.release_results(input_bytes);
            }
        });
    }
}

/// What was answered before the restart.
#[derive(Debug, Default)]
struct Answered {
    indices: HashSet<u64>,
    done: u64,
    failed: u64,
    frames: u64,
}

async fn answered(state: &State, job_id: &str) -> Result<Answered, String> {
    let mut answered = Answered::default();
    let mut next = Some(0);
    while let Some(from) = next {
        let page = state
            .store
            .result_page(job_id, from, PAGE_BYTES)
            .await
            .map_err(|err| format!("cannot read its stored results: {err}"))?;
        for frame in &page.frames {
            answered.frames += 1;
            match frame.kind {
                FrameKind::Results => {
                    let batch = BatchView::from_frame(frame)
                        .map_err(|err| format!("a stored RESULTS frame is unreadable: {err}"))?;
                    for (index, _, _) in batch.iter() {
                        answered.indices.insert(index);
                        answered.done += 1;
                    }
                }
                FrameKind::Failure => {
                    let failure = Failure::from_frame(frame)
                        .map_err(|err| format!("a stored FAILURE frame is unreadable: {err}"))?;
                    if failure.index != NO_INDEX {
                        answered.indices.insert(failure.index);
                        answered.failed += 1;
                    }
                }
                _ => {}
            }
        }
        next = page.next_seq;
    }
    Ok(answered)
}

async fn resume(state: &State, job: Resumable) -> Result<(), String> {
    let job_id = job.record.job_id.clone();
    let spec: JobSpec = serde_json::from_str(&job.spec)
        .map_err(|err| format!("its stored spec is unreadable ({err})"))?;
    let bodies = state
        .store
        .detached_inputs(&job_id)
        .await
        .map_err(|err| format!("cannot read its stored inputs: {err}"))?;
    let before = answered(state, &job_id).await?;
    let mut total = 0u64;
    let mut initial = Vec::new();
    for body in bodies {
        let frame = Frame::new(FrameKind::Inputs, body);
        let batch = BatchView::from_frame(&frame)
            .map_err(|err| format!("a stored INPUTS frame is unreadable: {err}"))?;
        total += batch.len() as u64;
        let left: Vec<Item> = batch
            .items()
            .filter(|item| !before.indices.contains(&item.index))
            .collect();
        if left.is_empty() {
            continue;
        }
        let frame = Frame::new(FrameKind::Inputs, encode_items(&left));
        let batch = BatchView::from_frame(&frame)
            .map_err(|err| format!("cannot rebuild an INPUTS frame: {err}"))?;
        initial.push(ClientInput::Batch { frame, batch });
    }
    initial.push(ClientInput::End);
    let wait = state.config.redispatch_wait;
    let placements = place(state, &spec, wait).await.map_err(|err| {
        format!(
            "the coordinator restarted and could not resume the job within {} s ({err}); submit it again",
            wait.as_secs()
        )
    })?;
    let (handle, inputs) = JobHandle::new(&spec, job.record.created_at_ms);
    handle.keep_inputs(InputKeeper::resumed(
        state.store.clone(),
        &job_id,
        job.input_bytes,
    ));
    state
        .jobs
        .insert(handle.clone())
        .map_err(|err| format!("cannot resume it: {err}"))?;
    state
        .store
        .put_detached(DetachedWrite::Resumed(job_id.clone()))
        .await;
    info!(
        job = %job_id,
        inputs = total,
        answered = before.indices.len(),
        left = total - before.indices.len() as u64,
        nodes = placements.len(),
        resumes = job.resumes + 1,
        "detached job resumed after a coordinator restart"
    );
    // Nobody reads the result stream or the admission: the job is detached.
    let (client_tx, _) = mpsc::channel(1);
    let (admission_tx, _) = oneshot::channel();
    let mut run = JobRun::new(
        state.clone(),
        spec,
        job.function,
        handle,
        inputs,
        client_tx,
        admission_tx,
    );
    run.client.disconnect();
    run.received = before.indices.len() as u64;
    run.done = before.done;
    run.failed = before.failed;
    run.stored_frames = before.frames;
    run.resumes = job.resumes + 1;
    run.publish_counts();
    run.run(placements, initial).await;
    Ok(())
}

/// Records a job that could not be resumed as failed, and forgets its stored inputs.
async fn fail(state: &State, job_id: &str, message: String) {
    let Ok(Some(mut record)) = state.store.get(job_id).await else {
        return;
    };
    record.state = JobState::Failed;
    record.finished_at_ms = Some(now_ms());
    record.message = Some(message);
    state.store.put(record).await;
    state
        .store
        .put_detached(DetachedWrite::Forget(job_id.to_owned()))
        .await;
    state.metrics.job_finished(JobState::Failed);
}
