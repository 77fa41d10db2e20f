//! The slot allocator: CPU ids and RAM handed to instances and taken back.

/// What one instance needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRequest {
    /// Whole CPUs.
    pub cpus: u32,
    /// RAM in bytes.
    pub ram_bytes: u64,
}

/// An allocated slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Unique id (also the cgroup name suffix).
    pub id: String,
    /// CPU ids given to it.
    pub cpus: Vec<u32>,
    /// RAM given to it, in bytes.
    pub ram_bytes: u64,
}

/// Hands out slots from an inventory.
#[derive(Debug)]
pub struct SlotAllocator;
