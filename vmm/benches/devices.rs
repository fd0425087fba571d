//! Device-path benchmark (`scripts/bench devices`): drives virtio-blk the way
//! a guest driver does — descriptor chains in guest memory, a notification
//! on the queue's ioeventfd, completion awaited on the irqfd — and compares
//! the rate with the host doing the same I/O directly on the same file.
//! No KVM is involved: the eventfds are the ones KVM would signal and watch.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ec2lab_vmm::devices::virtio::block::Block;
use ec2lab_vmm::devices::virtio::event::EventLoop;
use ec2lab_vmm::devices::virtio::mmio::MmioTransport;
use ec2lab_vmm::devices::virtio::VirtioInterrupt;
use ec2lab_vmm::devices::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 256;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;
const HEADERS: u64 = 0x4_0000;
const STATUS: u64 = 0x5_0000;
const DATA: u64 = 0x100_0000;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
/// Requests in flight per notification (the guest driver's queue depth).
const DEPTH: u16 = 32;
const DISK_SIZE: u64 = 1 << 30;
const RUN_TIME: Duration = Duration::from_secs(3);

struct Rig {
    mem: GuestMemoryMmap,
    // Held for the rig's lifetime; the event thread has its own reference.
    _transport: Arc<Mutex<MmioTransport>>,
    notify: EventFd,
    irq: EventFd,
    next_avail: u16,
}

fn write_reg(t: &Arc<Mutex<MmioTransport>>, offset: u64, value: u32) {
    t.lock()
        .expect("transport")
        .write(offset, &value.to_le_bytes());
}

impl Rig {
    fn new(path: &std::path::Path, mem_size: usize) -> Rig {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size)]).expect("guest memory");
        let irq = EventFd::new(0).expect("irq eventfd");
        let device = Block::open(path, false).expect("open disk");
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            Box::new(device),
            mem.clone(),
            Arc::new(VirtioInterrupt::new(irq.try_clone().expect("clone"))),
        )));
        // The Linux driver's bring-up: VERSION_1 only, queue 0 at fixed rings.
        write_reg(&transport, 0x70, 3);
        write_reg(&transport, 0x24, 1);
        write_reg(&transport, 0x20, 1);
        write_reg(&transport, 0x70, 0xb);
        write_reg(&transport, 0x30, 0);
        write_reg(&transport, 0x38, u32::from(QUEUE_SIZE));
        write_reg(&transport, 0x80, DESC as u32);
        write_reg(&transport, 0x90, AVAIL as u32);
        write_reg(&transport, 0xa0, USED as u32);
        write_reg(&transport, 0x44, 1);
        write_reg(&transport, 0x70, 0xf);
        let notify = EventFd::new(0).expect("notify eventfd");
        let mut event_loop = EventLoop::new().expect("epoll");
        event_loop
            .add_device(&transport, vec![notify.try_clone().expect("clone")])
            .expect("queue event");
        event_loop.spawn().expect("event thread");
        Rig {
            mem,
            _transport: transport,
            notify,
            irq,
            next_avail: 0,
        }
    }

    /// Submits `DEPTH` requests of `len` bytes at the given offsets and waits
    /// for all of them; returns false if any failed.
    fn batch(&mut self, write: bool, len: u32, offsets: &[u64]) -> bool {
        for (i, offset) in offsets.iter().enumerate() {
            let slot = (self.next_avail.wrapping_add(i as u16)) % QUEUE_SIZE;
            let head = (i as u16) * 3;
            let hdr = HEADERS + u64::from(head) * 16;
            let header: [u64; 2] = [u64::from(write), offset / 512];
            self.mem
                .write_obj(header, GuestAddress(hdr))
                .expect("header");
            let data = DATA + i as u64 * u64::from(len);
            let data_flags = if write {
                VRING_DESC_F_NEXT
            } else {
                VRING_DESC_F_NEXT | VRING_DESC_F_WRITE
            };
            let descs = [
                (hdr, 16u32, VRING_DESC_F_NEXT, head + 1),
                (data, len, data_flags, head + 2),
                (STATUS + u64::from(head), 1, VRING_DESC_F_WRITE, 0),
            ];
            for (j, (addr, l, flags, next)) in descs.iter().enumerate() {
                let at = DESC + (u64::from(head) + j as u64) * 16;
                self.mem.write_obj(*addr, GuestAddress(at)).expect("desc");
                self.mem.write_obj(*l, GuestAddress(at + 8)).expect("desc");
                self.mem
                    .write_obj(*flags, GuestAddress(at + 12))
                    .expect("desc");
                self.mem
                    .write_obj(*next, GuestAddress(at + 14))
                    .expect("desc");
            }
            self.mem
                .write_obj(head, GuestAddress(AVAIL + 4 + u64::from(slot) * 2))
                .expect("avail");
        }
        self.next_avail = self.next_avail.wrapping_add(offsets.len() as u16);
        self.mem
            .write_obj(self.next_avail, GuestAddress(AVAIL + 2))
            .expect("avail idx");
        self.notify.write(1).expect("notify");
        // Completion: wait on the irqfd until every request is on the used ring.
        loop {
            self.irq.read().expect("irq");
            let used: u16 = self.mem.read_obj(GuestAddress(USED + 2)).expect("used idx");
            if used == self.next_avail {
                break;
            }
        }
        (0..offsets.len() as u64)
            .all(|i| self.mem.read_obj::<u8>(GuestAddress(STATUS + i * 3)).ok() == Some(0))
    }
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Pattern {
    name: &'static str,
    write: bool,
    len: u32,
    random: bool,
}

fn offsets(p: &Pattern, n: usize, state: &mut u64, cursor: &mut u64) -> Vec<u64> {
    (0..n)
        .map(|_| {
            if p.random {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                (*state % (DISK_SIZE / u64::from(p.len))) * u64::from(p.len)
            } else {
                let o = *cursor;
                *cursor = (*cursor + u64::from(p.len)) % DISK_SIZE;
                o
            }
        })
        .collect()
}

fn main() {
    let dir = tempfile::tempdir_in(
        std::env::var_os("EC2LAB_BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()),
    )
    .expect("temp dir");
    let path = dir.path().join("disk.img");
    {
        let f = File::create(&path).expect("create image");
        let chunk = vec![0x5au8; 1 << 20];
        for i in 0..(DISK_SIZE >> 20) {
            f.write_all_at(&chunk, i << 20).expect("fill image");
        }
        f.sync_all().expect("sync");
    }
    let patterns = [
        Pattern {
            name: "4 KiB random read",
            write: false,
            len: 4096,
            random: true,
        },
        Pattern {
            name: "4 KiB random write",
            write: true,
            len: 4096,
            random: true,
        },
        Pattern {
            name: "1 MiB sequential read",
            write: false,
            len: 1 << 20,
            random: false,
        },
        Pattern {
            name: "1 MiB sequential write",
            write: true,
            len: 1 << 20,
            random: false,
        },
    ];
    println!("| block, queue depth {DEPTH}, 1 GiB image (page cache) | ec2lab device path | host pread/pwrite | ratio | VMM CPU s per GiB |");
    println!("|---|---|---|---|---|");
    for p in &patterns {
        let mut rig = Rig::new(&path, 64 << 20);
        let (mut state, mut cursor) = (0x9e37_79b9_7f4a_7c15u64, 0u64);
        let (start, cpu0) = (Instant::now(), cpu_time());
        let mut requests = 0u64;
        while start.elapsed() < RUN_TIME {
            let o = offsets(p, usize::from(DEPTH), &mut state, &mut cursor);
            assert!(
                rig.batch(p.write, p.len, &o),
                "{}: a request failed",
                p.name
            );
            requests += u64::from(DEPTH);
        }
        let (device_secs, device_cpu) = (
            start.elapsed().as_secs_f64(),
            (cpu_time() - cpu0).as_secs_f64(),
        );
        let device_rate = requests as f64 / device_secs;
        let device_bytes = requests as f64 * f64::from(p.len);
        drop(rig);

        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open image");
        let mut buf = vec![0u8; p.len as usize];
        let (mut state, mut cursor) = (0x9e37_79b9_7f4a_7c15u64, 0u64);
        let start = Instant::now();
        let mut host_requests = 0u64;
        while start.elapsed() < RUN_TIME {
            for o in offsets(p, usize::from(DEPTH), &mut state, &mut cursor) {
                if p.write {
                    file.write_all_at(&buf, o).expect("pwrite");
                } else {
                    file.read_exact_at(&mut buf, o).expect("pread");
                }
            }
            host_requests += u64::from(DEPTH);
        }
        let host_rate = host_requests as f64 / start.elapsed().as_secs_f64();
        let unit = |rate: f64| {
            let gib = rate * f64::from(p.len) / f64::from(1u32 << 30);
            format!("{rate:.0} req/s ({gib:.2} GiB/s)")
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.2} |",
            p.name,
            unit(device_rate),
            unit(host_rate),
            device_rate / host_rate,
            device_cpu / (device_bytes / f64::from(1u32 << 30)),
        );
    }
}
