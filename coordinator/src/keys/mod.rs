//! Client API keys: made, listed and revoked by `fleetmap-coordinator keys` (which writes the
//! `api_keys` table of the coordinator's database), checked on every client route by
//! [`ApiKeys`] once the coordinator runs with `--require-api-keys`. Only hashes are stored
//! ([`secret`] says why SHA-256 is enough); comparisons are constant-time.

pub mod secret;
pub mod table;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use thiserror::Error;
use tracing::warn;

use table::StoredKey;

/// How long a revocation may take to reach a running coordinator (a new key is looked up the
/// first time it is used, so it works at once).
pub const REFRESH: Duration = Duration::from_secs(1);

/// What went wrong with a key or the key table.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The request carries no `Authorization: Bearer` header.
    #[error("this coordinator needs an API key: pass api_key= to remote_parallel_map, set FLEETMAP_API_KEY or run `fleetmap login`; its operator makes keys with `fleetmap-coordinator keys create --name NAME`")]
    Missing,
    /// The credential is not a key of this coordinator.
    #[error("the API key sent is not valid on this coordinator (unknown or mistyped); check FLEETMAP_API_KEY, api_key= or the file `fleetmap login` wrote, or ask the operator for a key")]
    Invalid,
    /// The key was revoked.
    #[error("the API key {id} has been revoked; ask the coordinator's operator for a new one and run `fleetmap login` with it")]
    Revoked {
        /// Its public id.
        id: String,
    },
    /// The key table could not be read or written.
    #[error("the API key table in {path} failed: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// `keys list` / `keys revoke` on a database that does not exist.
    #[error("there is no coordinator database at {0}; give the path the coordinator runs with (its --db)")]
    NoDatabase(PathBuf),
    /// A name that cannot be a key's name.
    #[error("the key name {0:?} must be 1 to 64 letters, digits or . _ - @")]
    BadName(String),
    /// An active key already has the name.
    #[error("an active key is already named {0}; revoke it first or pick another name")]
    NameTaken(String),
    /// `keys revoke` found nothing to revoke.
    #[error(
        "no active key is named {0} or has that id; `fleetmap-coordinator keys list` shows them"
    )]
    NoSuchKey(String),
    /// A key could not be made.
    #[error(transparent)]
    Random(#[from] secret::RandomError),
}

impl KeyError {
    /// Whether the caller's credential is at fault (401), not the coordinator (500).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Missing | Self::Invalid | Self::Revoked { .. })
    }
}

/// The checker a keyed coordinator runs every client request through. The table is cached
/// and read again at most every [`REFRESH`], so a revocation takes effect within a second.
#[derive(Debug)]
pub struct ApiKeys {
    path: PathBuf,
    // A std mutex: nothing awaits while it is held (a reload is one small indexed read).
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    conn: Option<Connection>,
    loaded: Option<Instant>,
    keys: HashMap<String, StoredKey>,
}

impl ApiKeys {
    /// A checker reading the keys of the database at `path` (its table is made if missing).
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        let conn = table::open(path, true)?;
        let keys = table::load(&conn, path, None)?;
        if keys.values().all(|k| k.revoked) {
            warn!(db = %path.display(), "API keys are required but none is active: every client will be refused until `fleetmap-coordinator keys create` makes one");
        }
        Ok(Self {
            path: path.to_owned(),
            cache: Mutex::new(Cache {
                conn: Some(conn),
                loaded: Some(Instant::now()),
                keys,
            }),
        })
    }

    /// Checks an `Authorization` header value; answers the key's owner.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<String, KeyError> {
        let sent = authorization
            .and_then(agent_proto::auth::bearer)
            .ok_or(KeyError::Missing)?;
        let id = secret::key_id(sent).ok_or(KeyError::Invalid)?;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.loaded.is_none_or(|at| at.elapsed() >= REFRESH) {
            self.reload(&mut cache, None)?;
        } else if !cache.keys.contains_key(id) {
            // One primary-key lookup; ids that do not exist are not remembered, so made-up
            // ids cannot grow the cache.
            self.reload(&mut cache, Some(id))?;
        }
        let stored = cache.keys.get(id).ok_or(KeyError::Invalid)?;
        if !secret::matches(sent, &stored.hash) {
            return Err(KeyError::Invalid);
        }
        if stored.revoked {
            return Err(KeyError::Revoked { id: id.to_owned() });
        }
        Ok(stored.name.clone())
    }

    /// Reads every key again, or only the key `only` names.
    fn reload(&self, cache: &mut Cache, only: Option<&str>) -> Result<(), KeyError> {
        if cache.conn.is_none() {
            cache.conn = Some(table::open(&self.path, true)?);
        }
        let loaded = match &cache.conn {
            Some(conn) => table::load(conn, &self.path, only),
            None => return Ok(()),
        };
        match loaded {
            Ok(keys) if only.is_some() => {
                cache.keys.extend(keys);
                Ok(())
            }
            Ok(keys) => {
                cache.keys = keys;
                cache.loaded = Some(Instant::now());
                Ok(())
            }
            Err(err) => {
                // Reopen next time; refuse rather than serve on a table we cannot read.
                cache.conn = None;
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_pass_until_revoked_and_everything_else_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let checker = ApiKeys::open(&path).expect("open");
        // Made by another process (the CLI) after the coordinator started.
        let conn = table::open(&path, false).expect("open");
        let alice = table::create(&conn, &path, "alice").expect("create");
        let header = format!("Bearer {}", alice.key);
        assert_eq!(
            checker
                .verify(Some(header.as_bytes()))
                .expect("a new key is seen at once"),
            "alice"
        );
        assert!(matches!(checker.verify(None), Err(KeyError::Missing)));
        assert!(matches!(
            checker.verify(Some(b"Bearer nonsense")),
            Err(KeyError::Invalid)
        ));
        let mut forged = alice.key.clone();
        forged.pop();
        forged.push(if alice.key.ends_with('0') { '1' } else { '0' });
        assert!(matches!(
            checker.verify(Some(format!("Bearer {forged}").as_bytes())),
            Err(KeyError::Invalid)
        ));

        table::revoke(&conn, &path, "alice").expect("revoke");
        let deadline = Instant::now() + REFRESH * 3;
        loop {
            match checker.verify(Some(header.as_bytes())) {
                Err(KeyError::Revoked { id }) => {
                    assert_eq!(id, alice.id);
                    break;
                }
                Ok(_) => assert!(Instant::now() < deadline, "revocation never seen"),
                Err(other) => panic!("unexpected {other}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(KeyError::Missing.is_refusal());
        assert!(!KeyError::NoSuchKey("x".into()).is_refusal());
    }
}
