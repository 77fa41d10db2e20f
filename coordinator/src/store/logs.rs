//! Jobs' output logs: what the function printed (stdout, stderr, by input) and the nodes'
//! environment build log, kept in the `logs` table so `fleetmap logs JOB` can show them after
//! the job ended. Each job keeps at most a configured number of text bytes; past it, one line
//! says what was not kept. A job's log goes with its record when old records are pruned.

use agent_proto::{Output, OutputStream, NO_INDEX};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

/// Log entries read per page.
pub const PAGE_ENTRIES: usize = 1000;

/// One chunk of a job's output, as `GET /v1/jobs/{id}/logs` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Position in the job's log, from 0.
    pub seq: u64,
    /// The input that printed it; `None` for text outside any input (build log, notes).
    pub index: Option<u64>,
    /// `stdout`, `stderr` or `build`.
    pub stream: String,
    /// When the coordinator received it, ms since the Unix epoch.
    pub at_ms: u64,
    /// The text (invalid UTF-8 replaced).
    pub text: String,
}

/// Log entries of one job to append, from `first_seq` on.
#[derive(Debug)]
pub struct LogRows {
    /// The job.
    pub job_id: String,
    /// Sequence number of the first entry.
    pub first_seq: u64,
    /// The entries' (index, stream, at_ms, text).
    pub entries: Vec<(u64, OutputStream, u64, bytes::Bytes)>,
}

/// One page of a job's log.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LogPage {
    /// The entries, in order.
    pub entries: Vec<LogEntry>,
    /// Sequence number to ask for next; `None` when this page holds the last entry stored now.
    pub next_seq: Option<u64>,
}

/// What a running job keeps of its output: counts the bytes and stops at the cap.
#[derive(Debug)]
pub struct LogKeeper {
    cap: u64,
    kept: u64,
    next_seq: u64,
    full: bool,
}

impl LogKeeper {
    /// Keeps at most `cap` bytes of text (0 keeps nothing).
    pub fn new(cap: u64) -> Self {
        Self {
            cap,
            kept: 0,
            next_seq: 0,
            full: cap == 0,
        }
    }

    /// The rows to store for `output` received at `at_ms`: the output itself while it fits,
    /// then once a line saying the rest is not kept, then nothing.
    pub fn admit(&mut self, job_id: &str, output: &Output, at_ms: u64) -> Option<LogRows> {
        if self.full {
            return None;
        }
        let len = output.text.len() as u64;
        let entry = if self.kept + len <= self.cap {
            self.kept += len;
            (output.index, output.stream, at_ms, output.text.clone())
        } else {
            self.full = true;
            let note = format!(
                "[fleetmap: the job printed more than {} bytes; the rest is not kept (raise the coordinator's --log-bytes-per-job)]\n",
                self.cap
            );
            (NO_INDEX, OutputStream::Stderr, at_ms, note.into())
        };
        let rows = LogRows {
            job_id: job_id.to_owned(),
            first_seq: self.next_seq,
            entries: vec![entry],
        };
        self.next_seq += 1;
        Some(rows)
    }
}

/// The table, created with the rest of the schema.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS logs (
    job_id TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    input  INTEGER,
    stream INTEGER NOT NULL,
    at_ms  INTEGER NOT NULL,
    text   BLOB    NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
";

/// Appends log entries.
pub fn put(conn: &Connection, rows: &LogRows) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(
        "INSERT OR REPLACE INTO logs (job_id, seq, input, stream, at_ms, text)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (i, (index, stream, at_ms, text)) in rows.entries.iter().enumerate() {
        let input = (*index != NO_INDEX).then_some(*index as i64);
        statement.execute(params![
            rows.job_id,
            (rows.first_seq + i as u64) as i64,
            input,
            *stream as u8,
            *at_ms as i64,
            &text[..],
        ])?;
    }
    Ok(())
}

/// Up to [`PAGE_ENTRIES`] entries of `job_id` from `from_seq` on, those of input `input` only
/// when it is given.
pub fn page(
    conn: &Connection,
    job_id: &str,
    from_seq: u64,
    input: Option<u64>,
) -> rusqlite::Result<LogPage> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, input, stream, at_ms, text FROM logs
         WHERE job_id = ?1 AND seq >= ?2 AND (?3 IS NULL OR input = ?3)
         ORDER BY seq LIMIT ?4",
    )?;
    let rows = statement.query_map(
        params![
            job_id,
            from_seq as i64,
            input.map(|i| i as i64),
            PAGE_ENTRIES as i64
        ],
        |row| {
            let stream: u8 = row.get(2)?;
            let text: Vec<u8> = row.get(4)?;
            Ok(LogEntry {
                seq: row.get::<_, i64>(0)? as u64,
                index: row.get::<_, Option<i64>>(1)?.map(|i| i as u64),
                stream: OutputStream::from_u8(stream)
                    .map_or("unknown", OutputStream::as_str)
                    .to_owned(),
                at_ms: row.get::<_, i64>(3)? as u64,
                text: String::from_utf8_lossy(&text).into_owned(),
            })
        },
    )?;
    let entries = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    let next_seq = if entries.len() == PAGE_ENTRIES {
        entries.last().map(|e| e.seq + 1)
    } else {
        None
    };
    Ok(LogPage { entries, next_seq })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(index: u64, text: &str) -> Output {
        Output {
            index,
            stream: OutputStream::Stdout,
            text: bytes::Bytes::copy_from_slice(text.as_bytes()),
        }
    }

    #[test]
    fn the_keeper_stops_at_its_cap_with_one_note() {
        let mut keeper = LogKeeper::new(10);
        let first = keeper.admit("j", &output(0, "12345"), 1).expect("fits");
        assert_eq!(first.first_seq, 0);
        let second = keeper
            .admit("j", &output(1, "12345"), 2)
            .expect("fits exactly");
        assert_eq!(second.first_seq, 1);
        let note = keeper.admit("j", &output(2, "x"), 3).expect("the note");
        assert_eq!(note.first_seq, 2);
        let (index, stream, _, text) = &note.entries[0];
        assert_eq!(*index, NO_INDEX);
        assert_eq!(*stream, OutputStream::Stderr);
        assert!(String::from_utf8_lossy(text).contains("--log-bytes-per-job"));
        assert!(keeper.admit("j", &output(3, "y"), 4).is_none());
        assert!(LogKeeper::new(0).admit("j", &output(0, "a"), 1).is_none());
    }

    #[test]
    fn entries_are_paged_in_order_and_filtered_by_input() {
        let conn = Connection::open_in_memory().expect("opens");
        conn.execute_batch(SCHEMA).expect("schema");
        let mut keeper = LogKeeper::new(u64::MAX);
        let total = PAGE_ENTRIES + 5;
        for i in 0..total {
            let index = if i == 0 { NO_INDEX } else { (i % 3) as u64 };
            let rows = keeper
                .admit("j", &output(index, &format!("line {i}\n")), 7)
                .expect("kept");
            put(&conn, &rows).expect("put");
        }
        let first = page(&conn, "j", 0, None).expect("page");
        assert_eq!(first.entries.len(), PAGE_ENTRIES);
        assert_eq!(first.entries[0].index, None);
        assert_eq!(first.entries[0].stream, "stdout");
        assert_eq!(first.entries[1].text, "line 1\n");
        let next = first.next_seq.expect("more");
        let rest = page(&conn, "j", next, None).expect("page");
        assert_eq!(rest.entries.len(), 5);
        assert_eq!(rest.next_seq, None);
        assert_eq!(rest.entries[4].text, format!("line {}\n", total - 1));
        let only = page(&conn, "j", 0, Some(2)).expect("page");
        assert!(!only.entries.is_empty());
        assert!(only.entries.iter().all(|e| e.index == Some(2)));
        assert!(page(&conn, "other", 0, None)
            .expect("page")
            .entries
            .is_empty());
    }
}
