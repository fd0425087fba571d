//! Per-vCPU CPUID: the host's KVM-supported leaves, normalised so each vCPU
//! sees its own APIC id and a topology of `vcpus` single-threaded cores in one
//! socket, with the hypervisor bit set, on either vendor: Intel describes
//! topology in leaves 0x4/0xB/0x1F, AMD in 0x80000008/0x8000001D/0x8000001E
//! (which KVM reports zeroed, so an unnormalised AMD guest sees every vCPU as
//! core 0). Whichever leaves the host has are rewritten. The TSC frequency is
//! published in 0x15 (read by Linux only on Intel) and 0x40000010 (the
//! hypervisor timing leaf). A template may additionally hide features.

use kvm_bindings::kvm_cpuid_entry2;

/// A CPUID feature bit: leaf, register, bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// Kernel name of the feature (as in /proc/cpuinfo and `clearcpuid=`).
    pub name: &'static str,
    leaf: u32,
    subleaf: u32,
    reg: Reg,
    bit: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Ebx,
    Ecx,
    Edx,
}

const fn feature(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

/// Features whose instructions a kernel-emulating KVM host cannot emulate in
/// guest kernel mode (measured: popcnt, clac/stac, cmpxchg16b, xsave family,
/// and the SSE register moves of in-kernel SIMD code such as the SSSE3
/// BLAKE2s that Debian's kernel runs while unpacking the initramfs) or is
/// likely not to (the rest, switched off pre-emptively). See DESIGN.md.
pub const EMULATED_KERNEL_HIDDEN: &[Feature] = &[
    feature("pclmulqdq", 1, 0, Reg::Ecx, 1),
    feature("ssse3", 1, 0, Reg::Ecx, 9),
    feature("sse4_1", 1, 0, Reg::Ecx, 19),
    feature("sse4_2", 1, 0, Reg::Ecx, 20),
    feature("cx16", 1, 0, Reg::Ecx, 13),
    feature("popcnt", 1, 0, Reg::Ecx, 23),
    feature("aes", 1, 0, Reg::Ecx, 25),
    feature("xsave", 1, 0, Reg::Ecx, 26),
    feature("rdrand", 1, 0, Reg::Ecx, 30),
    feature("fsgsbase", 7, 0, Reg::Ebx, 0),
    feature("invpcid", 7, 0, Reg::Ebx, 10),
    feature("rdseed", 7, 0, Reg::Ebx, 18),
    feature("smap", 7, 0, Reg::Ebx, 20),
    feature("clflushopt", 7, 0, Reg::Ebx, 23),
    feature("clwb", 7, 0, Reg::Ebx, 24),
    feature("sha_ni", 7, 0, Reg::Ebx, 29),
    feature("serialize", 7, 0, Reg::Edx, 14),
    feature("rdtscp", 0x8000_0001, 0, Reg::Edx, 27),
];

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
/// TSC / core crystal clock ratio.
pub const LEAF_TSC_FREQ: u32 = 0x15;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
/// Hypervisor leaf range: EAX of 0x40000000 is the highest leaf.
pub const LEAF_HYPERVISOR_BASE: u32 = 0x4000_0000;
/// Hypervisor timing leaf: EAX TSC kHz, EBX APIC bus kHz.
pub const LEAF_HYPERVISOR_TIMING: u32 = 0x4000_0010;
/// AMD: address sizes and core count (ECX).
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
/// AMD: cache topology, one subleaf per cache (like Intel's leaf 4).
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
/// AMD: extended APIC id, core and node ids.
const LEAF_AMD_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// Topology-level types in leaves 0xB/0x1F.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Everything that varies between vCPUs or hosts.
#[derive(Clone, Copy, Debug)]
pub struct CpuidParams {
    /// This vCPU's index, which is also its APIC id.
    pub vcpu_id: u8,
    /// Total vCPUs.
    pub vcpu_count: u8,
    /// Whether KVM emulates the TSC-deadline timer.
    pub tsc_deadline: bool,
    /// Features to hide from the guest.
    pub hidden: &'static [Feature],
    /// The guest TSC frequency, to publish in leaf 0x15 when the host leaves
    /// it empty, and in 0x40000010.
    pub tsc_khz: Option<u32>,
    /// Withhold the TSC frequency leaves (0x15 zeroed, no 0x40000010), as an
    /// AMD host does for 0x15: lets an Intel host exercise the boot path
    /// every AMD guest takes.
    pub hide_tsc_leaves: bool,
}

/// KVM's emulated local APIC timer counts at 1 GHz.
const APIC_BUS_KHZ: u64 = 1_000_000;
/// Linux computes `crystal_khz * numerator` in 32 bits, so the numerator must
/// stay below 2^32 / 1_000_000.
const MAX_NUMERATOR: u64 = (u32::MAX as u64) / APIC_BUS_KHZ;

/// Leaf 0x15 (EAX denominator, EBX numerator, ECX crystal Hz) describing a TSC
/// of about `tsc_khz` over a crystal at the APIC timer's frequency. Linux then
/// knows both the TSC and the APIC timer rate without calibrating against the
/// PIT, which fails where guest kernel code is emulated (too slow for its
/// timing loop) and no kvmclock is available (`nopv`). The ratio is the best
/// approximation with a numerator Linux can multiply without overflow
/// (within about 1 ppm, well inside a real crystal's tolerance).
pub fn tsc_leaf(tsc_khz: u32) -> (u32, u32, u32) {
    let tsc = u64::from(tsc_khz);
    let mut best = (1u64, 1u64, u64::MAX);
    for den in 1..=2000u64 {
        let num = (tsc * den + APIC_BUS_KHZ / 2) / APIC_BUS_KHZ;
        if num == 0 || num > MAX_NUMERATOR {
            continue;
        }
        let err = (num * APIC_BUS_KHZ).abs_diff(tsc * den) * 1_000_000 / (tsc * den);
        if err < best.2 {
            best = (den, num, err);
        }
    }
    (best.0 as u32, best.1 as u32, (APIC_BUS_KHZ * 1000) as u32)
}

/// Bits needed to number `count` items (APIC-id field width).
fn id_bits(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::BITS - u32::from(count - 1).leading_zeros()
    }
}

/// Rewrites `entries` (from KVM_GET_SUPPORTED_CPUID) for one vCPU.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], p: CpuidParams) {
    let apic_id = u32::from(p.vcpu_id);
    let count = u32::from(p.vcpu_count);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (apic_id << 24) | (count << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if p.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !ECX_TSC_DEADLINE;
                }
                if p.vcpu_count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // Cores per package - 1 in EAX[31:26]; each cache is private
                // to its core except the last level, shared by the package.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    count.saturating_sub(1)
                } else {
                    0
                };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | (count.saturating_sub(1) << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = id_bits(p.vcpu_count);
                        e.ebx = count;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_TSC_FREQ if p.hide_tsc_leaves => {
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            }
            LEAF_TSC_FREQ if e.index == 0 && (e.eax == 0 || e.ebx == 0 || e.ecx == 0) => {
                if let Some(khz) = p.tsc_khz.filter(|k| *k > 0) {
                    (e.eax, e.ebx, e.ecx) = tsc_leaf(khz);
                }
            }
            LEAF_HYPERVISOR_BASE if p.tsc_khz.is_some_and(|k| k > 0) && !p.hide_tsc_leaves => {
                e.eax = e.eax.max(LEAF_HYPERVISOR_TIMING);
            }
            LEAF_HYPERVISOR_TIMING => match p.tsc_khz.filter(|k| *k > 0 && !p.hide_tsc_leaves) {
                Some(khz) => (e.eax, e.ebx, e.ecx, e.edx) = (khz, APIC_BUS_KHZ as u32, 0, 0),
                None => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            },
            LEAF_AMD_SIZES => {
                // ECX: ApicIdCoreIdSize in [15:12], NC (cores - 1) in [7:0].
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(p.vcpu_count) << 12) | count.saturating_sub(1);
            }
            LEAF_AMD_CACHE_TOPOLOGY => {
                // EAX[25:14]: logical processors sharing the cache, minus one.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    count.saturating_sub(1)
                } else {
                    0
                };
                e.eax = (e.eax & !(0xfff << 14)) | (sharing << 14);
            }
            LEAF_AMD_APIC_ID => {
                // One thread per core, core id = APIC id, one node.
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
        for f in p.hidden {
            if f.leaf == e.function && f.subleaf == e.index {
                let reg = match f.reg {
                    Reg::Ebx => &mut e.ebx,
                    Reg::Ecx => &mut e.ecx,
                    Reg::Edx => &mut e.edx,
                };
                *reg &= !(1 << f.bit);
            }
        }
        // OSXSAVE mirrors CR4.OSXSAVE; it must go with XSAVE.
        if e.function == LEAF_FEATURES && p.hidden.iter().any(|f| f.name == "xsave") {
            e.ecx &= !(1 << 27);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn params(vcpu_id: u8, vcpu_count: u8) -> CpuidParams {
        CpuidParams {
            vcpu_id,
            vcpu_count,
            tsc_deadline: true,
            hidden: &[],
            tsc_khz: None,
            hide_tsc_leaves: false,
        }
    }

    #[test]
    fn amd_topology_leaves_give_each_vcpu_its_own_core() {
        let mut e = vec![
            entry(LEAF_AMD_SIZES, 0),
            entry(LEAF_AMD_CACHE_TOPOLOGY, 0),
            entry(LEAF_AMD_CACHE_TOPOLOGY, 3),
            entry(LEAF_AMD_APIC_ID, 0),
        ];
        e[1].eax = 1 << 5; // L1
        e[2].eax = 3 << 5; // L3
        normalize(&mut e, params(2, 4));
        assert_eq!(e[0].ecx & 0xff, 3, "NC = cores - 1");
        assert_eq!((e[0].ecx >> 12) & 0xf, 2, "ApicIdCoreIdSize");
        assert_eq!((e[1].eax >> 14) & 0xfff, 0, "L1 private");
        assert_eq!((e[2].eax >> 14) & 0xfff, 3, "L3 shared by all");
        assert_eq!(e[3].eax, 2, "extended APIC id");
        assert_eq!(e[3].ebx, 2, "core id, one thread per core");
        assert_eq!(e[3].ecx, 0, "one node");
    }

    #[test]
    fn hypervisor_timing_leaf_carries_the_tsc_frequency() {
        let mut base = entry(LEAF_HYPERVISOR_BASE, 0);
        base.eax = 0x4000_0001;
        let mut e = vec![base, entry(LEAF_HYPERVISOR_TIMING, 0)];
        let p = CpuidParams {
            tsc_khz: Some(2_445_404),
            ..params(0, 1)
        };
        normalize(&mut e, p);
        assert_eq!(e[0].eax, LEAF_HYPERVISOR_TIMING);
        assert_eq!((e[1].eax, e[1].ebx), (2_445_404, 1_000_000));
    }

    /// What an AMD host gives every guest, made on purpose: no frequency in
    /// 0x15 or 0x40000010, whatever the host knows.
    #[test]
    fn hidden_tsc_leaves_are_empty_on_any_vendor() {
        let mut base = entry(LEAF_HYPERVISOR_BASE, 0);
        base.eax = 0x4000_0001;
        let mut e = vec![base, entry(LEAF_HYPERVISOR_TIMING, 0), entry(0x15, 0)];
        let p = CpuidParams {
            tsc_khz: Some(2_000_000),
            hide_tsc_leaves: true,
            ..params(0, 1)
        };
        normalize(&mut e, p);
        assert_eq!(e[0].eax, 0x4000_0001, "timing leaf not advertised");
        assert_eq!((e[1].eax, e[1].ebx), (0, 0));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx), (0, 0, 0));
    }

    #[test]
    fn each_vcpu_sees_its_apic_id() {
        let mut e = vec![entry(1, 0), entry(0xb, 0), entry(0xb, 1)];
        normalize(&mut e, params(3, 4));
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[2].edx, 3);
    }

    #[test]
    fn topology_is_single_threaded_cores() {
        let mut e = vec![entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        normalize(&mut e, params(0, 4));
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx >> 8), (0, 1, LEVEL_TYPE_SMT));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx >> 8), (2, 4, LEVEL_TYPE_CORE));
        assert_eq!(e[2].ebx, 0);
    }

    #[test]
    fn hypervisor_and_htt_bits() {
        let mut e = vec![entry(1, 0)];
        e[0].ecx = 0;
        e[0].edx = EDX_HTT;
        normalize(&mut e, params(0, 1));
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[0].edx & EDX_HTT, 0);
        normalize(&mut e, params(0, 2));
        assert_ne!(e[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn template_hides_features() {
        let mut e = vec![entry(1, 0), entry(7, 0), entry(7, 1), entry(0x8000_0001, 0)];
        let p = CpuidParams {
            hidden: EMULATED_KERNEL_HIDDEN,
            ..params(0, 1)
        };
        normalize(&mut e, p);
        assert_eq!(e[0].ecx & (1 << 23), 0, "popcnt");
        assert_eq!(e[0].ecx & (1 << 13), 0, "cx16");
        assert_eq!(e[0].ecx & (1 << 27), 0, "osxsave");
        assert_eq!(e[1].ebx & (1 << 20), 0, "smap");
        assert_eq!(e[2].ebx, 0xffff_ffff, "other subleaves untouched");
        assert_eq!(e[3].edx & (1 << 27), 0, "rdtscp");
    }

    #[test]
    fn tsc_leaf_describes_the_tsc_over_a_1ghz_crystal() {
        let (den, num, crystal_hz) = tsc_leaf(2_100_000);
        assert_eq!((den, num, crystal_hz), (10, 21, 1_000_000_000));
        for khz in [2_599_998u32, 2_999_997, 1_234_567, 3_700_001, 400_000] {
            let (den, num, _) = tsc_leaf(khz);
            // What Linux computes, in its 32-bit arithmetic.
            let linux = (1_000_000u32.wrapping_mul(num)) / den;
            let ppm = u64::from(linux.abs_diff(khz)) * 1_000_000 / u64::from(khz);
            assert!(
                ppm <= 2,
                "{khz} kHz -> {num}/{den} -> {linux} kHz ({ppm} ppm)"
            );
        }
    }

    #[test]
    fn empty_leaf_0x15_is_filled_and_real_one_kept() {
        let mut e = vec![kvm_cpuid_entry2 {
            function: 0x15,
            ..Default::default()
        }];
        normalize(
            &mut e,
            CpuidParams {
                tsc_khz: Some(2_000_000),
                ..params(0, 1)
            },
        );
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx), (1, 2, 1_000_000_000));
        let mut real = vec![entry(0x15, 0)];
        normalize(
            &mut real,
            CpuidParams {
                tsc_khz: Some(2_000_000),
                ..params(0, 1)
            },
        );
        assert_eq!(real[0].ecx, 0xffff_ffff);
    }

    #[test]
    fn id_bits_cover_the_count() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(64), 6);
    }
}
