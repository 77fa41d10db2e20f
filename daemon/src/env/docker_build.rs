//! Docker images of environments, built by the engine through bollard's build API (never the
//! `docker` CLI) from a context archive made with the `tar` crate.
//!
//! Every image ends with a probe step run in the image itself (`python3 -c "import
//! cloudpickle ..."`), so an image the worker cannot run in fails its build with a sentence
//! saying so, and the build log names the image's Python version. With a configured CA
//! bundle, the bundle is copied into the image and pip trusts it (`PIP_CERT`), after every
//! `FROM` of a user's Dockerfile and in generated ones.

use std::collections::HashMap;
use std::path::Path;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::{BuildImageOptionsBuilder, ListImagesOptions, RemoveImageOptions};
use bollard::Docker;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use super::build_log::BuildLog;
use super::cache::{Builder, Built};
use super::clone;
use super::disk;
use super::index::IndexEntry;
use super::key::KeyBase;
use super::recipe::{self, ContextEntry, Recipe};
use super::{EnvError, EnvTarget};

/// Repository of environment images (`fleetmap-env:<key prefix>`).
pub const IMAGE_REPOSITORY: &str = "fleetmap-env";
/// Label holding an image's environment key.
pub const LABEL_ENV_KEY: &str = "org.fleetmap.env-key";
/// Label naming the node whose daemon built the image.
pub const LABEL_ENV_NODE: &str = "org.fleetmap.env-node";
/// Marker the probe step prints before the image's Python version.
const PROBE_MARK: &str = "fleetmap-probe python";
/// Builds that may drop uninstallable requirements of a clone and retry.
const CLONE_ATTEMPTS: usize = 3;

/// Builds environment images on the local engine.
#[derive(Debug)]
pub struct DockerBuilder {
    docker: Docker,
    base_image: String,
    key_base: KeyBase,
    ca_bundle: Option<Vec<u8>>,
    node_id: String,
}

impl DockerBuilder {
    /// A builder on top of `base_image` (its id goes into every key).
    pub async fn new(
        docker: Docker,
        node_id: String,
        base_image: String,
        python: String,
        worker_sha: String,
        ca_bundle: Option<Vec<u8>>,
    ) -> Result<Self, EnvError> {
        let id = docker
            .inspect_image(&base_image)
            .await
            .map_err(|e| EnvError::Node(format!("inspect base image {base_image}: {e}")))?
            .id
            .unwrap_or_default();
        Ok(Self {
            docker,
            key_base: KeyBase {
                runtime: "docker".to_string(),
                base: id,
                python,
                worker: worker_sha,
            },
            base_image,
            ca_bundle,
            node_id,
        })
    }

    /// The tag of environment `key`'s image.
    pub fn tag(key: &str) -> String {
        format!("{IMAGE_REPOSITORY}:{}", &key[..key.len().min(32)])
    }

    /// One engine build of `dockerfile` with `context`; returns the image id.
    async fn build_once(
        &self,
        key: &str,
        dockerfile: &str,
        context: &[ContextEntry],
        log: &BuildLog,
    ) -> Result<String, EnvError> {
        let dockerfile = format!(
            "{dockerfile}\nRUN [\"python3\", \"-c\", \"import sys, cloudpickle; print('{PROBE_MARK}', sys.version.split()[0])\"]\n"
        );
        let archive = self.context_archive(&dockerfile, context)?;
        let tag = Self::tag(key);
        let labels = HashMap::from([
            (LABEL_ENV_KEY.to_string(), key.to_string()),
            (LABEL_ENV_NODE.to_string(), self.node_id.clone()),
        ]);
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(recipe::DOCKERFILE_IN_CONTEXT)
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .labels(&labels)
            .build();
        let mut stream = self.docker.build_image(
            options,
            None,
            Some(bollard::body_full(bytes::Bytes::from(archive))),
        );
        let mut failure = None;
        let mut image_id = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                        log.push(text);
                    }
                    if let Some(detail) = info.error_detail {
                        failure = detail.message.or(failure);
                    }
                    if let Some(aux) = info.aux {
                        image_id = aux.id.or(image_id);
                    }
                }
                Err(BollardError::DockerStreamError { error }) => failure = Some(error),
                Err(err) => {
                    return Err(EnvError::Node(format!(
                        "the docker engine's build failed: {err}"
                    )))
                }
            }
        }
        if let Some(message) = failure {
            if let Some(sentence) = self.disk_full(&message, &log.tail()).await {
                return Err(EnvError::BuildFailed(sentence));
            }
            let hint = if message.contains(PROBE_MARK) {
                "the image has no python3 that can import cloudpickle, which the worker needs; base it on fleetmap/base:1 or RUN pip install cloudpickle in it"
            } else {
                "fix the step that failed (see the build log above; verbose=True streams it)"
            };
            return Err(EnvError::BuildFailed(format!(
                "the environment image failed to build: {}; {hint}\n--- last lines of the build log ---\n{}",
                message.trim(),
                log.tail()
            )));
        }
        match image_id {
            Some(id) => Ok(id),
            None => self
                .docker
                .inspect_image(&tag)
                .await
                .ok()
                .and_then(|i| i.id)
                .ok_or_else(|| {
                    EnvError::Node(format!("the engine built {tag} but does not know it"))
                }),
        }
    }

    /// The sentence for a build that ran out of disk (ENOSPC in the engine's error or the
    /// log's tail): the engine's data root, its free space now, and what to change.
    async fn disk_full(&self, message: &str, tail: &str) -> Option<String> {
        if !disk::mentions_no_space(message) && !disk::mentions_no_space(tail) {
            return None;
        }
        let root = self
            .docker
            .info()
            .await
            .ok()
            .and_then(|info| info.docker_root_dir)
            .unwrap_or_else(|| "/var/lib/docker".to_string());
        let free = disk::free_now(Path::new(&root));
        Some(format!(
            "the node's disk is full: the environment image ran out of space in the Docker engine's data root {root} ({free}); the failed build's containers were removed. Free space on the node (docker system prune removes unused images and build cache), or lower fleetmapd --env-disk-budget-gb so fewer environment images are kept, then run the job again"
        ))
    }

    /// The build context: the Dockerfile, the context files and the CA bundle.
    fn context_archive(
        &self,
        dockerfile: &str,
        context: &[ContextEntry],
    ) -> Result<Vec<u8>, EnvError> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], mode: u32| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(mode);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, path, data)
        };
        let io = |e: std::io::Error| EnvError::Node(format!("cannot make the build context: {e}"));
        add(recipe::DOCKERFILE_IN_CONTEXT, dockerfile.as_bytes(), 0o644).map_err(io)?;
        if let Some(ca) = &self.ca_bundle {
            add(recipe::CA_IN_CONTEXT, ca, 0o644).map_err(io)?;
        }
        for file in context {
            add(&file.path, &file.data, file.mode).map_err(io)?;
        }
        tar.into_inner().map_err(io)
    }
}

/// The Python version the probe step printed.
fn probed_python(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(PROBE_MARK))
        .map(|v| v.trim().to_string())
}

impl Builder for DockerBuilder {
    fn key_base(&self) -> &KeyBase {
        &self.key_base
    }

    fn base_name(&self) -> String {
        self.base_image.clone()
    }

    fn default_satisfies(&self, _recipe: &Recipe) -> bool {
        // The base image holds only the worker's needs; a clone always gets an image.
        false
    }

    fn build<'a>(
        &'a self,
        key: &'a str,
        recipe: &'a Recipe,
        log: &'a BuildLog,
    ) -> BoxFuture<'a, Result<Built, EnvError>> {
        async move {
            let ca = self.ca_bundle.is_some();
            let mut notes = Vec::new();
            let id = match recipe {
                Recipe::NodeDefault => {
                    return Err(EnvError::Node("the node default needs no build".to_string()))
                }
                Recipe::Dockerfile { content, context } => {
                    let text = if ca { recipe::with_ca(content) } else { content.clone() };
                    self.build_once(key, &text, context, log).await?
                }
                Recipe::Requirements {
                    requirements,
                    clone,
                } => {
                    let mut requirements = requirements.clone();
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        let text =
                            recipe::requirements_dockerfile(&self.base_image, &requirements, ca);
                        match self.build_once(key, &text, &[], log).await {
                            Ok(id) => break id,
                            Err(EnvError::BuildFailed(message))
                                if *clone && attempt < CLONE_ATTEMPTS =>
                            {
                                let dropped = clone::uninstallable(&log.tail(), &requirements);
                                if dropped.is_empty() {
                                    return Err(EnvError::BuildFailed(message));
                                }
                                let note = format!(
                                    "the node could not install {} from the package index, so the cloned environment lacks {}; install {} from an index the nodes reach, or pass packages= explicitly",
                                    dropped.join(", "),
                                    if dropped.len() == 1 { "it" } else { "them" },
                                    if dropped.len() == 1 { "it" } else { "them" },
                                );
                                log.push(&format!("warning: {note}"));
                                notes.push(note);
                                requirements.retain(|r| !dropped.contains(r));
                            }
                            Err(err) => return Err(err),
                        }
                    }
                }
            };
            let inspect = self
                .docker
                .inspect_image(&id)
                .await
                .map_err(|e| EnvError::Node(format!("inspect built image {id}: {e}")))?;
            Ok(Built {
                location: Self::tag(key),
                image_id: Some(id),
                python: probed_python(&log.tail()).unwrap_or_default(),
                size_bytes: inspect.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                notes,
            })
        }
        .boxed()
    }

    fn exists<'a>(&'a self, entry: &'a IndexEntry) -> BoxFuture<'a, bool> {
        async move {
            match self.docker.inspect_image(&entry.location).await {
                Ok(image) => entry.image_id.is_none() || image.id == entry.image_id,
                Err(_) => false,
            }
        }
        .boxed()
    }

    fn remove<'a>(&'a self, entry: &'a IndexEntry) -> BoxFuture<'a, ()> {
        async move {
            let options = RemoveImageOptions {
                force: true,
                ..Default::default()
            };
            if let Err(err) = self
                .docker
                .remove_image(&entry.location, Some(options), None)
                .await
            {
                tracing::warn!(image = %entry.location, cause = %err, "cannot remove an environment image");
            }
        }
        .boxed()
    }

    fn remove_unindexed<'a>(&'a self, indexed: &'a [IndexEntry]) -> BoxFuture<'a, usize> {
        async move {
            let options = ListImagesOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![format!("{LABEL_ENV_NODE}={}", self.node_id)],
                )])),
                ..Default::default()
            };
            let Ok(images) = self.docker.list_images(Some(options)).await else {
                return 0;
            };
            let mut removed = 0;
            for image in images {
                if indexed
                    .iter()
                    .any(|e| e.image_id.as_deref() == Some(image.id.as_str()))
                {
                    continue;
                }
                let options = RemoveImageOptions {
                    force: true,
                    ..Default::default()
                };
                if self
                    .docker
                    .remove_image(&image.id, Some(options), None)
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
            removed
        }
        .boxed()
    }

    fn target(&self, entry: &IndexEntry) -> EnvTarget {
        EnvTarget::Image {
            key: entry.key.clone(),
            image: entry.location.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_line_names_the_python() {
        let log = format!("Step 3/3 : RUN ...\n{PROBE_MARK} 3.11.2\nSuccessfully built abc");
        assert_eq!(probed_python(&log).as_deref(), Some("3.11.2"));
        assert_eq!(probed_python("nothing"), None);
        assert_eq!(
            DockerBuilder::tag(&"a".repeat(64)).len(),
            IMAGE_REPOSITORY.len() + 33
        );
    }
}
