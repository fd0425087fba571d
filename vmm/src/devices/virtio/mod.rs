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
pub mod mmio;
pub mod rng;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: the modern interface, required by the MMIO v2 transport.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device type ids (virtio spec 5).
pub mod device_type {
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
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
    /// Serves new buffers on queue `index`; returns whether any were used.
    fn process_queue(&mut self, mem: &GuestMemoryMmap, index: usize, queue: &mut Queue) -> bool;
    /// The device's counters.
    fn counters(&self) -> &DeviceCounters;
}

/// Interrupt status bit: a queue has used buffers.
pub const INT_USED_RING: u32 = 1;

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
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            log::warn!("virtio: cannot raise interrupt: {e}");
        }
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
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
