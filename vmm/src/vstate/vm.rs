//! The KVM VM: memory slots, in-kernel irqchip and PIT, irqfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout;

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM enabled and are you allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
    /// The host KVM API is not the stable one.
    #[error("unsupported KVM API version {0}")]
    ApiVersion(i32),
    /// A required capability is missing.
    #[error("KVM lacks a required capability: {0:?}")]
    Capability(Cap),
    /// A VM ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

/// A KVM VM with its memory registered.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
    Cap::PitState2,
    Cap::ExtCpuid,
    Cap::ImmediateExit,
];

impl Vm {
    /// Opens KVM, checks what we rely on, and creates the VM with an in-kernel
    /// irqchip and PIT and `mem` registered.
    pub fn new(mem: &GuestMemoryMmap) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::ApiVersion(version));
        }
        if let Some(cap) = REQUIRED_CAPS.iter().find(|c| !kvm.check_extension(**c)) {
            return Err(VmError::Capability(*cap));
        }
        let kvm_err = |what| move |source| VmError::Kvm { what, source };
        let fd = kvm.create_vm().map_err(kvm_err("create the VM"))?;
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("set the TSS address"))?;
        if let Err(e) = fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS) {
            // Only Intel's real-mode emulation uses it; AMD and kvm_pvm may refuse.
            log::debug!("set_identity_map_address: {e}");
        }
        fd.create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(kvm_err("create the in-kernel PIT"))?;
        for (slot, region) in mem.iter().enumerate() {
            let region_desc = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the
            // VMM keeps alive (and does not unmap) for as long as the VM exists.
            unsafe { fd.set_user_memory_region(region_desc) }
                .map_err(kvm_err("register guest memory"))?;
        }
        Ok(Self { kvm, fd })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The /dev/kvm handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Signals `evt` instead of exiting when the guest writes `datamatch`
    /// (32 bits) to the MMIO address `addr`.
    pub fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &kvm_ioctls::IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| VmError::Kvm {
                what: "register an ioeventfd",
                source,
            })
    }

    /// Routes `evt` to interrupt line `gsi`: a write to the eventfd injects the
    /// interrupt without a trip through the VMM.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Kvm {
                what: "register an irqfd",
                source,
            })
    }
}
