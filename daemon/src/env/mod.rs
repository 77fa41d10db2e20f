//! Environments: what a job's instances run in, built once per content hash and shared.
//!
//! A job's [`agent_proto::EnvSpec`] becomes a [`recipe::Recipe`] (node default, pip
//! requirements, or a Dockerfile with its context); the recipe and everything else that
//! decides the result (runtime, base image id or interpreter, Python version, worker code)
//! hash into an environment key ([`key`]). The [`cache::EnvCache`] maps keys to built
//! environments — Docker images ([`docker_build`]) on the `docker` runtime, venvs
//! ([`venv_build`]) on the `process` runtime — with single-flight builds, counters, an index
//! persisted in the state dir ([`index`]) and a least-recently-used disk budget.

pub mod build_log;
pub mod cache;
pub mod clone;
pub mod disk;
pub mod docker_build;
pub mod index;
pub mod key;
pub mod recipe;
pub mod venv_build;

use std::path::PathBuf;

use thiserror::Error;

pub use cache::{EnvCache, EnvConfig, EnvLease};

/// What a runtime needs to hand out workers of an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvTarget {
    /// The runtime's own environment (the node's worker Python, or the base image).
    NodeDefault,
    /// Containers of a built image.
    Image {
        /// The environment key.
        key: String,
        /// The image's tag (`fleetmap-env:<key prefix>`).
        image: String,
    },
    /// Workers run on a venv's interpreter.
    Venv {
        /// The environment key.
        key: String,
        /// The venv's `bin/python`.
        python: PathBuf,
    },
}

impl EnvTarget {
    /// The key of a built environment; `None` for the node default.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::NodeDefault => None,
            Self::Image { key, .. } | Self::Venv { key, .. } => Some(key),
        }
    }
}

/// Why an environment cannot be had; every message says what to change.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// The spec asks for something this node's runtime cannot build.
    #[error("{0}")]
    Unsupported(String),
    /// The spec is malformed (bad context path, bad requirement).
    #[error("{0}")]
    Invalid(String),
    /// The build ran and failed; the message carries the tail of the build log.
    #[error("{0}")]
    BuildFailed(String),
    /// The node could not do what the build needs (engine down, disk full).
    #[error("the node could not build the environment: {0}")]
    Node(String),
}
