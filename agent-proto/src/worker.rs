//! Daemon ↔ worker control types: the zygote's JSON lines and the worker's JSON frames.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// First frame a worker sends (`HELLO`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHello {
    /// Protocol version the worker speaks.
    pub version: u32,
    /// The worker's process id (checked against the socket's peer credentials).
    pub pid: u32,
    /// Python version (`3.11.7`).
    pub python: String,
}

/// A worker's job assignment (`ASSIGN`), followed by a `FUNCTION` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The job.
    pub job_id: String,
    /// The slot the worker now occupies.
    pub slot_id: String,
    /// CPU ids of the slot.
    pub cpus: Vec<u32>,
    /// Memory limit of the slot in bytes.
    pub ram_bytes: u64,
    /// File of 16 bytes the worker writes `index+1` and the start time into per input.
    pub progress_path: String,
    /// Environment variables the worker sets (`os.environ`) before it loads the function,
    /// e.g. `CUDA_VISIBLE_DEVICES` for the slot's GPU.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The worker's scratch directory: it makes it its cwd and `TMPDIR` before it loads the
    /// function. Absent: the worker stays where it was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<String>,
    /// Size limit of the scratch in bytes (named in the error of a function that fills it);
    /// 0 when unknown or bounded only by its filesystem.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scratch_bytes: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// A worker that has loaded the function (`READY`). Only its pid: reading its CPUs and cgroup
/// in a fresh process cost 0.1-0.2 ms of the job's way to its first input, for a debug line
/// (fields an older worker still sends are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReady {
    /// The worker's process id.
    pub pid: u32,
}

/// A command to the zygote (one JSON line on its stdin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ZygoteCommand {
    /// Fork `count` new workers.
    Spawn {
        /// How many.
        count: u32,
    },
}

/// An event from the zygote (one JSON line on its stdout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ZygoteEvent {
    /// The zygote has imported what workers need and takes commands.
    Ready {
        /// Its process id.
        pid: u32,
        /// Its Python version.
        python: String,
    },
    /// A worker was forked.
    Spawned {
        /// The worker's process id.
        pid: u32,
    },
    /// A worker ended and was reaped.
    Exited {
        /// The worker's process id.
        pid: u32,
        /// Exit code when it exited.
        #[serde(default)]
        exit_code: Option<i32>,
        /// Signal number when a signal killed it.
        #[serde(default)]
        signal: Option<i32>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zygote_lines_parse() {
        let event: ZygoteEvent =
            serde_json::from_str(r#"{"event":"exited","pid":12,"exit_code":3}"#).expect("parses");
        assert_eq!(
            event,
            ZygoteEvent::Exited {
                pid: 12,
                exit_code: Some(3),
                signal: None
            }
        );
        let command = serde_json::to_string(&ZygoteCommand::Spawn { count: 2 }).expect("ok");
        assert_eq!(command, r#"{"cmd":"spawn","count":2}"#);
    }
}
