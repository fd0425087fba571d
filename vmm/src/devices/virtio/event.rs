//! The device event thread: waits on every queue's ioeventfd and serves the
//! queue that was notified. vCPU threads never run device code for a queue
//! notification; KVM signals the eventfd and the vCPU goes straight back to
//! the guest.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use crate::devices::bus::lock;

/// One queue's notification source.
pub struct QueueEvent {
    /// The transport owning the queue.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// Queue index.
    pub queue: usize,
    /// The ioeventfd KVM signals on QueueNotify with this index.
    pub event: EventFd,
}

/// Starts the event thread serving `events`.
pub fn spawn(events: Vec<QueueEvent>) -> std::io::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let epoll = Epoll::new()?;
    for (i, e) in events.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            e.event.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    std::thread::Builder::new()
        .name("devices".to_string())
        .spawn(move || {
            let mut ready = vec![EpollEvent::default(); events.len()];
            loop {
                let n = match epoll.wait(-1, &mut ready) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("device event loop: {e}");
                        return;
                    }
                };
                for ev in &ready[..n] {
                    let Some(source) = events.get(ev.data() as usize) else {
                        continue;
                    };
                    // Consume the count; several notifications collapse into one pass.
                    let _ = source.event.read();
                    lock(&source.transport).notify(source.queue);
                }
            }
        })?;
    Ok(())
}
