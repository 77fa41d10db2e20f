//! Real cgroup v1 tests: slots under `/sys/fs/cgroup/{cpuset,memory}/fleetmap-test-*`, with
//! real child processes moved in, limits read back from the kernel, a real OOM kill and the
//! stale sweep of a tree left by a "crashed" daemon.
//!
//! They need root and writable v1 cpuset and memory hierarchies. Where those are missing
//! each test says so on stderr and passes; with `FLEETMAP_REQUIRE_CGROUPS=1` it fails
//! instead (set it in CI, which has them).

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetmap_sandbox::cgroup::parse_cpu_list;
use fleetmap_sandbox::{
    detect, CgroupConfig, CgroupFlavor, CgroupMode, CleanupReport, Inventory, SandboxError,
    SlotCgroups, SlotLimits, DEFAULT_CGROUP_ROOT,
};

const MIB: u64 = 1 << 20;

/// A test's own parent cgroup, removed with everything in it when the test ends, even on
/// failure.
struct TestParent {
    root: PathBuf,
    config: CgroupConfig,
    cgroups: Box<dyn SlotCgroups>,
    children: Vec<Child>,
}

impl TestParent {
    /// A fresh parent (`fleetmap-test-<pid>-<time>-<n>` plus `nested` below it, if given),
    /// or `None` (after saying why) when this host has no writable cgroup v1.
    fn new(nested: Option<&str>) -> Option<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let root = PathBuf::from(DEFAULT_CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            return skip("the host uses the unified cgroup v2 hierarchy");
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut parent = format!(
            "fleetmap-test-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        if let Some(nested) = nested {
            parent = format!("{parent}/{nested}");
        }
        let config = CgroupConfig {
            root: root.clone(),
            parent,
        };
        match detect(&config, CgroupMode::Required) {
            Ok(cgroups) if cgroups.flavor() == CgroupFlavor::V1 => Some(Self {
                root,
                config,
                cgroups,
                children: Vec::new(),
            }),
            Ok(cgroups) => skip(&format!("detected cgroup flavour {:?}", cgroups.flavor())),
            Err(err) => skip(&format!("cgroup v1 not writable here ({err})")),
        }
    }

    fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        self.root
            .join(controller)
            .join(&self.config.parent)
            .join(rel)
    }

    fn read(&self, controller: &str, rel: &str, file: &str) -> String {
        let path = self.dir(controller, rel).join(file);
        fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
            .trim()
            .to_owned()
    }

    /// Spawns a child this guard kills and reaps at the end; returns its index.
    fn spawn(&mut self, command: &mut Command) -> usize {
        let child = command.spawn().expect("spawn test child");
        self.children.push(child);
        self.children.len() - 1
    }

    fn pid(&self, child: usize) -> u32 {
        self.children[child].id()
    }

    /// Waits (≤ 5 s) for a child to end and returns its status.
    fn wait(&mut self, child: usize) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.children[child].try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "child did not end");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestParent {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(err) = self.cgroups.remove_all() {
            eprintln!("cleanup of {}: {err}", self.config.parent);
        }
        // Whatever remove_all could not take (it failed, or a test made a mess).
        let mut rel = Some(PathBuf::from(&self.config.parent));
        while let Some(here) = rel.filter(|p| !p.as_os_str().is_empty()) {
            for controller in ["cpuset", "memory"] {
                let dir = self.root.join(controller).join(&here);
                if dir.is_dir() {
                    if let Err(err) = fs::remove_dir(&dir) {
                        eprintln!("rmdir {}: {err}", dir.display());
                    }
                }
            }
            rel = here.parent().map(Path::to_path_buf);
        }
    }
}

fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("FLEETMAP_REQUIRE_CGROUPS").is_ok_and(|v| v == "1") {
        panic!("FLEETMAP_REQUIRE_CGROUPS=1 but {reason}");
    }
    // Straight to fd 2, past the test harness's capture, so a skip is seen even on success.
    let _ = writeln!(std::io::stderr(), "SKIPPED (real cgroup v1 test): {reason}");
    None
}

fn proc_status(pid: u32, key: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(key).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("{key} missing"))
}

fn proc_cgroup(pid: u32, controller: &str) -> String {
    let content = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    content
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_owned())
        })
        .unwrap_or_else(|| panic!("no {controller} line"))
}

fn sleeper() -> Command {
    let mut command = Command::new("sleep");
    command.arg("100").stdin(Stdio::null());
    command
}

fn python_available() -> bool {
    Command::new("python3")
        .args(["-c", "pass"])
        .status()
        .is_ok_and(|s| s.success())
}

fn last_cpu() -> u32 {
    *Inventory::detect()
        .expect("inventory")
        .cpus
        .last()
        .expect("a cpu")
}

#[test]
fn parent_is_created_at_the_hierarchy_root() {
    let Some(t) = TestParent::new(Some("node-a")) else {
        return;
    };
    for controller in ["cpuset", "memory"] {
        assert!(
            t.dir(controller, "").is_dir(),
            "{controller} parent missing"
        );
    }
    let root_cpus = fs::read_to_string(t.root.join("cpuset/cpuset.cpus")).expect("root cpus");
    assert_eq!(t.read("cpuset", "", "cpuset.cpus"), root_cpus.trim());
    assert!(!t.read("cpuset", "", "cpuset.mems").is_empty());
    // The level between the root and the parent got CPUs too, or nothing could join below.
    let top = Path::new(&t.config.parent).parent().expect("nested");
    let top_cpus = t.root.join("cpuset").join(top).join("cpuset.cpus");
    assert_eq!(
        fs::read_to_string(top_cpus).expect("read").trim(),
        root_cpus.trim()
    );
}

#[test]
fn slot_limits_apply_to_a_real_process() {
    let Some(mut t) = TestParent::new(None) else {
        return;
    };
    let cpu = last_cpu();
    let child = t.spawn(&mut sleeper());
    let pid = t.pid(child);

    t.cgroups.enter_pool(pid).expect("enter pool");
    let pool = format!("/{}/pool", t.config.parent);
    assert_eq!(proc_cgroup(pid, "cpuset"), pool);
    assert_eq!(proc_cgroup(pid, "memory"), pool);

    let limits = SlotLimits {
        cpus: vec![cpu],
        ram_bytes: 64 * MIB,
    };
    t.cgroups.create_slot("s1", &limits).expect("create slot");
    t.cgroups.move_into_slot("s1", pid).expect("move");

    let slot = format!("/{}", t.config.slot_cgroup("s1"));
    assert_eq!(proc_cgroup(pid, "cpuset"), slot);
    assert_eq!(proc_cgroup(pid, "memory"), slot);
    assert_eq!(
        parse_cpu_list(&proc_status(pid, "Cpus_allowed_list:")),
        Some(vec![cpu])
    );
    assert_eq!(t.read("cpuset", "slot-s1", "cpuset.cpus"), cpu.to_string());
    assert_eq!(
        t.read("cpuset", "slot-s1", "cpuset.mems"),
        t.read("cpuset", "", "cpuset.mems")
    );
    assert_eq!(
        t.read("memory", "slot-s1", "memory.limit_in_bytes"),
        (64 * MIB).to_string()
    );
    let memsw = t
        .dir("memory", "slot-s1")
        .join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        assert_eq!(
            t.read("memory", "slot-s1", "memory.memsw.limit_in_bytes"),
            (64 * MIB).to_string()
        );
    } else {
        eprintln!("note: no swap accounting (memory.memsw.*) on this kernel");
    }
    assert_eq!(t.cgroups.slot_processes("s1").expect("procs"), vec![pid]);
    assert_eq!(t.cgroups.oom_kills("s1").expect("oom"), 0);

    assert_eq!(t.cgroups.kill_slot("s1").expect("kill"), 1);
    assert_eq!(t.wait(child).signal(), Some(9));
    assert!(t.cgroups.slot_processes("s1").expect("procs").is_empty());

    t.cgroups.remove_slot("s1").expect("remove");
    assert!(!t.dir("cpuset", "slot-s1").exists());
    assert!(!t.dir("memory", "slot-s1").exists());
}

#[test]
fn create_slot_relimits_an_existing_slot() {
    let Some(t) = TestParent::new(None) else {
        return;
    };
    let first = Inventory::detect().expect("inventory").cpus[0];
    let last = last_cpu();
    for (cpu, ram) in [(first, 64 * MIB), (last, 32 * MIB), (first, 256 * MIB)] {
        let limits = SlotLimits {
            cpus: vec![cpu],
            ram_bytes: ram,
        };
        t.cgroups.create_slot("s1", &limits).expect("create");
        assert_eq!(t.read("cpuset", "slot-s1", "cpuset.cpus"), cpu.to_string());
        assert_eq!(
            t.read("memory", "slot-s1", "memory.limit_in_bytes"),
            ram.to_string()
        );
        if t.dir("memory", "slot-s1")
            .join("memory.memsw.limit_in_bytes")
            .exists()
        {
            assert_eq!(
                t.read("memory", "slot-s1", "memory.memsw.limit_in_bytes"),
                ram.to_string()
            );
        }
    }
}

#[test]
fn set_slot_cpus_rewrites_the_cpus_and_keeps_the_memory_limit() {
    let Some(mut t) = TestParent::new(None) else {
        return;
    };
    let first = Inventory::detect().expect("inventory").cpus[0];
    let last = last_cpu();
    assert!(
        t.cgroups.set_slot_cpus("s1", &[first]).is_err(),
        "no such slot cgroup yet"
    );
    assert!(!t.dir("cpuset", "slot-s1").exists(), "it made nothing");
    let limits = SlotLimits {
        cpus: vec![first],
        ram_bytes: 96 * MIB,
    };
    t.cgroups.create_slot("s1", &limits).expect("create");
    let child = t.spawn(&mut sleeper());
    let pid = t.pid(child);
    t.cgroups.move_into_slot("s1", pid).expect("move");
    for cpu in [last, first] {
        t.cgroups.set_slot_cpus("s1", &[cpu]).expect("set cpus");
        assert_eq!(t.read("cpuset", "slot-s1", "cpuset.cpus"), cpu.to_string());
        assert_eq!(
            proc_status(pid, "Cpus_allowed_list:"),
            cpu.to_string(),
            "the process in it sees the new CPU list"
        );
        assert_eq!(
            t.read("memory", "slot-s1", "memory.limit_in_bytes"),
            (96 * MIB).to_string(),
            "the memory limit is left as it was"
        );
    }
}

#[test]
fn relimit_slot_rewrites_an_existing_slot_and_refuses_a_missing_one() {
    let Some(mut t) = TestParent::new(None) else {
        return;
    };
    let first = Inventory::detect().expect("inventory").cpus[0];
    let last = last_cpu();
    let limits = |cpu, ram_bytes| SlotLimits {
        cpus: vec![cpu],
        ram_bytes,
    };
    assert!(
        t.cgroups
            .relimit_slot("s1", &limits(first, 64 * MIB))
            .is_err(),
        "no such slot cgroup yet"
    );
    assert!(!t.dir("cpuset", "slot-s1").exists(), "relimit made nothing");
    t.cgroups
        .create_slot("s1", &limits(first, 64 * MIB))
        .expect("create");
    let child = t.spawn(&mut sleeper());
    let pid = t.pid(child);
    t.cgroups.move_into_slot("s1", pid).expect("move");
    // Down, up and down again: memsw must stay above the limit at every step.
    for (cpu, ram) in [(last, 32 * MIB), (first, 256 * MIB), (last, 48 * MIB)] {
        t.cgroups
            .relimit_slot("s1", &limits(cpu, ram))
            .expect("relimit");
        assert_eq!(t.read("cpuset", "slot-s1", "cpuset.cpus"), cpu.to_string());
        assert_eq!(
            t.read("memory", "slot-s1", "memory.limit_in_bytes"),
            ram.to_string()
        );
        assert_eq!(
            proc_status(pid, "Cpus_allowed_list:"),
            cpu.to_string(),
            "the process in it sees the new CPU list"
        );
    }
}

#[test]
fn oom_kill_is_counted() {
    let Some(mut t) = TestParent::new(None) else {
        return;
    };
    if !python_available() {
        skip::<()>("python3 is not installed");
        return;
    }
    let limits = SlotLimits {
        cpus: vec![last_cpu()],
        ram_bytes: 64 * MIB,
    };
    t.cgroups.create_slot("s1", &limits).expect("create");
    // Allocates only after it is in the slot (it waits for a byte on stdin).
    let child = t.spawn(
        Command::new("python3")
            .args([
                "-c",
                "import sys; sys.stdin.read(1); b = b'x' * (256 << 20); print(len(b))",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let pid = t.pid(child);
    t.cgroups.move_into_slot("s1", pid).expect("move");
    assert_eq!(t.cgroups.oom_kills("s1").expect("oom"), 0);
    let mut stdin = t.children[child].stdin.take().expect("stdin");
    stdin.write_all(b"go").expect("write");
    drop(stdin);
    assert_eq!(
        t.wait(child).signal(),
        Some(9),
        "the OOM killer should SIGKILL it"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while t.cgroups.oom_kills("s1").expect("oom") == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(t.cgroups.oom_kills("s1").expect("oom"), 1);
}

#[test]
fn kill_slot_takes_forked_children_too() {
    let Some(mut t) = TestParent::new(None) else {
        return;
    };
    let limits = SlotLimits {
        cpus: vec![last_cpu()],
        ram_bytes: 64 * MIB,
    };
    t.cgroups.create_slot("s2", &limits).expect("create");
    // Forks two sleepers once it is in the slot, so they start inside it.
    let child = t.spawn(
        Command::new("sh")
            .args(["-c", "read x; sleep 100 & sleep 100 & wait"])
            .stdin(Stdio::piped()),
    );
    t.cgroups.move_into_slot("s2", t.pid(child)).expect("move");
    let mut stdin = t.children[child].stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.cgroups.slot_processes("s2").expect("procs").len() < 3 {
        assert!(Instant::now() < deadline, "sleepers did not start");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(t.cgroups.kill_slot("s2").expect("kill"), 3);
    assert!(t.cgroups.slot_processes("s2").expect("procs").is_empty());
    assert_eq!(t.wait(child).signal(), Some(9));
    drop(stdin);
}

#[test]
fn cleanup_stale_removes_a_tree_with_live_processes() {
    let Some(mut t) = TestParent::new(None) else {
        return;
    };
    let pooled = t.spawn(&mut sleeper());
    let slotted = t.spawn(&mut sleeper());
    {
        // A daemon that dies without cleaning up: its handle goes, its cgroups stay.
        let crashed = detect(&t.config, CgroupMode::Required).expect("detect");
        crashed.enter_pool(t.pid(pooled)).expect("pool");
        let limits = SlotLimits {
            cpus: vec![last_cpu()],
            ram_bytes: 64 * MIB,
        };
        crashed.create_slot("s1", &limits).expect("create");
        crashed.move_into_slot("s1", t.pid(slotted)).expect("move");
    }
    for controller in ["cpuset", "memory"] {
        fs::create_dir(t.dir(controller, "slot-s1/inner")).expect("nested stale cgroup");
    }

    let restarted = detect(&t.config, CgroupMode::Required).expect("detect");
    let report = restarted.cleanup_stale().expect("cleanup");
    assert_eq!(
        report,
        CleanupReport {
            cgroups_removed: 3,
            processes_killed: 2
        }
    );
    assert_eq!(t.wait(pooled).signal(), Some(9));
    assert_eq!(t.wait(slotted).signal(), Some(9));
    for controller in ["cpuset", "memory"] {
        let parent = t.dir(controller, "");
        assert!(parent.is_dir(), "the parent itself stays");
        let subdirs = fs::read_dir(&parent)
            .expect("readdir")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
            .count();
        assert_eq!(subdirs, 0, "{} still has cgroups", parent.display());
    }
    assert_eq!(
        restarted.cleanup_stale().expect("again"),
        CleanupReport::default()
    );
}

#[test]
fn unknown_and_invalid_slots() {
    let Some(t) = TestParent::new(None) else {
        return;
    };
    let me = std::process::id();
    assert!(matches!(
        t.cgroups.move_into_slot("s404", me),
        Err(SandboxError::UnknownSlot(_))
    ));
    assert!(matches!(
        t.cgroups.oom_kills("s404"),
        Err(SandboxError::UnknownSlot(_))
    ));
    assert!(matches!(
        t.cgroups.slot_processes("s404"),
        Err(SandboxError::UnknownSlot(_))
    ));
    assert_eq!(t.cgroups.kill_slot("s404").expect("nothing to kill"), 0);
    t.cgroups.remove_slot("s404").expect("nothing to remove");
    let limits = SlotLimits {
        cpus: vec![0],
        ram_bytes: 64 * MIB,
    };
    assert!(t.cgroups.create_slot("../../escape", &limits).is_err());
    assert!(!t.root.join("cpuset/escape").exists());
    assert!(t.cgroups.create_slot("s1", &limits).is_ok());
    t.cgroups.remove_slot("s1").expect("remove");
    t.cgroups.remove_slot("s1").expect("remove twice");
}

#[test]
fn remove_all_leaves_nothing_behind() {
    let Some(mut t) = TestParent::new(Some("node-a")) else {
        return;
    };
    let child = t.spawn(&mut sleeper());
    let pooled = t.spawn(&mut sleeper());
    let limits = SlotLimits {
        cpus: vec![last_cpu()],
        ram_bytes: 64 * MIB,
    };
    t.cgroups.create_slot("s1", &limits).expect("create");
    t.cgroups.move_into_slot("s1", t.pid(child)).expect("move");
    t.cgroups.enter_pool(t.pid(pooled)).expect("pool");
    let report = t.cgroups.remove_all().expect("remove all");
    assert_eq!(
        report,
        CleanupReport {
            cgroups_removed: 3,
            processes_killed: 2
        }
    );
    assert_eq!(t.wait(child).signal(), Some(9));
    assert_eq!(t.wait(pooled).signal(), Some(9));
    let top = Path::new(&t.config.parent)
        .parent()
        .expect("nested")
        .to_path_buf();
    for controller in ["cpuset", "memory"] {
        assert!(!t.dir(controller, "").exists());
        assert!(
            !t.root.join(controller).join(&top).exists(),
            "empty ancestor kept"
        );
    }
}
