//! Why the VMM stopped, and the process exit status for each reason.
//!
//! The statuses are part of the VMM's interface and live in the contract
//! crate (re-exported here): the control plane decides what an exit means
//! for the instance (stopped, rebooted, failed).

use std::fmt;

pub use ec2lab_vmm_api::exit::{
    ExitRecord, ExitStatus, EXIT_API_SHUTDOWN, EXIT_BAD_INPUT, EXIT_POWEROFF, EXIT_REBOOT,
    EXIT_TRIPLE_FAULT, EXIT_UNHANDLED, EXIT_VMM_ERROR,
};

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

impl VmExit {
    /// What the exit status says about this exit.
    pub fn status(&self) -> ExitStatus {
        match self {
            VmExit::GuestPoweroff => ExitStatus::Poweroff,
            VmExit::GuestReset => ExitStatus::Reboot,
            VmExit::TripleFault { .. } => ExitStatus::TripleFault,
            VmExit::Unhandled { .. } => ExitStatus::Unhandled,
            VmExit::ApiShutdown => ExitStatus::ApiShutdown,
            VmExit::Signal(signo) => ExitStatus::Signal(*signo),
            VmExit::VmmError(_) => ExitStatus::VmmError,
        }
    }

    /// The process exit status: signals follow the shell convention 128 + signo.
    pub fn exit_code(&self) -> i32 {
        self.status().code()
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
