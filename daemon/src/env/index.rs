//! The persisted list of built environments (`<state>/envs/index.json`), so a restarted
//! daemon still knows what it holds: written through a temporary file and a rename after
//! every change, read at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// One built environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Its key.
    pub key: String,
    /// Recipe kind (`packages`, `clone`, `dockerfile`).
    pub kind: String,
    /// Image tag (docker) or venv directory (process).
    pub location: String,
    /// Image id (docker), to tell a re-tagged image from ours.
    #[serde(default)]
    pub image_id: Option<String>,
    /// Python version inside.
    pub python: String,
    /// Disk use in bytes.
    pub size_bytes: u64,
    /// When it was built, seconds since the epoch.
    pub created_unix: u64,
    /// Last use, seconds since the epoch.
    pub last_used_unix: u64,
    /// Warnings of its build, repeated to every job that uses it.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The request's node-independent digest (`EnvSpec::recipe_digest`), reported to the
    /// coordinator; absent in indexes written before it existed.
    #[serde(default)]
    pub recipe_digest: Option<String>,
}

/// The index file's layout.
#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    entries: Vec<IndexEntry>,
}

/// Built environments by key.
#[derive(Debug, Default)]
pub struct Index {
    path: PathBuf,
    /// Entries by key.
    pub entries: BTreeMap<String, IndexEntry>,
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Index {
    /// Reads the index at `path` (empty when missing or unreadable, with a warning).
    pub fn load(path: &Path) -> Self {
        let entries = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<IndexFile>(&bytes) {
                Ok(file) => file.entries,
                Err(err) => {
                    warn!(path = %path.display(), cause = %err, "environment index unreadable; starting empty");
                    Vec::new()
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => {
                warn!(path = %path.display(), cause = %err, "cannot read the environment index; starting empty");
                Vec::new()
            }
        };
        Self {
            path: path.to_path_buf(),
            entries: entries.into_iter().map(|e| (e.key.clone(), e)).collect(),
        }
    }

    /// Writes the index (atomically); a failure is logged, the cache keeps working.
    pub fn save(&self) {
        let file = IndexFile {
            version: 1,
            entries: self.entries.values().cloned().collect(),
        };
        let tmp = self.path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(err) = written {
            warn!(path = %self.path.display(), cause = %err, "cannot write the environment index");
        }
    }

    /// Bytes all entries use.
    pub fn used_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.size_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_save_and_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.json");
        let mut index = Index::load(&path);
        assert!(index.entries.is_empty());
        let entry = IndexEntry {
            key: "k".into(),
            kind: "packages".into(),
            location: "/v".into(),
            image_id: None,
            python: "3.11.7".into(),
            size_bytes: 7,
            created_unix: 1,
            last_used_unix: 2,
            notes: vec!["n".into()],
            recipe_digest: Some("d".into()),
        };
        index.entries.insert("k".into(), entry.clone());
        index.save();
        let back = Index::load(&path);
        assert_eq!(back.entries.get("k"), Some(&entry));
        assert_eq!(back.used_bytes(), 7);
        std::fs::write(&path, b"garbage").expect("write");
        assert!(Index::load(&path).entries.is_empty());
    }
}
