//! The store's writer thread: drains the channel, commits queued writes in one transaction per
//! burst, and answers reads after committing what was queued before them.

use std::path::PathBuf;

use rusqlite::Connection;
use tokio::sync::mpsc;
use tracing::error;

use super::detached::{self, DetachedWrite};
use super::logs::{self, LogRows};
use super::{sql, JobRecord, Op, ResultRows, StoreError};

/// A write gathered into a burst.
enum Write {
    Record(JobRecord),
    Results(ResultRows),
    Logs(LogRows),
    Detached(DetachedWrite),
}

/// Most writes committed in one transaction.
const BURST: usize = 1024;

/// How long a burst of job records alone waits for more writes before it commits.
///
/// A short job's records come in pairs a few milliseconds apart (admitted, then ended): one
/// transaction for both halves the writer's work, and the commit no longer runs (and takes a
/// CPU) while the job's first result is on its way. Writes that resume a detached job, its
/// results and its logs are never held back.
pub(super) const RECORDS_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// Prune old records after this many writes.
const PRUNE_EVERY: usize = 1000;

/// Runs until [`Op::Close`] or until every sender is dropped.
pub fn run(mut conn: Connection, path: PathBuf, mut rx: mpsc::Receiver<Op>) {
    let mut writes_since_prune = 0usize;
    let mut burst = Vec::with_capacity(BURST);
    while let Some(op) = rx.blocking_recv() {
        let next = gather(&mut rx, op, &mut burst, RECORDS_WINDOW);
        if !burst.is_empty() {
            writes_since_prune += burst.len();
            if let Err(err) = commit(&mut conn, &burst) {
                error!(path = %path.display(), cause = %err, records = burst.len(), "job records were not written");
            }
            burst.clear();
            if writes_since_prune >= PRUNE_EVERY {
                writes_since_prune = 0;
                if let Err(err) = sql::prune(&mut conn) {
                    error!(path = %path.display(), cause = %err, "old job records were not pruned");
                }
            }
        }
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        match next {
            Some(Op::Get(job_id, reply)) => {
                let _ = reply.send(sql::get(&conn, &job_id).map_err(wrap));
            }
            Some(Op::List(limit, reply)) => {
                let _ = reply.send(sql::list(&conn, limit).map_err(wrap));
            }
            Some(Op::ResultPage {
                job_id,
                from_seq,
                max_bytes,
                reply,
            }) => {
                let page = sql::result_page(&conn, &job_id, from_seq, max_bytes).map_err(wrap);
                let _ = reply.send(page);
            }
            Some(Op::DeleteResults(job_id, reply)) => {
                let _ = reply.send(sql::delete_results(&mut conn, &job_id).map_err(wrap));
            }
            Some(Op::LogPage {
                job_id,
                from_seq,
                input,
                reply,
            }) => {
                let _ = reply.send(logs::page(&conn, &job_id, from_seq, input).map_err(wrap));
            }
            Some(Op::DetachedInputs(job_id, reply)) => {
                let _ = reply.send(detached::inputs(&conn, &job_id).map_err(wrap));
            }
            Some(Op::Close) => return,
            Some(Op::Put(_) | Op::Results(_) | Op::Logs(_) | Op::Detached(_)) | None => {}
        }
    }
}

/// Gathers `first` and the writes queued behind it into `burst` (one transaction), waiting
/// `window` once for more when the burst holds job records alone; returns the operation that
/// ended the burst (a read, a close), if any.
fn gather(
    rx: &mut mpsc::Receiver<Op>,
    first: Op,
    burst: &mut Vec<Write>,
    window: std::time::Duration,
) -> Option<Op> {
    let mut next = Some(first);
    let mut waited = false;
    loop {
        let write = match next {
            Some(Op::Put(record)) => Write::Record(record),
            Some(Op::Results(rows)) => Write::Results(rows),
            Some(Op::Logs(rows)) => Write::Logs(rows),
            Some(Op::Detached(write)) => Write::Detached(write),
            other => return other,
        };
        push(burst, write);
        if burst.len() >= BURST {
            return None;
        }
        next = rx.try_recv().ok();
        if next.is_none() && !waited && only_records(burst) {
            waited = true;
            std::thread::sleep(window);
            next = rx.try_recv().ok();
        }
    }
}

/// Adds `write` to the burst; a job record replaces the burst's earlier record of the same job
/// (records are whole snapshots, written as upserts).
fn push(burst: &mut Vec<Write>, write: Write) {
    if let Write::Record(record) = &write {
        let earlier = burst.iter_mut().find(
            |queued| matches!(queued, Write::Record(queued) if queued.job_id == record.job_id),
        );
        if let Some(earlier) = earlier {
            *earlier = write;
            return;
        }
    }
    burst.push(write);
}

fn only_records(burst: &[Write]) -> bool {
    burst.iter().all(|write| matches!(write, Write::Record(_)))
}

fn commit(conn: &mut Connection, burst: &[Write]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for write in burst {
        match write {
            Write::Record(record) => sql::put(&tx, record)?,
            Write::Results(rows) => sql::put_results(&tx, rows)?,
            Write::Logs(rows) => logs::put(&tx, rows)?,
            Write::Detached(write) => detached::put(&tx, write)?,
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use agent_proto::JobState;

    use super::*;

    fn record(job_id: &str, state: JobState) -> JobRecord {
        JobRecord {
            job_id: job_id.into(),
            state,
            created_at_ms: 1,
            finished_at_ms: None,
            inputs: 0,
            done: 0,
            failed: 0,
            func_cpu: 1,
            func_ram_gb: 1,
            message: None,
            stored_results: false,
        }
    }

    fn states(burst: &[Write]) -> Vec<(String, JobState)> {
        burst
            .iter()
            .filter_map(|write| match write {
                Write::Record(r) => Some((r.job_id.clone(), r.state)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn records_arriving_within_the_window_share_a_burst_and_a_job_keeps_its_last() {
        let (tx, mut rx) = mpsc::channel(16);
        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            tx.blocking_send(Op::Put(record("a", JobState::Completed)))
                .expect("send");
            tx.blocking_send(Op::Put(record("b", JobState::Running)))
                .expect("send");
        });
        let mut burst = Vec::new();
        let first = Op::Put(record("a", JobState::Running));
        let next = gather(&mut rx, first, &mut burst, Duration::from_millis(100));
        later.join().expect("sender");
        assert!(next.is_none());
        assert_eq!(
            states(&burst),
            [
                ("a".to_string(), JobState::Completed),
                ("b".to_string(), JobState::Running)
            ]
        );
    }

    #[test]
    fn a_burst_with_other_writes_does_not_wait() {
        let (tx, mut rx) = mpsc::channel::<Op>(16);
        let mut burst = Vec::new();
        let first = Op::Logs(LogRows {
            job_id: "a".into(),
            first_seq: 0,
            entries: Vec::new(),
        });
        let started = Instant::now();
        let next = gather(&mut rx, first, &mut burst, Duration::from_secs(5));
        assert!(next.is_none() && burst.len() == 1);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(tx);
    }

    #[test]
    fn a_read_ends_the_burst_and_is_handed_back() {
        let (tx, mut rx) = mpsc::channel(16);
        let (reply, _answer) = tokio::sync::oneshot::channel();
        tx.try_send(Op::Get("a".into(), reply)).expect("queue");
        let mut burst = Vec::new();
        let next = gather(
            &mut rx,
            Op::Put(record("a", JobState::Running)),
            &mut burst,
            Duration::from_secs(5),
        );
        assert!(matches!(next, Some(Op::Get(..))));
        assert_eq!(states(&burst).len(), 1);
    }
}
