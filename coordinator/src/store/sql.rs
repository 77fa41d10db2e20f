//! The SQL side of the job store: schema, pragmas and the statements the writer runs.

use std::path::Path;

use agent_proto::JobState;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{now_ms, JobRecord, StoreError};

/// Records kept; older ones are deleted as new ones arrive.
pub const KEEP_RECORDS: i64 = 100_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id         TEXT    NOT NULL UNIQUE,
    state          TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    inputs         INTEGER NOT NULL DEFAULT 0,
    done           INTEGER NOT NULL DEFAULT 0,
    failed         INTEGER NOT NULL DEFAULT 0,
    func_cpu       INTEGER NOT NULL,
    func_ram_gb    INTEGER NOT NULL,
    message        TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_age ON jobs (created_at_ms DESC, seq DESC);
";

const COLUMNS: &str =
    "job_id, state, created_at_ms, finished_at_ms, inputs, done, failed, func_cpu, func_ram_gb, message";

/// Opens the database, applies pragmas and schema, and fails jobs a previous run left open.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    let wrap = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(wrap)?;
    // WAL: readers never block the writer; NORMAL: a commit is durable at the next checkpoint,
    // which is enough for job records and keeps commits off fsync.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(wrap)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(wrap)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(wrap)?;
    conn.execute_batch(SCHEMA).map_err(wrap)?;
    conn.execute(
        "UPDATE jobs SET state = ?1, finished_at_ms = ?2, message = ?3 WHERE state IN (?4, ?5)",
        params![
            JobState::Failed.as_str(),
            now_ms() as i64,
            "the coordinator restarted while the job ran; submit it again",
            JobState::Starting.as_str(),
            JobState::Running.as_str(),
        ],
    )
    .map_err(wrap)?;
    Ok(conn)
}

/// Inserts or replaces a record.
pub fn put(conn: &Connection, record: &JobRecord) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(&format!(
        "INSERT INTO jobs ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (job_id) DO UPDATE SET
            state = excluded.state, created_at_ms = excluded.created_at_ms,
            finished_at_ms = excluded.finished_at_ms, inputs = excluded.inputs,
            done = excluded.done, failed = excluded.failed, func_cpu = excluded.func_cpu,
            func_ram_gb = excluded.func_ram_gb, message = excluded.message"
    ))?;
    statement.execute(params![
        record.job_id,
        record.state.as_str(),
        record.created_at_ms as i64,
        record.finished_at_ms.map(|ms| ms as i64),
        record.inputs as i64,
        record.done as i64,
        record.failed as i64,
        record.func_cpu,
        record.func_ram_gb,
        record.message,
    ])?;
    Ok(())
}

/// Deletes all but the newest [`KEEP_RECORDS`] records.
pub fn prune(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM jobs WHERE seq <= (SELECT seq FROM jobs ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
        params![KEEP_RECORDS],
    )
}

/// One record.
pub fn get(conn: &Connection, job_id: &str) -> rusqlite::Result<Option<JobRecord>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE job_id = ?1"))?
        .query_row(params![job_id], from_row)
        .optional()
}

/// The newest `limit` records, newest first.
pub fn list(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<JobRecord>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM jobs ORDER BY created_at_ms DESC, seq DESC LIMIT ?1"
    ))?;
    let rows = statement.query_map(params![limit as i64], from_row)?;
    rows.collect()
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let state: String = row.get(1)?;
    Ok(JobRecord {
        job_id: row.get(0)?,
        // A state this version does not know can only come from a newer coordinator; showing
        // it as failed is the safe reading.
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        created_at_ms: row.get::<_, i64>(2)? as u64,
        finished_at_ms: row.get::<_, Option<i64>>(3)?.map(|ms| ms as u64),
        inputs: row.get::<_, i64>(4)? as u64,
        done: row.get::<_, i64>(5)? as u64,
        failed: row.get::<_, i64>(6)? as u64,
        func_cpu: row.get(7)?,
        func_ram_gb: row.get(8)?,
        message: row.get(9)?,
    })
}
