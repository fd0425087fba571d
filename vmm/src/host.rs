//! Which kind of KVM host we run on, and the guest adaptations it needs.
//!
//! Some KVM hosts (nested set-ups, the kvm_pvm module) run guest user mode
//! natively but emulate guest kernel mode, with gaps: INT3 and FWAIT fail
//! emulation, CPUID filtering never reaches the guest, hypercalls never
//! return, SYSCALL from user mode does not reach ring 0. DESIGN.md ("KVM hosts
//! that emulate the guest kernel") has the measurements. On bare-metal KVM
//! none of this applies and nothing here is active.

use std::path::Path;

use crate::arch::x86_64::cpuid::{Feature, EMULATED_KERNEL_HIDDEN};
use crate::config::CpuTemplate;

/// The KVM host kinds we distinguish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// Hardware-assisted KVM: guest kernel code runs natively.
    HardwareKvm,
    /// KVM that emulates guest kernel mode (kvm_pvm).
    EmulatedKernel,
}

impl HostKind {
    /// Detects the host from the loaded KVM modules.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/sys/module"))
    }

    fn detect_in(sys_module: &Path) -> Self {
        if sys_module.join("kvm_pvm").exists() {
            HostKind::EmulatedKernel
        } else {
            HostKind::HardwareKvm
        }
    }
}

/// The adaptations in force for this VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workarounds {
    /// Emulate INT3/FWAIT on emulation failures, hide features, extend the command line.
    pub emulated_kernel: bool,
}

/// Boot parameter that switches on the lab kernel's syscall-entry-via-#PF
/// patch; unmodified kernels ignore it (dotted parameters are module options).
pub const SYSCALL_VIA_PF_PARAM: &str = "ec2lab.syscall_via_pf";

impl Workarounds {
    /// What `template` means on `host`.
    pub fn new(template: CpuTemplate, host: HostKind) -> Self {
        let emulated_kernel = match template {
            CpuTemplate::Auto => host == HostKind::EmulatedKernel,
            CpuTemplate::None => false,
            CpuTemplate::EmulatedKernel => true,
        };
        Self { emulated_kernel }
    }

    /// CPUID features to hide.
    pub fn hidden_features(&self) -> &'static [Feature] {
        if self.emulated_kernel {
            EMULATED_KERNEL_HIDDEN
        } else {
            &[]
        }
    }

    /// Parameters to append to the kernel command line: features the
    /// emulator lacks (CPUID filtering does not reach the guest, so the kernel
    /// must be told), no paravirt hypercalls (they never return), no page-table
    /// isolation (every syscall already costs an emulated fault), no RCU
    /// stall reports, and the lab kernel's syscall patch.
    pub fn cmdline_params(&self) -> Vec<String> {
        if !self.emulated_kernel {
            return Vec::new();
        }
        let names: Vec<&str> = EMULATED_KERNEL_HIDDEN
            .iter()
            .map(|f| f.name)
            .filter(|n| *n != "xsave")
            .collect();
        vec![
            "nopv".to_string(),
            "noxsave".to_string(),
            format!("clearcpuid={}", names.join(",")),
            "pti=off".to_string(),
            // Emulated kernel code legitimately holds a CPU for seconds; the
            // stall reports would only add minutes of emulated printing.
            "rcupdate.rcu_cpu_stall_suppress=1".to_string(),
            SYSCALL_VIA_PF_PARAM.to_string(),
        ]
    }

    /// `user` plus the parameters above that the user did not set already.
    pub fn extend_cmdline(&self, user: &str) -> String {
        let given: Vec<&str> = user
            .split_whitespace()
            .map(|p| p.split('=').next().unwrap_or(p))
            .collect();
        let mut out = user.trim().to_string();
        for param in self.cmdline_params() {
            let key = param.split('=').next().unwrap_or(&param);
            if !given.contains(&key) {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(&param);
            }
        }
        out
    }

    /// One line for the log saying what is in force.
    pub fn describe(&self, host: HostKind) -> String {
        match (host, self.emulated_kernel) {
            (HostKind::EmulatedKernel, true) => {
                "host: KVM emulates guest kernel mode (kvm_pvm): emulating INT3/FWAIT, hiding features, appending workaround parameters".to_string()
            }
            (HostKind::HardwareKvm, true) => {
                "host: hardware KVM, but cpu template emulated-kernel forces the workarounds".to_string()
            }
            (HostKind::EmulatedKernel, false) => {
                "host: KVM emulates guest kernel mode (kvm_pvm), but cpu template none disables the workarounds".to_string()
            }
            (HostKind::HardwareKvm, false) => "host: hardware KVM, no workarounds".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_follows_the_kvm_pvm_module() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(HostKind::detect_in(dir.path()), HostKind::HardwareKvm);
        std::fs::create_dir(dir.path().join("kvm_pvm")).expect("mkdir");
        assert_eq!(HostKind::detect_in(dir.path()), HostKind::EmulatedKernel);
    }

    #[test]
    fn template_overrides_detection() {
        assert!(Workarounds::new(CpuTemplate::Auto, HostKind::EmulatedKernel).emulated_kernel);
        assert!(!Workarounds::new(CpuTemplate::Auto, HostKind::HardwareKvm).emulated_kernel);
        assert!(!Workarounds::new(CpuTemplate::None, HostKind::EmulatedKernel).emulated_kernel);
        assert!(
            Workarounds::new(CpuTemplate::EmulatedKernel, HostKind::HardwareKvm).emulated_kernel
        );
    }

    #[test]
    fn bare_metal_cmdline_is_untouched() {
        let w = Workarounds::new(CpuTemplate::Auto, HostKind::HardwareKvm);
        assert_eq!(w.extend_cmdline("console=ttyS0"), "console=ttyS0");
        assert!(w.hidden_features().is_empty());
    }

    #[test]
    fn emulated_kernel_cmdline_gets_the_workarounds_once() {
        let w = Workarounds::new(CpuTemplate::EmulatedKernel, HostKind::HardwareKvm);
        let c = w.extend_cmdline("console=ttyS0 pti=on");
        assert!(
            c.starts_with("console=ttyS0 pti=on nopv noxsave clearcpuid="),
            "{c}"
        );
        assert!(
            c.contains("popcnt") && c.contains("smap") && c.contains("cx16"),
            "{c}"
        );
        assert!(!c.contains("pti=off"), "user's pti= wins: {c}");
        assert!(c.ends_with(SYSCALL_VIA_PF_PARAM));
        assert_eq!(w.extend_cmdline(&c), c, "idempotent");
    }
}
