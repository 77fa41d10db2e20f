//! Job records in embedded SQLite (WAL), owned by one dedicated writer thread fed by a channel:
//! admitting or finishing a job only queues a record, it never waits on disk. Reads travel the
//! same channel, so a read sees every write queued before it.

mod sql;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use agent_proto::JobState;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

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
    /// std Mutex: only touched at close, never across an await.
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Cheap cloneable handle to the job store.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (or creates) the database at `path`, marks jobs a previous coordinator left
    /// running as failed, and starts the writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = sql::open(path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("job-store".into())
            .spawn(move || writer::run(conn, path, rx))
            .map_err(StoreError::Thread)?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Queues `record` for writing (waits only if thousands of writes are queued).
    pub async fn put(&self, record: JobRecord) {
        if self.inner.tx.send(Op::Put(record)).await.is_err() {
            warn!("job record dropped: the store is closed");
        }
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

    #[test]
    fn opening_an_unwritable_path_is_a_typed_error() {
        let err = Store::open(Path::new("/nonexistent-dir/x/jobs.db")).expect_err("fails");
        assert!(
            err.to_string().contains("/nonexistent-dir/x/jobs.db"),
            "{err}"
        );
    }
}
