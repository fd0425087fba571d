//! Boot GDT entries and their KVM segment-register form.

use kvm_bindings::kvm_segment;

/// Builds a GDT descriptor from flags (access byte in bits 0..8, flags nibble in 12..16),
/// base and limit, in the packed hardware layout.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32;
    // With the granularity bit set the limit counts 4 KiB pages.
    if entry & (1 << 55) != 0 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// Converts GDT entry `index` into the segment register KVM expects.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from((entry >> 47) & 1 == 0),
    }
}

/// The boot GDT: null, 64-bit code (0x08), flat data (0x10), TSS (0x18),
/// 32-bit code (0x20, for the PVH entry).
pub const BOOT_GDT: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
];
/// GDT index of the 64-bit code segment.
pub const CODE64_INDEX: u8 = 1;
/// GDT index of the data segment.
pub const DATA_INDEX: u8 = 2;
/// GDT index of the TSS.
pub const TSS_INDEX: u8 = 3;
/// GDT index of the 32-bit code segment.
pub const CODE32_INDEX: u8 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment_is_long_mode_ring0() {
        let seg = kvm_segment_from_gdt(BOOT_GDT[CODE64_INDEX as usize], CODE64_INDEX);
        assert_eq!(seg.selector, 0x08);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.db, 0);
        assert_eq!(seg.dpl, 0);
        assert_eq!(seg.present, 1);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.base, 0);
    }

    #[test]
    fn code32_segment_is_flat_protected_mode() {
        let seg = kvm_segment_from_gdt(BOOT_GDT[CODE32_INDEX as usize], CODE32_INDEX);
        assert_eq!(seg.selector, 0x20);
        assert_eq!((seg.l, seg.db, seg.g), (0, 1, 1));
        assert_eq!(seg.limit, 0xffff_ffff);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let entry = gdt_entry(0x008b, 0x1234_5678, 0xabcde);
        assert_eq!(base(entry), 0x1234_5678);
        assert_eq!(limit(entry), 0xabcde);
        let seg = kvm_segment_from_gdt(gdt_entry(0, 0, 0), 0);
        assert_eq!(seg.unusable, 1);
    }
}
