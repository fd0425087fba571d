//! KVM state: guest memory, the VM, its vCPUs.

pub mod emulate;
pub mod memory;
pub mod persist;
pub mod vcpu;
pub mod vm;
pub mod watchdog;
