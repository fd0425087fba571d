//! The virtio devices of one VM as a whole: their MMIO windows and the
//! event thread that serves them. The VMM starts, pauses, resumes and stops
//! the devices through this one value, so the event thread is never
//! forgotten when the vCPUs are (a paused VM whose devices still move
//! packets or write disks is not paused).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::virtio::event::{EventLoop, EventThread};
use super::virtio::mmio::MmioTransport;
use crate::arch::x86_64::acpi::MmioDeviceInfo;
use crate::pause::Pausable;
use crate::seccomp::ThreadFilter;

/// One virtio device: its transport and where the guest finds it.
pub struct VirtioSlot {
    /// The transport (and through it the device).
    pub transport: Arc<Mutex<MmioTransport>>,
    /// MMIO window and interrupt line.
    pub info: MmioDeviceInfo,
}

/// The VM's virtio devices and their event thread.
pub struct DeviceManager {
    slots: Vec<VirtioSlot>,
    /// Gathered while building; taken when the thread starts.
    event_loop: Option<EventLoop>,
    thread: Option<EventThread>,
}

impl DeviceManager {
    /// No devices yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            slots: Vec::new(),
            event_loop: Some(EventLoop::new()?),
            thread: None,
        })
    }

    /// Adds a device whose queue `i` is notified through `queue_events[i]`.
    pub fn add_virtio(
        &mut self,
        transport: Arc<Mutex<MmioTransport>>,
        info: MmioDeviceInfo,
        queue_events: Vec<EventFd>,
    ) -> std::io::Result<()> {
        if let Some(event_loop) = &mut self.event_loop {
            event_loop.add_device(&transport, queue_events)?;
        }
        self.slots.push(VirtioSlot { transport, info });
        Ok(())
    }

    /// The devices, in guest order.
    pub fn virtio(&self) -> &[VirtioSlot] {
        &self.slots
    }

    /// Starts the event thread (none without devices), confined by
    /// `filter`; once only.
    pub fn start(&mut self, filter: ThreadFilter) -> std::io::Result<()> {
        if let Some(event_loop) = self.event_loop.take() {
            self.thread = event_loop.spawn(filter)?;
        }
        Ok(())
    }

    /// Stops the event thread, waiting up to `timeout` for it.
    pub fn stop(&mut self, timeout: Duration) {
        if let Some(thread) = &mut self.thread {
            thread.stop(timeout);
        }
    }
}

/// Pausing the devices is pausing their event thread: it is the only
/// thread that runs device code on its own (vCPUs run it only on their
/// exits, and they are paused first).
impl Pausable for DeviceManager {
    fn name(&self) -> String {
        "the device event thread".to_string()
    }

    fn request_pause(&self) {
        if let Some(thread) = &self.thread {
            thread.request_pause();
        }
    }

    fn wait_paused(&self, deadline: Instant) -> bool {
        self.thread
            .as_ref()
            .is_none_or(|thread| thread.wait_paused(deadline))
    }

    fn resume(&self) {
        if let Some(thread) = &self.thread {
            thread.resume();
        }
    }
}
