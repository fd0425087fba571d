//! Which kind of KVM host this is. The VMM adapts guests to a host that
//! emulates guest kernel mode, and the control plane sizes their boot
//! memory for it; both ask here, so they cannot disagree.

use std::path::Path;

/// Whether this host's KVM emulates guest kernel mode (the `kvm_pvm`
/// module is loaded; DESIGN.md, "KVM hosts that emulate the guest kernel").
pub fn emulates_guest_kernel() -> bool {
    emulates_guest_kernel_in(Path::new("/sys/module"))
}

/// [`emulates_guest_kernel`] against a `/sys/module` tree at `sys_module`.
pub fn emulates_guest_kernel_in(sys_module: &Path) -> bool {
    sys_module.join("kvm_pvm").exists()
}
