//! Finishing instructions that a kernel-emulating KVM host fails to emulate
//! in guest kernel mode. Only instructions whose whole effect is simple and
//! fully specified are handled, each because Linux executes it routinely:
//! INT3 (self-test, text patching), FWAIT (every exec), LDMXCSR/STMXCSR
//! (`kernel_fpu_begin`, around any in-kernel SIMD code).

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, Register};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs, KVM_INTERNAL_ERROR_EMULATION};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::diag;

const INT3: u8 = 0xcc;
const FWAIT: u8 = 0x9b;
const BP_VECTOR: u8 = 3;
const GP_VECTOR: u8 = 13;
const PF_VECTOR: u8 = 14;
/// #PF error code bits: the page was present, the access a write, the
/// access from user mode.
const PF_PRESENT: u32 = 1;
const PF_WRITE: u32 = 1 << 1;
const PF_USER: u32 = 1 << 2;
/// CR0.WP: supervisor writes honour read-only pages.
const CR0_WP: u64 = 1 << 16;
const MF_VECTOR: u8 = 16;
/// MXCSR bits a write may set (with DAZ); others raise #GP.
const MXCSR_WRITABLE: u32 = 0xffff;

/// What the VMM did about an emulation failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulated {
    /// INT3: RIP advanced and #BP injected, as the CPU would have done.
    Int3,
    /// FWAIT with no unmasked x87 exception pending: skipped.
    Fwait,
    /// FWAIT with an unmasked x87 exception pending: #MF injected.
    FwaitFault,
    /// LDMXCSR or STMXCSR carried out.
    Mxcsr,
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
    let bytes = diag::read_insn_bytes(vcpu, mem, regs.rip);
    match *bytes.first()? {
        INT3 => {
            // A trap: reported after the instruction.
            regs.rip = regs.rip.wrapping_add(1);
            vcpu.set_regs(&regs).ok()?;
            inject(vcpu, BP_VECTOR, None)?;
            Some(Emulated::Int3)
        }
        FWAIT => {
            let fpu = vcpu.get_fpu().ok()?;
            if x87_exception_pending(&fpu) {
                // A fault: reported at the instruction.
                inject(vcpu, MF_VECTOR, None)?;
                Some(Emulated::FwaitFault)
            } else {
                regs.rip = regs.rip.wrapping_add(1);
                vcpu.set_regs(&regs).ok()?;
                Some(Emulated::Fwait)
            }
        }
        _ => {
            let sregs = vcpu.get_sregs().ok()?;
            let mut decoder = Decoder::with_ip(
                diag::bitness(&sregs),
                &bytes,
                regs.rip,
                DecoderOptions::NONE,
            );
            let insn = decoder.decode();
            match insn.mnemonic() {
                Mnemonic::Ldmxcsr | Mnemonic::Stmxcsr => mxcsr(vcpu, mem, &insn, regs, &sregs),
                _ => None,
            }
        }
    }
}

fn inject(vcpu: &VcpuFd, vector: u8, error_code: Option<u32>) -> Option<()> {
    let mut events = vcpu.get_vcpu_events().ok()?;
    events.exception.injected = 1;
    events.exception.nr = vector;
    events.exception.has_error_code = u8::from(error_code.is_some());
    events.exception.error_code = error_code.unwrap_or(0);
    vcpu.set_vcpu_events(&events).ok()
}

/// The value of `reg` (any width) or segment base, for effective addresses.
fn register_value(reg: Register, regs: &kvm_regs, sregs: &kvm_sregs) -> Option<u64> {
    let full = match reg.full_register() {
        Register::ES => return Some(sregs.es.base),
        Register::CS => return Some(sregs.cs.base),
        Register::SS => return Some(sregs.ss.base),
        Register::DS => return Some(sregs.ds.base),
        Register::FS => return Some(sregs.fs.base),
        Register::GS => return Some(sregs.gs.base),
        Register::RAX => regs.rax,
        Register::RBX => regs.rbx,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        Register::RSP => regs.rsp,
        Register::RBP => regs.rbp,
        Register::R8 => regs.r8,
        Register::R9 => regs.r9,
        Register::R10 => regs.r10,
        Register::R11 => regs.r11,
        Register::R12 => regs.r12,
        Register::R13 => regs.r13,
        Register::R14 => regs.r14,
        Register::R15 => regs.r15,
        Register::RIP => regs.rip,
        _ => return None,
    };
    Some(match reg.size() {
        1 => full & 0xff,
        2 => full & 0xffff,
        4 => full & 0xffff_ffff,
        _ => full,
    })
}

/// An access the guest's page tables forbid: the CPU would have raised
/// #PF at `address` with `error_code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PageFault {
    address: u64,
    error_code: u32,
}

/// What the page tables say of one byte (KVM_TRANSLATE's answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapping {
    present: bool,
    writable: bool,
    user: bool,
    physical: u64,
}

/// Checks one byte's access as the CPU would: present, reachable from user
/// mode when the instruction runs at CPL 3, and writable for a write (from
/// user mode always, from the kernel when CR0.WP is set). Emulating the
/// instruction must not let guest user code reach memory its page tables
/// forbid it.
fn check_access(
    address: u64,
    m: Mapping,
    write: bool,
    user: bool,
    cr0: u64,
) -> Result<GuestAddress, PageFault> {
    let code = (u32::from(write) * PF_WRITE) | (u32::from(user) * PF_USER);
    if !m.present {
        return Err(PageFault {
            address,
            error_code: code,
        });
    }
    let denied = (user && !m.user) || (write && !m.writable && (user || cr0 & CR0_WP != 0));
    if denied {
        return Err(PageFault {
            address,
            error_code: code | PF_PRESENT,
        });
    }
    Ok(GuestAddress(m.physical))
}

/// Guest-physical address of each byte of a `len`-byte access at `gva`
/// (the access may straddle a page boundary), or the #PF the access
/// raises; `None` when KVM cannot translate at all.
fn translate(
    vcpu: &VcpuFd,
    gva: u64,
    len: u64,
    write: bool,
    sregs: &kvm_sregs,
) -> Option<Result<Vec<GuestAddress>, PageFault>> {
    let user = sregs.cs.dpl == 3;
    let mut addrs = Vec::new();
    for i in 0..len {
        let address = gva.wrapping_add(i);
        let t = vcpu.translate_gva(address).ok()?;
        let mapping = Mapping {
            present: t.valid != 0,
            writable: t.writeable != 0,
            user: t.usermode != 0,
            physical: t.physical_address,
        };
        match check_access(address, mapping, write, user, sregs.cr0) {
            Ok(a) => addrs.push(a),
            Err(fault) => return Some(Err(fault)),
        }
    }
    Some(Ok(addrs))
}

/// Raises #PF in the guest as the CPU would have: CR2 is the address.
/// `sregs` are the vCPU's, as read for the faulting instruction.
fn inject_page_fault(vcpu: &VcpuFd, sregs: &kvm_sregs, fault: PageFault) -> Option<()> {
    let sregs = kvm_sregs {
        cr2: fault.address,
        ..*sregs
    };
    vcpu.set_sregs(&sregs).ok()?;
    inject(vcpu, PF_VECTOR, Some(fault.error_code))
}

fn mxcsr(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    insn: &Instruction,
    mut regs: kvm_regs,
    sregs: &kvm_sregs,
) -> Option<Emulated> {
    let gva = insn.virtual_address(0, 0, |r, _, _| register_value(r, &regs, sregs))?;
    let write = insn.mnemonic() == Mnemonic::Stmxcsr;
    let addrs = match translate(vcpu, gva, 4, write, sregs)? {
        Ok(addrs) => addrs,
        Err(fault) => {
            inject_page_fault(vcpu, sregs, fault)?;
            return Some(Emulated::Mxcsr);
        }
    };
    let mut fpu = vcpu.get_fpu().ok()?;
    if insn.mnemonic() == Mnemonic::Ldmxcsr {
        let mut bytes = [0u8; 4];
        for (b, a) in bytes.iter_mut().zip(&addrs) {
            *b = mem.read_obj(*a).ok()?;
        }
        let value = u32::from_le_bytes(bytes);
        if value & !MXCSR_WRITABLE != 0 {
            inject(vcpu, GP_VECTOR, Some(0))?;
            return Some(Emulated::Mxcsr);
        }
        fpu.mxcsr = value;
        vcpu.set_fpu(&fpu).ok()?;
    } else {
        for (b, a) in fpu.mxcsr.to_le_bytes().iter().zip(&addrs) {
            mem.write_obj(*b, *a).ok()?;
        }
    }
    regs.rip = regs.rip.wrapping_add(insn.len() as u64);
    vcpu.set_regs(&regs).ok()?;
    Some(Emulated::Mxcsr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_addresses_use_register_widths_and_segment_bases() {
        let regs = kvm_regs {
            rsp: 0xffff_c900_0000_1000,
            rax: 0x1_0000_0010,
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.gs.base = 0xffff_8880_0000_0000;
        // ldmxcsr [rsp+4]
        let insn =
            Decoder::with_ip(64, &[0x0f, 0xae, 0x54, 0x24, 0x04], 0, DecoderOptions::NONE).decode();
        assert_eq!(insn.mnemonic(), Mnemonic::Ldmxcsr);
        let va = insn.virtual_address(0, 0, |r, _, _| register_value(r, &regs, &sregs));
        assert_eq!(va, Some(0xffff_c900_0000_1004));
        // stmxcsr gs:[eax] (address-size override: 32-bit register)
        let insn =
            Decoder::with_ip(64, &[0x65, 0x67, 0x0f, 0xae, 0x18], 0, DecoderOptions::NONE).decode();
        assert_eq!(insn.mnemonic(), Mnemonic::Stmxcsr);
        let va = insn.virtual_address(0, 0, |r, _, _| register_value(r, &regs, &sregs));
        assert_eq!(va, Some(0xffff_8880_0000_0010));
    }

    #[test]
    fn emulated_accesses_obey_the_guest_page_tables() {
        let page = |present, writable, user| Mapping {
            present,
            writable,
            user,
            physical: 0x1000,
        };
        let ok = Ok(GuestAddress(0x1000));
        // The kernel reads and writes its own pages; a read-only page
        // refuses its write only with CR0.WP.
        assert_eq!(
            check_access(8, page(true, true, false), true, false, CR0_WP),
            ok
        );
        assert_eq!(
            check_access(8, page(true, false, false), true, false, 0),
            ok
        );
        assert_eq!(
            check_access(8, page(true, false, false), true, false, CR0_WP),
            Err(PageFault {
                address: 8,
                error_code: PF_PRESENT | PF_WRITE
            })
        );
        // User mode never reaches a supervisor page, nor writes a
        // read-only one (whatever CR0.WP).
        assert_eq!(
            check_access(8, page(true, true, false), false, true, 0),
            Err(PageFault {
                address: 8,
                error_code: PF_PRESENT | PF_USER
            })
        );
        assert_eq!(
            check_access(8, page(true, false, true), true, true, 0),
            Err(PageFault {
                address: 8,
                error_code: PF_PRESENT | PF_WRITE | PF_USER
            })
        );
        assert_eq!(check_access(8, page(true, false, true), false, true, 0), ok);
        // Not present: P clear.
        assert_eq!(
            check_access(9, page(false, true, true), true, true, 0),
            Err(PageFault {
                address: 9,
                error_code: PF_WRITE | PF_USER
            })
        );
    }

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
