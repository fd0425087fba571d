//! Model-specific registers set at boot.

use kvm_bindings::{kvm_msr_entry, Msrs};

/// MSRs used below.
mod index {
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// IA32_MISC_ENABLE bit for fast string operations, which Linux expects set.
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// The MSR values every vCPU starts with. IA32_ARCH_CAPABILITIES (0x10a) is
/// deliberately absent: some hosts refuse to set it and KVM's default is right.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(index::IA32_SYSENTER_CS, 0),
        entry(index::IA32_SYSENTER_ESP, 0),
        entry(index::IA32_SYSENTER_EIP, 0),
        entry(index::STAR, 0),
        entry(index::CSTAR, 0),
        entry(index::KERNEL_GS_BASE, 0),
        entry(index::SYSCALL_MASK, 0),
        entry(index::LSTAR, 0),
        entry(index::IA32_TSC, 0),
        entry(index::IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
}

/// The boot MSRs in KVM's ioctl form.
pub fn boot_msrs() -> Result<Msrs, vmm_sys_util::fam::Error> {
    Msrs::from_entries(&boot_msr_entries())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_capabilities_is_never_set() {
        assert!(boot_msr_entries().iter().all(|e| e.index != 0x10a));
    }

    #[test]
    fn fast_strings_are_enabled() {
        let misc = boot_msr_entries()
            .into_iter()
            .find(|e| e.index == index::IA32_MISC_ENABLE)
            .expect("MISC_ENABLE present");
        assert_eq!(misc.data & MISC_ENABLE_FAST_STRING, 1);
        assert_eq!(
            boot_msrs().expect("fits").as_slice().len(),
            boot_msr_entries().len()
        );
    }
}
