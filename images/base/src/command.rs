//! Runs one build step (a host program) with its output appended to the build log, and turns a
//! failure into an error that quotes the step's most telling line.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use tokio::process::Command;
use tracing::{debug, info};

use crate::error::Error;

/// How much of a failed step's output is read back to find its error line.
const TAIL_BYTES: u64 = 256 * 1024;

/// The build log that every step appends to.
#[derive(Debug, Clone)]
pub struct BuildLog {
    path: PathBuf,
}

/// What a step printed, read back from the log.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The step's output (its last [`TAIL_BYTES`] at most), lossily decoded.
    pub text: String,
}

impl BuildLog {
    /// A log at `path`, appended to (created when missing).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> Result<File, Error> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(Error::io("open build log", &self.path))
    }

    /// Runs `command` with stdout and stderr appended to the log; on a non-zero exit returns
    /// [`Error::StepFailed`] naming `step`. On success returns what the step printed.
    pub async fn run(&self, step: &str, command: &mut Command) -> Result<StepOutput, Error> {
        let (status, output) = self.run_unchecked(step, command).await?;
        if status.success() {
            Ok(output)
        } else {
            Err(self.failure(step, status, &output))
        }
    }

    /// Like [`BuildLog::run`] but hands back the exit status instead of judging it, for callers
    /// that read the output of a failure before deciding what to report.
    pub async fn run_unchecked(
        &self,
        step: &str,
        command: &mut Command,
    ) -> Result<(ExitStatus, StepOutput), Error> {
        let mut log = self.open()?;
        let start = log
            .seek(SeekFrom::End(0))
            .map_err(Error::io("seek build log", &self.path))?;
        let program = format!("{:?}", command.as_std());
        writeln!(log, "==> {step}: {program}").map_err(Error::io("write build log", &self.path))?;
        let stderr = log
            .try_clone()
            .map_err(Error::io("open build log", &self.path))?;
        info!(step, log = %self.path.display(), "running build step");
        debug!(step, command = %program, "spawning");
        let status = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .status()
            .await
            .map_err(Error::io(
                "run",
                PathBuf::from(command.as_std().get_program()),
            ))?;
        Ok((status, self.read_from(start)?))
    }

    /// The error for a step that exited with `status` after printing `output`.
    pub fn failure(&self, step: &str, status: ExitStatus, output: &StepOutput) -> Error {
        Error::StepFailed {
            step: step.to_owned(),
            status: status.to_string(),
            tail: error_line(&output.text),
            log: self.path.clone(),
        }
    }

    /// The log's content from `start` on (its last [`TAIL_BYTES`] at most).
    fn read_from(&self, start: u64) -> Result<StepOutput, Error> {
        let mut file = File::open(&self.path).map_err(Error::io("read build log", &self.path))?;
        let end = file
            .seek(SeekFrom::End(0))
            .map_err(Error::io("read build log", &self.path))?;
        let from = start.max(end.saturating_sub(TAIL_BYTES));
        file.seek(SeekFrom::Start(from))
            .map_err(Error::io("read build log", &self.path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(Error::io("read build log", &self.path))?;
        Ok(StepOutput {
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}

/// The most telling line of a failed step's output: the last line that looks like an error
/// (`E: ...`, `ERROR: ...`, `...Error: ...`), else the last non-empty line.
pub fn error_line(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("==> "))
        .collect();
    let looks_like_error = |l: &&&str| {
        l.starts_with("E: ")
            || l.starts_with("ERROR")
            || l.contains("Error: ")
            || l.contains("error: ")
    };
    lines
        .iter()
        .rev()
        .find(looks_like_error)
        .or(lines.last())
        .map_or_else(|| "no output".to_owned(), |l| (*l).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_prefers_error_lines() {
        let out = "I: Retrieving x\nE: Couldn't download package y\nI: cleaning up\n";
        assert_eq!(error_line(out), "E: Couldn't download package y");
        assert_eq!(error_line("a\nb\n\n"), "b");
        assert_eq!(error_line(""), "no output");
    }

    #[tokio::test]
    async fn run_logs_output_and_reports_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = BuildLog::new(dir.path().join("build.log"));
        let ok = log
            .run("greet", Command::new("sh").args(["-c", "echo hello"]))
            .await
            .expect("sh runs");
        assert!(ok.text.contains("hello"));
        let err = log
            .run(
                "fail",
                Command::new("sh").args(["-c", "echo 'E: broken thing' >&2; echo done; exit 3"]),
            )
            .await
            .expect_err("exit 3");
        let msg = err.to_string();
        assert!(msg.contains("fail failed"), "{msg}");
        assert!(msg.contains("E: broken thing"), "{msg}");
        assert!(
            !msg.contains("hello"),
            "only the failed step's output is quoted: {msg}"
        );
        let whole = std::fs::read_to_string(log.path()).expect("log");
        assert!(whole.contains("hello") && whole.contains("broken thing"));
    }
}
