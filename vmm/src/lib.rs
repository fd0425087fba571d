//! ec2lab-vmm: the ec2lab hypervisor, one process per instance, on KVM.
//!
//! [`builder::build`] turns a [`config::VmConfig`] into a ready VM (memory,
//! kernel, firmware tables, devices, vCPUs); [`vmm::Vmm::run`] runs it
//! until the guest or the host stops it and returns the [`exit::VmExit`],
//! and pauses and resumes it on the control API's behalf ([`pause`]).

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod console;
pub mod devices;
pub mod diag;
pub mod exit;
#[cfg(test)]
mod fuzzing;
pub mod host;
pub mod imds;
pub mod jail;
pub mod pause;
pub mod privilege;
pub mod rlimit;
pub mod seccomp;
pub mod snapshot;
pub mod vmm;
pub mod vstate;

/// Everything that reaches the VMM's main loop.
#[derive(Debug)]
pub enum VmmEvent {
    /// The VM must stop for this reason.
    Exit(exit::VmExit),
    /// A control API request and where to send the answer.
    Api(api::ApiRequest, std::sync::mpsc::Sender<api::ApiResponse>),
}
