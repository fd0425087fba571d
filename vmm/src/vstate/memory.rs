//! Guest RAM: anonymous private mappings laid out around the MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout;

/// Errors allocating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Alloc {
        /// Requested size.
        mib: u64,
        /// The error.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Allocates `size` bytes of guest RAM and a hotplug region of
/// `hotplug_size` bytes above it (see [`layout::memory_ranges`]). Pages are
/// only backed when touched, so a region the guest has not plugged costs
/// the host nothing.
pub fn create(size: u64, hotplug_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = layout::memory_ranges(size, hotplug_size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Alloc {
        mib: (size + hotplug_size) >> 20,
        source,
    })
}

#[cfg(test)]
mod tests {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    use super::*;

    #[test]
    fn regions_match_the_layout() {
        let mem = create(64 << 20, 0).expect("memory");
        assert_eq!(mem.num_regions(), 1);
        let total: u64 = mem.iter().map(|r| r.len()).sum();
        assert_eq!(total, 64 << 20);
        let mem = create(64 << 20, 128 << 20).expect("memory with a hotplug region");
        assert_eq!(mem.num_regions(), 2);
        let total: u64 = mem.iter().map(|r| r.len()).sum();
        assert_eq!(total, 192 << 20);
    }
}
