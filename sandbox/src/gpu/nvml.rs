//! The real GPU inventory: NVML through nvml-wrapper, loaded at run time.

use agent_proto::MigMode;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use tracing::{info, warn};

use super::{GpuDevice, GpuError, GpuInventory};

/// NVML's library names, tried in order: the driver installs the versioned one; the bare
/// name exists only with the development package.
const LIBRARIES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

/// GPUs through NVML; empty when NVML cannot be loaded or initialised.
#[derive(Debug)]
pub struct NvmlInventory {
    nvml: Option<Nvml>,
}

impl NvmlInventory {
    /// Loads and initialises NVML. Never fails: a machine without the library, the driver or
    /// a GPU gets an inventory that reads as empty, and one log line says why.
    pub fn load() -> Self {
        let mut last = None;
        for library in LIBRARIES {
            match Nvml::builder()
                .lib_path(std::ffi::OsStr::new(library))
                .init()
            {
                Ok(nvml) => {
                    let driver = nvml.sys_driver_version().unwrap_or_default();
                    info!(library, driver = %driver, "NVML loaded; GPUs are read through it");
                    return Self { nvml: Some(nvml) };
                }
                Err(err) => last = Some(err),
            }
        }
        let cause = last.map(|e| e.to_string()).unwrap_or_default();
        info!(cause = %cause, "NVML not available: this node offers no GPUs");
        Self { nvml: None }
    }

    /// Whether NVML was loaded.
    pub fn loaded(&self) -> bool {
        self.nvml.is_some()
    }
}

fn nvml_err(query: &'static str) -> impl Fn(NvmlError) -> GpuError {
    move |err| GpuError::Nvml {
        query,
        reason: err.to_string(),
    }
}

impl GpuInventory for NvmlInventory {
    fn source(&self) -> &'static str {
        if self.nvml.is_some() {
            "nvml"
        } else {
            "none"
        }
    }

    fn read(&self) -> Result<Vec<GpuDevice>, GpuError> {
        let Some(nvml) = &self.nvml else {
            return Ok(Vec::new());
        };
        let count = nvml.device_count().map_err(nvml_err("device count"))?;
        let mut gpus = Vec::new();
        for index in 0..count {
            let device = match nvml.device_by_index(index) {
                Ok(device) => device,
                Err(err) => {
                    // One GPU fallen off the bus must not hide the others.
                    warn!(index, cause = %err, "cannot open a GPU through NVML; leaving it out");
                    continue;
                }
            };
            let uuid = device.uuid().map_err(nvml_err("uuid"))?;
            let name = device.name().map_err(nvml_err("name"))?;
            let memory_bytes = device.memory_info().map_err(nvml_err("memory info"))?.total;
            let mig = match device.mig_mode() {
                Ok(mode) if mode.current == MIG_ENABLE => MigMode::Enabled,
                Ok(_) => MigMode::Disabled,
                Err(_) => MigMode::Unsupported,
            };
            let minor = device.minor_number().ok();
            gpus.push(GpuDevice {
                index,
                uuid,
                name,
                memory_bytes,
                mig,
                minor,
            });
        }
        Ok(gpus)
    }
}

/// `NVML_DEVICE_MIG_ENABLE` in `nvml.h`.
const MIG_ENABLE: u32 = 1;
