//! Virtio devices over the virtio-mmio transport (virtio 1.x, "modern").
//!
//! A device implements [`VirtioDevice`]: its identity, features, config
//! space and what to do with a queue that has new buffers. The transport
//! ([`mmio::MmioTransport`]) owns the queues and the negotiation; the
//! guest's queue notifications arrive on ioeventfds and are served by
//! [`event::spawn`]'s thread, and interrupts leave through an irqfd, so
//! neither costs a trip through a vCPU thread.

pub mod block;
pub mod event;
pub mod iov;
pub mod mem;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

#[cfg(test)]
pub(crate) mod fuzz;

pub use event::BackendEvents;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: the modern interface, required by the MMIO v2 transport.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device type ids (virtio spec 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device (AF_VSOCK).
    pub const VSOCK: u32 = 19;
    /// Memory device (virtio-mem).
    pub const MEM: u32 = 24;
}

/// The queues a device put buffers on the used ring of, so the transport
/// interrupts the guest once for all of them (and only if the driver wants
/// to hear about those queues).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsedQueues(u32);

impl UsedQueues {
    /// No queue was used.
    pub const NONE: Self = Self(0);

    /// Just queue `index`.
    pub fn one(index: usize) -> Self {
        Self::NONE.with(index)
    }

    /// These queues and queue `index`.
    #[must_use]
    pub fn with(self, index: usize) -> Self {
        match u32::try_from(index).ok().and_then(|i| 1u32.checked_shl(i)) {
            Some(bit) => Self(self.0 | bit),
            None => self,
        }
    }

    /// Queue `index` if `used`, else none.
    pub fn when(used: bool, index: usize) -> Self {
        if used {
            Self::one(index)
        } else {
            Self::NONE
        }
    }

    /// Whether queue `index` was used.
    pub fn contains(self, index: usize) -> bool {
        index < 32 && self.0 & (1 << index) != 0
    }

    /// Whether any queue was used.
    pub fn any(self) -> bool {
        self.0 != 0
    }
}

impl std::ops::BitOr for UsedQueues {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl std::ops::BitOrAssign for UsedQueues {
    fn bitor_assign(&mut self, other: Self) {
        self.0 |= other.0;
    }
}

/// Queue `index` of `queues` if the driver has made it ready: the only
/// queues a device may touch.
pub fn ready_queue(queues: &mut [Queue], index: usize) -> Option<&mut Queue> {
    queues.get_mut(index).filter(|q| q.ready())
}

/// Per-device request counters, reported by the control API.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Requests completed.
    pub requests: std::sync::atomic::AtomicU64,
    /// Bytes moved between the guest and the backend.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Requests answered with an error or dropped as malformed.
    pub errors: std::sync::atomic::AtomicU64,
}

impl DeviceCounters {
    /// Counts one request that moved `bytes`.
    pub fn ok(&self, bytes: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts one failed request.
    pub fn error(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as JSON.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
        })
    }
}

/// What a virtio device does; the transport does the rest.
///
/// Every hook that may use buffers gets all of the device's queues (a device
/// may answer on another queue than the one notified, as vsock does) and
/// says which ones it used. While the driver has not finished set-up the
/// queue slice is empty.
pub trait VirtioDevice: Send {
    /// Virtio device type id.
    fn device_type(&self) -> u32;
    /// Short name for logs and the API ("block", "rng").
    fn name(&self) -> &'static str;
    /// Maximum size of each queue (the number of queues is the length).
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered, VIRTIO_F_VERSION_1 included.
    fn features(&self) -> u64;
    /// Reads from the device-specific config space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Serves new buffers on queue `index` (which is ready).
    fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        queues: &mut [Queue],
    ) -> UsedQueues;
    /// The device's counters.
    fn counters(&self) -> &DeviceCounters;

    /// Hands the device its way to have backend file descriptors (a tap, a
    /// socket) watched by the device event thread. Called once, before the
    /// guest runs.
    fn register_backend(&mut self, _events: BackendEvents) -> std::io::Result<()> {
        Ok(())
    }

    /// A backend descriptor registered with `token` is ready (`events` is
    /// the epoll event mask). Backends are registered edge-triggered, so the
    /// device must drain them or remember that it stopped early.
    fn process_backend(
        &mut self,
        _mem: &GuestMemoryMmap,
        _token: u32,
        _events: u32,
        _queues: &mut [Queue],
    ) -> UsedQueues {
        UsedQueues::NONE
    }

    /// The driver's features, accepted with FEATURES_OK (a subset of
    /// [`Self::features`]), for devices whose behaviour depends on them.
    fn set_acked_features(&mut self, _features: u64) {}

    /// The driver has just set DRIVER_OK: work held back while the device
    /// was inactive can go now.
    fn activate(&mut self, _mem: &GuestMemoryMmap, _queues: &mut [Queue]) -> UsedQueues {
        UsedQueues::NONE
    }

    /// The driver reset the device: forget per-session state.
    fn reset(&mut self) {}

    /// The VM was restored from a snapshot with this device active: the
    /// device's backend is new (a new tap, new sockets) and anything it
    /// held for the old one is gone. By default the device is activated
    /// again, as after DRIVER_OK.
    fn restored(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> UsedQueues {
        self.activate(mem, queues)
    }

    /// The device's own guest-visible state for a snapshot (beyond the
    /// transport's registers and queues); `None` for devices that keep none.
    fn save_state(&self) -> Option<serde_json::Value> {
        None
    }
    /// Takes back what [`Self::save_state`] saved, before the guest runs;
    /// the error says why the saved state does not fit this device.
    fn restore_state(&mut self, _state: &serde_json::Value) -> Result<(), String> {
        Err("this device keeps no state of its own, the snapshot has some".to_string())
    }
    /// The virtio-mem device behind this transport, if that is what it is:
    /// how the API asks it for another size.
    fn as_hotplug_memory(&mut self) -> Option<&mut mem::Mem> {
        None
    }
    /// Replaces the instance metadata this device serves; false for the
    /// devices that serve none (only the primary network card does).
    fn update_metadata(&mut self, _doc: &ec2lab_vmm_api::metadata::InstanceMetadata) -> bool {
        false
    }
}

/// Interrupt status bit: a queue has used buffers.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the device's config space changed.
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt: the status register the guest reads and acks, and
/// the irqfd that raises the line.
pub struct VirtioInterrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl VirtioInterrupt {
    /// An interrupt raising `irq` (registered as an irqfd).
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
        }
    }

    /// Flags used buffers and raises the line.
    pub fn signal_used(&self) {
        self.signal(INT_USED_RING);
    }

    /// Flags a config change and raises the line.
    pub fn signal_config(&self) {
        self.signal(INT_CONFIG);
    }

    fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            log::warn!("virtio: cannot raise interrupt: {e}");
        }
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Sets status bits without raising the line (a restored device's
    /// pending interrupt, which the restored interrupt controller already
    /// knows about).
    pub fn raise_status(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
    }

    /// Clears acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// Copies `value`'s bytes at `offset` into `data`, zero past the end: how a
/// device exposes a small little-endian config struct.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// Pops every available chain from `queue`, lets `serve` handle it (it
/// returns how many bytes it wrote into the guest's buffers), and puts it on
/// the used ring. Returns whether any chain was used. A used-ring update that
/// fails (a hostile ring) is counted as an error and otherwise ignored.
pub fn drain_queue<'m>(
    mem: &'m GuestMemoryMmap,
    queue: &mut Queue,
    counters: &DeviceCounters,
    mut serve: impl FnMut(DescriptorChain<&'m GuestMemoryMmap>) -> u32,
) -> bool {
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let written = serve(chain);
        if queue.add_used(mem, head, written).is_err() {
            counters.error();
        }
        used = true;
    }
    used
}

/// Shared helpers for the device unit tests.
#[cfg(test)]
pub mod test_utils {
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// 2 MiB of guest memory; the mock queue's rings live in the first MiB,
    /// buffers go above it.
    pub fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).expect("memory")
    }

    /// A device-readable descriptor.
    pub fn readable(addr: u64, len: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0))
    }

    /// A device-writable descriptor.
    pub fn writable(addr: u64, len: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(
            addr,
            len,
            VRING_DESC_F_WRITE as u16,
            0,
        ))
    }
}
