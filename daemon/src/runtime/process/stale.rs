//! Finds and kills worker processes of this state dir left by an earlier run, by their command
//! line (works with and without cgroups: forked workers keep the zygote's argv).

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::info;

/// SIGKILLs every process whose command line has `worker_file` as an argument, except this
/// process; returns how many were signalled.
pub fn kill_workers_of(proc_root: &Path, worker_file: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return 0;
    };
    let needle = worker_file.as_os_str().as_encoded_bytes();
    let own = std::process::id();
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|arg| arg == needle) {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            if kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok() {
                info!(pid, "killed a worker left by an earlier run");
                killed += 1;
            }
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real interpreter behind `python3`: a version-manager shim (pyenv) execs through a
    /// chain of scripts that already carry `arg`, and a process caught mid-exec has no
    /// readable command line, which made this test flaky under load.
    fn real_python() -> String {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    /// A process with `arg` in its command line, once it has exec'd.
    fn sleeper(arg: &Path) -> std::process::Child {
        let mut child = std::process::Command::new(real_python())
            .arg("-c")
            .arg("import time; time.sleep(1000)")
            .arg(arg)
            .spawn()
            .expect("python3");
        let needle = arg.as_os_str().as_encoded_bytes();
        for _ in 0..500 {
            let cmdline =
                std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
            if cmdline.split(|b| *b == 0).any(|a| a == needle) {
                return child;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("python3 did not start");
    }

    #[test]
    fn kills_exactly_the_processes_naming_the_worker_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = dir.path().join("worker/fleetmap_worker.py");
        let other = dir.path().join("other/fleetmap_worker.py");
        let mut victim = sleeper(&ours);
        let mut bystander = sleeper(&other);
        assert_eq!(kill_workers_of(Path::new("/proc"), &ours), 1);
        assert!(!victim.wait().expect("wait").success());
        assert!(
            bystander.try_wait().expect("try_wait").is_none(),
            "must survive"
        );
        bystander.kill().expect("kill");
        bystander.wait().expect("wait");
    }
}
