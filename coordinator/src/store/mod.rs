//! Job records and detached jobs' results in embedded SQLite (WAL), owned by one dedicated writer
//! thread fed by a channel: admitting or finishing a job only queues a record, it never waits on
//! disk. Reads travel the same channel, so a read sees every write queued before it (a job's
//! results are committed before its final record). Stored results count against a disk budget
//! checked when they are queued, so a job learns at once that it went over. Jobs' output logs
//! (`logs`) travel the same way.

mod detached;
mod logs;
mod sql;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use agent_proto::{Frame, JobState};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

pub use detached::{DetachedWrite, Resumable};
pub use logs::{LogEntry, LogKeeper, LogPage, LogRows};

/// Records queued for the writer before admission waits for it.
const QUEUE: usize = 4096;

/// A job as `GET /v1/jobs` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The client's job id.
    pub job_id: String,
    /// Where the job is in its lifecycle.
    pub state: JobState,
    /// When the coordinator admitted (or refused) it, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When it ended, ms since the Unix epoch.
    pub finished_at_ms: Option<u64>,
    /// Inputs received from the client.
    pub inputs: u64,
    /// Inputs that yielded a result.
    pub done: u64,
    /// Inputs that yielded a failure.
    pub failed: u64,
    /// Whole CPUs per instance.
    pub func_cpu: u32,
    /// GB of RAM per instance.
    pub func_ram_gb: u32,
    /// Why it failed or was cancelled.
    pub message: Option<String>,
    /// Whether its results are stored to fetch later (a detached job, until they are deleted).
    #[serde(default)]
    pub stored_results: bool,
}

/// Result frames (RESULTS and FAILURE) of a detached job, in arrival order from `first_seq`.
#[derive(Debug)]
pub struct ResultRows {
    /// The job.
    pub job_id: String,
    /// Sequence number of the first frame.
    pub first_seq: u64,
    /// The frames.
    pub frames: Vec<Frame>,
}

/// One page of stored result frames.
#[derive(Debug, Default)]
pub struct ResultPage {
    /// The frames, in order.
    pub frames: Vec<Frame>,
    /// Sequence number to ask for next; `None` when this was the last page.
    pub next_seq: Option<u64>,
}

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("sqlite at {path}: {source}")]
    Sqlite {
        /// Database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the store writer thread: {0}")]
    Thread(std::io::Error),
    /// The writer thread is gone (the store was closed).
    #[error("the store is closed")]
    Closed,
}

/// A request to the writer thread.
#[derive(Debug)]
enum Op {
    /// Insert or replace a record.
    Put(JobRecord),
    /// Append result frames.
    Results(ResultRows),
    /// Read result frames from a sequence number on.
    ResultPage {
        job_id: String,
        from_seq: u64,
        max_bytes: usize,
        reply: oneshot::Sender<Result<ResultPage, StoreError>>,
    },
    /// Append log entries.
    Logs(LogRows),
    /// Keep or forget what resumes a detached job.
    Detached(DetachedWrite),
    /// Read a detached job's stored INPUTS bodies.
    DetachedInputs(
        String,
        oneshot::Sender<Result<Vec<bytes::Bytes>, StoreError>>,
    ),
    /// Read a page of a job's log.
    LogPage {
        job_id: String,
        from_seq: u64,
        input: Option<u64>,
        reply: oneshot::Sender<Result<LogPage, StoreError>>,
    },
    /// Delete a job's results; answers the payload bytes freed.
    DeleteResults(String, oneshot::Sender<Result<u64, StoreError>>),
    /// Read one record.
    Get(
        String,
        oneshot::Sender<Result<Option<JobRecord>, StoreError>>,
    ),
    /// Read the newest records.
    List(usize, oneshot::Sender<Result<Vec<JobRecord>, StoreError>>),
    /// Commit what is queued and stop.
    Close,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Op>,
    /// Result payload bytes stored (and queued) now.
    results_bytes: AtomicU64,
    /// Most result payload bytes the store may hold.
    results_budget: u64,
    /// std Mutex: only touched at close, never across an await.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Detached jobs the previous run left running, until taken (std Mutex: taken once).
    resumable: Mutex<Vec<Resumable>>,
}

/// Cheap cloneable handle to the job store.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (or creates) the database at `path`, marks jobs a previous coordinator left
    /// running as failed, and starts the writer thread; stored results are not limited.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_budget(path, u64::MAX)
    }

    /// Like [`Store::open`], holding at most `results_budget` bytes of stored results.
    pub fn open_with_budget(path: &Path, results_budget: u64) -> Result<Self, StoreError> {
        let (conn, resumable) = sql::open(path)?;
        let stored = sql::results_bytes(&conn)
            .and_then(|results| Ok(results + detached::inputs_bytes(&conn)?))
            .map_err(|source| StoreError::Sqlite {
                path: path.to_owned(),
                source,
            })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("job-store".into())
            .spawn(move || writer::run(conn, path, rx))
            .map_err(StoreError::Thread)?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                results_bytes: AtomicU64::new(stored),
                results_budget,
                thread: Mutex::new(Some(thread)),
                resumable: Mutex::new(resumable),
            }),
        })
    }

    /// Queues `record` for writing (waits only if thousands of writes are queued).
    pub async fn put(&self, record: JobRecord) {
        if self.inner.tx.send(Op::Put(record)).await.is_err() {
            warn!("job record dropped: the store is closed");
        }
    }

    /// Reserves `bytes` of the result budget; false (and nothing reserved) when they do not fit.
    pub fn reserve_results(&self, bytes: u64) -> bool {
        let budget = self.inner.results_budget;
        self.inner
            .results_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= budget)
            })
            .is_ok()
    }

    /// Result payload bytes stored now (for tests and diagnostics).
    pub fn results_bytes(&self) -> u64 {
        self.inner.results_bytes.load(Ordering::Acquire)
    }

    /// Queues result frames for writing; their bytes must have been reserved.
    pub async fn put_results(&self, rows: ResultRows) {
        if self.inner.tx.send(Op::Results(rows)).await.is_err() {
            warn!("job results dropped: the store is closed");
        }
    }

    /// Stored result frames of `job_id` from `from_seq` on, about `max_bytes` of them.
    pub async fn result_page(
        &self,
        job_id: &str,
        from_seq: u64,
        max_bytes: usize,
    ) -> Result<ResultPage, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Op::ResultPage {
                job_id: job_id.to_owned(),
                from_seq,
                max_bytes,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// The detached jobs a previous coordinator left running with all their inputs stored
    /// (their records still say running); empty after the first call.
    pub fn take_resumable(&self) -> Vec<Resumable> {
        std::mem::take(
            &mut *self
                .inner
                .resumable
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Queues a write about a running detached job (stored inputs' bytes must have been
    /// reserved with [`Store::reserve_results`]).
    pub async fn put_detached(&self, write: DetachedWrite) {
        if self.inner.tx.send(Op::Detached(write)).await.is_err() {
            warn!("detached job write dropped: the store is closed");
        }
    }

    /// Gives back `bytes` of the result budget (a detached job's stored inputs, once it ended).
    pub fn release_results(&self, bytes: u64) {
        let _ =
            self.inner
                .results_bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    Some(used.saturating_sub(bytes))
                });
    }

    /// The stored INPUTS bodies of a detached job, in arrival order.
    pub async fn detached_inputs(&self, job_id: &str) -> Result<Vec<bytes::Bytes>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Op::DetachedInputs(job_id.to_owned(), reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues log entries for writing.
    pub async fn put_logs(&self, rows: LogRows) {
        if self.inner.tx.send(Op::Logs(rows)).await.is_err() {
            warn!("job log entries dropped: the store is closed");
        }
    }

    /// Up to [`logs::PAGE_ENTRIES`] log entries of `job_id` from `from_seq` on (of input
    /// `input` only, when given); a read sees every entry queued before it.
    pub async fn log_page(
        &self,
        job_id: &str,
        from_seq: u64,
        input: Option<u64>,
    ) -> Result<LogPage, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Op::LogPage {
                job_id: job_id.to_owned(),
                from_seq,
                input,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes the stored results of `job_id` (and says so in its record); the bytes freed.
    pub async fn delete_results(&self, job_id: &str) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Op::DeleteResults(job_id.to_owned(), reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        let freed = answer.await.map_err(|_| StoreError::Closed)??;
        let _ =
            self.inner
                .results_bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    Some(used.saturating_sub(freed))
                });
        Ok(freed)
    }

    /// The record of `job_id`, if any.
    pub async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Op::Get(job_id.to_owned(), reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// The newest `limit` records, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Op::List(limit, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes what is queued and stops the writer thread; later operations on any handle fail
    /// with [`StoreError::Closed`] (writes are logged and dropped).
    pub async fn close(self) {
        let _ = self.inner.tx.send(Op::Close).await;
        let thread = {
            let mut guard = self
                .inner
                .thread
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            guard.take()
        };
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                error!("the job store writer thread panicked");
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job_id: &str, created_at_ms: u64, state: JobState) -> JobRecord {
        JobRecord {
            job_id: job_id.into(),
            state,
            created_at_ms,
            finished_at_ms: None,
            inputs: 0,
            done: 0,
            failed: 0,
            func_cpu: 2,
            func_ram_gb: 4,
            message: None,
            stored_results: false,
        }
    }

    #[tokio::test]
    async fn records_are_written_read_back_and_listed_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("jobs.db")).expect("opens");
        store.put(record("a", 1, JobState::Running)).await;
        store.put(record("b", 2, JobState::Running)).await;
        let mut done = record("a", 1, JobState::Completed);
        done.finished_at_ms = Some(9);
        done.inputs = 10;
        done.done = 9;
        done.failed = 1;
        done.message = Some("input 3 raised".into());
        store.put(done.clone()).await;
        assert_eq!(store.get("a").await.expect("reads"), Some(done.clone()));
        assert_eq!(store.get("zz").await.expect("reads"), None);
        let listed = store.list(10).await.expect("lists");
        assert_eq!(
            listed.iter().map(|r| r.job_id.as_str()).collect::<Vec<_>>(),
            vec!["b", "a"]
        );
        assert_eq!(store.list(1).await.expect("lists").len(), 1);
        store.close().await;
    }

    #[tokio::test]
    async fn a_burst_of_records_waits_for_more_and_keeps_each_jobs_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jobs.db");
        let store = Store::open(&path).expect("opens");
        store.put(record("a", 1, JobState::Running)).await;
        // Inside the window: the same transaction, where a's last record replaces its first.
        tokio::time::sleep(writer::RECORDS_WINDOW / 5).await;
        store.put(record("a", 1, JobState::Completed)).await;
        store.put(record("b", 2, JobState::Running)).await;
        assert_eq!(
            store.get("a").await.expect("reads").map(|r| r.state),
            Some(JobState::Completed)
        );
        assert_eq!(store.list(10).await.expect("lists").len(), 2);
        store.close().await;
        // Committed, not only answered: a new connection reads the same.
        let again = Store::open(&path).expect("reopens");
        assert_eq!(
            again.get("b").await.expect("reads").map(|r| r.job_id),
            Some("b".to_string())
        );
        again.close().await;
    }

    #[tokio::test]
    async fn jobs_left_running_by_a_previous_coordinator_are_marked_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jobs.db");
        let store = Store::open(&path).expect("opens");
        store.put(record("a", 1, JobState::Running)).await;
        store.put(record("b", 2, JobState::Completed)).await;
        store.close().await;

        let store = Store::open(&path).expect("reopens");
        let a = store.get("a").await.expect("reads").expect("kept");
        assert_eq!(a.state, JobState::Failed);
        assert!(a.finished_at_ms.is_some());
        assert!(
            a.message.as_deref().unwrap_or("").contains("restarted"),
            "{a:?}"
        );
        let b = store.get("b").await.expect("reads").expect("kept");
        assert_eq!(b.state, JobState::Completed);
        store.close().await;
    }

    #[tokio::test]
    async fn detached_jobs_with_all_inputs_stored_stay_running_to_be_resumed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jobs.db");
        let store = Store::open(&path).expect("opens");
        for (id, complete) in [("whole", true), ("partial", false)] {
            store.put(record(id, 1, JobState::Running)).await;
            store
                .put_detached(DetachedWrite::Job {
                    job_id: id.into(),
                    spec: "{}".into(),
                    function: bytes::Bytes::from_static(b"fn"),
                })
                .await;
            for seq in 0..2 {
                store
                    .put_detached(DetachedWrite::Inputs {
                        job_id: id.into(),
                        seq,
                        body: bytes::Bytes::from(vec![seq as u8; 10]),
                    })
                    .await;
            }
            if complete {
                store
                    .put_detached(DetachedWrite::InputsComplete(id.into()))
                    .await;
            }
        }
        store.close().await;

        let store = Store::open(&path).expect("reopens");
        let resumable = store.take_resumable();
        assert_eq!(resumable.len(), 1, "{resumable:?}");
        assert_eq!(resumable[0].record.job_id, "whole");
        assert_eq!(&resumable[0].function[..], b"fn");
        assert_eq!(resumable[0].input_bytes, 20);
        assert!(store.take_resumable().is_empty(), "taken once");
        assert_eq!(
            store.results_bytes(),
            20,
            "stored inputs count against the budget"
        );
        let whole = store.get("whole").await.expect("reads").expect("kept");
        assert_eq!(whole.state, JobState::Running);
        let partial = store.get("partial").await.expect("reads").expect("kept");
        assert_eq!(
            partial.state,
            JobState::Failed,
            "inputs were not all stored"
        );
        let inputs = store.detached_inputs("whole").await.expect("reads");
        assert_eq!(inputs.len(), 2);
        assert_eq!(&inputs[1][..], &[1u8; 10][..]);
        assert!(store
            .detached_inputs("partial")
            .await
            .expect("reads")
            .is_empty());
        store
            .put_detached(DetachedWrite::Forget("whole".into()))
            .await;
        assert!(store
            .detached_inputs("whole")
            .await
            .expect("reads")
            .is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn results_survive_a_restart_are_paged_and_deleted_within_the_budget() {
        use agent_proto::FrameKind;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jobs.db");
        let store = Store::open_with_budget(&path, 100).expect("opens");
        assert!(store.reserve_results(60));
        assert!(!store.reserve_results(41), "over the budget");
        store
            .put_results(ResultRows {
                job_id: "d".into(),
                first_seq: 0,
                frames: vec![
                    Frame::new(FrameKind::Results, vec![1u8; 30]),
                    Frame::new(FrameKind::Failure, vec![2u8; 30]),
                ],
            })
            .await;
        let mut done = record("d", 1, JobState::Completed);
        done.stored_results = true;
        store.put(done.clone()).await;
        store.close().await;

        let store = Store::open_with_budget(&path, 100).expect("reopens");
        assert_eq!(store.results_bytes(), 60, "counted from the database");
        assert_eq!(store.get("d").await.expect("reads"), Some(done));
        let first = store.result_page("d", 0, 1).await.expect("reads");
        assert_eq!(
            first.frames.len(),
            1,
            "one frame at least, then the byte limit"
        );
        assert_eq!(first.frames[0].kind, FrameKind::Results);
        let next = first.next_seq.expect("more");
        let second = store.result_page("d", next, 1 << 20).await.expect("reads");
        assert_eq!(second.frames[0].kind, FrameKind::Failure);
        assert_eq!(&second.frames[0].body[..], &[2u8; 30][..]);
        assert_eq!(second.next_seq, None);
        assert_eq!(store.delete_results("d").await.expect("deletes"), 60);
        assert_eq!(store.results_bytes(), 0);
        assert!(store
            .result_page("d", 0, 1 << 20)
            .await
            .expect("reads")
            .frames
            .is_empty());
        assert!(
            !store
                .get("d")
                .await
                .expect("reads")
                .expect("kept")
                .stored_results
        );
        store.close().await;
    }

    #[test]
    fn opening_an_unwritable_path_is_a_typed_error() {
        let err = Store::open(Path::new("/nonexistent-dir/x/jobs.db")).expect_err("fails");
        assert!(
            err.to_string().contains("/nonexistent-dir/x/jobs.db"),
            "{err}"
        );
    }
}
