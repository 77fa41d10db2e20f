//! The Docker engine, through bollard: connecting (with API version negotiation, since the
//! engines fleetmap meets may be older than the client), inspecting a tag, and importing a root
//! filesystem as a streamed tar body.

use std::collections::HashMap;
use std::env;
use std::path::Path;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use tracing::{debug, info};

use crate::channel;
use crate::error::Error;
use crate::image_ref::ImageRef;
use crate::tarball::{self, ArchiveSummary};

/// Where bollard's local defaults connect when DOCKER_HOST names no unix socket.
pub const DEFAULT_ADDRESS: &str = "unix:///var/run/docker.sock";

/// Per-request timeout: an import of a few hundred MB on a slow disk outlasts bollard's 2 min.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A connected engine.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    address: String,
}

/// A tagged image as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageState {
    /// The image id (`sha256:...`).
    pub id: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Its size in bytes, as the engine reports it.
    pub size: Option<i64>,
}

/// The address `Docker::connect_with_local_defaults` uses, for messages.
pub fn local_address() -> String {
    env::var("DOCKER_HOST")
        .ok()
        .filter(|h| h.starts_with("unix://"))
        .unwrap_or_else(|| DEFAULT_ADDRESS.to_owned())
}

impl Engine {
    /// Connects with bollard's local defaults, checks that the engine answers, and agrees on an
    /// API version both sides speak.
    pub async fn connect() -> Result<Self, Error> {
        let address = local_address();
        let unreachable = |source| Error::DockerUnreachable {
            address: address.clone(),
            source,
        };
        let docker = Docker::connect_with_local_defaults()
            .map_err(unreachable)?
            .with_timeout(REQUEST_TIMEOUT);
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        debug!(address = %address, api = ?docker.client_version(), "connected to the Docker engine");
        Ok(Self { docker, address })
    }

    /// The bollard client, for callers that go on to run containers.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The engine's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The image `reference` names, or `None` when there is none.
    pub async fn inspect(&self, reference: &str) -> Result<Option<ImageState>, Error> {
        match self.docker.inspect_image(reference).await {
            Ok(image) => Ok(Some(ImageState {
                id: image.id.unwrap_or_default(),
                labels: image.config.and_then(|c| c.labels).unwrap_or_default(),
                size: image.size,
            })),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(source) => Err(Error::Docker {
                action: "inspect",
                image: reference.to_owned(),
                source,
            }),
        }
    }

    /// Imports the tree at `rootfs` as `image`, applying `changes` (Dockerfile instructions).
    /// The tar stream is written by a blocking thread and sent as the request body in bounded
    /// chunks; a failure to read the tree aborts the upload, so no truncated image is tagged.
    pub async fn import_rootfs(
        &self,
        rootfs: &Path,
        image: &ImageRef,
        changes: Vec<String>,
    ) -> Result<ArchiveSummary, Error> {
        let (writer, body) = channel::channel();
        let aborter = writer.aborter();
        let root = rootfs.to_path_buf();
        let producer = tokio::task::spawn_blocking(move || {
            let written = tarball::write_tree(&root, writer)
                .and_then(|(writer, summary)| writer.finish().map(|()| summary));
            if let Err(err) = &written {
                aborter.abort(err);
            }
            written
        });
        let options = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(&image.repository)
            .tag(&image.tag)
            .changes(changes)
            .build();
        info!(image = %image, rootfs = %rootfs.display(), "importing the root filesystem into Docker");
        let mut progress =
            self.docker
                .create_image(Some(options), Some(bollard::body_try_stream(body)), None);
        let mut imported = Ok(());
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => debug!(status = ?info.status, "import progress"),
                Err(source) => {
                    imported = Err(source);
                    break;
                }
            }
        }
        // Dropping the request closes the body, so a producer still writing stops.
        drop(progress);
        let archived = producer.await.map_err(|source| Error::Join {
            what: "archiving the root filesystem",
            source,
        })?;
        match (archived, imported) {
            (Ok(summary), Ok(())) => Ok(summary),
            (Err(source), Ok(())) => Err(Error::Archive {
                root: rootfs.to_owned(),
                source,
            }),
            // A closed upload is the consequence of the engine's error, not its cause.
            (Err(source), Err(_)) if source.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(Error::Archive {
                    root: rootfs.to_owned(),
                    source,
                })
            }
            (_, Err(source)) => Err(Error::Docker {
                action: "import",
                image: image.to_string(),
                source,
            }),
        }
    }
}
