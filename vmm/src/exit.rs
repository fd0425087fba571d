//! Why the VMM stopped, and the process exit status for each reason.
//!
//! The statuses are part of the VMM's interface: the control plane decides
//! what an exit means for the instance (stopped, rebooted, failed).

use std::fmt;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI S5).
    GuestPoweroff,
    /// The guest asked for a reset (i8042 or ACPI reset register).
    GuestReset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The vCPU.
        vcpu: u8,
    },
    /// A vCPU hit a KVM exit the VMM cannot handle, or KVM reported an internal error.
    Unhandled {
        /// The vCPU.
        vcpu: u8,
        /// What happened, for the log.
        reason: String,
    },
    /// The control API asked for a shutdown.
    ApiShutdown,
    /// The process received a terminating signal.
    Signal(i32),
    /// The VMM itself failed at run time.
    VmmError(String),
}

/// Exit status for a guest poweroff.
pub const EXIT_POWEROFF: i32 = 0;
/// Exit status for a VMM run-time failure.
pub const EXIT_VMM_ERROR: i32 = 1;
/// Exit status for bad input (flags, config, kernel, initrd).
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit status for a guest reset (reboot).
pub const EXIT_REBOOT: i32 = 3;
/// Exit status for a triple fault.
pub const EXIT_TRIPLE_FAULT: i32 = 4;
/// Exit status for an unhandled KVM exit or KVM internal error.
pub const EXIT_UNHANDLED: i32 = 5;
/// Exit status for a shutdown requested through the control API.
pub const EXIT_API_SHUTDOWN: i32 = 6;

impl VmExit {
    /// The process exit status: signals follow the shell convention 128 + signo.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::GuestPoweroff => EXIT_POWEROFF,
            VmExit::GuestReset => EXIT_REBOOT,
            VmExit::TripleFault { .. } => EXIT_TRIPLE_FAULT,
            VmExit::Unhandled { .. } => EXIT_UNHANDLED,
            VmExit::ApiShutdown => EXIT_API_SHUTDOWN,
            VmExit::Signal(signo) => 128 + signo,
            VmExit::VmmError(_) => EXIT_VMM_ERROR,
        }
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::GuestPoweroff => write!(f, "guest powered off"),
            VmExit::GuestReset => write!(f, "guest reset (reboot)"),
            VmExit::TripleFault { vcpu } => write!(f, "vcpu{vcpu}: triple fault"),
            VmExit::Unhandled { vcpu, reason } => write!(f, "vcpu{vcpu}: {reason}"),
            VmExit::ApiShutdown => write!(f, "shutdown requested through the API"),
            VmExit::Signal(signo) => write!(f, "stopped by signal {signo}"),
            VmExit::VmmError(e) => write!(f, "vmm error: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_status() {
        let exits = [
            VmExit::GuestPoweroff,
            VmExit::VmmError(String::new()),
            VmExit::GuestReset,
            VmExit::TripleFault { vcpu: 0 },
            VmExit::Unhandled {
                vcpu: 0,
                reason: String::new(),
            },
            VmExit::ApiShutdown,
            VmExit::Signal(15),
        ];
        let codes: Vec<i32> = exits.iter().map(VmExit::exit_code).collect();
        assert_eq!(codes, vec![0, 1, 3, 4, 5, 6, 143]);
        assert!(!codes.contains(&EXIT_BAD_INPUT));
    }

    #[test]
    fn sigint_maps_to_130() {
        assert_eq!(VmExit::Signal(libc::SIGINT).exit_code(), 130);
    }
}
