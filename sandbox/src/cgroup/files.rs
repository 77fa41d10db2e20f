//! File-level helpers shared by the cgroup flavours: typed reads and writes, name checks,
//! CPU lists, keyed counters and walking a cgroup tree.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::SandboxError;

/// Reads a whole file.
pub(crate) fn read(path: &Path) -> Result<String, SandboxError> {
    fs::read_to_string(path).map_err(|err| SandboxError::io("read", path, err))
}

/// Writes `value` to an existing (or, outside cgroupfs, new) file.
pub(crate) fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(path, value).map_err(|err| SandboxError::io("write", path, err))
}

/// Creates a directory and its missing parents.
pub(crate) fn mkdir_all(path: &Path) -> Result<(), SandboxError> {
    fs::create_dir_all(path).map_err(|err| SandboxError::io("mkdir", path, err))
}

/// Process ids listed in a `cgroup.procs` file. Pid 0 (a process of another pid namespace)
/// is left out: signalling pid 0 would hit our own process group.
pub(crate) fn read_pids(path: &Path) -> Result<Vec<u32>, SandboxError> {
    Ok(read(path)?
        .lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
        .filter(|&pid| pid != 0)
        .collect())
}

/// The value of `key` in a flat-keyed file (`memory.events`, `memory.oom_control`).
pub(crate) fn keyed_value(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(key))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

/// `0-3,6,8-9` for `[0, 1, 2, 3, 6, 8, 9]` (input need not be sorted; duplicates collapse).
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for cpu in sorted {
        match ranges.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(cpu) => *end = cpu,
            _ => ranges.push((cpu, cpu)),
        }
    }
    ranges
        .iter()
        .map(|&(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a kernel CPU list (`0-3,6`); `None` if malformed.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let text = text.trim();
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Some(cpus);
    }
    for part in text.split(',') {
        match part.split_once('-') {
            Some((start, end)) => {
                let (start, end) = (start.parse::<u32>().ok()?, end.parse::<u32>().ok()?);
                if start > end {
                    return None;
                }
                cpus.extend(start..=end);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Checks the daemon's parent path: relative, non-empty, plain names only.
pub(crate) fn check_parent(parent: &str) -> Result<(), SandboxError> {
    let path = Path::new(parent);
    let plain = !parent.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(name) if is_plain(&name.to_string_lossy())));
    if plain {
        Ok(())
    } else {
        Err(SandboxError::Unsupported(format!(
            "cgroup parent {parent:?} must be a relative path of plain names like \"fleetmap/node-a\""
        )))
    }
}

/// The cgroup directory name of a slot (`slot-<id>`); ids are plain names so no slot can
/// point outside the parent.
pub(crate) fn slot_dir(slot_id: &str) -> Result<String, SandboxError> {
    if is_plain(slot_id) {
        Ok(format!("slot-{slot_id}"))
    } else {
        Err(SandboxError::UnknownSlot(format!(
            "{slot_id:?} (slot ids are letters, digits, '-' and '_')"
        )))
    }
}

/// The cgroup directory name of the warm pool.
pub(crate) const POOL_DIR: &str = "pool";

fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name != "."
        && name != ".."
}

/// Every directory below `dir`, relative to it, deepest first (so removing them in order
/// always removes children before parents). A missing `dir` has none.
pub(crate) fn descendants(dir: &Path) -> Result<Vec<PathBuf>, SandboxError> {
    let mut out = Vec::new();
    collect(dir, Path::new(""), &mut out)?;
    Ok(out)
}

fn collect(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), SandboxError> {
    let dir = base.join(rel);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(SandboxError::io("readdir", dir, err)),
    };
    for entry in entries {
        let entry = entry.map_err(|err| SandboxError::io("readdir", &dir, err))?;
        let is_dir = entry
            .file_type()
            .map_err(|err| SandboxError::io("stat", entry.path(), err))?
            .is_dir();
        if is_dir {
            let child = rel.join(entry.file_name());
            collect(base, &child, out)?;
            out.push(child);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(format_cpu_list(&[]), "");
        assert_eq!(format_cpu_list(&[3]), "3");
        assert_eq!(format_cpu_list(&[9, 0, 1, 2, 3, 6, 8, 2]), "0-3,6,8-9");
        assert_eq!(
            format_cpu_list(&[u32::MAX, u32::MAX - 1]),
            "4294967294-4294967295"
        );
        assert_eq!(
            parse_cpu_list("0-3,6,8-9\n"),
            Some(vec![0, 1, 2, 3, 6, 8, 9])
        );
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        for cpus in [vec![0], vec![0, 2, 4], vec![1, 2, 3, 7, 8, 15]] {
            assert_eq!(parse_cpu_list(&format_cpu_list(&cpus)), Some(cpus));
        }
    }

    #[test]
    fn keyed_values() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(3));
        assert_eq!(keyed_value(v1, "oom"), None);
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(v2, "oom_kill"), Some(1));
        assert_eq!(keyed_value(v2, "oom"), Some(2));
        assert_eq!(keyed_value("oom_kill x\n", "oom_kill"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_parent("fleetmap/node-a").is_ok());
        assert!(check_parent("fleetmap-test-1").is_ok());
        for bad in ["", "/abs", "a/../b", "..", "a//b/./c/..", "sp ace", "a\nb"] {
            assert!(check_parent(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(slot_dir("s12").expect("plain"), "slot-s12");
        for bad in ["", "..", "a/b", "../../etc", "x y"] {
            assert!(slot_dir(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn descendants_deepest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["a/b/c", "a/d", "e"] {
            fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        fs::write(dir.path().join("a/file"), "x").expect("write");
        let found = descendants(dir.path()).expect("walk");
        assert_eq!(found.len(), 5);
        let pos = |p: &str| found.iter().position(|f| f == Path::new(p)).expect(p);
        assert!(pos("a/b/c") < pos("a/b"));
        assert!(pos("a/b") < pos("a"));
        assert!(pos("a/d") < pos("a"));
        assert!(descendants(&dir.path().join("missing"))
            .expect("missing is empty")
            .is_empty());
    }

    #[test]
    fn pids_skip_zero_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cgroup.procs");
        fs::write(&file, "12\n0\n\nx\n34\n").expect("write");
        assert_eq!(read_pids(&file).expect("read"), vec![12, 34]);
        let err = read_pids(&dir.path().join("nope")).expect_err("missing");
        assert!(err.to_string().contains("nope"));
    }
}
