//! Initial vCPU register state for each boot protocol.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{self, kvm_segment_from_gdt, BOOT_GDT};
use super::layout;

/// Errors setting up vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Writing boot structures into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    Memory {
        /// Which structure.
        what: &'static str,
        /// The error.
        source: vm_memory::GuestMemoryError,
    },
}

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64 {
        /// Entry point.
        entry: u64,
    },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh {
        /// Entry point.
        entry: u64,
    },
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// General registers for the boot vCPU.
pub fn boot_regs(mode: EntryMode) -> kvm_regs {
    match mode {
        EntryMode::Linux64 { entry } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rsp: layout::BOOT_STACK_POINTER,
            rbp: layout::BOOT_STACK_POINTER,
            rsi: layout::ZERO_PAGE_START,
            ..Default::default()
        },
        EntryMode::Pvh { entry } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rbx: layout::PVH_INFO_START,
            ..Default::default()
        },
    }
}

/// Writes the boot GDT, an empty IDT and (for 64-bit boot) the identity-map
/// page tables into guest memory, and returns the matching special registers.
pub fn boot_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::BOOT_GDT_START + 8 * i as u64))
            .map_err(|source| RegsError::Memory {
                what: "GDT",
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(|source| RegsError::Memory {
            what: "IDT",
            source,
        })?;
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 0;

    let data = kvm_segment_from_gdt(BOOT_GDT[gdt::DATA_INDEX as usize], gdt::DATA_INDEX);
    let tss = kvm_segment_from_gdt(BOOT_GDT[gdt::TSS_INDEX as usize], gdt::TSS_INDEX);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match mode {
        EntryMode::Linux64 { .. } => {
            sregs.cs =
                kvm_segment_from_gdt(BOOT_GDT[gdt::CODE64_INDEX as usize], gdt::CODE64_INDEX);
            write_identity_map(mem)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh { .. } => {
            sregs.cs =
                kvm_segment_from_gdt(BOOT_GDT[gdt::CODE32_INDEX as usize], gdt::CODE32_INDEX);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// Identity-maps the first 1 GiB with 2 MiB pages: enough for the kernel,
/// its boot structures and the initrd of any guest the kernel's own early
/// page-table code has not taken over yet.
fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let write = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|source| RegsError::Memory {
                what: "page tables",
                source,
            })
    };
    write(layout::PDPTE_START | 0x03, layout::PML4_START)?;
    write(layout::PDE_START | 0x03, layout::PDPTE_START)?;
    for i in 0..512u64 {
        // Present | writable | 2 MiB page.
        write((i << 21) | 0x83, layout::PDE_START + i * 8)?;
    }
    Ok(())
}

/// x87/SSE state Linux expects at entry.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Sets the boot vCPU's registers for `mode`.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    mode: EntryMode,
) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, source };
    vcpu.set_fpu(&boot_fpu()).map_err(kvm("set FPU state"))?;
    let sregs = vcpu.get_sregs().map_err(kvm("get special registers"))?;
    let sregs = boot_sregs(mem, mode, sregs)?;
    vcpu.set_sregs(&sregs)
        .map_err(kvm("set special registers"))?;
    vcpu.set_regs(&boot_regs(mode))
        .map_err(kvm("set registers"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("guest memory")
    }

    #[test]
    fn linux64_entry_is_long_mode_with_identity_map() {
        let m = mem();
        let sregs = boot_sregs(
            &m,
            EntryMode::Linux64 { entry: 0x100000 },
            kvm_sregs::default(),
        )
        .expect("sregs");
        assert_eq!(sregs.cr3, layout::PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        assert_eq!(sregs.cs.l, 1);
        let pde1: u64 = m
            .read_obj(GuestAddress(layout::PDE_START + 8))
            .expect("pde");
        assert_eq!(pde1, (1 << 21) | 0x83);
        let regs = boot_regs(EntryMode::Linux64 { entry: 0x100000 });
        assert_eq!(regs.rsi, layout::ZERO_PAGE_START);
        assert_eq!(regs.rip, 0x100000);
    }

    #[test]
    fn pvh_entry_is_flat_protected_mode_without_paging() {
        let m = mem();
        let sregs = boot_sregs(
            &m,
            EntryMode::Pvh { entry: 0x1000000 },
            kvm_sregs::default(),
        )
        .expect("sregs");
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PE, 0);
        assert_eq!(sregs.efer, 0);
        assert_eq!((sregs.cs.l, sregs.cs.db), (0, 1));
        assert_eq!(
            boot_regs(EntryMode::Pvh { entry: 0x1000000 }).rbx,
            layout::PVH_INFO_START
        );
    }
}
