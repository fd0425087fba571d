//! Which kind of KVM host we run on, and the guest adaptations it needs.
//!
//! Some KVM hosts (nested set-ups, the kvm_pvm module) run guest user mode
//! natively but emulate guest kernel mode, with gaps: INT3 and FWAIT fail
//! emulation, CPUID filtering never reaches the guest, hypercalls never
//! return, SYSCALL from user mode does not reach ring 0. DESIGN.md ("KVM hosts
//! that emulate the guest kernel") has the measurements. On bare-metal KVM
//! none of this applies and nothing here is active.
//!
//! Nothing here depends on the CPU vendor: the guest is told its TSC
//! frequency in a way every x86 Linux reads (see [`TscSource`]), because
//! Linux reads CPUID 0x15 only on Intel and an AMD guest that has to
//! calibrate against the PIT on an emulating host never boots. The vendor is
//! detected only to be logged next to every number a user reports.

use std::path::Path;

use crate::arch::x86_64::boot::KernelTraits;
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
        if ec2lab_vmm_api::host::emulates_guest_kernel_in(sys_module) {
            HostKind::EmulatedKernel
        } else {
            HostKind::HardwareKvm
        }
    }
}

/// The host CPU's vendor, from CPUID leaf 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuVendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD (or HygonGenuine, which follows AMD).
    Amd,
    /// Anything else.
    Other,
}

impl CpuVendor {
    /// The vendor of the CPU we run on.
    pub fn detect() -> Self {
        // CPUID leaf 0 exists on every x86_64 CPU.
        let leaf = std::arch::x86_64::__cpuid(0);
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&leaf.ebx.to_le_bytes());
        id[4..8].copy_from_slice(&leaf.edx.to_le_bytes());
        id[8..].copy_from_slice(&leaf.ecx.to_le_bytes());
        Self::from_id(&id)
    }

    fn from_id(id: &[u8; 12]) -> Self {
        match id {
            b"GenuineIntel" => CpuVendor::Intel,
            b"AuthenticAMD" | b"HygonGenuine" => CpuVendor::Amd,
            _ => CpuVendor::Other,
        }
    }

    /// The vendor as people write it ("Intel", "AMD").
    pub fn name(self) -> &'static str {
        match self {
            CpuVendor::Intel => "Intel",
            CpuVendor::Amd => "AMD",
            CpuVendor::Other => "other vendor",
        }
    }
}

/// How the guest kernel learns its TSC frequency.
///
/// Linux needs it before its timers work. On bare-metal KVM kvmclock tells
/// every guest, whatever the vendor, and the VMM also fills CPUID 0x15 and
/// 0x40000010 for kernels without kvmclock. On emulating hosts `nopv` turns
/// kvmclock off, PIT calibration fails (emulated code is too slow for its
/// timing loop) and Linux 6.1 reads CPUID 0x15 only on Intel, so the
/// frequency goes on the command line, which every vendor's path reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// kvmclock, with CPUID 0x15 and 0x40000010 as fallbacks.
    Kvmclock,
    /// `tsc_early_khz=<kHz>` appended by the VMM.
    Cmdline(u32),
    /// The user's command line sets `tsc_early_khz=` itself.
    UserCmdline,
    /// KVM did not report a frequency: the guest must calibrate, which fails
    /// on emulating hosts (logged as a warning).
    Calibrate,
}

/// The environment (passed to init through the command line) that keeps
/// glibc's string functions off AVX/AVX-512 where the guest kernel does
/// not save that state.
pub const GLIBC_NO_AVX: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,\
-AVX512BW,-AVX512DQ,-AVX512CD,-FMA,-FMA4,-AVX_Fast_Unaligned_Load";

/// The command-line parameter that gives Linux its TSC frequency (any vendor).
const TSC_EARLY_KHZ: &str = "tsc_early_khz";

/// The parameter that keeps initcalls from running; every occurrence adds
/// to the list.
const INITCALL_BLACKLIST: &str = "initcall_blacklist";

/// Initcalls of unmodified kernels skipped on hosts that emulate the guest
/// kernel (see [`Workarounds::cmdline_params`]): tracing set-up,
/// self-tests and debugging files, nothing a guest runs on.
pub const SKIPPED_INITCALLS: [&str; 6] = [
    "trace_eval_init",
    "tracer_init_tracefs",
    "ftrace_check_for_weak_functions",
    "blake2s_mod_init",
    "crypto_kdf108_init",
    "slab_sysfs_init",
];

/// Initcalls skipped as well on those hosts in a kernel that carries BTF
/// and cannot run user space there (no syscall-via-#PF patch: every
/// unmodified kernel): the built-in BPF kfunc registrations of Linux 6.1.
/// The first of them to run parses the kernel's whole BTF (4 MB in Debian's
/// cloud kernel, 97 s of emulated code in `cubictcp_register`), so all of
/// them go, or the cost only moves to the next. CUBIC is among them:
/// without it TCP's default congestion control stays Reno, which matters
/// to no one in a kernel that never starts a process.
pub const SKIPPED_BTF_INITCALLS: [&str; 6] = [
    "cubictcp_register",
    "kfunc_init",
    "bpf_rstat_kfunc_init",
    "bpf_key_sig_kfuncs_init",
    "bpf_prog_test_run_init",
    "bpf_tcp_ca_kfunc_init",
];

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

    /// How the guest will learn its TSC frequency, given the user's command
    /// line and the frequency KVM reports for the vCPUs.
    pub fn tsc_source(&self, user_cmdline: &str, tsc_khz: Option<u32>) -> TscSource {
        if !self.emulated_kernel {
            return TscSource::Kvmclock;
        }
        if param_keys(user_cmdline).any(|k| k == TSC_EARLY_KHZ) {
            return TscSource::UserCmdline;
        }
        match tsc_khz.filter(|k| *k > 0) {
            Some(khz) => TscSource::Cmdline(khz),
            None => TscSource::Calibrate,
        }
    }

    /// Parameters to append to the kernel command line: features the
    /// emulator lacks (CPUID filtering does not reach the guest, so the kernel
    /// must be told), no paravirt hypercalls (they never return), no page-table
    /// isolation (every syscall already costs an emulated fault), no RCU
    /// stall reports, a trusted TSC, the lab kernel's syscall patch, and the
    /// TSC frequency when it goes on the command line. `kernel`: what the
    /// VMM found in the image (see [`SKIPPED_BTF_INITCALLS`]).
    pub fn cmdline_params(&self, tsc: TscSource, kernel: KernelTraits) -> Vec<String> {
        if !self.emulated_kernel {
            return Vec::new();
        }
        let mut skipped = SKIPPED_INITCALLS.to_vec();
        if kernel.btf && !kernel.syscall_via_pf {
            skipped.extend(SKIPPED_BTF_INITCALLS);
        }
        let names: Vec<&str> = EMULATED_KERNEL_HIDDEN
            .iter()
            .map(|f| f.name)
            .filter(|n| *n != "xsave")
            .collect();
        let mut params = vec![
            "nopv".to_string(),
            "noxsave".to_string(),
            format!("clearcpuid={}", names.join(",")),
            "pti=off".to_string(),
            // Emulated kernel code legitimately holds a CPU for seconds; the
            // stall reports would only add minutes of emulated printing.
            "rcupdate.rcu_cpu_stall_suppress=1".to_string(),
            // The TSC is the host's invariant TSC. Without HPET or an ACPI PM
            // timer the clocksource watchdog's only reference is jiffies,
            // whose ticks arrive late whenever the host is busy (every tick
            // is emulated kernel code), so it would call the TSC unstable and
            // fall back to jiffies. `reliable` also skips the cross-CPU TSC
            // sync test, a few seconds of emulated spinning per vCPU.
            "tsc=reliable".to_string(),
            // mark_rodata_ro() walks and splits the page tables of the whole
            // kernel image, ~5 s of emulated code per boot (measured on the
            // lab kernel, AMD host). The guest's own W^X protection of its
            // kernel text is what that buys; on these hosts, which are for
            // labs and CI rather than for running untrusted guest code, the
            // boot time is worth more. Bare-metal guests keep it.
            "rodata=off".to_string(),
            // No VM of ours has a PCI bus (virtio-mmio only); a kernel that
            // looks for one pokes ports 0xcf8/0xcfc, and every port access
            // is a slow exit here.
            "pci=off".to_string(),
            SYSCALL_VIA_PF_PARAM.to_string(),
            // Distribution kernels (Debian's cloud kernel measured, AMD
            // host) set up tracing at boot with work that is cheap on
            // hardware and minutes long in emulated code: substituting enum
            // values into every trace event's format (56 s), creating the
            // tracefs files of every event (about 240 s, which the next
            // initcalls wait for), and a kallsyms lookup for each of 37,609
            // ftrace records to find overridden weak functions (a soft
            // lockup of 26 s). Skipped, the kernel boots without
            // /sys/kernel/tracing's event files, event formats keep enum
            // names, and ftrace lists those dead records too. Also skipped:
            // two self-tests that run as initcalls of their own (BLAKE2s,
            // 22.6 s; the SP800-108 KDF, 22.0 s; the functions stay),
            // /sys/kernel/slab (17.7 s), which only slabinfo tools read, and
            // in a kernel with BTF the BPF kfunc registrations (97 s).
            // Kernels without these initcalls ignore the names.
            format!("{INITCALL_BLACKLIST}={}", skipped.join(",")),
            // The crypto API's self-tests of every algorithm a kernel
            // registers; a lookup that waits for a test still running gives
            // up after 60 s (seen while Debian's kernel loaded its X.509
            // certificates). Kernels built without the tests ignore it.
            "cryptomgr.notests".to_string(),
            // Not for the kernel: it hands `KEY=value` parameters it does
            // not know to init as environment. With `noxsave` the kernel
            // keeps only x87/SSE state across process switches, but guest
            // user space runs natively with the host's CPUID and XCR0, so
            // glibc would use AVX/AVX-512 string functions and concurrent
            // processes would clobber each other's vector registers
            // (random crashes, mostly on AVX-512 AMD hosts; see
            // guest-images/kernel/NOTES.md). Every process from init on
            // inherits this and keeps glibc to SSE.
            GLIBC_NO_AVX.to_string(),
        ];
        if let TscSource::Cmdline(khz) = tsc {
            params.push(format!("{TSC_EARLY_KHZ}={khz}"));
        }
        params
    }

    /// `user` plus the parameters above that the user did not set already
    /// (`initcall_blacklist` always goes in: the kernel adds up every
    /// occurrence, so the user's list and ours both apply).
    pub fn extend_cmdline(&self, user: &str, tsc: TscSource, kernel: KernelTraits) -> String {
        let given: Vec<&str> = param_keys(user).collect();
        let mut out = user.trim().to_string();
        for param in self.cmdline_params(tsc, kernel) {
            let key = param.split('=').next().unwrap_or(&param);
            let wanted = if key == INITCALL_BLACKLIST {
                !user.split_whitespace().any(|p| p == param)
            } else {
                !given.contains(&key)
            };
            if wanted {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(&param);
            }
        }
        out
    }

    /// The one log line saying what host this is and what is in force.
    pub fn describe(&self, host: HostKind, vendor: CpuVendor, tsc: TscSource) -> String {
        let kind = match (host, self.emulated_kernel) {
            (HostKind::EmulatedKernel, true) => {
                "KVM emulates guest kernel mode (kvm_pvm): emulating INT3/FWAIT, hiding features, appending workaround parameters"
            }
            (HostKind::HardwareKvm, true) => {
                "hardware KVM, but cpu template emulated-kernel forces the workarounds"
            }
            (HostKind::EmulatedKernel, false) => {
                "KVM emulates guest kernel mode (kvm_pvm), but cpu template none disables the workarounds"
            }
            (HostKind::HardwareKvm, false) => "hardware KVM, no workarounds",
        };
        let tsc = match tsc {
            TscSource::Kvmclock => "TSC frequency from kvmclock".to_string(),
            TscSource::Cmdline(khz) => format!("TSC {khz} kHz via {TSC_EARLY_KHZ}"),
            TscSource::UserCmdline => format!("TSC frequency from the user's {TSC_EARLY_KHZ}"),
            TscSource::Calibrate => {
                "TSC frequency unknown to KVM: the guest must calibrate it (may hang here)"
                    .to_string()
            }
        };
        format!("host: {} CPU, {kind}; {tsc}", vendor.name())
    }
}

/// The keys of a command line's parameters (`a=b` gives `a`).
fn param_keys(cmdline: &str) -> impl Iterator<Item = &str> {
    cmdline
        .split_whitespace()
        .map(|p| p.split('=').next().unwrap_or(p))
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
        let tsc = w.tsc_source("console=ttyS0", Some(2_000_000));
        assert_eq!(tsc, TscSource::Kvmclock);
        assert_eq!(
            w.extend_cmdline("console=ttyS0", tsc, KernelTraits::default()),
            "console=ttyS0"
        );
        assert!(w.hidden_features().is_empty());
    }

    #[test]
    fn emulated_kernel_cmdline_gets_the_workarounds_once() {
        let w = Workarounds::new(CpuTemplate::EmulatedKernel, HostKind::HardwareKvm);
        let tsc = w.tsc_source("console=ttyS0 pti=on", Some(2_445_404));
        let c = w.extend_cmdline("console=ttyS0 pti=on", tsc, KernelTraits::default());
        assert!(
            c.starts_with("console=ttyS0 pti=on nopv noxsave clearcpuid="),
            "{c}"
        );
        assert!(
            c.contains("popcnt") && c.contains("smap") && c.contains("cx16"),
            "{c}"
        );
        assert!(!c.contains("pti=off"), "user's pti= wins: {c}");
        assert!(c.contains(" tsc=reliable "), "{c}");
        assert!(c.contains(" rodata=off "), "{c}");
        assert!(c.contains(SYSCALL_VIA_PF_PARAM));
        assert!(c.contains(&format!(" {GLIBC_NO_AVX} ")), "{c}");
        assert!(c.ends_with(" tsc_early_khz=2445404"), "{c}");
        let again = w.tsc_source(&c, Some(2_445_404));
        assert_eq!(again, TscSource::UserCmdline);
        assert_eq!(
            w.extend_cmdline(&c, again, KernelTraits::default()),
            c,
            "idempotent"
        );
    }

    #[test]
    fn the_users_initcall_blacklist_and_ours_both_go_in_once() {
        let w = Workarounds::new(CpuTemplate::EmulatedKernel, HostKind::HardwareKvm);
        let user = "console=ttyS0 initcall_blacklist=slab_sysfs_init";
        let c = w.extend_cmdline(user, TscSource::Cmdline(1), KernelTraits::default());
        assert!(c.starts_with(user), "{c}");
        let ours = format!(" initcall_blacklist={} ", SKIPPED_INITCALLS.join(","));
        assert_eq!(c.matches(&ours).count(), 1, "{c}");
        assert!(c.contains(" cryptomgr.notests "), "{c}");
        assert_eq!(
            w.extend_cmdline(&c, TscSource::Cmdline(1), KernelTraits::default()),
            c,
            "idempotent"
        );
        let bare = Workarounds::new(CpuTemplate::None, HostKind::EmulatedKernel);
        assert_eq!(
            bare.extend_cmdline(user, TscSource::Kvmclock, KernelTraits::default()),
            user
        );
    }

    #[test]
    fn an_unmodified_kernel_with_btf_also_skips_the_kfunc_registrations() {
        let w = Workarounds::new(CpuTemplate::EmulatedKernel, HostKind::HardwareKvm);
        let tsc = TscSource::Cmdline(1);
        let btf = KernelTraits {
            btf: true,
            syscall_via_pf: false,
        };
        let all: Vec<&str> = SKIPPED_INITCALLS
            .iter()
            .chain(&SKIPPED_BTF_INITCALLS)
            .copied()
            .collect();
        let ours = format!(" initcall_blacklist={} ", all.join(","));
        let c = w.extend_cmdline("console=ttyS0", tsc, btf);
        assert_eq!(c.matches("initcall_blacklist=").count(), 1, "{c}");
        assert!(c.contains(&ours), "{c}");
        assert_eq!(w.extend_cmdline(&c, tsc, btf), c, "idempotent");
        let without = w.extend_cmdline("console=ttyS0", tsc, KernelTraits::default());
        assert!(!without.contains("cubictcp_register"), "{without}");
        // A kernel that runs user space here keeps CUBIC and its kfuncs.
        let patched = KernelTraits {
            btf: true,
            syscall_via_pf: true,
        };
        let c = w.extend_cmdline("console=ttyS0", tsc, patched);
        assert!(c.contains(SYSCALL_VIA_PF_PARAM), "{c}");
        assert!(!c.contains("cubictcp_register"), "{c}");
        let bare = Workarounds::new(CpuTemplate::None, HostKind::EmulatedKernel);
        assert_eq!(
            bare.extend_cmdline("console=ttyS0", TscSource::Kvmclock, btf),
            "console=ttyS0"
        );
    }

    /// The decision must not depend on the vendor: Linux 6.1 reads CPUID
    /// 0x15 only on Intel, so an AMD guest on an emulating host gets exactly
    /// what an Intel one gets, the frequency on its command line.
    #[test]
    fn both_vendors_get_the_tsc_frequency_on_the_command_line_when_emulated() {
        for vendor in [CpuVendor::Intel, CpuVendor::Amd, CpuVendor::Other] {
            let w = Workarounds::new(CpuTemplate::Auto, HostKind::EmulatedKernel);
            let tsc = w.tsc_source("console=ttyS0", Some(2_445_404));
            assert_eq!(tsc, TscSource::Cmdline(2_445_404), "{vendor:?}");
            let line = w.describe(HostKind::EmulatedKernel, vendor, tsc);
            assert!(line.contains(vendor.name()), "{line}");
            assert!(line.contains("TSC 2445404 kHz via tsc_early_khz"), "{line}");
            let hw = Workarounds::new(CpuTemplate::Auto, HostKind::HardwareKvm);
            let tsc = hw.tsc_source("console=ttyS0", Some(2_445_404));
            assert_eq!(tsc, TscSource::Kvmclock, "{vendor:?}");
        }
    }

    #[test]
    fn the_users_tsc_frequency_and_the_none_template_win() {
        let w = Workarounds::new(CpuTemplate::Auto, HostKind::EmulatedKernel);
        let user = "console=ttyS0 tsc_early_khz=1000000";
        let tsc = w.tsc_source(user, Some(2_445_404));
        assert_eq!(tsc, TscSource::UserCmdline);
        let c = w.extend_cmdline(user, tsc, KernelTraits::default());
        assert_eq!(c.matches("tsc_early_khz=").count(), 1, "{c}");
        assert!(c.contains("tsc_early_khz=1000000"), "{c}");
        let none = Workarounds::new(CpuTemplate::None, HostKind::EmulatedKernel);
        let tsc = none.tsc_source("console=ttyS0", Some(2_445_404));
        assert_eq!(
            none.extend_cmdline("console=ttyS0", tsc, KernelTraits::default()),
            "console=ttyS0"
        );
    }

    #[test]
    fn no_frequency_from_kvm_leaves_calibration_to_the_guest() {
        let w = Workarounds::new(CpuTemplate::Auto, HostKind::EmulatedKernel);
        let tsc = w.tsc_source("console=ttyS0", None);
        assert_eq!(tsc, TscSource::Calibrate);
        assert!(!w
            .extend_cmdline("console=ttyS0", tsc, KernelTraits::default())
            .contains("tsc_early_khz"));
        assert_eq!(w.tsc_source("", Some(0)), TscSource::Calibrate);
    }

    #[test]
    fn vendor_ids_are_recognised() {
        assert_eq!(CpuVendor::from_id(b"GenuineIntel"), CpuVendor::Intel);
        assert_eq!(CpuVendor::from_id(b"AuthenticAMD"), CpuVendor::Amd);
        assert_eq!(CpuVendor::from_id(b"HygonGenuine"), CpuVendor::Amd);
        assert_eq!(CpuVendor::from_id(b"CentaurHauls"), CpuVendor::Other);
        assert_ne!(
            CpuVendor::detect(),
            CpuVendor::Other,
            "this test runs on Intel or AMD"
        );
    }
}
