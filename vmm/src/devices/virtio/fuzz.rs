//! A guest driver gone wrong, for the devices' fuzz tests: descriptor
//! tables, available rings and buffer contents are random (cycles, chains
//! past the table, indirect tables inside indirect tables, buffers past
//! the end of guest memory or over the rings, available indices that run
//! ahead of the queue), and the device is asked to serve them. A device
//! must neither panic nor loop, and must never return more buffers than it
//! took.
//!
//! The rounds come from `crate::fuzzing` (seeded, `EC2LAB_FUZZ_ITERATIONS`).

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::VirtioDevice;
use crate::fuzzing::Rand;

/// Queue size the fuzzer uses: small, so random indices often hit.
const QSIZE: u16 = 16;
/// Guest memory: 2 MiB; rings at `ring_base(i)`, buffers from `BUF` up.
const MEM: u64 = 0x20_0000;
const BUF: u64 = 0x10_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Where queue `i`'s rings live.
fn ring_base(i: usize) -> u64 {
    i as u64 * 0x1_0000
}

/// A buffer address: mostly in the buffer area, sometimes over the rings,
/// straddling the end of memory, or far outside it.
fn address(r: &mut Rand) -> u64 {
    match r.below(10) {
        0 => r.below(MEM),
        1 => MEM - r.below(64),
        2 => r.next(),
        3 => u64::MAX - r.below(4096),
        _ => BUF + r.below(MEM - BUF),
    }
}

/// A buffer length: mostly small, sometimes huge or zero.
fn length(r: &mut Rand) -> u32 {
    match r.below(8) {
        0 => 0,
        1 => u32::MAX - r.below(16) as u32,
        2 => r.below(0x4_0000) as u32,
        3 => r.below(4096) as u32,
        _ => r.below(128) as u32,
    }
}

fn descriptor(r: &mut Rand, table_len: u64) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&address(r).to_le_bytes());
    d[8..12].copy_from_slice(&length(r).to_le_bytes());
    let flags = match r.below(6) {
        0 => F_INDIRECT,
        1 => r.next() as u16,
        2 => F_WRITE,
        3 => F_NEXT | F_WRITE,
        _ => F_NEXT,
    };
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    // Mostly within the table, sometimes just past it.
    let next = r.below(table_len + 4) as u16;
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

/// Writes a random driver state into queue `i`'s rings and buffers: a
/// descriptor table, a few indirect tables, an available ring whose index
/// runs some entries (sometimes far too many) past the device's, and
/// contents for buffers (the caller's `seeds`, mutated, at some of them: a
/// device's own header gets its requests past the first check).
fn scramble(mem: &GuestMemoryMmap, r: &mut Rand, i: usize, next_avail: u16, seeds: &[&[u8]]) {
    let base = ring_base(i);
    let ring = MockSplitQueue::create(mem, GuestAddress(base), QSIZE);
    for index in 0..QSIZE {
        let d = descriptor(r, u64::from(QSIZE));
        let at = ring.desc_table_addr().0 + u64::from(index) * 16;
        let _ = mem.write_slice(&d, GuestAddress(at));
        // Buffer contents where this descriptor points, when it is in memory.
        let addr = u64::from_le_bytes(d[..8].try_into().unwrap_or_default());
        if addr < MEM - 512 {
            let mut bytes: Vec<u8> = match (seeds.is_empty(), r.below(3)) {
                (false, 0 | 1) => seeds[r.below(seeds.len() as u64) as usize].to_vec(),
                _ => (0..r.below(64)).map(|_| r.next() as u8).collect(),
            };
            for _ in 0..r.below(4) {
                if !bytes.is_empty() {
                    let at = r.below(bytes.len() as u64) as usize;
                    bytes[at] = r.next() as u8;
                }
            }
            let _ = mem.write_slice(&bytes, GuestAddress(addr));
        }
    }
    // Indirect tables somewhere in the buffer area.
    for _ in 0..r.below(3) {
        let at = (BUF + r.below(MEM - BUF - 16 * 8)) & !15;
        for k in 0..8 {
            let _ = mem.write_slice(&descriptor(r, 8), GuestAddress(at + k * 16));
        }
    }
    let offered = match r.below(8) {
        0 => r.next() as u16,
        1 => QSIZE + r.below(8) as u16,
        _ => r.below(u64::from(QSIZE) + 1) as u16,
    };
    let avail = ring.avail_addr().0;
    let _ = mem.write_obj(0u16, GuestAddress(avail));
    let _ = mem.write_obj(next_avail.wrapping_add(offered), GuestAddress(avail + 2));
    for slot in 0..QSIZE {
        let head = r.below(u64::from(QSIZE) + 2) as u16;
        let _ = mem.write_obj(head, GuestAddress(avail + 4 + u64::from(slot) * 2));
    }
}

/// Ready queues for `device` over fresh rings in `mem`.
fn queues(mem: &GuestMemoryMmap, device: &dyn VirtioDevice) -> Vec<Queue> {
    (0..device.queue_max_sizes().len())
        .map(|i| {
            let ring = MockSplitQueue::create(mem, GuestAddress(ring_base(i)), QSIZE);
            ring.create_queue::<Queue>()
                .unwrap_or_else(|e| panic!("queue {i}: {e:?}"))
        })
        .collect()
}

/// Drives `device` through `rounds` random driver states on all its queues,
/// checking after every call that no queue has used more entries than the
/// device took from its available ring. (A head outside the table cannot
/// be returned: virtio-queue's `add_used` refuses it. The used ring itself
/// is not read back: a guest may point buffers at it, and the device then
/// writes there as told.) `seeds` are well-formed device headers to mutate.
/// Every 64 rounds the queues start over, as after a device reset.
/// Returns how many entries the device took and returned in all.
pub fn drive(device: &mut dyn VirtioDevice, rounds: u32, seed: u64, seeds: &[&[u8]]) -> Served {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)])
        .unwrap_or_else(|e| panic!("memory: {e}"));
    let mut r = Rand::new(seed);
    let mut qs = queues(&mem, device);
    let (mut taken, mut used) = (0u64, 0u64);
    for round in 0..rounds {
        if round % 64 == 0 {
            device.reset();
            qs = queues(&mem, device);
            device.activate(&mem, &mut qs);
        }
        let i = r.below(qs.len() as u64) as usize;
        let used_before: Vec<u16> = qs.iter().map(Queue::next_used).collect();
        let taken_before: Vec<u16> = qs.iter().map(Queue::next_avail).collect();
        scramble(&mem, &mut r, i, qs[i].next_avail(), seeds);
        let _ = device.process_queue(&mem, i, &mut qs);
        for (q, queue) in qs.iter().enumerate() {
            taken += u64::from(queue.next_avail().wrapping_sub(taken_before[q]));
            used += u64::from(queue.next_used().wrapping_sub(used_before[q]));
            // Queues start at 0 and at most 64 * QSIZE entries pass
            // between resets, so the counters never wrap.
            assert!(
                queue.next_used() <= queue.next_avail(),
                "round {round} (seed {seed:#x}): queue {q} used {} entries of {} taken",
                queue.next_used(),
                queue.next_avail()
            );
        }
    }
    Served { taken, used }
}

/// What a fuzz run's device did over all its rounds.
#[derive(Clone, Copy, Debug)]
pub struct Served {
    /// Entries the device took from available rings.
    pub taken: u64,
    /// Entries it returned on used rings.
    pub used: u64,
}

impl Served {
    /// Asserts that the device returned at least half of what it took
    /// (heads past the table cannot be returned, so not all): the random
    /// chains reach the device, and it does not swallow buffers.
    pub fn assert_returns_most(&self) {
        assert!(
            self.used > 0 && self.used * 2 >= self.taken,
            "the device returned {} of {} buffers it took",
            self.used,
            self.taken
        );
    }
}
