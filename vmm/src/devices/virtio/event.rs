//! The device event thread: waits on every queue's ioeventfd and on the
//! devices' backend descriptors (taps, sockets), and serves whichever is
//! ready. vCPU threads never run device code for a queue notification; KVM
//! signals the eventfd and the vCPU goes straight back to the guest.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use crate::devices::bus::lock;

/// Epoll data tag of backend events; queue events have it clear.
const BACKEND: u64 = 1 << 63;

/// One queue's notification source.
struct QueueEvent {
    transport: Arc<Mutex<MmioTransport>>,
    queue: usize,
    event: EventFd,
}

/// What a device uses to have its backend descriptors watched. Every
/// descriptor is registered edge-triggered with a device-chosen token that
/// comes back in [`super::VirtioDevice::process_backend`].
pub struct BackendEvents {
    epoll: Arc<Epoll>,
    /// Index of the device's transport in the loop, pre-shifted.
    tag: u64,
}

impl BackendEvents {
    fn event(&self, token: u32, events: EventSet) -> EpollEvent {
        EpollEvent::new(
            events | EventSet::EDGE_TRIGGERED,
            self.tag | u64::from(token),
        )
    }

    /// Starts watching `fd` for `events`.
    pub fn add(&self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, self.event(token, events))
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, self.event(token, events))
    }

    /// Stops watching `fd` (closing it does the same).
    pub fn remove(&self, fd: RawFd) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// The sources of the device event thread, gathered while the VM is built.
pub struct EventLoop {
    epoll: Arc<Epoll>,
    queues: Vec<QueueEvent>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl EventLoop {
    /// An empty loop.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            epoll: Arc::new(Epoll::new()?),
            queues: Vec::new(),
            transports: Vec::new(),
        })
    }

    /// Serves `transport`'s queue `queue` whenever `event` (its ioeventfd)
    /// fires, and lets the device register backend descriptors.
    pub fn add_device(
        &mut self,
        transport: &Arc<Mutex<MmioTransport>>,
        queue_events: Vec<EventFd>,
    ) -> std::io::Result<()> {
        let tag = BACKEND | (self.transports.len() as u64) << 32;
        self.transports.push(transport.clone());
        for (queue, event) in queue_events.into_iter().enumerate() {
            self.epoll.ctl(
                ControlOperation::Add,
                event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, self.queues.len() as u64),
            )?;
            self.queues.push(QueueEvent {
                transport: transport.clone(),
                queue,
                event,
            });
        }
        let events = BackendEvents {
            epoll: self.epoll.clone(),
            tag,
        };
        lock(transport).register_backend(events)
    }

    /// Starts the thread.
    pub fn spawn(self) -> std::io::Result<()> {
        if self.transports.is_empty() {
            return Ok(());
        }
        std::thread::Builder::new()
            .name("devices".to_string())
            .spawn(move || self.run())?;
        Ok(())
    }

    fn run(self) {
        let mut ready = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut ready) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("device event loop: {e}");
                    return;
                }
            };
            for ev in &ready[..n] {
                let data = ev.data();
                if data & BACKEND != 0 {
                    let device = ((data & !BACKEND) >> 32) as usize;
                    if let Some(transport) = self.transports.get(device) {
                        lock(transport).backend_event(data as u32, ev.events());
                    }
                } else if let Some(source) = self.queues.get(data as usize) {
                    // Consume the count; several notifications collapse into one pass.
                    let _ = source.event.read();
                    lock(&source.transport).notify(source.queue);
                }
            }
        }
    }
}
