//! Intel MultiProcessor Specification 1.4 table, for kernels that find CPUs
//! and interrupt routing there rather than in ACPI (ACPI is preferred when
//! both exist; writing both costs a few hundred bytes of guest memory).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, IOAPIC_START};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for the space reserved in the EBDA.
    #[error("{0} vCPUs do not fit in the MP table")]
    TooManyCpus(u8),
    /// Writing to guest memory failed.
    #[error("cannot write the MP table into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// IOAPIC input pins KVM's in-kernel IOAPIC provides.
pub const IOAPIC_PINS: u8 = 24;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
/// Family 6 in the CPU signature; FPU and APIC in the feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const CPU_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
/// The EBDA region is 1 KiB (0x9fc00..0xa0000).
const EBDA_SIZE: usize = 0x400;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The complete table (floating pointer followed by the configuration table)
/// as it is placed at `EBDA_START`.
pub fn build(vcpus: u8) -> Result<Vec<u8>, MptableError> {
    let ioapic_id = vcpus;
    let mut entries = Vec::new();
    for cpu in 0..vcpus {
        let mut flags = CPU_ENABLED;
        if cpu == 0 {
            flags |= CPU_BOOTPROCESSOR;
        }
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    // Bus 0: ISA.
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    // The IOAPIC, enabled.
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    // ISA IRQ n -> IOAPIC pin n, bus-default polarity and trigger.
    for pin in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[3, MP_IRQ_INT, 0, 0, 0, pin, ioapic_id, pin]);
    }
    // LINT0 = ExtINT (the 8259), LINT1 = NMI, on every local APIC.
    entries.extend_from_slice(&[4, MP_IRQ_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = usize::from(vcpus) + 2 + usize::from(IOAPIC_PINS) + 2;
    debug_assert_eq!(
        entries.len(),
        usize::from(vcpus) * CPU_ENTRY_LEN + (entry_count - usize::from(vcpus)) * SMALL_ENTRY_LEN
    );

    let table_len = HEADER_LEN + entries.len();
    if FLOATING_LEN + table_len > EBDA_SIZE {
        return Err(MptableError::TooManyCpus(vcpus));
    }
    let table_addr = EBDA_START as u32 + FLOATING_LEN as u32;

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.extend_from_slice(&[MPC_SPEC, 0]);
    table.extend_from_slice(b"EC2LAB  ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&(entry_count as u16).to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    debug_assert_eq!(table.len(), HEADER_LEN);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// Writes the MP table for `vcpus` into the EBDA.
pub fn setup(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(vcpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_are_valid() {
        for vcpus in [1, 2, 8] {
            let t = build(vcpus).expect("table");
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..FLOATING_LEN]), 0, "floating pointer checksum");
            let table = &t[FLOATING_LEN..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "configuration table checksum");
        }
    }

    #[test]
    fn floating_pointer_points_at_the_table() {
        let t = build(2).expect("table");
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        assert_eq!(u64::from(ptr), EBDA_START + FLOATING_LEN as u64);
    }

    #[test]
    fn one_cpu_entry_per_vcpu_and_bsp_first() {
        let t = build(4).expect("table");
        let entries = &t[FLOATING_LEN + HEADER_LEN..];
        for cpu in 0..4 {
            let e = &entries[cpu * CPU_ENTRY_LEN..];
            assert_eq!(e[0], 0);
            assert_eq!(usize::from(e[1]), cpu);
            assert_eq!(e[3] & CPU_BOOTPROCESSOR != 0, cpu == 0);
        }
    }

    #[test]
    fn too_many_cpus_do_not_fit() {
        assert!(matches!(build(64), Err(MptableError::TooManyCpus(64))));
        assert!(build(32).is_ok());
    }
}
