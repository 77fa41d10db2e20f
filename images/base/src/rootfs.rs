//! Builds the root filesystem for a recipe in the work directory, or reuses the one already
//! there: debootstrap, then the in-image steps, then slimming, then an atomic rename into place.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{info, warn};

use crate::command::BuildLog;
use crate::customize;
use crate::debootstrap;
use crate::error::Error;
use crate::host::HostTools;
use crate::mounts;
use crate::recipe::Recipe;
use crate::slim;
use crate::workdir::WorkDir;

/// Everything a root filesystem build needs besides the recipe.
#[derive(Debug, Clone)]
pub struct RootfsBuilder {
    /// The host programs.
    pub tools: HostTools,
    /// The (locked) work directory.
    pub work: WorkDir,
    /// The Debian mirror.
    pub mirror: String,
    /// An extra CA bundle pip trusts during the build.
    pub ca_bundle: Option<PathBuf>,
    /// The mount table, read before removing a half-built tree (a parameter for tests).
    pub mountinfo: PathBuf,
}

impl RootfsBuilder {
    /// The finished root filesystem for `recipe`, built first unless the work directory has it.
    /// Returns its path and whether it was built now.
    pub async fn ensure(&self, recipe: &Recipe) -> Result<(PathBuf, bool), Error> {
        let hash = recipe.content_hash();
        let finished = self.work.rootfs(&hash);
        if finished.is_dir() {
            info!(rootfs = %finished.display(), "reusing the root filesystem built earlier");
            return Ok((finished, false));
        }
        let started = Instant::now();
        let partial = self.work.partial(&hash);
        if partial.exists() {
            warn!(path = %partial.display(), "removing a half-built root filesystem");
        }
        mounts::remove_tree(&partial, &self.mountinfo)?;
        let debs = self.work.debs();
        fs::create_dir_all(&debs).map_err(Error::io("create directory", &debs))?;
        let log_path = self.work.log(&hash);
        fs::write(&log_path, "").map_err(Error::io("create", &log_path))?;
        let log = BuildLog::new(log_path);

        info!(release = %recipe.release, mirror = %self.mirror, "running debootstrap (about a minute with a warm package cache, a few without)");
        let mut command = debootstrap::command(
            &self.tools.debootstrap,
            recipe,
            &self.mirror,
            &debs,
            &partial,
        );
        log.run("debootstrap", &mut command).await?;
        self.finish(recipe, &partial, &log).await?;

        let table =
            fs::read_to_string(&self.mountinfo).map_err(Error::io("read", &self.mountinfo))?;
        if let Some(mount) = mounts::mounts_under(&table, &partial).first() {
            return Err(Error::io("rename (still mounted)", mount)(
                std::io::Error::other("debootstrap left a mount inside the root filesystem"),
            ));
        }
        fs::rename(&partial, &finished).map_err(Error::io("rename", &partial))?;
        info!(rootfs = %finished.display(), seconds = started.elapsed().as_secs(), "root filesystem built");
        for old in self.work.other_rootfs(&hash)? {
            info!(path = %old.display(), "removing the root filesystem of an older recipe");
            mounts::remove_tree(&old, &self.mountinfo)?;
        }
        Ok((finished, true))
    }

    /// The steps after debootstrap, on the partial tree.
    async fn finish(&self, recipe: &Recipe, rootfs: &Path, log: &BuildLog) -> Result<(), Error> {
        customize::install_pip_packages(
            &self.tools.chroot,
            rootfs,
            recipe,
            self.ca_bundle.as_deref(),
            log,
        )
        .await?;
        customize::configure(rootfs)?;
        slim::slim(rootfs)?;
        customize::measure(&self.tools.chroot, rootfs).await?;
        Ok(())
    }
}
