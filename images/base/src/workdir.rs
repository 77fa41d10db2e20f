//! The build's working directory: where root filesystems, the package cache and build logs
//! live, and the lock that keeps two builds from sharing it at once.
//!
//! Layout (`<hash>` is the first 16 hex digits of the recipe hash):
//! - `rootfs-<hash>/` a finished root filesystem (it only ever appears by rename, complete);
//! - `rootfs-<hash>.partial/` one being built, removed before a new attempt;
//! - `debs/` debootstrap's package cache, so rebuilding after a recipe change downloads less;
//! - `build-<hash>.log` every step's output;
//! - `lock` held (flock) by the build using the directory.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::info;

use crate::error::Error;

/// How many hex digits of the recipe hash name the directories.
const HASH_PREFIX: usize = 16;

/// An existing, absolute working directory.
#[derive(Debug, Clone)]
pub struct WorkDir {
    root: PathBuf,
}

/// Held while a build uses the working directory; released on drop.
#[derive(Debug)]
pub struct WorkDirLock {
    _lock: Flock<File>,
}

impl WorkDir {
    /// Creates `root` if needed and resolves it to an absolute path.
    pub fn create(root: &Path) -> Result<Self, Error> {
        fs::create_dir_all(root).map_err(Error::io("create directory", root))?;
        let root = root.canonicalize().map_err(Error::io("resolve", root))?;
        Ok(Self { root })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn short(hash: &str) -> &str {
        hash.get(..HASH_PREFIX).unwrap_or(hash)
    }

    /// Where the finished root filesystem for `hash` lives.
    pub fn rootfs(&self, hash: &str) -> PathBuf {
        self.root.join(format!("rootfs-{}", Self::short(hash)))
    }

    /// Where the root filesystem for `hash` is built before it is renamed into place.
    pub fn partial(&self, hash: &str) -> PathBuf {
        self.root
            .join(format!("rootfs-{}.partial", Self::short(hash)))
    }

    /// debootstrap's package cache.
    pub fn debs(&self) -> PathBuf {
        self.root.join("debs")
    }

    /// The build log for `hash`.
    pub fn log(&self, hash: &str) -> PathBuf {
        self.root.join(format!("build-{}.log", Self::short(hash)))
    }

    /// Root filesystems (finished or partial) of other recipes, which a new build may remove.
    pub fn other_rootfs(&self, hash: &str) -> Result<Vec<PathBuf>, Error> {
        let keep = [self.rootfs(hash), self.partial(hash)];
        let entries = fs::read_dir(&self.root).map_err(Error::io("list", &self.root))?;
        let mut others = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("list", &self.root))?;
            let path = entry.path();
            let is_rootfs = entry.file_name().to_string_lossy().starts_with("rootfs-");
            if is_rootfs && !keep.contains(&path) {
                others.push(path);
            }
        }
        others.sort();
        Ok(others)
    }

    /// Takes the directory's lock, waiting (and saying so) while another build holds it.
    pub async fn lock(&self) -> Result<WorkDirLock, Error> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("open lock", &path))?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(WorkDirLock { _lock: lock }),
            Err((file, Errno::EWOULDBLOCK)) => file,
            Err((_, errno)) => return Err(Error::io("lock", &path)(io::Error::from(errno))),
        };
        info!(lock = %path.display(), "another build holds the work directory; waiting for it");
        let waited =
            tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
                .await
                .map_err(|source| Error::Join {
                    what: "waiting for the work directory lock",
                    source,
                })?;
        waited
            .map(|lock| WorkDirLock { _lock: lock })
            .map_err(|(_, errno)| Error::io("lock", &path)(io::Error::from(errno)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_uses_a_hash_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = WorkDir::create(&dir.path().join("w")).expect("create");
        let hash = "0123456789abcdef0123456789abcdef";
        assert!(work.rootfs(hash).ends_with("rootfs-0123456789abcdef"));
        assert!(work
            .partial(hash)
            .ends_with("rootfs-0123456789abcdef.partial"));
        assert!(work.log(hash).ends_with("build-0123456789abcdef.log"));
        assert!(work.root().is_absolute());
    }

    #[test]
    fn other_rootfs_lists_only_other_recipes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = WorkDir::create(dir.path()).expect("create");
        let hash = "aaaaaaaaaaaaaaaa";
        for p in [
            work.rootfs(hash),
            work.partial(hash),
            work.rootfs("bbbbbbbbbbbbbbbb"),
            work.debs(),
        ] {
            fs::create_dir_all(p).expect("mkdir");
        }
        assert_eq!(
            work.other_rootfs(hash).expect("list"),
            vec![work.rootfs("bbbbbbbbbbbbbbbb")]
        );
    }

    #[tokio::test]
    async fn lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = WorkDir::create(dir.path()).expect("create");
        let first = work.lock().await.expect("first lock");
        let waiter = {
            let work = work.clone();
            tokio::spawn(async move { work.lock().await.map(|_| ()) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "second lock must wait for the first");
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("waiter got the lock")
            .expect("joined")
            .expect("locked");
    }
}
