//! What a running detached job needs to be resumed by a restarted coordinator: its spec, its
//! function and every INPUTS batch it received, kept until the job ends. A job whose inputs
//! all arrived (INPUTS_END) is resumable; at open, the jobs a previous run left running are
//! either resumable (kept running) or failed with a sentence, and rows of ended jobs go.

use agent_proto::JobState;
use rusqlite::{params, Connection};

use super::{sql, JobRecord};

/// The tables, created with the rest of the schema.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS detached_jobs (
    job_id          TEXT    PRIMARY KEY,
    spec            TEXT    NOT NULL,
    function        BLOB    NOT NULL,
    inputs_complete INTEGER NOT NULL DEFAULT 0,
    resumes         INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS detached_inputs (
    job_id TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    body   BLOB    NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
";

/// A write about a running detached job.
#[derive(Debug)]
pub enum DetachedWrite {
    /// The job was admitted: its spec (JSON) and function.
    Job {
        /// The job.
        job_id: String,
        /// `JobSpec` as JSON.
        spec: String,
        /// The pickled function.
        function: bytes::Bytes,
    },
    /// One INPUTS batch (the frame's body).
    Inputs {
        /// The job.
        job_id: String,
        /// Arrival order.
        seq: u64,
        /// The INPUTS frame body.
        body: bytes::Bytes,
    },
    /// INPUTS_END arrived: the job can be resumed.
    InputsComplete(String),
    /// The job was resumed once more.
    Resumed(String),
    /// The job ended: its spec, function and inputs go.
    Forget(String),
}

/// A detached job a previous coordinator left running with all its inputs stored.
#[derive(Debug, Clone)]
pub struct Resumable {
    /// Its record as stored (state `running` or `starting`).
    pub record: JobRecord,
    /// `JobSpec` as JSON.
    pub spec: String,
    /// The pickled function.
    pub function: bytes::Bytes,
    /// Times it was resumed before.
    pub resumes: u32,
    /// Payload bytes of its stored inputs (reserved in the result budget).
    pub input_bytes: u64,
}

/// Applies one write.
pub fn put(conn: &Connection, write: &DetachedWrite) -> rusqlite::Result<()> {
    match write {
        DetachedWrite::Job {
            job_id,
            spec,
            function,
        } => conn
            .prepare_cached(
                "INSERT OR REPLACE INTO detached_jobs (job_id, spec, function) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![job_id, spec, &function[..]])
            .map(drop),
        DetachedWrite::Inputs { job_id, seq, body } => conn
            .prepare_cached(
                "INSERT OR REPLACE INTO detached_inputs (job_id, seq, body) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![job_id, *seq as i64, &body[..]])
            .map(drop),
        DetachedWrite::InputsComplete(job_id) => conn
            .prepare_cached("UPDATE detached_jobs SET inputs_complete = 1 WHERE job_id = ?1")?
            .execute(params![job_id])
            .map(drop),
        DetachedWrite::Resumed(job_id) => conn
            .prepare_cached("UPDATE detached_jobs SET resumes = resumes + 1 WHERE job_id = ?1")?
            .execute(params![job_id])
            .map(drop),
        DetachedWrite::Forget(job_id) => {
            conn.prepare_cached("DELETE FROM detached_inputs WHERE job_id = ?1")?
                .execute(params![job_id])?;
            conn.prepare_cached("DELETE FROM detached_jobs WHERE job_id = ?1")?
                .execute(params![job_id])
                .map(drop)
        }
    }
}

/// Payload bytes of stored inputs (they count against the result budget).
pub fn inputs_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT COALESCE(SUM(length(body)), 0) FROM detached_inputs",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map(|bytes| bytes as u64)
}

/// At open, before jobs left running are failed: the resumable ones (their records stay
/// running), and the rows of every other job removed.
pub fn take_resumable(conn: &Connection) -> rusqlite::Result<Vec<Resumable>> {
    let open = [JobState::Starting.as_str(), JobState::Running.as_str()];
    conn.execute(
        "DELETE FROM detached_jobs WHERE job_id NOT IN
            (SELECT job_id FROM jobs WHERE state IN (?1, ?2)) OR inputs_complete = 0",
        params![open[0], open[1]],
    )?;
    conn.execute(
        "DELETE FROM detached_inputs WHERE job_id NOT IN (SELECT job_id FROM detached_jobs)",
        [],
    )?;
    let mut statement = conn.prepare(
        "SELECT job_id, spec, function, resumes,
            (SELECT COALESCE(SUM(length(body)), 0) FROM detached_inputs i WHERE i.job_id = d.job_id)
         FROM detached_jobs d",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, Vec<u8>>(2)?,
            row.get::<_, i64>(3)?,
            row.get::<_, i64>(4)?,
        ))
    })?;
    let mut resumable = Vec::new();
    for row in rows {
        let (job_id, spec, function, resumes, input_bytes) = row?;
        if let Some(record) = sql::get(conn, &job_id)? {
            resumable.push(Resumable {
                record,
                spec,
                function: function.into(),
                resumes: u32::try_from(resumes).unwrap_or(u32::MAX),
                input_bytes: u64::try_from(input_bytes).unwrap_or(0),
            });
        }
    }
    Ok(resumable)
}

/// The stored INPUTS bodies of `job_id`, in arrival order.
pub fn inputs(conn: &Connection, job_id: &str) -> rusqlite::Result<Vec<bytes::Bytes>> {
    let mut statement =
        conn.prepare_cached("SELECT body FROM detached_inputs WHERE job_id = ?1 ORDER BY seq")?;
    let rows = statement.query_map(params![job_id], |row| row.get::<_, Vec<u8>>(0))?;
    rows.map(|row| row.map(bytes::Bytes::from)).collect()
}
