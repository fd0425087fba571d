//! What KVM holds for a VM and its vCPUs, saved and put back: the
//! in-kernel PIC, IOAPIC, PIT and clock, and each vCPU's registers, FPU and
//! extended state, local APIC, MSRs, pending events and CPUID.
//!
//! The restore order is the one measured to resume a running guest exactly
//! on hosts that emulate the guest kernel (see the hibernate issue and
//! guest-images/kernel/NOTES.md): the VM's PIT, clock and interrupt chips
//! first, then per vCPU CPUID, MP state, registers, special registers,
//! XSAVE, XCRs, debug registers, local APIC, MSRs, and pending events
//! last, since setting the APIC or the MSRs may change what is pending.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Errors reading or writing KVM state.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A KVM ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// A CPUID or MSR list could not be built (too many entries).
    #[error("cannot build the {0} list for KVM")]
    Fam(&'static str),
    /// KVM took only part of the saved MSRs.
    #[error("KVM refused MSR {index:#x} ({written} of {total} MSRs restored)")]
    Msr {
        /// The first MSR KVM did not take.
        index: u32,
        /// How many it took.
        written: usize,
        /// How many were saved.
        total: usize,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> PersistError {
    move |source| PersistError::Kvm { what, source }
}

/// The interrupt chips in the order KVM numbers them.
const IRQCHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// The VM-wide state: in-kernel PIT, clock, PICs and IOAPIC.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The PIT's channels.
    pub pit: kvm_pit_state2,
    /// KVM's VM clock (kvmclock's base).
    pub clock: kvm_clock_data,
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
}

/// Reads the VM-wide state; every vCPU must be out of KVM_RUN.
pub fn save_vm(fd: &VmFd) -> Result<VmState, PersistError> {
    let pit = fd.get_pit2().map_err(kvm("read the PIT"))?;
    let clock = fd.get_clock().map_err(kvm("read the VM clock"))?;
    let mut irqchips = Vec::with_capacity(IRQCHIPS.len());
    for chip_id in IRQCHIPS {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        fd.get_irqchip(&mut chip)
            .map_err(kvm("read an interrupt controller"))?;
        irqchips.push(chip);
    }
    Ok(VmState {
        pit,
        clock,
        irqchips,
    })
}

/// Puts the VM-wide state back, before any vCPU state.
pub fn restore_vm(fd: &VmFd, state: &VmState) -> Result<(), PersistError> {
    fd.set_pit2(&state.pit).map_err(kvm("restore the PIT"))?;
    // The flags describe how the clock was read (TSC-stable, realtime);
    // KVM refuses most of them on the way in.
    let clock = kvm_clock_data {
        flags: 0,
        ..state.clock
    };
    fd.set_clock(&clock).map_err(kvm("restore the VM clock"))?;
    for chip in &state.irqchips {
        fd.set_irqchip(chip)
            .map_err(kvm("restore an interrupt controller"))?;
    }
    Ok(())
}

/// One vCPU's state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the guest was running with (it must not change under it).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Runnable, halted, waiting for SIPI.
    pub mp_state: kvm_mp_state,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segments, control registers, EFER, the APIC base, pending interrupt bitmap.
    pub sregs: kvm_sregs,
    /// x87, SSE and extended state in the XSAVE layout.
    pub xsave: kvm_xsave,
    /// XCR0; `None` where KVM has no XCR support.
    pub xcrs: Option<kvm_xcrs>,
    /// DR0–DR7.
    pub debugregs: kvm_debugregs,
    /// The local APIC's register page (timer, ISR/IRR, LVTs).
    pub lapic: kvm_lapic_state,
    /// Every MSR of KVM_GET_MSR_INDEX_LIST that KVM would read.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, the interrupt shadow.
    pub events: kvm_vcpu_events,
    /// The TSC frequency the guest calibrated against.
    pub tsc_khz: Option<u32>,
}

// kvm_xsave ends in a flexible array member (empty for KVM_GET_XSAVE's
// 4 KiB), so it has no Clone of its own.
impl Clone for VcpuState {
    fn clone(&self) -> Self {
        let mut xsave = kvm_xsave::default();
        xsave.region = self.xsave.region;
        Self {
            cpuid: self.cpuid.clone(),
            mp_state: self.mp_state,
            regs: self.regs,
            sregs: self.sregs,
            xsave,
            xcrs: self.xcrs,
            debugregs: self.debugregs,
            lapic: self.lapic,
            msrs: self.msrs.clone(),
            events: self.events,
            tsc_khz: self.tsc_khz,
        }
    }
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("mp_state", &self.mp_state.mp_state)
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// The most MSRs read or written in one ioctl (KVM's own limit).
const MSR_CHUNK: usize = 256;

/// Reads a vCPU's state; the vCPU must be out of KVM_RUN and settled (see
/// `Vcpu::settle`). `msr_index` is KVM_GET_MSR_INDEX_LIST.
pub fn save_vcpu(fd: &VcpuFd, msr_index: &[u32]) -> Result<VcpuState, PersistError> {
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("read CPUID"))?
        .as_slice()
        .to_vec();
    Ok(VcpuState {
        cpuid,
        mp_state: fd.get_mp_state().map_err(kvm("read the MP state"))?,
        regs: fd.get_regs().map_err(kvm("read the registers"))?,
        sregs: fd.get_sregs().map_err(kvm("read the special registers"))?,
        xsave: fd.get_xsave().map_err(kvm("read the XSAVE state"))?,
        xcrs: fd.get_xcrs().ok(),
        debugregs: fd
            .get_debug_regs()
            .map_err(kvm("read the debug registers"))?,
        lapic: fd.get_lapic().map_err(kvm("read the local APIC"))?,
        msrs: save_msrs(fd, msr_index)?,
        events: fd
            .get_vcpu_events()
            .map_err(kvm("read the pending events"))?,
        tsc_khz: fd.get_tsc_khz().ok(),
    })
}

/// Reads every MSR of `index` KVM will read. KVM stops a batch at the first
/// MSR it refuses; that one is left out and the batch goes on after it.
fn save_msrs(fd: &VcpuFd, index: &[u32]) -> Result<Vec<kvm_msr_entry>, PersistError> {
    let mut saved = Vec::with_capacity(index.len());
    let mut rest = index;
    while !rest.is_empty() {
        let chunk: Vec<kvm_msr_entry> = rest
            .iter()
            .take(MSR_CHUNK)
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&chunk).map_err(|_| PersistError::Fam("MSR"))?;
        let read = fd.get_msrs(&mut msrs).map_err(kvm("read the MSRs"))?;
        saved.extend_from_slice(&msrs.as_slice()[..read.min(chunk.len())]);
        let skip = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[skip.min(rest.len())..];
    }
    Ok(saved)
}

/// Puts a vCPU's state back into a vCPU created for it (before its thread
/// starts).
pub fn restore_vcpu(fd: &VcpuFd, state: &VcpuState) -> Result<(), PersistError> {
    if let Some(khz) = state.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            // A guest that calibrated its clock against one rate must keep
            // it; KVM scales the TSC where the hardware can.
            fd.set_tsc_khz(khz).map_err(kvm("set the TSC frequency"))?;
        }
    }
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| PersistError::Fam("CPUID"))?;
    fd.set_cpuid2(&cpuid).map_err(kvm("restore CPUID"))?;
    fd.set_mp_state(state.mp_state)
        .map_err(kvm("restore the MP state"))?;
    fd.set_regs(&state.regs)
        .map_err(kvm("restore the registers"))?;
    fd.set_sregs(&state.sregs)
        .map_err(kvm("restore the special registers"))?;
    // SAFETY: the buffer is a whole kvm_xsave that KVM_GET_XSAVE filled on a
    // vCPU of the same CPUID (checked by the caller against the host), so
    // it is the layout KVM_SET_XSAVE reads.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm("restore the XSAVE state"))?;
    if let Some(xcrs) = &state.xcrs {
        fd.set_xcrs(xcrs).map_err(kvm("restore XCR0"))?;
    }
    fd.set_debug_regs(&state.debugregs)
        .map_err(kvm("restore the debug registers"))?;
    fd.set_lapic(&state.lapic)
        .map_err(kvm("restore the local APIC"))?;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| PersistError::Fam("MSR"))?;
        let written = fd.set_msrs(&msrs).map_err(kvm("restore the MSRs"))?;
        if written < chunk.len() {
            return Err(PersistError::Msr {
                index: chunk[written].index,
                written,
                total: state.msrs.len(),
            });
        }
    }
    fd.set_vcpu_events(&state.events)
        .map_err(kvm("restore the pending events"))?;
    Ok(())
}
