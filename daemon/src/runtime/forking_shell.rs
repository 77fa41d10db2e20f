//! Test support: a shell that forks `sleep` on request, standing in for a zygote whose
//! forked children must inherit what the daemon set on it (priority, timer slack).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A running `sh` that forks one `sleep 10` when told to.
pub struct ForkingShell {
    shell: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    child: Option<u32>,
}

impl ForkingShell {
    /// Starts the shell; it waits for [`ForkingShell::fork_child`].
    pub fn start() -> Self {
        let mut shell = Command::new("sh")
            .args(["-c", "read go; sleep 10 & echo $!; wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let stdin = shell.stdin.take();
        let stdout = BufReader::new(shell.stdout.take().expect("stdout"));
        Self {
            shell,
            stdin,
            stdout,
            child: None,
        }
    }

    /// The shell's pid.
    pub fn pid(&self) -> u32 {
        self.shell.id()
    }

    /// Makes the shell fork `sleep`; returns the child's pid.
    pub fn fork_child(&mut self) -> u32 {
        self.stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("write");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        let child = line.trim().parse().expect("pid");
        self.child = Some(child);
        child
    }
}

impl Drop for ForkingShell {
    fn drop(&mut self) {
        if let Some(child) = self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.stdin = None;
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}
