//! A stand-in for a guest's virtio driver: one device behind its MMIO
//! transport and the device event thread, split rings in guest memory, one
//! notify eventfd per queue (what KVM's ioeventfd would signal) and the
//! irqfd the device raises. Block and net rows drive their devices through
//! this and nothing else.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ec2lab_vmm::devices::virtio::event::EventLoop;
use ec2lab_vmm::devices::virtio::mmio::MmioTransport;
use ec2lab_vmm::devices::virtio::{VirtioDevice, VirtioInterrupt};
use ec2lab_vmm::devices::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Size of every queue the rig sets up (the devices' maximum).
pub const QUEUE_SIZE: u16 = 256;
pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Queue `q`'s rings sit at `RINGS + q * RING_STRIDE`: descriptor table,
/// then the available ring 64 KiB on, then the used ring 64 KiB further.
const RINGS: u64 = 0x1_0000;
const RING_STRIDE: u64 = 0x3_0000;
const MAX_QUEUES: u64 = 2;
/// First guest address the rings leave free for headers and buffers.
pub const FREE: u64 = RINGS + MAX_QUEUES * RING_STRIDE;
/// How long the driver waits for an interrupt before calling the device stalled.
const STALL: Duration = Duration::from_secs(5);

fn desc_table(q: usize) -> u64 {
    RINGS + q as u64 * RING_STRIDE
}

fn avail_ring(q: usize) -> u64 {
    desc_table(q) + 0x1_0000
}

fn used_ring(q: usize) -> u64 {
    desc_table(q) + 0x2_0000
}

/// Device event threads ("devices") of this process, by thread id.
fn device_threads() -> HashSet<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|comm| comm.trim_end() == "devices")
                })
                .filter_map(|t| t.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time of thread `tid` of this process (its per-thread CPU clock).
fn thread_cpu_time(tid: i32) -> Option<Duration> {
    // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED) from the kernel's
    // posix-timers.h: the clock id of another thread's CPU time.
    let clock = ((!tid) << 3) | 6;
    // SAFETY: all zeroes is a valid timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

fn write_reg(t: &Arc<Mutex<MmioTransport>>, offset: u64, value: u32) {
    t.lock()
        .expect("transport")
        .write(offset, &value.to_le_bytes());
}

pub struct Rig {
    pub mem: GuestMemoryMmap,
    transport: Arc<Mutex<MmioTransport>>,
    notify: Vec<EventFd>,
    irq: EventFd,
    /// The event thread serving this device, if it could be told apart.
    device_tid: Option<i32>,
    next_avail: Vec<u16>,
}

impl Rig {
    /// `device` with every queue at the rig's rings and DRIVER_OK set, as
    /// the Linux driver brings it up (VERSION_1 is the only feature taken),
    /// served by its own event thread.
    pub fn new(device: Box<dyn VirtioDevice>, mem_size: usize) -> Rig {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size)]).expect("guest memory");
        let irq = EventFd::new(0).expect("irq eventfd");
        let queues = device.queue_max_sizes().len();
        assert!(
            queues as u64 <= MAX_QUEUES,
            "the rig has rings for {MAX_QUEUES} queues"
        );
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            mem.clone(),
            Arc::new(VirtioInterrupt::new(irq.try_clone().expect("clone"))),
        )));
        write_reg(&transport, 0x70, 3);
        write_reg(&transport, 0x24, 1);
        write_reg(&transport, 0x20, 1);
        write_reg(&transport, 0x70, 0xb);
        for q in 0..queues {
            write_reg(&transport, 0x30, q as u32);
            write_reg(&transport, 0x38, u32::from(QUEUE_SIZE));
            write_reg(&transport, 0x80, desc_table(q) as u32);
            write_reg(&transport, 0x90, avail_ring(q) as u32);
            write_reg(&transport, 0xa0, used_ring(q) as u32);
            write_reg(&transport, 0x44, 1);
        }
        write_reg(&transport, 0x70, 0xf);
        let notify: Vec<EventFd> = (0..queues)
            .map(|_| EventFd::new(0).expect("notify eventfd"))
            .collect();
        let mut event_loop = EventLoop::new().expect("epoll");
        event_loop
            .add_device(
                &transport,
                notify
                    .iter()
                    .map(|e| e.try_clone().expect("clone"))
                    .collect(),
            )
            .expect("queue events");
        let before = device_threads();
        event_loop
            .spawn(ec2lab_vmm::seccomp::ThreadFilter::none(
                ec2lab_vmm::seccomp::ThreadKind::Devices,
            ))
            .expect("event thread");
        // The new thread names itself as it starts; give it a moment.
        let mut device_tid = None;
        for _ in 0..100 {
            let new: Vec<i32> = device_threads().difference(&before).copied().collect();
            if let [tid] = new[..] {
                device_tid = Some(tid);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Rig {
            mem,
            transport,
            notify,
            irq,
            device_tid,
            next_avail: vec![0; queues],
        }
    }

    /// Writes descriptor `index` of queue `q` (one 16-byte store, as a
    /// driver fills a slot).
    pub fn set_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        let at = desc_table(q) + u64::from(index) * 16;
        self.mem.write_obj(d, GuestAddress(at)).expect("descriptor");
    }

    /// Puts chain `head` on queue `q`'s available ring, not yet visible.
    pub fn push_avail(&mut self, q: usize, head: u16) {
        let slot = self.next_avail[q] % QUEUE_SIZE;
        self.mem
            .write_obj(head, GuestAddress(avail_ring(q) + 4 + u64::from(slot) * 2))
            .expect("avail");
        self.next_avail[q] = self.next_avail[q].wrapping_add(1);
    }

    /// Publishes what was pushed on queue `q` and notifies the device.
    pub fn kick(&self, q: usize) {
        std::sync::atomic::fence(Ordering::Release);
        self.mem
            .write_obj(self.next_avail[q], GuestAddress(avail_ring(q) + 2))
            .expect("avail idx");
        self.notify[q].write(1).expect("notify");
    }

    /// The available index the driver has reached on queue `q`.
    pub fn next_avail(&self, q: usize) -> u16 {
        self.next_avail[q]
    }

    /// Waits for the device's interrupt; panics if none comes (the device
    /// stalled).
    pub fn wait_irq(&self) {
        assert!(
            self.wait_irq_for(STALL),
            "no interrupt from the device within {STALL:?}: stalled"
        );
    }

    /// Waits up to `timeout` for the device's interrupt; false if none came.
    pub fn wait_irq_for(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.irq.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: poll reads and writes one pollfd we own.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
            match n {
                1 => break,
                0 => return false,
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                _ => panic!("poll on the irqfd: {}", std::io::Error::last_os_error()),
            }
        }
        self.irq.read().expect("irq");
        true
    }

    /// Queue `q`'s used index.
    pub fn used_idx(&self, q: usize) -> u16 {
        let idx = self
            .mem
            .read_obj(GuestAddress(used_ring(q) + 2))
            .expect("used idx");
        std::sync::atomic::fence(Ordering::Acquire);
        idx
    }

    /// The used element for used index `at` of queue `q`: (head, length written).
    pub fn used_elem(&self, q: usize, at: u16) -> (u16, u32) {
        let addr = used_ring(q) + 4 + u64::from(at % QUEUE_SIZE) * 8;
        let id: u32 = self.mem.read_obj(GuestAddress(addr)).expect("used id");
        let len: u32 = self.mem.read_obj(GuestAddress(addr + 4)).expect("used len");
        (id as u16, len)
    }

    /// CPU time the device's event thread has used so far.
    pub fn device_cpu(&self) -> Option<Duration> {
        self.device_tid.and_then(thread_cpu_time)
    }

    /// The device's (requests, errors) counters.
    pub fn counters(&self) -> (u64, u64) {
        let t = self.transport.lock().expect("transport");
        let c = t.device().counters();
        (
            c.requests.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
        )
    }
}

/// CPU time (user + system) of the whole process so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
