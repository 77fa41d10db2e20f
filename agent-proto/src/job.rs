//! Job-level control types: the job specification, progress, end and status reports.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most whole CPUs one function instance may ask for.
pub const MAX_FUNC_CPU: u32 = 96;
/// Most GB of RAM one function instance may ask for.
pub const MAX_FUNC_RAM_GB: u32 = 360;
/// Cap on `parallelism` for CPU jobs.
pub const MAX_PARALLELISM: u32 = 4000;
/// Cap on `parallelism` when `func_gpu` is set.
pub const MAX_GPU_PARALLELISM: u32 = 100;
/// Longest accepted job id.
pub const MAX_JOB_ID_LEN: usize = 64;

/// The environment a job's instances run in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EnvSpec {
    /// The node's configured worker Python, as installed.
    #[default]
    NodeDefault,
    /// Exactly these pip requirements on top of the base environment.
    Packages {
        /// pip requirement strings.
        packages: Vec<String>,
    },
    /// An image built from this Dockerfile.
    Dockerfile {
        /// The Dockerfile's text.
        content: String,
        /// The files its `COPY`/`ADD` instructions use, relative to the Dockerfile's directory.
        #[serde(default)]
        context: Vec<ContextFile>,
    },
    /// The client's installed distributions, replicated.
    Clone {
        /// `name==version` pins of the client's distributions.
        distributions: Vec<String>,
    },
}

/// One file of a Dockerfile's build context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextFile {
    /// Path relative to the context root, `/`-separated, no `..` (checked by the daemon).
    pub path: String,
    /// The file's bytes, base64 (standard alphabet, padded).
    pub data_b64: String,
    /// Unix permission bits (`0o644` when absent).
    #[serde(default)]
    pub mode: Option<u32>,
}

impl EnvSpec {
    /// Short name for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::NodeDefault => "node_default",
            Self::Packages { .. } => "packages",
            Self::Dockerfile { .. } => "dockerfile",
            Self::Clone { .. } => "clone",
        }
    }
}

/// What a client asks for: the first frame (`SPEC`) of a job submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Protocol version the sender speaks.
    pub version: u32,
    /// Client-generated id: 1..=64 chars of `[A-Za-z0-9_-]`.
    pub job_id: String,
    /// Whole CPUs per instance.
    pub func_cpu: u32,
    /// GB of RAM per instance.
    pub func_ram_gb: u32,
    /// GPU model each instance gets one of, if any.
    #[serde(default)]
    pub func_gpu: Option<String>,
    /// Max concurrent instances; -1 for as many as fit.
    #[serde(default = "minus_one")]
    pub parallelism: i64,
    /// Number of inputs when the client knows it.
    #[serde(default)]
    pub expected_inputs: Option<u64>,
    /// Per-input wall-clock limit in seconds.
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Re-runs allowed for an input whose instance died.
    #[serde(default)]
    pub retries: u32,
    /// Whether the first exception ends the job.
    #[serde(default = "yes")]
    pub stop_on_exception: bool,
    /// The client's Python `major.minor`.
    #[serde(default)]
    pub python_version: Option<String>,
    /// Environment the instances run in.
    #[serde(default)]
    pub environment: EnvSpec,
    /// Whether the job outlives the client's connection.
    #[serde(default)]
    pub detach: bool,
}

fn minus_one() -> i64 {
    -1
}

fn yes() -> bool {
    true
}

/// A job specification that cannot be accepted, with the sentence that says what to change.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    /// The sender speaks a protocol version this side does not.
    #[error("protocol version {got} is not supported (this side speaks {supported}); upgrade the older of client and cluster")]
    Version {
        /// Version announced.
        got: u32,
        /// Version spoken here.
        supported: u32,
    },
    /// The job id has a bad length or characters.
    #[error("job_id {0:?} is invalid; use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")]
    JobId(String),
    /// `func_cpu` out of range.
    #[error("func_cpu={0} is out of range; use a whole number of CPUs from 1 to {MAX_FUNC_CPU}")]
    FuncCpu(u32),
    /// `func_ram_gb` out of range.
    #[error("func_ram={0} is out of range; use a whole number of GB from 1 to {MAX_FUNC_RAM_GB}")]
    FuncRam(u32),
    /// `parallelism` neither -1 nor positive.
    #[error("parallelism={0} is invalid; use -1 (as many as fit) or a positive number")]
    Parallelism(i64),
    /// `timeout_s` not a positive finite number.
    #[error("timeout={0} is invalid; use a positive number of seconds")]
    Timeout(String),
    /// `func_gpu` names no model (see [`crate::gpu`] for the rules).
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuModelError),
}

impl JobSpec {
    /// A spec with the defaults of `remote_parallel_map` for `job_id`.
    pub fn new(job_id: impl Into<String>) -> Self {
        Self {
            version: crate::PROTOCOL_VERSION,
            job_id: job_id.into(),
            func_cpu: 1,
            func_ram_gb: 1,
            func_gpu: None,
            parallelism: -1,
            expected_inputs: None,
            timeout_s: None,
            retries: 0,
            stop_on_exception: true,
            python_version: None,
            environment: EnvSpec::NodeDefault,
            detach: false,
        }
    }

    /// Checks every field against the contract; the error says what to change.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.version != crate::PROTOCOL_VERSION {
            return Err(SpecError::Version {
                got: self.version,
                supported: crate::PROTOCOL_VERSION,
            });
        }
        let id_ok = !self.job_id.is_empty()
            && self.job_id.len() <= MAX_JOB_ID_LEN
            && self
                .job_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(SpecError::JobId(self.job_id.clone()));
        }
        if !(1..=MAX_FUNC_CPU).contains(&self.func_cpu) {
            return Err(SpecError::FuncCpu(self.func_cpu));
        }
        if !(1..=MAX_FUNC_RAM_GB).contains(&self.func_ram_gb) {
            return Err(SpecError::FuncRam(self.func_ram_gb));
        }
        if self.parallelism == 0 || self.parallelism < -1 {
            return Err(SpecError::Parallelism(self.parallelism));
        }
        if let Some(timeout) = self.timeout_s {
            if !(timeout.is_finite() && timeout > 0.0) {
                return Err(SpecError::Timeout(timeout.to_string()));
            }
        }
        if let Some(gpu) = self.func_gpu.as_deref() {
            crate::gpu::GpuModel::parse(gpu)?;
        }
        Ok(())
    }

    /// RAM per instance in bytes.
    pub fn ram_bytes(&self) -> u64 {
        u64::from(self.func_ram_gb) * 1024 * 1024 * 1024
    }

    /// The most instances this job may run at once anywhere, before fitting to capacity:
    /// `parallelism` (or `min(4000, expected_inputs)` for -1), capped at 100 with a GPU.
    pub fn instance_cap(&self) -> u64 {
        let cap = if self.func_gpu.is_some() {
            MAX_GPU_PARALLELISM
        } else {
            MAX_PARALLELISM
        };
        let wanted = if self.parallelism > 0 {
            self.parallelism as u64
        } else {
            u64::from(cap)
        };
        let wanted = wanted.min(u64::from(cap));
        match self.expected_inputs {
            Some(n) => wanted.min(n.max(1)),
            None => wanted,
        }
    }
}

/// Lifecycle of a job, on a daemon and on the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Admitted; instances are being prepared.
    Starting,
    /// Inputs are running.
    Running,
    /// Every input yielded its result or failure.
    Completed,
    /// Stopped by a failure (an exception with `stop_on_exception`, or no node can run it).
    Failed,
    /// Stopped by the client.
    Cancelled,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether the job can still be cancelled.
    pub fn can_cancel(self) -> bool {
        !self.is_terminal()
    }

    /// Whether the job may still take inputs.
    pub fn can_accept_inputs(self) -> bool {
        !self.is_terminal()
    }

    /// Lower-case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "starting" => Self::Starting,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Periodic progress (`STATUS` frame).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Inputs waiting to run.
    #[serde(default)]
    pub queued: u64,
    /// Inputs running now.
    #[serde(default)]
    pub running: u64,
    /// Inputs that yielded a result.
    #[serde(default)]
    pub done: u64,
    /// Inputs that yielded a failure.
    #[serde(default)]
    pub failed: u64,
    /// Instances running the job.
    #[serde(default)]
    pub instances: u64,
    /// Nodes running the job.
    #[serde(default)]
    pub nodes: u64,
}

/// How a result stream ended (`END` frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEnd {
    /// Final state.
    pub state: JobState,
    /// Inputs that yielded a result.
    #[serde(default)]
    pub done: u64,
    /// Inputs that yielded a failure.
    #[serde(default)]
    pub failed: u64,
    /// Why the job failed or was cancelled.
    #[serde(default)]
    pub message: Option<String>,
}

/// A daemon's view of one job (`GET /v1/jobs/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job's id.
    pub job_id: String,
    /// Where it is in its lifecycle.
    pub state: JobState,
    /// Inputs waiting.
    pub queued: u64,
    /// Inputs running.
    pub running: u64,
    /// Inputs with a result.
    pub done: u64,
    /// Inputs with a failure.
    pub failed: u64,
    /// Instances running it.
    pub instances: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_json_takes_contract_defaults() {
        let spec: JobSpec =
            serde_json::from_str(r#"{"version":1,"job_id":"abc","func_cpu":2,"func_ram_gb":4}"#)
                .expect("valid spec");
        assert_eq!(spec.parallelism, -1);
        assert!(spec.stop_on_exception);
        assert_eq!(spec.environment, EnvSpec::NodeDefault);
        spec.validate().expect("valid");
    }

    #[test]
    fn spec_round_trips_with_environment_tags() {
        let mut spec = JobSpec::new("job-1");
        spec.environment = EnvSpec::Packages {
            packages: vec!["six==1.16.0".into()],
        };
        let json = serde_json::to_string(&spec).expect("serializes");
        assert!(json.contains(r#""kind":"packages""#), "{json}");
        let back: JobSpec = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, spec);
    }

    #[test]
    fn dockerfile_context_defaults_to_empty() {
        let env: EnvSpec =
            serde_json::from_str(r#"{"kind":"dockerfile","content":"FROM x"}"#).expect("parses");
        assert_eq!(
            env,
            EnvSpec::Dockerfile {
                content: "FROM x".into(),
                context: vec![]
            }
        );
    }

    #[test]
    fn out_of_range_values_get_sentences_that_say_what_to_change() {
        let mut spec = JobSpec::new("j");
        spec.func_cpu = 97;
        assert_eq!(
            spec.validate().expect_err("too many cpus").to_string(),
            "func_cpu=97 is out of range; use a whole number of CPUs from 1 to 96"
        );
        let mut spec = JobSpec::new("j");
        spec.func_ram_gb = 0;
        assert!(matches!(spec.validate(), Err(SpecError::FuncRam(0))));
        let mut spec = JobSpec::new("j");
        spec.parallelism = 0;
        assert!(matches!(spec.validate(), Err(SpecError::Parallelism(0))));
        let mut spec = JobSpec::new("j");
        spec.timeout_s = Some(f64::NAN);
        assert!(matches!(spec.validate(), Err(SpecError::Timeout(_))));
        let spec = JobSpec::new("../etc");
        assert!(matches!(spec.validate(), Err(SpecError::JobId(_))));
        let mut spec = JobSpec::new("j");
        spec.version = 2;
        assert!(matches!(spec.validate(), Err(SpecError::Version { .. })));
    }

    #[test]
    fn instance_cap_follows_the_contract() {
        let mut spec = JobSpec::new("j");
        assert_eq!(spec.instance_cap(), 4000);
        spec.expected_inputs = Some(7);
        assert_eq!(spec.instance_cap(), 7);
        spec.expected_inputs = Some(0);
        assert_eq!(spec.instance_cap(), 1);
        spec.expected_inputs = None;
        spec.func_gpu = Some("H100".into());
        spec.parallelism = 500;
        assert_eq!(spec.instance_cap(), 100);
    }

    #[test]
    fn func_gpu_must_name_a_model() {
        let mut spec = JobSpec::new("j");
        spec.func_gpu = Some("A100_80G".into());
        assert_eq!(spec.validate(), Ok(()));
        spec.func_gpu = Some(" ".into());
        let err = spec.validate().expect_err("empty");
        assert!(err.to_string().contains("not an empty string"), "{err}");
        spec.func_gpu = Some("80GB".into());
        let err = spec.validate().expect_err("only memory");
        assert!(
            err.to_string().contains("names only a memory size"),
            "{err}"
        );
    }

    #[test]
    fn state_guards() {
        assert!(JobState::Running.can_cancel());
        assert!(!JobState::Completed.can_cancel());
        assert!(!JobState::Cancelled.can_accept_inputs());
        for state in [
            JobState::Starting,
            JobState::Running,
            JobState::Completed,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
    }
}
