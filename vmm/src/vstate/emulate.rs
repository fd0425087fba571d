//! Finishing instructions that a kernel-emulating KVM host fails to emulate
//! in guest kernel mode. Only INT3 and FWAIT are handled: both are one byte,
//! their effect is fully specified, and Linux executes both routinely (INT3
//! for its self-test and text patching, FWAIT on every exec).

use kvm_bindings::{kvm_fpu, KVM_INTERNAL_ERROR_EMULATION};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use crate::diag;

const INT3: u8 = 0xcc;
const FWAIT: u8 = 0x9b;
const BP_VECTOR: u8 = 3;
const MF_VECTOR: u8 = 16;

/// What the VMM did about an emulation failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulated {
    /// INT3: RIP advanced and #BP injected, as the CPU would have done.
    Int3,
    /// FWAIT with no unmasked x87 exception pending: skipped.
    Fwait,
    /// FWAIT with an unmasked x87 exception pending: #MF injected.
    FwaitFault,
}

/// Whether an FWAIT must raise #MF: an exception flag in FSW that FCW does not mask.
pub fn x87_exception_pending(fpu: &kvm_fpu) -> bool {
    (fpu.fsw & !fpu.fcw & 0x3f) != 0
}

/// Handles an emulation failure if it is one we know; `None` means it stays fatal.
pub fn handle(vcpu: &VcpuFd, mem: &GuestMemoryMmap, suberror: u32) -> Option<Emulated> {
    if suberror != KVM_INTERNAL_ERROR_EMULATION {
        return None;
    }
    let mut regs = vcpu.get_regs().ok()?;
    let first = *diag::read_insn_bytes(vcpu, mem, regs.rip).first()?;
    let (done, inject) = match first {
        INT3 => (Emulated::Int3, Some(BP_VECTOR)),
        FWAIT => {
            let fpu = vcpu.get_fpu().ok()?;
            if x87_exception_pending(&fpu) {
                (Emulated::FwaitFault, Some(MF_VECTOR))
            } else {
                (Emulated::Fwait, None)
            }
        }
        _ => return None,
    };
    // #BP is a trap (reported after the instruction); #MF from FWAIT is a
    // fault (reported at it).
    if done != Emulated::FwaitFault {
        regs.rip = regs.rip.wrapping_add(1);
        vcpu.set_regs(&regs).ok()?;
    }
    if let Some(vector) = inject {
        let mut events = vcpu.get_vcpu_events().ok()?;
        events.exception.injected = 1;
        events.exception.nr = vector;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        vcpu.set_vcpu_events(&events).ok()?;
    }
    Some(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_x87_exceptions_do_not_fault() {
        let fpu = kvm_fpu {
            fcw: 0x37f,
            fsw: 0x1,
            ..Default::default()
        };
        assert!(!x87_exception_pending(&fpu));
    }

    #[test]
    fn unmasked_x87_exception_faults() {
        let fpu = kvm_fpu {
            fcw: 0x37e,
            fsw: 0x1,
            ..Default::default()
        };
        assert!(x87_exception_pending(&fpu));
        let clean = kvm_fpu {
            fcw: 0x37e,
            fsw: 0,
            ..Default::default()
        };
        assert!(!x87_exception_pending(&clean));
    }
}
