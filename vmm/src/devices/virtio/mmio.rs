//! The virtio-mmio transport, version 2 (virtio spec 4.2.2): registers,
//! feature negotiation, queue set-up, status and reset.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{BackendEvents, UsedQueues, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

/// Size of one device's register window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of QueueNotify, where ioeventfds are attached.
pub const QUEUE_NOTIFY: u64 = 0x50;

const MAGIC_VALUE: u64 = 0x00;
const VERSION: u64 = 0x04;
const DEVICE_ID: u64 = 0x08;
const VENDOR_ID: u64 = 0x0c;
const DEVICE_FEATURES: u64 = 0x10;
const DEVICE_FEATURES_SEL: u64 = 0x14;
const DRIVER_FEATURES: u64 = 0x20;
const DRIVER_FEATURES_SEL: u64 = 0x24;
const QUEUE_SEL: u64 = 0x30;
const QUEUE_NUM_MAX: u64 = 0x34;
const QUEUE_NUM: u64 = 0x38;
const QUEUE_READY: u64 = 0x44;
const INTERRUPT_STATUS: u64 = 0x60;
const INTERRUPT_ACK: u64 = 0x64;
const STATUS: u64 = 0x70;
const QUEUE_DESC_LOW: u64 = 0x80;
const QUEUE_DESC_HIGH: u64 = 0x84;
const QUEUE_AVAIL_LOW: u64 = 0x90;
const QUEUE_AVAIL_HIGH: u64 = 0x94;
const QUEUE_USED_LOW: u64 = 0xa0;
const QUEUE_USED_HIGH: u64 = 0xa4;
const CONFIG_GENERATION: u64 = 0xfc;
const CONFIG: u64 = 0x100;

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;
/// Our vendor id ("EC2L" would not fit the spirit; QEMU uses 0x554d4551).
const VENDOR: u32 = 0x4543_324c;

/// Device status bits (virtio spec 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// One queue as a snapshot saves it (virtio-queue's `QueueState`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<&QueueSnapshot> for QueueState {
    fn from(q: &QueueSnapshot) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// The transport's registers and queues as a snapshot saves them. The
/// device behind it keeps no guest-visible state of its own beyond what
/// it derives from these (features, activation), except what it resets on
/// restore as a real device would after a link loss (see
/// [`VirtioDevice::restored`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSnapshot {
    /// The device type, which must match on restore.
    pub device_type: u32,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    queues: Vec<QueueSnapshot>,
    /// The config generation (absent from snapshots written before it
    /// counted).
    #[serde(default)]
    config_generation: u32,
    /// State of the device's own that the guest sees (what a virtio-mem
    /// device has plugged); absent for devices that keep none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_state: Option<serde_json::Value>,
}

/// A saved transport that does not fit the device or the guest's memory.
#[derive(Debug, thiserror::Error)]
pub enum TransportRestoreError {
    /// Another kind of device, or another number of queues.
    #[error("the snapshot has a virtio device of type {saved} with {saved_queues} queue(s) where this VM has type {device} with {queues}")]
    Mismatch {
        /// Saved type.
        saved: u32,
        /// Saved queue count.
        saved_queues: usize,
        /// This VM's type.
        device: u32,
        /// This VM's queue count.
        queues: usize,
    },
    /// The device's own saved state does not fit it.
    #[error("virtio-{device}: {reason}")]
    DeviceState {
        /// The device's name.
        device: &'static str,
        /// Why.
        reason: String,
    },
    /// A queue's saved state is out of range.
    #[error("virtio-{device} queue {index}: {reason}")]
    Queue {
        /// The device's name.
        device: &'static str,
        /// The queue.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// One virtio device behind its MMIO register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
}

impl MmioTransport {
    /// Wraps `device`; queues are sized by the device's maxima.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .filter_map(|max| Queue::new(*max).ok())
            .collect();
        Self {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
        }
    }

    /// The device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device, to change what it serves (instance metadata).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Whether the driver has finished set-up.
    pub fn is_active(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// The transport's state for a snapshot; the device event thread must be
    /// parked (the queues' indices move only there and on vCPU exits).
    pub fn snapshot(&self) -> TransportSnapshot {
        TransportSnapshot {
            device_type: self.device.device_type(),
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            status: self.status,
            interrupt_status: self.interrupt.status(),
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
            config_generation: self.config_generation,
            device_state: self.device.save_state(),
        }
    }

    /// Takes the state a snapshot saved, before the guest runs: the
    /// registers and queues, then the device learns its features again and
    /// is told it was restored (a network card sets its tap's offloads, the
    /// vsock device tells the driver its connections are gone). Every ready
    /// queue is served once, in case the guest had queued buffers just
    /// before the snapshot.
    pub fn restore(&mut self, saved: &TransportSnapshot) -> Result<(), TransportRestoreError> {
        let name = self.device.name();
        if saved.device_type != self.device.device_type() || saved.queues.len() != self.queues.len()
        {
            return Err(TransportRestoreError::Mismatch {
                saved: saved.device_type,
                saved_queues: saved.queues.len(),
                device: self.device.device_type(),
                queues: self.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(saved.queues.len());
        for (index, (q, current)) in saved.queues.iter().zip(&self.queues).enumerate() {
            let queue_err = |reason: String| TransportRestoreError::Queue {
                device: name,
                index,
                reason,
            };
            if q.max_size != current.max_size() {
                return Err(queue_err(format!(
                    "saved with {} entries at most, this device has {}",
                    q.max_size,
                    current.max_size()
                )));
            }
            let queue =
                Queue::try_from(QueueState::from(q)).map_err(|e| queue_err(e.to_string()))?;
            if queue.ready() && saved.status & status::DRIVER_OK != 0 && !queue.is_valid(&self.mem)
            {
                return Err(queue_err("its rings are outside guest memory".to_string()));
            }
            queues.push(queue);
        }
        if let Some(state) = &saved.device_state {
            self.device.restore_state(state).map_err(|reason| {
                TransportRestoreError::DeviceState {
                    device: name,
                    reason,
                }
            })?;
        }
        self.queues = queues;
        self.config_generation = saved.config_generation;
        self.queue_select = saved.queue_select;
        self.device_features_select = saved.device_features_select;
        self.driver_features_select = saved.driver_features_select;
        self.driver_features = saved.driver_features;
        self.status = saved.status;
        self.interrupt.ack(u32::MAX);
        self.interrupt.raise_status(saved.interrupt_status);
        if self.status & status::FEATURES_OK != 0 {
            self.device.set_acked_features(self.driver_features);
        }
        if self.is_active() {
            let mut used = self.device.restored(&self.mem, &mut self.queues);
            for index in 0..self.queues.len() {
                if self.queues[index].ready() {
                    used |= self
                        .device
                        .process_queue(&self.mem, index, &mut self.queues);
                }
            }
            self.signal(used);
        }
        Ok(())
    }

    /// The device changed its config space (a virtio-mem device was asked
    /// for another size): a new generation, so a driver reading a field in
    /// two halves notices, and a config-change interrupt once the driver
    /// is up.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.is_active() {
            self.interrupt.signal_config();
        }
    }

    /// Serves queue `index` after a notification, and interrupts the guest
    /// if it used buffers and the driver wants to hear about it.
    pub fn notify(&mut self, index: usize) {
        if !self.is_active() || !self.queues.get(index).is_some_and(|q| q.ready()) {
            return;
        }
        let used = self
            .device
            .process_queue(&self.mem, index, &mut self.queues);
        self.signal(used);
    }

    /// Lets the device register its backend descriptors with the event loop.
    pub fn register_backend(&mut self, events: BackendEvents) -> std::io::Result<()> {
        self.device.register_backend(events)
    }

    /// Hands a backend event to the device; it sees no queues while the
    /// driver has not finished set-up.
    pub fn backend_event(&mut self, token: u32, events: u32) {
        let queues: &mut [Queue] = if self.is_active() {
            &mut self.queues
        } else {
            &mut []
        };
        let used = self
            .device
            .process_backend(&self.mem, token, events, queues);
        self.signal(used);
    }

    /// Interrupts the guest if any of the `used` queues wants it.
    fn signal(&mut self, used: UsedQueues) {
        if !used.any() {
            return;
        }
        let mut wanted = false;
        for (i, queue) in self.queues.iter_mut().enumerate() {
            if used.contains(i) {
                // Evaluate every used queue: with EVENT_IDX the check
                // also records what was signalled.
                wanted |= queue.needs_notification(&self.mem).unwrap_or(true);
            }
        }
        if wanted {
            self.interrupt.signal_used();
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let sel = self.queue_select as usize;
        // Queue registers may only change before DRIVER_OK.
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(sel)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
        self.device.reset();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        if value & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            // Accept only features we offered, and only the modern interface.
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                value &= !status::FEATURES_OK;
            } else {
                self.device.set_acked_features(self.driver_features);
            }
        }
        if value & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0 {
            let mem = &self.mem;
            let invalid = self.queues.iter().any(|q| q.ready() && !q.is_valid(mem));
            if invalid || value & status::FEATURES_OK == 0 {
                // Debug level: a guest could repeat this at will.
                log::debug!(
                    "virtio-{}: driver set DRIVER_OK with an invalid queue set-up",
                    self.device.name()
                );
                value |= status::DEVICE_NEEDS_RESET;
            }
        }
        let activated = value & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0;
        self.status = value;
        if activated && self.is_active() {
            let used = self.device.activate(&self.mem, &mut self.queues);
            self.signal(used);
        }
    }

    fn read_u32(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => 2,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_u32(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_select = value,
            DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK == 0 {
                    match self.driver_features_select {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(value)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                        }
                        _ => {}
                    }
                }
            }
            DRIVER_FEATURES_SEL => self.driver_features_select = value,
            QUEUE_SEL => self.queue_select = value,
            QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value as u16);
                }
            }
            QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            QUEUE_NOTIFY => self.notify(value as usize),
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => self.set_status(value),
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_AVAIL_LOW | QUEUE_AVAIL_HIGH
            | QUEUE_USED_LOW | QUEUE_USED_HIGH => {
                let Some(q) = self.selected_queue() else {
                    return;
                };
                let (low, high) = if offset.is_multiple_of(8) {
                    (Some(value), None)
                } else {
                    (None, Some(value))
                };
                match offset & !0x7 {
                    QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                    QUEUE_AVAIL_LOW => q.set_avail_ring_address(low, high),
                    _ => q.set_used_ring_address(low, high),
                }
            }
            _ => log::debug!(
                "virtio-{}: write to read-only or unknown register {offset:#x}",
                self.device.name()
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_u32(offset).to_le_bytes());
        } else {
            data.fill(0);
            log::debug!(
                "virtio-{}: non-32-bit register read at {offset:#x}",
                self.device.name()
            );
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            // No device here has writable config.
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset.is_multiple_of(4) => {
                self.write_u32(offset, u32::from_le_bytes(word))
            }
            _ => log::debug!(
                "virtio-{}: non-32-bit register write at {offset:#x}",
                self.device.name()
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::devices::virtio::device_type;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::test_utils::{mem, writable};

    fn transport(m: &GuestMemoryMmap) -> (MmioTransport, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let t = MmioTransport::new(
            Box::new(Rng::new()),
            m.clone(),
            Arc::new(VirtioInterrupt::new(irq.try_clone().expect("clone"))),
        );
        (t, irq)
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// Drives the Linux driver's initialisation sequence against the mock queue.
    pub(crate) fn bring_up(
        t: &mut MmioTransport,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        features_hi: u32,
    ) {
        write(t, STATUS, status::ACKNOWLEDGE);
        write(t, STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write(t, DRIVER_FEATURES_SEL, 1);
        write(t, DRIVER_FEATURES, features_hi);
        write(
            t,
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        write(t, QUEUE_SEL, 0);
        write(t, QUEUE_NUM, 16);
        for (low, addr) in [
            (QUEUE_DESC_LOW, vq.desc_table_addr()),
            (QUEUE_AVAIL_LOW, vq.avail_addr()),
            (QUEUE_USED_LOW, vq.used_addr()),
        ] {
            write(t, low, addr.0 as u32);
            write(t, low + 4, (addr.0 >> 32) as u32);
        }
        write(t, QUEUE_READY, 1);
        let s = read(t, STATUS);
        write(t, STATUS, s | status::DRIVER_OK);
    }

    #[test]
    fn a_restored_transport_serves_the_queue_where_the_saved_one_left_off() {
        let m = mem();
        let (mut t, _) = transport(&m);
        let vq = MockSplitQueue::new(&m, 16);
        bring_up(&mut t, &vq, 1);
        vq.add_desc_chains(&[writable(0x10_0000, 32)], 0)
            .expect("chain");
        write(&mut t, QUEUE_NOTIFY, 0);
        assert_eq!(vq.used().idx().load(), 1);
        let saved = t.snapshot();
        let json = serde_json::to_string(&saved).expect("serialise");
        let back: TransportSnapshot = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, saved);

        // A new transport (a new VMM process) over the same memory.
        let (mut restored, irq) = transport(&m);
        restored.restore(&back).expect("restore");
        assert!(restored.is_active());
        assert_eq!(restored.snapshot(), saved);
        // The next chain goes on the used ring after the first one.
        vq.add_desc_chains(&[writable(0x10_1000, 32)], 1)
            .expect("chain");
        write(&mut restored, QUEUE_NOTIFY, 0);
        assert_eq!(vq.used().idx().load(), 2);
        assert!(irq.read().expect("interrupt") >= 1);
    }

    #[test]
    fn a_saved_transport_for_another_device_or_memory_is_refused() {
        let m = mem();
        let (mut t, _) = transport(&m);
        let vq = MockSplitQueue::new(&m, 16);
        bring_up(&mut t, &vq, 1);
        let saved = t.snapshot();

        let mut other_type = saved.clone();
        other_type.device_type = device_type::BLOCK;
        let (mut fresh, _) = transport(&m);
        let err = fresh.restore(&other_type).expect_err("another device type");
        assert!(err.to_string().contains("type 2"), "{err}");

        let mut outside = saved.clone();
        outside.queues[0].used_ring = 0x4000_0000;
        let err = fresh.restore(&outside).expect_err("rings outside memory");
        assert!(err.to_string().contains("outside guest memory"), "{err}");

        let mut oversized = saved;
        oversized.queues[0].size = 1024;
        assert!(
            fresh.restore(&oversized).is_err(),
            "queue larger than its maximum"
        );
        assert!(
            !fresh.is_active(),
            "a refused restore leaves the device as it was"
        );
    }

    #[test]
    fn identity_registers_follow_the_spec() {
        let m = mem();
        let (mut t, _) = transport(&m);
        assert_eq!(read(&mut t, MAGIC_VALUE), MAGIC);
        assert_eq!(read(&mut t, VERSION), 2);
        assert_eq!(read(&mut t, DEVICE_ID), 4);
        write(&mut t, DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&mut t, DEVICE_FEATURES), 1, "VIRTIO_F_VERSION_1");
        assert_eq!(read(&mut t, QUEUE_NUM_MAX), 256);
    }

    #[test]
    fn notify_serves_the_queue_and_interrupts() {
        let m = mem();
        let (mut t, irq) = transport(&m);
        let vq = MockSplitQueue::new(&m, 16);
        bring_up(&mut t, &vq, 1);
        assert!(t.is_active(), "status {:#x}", read(&mut t, STATUS));
        let desc = writable(0x10_0000, 32);
        vq.add_desc_chains(&[desc], 0).expect("chain");
        write(&mut t, QUEUE_NOTIFY, 0);
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(irq.read().expect("interrupt"), 1);
        assert_eq!(read(&mut t, INTERRUPT_STATUS), 1);
        write(&mut t, INTERRUPT_ACK, 1);
        assert_eq!(read(&mut t, INTERRUPT_STATUS), 0);
    }

    /// An rng that reports the features it was told were accepted.
    struct AckRecorder {
        rng: Rng,
        acked: Arc<std::sync::atomic::AtomicU64>,
    }

    impl VirtioDevice for AckRecorder {
        fn device_type(&self) -> u32 {
            self.rng.device_type()
        }
        fn name(&self) -> &'static str {
            "ack-recorder"
        }
        fn queue_max_sizes(&self) -> &[u16] {
            self.rng.queue_max_sizes()
        }
        fn features(&self) -> u64 {
            self.rng.features()
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            self.rng.read_config(offset, data)
        }
        fn process_queue(
            &mut self,
            mem: &GuestMemoryMmap,
            index: usize,
            queues: &mut [Queue],
        ) -> UsedQueues {
            self.rng.process_queue(mem, index, queues)
        }
        fn counters(&self) -> &crate::devices::virtio::DeviceCounters {
            self.rng.counters()
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked
                .store(features, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn accepted_features_are_handed_to_the_device() {
        let m = mem();
        let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let device = AckRecorder {
            rng: Rng::new(),
            acked: acked.clone(),
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut t = MmioTransport::new(
            Box::new(device),
            m.clone(),
            Arc::new(VirtioInterrupt::new(irq)),
        );
        let vq = MockSplitQueue::new(&m, 16);
        bring_up(&mut t, &vq, 1);
        assert!(t.is_active());
        assert_eq!(
            acked.load(std::sync::atomic::Ordering::SeqCst),
            VIRTIO_F_VERSION_1
        );
    }

    #[test]
    fn legacy_drivers_without_version_1_are_refused() {
        let m = mem();
        let (mut t, _) = transport(&m);
        let vq = MockSplitQueue::new(&m, 16);
        bring_up(&mut t, &vq, 0);
        assert_eq!(read(&mut t, STATUS) & status::FEATURES_OK, 0);
        assert!(!t.is_active());
    }

    #[test]
    fn invalid_queue_set_up_needs_reset_and_reset_recovers() {
        let m = mem();
        let (mut t, _) = transport(&m);
        write(&mut t, STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write(&mut t, DRIVER_FEATURES_SEL, 1);
        write(&mut t, DRIVER_FEATURES, 1);
        write(
            &mut t,
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        write(&mut t, QUEUE_NUM, 16);
        // Rings outside guest memory.
        write(&mut t, QUEUE_DESC_HIGH, 0xffff);
        write(&mut t, QUEUE_READY, 1);
        write(&mut t, STATUS, 0xf);
        assert_ne!(read(&mut t, STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert!(!t.is_active());
        write(&mut t, QUEUE_NOTIFY, 0); // ignored, no panic
        write(&mut t, STATUS, 0);
        assert_eq!(read(&mut t, STATUS), 0);
        assert_eq!(read(&mut t, QUEUE_READY), 0);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let m = mem();
        let (mut t, _) = transport(&m);
        let mut b = [0xffu8; 2];
        t.read(MAGIC_VALUE, &mut b);
        t.write(STATUS, &[1, 2]);
        write(&mut t, QUEUE_SEL, 7);
        write(&mut t, QUEUE_NUM, 16);
        assert_eq!(read(&mut t, QUEUE_NUM_MAX), 0, "no queue 7");
        write(&mut t, 0x2, 5);
        assert_eq!(read(&mut t, STATUS), 0);
    }
}
