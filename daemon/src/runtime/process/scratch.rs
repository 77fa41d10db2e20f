//! Per-worker scratch space of the process runtime: a size-limited tmpfs, so a function that
//! writes until the disk is full fills only its own scratch (ENOSPC), and every worker starts
//! on an empty one. An idle worker with a home (see `homes.rs`) gets its scratch at
//! `<state>/scratch/h<pid>-<n>` when it joins the pool ([`ScratchDirs::prepare_home`]), at the
//! node's largest size, and the job that takes it only resizes it to the slot when its size
//! differs ([`ScratchDirs::adopt`], a remount; a mount and a directory less on the job's way to
//! its first input); when the worker leaves, the scratch is emptied for the home's next worker
//! and keeps its size ([`ScratchDirs::reset_home`]), so jobs of one size remount nothing.
//! Without a home the scratch is mounted at `<state>/scratch/<slot>` when the slot takes the
//! worker, and unmounted and removed with it.
//!
//! Why tmpfs: it is the one bound the kernel enforces per directory without a dedicated
//! block device or project quotas. Its pages are charged to the memory cgroup of the process
//! that writes them (the slot's), so a scratch is at most half the slot's RAM
//! ([`ScratchDirs::size_for`]): a full scratch then ends in ENOSPC, not in an OOM kill.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::runtime::Scratch;

/// The smallest scratch handed out, whatever the slot's RAM.
pub const MIN_SCRATCH_BYTES: u64 = 1 << 20;

/// What a scratch directory could not be made or removed with.
#[derive(Debug, Error)]
pub enum ScratchError {
    /// A directory operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel refused to mount or unmount the tmpfs.
    #[error("{op} tmpfs at {path}: {source}")]
    Mount {
        /// `mount` or `umount`.
        op: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The errno.
        source: nix::Error,
    },
}

/// How scratch spaces are bounded on this node (reported once at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchBound {
    /// Each scratch is its own size-limited tmpfs.
    Tmpfs,
    /// The daemon may not mount (no `CAP_SYS_ADMIN`): scratch directories on the state dir's
    /// filesystem, emptied per worker but bounded only by that filesystem.
    Unbounded,
}

/// The scratch spaces of one process runtime.
#[derive(Debug)]
pub struct ScratchDirs {
    root: PathBuf,
    max_bytes: u64,
    bound: ScratchBound,
    /// The tmpfs size each home's scratch has now (not listed: not known for sure). A std
    /// `Mutex`: map operations only, never held across a mount.
    home_sizes: Mutex<HashMap<String, u64>>,
}

impl ScratchDirs {
    /// Takes `root` (created if missing), unmounts and removes what an earlier run left in it
    /// when `clean`, and finds out whether tmpfs mounts are allowed here.
    pub fn open(root: &Path, max_bytes: u64, clean: bool) -> Result<Self, ScratchError> {
        std::fs::create_dir_all(root).map_err(|source| ScratchError::Io {
            op: "mkdir",
            path: root.to_path_buf(),
            source,
        })?;
        let root = std::fs::canonicalize(root).map_err(|source| ScratchError::Io {
            op: "canonicalize",
            path: root.to_path_buf(),
            source,
        })?;
        let mut dirs = Self {
            root,
            max_bytes: max_bytes.max(MIN_SCRATCH_BYTES),
            bound: ScratchBound::Tmpfs,
            home_sizes: Mutex::new(HashMap::new()),
        };
        if clean {
            let stale = dirs.remove_all();
            if stale > 0 {
                info!(removed = stale, root = %dirs.root.display(), "removed scratch spaces of an earlier run");
            }
        }
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let probe = dirs.root.join(format!(
            ".probe-{}-{}",
            std::process::id(),
            PROBES.fetch_add(1, Ordering::Relaxed)
        ));
        match dirs.mount_fresh(&probe, MIN_SCRATCH_BYTES) {
            Ok(()) => dirs.remove_dir(&probe),
            Err(err) => {
                warn!(cause = %err, "cannot mount tmpfs scratch spaces (the daemon needs CAP_SYS_ADMIN); functions get unbounded scratch directories on the state dir's filesystem");
                let _ = std::fs::remove_dir_all(&probe);
                dirs.bound = ScratchBound::Unbounded;
            }
        }
        Ok(dirs)
    }

    fn home_sizes(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.home_sizes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the size home `name`'s tmpfs has now (`None`: not known for sure).
    fn set_home_size(&self, name: &str, bytes: Option<u64>) {
        let mut sizes = self.home_sizes();
        match bytes {
            Some(bytes) => sizes.insert(name.to_owned(), bytes),
            None => sizes.remove(name),
        };
    }

    /// How scratch spaces are bounded.
    pub fn bound(&self) -> ScratchBound {
        self.bound
    }

    /// Size of the scratch of a slot with `ram_bytes` of RAM: the node's setting, at most half
    /// the slot's RAM (tmpfs pages count against it), at least 1 MiB.
    pub fn size_for(&self, ram_bytes: u64) -> u64 {
        self.max_bytes.min(ram_bytes / 2).max(MIN_SCRATCH_BYTES)
    }

    /// The directory of `slot_id`'s scratch.
    pub fn path_of(&self, slot_id: &str) -> PathBuf {
        self.root.join(slot_id)
    }

    /// An empty scratch for a slot's next worker: whatever the slot's previous worker left is
    /// unmounted and removed first.
    pub fn prepare(&self, slot_id: &str, ram_bytes: u64) -> Result<Scratch, ScratchError> {
        let path = self.path_of(slot_id);
        let bytes = self.size_for(ram_bytes);
        self.make_empty(&path, bytes)?;
        debug!(slot = slot_id, bytes, path = %path.display(), "scratch ready");
        Ok(self.described(&path, bytes))
    }

    /// The scratch at `path` as a worker is told of it: its size, or 0 when unbounded.
    fn described(&self, path: &Path, bytes: u64) -> Scratch {
        Scratch {
            path: path.display().to_string(),
            bytes: match self.bound {
                ScratchBound::Tmpfs => bytes,
                ScratchBound::Unbounded => 0,
            },
        }
    }

    /// A scratch made ahead of need under `name` (an idle worker's home), at the node's
    /// largest size; [`ScratchDirs::adopt`] fits it to the slot that takes the worker.
    pub fn prepare_home(&self, name: &str) -> Result<(), ScratchError> {
        self.set_home_size(name, None);
        self.make_empty(&self.path_of(name), self.max_bytes)?;
        self.set_home_size(name, Some(self.max_bytes));
        Ok(())
    }

    /// An empty scratch at `path` of `bytes` (bound permitting), whatever was there removed.
    fn make_empty(&self, path: &Path, bytes: u64) -> Result<(), ScratchError> {
        self.remove_dir(path);
        match self.bound {
            ScratchBound::Tmpfs => self.mount_fresh(path, bytes),
            ScratchBound::Unbounded => mkdir_private(path),
        }
    }

    /// The home scratch `name` (see [`ScratchDirs::prepare_home`]) for a slot with `ram_bytes`
    /// of RAM: its tmpfs is resized when the slot's size differs (a remount, not a new mount).
    pub fn adopt(&self, name: &str, ram_bytes: u64) -> Result<Scratch, ScratchError> {
        let path = self.path_of(name);
        let bytes = self.size_for(ram_bytes);
        let current = self.home_sizes().get(name).copied();
        if self.bound == ScratchBound::Tmpfs && current != Some(bytes) {
            self.set_home_size(name, None);
            self.resize(&path, bytes)?;
            self.set_home_size(name, Some(bytes));
        }
        debug!(home = name, bytes, path = %path.display(), "scratch adopted");
        Ok(self.described(&path, bytes))
    }

    /// Empties home `name`'s scratch for the home's next worker: its entries removed, its
    /// root back to mode 0700 and this user; its tmpfs keeps the last job's size (an idle
    /// worker writes none of it), which the next job changes only if it needs another.
    /// Returns whether there was a scratch to keep.
    pub fn reset_home(&self, name: &str) -> Result<bool, ScratchError> {
        let path = self.path_of(name);
        let kept = match self.bound {
            ScratchBound::Tmpfs => is_mount_point(&path),
            ScratchBound::Unbounded => path.is_dir(),
        };
        if !kept {
            self.remove(name);
            return Ok(false);
        }
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| ScratchError::Io { op, path, source }
        };
        for entry in std::fs::read_dir(&path).map_err(io("read_dir", &path))? {
            let entry = entry.map_err(io("read_dir", &path))?;
            let file = entry.path();
            let is_dir = entry.file_type().map_err(io("stat", &file))?.is_dir();
            if is_dir {
                std::fs::remove_dir_all(&file).map_err(io("remove", &file))?;
            } else {
                std::fs::remove_file(&file).map_err(io("remove", &file))?;
            }
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod", &path))?;
        nix::unistd::chown(
            &path,
            Some(nix::unistd::geteuid()),
            Some(nix::unistd::getegid()),
        )
        .map_err(|errno| io("chown", &path)(std::io::Error::from(errno)))?;
        debug!(home = name, path = %path.display(), "scratch emptied for the next worker");
        Ok(true)
    }

    /// Remounts the tmpfs at `path` with a size of `bytes`.
    fn resize(&self, path: &Path, bytes: u64) -> Result<(), ScratchError> {
        let data = format!("size={bytes}");
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(|source| ScratchError::Mount {
            op: "remount",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Unmounts and removes `slot_id`'s scratch (nothing when it has none).
    pub fn remove(&self, slot_id: &str) {
        self.set_home_size(slot_id, None);
        self.remove_dir(&self.path_of(slot_id));
    }

    /// Unmounts and removes every scratch under the root; returns how many there were.
    pub fn remove_all(&self) -> usize {
        self.home_sizes().clear();
        let mut removed = 0;
        for point in mounts_below(&self.root) {
            if let Err(source) = umount2(&point, MntFlags::MNT_DETACH) {
                warn!(path = %point.display(), cause = %source, "cannot unmount a scratch space");
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                removed += 1;
                let path = entry.path();
                if let Err(err) = std::fs::remove_dir_all(&path) {
                    warn!(path = %path.display(), cause = %err, "cannot remove a scratch directory");
                }
            }
        }
        removed
    }

    fn mount_fresh(&self, path: &Path, bytes: u64) -> Result<(), ScratchError> {
        mkdir_private(path)?;
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let data = format!("size={bytes},mode=0700,uid={uid},gid={gid}");
        mount(
            Some("fleetmap-scratch"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(|source| {
            let _ = std::fs::remove_dir(path);
            ScratchError::Mount {
                op: "mount",
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Detaches every mount at `path` (a lazy unmount: a file a killed worker's child still
    /// holds open does not keep it busy) and removes the directory.
    fn remove_dir(&self, path: &Path) {
        while is_mount_point(path) {
            if let Err(source) = umount2(path, MntFlags::MNT_DETACH) {
                warn!(path = %path.display(), cause = %source, "cannot unmount a scratch space");
                break;
            }
        }
        match std::fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                warn!(path = %path.display(), cause = %err, "cannot remove a scratch directory")
            }
        }
    }
}

fn mkdir_private(path: &Path) -> Result<(), ScratchError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|source| ScratchError::Io {
            op: "mkdir",
            path: path.to_path_buf(),
            source,
        })
}

/// Whether a filesystem is mounted at `path`: it is on another device than its parent
/// directory (every scratch is a tmpfs of its own). Two `stat`s: this runs for every slot a
/// job takes, where reading `/proc/self/mountinfo` cost more than the rest of the acquire
/// (hundreds of mounts on a Docker host).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(parent) = path.parent() else {
        return false;
    };
    match (std::fs::symlink_metadata(path), std::fs::metadata(parent)) {
        (Ok(here), Ok(above)) => here.is_dir() && here.dev() != above.dev(),
        _ => false,
    }
}

/// Mount points at or below `root` (from `/proc/self/mountinfo`), deepest first.
fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|point| point.starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &field[i + 1..i + 4];
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_may_mount() -> Option<&'static str> {
        if !nix::unistd::geteuid().is_root() {
            return Some("mounting tmpfs needs root");
        }
        None
    }

    #[test]
    fn scratch_is_half_the_slot_ram_at_most_and_one_mib_at_least() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = ScratchDirs::open(dir.path(), 512 << 20, true).expect("open");
        assert_eq!(dirs.size_for(4 << 30), 512 << 20);
        assert_eq!(dirs.size_for(600 << 20), 300 << 20);
        assert_eq!(dirs.size_for(1 << 10), MIN_SCRATCH_BYTES);
        dirs.remove_all();
    }

    #[test]
    fn a_plain_directory_is_no_mount_point_and_a_mounted_proc_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!is_mount_point(dir.path()));
        assert!(!is_mount_point(&dir.path().join("missing")));
        assert!(
            is_mount_point(Path::new("/proc")),
            "/proc is a mount of its own"
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount_path(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/end\"), r"/end\");
    }

    #[test]
    fn a_full_scratch_is_enospc_and_the_next_worker_finds_it_empty() {
        if let Some(why) = root_may_mount() {
            eprintln!("SKIPPED a_full_scratch_is_enospc_and_the_next_worker_finds_it_empty: {why}");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = ScratchDirs::open(dir.path(), 4 << 20, true).expect("open");
        assert_eq!(dirs.bound(), ScratchBound::Tmpfs);
        let scratch = dirs.prepare("s1", 1 << 30).expect("prepare");
        assert_eq!(scratch.bytes, 4 << 20);
        let path = PathBuf::from(&scratch.path);
        assert!(
            is_mount_point(&path),
            "{} is not a mount point",
            path.display()
        );
        let err = std::fs::write(path.join("big"), vec![7u8; 8 << 20]).expect_err("must not fit");
        assert_eq!(err.raw_os_error(), Some(libc_enospc()), "{err}");
        let again = dirs.prepare("s1", 1 << 30).expect("prepare again");
        let entries: Vec<_> = std::fs::read_dir(&again.path).expect("read").collect();
        assert!(entries.is_empty(), "scratch not empty: {entries:?}");
        assert_eq!(
            mounts_below(&path),
            vec![path.clone()],
            "one mount per slot"
        );
        dirs.remove("s1");
        assert!(!path.exists());
        assert!(!is_mount_point(&path));
        assert!(mounts_below(dir.path()).is_empty());
    }

    #[test]
    fn a_home_scratch_is_made_ahead_and_fitted_to_the_slot_that_takes_it() {
        if let Some(why) = root_may_mount() {
            eprintln!(
                "SKIPPED a_home_scratch_is_made_ahead_and_fitted_to_the_slot_that_takes_it: {why}"
            );
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = ScratchDirs::open(dir.path(), 8 << 20, true).expect("open");
        dirs.prepare_home("h1").expect("home");
        let path = dirs.path_of("h1");
        assert!(is_mount_point(&path));
        // A slot of 8 MiB of RAM gets 4 MiB: the tmpfs is resized, not replaced.
        let scratch = dirs.adopt("h1", 8 << 20).expect("adopt");
        assert_eq!(scratch.bytes, 4 << 20);
        assert_eq!(PathBuf::from(&scratch.path), path);
        assert_eq!(mounts_below(&path), vec![path.clone()], "still one mount");
        let err = std::fs::write(path.join("big"), vec![7u8; 6 << 20]).expect_err("must not fit");
        assert_eq!(err.raw_os_error(), Some(libc_enospc()), "{err}");
        // A slot large enough for the node's size keeps the mount as it is.
        dirs.prepare_home("h2").expect("home");
        assert_eq!(dirs.adopt("h2", 1 << 30).expect("adopt").bytes, 8 << 20);
        std::fs::write(dirs.path_of("h2").join("fits"), vec![7u8; 6 << 20]).expect("fits");
        dirs.remove("h1");
        dirs.remove("h2");
        assert!(mounts_below(dir.path()).is_empty());
        assert!(!path.exists());
    }

    #[test]
    fn a_vacated_home_scratch_is_empty_private_and_resized_only_for_a_job_of_another_size() {
        if let Some(why) = root_may_mount() {
            eprintln!("SKIPPED a_vacated_home_scratch_is_empty_private_and_resized_only_for_a_job_of_another_size: {why}");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = ScratchDirs::open(dir.path(), 8 << 20, true).expect("open");
        dirs.prepare_home("h1").expect("home");
        let path = dirs.path_of("h1");
        // A job in a 4 MiB slot leaves files, a tree, a link and an open root behind.
        dirs.adopt("h1", 8 << 20).expect("adopt");
        std::fs::write(path.join("left"), b"data").expect("file");
        std::fs::create_dir_all(path.join("tree/deeper")).expect("tree");
        std::fs::write(path.join("tree/deeper/x"), b"x").expect("file");
        std::os::unix::fs::symlink("/etc", path.join("link")).expect("symlink");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(
            dirs.reset_home("h1").expect("reset"),
            "a mounted scratch is kept"
        );
        assert_eq!(std::fs::read_dir(&path).expect("list").count(), 0);
        assert!(
            Path::new("/etc").is_dir(),
            "the link was removed, not followed"
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(mounts_below(&path), vec![path.clone()], "still one mount");
        // It keeps the last job's 4 MiB until a job needs another size.
        let err = std::fs::write(path.join("big"), vec![7u8; 6 << 20]).expect_err("4 MiB still");
        assert_eq!(err.raw_os_error(), Some(libc_enospc()), "{err}");
        std::fs::remove_file(path.join("big")).expect("remove");
        assert_eq!(dirs.adopt("h1", 8 << 20).expect("same size").bytes, 4 << 20);
        assert_eq!(dirs.adopt("h1", 1 << 30).expect("larger").bytes, 8 << 20);
        std::fs::write(path.join("fits"), vec![7u8; 6 << 20]).expect("the node's size again");
        // A home whose scratch was never made has nothing to keep.
        assert!(!dirs.reset_home("h2").expect("reset"));
        dirs.remove("h1");
        assert!(mounts_below(dir.path()).is_empty());
    }

    #[test]
    fn opening_removes_what_an_earlier_run_left() {
        if let Some(why) = root_may_mount() {
            eprintln!("SKIPPED opening_removes_what_an_earlier_run_left: {why}");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ScratchDirs::open(dir.path(), 2 << 20, true).expect("open");
        let a = first.prepare("a", 1 << 30).expect("a");
        std::fs::write(PathBuf::from(&a.path).join("f"), b"x").expect("write");
        first.prepare("b", 1 << 30).expect("b");
        std::fs::create_dir(dir.path().join("plain")).expect("plain dir");
        drop(first); // an earlier run that ended without cleaning up
        let root = std::fs::canonicalize(dir.path()).expect("canonicalize");
        assert_eq!(mounts_below(&root).len(), 2);
        let second = ScratchDirs::open(dir.path(), 2 << 20, true).expect("reopen");
        assert!(mounts_below(&root).is_empty());
        assert_eq!(std::fs::read_dir(&root).expect("read").count(), 0);
        drop(second);
    }

    fn libc_enospc() -> i32 {
        nix::errno::Errno::ENOSPC as i32
    }
}
