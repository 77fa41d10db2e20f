//! The image worker containers start from: found in the engine, or pulled from its registry
//! when the node is configured to pull (`--docker-pull`, for cloud VMs that reach a registry;
//! without it, the image is built on the node with `fleetmap-base-image ensure`).

use bollard::models::ImageInspect;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use tracing::info;

use crate::runtime::RuntimeError;

/// The inspected base image `image`, pulled first when it is missing and `pull` is set.
pub async fn ensure(
    docker: &Docker,
    image: &str,
    pull: bool,
) -> Result<ImageInspect, RuntimeError> {
    match docker.inspect_image(image).await {
        Ok(found) => return Ok(found),
        Err(err) if !pull => {
            return Err(RuntimeError::Engine {
                action: "inspect image",
                reason: format!(
                    "{image} ({err}); build it with `fleetmap-base-image ensure`, or start fleetmapd with --docker-pull to pull it from its registry"
                ),
            })
        }
        Err(_) => {}
    }
    info!(image, "base image missing: pulling it");
    let options = CreateImageOptionsBuilder::default()
        .from_image(image)
        .build();
    let mut progress = docker.create_image(Some(options), None, None);
    while let Some(step) = progress.next().await {
        let step = step.map_err(|err| RuntimeError::Engine {
            action: "pull image",
            reason: format!(
                "{image} could not be pulled ({err}); check the registry in the image name and that this machine reaches it, or build the image here with `fleetmap-base-image ensure`"
            ),
        })?;
        if let Some(status) = step.status {
            tracing::debug!(image, status, "pull");
        }
    }
    docker
        .inspect_image(image)
        .await
        .map_err(|err| RuntimeError::Engine {
            action: "inspect image",
            reason: format!("{image} was pulled but cannot be inspected ({err})"),
        })
}
