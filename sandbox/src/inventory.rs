//! What the machine offers to instances: CPU ids and RAM.

/// The CPUs and RAM the daemon may hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// CPU ids usable by instances (the daemon's own allowed CPUs).
    pub cpus: Vec<u32>,
    /// RAM in bytes usable by instances.
    pub ram_bytes: u64,
}
