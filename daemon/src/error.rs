//! Errors that stop the daemon from starting or serving (request errors live in `api::error`).

use std::path::PathBuf;

use thiserror::Error;

use crate::runtime::RuntimeError;

/// Why `run` failed.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// A file or directory of the state dir could not be prepared.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The host cannot give what the configuration requires (cgroups, inventory).
    #[error(transparent)]
    Sandbox(#[from] fleetmap_sandbox::SandboxError),
    /// The worker runtime could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The GPU inventory could not be opened (a bad `--test-only-fake-gpus` list).
    #[error("gpu inventory: {0}")]
    Gpu(String),
    /// The environment cache could not start.
    #[error("environment cache: {0}")]
    Env(#[from] crate::env::EnvError),
    /// The listener failed.
    #[error("listener: {0}")]
    Listener(std::io::Error),
}

impl DaemonError {
    /// An [`DaemonError::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
