//! GPUs the node may hand out: the narrow [`GpuInventory`] trait the daemon reads them
//! through, its NVML implementation ([`NvmlInventory`], the only one a real node uses) and a
//! clearly named test-only double ([`FakeGpuInventory`]) for machines without a GPU.
//!
//! NVML (`libnvidia-ml.so.1`) is loaded at run time, so the daemon builds and runs on machines
//! without it: no library, no driver or no GPU is an empty inventory and one log line.
//!
//! Which GPU a slot gets, and that no two slots share one, is the slot allocator's job
//! ([`crate::slots`]); how a request names a model is [`agent_proto::gpu`].

mod fake;
mod nvml;

use std::fmt::Debug;

use agent_proto::{GpuInfo, MigMode};
use thiserror::Error;

pub use fake::FakeGpuInventory;
pub use nvml::NvmlInventory;

/// Major number of the NVIDIA character devices (`/dev/nvidia<minor>`, `/dev/nvidiactl`).
pub const NVIDIA_MAJOR: u32 = 195;

/// One GPU as the inventory reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    /// NVML index (the order `nvidia-smi` lists GPUs in).
    pub index: u32,
    /// Stable identifier (`GPU-…`): what `CUDA_VISIBLE_DEVICES`, `NVIDIA_VISIBLE_DEVICES` and
    /// Docker's device requests name it by.
    pub uuid: String,
    /// Model name as NVML reports it (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// MIG mode: a GPU with MIG enabled is never handed out whole.
    pub mig: MigMode,
    /// Minor number of its device node (`/dev/nvidia<minor>`), when NVML reports one.
    pub minor: Option<u32>,
}

impl GpuDevice {
    /// Whether a slot may take this GPU whole.
    pub fn assignable(&self) -> bool {
        self.mig != MigMode::Enabled
    }

    /// As listed in node info; `slot_id` is the slot holding it, if any.
    pub fn info(&self, slot_id: Option<String>) -> GpuInfo {
        GpuInfo {
            index: self.index,
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            memory_bytes: self.memory_bytes,
            in_use: slot_id.is_some(),
            mig: self.mig,
            slot_id,
        }
    }
}

/// Why the GPU inventory could not be read.
#[derive(Debug, Error)]
pub enum GpuError {
    /// NVML answered a query with an error.
    #[error("nvml {query}: {reason}")]
    Nvml {
        /// What was asked.
        query: &'static str,
        /// What NVML answered.
        reason: String,
    },
    /// A `--test-only-fake-gpus` value that cannot be parsed.
    #[error("fake GPU list {spec:?}: {reason}; write NAME:MEMORY_MIB[:mig] entries separated by commas, e.g. \"NVIDIA H100 80GB HBM3:81559,NVIDIA H100 80GB HBM3:81559\"")]
    FakeSpec {
        /// The value given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where the node's GPUs are read from. Chosen once at start; read again periodically (GPUs
/// fall off the bus, MIG mode changes).
pub trait GpuInventory: Send + Sync + Debug {
    /// `nvml`, `none` (NVML not loadable) or `test-only-fake`: for logs and node info.
    fn source(&self) -> &'static str;

    /// The GPUs present now, by ascending index. May block (NVML calls): run it in
    /// `spawn_blocking` from async code.
    fn read(&self) -> Result<Vec<GpuDevice>, GpuError>;
}
