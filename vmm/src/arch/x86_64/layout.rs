//! Guest physical memory layout.
//!
//! Low memory follows the conventions Linux and Firecracker use, so that a
//! kernel finds its boot structures where it expects them:
//!
//! ```text
//! 0x0000_0500  boot GDT                 0x0000_9000  PML4 (64-bit boot)
//! 0x0000_0520  boot IDT (empty)         0x0000_a000  PDPT
//! 0x0000_6000  PVH hvm_start_info       0x0000_b000  PD (512 x 2 MiB = 1 GiB identity map)
//! 0x0000_6040  PVH memory map           0x0002_0000  kernel command line
//! 0x0000_7000  Linux zero page          0x0009_fc00  EBDA: MP table
//! 0x0000_8ff0  boot stack pointer       0x000e_0000  ACPI tables (RSDP first)
//! 0x000f_0000  SMBIOS (instances)       0x0010_0000  high memory: kernel
//! 0xc000_0000  32-bit MMIO gap (devices, IOAPIC, LAPIC)
//! ```

/// Boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (limit 0: the kernel installs its own before enabling interrupts).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map entries, right after the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// The Linux "zero page" (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-map page tables for the 64-bit boot protocol.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum command line size, including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area, where the MP table lives.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables; the RSDP must sit in 0xe0000..0xfffff for legacy scans.
pub const ACPI_START: u64 = 0xe0000;
/// End of the region reserved for ACPI tables.
pub const ACPI_END: u64 = 0xf0000;
/// SMBIOS tables (instances only); Linux scans 0xf0000..0x100000 for the
/// entry point.
pub const SMBIOS_START: u64 = 0xf0000;
/// End of the SMBIOS region.
pub const SMBIOS_END: u64 = 0x100000;
/// Start of high memory: kernels load here or above.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO gap; RAM above it is relocated past 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First address handed out to virtio-mmio devices.
pub const MMIO_DEVICES_START: u64 = MMIO_GAP_START;
/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// Address KVM uses for the TSS on Intel hosts (three pages, inside the gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Address KVM uses for the real-mode identity map on Intel hosts.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// I/O port of the ACPI sleep control / reset register (hardware-reduced ACPI).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// Value written to the reset register to reset the machine.
pub const ACPI_RESET_VALUE: u8 = 1;

// The boot stack grows down from between the zero page and the page tables.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);

/// Guest RAM regions for a guest of `mem_size` bytes, skipping the MMIO gap.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// Alignment of the hotplug region: Linux adds memory in 128 MiB sections
/// (x86_64's memory block), so the region starts on a 1 GiB boundary and
/// every section of it is whole.
pub const HOTPLUG_ALIGN: u64 = 1 << 30;

/// Where the hotplug (virtio-mem) region of a guest with `mem_size` bytes
/// of boot RAM starts: above the MMIO gap and above all RAM, on a 1 GiB
/// boundary, so it never overlaps RAM, devices or the gap.
pub fn hotplug_start(mem_size: u64) -> u64 {
    let ram_end = ram_regions(mem_size)
        .last()
        .map_or(0, |(start, len)| start + len);
    ram_end.max(MMIO_GAP_END).next_multiple_of(HOTPLUG_ALIGN)
}

/// Every guest-physical range backed by memory: the boot RAM, then the
/// hotplug region of `hotplug_size` bytes if any.
pub fn memory_ranges(mem_size: u64, hotplug_size: u64) -> Vec<(u64, u64)> {
    let mut ranges = ram_regions(mem_size);
    if hotplug_size > 0 {
        ranges.push((hotplug_start(mem_size), hotplug_size));
    }
    ranges
}

/// End (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(low_ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let regions = ram_regions(4 << 30);
        assert_eq!(regions, vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]);
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
        assert_eq!(low_ram_end(4 << 30), MMIO_GAP_START);
    }

    #[test]
    fn the_hotplug_region_lies_above_ram_and_the_gap() {
        assert_eq!(hotplug_start(256 << 20), MMIO_GAP_END);
        assert_eq!(
            memory_ranges(256 << 20, 768 << 20),
            vec![(0, 256 << 20), (MMIO_GAP_END, 768 << 20)]
        );
        assert_eq!(memory_ranges(256 << 20, 0), vec![(0, 256 << 20)]);
        // 4 GiB of RAM ends at 5 GiB (1 GiB above the gap).
        assert_eq!(hotplug_start(4 << 30), 5 << 30);
        assert_eq!(hotplug_start((4 << 30) + (1 << 20)), 6 << 30);
    }

    #[test]
    fn low_structures_do_not_overlap() {
        let mut ranges = [
            (BOOT_GDT_START, BOOT_GDT_START + 0x20),
            (BOOT_IDT_START, BOOT_IDT_START + 0x8),
            (PVH_INFO_START, PVH_MEMMAP_START),
            (PVH_MEMMAP_START, ZERO_PAGE_START),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (PML4_START, PDE_START + 0x1000),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (EBDA_START, 0xa0000),
            (ACPI_START, ACPI_END),
        ];
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{:x?} overlaps {:x?}",
                pair[0],
                pair[1]
            );
        }
    }
}
