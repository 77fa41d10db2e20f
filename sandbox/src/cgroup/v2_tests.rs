//! File-level tests of the v2 flavour against a temporary directory laid out like a cgroup2
//! mount. A real cgroup2 with cpuset and memory cannot be mounted on the v1 CI host, so
//! these check what is written where; what only the kernel does (joining moves a process,
//! rmdir drops control files) is out of their reach.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;

use super::*;
use crate::cgroup::{detect, CgroupMode};

const MIB: u64 = 1 << 20;

/// A fake cgroup2 root offering `controllers`.
fn fake_root(controllers: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::write(root.join("cgroup.controllers"), format!("{controllers}\n")).expect("write");
    fs::write(root.join("cgroup.subtree_control"), "").expect("write");
    fs::write(root.join("cpuset.cpus.effective"), "0-3\n").expect("write");
    fs::write(root.join("cpuset.mems.effective"), "0\n").expect("write");
    dir
}

fn config(root: &Path) -> CgroupConfig {
    CgroupConfig {
        root: root.to_path_buf(),
        parent: "fleetmap/node-a".to_owned(),
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).expect("read").trim().to_owned()
}

fn limits(cpus: &[u32], ram_bytes: u64) -> SlotLimits {
    SlotLimits {
        cpus: cpus.to_vec(),
        ram_bytes,
    }
}

#[test]
fn parent_gets_controllers_from_the_root_down() {
    let dir = fake_root("cpuset cpu io memory pids");
    let cg = V2Cgroups::new(&config(dir.path())).expect("v2");
    assert_eq!(cg.flavor(), CgroupFlavor::V2);
    for level in ["", "fleetmap", "fleetmap/node-a"] {
        let file = dir.path().join(level).join("cgroup.subtree_control");
        assert_eq!(read(&file), "+cpuset +memory", "{}", file.display());
    }
}

#[test]
fn detect_prefers_v2_and_names_missing_controllers() {
    let dir = fake_root("cpuset cpu io memory pids");
    let cg = detect(&config(dir.path()), CgroupMode::Required).expect("detect");
    assert_eq!(cg.flavor(), CgroupFlavor::V2);

    let dir = fake_root("cpu io memory pids");
    let err = detect(&config(dir.path()), CgroupMode::Required).expect_err("no cpuset");
    assert!(err.to_string().contains("cpuset controller"), "{err}");
    let cg = detect(&config(dir.path()), CgroupMode::Auto).expect("auto");
    assert_eq!(cg.flavor(), CgroupFlavor::None);
}

#[test]
fn create_slot_writes_cpuset_memory_and_swap() {
    let dir = fake_root("cpuset memory");
    let cg = V2Cgroups::new(&config(dir.path())).expect("v2");
    let slot = dir.path().join("fleetmap/node-a/slot-s1");

    cg.create_slot("s1", &limits(&[1, 2], 64 * MIB))
        .expect("create");
    assert_eq!(read(&slot.join("cpuset.cpus")), "1-2");
    assert_eq!(read(&slot.join("cpuset.mems")), "0");
    assert_eq!(read(&slot.join("memory.max")), (64 * MIB).to_string());
    // Without swap accounting there is no memory.swap.max, and none is invented.
    assert!(!slot.join("memory.swap.max").exists());

    // With it (the kernel made the file), swap is turned off; re-creating re-limits.
    fs::write(slot.join("memory.swap.max"), "max\n").expect("write");
    fs::write(
        dir.path().join("fleetmap/node-a/cpuset.mems.effective"),
        "0-1\n",
    )
    .expect("write");
    cg.create_slot("s1", &limits(&[3], 128 * MIB))
        .expect("re-create");
    assert_eq!(read(&slot.join("cpuset.cpus")), "3");
    assert_eq!(read(&slot.join("cpuset.mems")), "0-1");
    assert_eq!(read(&slot.join("memory.max")), (128 * MIB).to_string());
    assert_eq!(read(&slot.join("memory.swap.max")), "0");
}

#[test]
fn pool_move_and_process_listing() {
    let dir = fake_root("cpuset memory");
    let cg = V2Cgroups::new(&config(dir.path())).expect("v2");
    cg.enter_pool(4242).expect("pool");
    assert_eq!(
        read(&dir.path().join("fleetmap/node-a/pool/cgroup.procs")),
        "4242"
    );
    assert!(matches!(
        cg.move_into_slot("s1", 4242),
        Err(SandboxError::UnknownSlot(_))
    ));
    cg.create_slot("s1", &limits(&[0], 64 * MIB))
        .expect("create");
    cg.move_into_slot("s1", 4242).expect("move");
    let procs = dir.path().join("fleetmap/node-a/slot-s1/cgroup.procs");
    assert_eq!(read(&procs), "4242");
    fs::write(&procs, "7\n0\n9\n").expect("write");
    assert_eq!(cg.slot_processes("s1").expect("procs"), vec![7, 9]);
    assert!(cg.slot_processes("s2").is_err());
    assert!(cg.create_slot("../../escape", &limits(&[0], MIB)).is_err());
    assert!(!dir.path().join("escape").exists());
}

#[test]
fn oom_kills_come_from_memory_events() {
    let dir = fake_root("cpuset memory");
    let cg = V2Cgroups::new(&config(dir.path())).expect("v2");
    cg.create_slot("s1", &limits(&[0], 64 * MIB))
        .expect("create");
    let err = cg.oom_kills("s1").expect_err("no memory.events yet");
    assert!(err.to_string().contains("memory.events"), "{err}");
    fs::write(
        dir.path().join("fleetmap/node-a/slot-s1/memory.events"),
        "low 0\nhigh 0\nmax 17\noom 2\noom_kill 2\noom_group_kill 0\n",
    )
    .expect("write");
    assert_eq!(cg.oom_kills("s1").expect("oom"), 2);
    assert!(matches!(
        cg.oom_kills("nope"),
        Err(SandboxError::UnknownSlot(_))
    ));
}

#[test]
fn kill_without_cgroup_kill_signals_each_pid() {
    let dir = fake_root("cpuset memory");
    let cg = V2Cgroups::new(&config(dir.path())).expect("v2");
    cg.create_slot("s1", &limits(&[0], 64 * MIB))
        .expect("create");
    let mut child = Command::new("sleep")
        .arg("100")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    cg.move_into_slot("s1", child.id()).expect("move");
    let reaper = thread::spawn(move || child.wait().expect("wait"));
    assert_eq!(cg.kill_slot("s1").expect("kill"), 1);
    assert_eq!(reaper.join().expect("reaper").signal(), Some(9));
    assert_eq!(cg.kill_slot("never-created").expect("missing slot"), 0);
}

#[test]
fn kill_prefers_cgroup_kill() {
    let dir = fake_root("cpuset memory");
    let cg = V2Cgroups::new(&config(dir.path())).expect("v2");
    cg.create_slot("s1", &limits(&[0], 64 * MIB))
        .expect("create");
    let kill_file = dir.path().join("fleetmap/node-a/slot-s1/cgroup.kill");
    fs::write(&kill_file, "").expect("write");
    let mut child = Command::new("sleep").arg("100").spawn().expect("spawn");
    cg.move_into_slot("s1", child.id()).expect("move");
    // No kernel behind the file: the process survives, the wait gives up after KILL_WAIT.
    assert_eq!(cg.kill_slot("s1").expect("kill"), 1);
    assert_eq!(read(&kill_file), "1");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "killed by pid"
    );
    child.kill().expect("kill child");
    child.wait().expect("wait");
}

#[test]
fn removal_never_deletes_files_itself() {
    let dir = fake_root("cpuset memory");
    let cg = V2Cgroups::new(&config(dir.path())).expect("v2");
    cg.remove_slot("s1")
        .expect("removing a missing slot is fine");
    cg.create_slot("s1", &limits(&[0], 64 * MIB))
        .expect("create");
    // On cgroupfs rmdir drops the control files; on a plain directory it must fail rather
    // than delete them.
    let err = cg.remove_slot("s1").expect_err("plain directory");
    assert!(err.to_string().contains("slot-s1"), "{err}");
    assert!(dir
        .path()
        .join("fleetmap/node-a/slot-s1/memory.max")
        .exists());
}

#[test]
fn cleanup_removes_bare_cgroups_deepest_first_and_keeps_the_parent() {
    let dir = fake_root("cpuset memory");
    let cg = V2Cgroups::new(&config(dir.path())).expect("v2");
    let parent = dir.path().join("fleetmap/node-a");
    for stale in ["slot-s1/inner/deeper", "slot-s9", "pool"] {
        fs::create_dir_all(parent.join(stale)).expect("mkdir");
    }
    let report = cg.cleanup_stale().expect("cleanup");
    assert_eq!(
        report,
        CleanupReport {
            cgroups_removed: 5,
            processes_killed: 0
        }
    );
    assert!(parent.is_dir());
    assert_eq!(
        fs::read_dir(&parent)
            .expect("readdir")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
            .count(),
        0
    );
    assert_eq!(cg.cleanup_stale().expect("again"), CleanupReport::default());
}

#[test]
fn cleanup_kills_listed_processes_first() {
    let dir = fake_root("cpuset memory");
    let cg = V2Cgroups::new(&config(dir.path())).expect("v2");
    let stale = dir.path().join("fleetmap/node-a/slot-s4/nested");
    fs::create_dir_all(&stale).expect("mkdir");
    let mut child = Command::new("sleep").arg("100").spawn().expect("spawn");
    fs::write(stale.join("cgroup.procs"), format!("{}\n", child.id())).expect("write");
    let reaper = thread::spawn(move || child.wait().expect("wait"));
    // The process dies; removing the fake (file-holding) directory then fails safely.
    let err = cg.cleanup_stale().expect_err("plain directory");
    assert!(err.to_string().contains("nested"), "{err}");
    assert_eq!(reaper.join().expect("reaper").signal(), Some(9));
}
