//! Device-path benchmark (`scripts/bench devices`): drives virtio-blk and
//! virtio-net the way a guest driver does — descriptor chains in guest
//! memory, a notification on the queue's ioeventfd, completion awaited on
//! the irqfd (the shared [`rig`]) — and compares the rate with the host
//! doing the same I/O directly: pread/pwrite on the same file for block,
//! read/write on a tap for net ([`net`]). No KVM is involved: the eventfds
//! are the ones KVM would signal and watch.

mod net;
mod rig;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use ec2lab_vmm::devices::virtio::block::Block;
use vm_memory::{Bytes, GuestAddress};

use rig::{Rig, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

const HEADERS: u64 = rig::FREE;
const STATUS: u64 = HEADERS + 0x1_0000;
const DATA: u64 = 0x100_0000;
/// Requests in flight per notification (the guest driver's queue depth).
const DEPTH: u16 = 32;
const DISK_SIZE: u64 = 1 << 30;
const RUN_TIME: Duration = Duration::from_secs(3);

/// Submits one request per offset (`len` bytes each) on queue 0 and waits
/// for all of them; returns false if any failed.
fn block_batch(rig: &mut Rig, write: bool, len: u32, offsets: &[u64]) -> bool {
    for (i, offset) in offsets.iter().enumerate() {
        let head = (i as u16) * 3;
        let hdr = HEADERS + u64::from(head) * 16;
        let header: [u64; 2] = [u64::from(write), offset / 512];
        rig.mem
            .write_obj(header, GuestAddress(hdr))
            .expect("header");
        let data = DATA + i as u64 * u64::from(len);
        let data_flags = if write {
            VRING_DESC_F_NEXT
        } else {
            VRING_DESC_F_NEXT | VRING_DESC_F_WRITE
        };
        rig.set_desc(0, head, hdr, 16, VRING_DESC_F_NEXT, head + 1);
        rig.set_desc(0, head + 1, data, len, data_flags, head + 2);
        rig.set_desc(
            0,
            head + 2,
            STATUS + u64::from(head),
            1,
            VRING_DESC_F_WRITE,
            0,
        );
        rig.push_avail(0, head);
    }
    rig.kick(0);
    // Completion: wait on the irqfd until every request is on the used ring.
    while rig.used_idx(0) != rig.next_avail(0) {
        rig.wait_irq();
    }
    (0..offsets.len() as u64)
        .all(|i| rig.mem.read_obj::<u8>(GuestAddress(STATUS + i * 3)).ok() == Some(0))
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
        let device = Block::open(&path, false).expect("open disk");
        let mut rig = Rig::new(Box::new(device), 64 << 20);
        let (mut state, mut cursor) = (0x9e37_79b9_7f4a_7c15u64, 0u64);
        let (start, cpu0) = (Instant::now(), rig::process_cpu_time());
        let mut requests = 0u64;
        while start.elapsed() < RUN_TIME {
            let o = offsets(p, usize::from(DEPTH), &mut state, &mut cursor);
            assert!(
                block_batch(&mut rig, p.write, p.len, &o),
                "{}: a request failed",
                p.name
            );
            requests += u64::from(DEPTH);
        }
        let (device_secs, device_cpu) = (
            start.elapsed().as_secs_f64(),
            (rig::process_cpu_time() - cpu0).as_secs_f64(),
        );
        let device_rate = requests as f64 / device_secs;
        let device_bytes = requests as f64 * f64::from(p.len);
        drop(rig);

        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open image");
        // One buffer per request in flight, as the device path has: a
        // single reused buffer would stay in the CPU cache and make the
        // host's copies cheaper than any queue-depth-32 reader's.
        let mut bufs = vec![vec![0u8; p.len as usize]; usize::from(DEPTH)];
        let (mut state, mut cursor) = (0x9e37_79b9_7f4a_7c15u64, 0u64);
        let start = Instant::now();
        let mut host_requests = 0u64;
        while start.elapsed() < RUN_TIME {
            let o = offsets(p, usize::from(DEPTH), &mut state, &mut cursor);
            for (o, buf) in o.into_iter().zip(bufs.iter_mut()) {
                if p.write {
                    file.write_all_at(buf, o).expect("pwrite");
                } else {
                    file.read_exact_at(buf, o).expect("pread");
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
    println!();
    net::run();
}
