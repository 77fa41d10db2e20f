//! The two verbs: `ensure` (build and import the base image unless the tag already carries the
//! current recipe's hash) and `status` (what the tag holds now).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::info;

use crate::customize;
use crate::engine::{Engine, ImageState};
use crate::error::Error;
use crate::host::HostTools;
use crate::image_ref::ImageRef;
use crate::mounts::MOUNTINFO;
use crate::recipe::{Recipe, DEFAULT_MIRROR, LABEL_RECIPE_HASH};
use crate::rootfs::RootfsBuilder;
use crate::workdir::WorkDir;

/// The work directory used when none is given.
pub const DEFAULT_WORK_DIR: &str = "/var/cache/fleetmap/base-image";

/// What `ensure` is asked to do.
#[derive(Debug, Clone)]
pub struct EnsureOptions {
    /// The recipe to build.
    pub recipe: Recipe,
    /// Where root filesystems, the package cache and logs live (see [`crate::workdir`]).
    pub work_dir: PathBuf,
    /// An extra CA bundle pip trusts during the build (default: none).
    pub ca_bundle: Option<PathBuf>,
    /// The image reference; the recipe's default tag when `None`.
    pub tag: Option<String>,
    /// The Debian mirror.
    pub mirror: String,
    /// The mount table, read before removing half-built trees.
    pub mountinfo: PathBuf,
}

impl EnsureOptions {
    /// The standard recipe, built in `work_dir`, with every other setting at its default.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            recipe: Recipe::standard(),
            work_dir: work_dir.into(),
            ca_bundle: None,
            tag: None,
            mirror: DEFAULT_MIRROR.to_owned(),
            mountinfo: PathBuf::from(MOUNTINFO),
        }
    }

    /// The image reference `ensure` works on.
    pub fn image(&self) -> Result<ImageRef, Error> {
        ImageRef::parse(
            &self
                .tag
                .clone()
                .unwrap_or_else(|| self.recipe.default_tag()),
        )
    }
}

/// What `ensure` did.
#[derive(Debug, Clone)]
pub struct EnsureReport {
    /// The image reference.
    pub image: ImageRef,
    /// The image as the engine reports it after `ensure`.
    pub state: ImageState,
    /// The recipe hash the image carries.
    pub recipe_hash: String,
    /// Whether an import happened (false: the tag already held this recipe's image).
    pub imported: bool,
    /// Whether a root filesystem was built (false: none was needed, or one was reused).
    pub built_rootfs: bool,
    /// How long `ensure` took.
    pub elapsed: Duration,
}

/// What `status` found.
#[derive(Debug, Clone)]
pub struct StatusReport {
    /// The image reference.
    pub image: ImageRef,
    /// The hash of the recipe this program builds.
    pub expected_hash: String,
    /// The image under the tag, if any.
    pub state: Option<ImageState>,
}

impl StatusReport {
    /// The recipe hash label of the image under the tag.
    pub fn found_hash(&self) -> Option<&str> {
        self.state
            .as_ref()
            .and_then(|s| s.labels.get(LABEL_RECIPE_HASH))
            .map(String::as_str)
    }

    /// Whether the tag holds an image of the current recipe.
    pub fn is_current(&self) -> bool {
        self.found_hash() == Some(self.expected_hash.as_str())
    }
}

/// Makes sure the engine has the base image of `options.recipe` under the tag: nothing happens
/// when the tag already carries the recipe's hash label; otherwise the root filesystem is built
/// (or reused from the work directory) and imported.
pub async fn ensure(engine: &Engine, options: &EnsureOptions) -> Result<EnsureReport, Error> {
    let started = Instant::now();
    let image = options.image()?;
    if let Some(bundle) = &options.ca_bundle {
        customize::check_ca_bundle(bundle)?;
    }
    let hash = options.recipe.content_hash();
    let current = |state: Option<ImageState>| {
        state.filter(|s| s.labels.get(LABEL_RECIPE_HASH) == Some(&hash))
    };
    let report = |state, imported, built_rootfs| EnsureReport {
        image: image.clone(),
        state,
        recipe_hash: hash.clone(),
        imported,
        built_rootfs,
        elapsed: started.elapsed(),
    };
    if let Some(state) = current(engine.inspect(&image.to_string()).await?) {
        info!(image = %image, id = %state.id, "base image already present");
        return Ok(report(state, false, false));
    }
    let tools = HostTools::detect()?;
    let work = WorkDir::create(&options.work_dir)?;
    let _lock = work.lock().await?;
    // Another build may have finished while this one waited for the lock.
    if let Some(state) = current(engine.inspect(&image.to_string()).await?) {
        info!(image = %image, id = %state.id, "base image imported by another build meanwhile");
        return Ok(report(state, false, false));
    }
    info!(image = %image, recipe_hash = %hash, "building the base image");
    let builder = RootfsBuilder {
        tools: tools.clone(),
        work,
        mirror: options.mirror.clone(),
        ca_bundle: options.ca_bundle.clone(),
        mountinfo: options.mountinfo.clone(),
    };
    let (rootfs, built_rootfs) = builder.ensure(&options.recipe).await?;
    let facts = customize::measure(&tools.chroot, &rootfs).await?;
    let summary = engine
        .import_rootfs(&rootfs, &image, options.recipe.import_changes(&facts))
        .await?;
    info!(
        image = %image,
        entries = summary.entries,
        content_mb = summary.content_bytes / (1024 * 1024),
        skipped_special = summary.skipped_special,
        "imported"
    );
    let state = engine.inspect(&image.to_string()).await?;
    let found = state
        .as_ref()
        .and_then(|s| s.labels.get(LABEL_RECIPE_HASH).cloned());
    match current(state) {
        Some(state) => Ok(report(state, true, built_rootfs)),
        None => Err(Error::LabelMismatch {
            image: image.to_string(),
            label: LABEL_RECIPE_HASH.to_owned(),
            found,
            expected: hash.clone(),
        }),
    }
}

/// What the engine holds under `image`, compared with `recipe`.
pub async fn status(
    engine: &Engine,
    image: &ImageRef,
    recipe: &Recipe,
) -> Result<StatusReport, Error> {
    Ok(StatusReport {
        image: image.clone(),
        expected_hash: recipe.content_hash(),
        state: engine.inspect(&image.to_string()).await?,
    })
}
