//! The SQL side of the job store: schema (and its migration), pragmas and the statements the
//! writer runs.

use std::path::Path;

use agent_proto::{Frame, FrameKind, JobState};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::detached::Resumable;
use super::{now_ms, JobRecord, ResultPage, ResultRows, StoreError};

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
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    kind   INTEGER NOT NULL,
    body   BLOB    NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
";

const COLUMNS: &str =
    "job_id, state, created_at_ms, finished_at_ms, inputs, done, failed, func_cpu, func_ram_gb, message, stored_results";

/// Opens the database, applies pragmas and schema, and fails the jobs a previous run left open
/// except the detached ones it can resume, which it returns.
pub fn open(path: &Path) -> Result<(Connection, Vec<Resumable>), StoreError> {
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
    conn.execute_batch(super::logs::SCHEMA).map_err(wrap)?;
    conn.execute_batch(super::detached::SCHEMA).map_err(wrap)?;
    migrate(&conn).map_err(wrap)?;
    let resumable = super::detached::take_resumable(&conn).map_err(wrap)?;
    conn.execute(
        "UPDATE jobs SET state = ?1, finished_at_ms = ?2, message = ?3 WHERE state IN (?4, ?5)
         AND job_id NOT IN (SELECT job_id FROM detached_jobs)",
        params![
            JobState::Failed.as_str(),
            now_ms() as i64,
            "the coordinator restarted while the job ran; submit it again",
            JobState::Starting.as_str(),
            JobState::Running.as_str(),
        ],
    )
    .map_err(wrap)?;
    Ok((conn, resumable))
}

/// Adds the columns later versions introduced to a database an earlier version created.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_stored_results: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'stored_results'")?
        .exists([])?;
    if !has_stored_results {
        conn.execute_batch(
            "ALTER TABLE jobs ADD COLUMN stored_results INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    Ok(())
}

/// Result payload bytes stored.
pub fn results_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT COALESCE(SUM(length(body)), 0) FROM results",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map(|bytes| bytes as u64)
}

/// Appends result frames.
pub fn put_results(conn: &Connection, rows: &ResultRows) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(
        "INSERT OR REPLACE INTO results (job_id, seq, kind, body) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (i, frame) in rows.frames.iter().enumerate() {
        statement.execute(params![
            rows.job_id,
            (rows.first_seq + i as u64) as i64,
            frame.kind as u8,
            &frame.body[..],
        ])?;
    }
    Ok(())
}

/// Result frames of `job_id` from `from_seq` on: at least one if any is left, then up to
/// `max_bytes` of bodies.
pub fn result_page(
    conn: &Connection,
    job_id: &str,
    from_seq: u64,
    max_bytes: usize,
) -> rusqlite::Result<ResultPage> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, kind, body FROM results WHERE job_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT 4096",
    )?;
    let mut rows = statement.query(params![job_id, from_seq as i64])?;
    let mut page = ResultPage::default();
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let seq = row.get::<_, i64>(0)? as u64;
        if bytes >= max_bytes && !page.frames.is_empty() {
            page.next_seq = Some(seq);
            return Ok(page);
        }
        let kind: u8 = row.get(1)?;
        let body: Vec<u8> = row.get(2)?;
        bytes += body.len();
        // Only RESULTS and FAILURE frames are ever stored.
        let kind = FrameKind::from_u8(kind).unwrap_or(FrameKind::Failure);
        page.frames.push(Frame::new(kind, body));
        page.next_seq = Some(seq + 1);
    }
    if page.frames.len() < 4096 {
        page.next_seq = None;
    }
    Ok(page)
}

/// Deletes the results of `job_id` and clears its record's flag; the payload bytes freed.
pub fn delete_results(conn: &mut Connection, job_id: &str) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let freed: i64 = tx.query_row(
        "SELECT COALESCE(SUM(length(body)), 0) FROM results WHERE job_id = ?1",
        params![job_id],
        |row| row.get(0),
    )?;
    tx.execute("DELETE FROM results WHERE job_id = ?1", params![job_id])?;
    tx.execute(
        "UPDATE jobs SET stored_results = 0 WHERE job_id = ?1",
        params![job_id],
    )?;
    tx.commit()?;
    Ok(freed as u64)
}

/// Inserts or replaces a record.
pub fn put(conn: &Connection, record: &JobRecord) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(&format!(
        "INSERT INTO jobs ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (job_id) DO UPDATE SET
            state = excluded.state, created_at_ms = excluded.created_at_ms,
            finished_at_ms = excluded.finished_at_ms, inputs = excluded.inputs,
            done = excluded.done, failed = excluded.failed, func_cpu = excluded.func_cpu,
            func_ram_gb = excluded.func_ram_gb, message = excluded.message,
            stored_results = excluded.stored_results"
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
        record.stored_results,
    ])?;
    Ok(())
}

/// Deletes all but the newest [`KEEP_RECORDS`] records; records of jobs whose results are
/// stored stay until the results are deleted.
pub fn prune(conn: &mut Connection) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM logs WHERE job_id IN (SELECT job_id FROM jobs WHERE stored_results = 0
         AND seq <= (SELECT seq FROM jobs ORDER BY seq DESC LIMIT 1 OFFSET ?1))",
        params![KEEP_RECORDS],
    )?;
    let pruned = tx.execute(
        "DELETE FROM jobs WHERE stored_results = 0
         AND seq <= (SELECT seq FROM jobs ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
        params![KEEP_RECORDS],
    )?;
    tx.commit()?;
    Ok(pruned)
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
        stored_results: row.get(10)?,
    })
}
