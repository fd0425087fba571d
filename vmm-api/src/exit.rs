//! What the VMM's exit status means, and the exit file (`--exit-file`)
//! that carries it to a supervisor which is not the VMM's parent (a
//! restarted control plane cannot collect a wait status).
//!
//! The numbers are the interface: the control plane decides what an exit
//! means for the instance (stopped, rebooted, failed); the VMM only says
//! why it stopped.

use serde::{Deserialize, Serialize};

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
/// Exit status for a system call outside a VMM thread's seccomp allowlist:
/// the VMM ended itself before the call ran.
pub const EXIT_SECCOMP: i32 = 7;
/// Signals end the VMM with 128 + the signal number, the shell's convention.
pub const EXIT_SIGNAL_BASE: i32 = 128;

/// An exit status by meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The VMM failed at run time.
    VmmError,
    /// Bad input: nothing was started.
    BadInput,
    /// The guest reset itself (reboot).
    Reboot,
    /// A vCPU triple-faulted.
    TripleFault,
    /// An unhandled KVM exit or KVM internal error.
    Unhandled,
    /// Stopped through the control API's `Shutdown` action.
    ApiShutdown,
    /// A VMM thread made a system call its seccomp allowlist forbids.
    Seccomp,
    /// Stopped by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// The process exit status.
    pub const fn code(self) -> i32 {
        match self {
            Self::Poweroff => EXIT_POWEROFF,
            Self::VmmError => EXIT_VMM_ERROR,
            Self::BadInput => EXIT_BAD_INPUT,
            Self::Reboot => EXIT_REBOOT,
            Self::TripleFault => EXIT_TRIPLE_FAULT,
            Self::Unhandled => EXIT_UNHANDLED,
            Self::ApiShutdown => EXIT_API_SHUTDOWN,
            Self::Seccomp => EXIT_SECCOMP,
            Self::Signal(signo) => EXIT_SIGNAL_BASE + signo,
        }
    }

    /// The meaning of an exit status; None for one the VMM never uses.
    pub const fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            EXIT_POWEROFF => Self::Poweroff,
            EXIT_VMM_ERROR => Self::VmmError,
            EXIT_BAD_INPUT => Self::BadInput,
            EXIT_REBOOT => Self::Reboot,
            EXIT_TRIPLE_FAULT => Self::TripleFault,
            EXIT_UNHANDLED => Self::Unhandled,
            EXIT_API_SHUTDOWN => Self::ApiShutdown,
            EXIT_SECCOMP => Self::Seccomp,
            // Exit statuses are one byte, and signal numbers start at 1.
            129..=255 => Self::Signal(code - EXIT_SIGNAL_BASE),
            _ => return None,
        })
    }
}

/// The exit file's content: `{"code": N, "reason": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit status.
    pub code: i32,
    /// Why, in the VMM's words (the same line it logs).
    pub reason: String,
}

impl ExitRecord {
    /// The status's meaning, if the VMM defines it.
    pub fn status(&self) -> Option<ExitStatus> {
        ExitStatus::from_code(self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_its_documented_number_and_reads_back() {
        let statuses = [
            (ExitStatus::Poweroff, 0),
            (ExitStatus::VmmError, 1),
            (ExitStatus::BadInput, 2),
            (ExitStatus::Reboot, 3),
            (ExitStatus::TripleFault, 4),
            (ExitStatus::Unhandled, 5),
            (ExitStatus::ApiShutdown, 6),
            (ExitStatus::Seccomp, 7),
            (ExitStatus::Signal(2), 130),
            (ExitStatus::Signal(15), 143),
        ];
        for (status, code) in statuses {
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(ExitStatus::from_code(code), Some(status), "{code}");
        }
    }

    #[test]
    fn statuses_the_vmm_never_uses_have_no_meaning() {
        for code in [-1, 8, 127, 128, 256] {
            assert_eq!(ExitStatus::from_code(code), None, "{code}");
        }
    }

    #[test]
    fn the_exit_file_is_code_then_reason() {
        let record = ExitRecord {
            code: EXIT_REBOOT,
            reason: "guest reset (reboot)".to_string(),
        };
        let json = serde_json::to_string(&record).expect("serialises");
        assert_eq!(json, r#"{"code":3,"reason":"guest reset (reboot)"}"#);
        let back: ExitRecord = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.status(), Some(ExitStatus::Reboot));
    }
}
