//! Typed errors of the sandbox layer, carrying the path or id they concern.

use std::path::PathBuf;

use thiserror::Error;

/// What went wrong while reading the host or managing cgroups.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// A cgroup file or directory operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted (`write`, `mkdir`, `read`, `rmdir`).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The host cannot provide what the configuration requires.
    #[error("cgroups unavailable: {0}")]
    Unsupported(String),
    /// A request the allocator can never satisfy on this machine.
    #[error("{0}")]
    DoesNotFit(String),
    /// A slot id that is not allocated.
    #[error("unknown slot {0}")]
    UnknownSlot(String),
}
