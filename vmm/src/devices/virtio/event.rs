//! The device event thread: waits on every queue's ioeventfd and on the
//! devices' backend descriptors (taps, sockets), and serves whichever is
//! ready. vCPU threads never run device code for a queue notification; KVM
//! signals the eventfd and the vCPU goes straight back to the guest.
//!
//! The thread is also where a pause must reach the devices: while it is
//! parked no queue is served and no tap, socket or disk is touched. It
//! watches a control eventfd beside the device sources; a pause request
//! written there parks it between two events, never inside a device call.
//! Sources that become ready while it is parked stay ready (eventfd counts
//! and edge-triggered backends alike wait in epoll's ready list), so
//! nothing is lost: they are served after the resume.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use crate::devices::bus::lock;
use crate::pause::{self, Activity, ParkControl, Pausable, Request};
use crate::seccomp::ThreadFilter;

/// Epoll data tag of backend events; queue events have it clear.
const BACKEND: u64 = 1 << 63;
/// Epoll data of the control eventfd: above every queue index (those are
/// small) and without the backend tag.
const CONTROL: u64 = BACKEND - 1;

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

    /// Starts the thread, which installs `filter` before serving anything;
    /// `None` when there is no device to serve.
    pub fn spawn(self, filter: ThreadFilter) -> std::io::Result<Option<EventThread>> {
        if self.transports.is_empty() {
            return Ok(None);
        }
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        self.epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, CONTROL),
        )?;
        let control = Arc::new(ParkControl::new());
        let thread = {
            let control = control.clone();
            let wake = wake.try_clone()?;
            std::thread::Builder::new()
                .name("devices".to_string())
                .spawn(move || {
                    filter.apply_or_exit();
                    self.run(&control, &wake)
                })?
        };
        Ok(Some(EventThread {
            control,
            wake,
            thread: Some(thread),
        }))
    }

    fn run(self, control: &ParkControl, wake: &EventFd) {
        let mut ready = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut ready) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("device event loop: {e}");
                    break;
                }
            };
            let ready = &ready[..n];
            if ready.iter().any(|ev| ev.data() == CONTROL) {
                let _ = wake.read();
                // Parks here on a pause, before serving anything else from
                // this batch; the batch is served after the resume.
                if !control.wait_runnable(|| {}) {
                    break;
                }
            }
            for ev in ready {
                let data = ev.data();
                if data == CONTROL {
                    continue;
                }
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
        control.set_activity(Activity::Exited);
    }
}

/// The running device event thread: how the VMM pauses, resumes and stops it.
pub struct EventThread {
    control: Arc<ParkControl>,
    /// Wakes the thread from epoll to look at a new request.
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventThread {
    fn request(&self, request: Request) {
        self.control.request(request);
        if let Err(e) = self.wake.write(1) {
            log::warn!("device event thread: cannot wake it: {e}");
        }
    }

    /// Ends the thread and joins it if it leaves within `timeout`; a thread
    /// stuck in a backend call is left behind (the process is ending).
    pub fn stop(&mut self, timeout: Duration) {
        self.request(Request::Exit);
        if self.control.wait_for(|a| a == Activity::Exited, timeout) {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            log::warn!("the device event thread did not stop within {timeout:?}; abandoning it");
        }
    }
}

impl Pausable for EventThread {
    fn name(&self) -> String {
        "the device event thread".to_string()
    }

    fn request_pause(&self) {
        self.request(Request::Pause);
    }

    /// Only `Paused` counts: a thread that ended on an epoll error would
    /// not be serving devices either, but it would never resume, and that
    /// must not pass for a pause.
    fn wait_paused(&self, deadline: Instant) -> bool {
        self.control
            .wait_for(|a| a == Activity::Paused, pause::remaining(deadline))
    }

    fn resume(&self) {
        self.request(Request::Run);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::devices::virtio::mmio::tests::bring_up;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::test_utils::{mem, writable};
    use crate::devices::virtio::{DeviceCounters, UsedQueues, VirtioDevice, VirtioInterrupt};
    use crate::pause::pause_all;
    use crate::seccomp::ThreadKind;

    const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

    /// An entropy device that says when it starts serving a queue and then
    /// waits for leave to go on: a device thread busy inside a device.
    struct Blocking {
        rng: Rng,
        entered: mpsc::Sender<()>,
        go_on: Mutex<mpsc::Receiver<()>>,
    }

    impl VirtioDevice for Blocking {
        fn device_type(&self) -> u32 {
            self.rng.device_type()
        }
        fn name(&self) -> &'static str {
            "blocking"
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
            let _ = self.entered.send(());
            let _ = lock(&self.go_on).recv();
            self.rng.process_queue(mem, index, queues)
        }
        fn counters(&self) -> &DeviceCounters {
            self.rng.counters()
        }
    }

    /// `device` brought up by a driver on `vq`, served by a started event
    /// thread; returns the thread, the queue's notifier and the interrupt.
    fn serve(
        m: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        device: Box<dyn VirtioDevice>,
    ) -> (EventThread, EventFd, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut t = MmioTransport::new(
            device,
            m.clone(),
            Arc::new(VirtioInterrupt::new(irq.try_clone().expect("clone"))),
        );
        bring_up(&mut t, vq, 1);
        assert!(t.is_active());
        let transport = Arc::new(Mutex::new(t));
        let notify = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut event_loop = EventLoop::new().expect("epoll");
        event_loop
            .add_device(&transport, vec![notify.try_clone().expect("clone")])
            .expect("add device");
        let thread = event_loop
            .spawn(ThreadFilter::none(ThreadKind::Devices))
            .expect("spawn")
            .expect("a thread");
        (thread, notify, irq)
    }

    /// Offers the device one 32-byte buffer and notifies it, as a driver does.
    fn offer_buffer(vq: &MockSplitQueue<GuestMemoryMmap>, notify: &EventFd, slot: u16) {
        let addr = 0x10_0000 + u64::from(slot) * 0x100;
        vq.add_desc_chains(&[writable(addr, 32)], slot)
            .expect("chain");
        notify.write(1).expect("notify");
    }

    /// Waits up to 5 s for the used ring to reach `idx`.
    fn wait_used(vq: &MockSplitQueue<GuestMemoryMmap>, idx: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while vq.used().idx().load() < idx {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    #[test]
    fn a_paused_event_thread_serves_no_queue_until_it_is_resumed() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let (mut thread, notify, irq) = serve(&m, &vq, Box::new(Rng::new()));
        offer_buffer(&vq, &notify, 0);
        assert!(wait_used(&vq, 1), "a running thread serves the queue");
        irq.read().expect("interrupt");

        pause_all(&[&thread], PAUSE_TIMEOUT).expect("the thread parks");
        offer_buffer(&vq, &notify, 1);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(vq.used().idx().load(), 1, "served while paused");
        assert!(irq.read().is_err(), "interrupted the guest while paused");

        thread.resume();
        assert!(
            wait_used(&vq, 2),
            "the notification made while paused was lost"
        );
        thread.stop(PAUSE_TIMEOUT);
        assert_eq!(thread.control.activity(), Activity::Exited);
    }

    #[test]
    fn a_thread_busy_in_a_device_fails_the_pause_and_goes_on_serving() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let (entered_tx, entered) = mpsc::channel();
        let (go_on, go_on_rx) = mpsc::channel();
        let device = Blocking {
            rng: Rng::new(),
            entered: entered_tx,
            go_on: Mutex::new(go_on_rx),
        };
        let (mut thread, notify, _irq) = serve(&m, &vq, Box::new(device));
        offer_buffer(&vq, &notify, 0);
        entered
            .recv_timeout(Duration::from_secs(5))
            .expect("the device is serving");

        let err = pause_all(&[&thread], Duration::from_millis(100))
            .expect_err("a thread inside a device cannot park");
        assert!(
            err.to_string()
                .contains("device event thread did not pause"),
            "{err}"
        );
        assert_eq!(thread.control.requested(), Request::Run, "resumed");

        go_on.send(()).expect("release");
        assert!(wait_used(&vq, 1));
        // Running, not parked late on the failed pause's request.
        offer_buffer(&vq, &notify, 1);
        entered
            .recv_timeout(Duration::from_secs(5))
            .expect("serving again");
        go_on.send(()).expect("release");
        assert!(wait_used(&vq, 2));
        assert_eq!(thread.control.activity(), Activity::Running);
        thread.stop(PAUSE_TIMEOUT);
    }
}
