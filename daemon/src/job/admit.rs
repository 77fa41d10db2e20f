//! Whether this node can take a job at all, decided from its SPEC before any input runs; every
//! refusal is one sentence saying what to change.

use agent_proto::{JobSpec, SpecError};
use thiserror::Error;

use crate::capacity::Capacity;
use crate::config::RuntimeKind;

/// Why a job is refused.
#[derive(Debug, Error)]
pub enum AdmitError {
    /// A field is out of its range.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The job's environment cannot be had on this node.
    #[error(transparent)]
    Environment(#[from] crate::env::EnvError),
    /// The client's Python differs from the workers'.
    #[error("the client runs Python {client} but this node's workers run Python {node}; run the client on Python {node_minor} or start the node with --worker-python pointing at a Python {client}")]
    Python {
        /// The client's `major.minor`.
        client: String,
        /// The workers' full version.
        node: String,
        /// The workers' `major.minor`.
        node_minor: String,
    },
    /// One instance can never fit this node.
    #[error("{0}")]
    DoesNotFit(String),
    /// A built environment (a Dockerfile's image, usually) runs another Python than the client.
    #[error("the {kind} environment runs Python {env} but the client runs Python {client}, and the function only unpickles on the same major.minor; make the environment's python3 a Python {client} or run the client on Python {env_minor}")]
    EnvPython {
        /// The environment's recipe kind (`dockerfile`, `packages`, `clone`).
        kind: &'static str,
        /// The client's `major.minor`.
        client: String,
        /// The environment's full version.
        env: String,
        /// The environment's `major.minor`.
        env_minor: String,
    },
}

/// `major.minor` of a version string (`3.11.7` → `3.11`).
pub fn major_minor(version: &str) -> &str {
    let mut dots = version.match_indices('.');
    match (dots.next(), dots.next()) {
        (Some(_), Some((second, _))) => &version[..second],
        _ => version,
    }
}

/// Checks a spec against what this node offers.
pub fn check(
    spec: &JobSpec,
    worker_python: &str,
    capacity: &Capacity,
    runtime: RuntimeKind,
) -> Result<(), AdmitError> {
    spec.validate()?;
    crate::env::recipe::from_spec(&spec.environment, runtime)?;
    if let Some(client) = spec.python_version.as_deref() {
        let node_minor = major_minor(worker_python);
        if major_minor(client) != node_minor {
            return Err(AdmitError::Python {
                client: client.to_string(),
                node: worker_python.to_string(),
                node_minor: node_minor.to_string(),
            });
        }
    }
    capacity
        .fits_ever(&Capacity::request(spec))
        .map_err(|e| AdmitError::DoesNotFit(e.to_string()))
}

/// Checks that a built environment's Python (`None`: the node's own interpreter, checked by
/// [`check`]) is the client's `major.minor`.
pub fn check_env_python(spec: &JobSpec, env_python: Option<&str>) -> Result<(), AdmitError> {
    let (Some(client), Some(env)) = (spec.python_version.as_deref(), env_python) else {
        return Ok(());
    };
    // A build that could not tell its Python (an empty probe answer) is not refused on it.
    if env.is_empty() || client.is_empty() {
        return Ok(());
    }
    let env_minor = major_minor(env);
    if major_minor(client) == env_minor {
        return Ok(());
    }
    Err(AdmitError::EnvPython {
        kind: spec.environment.kind_name(),
        client: client.to_string(),
        env: env.to_string(),
        env_minor: env_minor.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use agent_proto::EnvSpec;
    use fleetmap_sandbox::Inventory;

    use super::*;

    fn capacity() -> Capacity {
        Capacity::new(Inventory {
            cpus: vec![0, 1],
            ram_bytes: 4 << 30,
        })
    }

    const P: RuntimeKind = RuntimeKind::Process;

    #[test]
    fn major_minor_cuts_the_patch_level() {
        assert_eq!(major_minor("3.11.7"), "3.11");
        assert_eq!(major_minor("3.11"), "3.11");
        assert_eq!(major_minor("3"), "3");
    }

    #[test]
    fn a_built_environment_must_run_the_clients_python() {
        let mut spec = JobSpec::new("j");
        spec.environment = EnvSpec::Dockerfile {
            content: "FROM fleetmap/base:1".into(),
            context: vec![],
        };
        check_env_python(&spec, Some("3.11.2")).expect("no client version: nothing to check");
        spec.python_version = Some("3.11".into());
        check_env_python(&spec, Some("3.11.2")).expect("same major.minor");
        check_env_python(&spec, None).expect("the node's own interpreter");
        check_env_python(&spec, Some("")).expect("unknown: not refused");
        let text = check_env_python(&spec, Some("3.12.1"))
            .expect_err("another minor")
            .to_string();
        assert_eq!(
            text,
            "the dockerfile environment runs Python 3.12.1 but the client runs Python 3.11, and the function only unpickles on the same major.minor; make the environment's python3 a Python 3.11 or run the client on Python 3.12"
        );
    }

    #[test]
    fn refusals_are_one_sentence() {
        let cap = capacity();
        let mut spec = JobSpec::new("j");
        spec.python_version = Some("3.11".into());
        check(&spec, "3.11.7", &cap, P).expect("fits");

        spec.python_version = Some("3.12".into());
        let err = check(&spec, "3.11.7", &cap, P).expect_err("mismatch");
        let text = err.to_string();
        assert!(text.contains("3.12") && text.contains("3.11.7"), "{text}");

        let mut spec = JobSpec::new("j");
        spec.environment = EnvSpec::Packages { packages: vec![] };
        check(&spec, "3.11.7", &cap, P).expect("packages are built on any runtime");
        spec.environment = EnvSpec::Dockerfile {
            content: "FROM fleetmap/base:1".into(),
            context: vec![],
        };
        check(&spec, "3.11.7", &cap, RuntimeKind::Docker).expect("docker builds dockerfiles");
        let text = check(&spec, "3.11.7", &cap, P)
            .expect_err("env")
            .to_string();
        assert!(
            text.starts_with("dockerfile= needs a node running the docker runtime"),
            "{text}"
        );

        let mut spec = JobSpec::new("j");
        spec.func_cpu = 3;
        assert!(matches!(
            check(&spec, "3.11.7", &cap, P),
            Err(AdmitError::DoesNotFit(_))
        ));
        spec.func_cpu = 200;
        assert!(matches!(
            check(&spec, "3.11.7", &cap, P),
            Err(AdmitError::Spec(_))
        ));
        let text = err.to_string();
        assert_eq!(text.matches(';').count(), 1);
        assert!(!text.ends_with('.'));
    }

    #[test]
    fn gpu_jobs_need_a_gpu_of_that_model_here() {
        let cap = capacity();
        let mut spec = JobSpec::new("j");
        spec.func_gpu = Some("H100".into());
        let text = check(&spec, "3.11.7", &cap, RuntimeKind::Process)
            .expect_err("no gpus")
            .to_string();
        assert_eq!(
            text,
            "no GPU on this node matches func_gpu=\"H100\"; this node has no GPUs; change func_gpu or add a node with that GPU"
        );
        cap.set_gpus(vec![fleetmap_sandbox::GpuDevice {
            index: 0,
            uuid: "GPU-0".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_bytes: 81559 << 20,
            mig: agent_proto::MigMode::Disabled,
            minor: Some(0),
        }]);
        check(&spec, "3.11.7", &cap, RuntimeKind::Process).expect("an H100 is here");
        spec.func_gpu = Some("80GB".into());
        assert!(matches!(
            check(&spec, "3.11.7", &cap, RuntimeKind::Process),
            Err(AdmitError::Spec(_))
        ));
    }
}
