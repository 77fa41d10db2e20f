//! TEST ONLY: a GPU inventory given on the command line (`fleetmapd --test-only-fake-gpus`),
//! for black-box and end-to-end tests on machines without a GPU.
//!
//! It is a test double of the [`GpuInventory`] trait, not of NVML: it reports the GPUs it was
//! given and counts its reads, nothing else. Instances on such a node get the variables and
//! slots a real GPU would give them, but no device: never use it on a real node.

use std::sync::atomic::{AtomicU64, Ordering};

use agent_proto::MigMode;

use super::{GpuDevice, GpuError, GpuInventory};

/// GPUs from a `NAME:MEMORY_MIB[:mig]` list.
#[derive(Debug)]
pub struct FakeGpuInventory {
    gpus: Vec<GpuDevice>,
    reads: AtomicU64,
}

impl FakeGpuInventory {
    /// Parses `NAME:MEMORY_MIB[:mig]` entries separated by commas, e.g.
    /// `NVIDIA H100 80GB HBM3:81559,NVIDIA A10G:23028:mig`. GPU `i` gets index `i`, minor
    /// number `i` and the UUID `GPU-fake-<uuid_scope>-<i>` (the scope, e.g. the node id, keeps
    /// UUIDs distinct across fake nodes); `:mig` marks it MIG-enabled.
    pub fn parse(spec: &str, uuid_scope: &str) -> Result<Self, GpuError> {
        let bad = |reason: String| GpuError::FakeSpec {
            spec: spec.to_owned(),
            reason,
        };
        let mut gpus = Vec::new();
        for (i, entry) in spec.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let mut parts = entry.split(':');
            let name = parts.next().unwrap_or_default().trim();
            let memory = parts.next().map(str::trim);
            let flag = parts.next().map(str::trim);
            if name.is_empty() || parts.next().is_some() {
                return Err(bad(format!("entry {entry:?} is not NAME:MEMORY_MIB[:mig]")));
            }
            let mib: u64 = memory
                .and_then(|m| m.parse().ok())
                .filter(|m| *m > 0)
                .ok_or_else(|| {
                    bad(format!(
                        "entry {entry:?} needs a positive memory size in MiB"
                    ))
                })?;
            let mig = match flag {
                None => MigMode::Disabled,
                Some("mig") => MigMode::Enabled,
                Some(other) => return Err(bad(format!("unknown flag {other:?} in {entry:?}"))),
            };
            let index = u32::try_from(i).map_err(|_| bad("too many entries".to_owned()))?;
            gpus.push(GpuDevice {
                index,
                uuid: format!("GPU-fake-{uuid_scope}-{index}"),
                name: name.to_owned(),
                memory_bytes: mib << 20,
                mig,
                minor: Some(index),
            });
        }
        if gpus.is_empty() {
            return Err(bad("no GPU listed".to_owned()));
        }
        Ok(Self {
            gpus,
            reads: AtomicU64::new(0),
        })
    }

    /// How many times the daemon has read this inventory.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

impl GpuInventory for FakeGpuInventory {
    fn source(&self) -> &'static str {
        "test-only-fake"
    }

    fn read(&self) -> Result<Vec<GpuDevice>, GpuError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self.gpus.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_memory_and_mig() {
        let fake =
            FakeGpuInventory::parse("NVIDIA H100 80GB HBM3:81559, NVIDIA A10G:23028:mig", "n1")
                .expect("parses");
        let gpus = fake.read().expect("reads");
        assert_eq!(fake.reads(), 1);
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(gpus[0].memory_bytes, 81559 << 20);
        assert_eq!(gpus[0].uuid, "GPU-fake-n1-0");
        assert_eq!((gpus[0].mig, gpus[0].minor), (MigMode::Disabled, Some(0)));
        assert_eq!((gpus[1].index, gpus[1].mig), (1, MigMode::Enabled));
        assert!(!gpus[1].assignable());
        assert_eq!(fake.source(), "test-only-fake");
    }

    #[test]
    fn bad_lists_say_how_to_write_them() {
        for spec in [
            "",
            "H100",
            "H100:0",
            "H100:x",
            "H100:80:sriov",
            ":80",
            "a:1:mig:x",
        ] {
            let err = FakeGpuInventory::parse(spec, "n").expect_err(spec);
            assert!(err.to_string().contains("NAME:MEMORY_MIB"), "{err}");
        }
    }
}
