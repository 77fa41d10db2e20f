//! The store's writer thread: drains the channel, commits queued writes in one transaction per
//! burst, and answers reads after committing what was queued before them.

use std::path::PathBuf;

use rusqlite::Connection;
use tokio::sync::mpsc;
use tracing::error;

use super::{sql, Op, StoreError};

/// Most writes committed in one transaction.
const BURST: usize = 1024;

/// Prune old records after this many writes.
const PRUNE_EVERY: usize = 1000;

/// Runs until [`Op::Close`] or until every sender is dropped.
pub fn run(mut conn: Connection, path: PathBuf, mut rx: mpsc::Receiver<Op>) {
    let mut writes_since_prune = 0usize;
    let mut burst = Vec::with_capacity(BURST);
    while let Some(op) = rx.blocking_recv() {
        let mut next = Some(op);
        // Gather the writes queued right now into one transaction.
        while let Some(Op::Put(record)) = next {
            burst.push(record);
            next = if burst.len() < BURST {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !burst.is_empty() {
            writes_since_prune += burst.len();
            if let Err(err) = commit(&mut conn, &burst) {
                error!(path = %path.display(), cause = %err, records = burst.len(), "job records were not written");
            }
            burst.clear();
            if writes_since_prune >= PRUNE_EVERY {
                writes_since_prune = 0;
                if let Err(err) = sql::prune(&conn) {
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
            Some(Op::Close) => return,
            Some(Op::Put(_)) | None => {}
        }
    }
}

fn commit(conn: &mut Connection, burst: &[super::JobRecord]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for record in burst {
        sql::put(&tx, record)?;
    }
    tx.commit()
}
