//! The containers' cgroup parent on the host: the engine creates one cgroup per container
//! below it and removes those; the parent itself is the daemon's to remove.

use std::path::Path;

use tracing::debug;

/// Removes the (empty) parent cgroup `parent` (absolute, as given to the engine) from every
/// hierarchy under `root`: each v1 controller dir, or the v2 root itself. Best effort: a
/// parent still holding a container's cgroup stays.
pub fn remove_parent(root: &Path, parent: &str) {
    let relative = parent.trim_start_matches('/');
    if relative.is_empty() {
        return;
    }
    let mut hierarchies = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        hierarchies.extend(entries.flatten().map(|e| e.path()));
    }
    for hierarchy in hierarchies {
        let dir = hierarchy.join(relative);
        if dir.is_dir() {
            match std::fs::remove_dir(&dir) {
                Ok(()) => debug!(path = %dir.display(), "container cgroup parent removed"),
                Err(err) => {
                    debug!(path = %dir.display(), cause = %err, "cannot remove the container cgroup parent")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_the_parent_in_every_hierarchy_but_not_a_busy_one() {
        let root = tempfile::tempdir().expect("tempdir");
        for ctrl in ["cpuset", "memory"] {
            std::fs::create_dir_all(root.path().join(ctrl).join("fleetmap/n-containers"))
                .expect("mkdir");
        }
        let busy = root.path().join("memory/fleetmap/n-containers/abc");
        std::fs::create_dir_all(&busy).expect("mkdir");
        remove_parent(root.path(), "/fleetmap/n-containers");
        assert!(!root.path().join("cpuset/fleetmap/n-containers").exists());
        assert!(busy.exists());
    }
}
