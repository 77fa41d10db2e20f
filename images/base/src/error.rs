//! The one error type of the crate: every variant says what failed, on which path or image,
//! and (where a person can act) what to change.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while checking for, building or importing the base image.
#[derive(Debug, Error)]
pub enum Error {
    /// debootstrap and chroot need root.
    #[error("building the base image needs root (for debootstrap and chroot); run it as root")]
    NotRoot,

    /// A host program the build runs is not installed.
    #[error("{tool} is not installed (looked in PATH and {searched}); install it with `apt-get install {package}`")]
    ToolMissing {
        /// The program looked for.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
        /// The extra directories searched besides PATH.
        searched: String,
    },

    /// The Docker engine did not answer.
    #[error("cannot reach the Docker engine at {address} ({source}); start dockerd or point DOCKER_HOST at it")]
    DockerUnreachable {
        /// The address tried (`unix:///var/run/docker.sock` unless DOCKER_HOST says otherwise).
        address: String,
        /// What the client saw.
        source: bollard::errors::Error,
    },

    /// A Docker API call failed after the engine was reached.
    #[error("docker {action} of {image} failed: {source}")]
    Docker {
        /// The API call (`inspect`, `import`, ...).
        action: &'static str,
        /// The image reference or id concerned.
        image: String,
        /// What the engine answered.
        source: bollard::errors::Error,
    },

    /// The import finished but the tag does not carry the expected label.
    #[error("the imported image {image} carries {label}={found:?}, expected {expected:?}")]
    LabelMismatch {
        /// The image reference.
        image: String,
        /// The label key.
        label: String,
        /// What the engine reports.
        found: Option<String>,
        /// What the recipe says.
        expected: String,
    },

    /// An image reference given with `--tag` cannot be used.
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A build step (debootstrap, pip, ...) exited unsuccessfully.
    #[error("{step} failed ({status}): {tail}; full log in {}", log.display())]
    StepFailed {
        /// The step, as a person would name it.
        step: String,
        /// Its exit status.
        status: String,
        /// The last meaningful line of its output.
        tail: String,
        /// Where its whole output is.
        log: PathBuf,
    },

    /// pip could not verify PyPI's certificate: this network intercepts TLS.
    #[error("pip could not verify the package index's TLS certificate (this network may intercept TLS); pass --ca-bundle with a complete CA bundle that trusts it, such as the host's /etc/ssl/certs/ca-certificates.crt (full log in {})", log.display())]
    UntrustedTls {
        /// Where pip's whole output is.
        log: PathBuf,
    },

    /// The CA bundle given with `--ca-bundle` cannot be used.
    #[error("cannot use the CA bundle {}: {source}", path.display())]
    CaBundle {
        /// The bundle path as given.
        path: PathBuf,
        /// Why it could not be read.
        source: io::Error,
    },

    /// The finished root filesystem does not hold a working Python with cloudpickle.
    #[error("the root filesystem {} is broken: {detail}", rootfs.display())]
    BrokenRootfs {
        /// The root filesystem checked.
        rootfs: PathBuf,
        /// What the check printed or why it failed.
        detail: String,
    },

    /// Writing the tar stream of the root filesystem failed.
    #[error("archiving {} failed: {source}", root.display())]
    Archive {
        /// The directory archived.
        root: PathBuf,
        /// The underlying error (the first path that failed is in its message).
        source: io::Error,
    },

    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`create directory`, `remove`, ...).
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },

    /// A blocking task panicked or was cancelled.
    #[error("{what} did not finish: {source}")]
    Join {
        /// What the task was doing.
        what: &'static str,
        /// The join error.
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// Wraps an I/O error with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}
