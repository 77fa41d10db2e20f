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

impl SandboxError {
    /// An [`SandboxError::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// An [`SandboxError::Io`] from a cgroups-rs error: the OS error it wraps when there is
    /// one (so `EBUSY` and friends stay recognisable), else the whole error as the source.
    pub(crate) fn cgroups(
        op: &'static str,
        path: impl Into<PathBuf>,
        err: cgroups_rs::error::Error,
    ) -> Self {
        use std::error::Error as _;
        let os = err
            .source()
            .and_then(|cause| cause.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error);
        let source = match os {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::other(err),
        };
        Self::io(op, path, source)
    }
}
