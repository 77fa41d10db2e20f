//! The `api_keys` table of the coordinator's database: one row per key ever made, holding its
//! public id, its owner's name, the SHA-256 of the key and when it was made and revoked. The
//! `fleetmap-coordinator keys` commands write it; the running coordinator reads it.

use std::path::Path;

use rusqlite::{params, Connection};

use super::secret::NewKey;
use super::KeyError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    hash          BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys (name) WHERE revoked_at_ms IS NULL;
";

/// Longest key name.
const MAX_NAME: usize = 64;

/// A key as `keys list` shows it (never the key itself, which is not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public id (the 12 hex digits after `fmk_`).
    pub id: String,
    /// Who or what it is for.
    pub name: String,
    /// When it was made, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
}

/// A stored key as the verifier needs it.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// Who it is for.
    pub name: String,
    /// SHA-256 of the key.
    pub hash: Vec<u8>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// Opens the database at `path` (creating it and the table when `create`).
pub fn open(path: &Path, create: bool) -> Result<Connection, KeyError> {
    if !create && !path.exists() {
        return Err(KeyError::NoDatabase(path.to_owned()));
    }
    let wrap = |source| KeyError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(wrap)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(wrap)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(wrap)?;
    conn.execute_batch(SCHEMA).map_err(wrap)?;
    Ok(conn)
}

/// Makes a key for `name` and stores its hash; the caller shows the key once.
pub fn create(conn: &Connection, path: &Path, name: &str) -> Result<NewKey, KeyError> {
    check_name(name)?;
    let new = NewKey::generate().map_err(KeyError::Random)?;
    let inserted = conn.execute(
        "INSERT INTO api_keys (id, name, hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![new.id, name, new.hash.as_slice(), now_ms() as i64],
    );
    match inserted {
        Ok(_) => Ok(new),
        Err(rusqlite::Error::SqliteFailure(err, _))
            if err.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(KeyError::NameTaken(name.to_owned()))
        }
        Err(source) => Err(KeyError::Sqlite {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Every key, oldest first.
pub fn list(conn: &Connection, path: &Path) -> Result<Vec<KeyRecord>, KeyError> {
    let wrap = |source| KeyError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let mut statement = conn
        .prepare("SELECT id, name, created_at_ms, revoked_at_ms FROM api_keys ORDER BY created_at_ms, id")
        .map_err(wrap)?;
    let rows = statement
        .query_map([], |row| {
            Ok(KeyRecord {
                id: row.get(0)?,
                name: row.get(1)?,
                created_at_ms: row.get::<_, i64>(2)? as u64,
                revoked_at_ms: row.get::<_, Option<i64>>(3)?.map(|ms| ms as u64),
            })
        })
        .map_err(wrap)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(wrap)
}

/// Revokes the active key named `name_or_id` (its name, or its id); answers what was revoked.
pub fn revoke(conn: &Connection, path: &Path, name_or_id: &str) -> Result<KeyRecord, KeyError> {
    let wrap = |source| KeyError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let id = name_or_id
        .strip_prefix(super::secret::PREFIX)
        .unwrap_or(name_or_id);
    let changed = conn
        .execute(
            "UPDATE api_keys SET revoked_at_ms = ?1 WHERE revoked_at_ms IS NULL AND (name = ?2 OR id = ?3)",
            params![now_ms() as i64, name_or_id, id],
        )
        .map_err(wrap)?;
    if changed == 0 {
        return Err(KeyError::NoSuchKey(name_or_id.to_owned()));
    }
    list(conn, path)?
        .into_iter()
        .filter(|k| k.revoked_at_ms.is_some() && (k.name == name_or_id || k.id == id))
        .max_by_key(|k| k.revoked_at_ms)
        .ok_or_else(|| KeyError::NoSuchKey(name_or_id.to_owned()))
}

/// Every key by id (or only the key with id `only`), as the verifier caches them.
pub fn load(
    conn: &Connection,
    path: &Path,
    only: Option<&str>,
) -> Result<std::collections::HashMap<String, StoredKey>, KeyError> {
    let wrap = |source| KeyError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let mut statement = conn
        .prepare_cached(
            "SELECT id, name, hash, revoked_at_ms IS NOT NULL FROM api_keys WHERE ?1 IS NULL OR id = ?1",
        )
        .map_err(wrap)?;
    let rows = statement
        .query_map([only], |row| {
            Ok((
                row.get::<_, String>(0)?,
                StoredKey {
                    name: row.get(1)?,
                    hash: row.get(2)?,
                    revoked: row.get(3)?,
                },
            ))
        })
        .map_err(wrap)?;
    rows.collect::<Result<_, _>>().map_err(wrap)
}

/// Names are printed in lists and logs: short, without spaces or control characters.
fn check_name(name: &str) -> Result<(), KeyError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(allowed) {
        return Err(KeyError::BadName(name.to_owned()));
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_listed_and_revoked_by_name_or_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        assert!(matches!(open(&path, false), Err(KeyError::NoDatabase(_))));
        let conn = open(&path, true).expect("open");
        let alice = create(&conn, &path, "alice").expect("create");
        let bob = create(&conn, &path, "bob").expect("create");
        assert!(matches!(
            create(&conn, &path, "alice"),
            Err(KeyError::NameTaken(_))
        ));
        assert!(matches!(
            create(&conn, &path, "has space"),
            Err(KeyError::BadName(_))
        ));
        let listed = list(&conn, &path).expect("list");
        assert_eq!(listed.len(), 2);
        let stored = load(&conn, &path, None).expect("load");
        assert_eq!(stored[&alice.id].hash, alice.hash.to_vec());
        assert!(!stored[&alice.id].revoked);

        let revoked = revoke(&conn, &path, "alice").expect("revoke");
        assert_eq!(revoked.id, alice.id);
        assert!(revoke(&conn, &path, "alice").is_err(), "already revoked");
        revoke(&conn, &path, &bob.id).expect("revoke by id");
        let stored = load(&conn, &path, None).expect("load");
        assert!(stored.values().all(|k| k.revoked));
        // A revoked name can be given to a new key.
        create(&conn, &path, "alice").expect("the name is free again");
        let needle = alice.key.as_bytes();
        for entry in std::fs::read_dir(dir.path()).expect("dir") {
            let text = std::fs::read(entry.expect("entry").path()).expect("read");
            assert!(
                !text.windows(needle.len()).any(|w| w == needle),
                "the key itself is never stored"
            );
        }
    }
}
