//! virtio-mem (virtio 1.2 section 5.15): a region of guest-physical memory
//! that the guest driver plugs and unplugs in blocks, towards a size the
//! host asks for.
//!
//! Why ec2lab has it: on hosts that emulate the guest kernel, initialising
//! memory at boot costs about 21 s per GiB, so an instance boots with part
//! of its memory and plugs the rest through this device once the guest is
//! up. On any host it lets an instance's memory grow and shrink while it
//! runs.
//!
//! The device only keeps the books (which blocks are plugged) and gives the
//! host pages of unplugged blocks back with `MADV_DONTNEED`; plugging costs
//! nothing, since guest memory is backed only when touched. Behaviour
//! follows QEMU's `hw/virtio/virtio-mem.c`, which Linux's driver is written
//! against: the usable region is the whole region, unplugging is never
//! refused, and plugged blocks stay plugged across a driver reset (Linux
//! sends UNPLUG_ALL at probe when it finds memory plugged).

use std::io::Write;

use serde::Deserialize;
use virtio_queue::{DescriptorChain, Queue, Reader, Writer};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, Le16, Le64};

use super::{
    device_type, drain_queue, read_config_bytes, ready_queue, DeviceCounters, UsedQueues,
    VirtioDevice, VIRTIO_F_VERSION_1,
};

const QUEUE_SIZES: &[u16] = &[128];
/// Smallest block: one host page, the unit `madvise` can give back.
const MIN_BLOCK_SIZE: u64 = 4 << 10;
/// Most blocks a region may have, so the plugged bitmap stays small (2 MiB
/// at most: 32 TiB in 2 MiB blocks).
const MAX_BLOCKS: u64 = 1 << 24;

const REQ_PLUG: u16 = 0;
const REQ_UNPLUG: u16 = 1;
const REQ_UNPLUG_ALL: u16 = 2;
const REQ_STATE: u16 = 3;

const RESP_ACK: u16 = 0;
const RESP_NACK: u16 = 1;
const RESP_BUSY: u16 = 2;
const RESP_ERROR: u16 = 3;

const STATE_PLUGGED: u16 = 0;
const STATE_UNPLUGGED: u16 = 1;
const STATE_MIXED: u16 = 2;

/// A size in errors: MiB when whole, as the API and config give them.
struct Size(u64);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", self.0 >> 20)
        } else {
            write!(f, "{:#x} bytes", self.0)
        }
    }
}

/// A device geometry, requested size or saved state that does not fit.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// The block size is not a power of two of at least 4 KiB.
    #[error("block size {} is not a power of two of at least 4 KiB", Size(*.0))]
    BlockSize(u64),
    /// (what, value, block size): a value that is not whole blocks.
    #[error("{} {} is not a multiple of the block size {}", .0, Size(*.1), Size(*.2))]
    Unaligned(&'static str, u64, u64),
    /// (address, size): an empty region, one past the end of the address
    /// space, or one of more than `MAX_BLOCKS` blocks.
    #[error("a region of {} at {:#x} is empty, past the end of the address space or more than {MAX_BLOCKS} blocks", Size(*.1), .0)]
    Region(u64, u64),
    /// (requested, region size): more requested than the region holds.
    #[error("requested size {} is more than the region's {}", Size(*.0), Size(*.1))]
    TooLarge(u64, u64),
    /// A saved state that does not fit the device.
    #[error("saved state: {0}")]
    Snapshot(String),
}

/// What the builder knows about the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemConfig {
    /// Guest-physical start of the region.
    pub addr: u64,
    /// Its length in bytes.
    pub region_size: u64,
    /// The unit of plugging, a power of two of at least 4 KiB (2 MiB, the
    /// host's huge page, keeps huge pages whole).
    pub block_size: u64,
    /// How much the guest should plug at first.
    pub requested_size: u64,
}

/// The device's sizes, as the API reports them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemStatus {
    /// Guest-physical start of the region.
    pub addr: u64,
    /// Its length in bytes.
    pub region_size: u64,
    /// The unit of plugging.
    pub block_size: u64,
    /// What the guest has plugged.
    pub plugged_size: u64,
    /// What the host asks the guest to plug.
    pub requested_size: u64,
}

/// The device's guest-visible state in a snapshot: the plugged blocks as
/// runs, so that a mostly plugged region saves in a few numbers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemSnapshot {
    /// Checked on restore: runs of blocks of another size mean other memory.
    block_size: u64,
    requested_size: u64,
    /// (first block, number of blocks), ascending and disjoint.
    plugged: Vec<(u64, u64)>,
}

/// `struct virtio_mem_config`, little-endian.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct ConfigSpace {
    block_size: Le64,
    node_id: Le16,
    _padding: [u8; 6],
    addr: Le64,
    region_size: Le64,
    usable_region_size: Le64,
    plugged_size: Le64,
    requested_size: Le64,
}

// SAFETY: little-endian integers and bytes with no padding between them;
// any bit pattern is valid.
unsafe impl ByteValued for ConfigSpace {}

/// `struct virtio_mem_req`: all four request types share this layout.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct Request {
    request_type: Le16,
    _padding: [Le16; 3],
    addr: Le64,
    nb_blocks: Le16,
    _padding2: [Le16; 3],
}

// SAFETY: little-endian integers with no padding between them; any bit
// pattern is valid.
unsafe impl ByteValued for Request {}

/// `struct virtio_mem_resp`: `state` only means something for STATE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
struct Response {
    response_type: Le16,
    _padding: [Le16; 3],
    state: Le16,
}

// SAFETY: little-endian integers with no padding between them; any bit
// pattern is valid.
unsafe impl ByteValued for Response {}

const REQUEST_LEN: usize = std::mem::size_of::<Request>();
/// The driver's buffer must hold all of it (QEMU and Linux agree on 10).
const RESPONSE_LEN: usize = std::mem::size_of::<Response>();

impl Response {
    fn new(response_type: u16) -> Self {
        Self {
            response_type: response_type.into(),
            ..Self::default()
        }
    }
}

/// One bit per block, set when plugged.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bitmap {
    words: Vec<u64>,
    len: u64,
}

impl Bitmap {
    fn new(len: u64) -> Self {
        Self {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// The first block at or after `from` whose bit is `value`, or `len`.
    fn next(&self, from: u64, value: bool) -> u64 {
        let mut i = from;
        while let Some(&word) = self.words.get((i / 64) as usize) {
            let bits = (if value { word } else { !word }) >> (i % 64);
            if bits != 0 {
                return (i + u64::from(bits.trailing_zeros())).min(self.len);
            }
            i = (i / 64 + 1) * 64;
        }
        self.len
    }

    /// Whether every block of `first..first + count` has bit `value`.
    fn all(&self, first: u64, count: u64, value: bool) -> bool {
        self.next(first, !value) >= first + count
    }

    fn set(&mut self, first: u64, count: u64, value: bool) {
        for i in first..first + count {
            if let Some(word) = self.words.get_mut((i / 64) as usize) {
                let bit = 1u64 << (i % 64);
                *word = if value { *word | bit } else { *word & !bit };
            }
        }
    }

    /// The runs of set bits, as (first, count).
    fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let first = self.next(at, true);
            (first < self.len).then(|| {
                at = self.next(first, false);
                (first, at - first)
            })
        })
    }
}

/// Whether all of `[addr, addr + len)` is guest memory.
fn is_guest_memory(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    usize::try_from(len).is_ok_and(|len| mem.check_range(GuestAddress(addr), len))
}

/// Gives the host pages behind `[addr, addr + len)` back: anonymous
/// private memory reads as zeros afterwards and costs the host nothing
/// until touched again (a private file mapping, as after a restore, falls
/// back to the file's contents). On failure, the response to give: ERROR
/// when the range is not guest memory (the device is wired wrongly, and
/// Linux marks it broken), BUSY when the host refused (Linux retries
/// later, as after QEMU's failed discard).
fn discard(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<(), u16> {
    let outside = || {
        log::warn!("virtio-mem: cannot unplug {len:#x} bytes at {addr:#x}: not guest memory");
        RESP_ERROR
    };
    // All of it first, so that a range half outside memory discards nothing.
    if !is_guest_memory(mem, addr, len) {
        return Err(outside());
    }
    for slice in mem.get_slices(GuestAddress(addr), len as usize) {
        let slice = slice.map_err(|_| outside())?;
        let guard = slice.ptr_guard_mut();
        // SAFETY: the pointer and length describe a slice of a mapping that
        // `mem`, borrowed for the call, keeps mapped. MADV_DONTNEED unmaps
        // nothing: every reference into guest memory stays valid and later
        // reads find zero pages, which is all an unplugged block may hold.
        let rc = unsafe { libc::madvise(guard.as_ptr().cast(), slice.len(), libc::MADV_DONTNEED) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            log::warn!("virtio-mem: madvise of {len:#x} bytes at {addr:#x}: {e}");
            return Err(RESP_BUSY);
        }
    }
    Ok(())
}

/// The region and its books, apart from the counters so that a queue
/// drain can borrow both.
struct State {
    addr: u64,
    region_size: u64,
    block_size: u64,
    requested_size: u64,
    plugged_size: u64,
    plugged: Bitmap,
}

impl State {
    /// The first block and count of `nb_blocks` blocks at `addr`, if the
    /// range is non-empty, block-aligned and inside the region (the usable
    /// region is all of it).
    fn blocks(&self, addr: u64, nb_blocks: u16) -> Option<(u64, u64)> {
        let offset = addr.checked_sub(self.addr)?;
        let count = u64::from(nb_blocks);
        let end = offset.checked_add(count.checked_mul(self.block_size)?)?;
        (count > 0 && offset.is_multiple_of(self.block_size) && end <= self.region_size)
            .then_some((offset / self.block_size, count))
    }

    /// Carries out one request; the order of the checks is QEMU's, so the
    /// driver sees the answers it was written against.
    fn execute(&mut self, mem: &GuestMemoryMmap, request: &Request) -> Response {
        let (addr, nb_blocks) = (request.addr.to_native(), request.nb_blocks.to_native());
        let request_type = request.request_type.to_native();
        if request_type == REQ_UNPLUG_ALL {
            return Response::new(self.unplug_all(mem));
        }
        let Some((first, count)) = self.blocks(addr, nb_blocks) else {
            return Response::new(RESP_ERROR);
        };
        let size = count * self.block_size;
        match request_type {
            REQ_PLUG if self.plugged_size.saturating_add(size) > self.requested_size => {
                Response::new(RESP_NACK)
            }
            REQ_PLUG if !self.plugged.all(first, count, false) => Response::new(RESP_ERROR),
            REQ_PLUG => {
                // Pages are backed when the guest touches them; a range that
                // is not guest memory would fault the guest there instead.
                if !is_guest_memory(mem, addr, size) {
                    log::warn!(
                        "virtio-mem: cannot plug {size:#x} bytes at {addr:#x}: not guest memory"
                    );
                    return Response::new(RESP_ERROR);
                }
                self.plugged.set(first, count, true);
                self.plugged_size += size;
                Response::new(RESP_ACK)
            }
            REQ_UNPLUG if !self.plugged.all(first, count, true) => Response::new(RESP_ERROR),
            REQ_UNPLUG => {
                if let Err(response) = discard(mem, addr, size) {
                    return Response::new(response);
                }
                self.plugged.set(first, count, false);
                self.plugged_size -= size;
                Response::new(RESP_ACK)
            }
            REQ_STATE => {
                let state = if self.plugged.all(first, count, true) {
                    STATE_PLUGGED
                } else if self.plugged.all(first, count, false) {
                    STATE_UNPLUGGED
                } else {
                    STATE_MIXED
                };
                Response {
                    state: state.into(),
                    ..Response::new(RESP_ACK)
                }
            }
            _ => Response::new(RESP_ERROR),
        }
    }

    /// Unplugs everything, giving the whole region back (also pages a
    /// driver touched while they were unplugged), as QEMU does.
    fn unplug_all(&mut self, mem: &GuestMemoryMmap) -> u16 {
        if self.plugged_size == 0 {
            return RESP_ACK;
        }
        if let Err(response) = discard(mem, self.addr, self.region_size) {
            return response;
        }
        self.plugged.words.fill(0);
        self.plugged_size = 0;
        RESP_ACK
    }
}

fn check_requested(requested: u64, region_size: u64, block_size: u64) -> Result<(), MemError> {
    if !requested.is_multiple_of(block_size) {
        return Err(MemError::Unaligned("requested size", requested, block_size));
    }
    if requested > region_size {
        return Err(MemError::TooLarge(requested, region_size));
    }
    Ok(())
}

/// The virtio-mem device.
pub struct Mem {
    state: State,
    counters: DeviceCounters,
}

impl Mem {
    /// A device for `config`'s region, all of it unplugged.
    pub fn new(config: MemConfig) -> Result<Self, MemError> {
        let MemConfig {
            addr,
            region_size,
            block_size,
            requested_size,
        } = config;
        if !block_size.is_power_of_two() || block_size < MIN_BLOCK_SIZE {
            return Err(MemError::BlockSize(block_size));
        }
        for (what, value) in [("region address", addr), ("region size", region_size)] {
            if !value.is_multiple_of(block_size) {
                return Err(MemError::Unaligned(what, value, block_size));
            }
        }
        let blocks = region_size / block_size;
        if blocks == 0 || blocks > MAX_BLOCKS || addr.checked_add(region_size).is_none() {
            return Err(MemError::Region(addr, region_size));
        }
        check_requested(requested_size, region_size, block_size)?;
        Ok(Self {
            state: State {
                addr,
                region_size,
                block_size,
                requested_size,
                plugged_size: 0,
                plugged: Bitmap::new(blocks),
            },
            counters: DeviceCounters::default(),
        })
    }

    /// Asks the guest for `bytes` of the region; the caller raises the
    /// config-change interrupt that tells the driver.
    pub fn set_requested_size(&mut self, bytes: u64) -> Result<(), MemError> {
        let s = &mut self.state;
        check_requested(bytes, s.region_size, s.block_size)?;
        s.requested_size = bytes;
        Ok(())
    }

    /// The device's sizes.
    pub fn status(&self) -> MemStatus {
        let s = &self.state;
        MemStatus {
            addr: s.addr,
            region_size: s.region_size,
            block_size: s.block_size,
            plugged_size: s.plugged_size,
            requested_size: s.requested_size,
        }
    }

    /// What the guest has plugged and the host requested.
    pub fn snapshot(&self) -> MemSnapshot {
        MemSnapshot {
            block_size: self.state.block_size,
            requested_size: self.state.requested_size,
            plugged: self.state.plugged.runs().collect(),
        }
    }

    /// Takes back what [`Self::snapshot`] saved; on error the device is
    /// unchanged.
    pub fn restore(&mut self, saved: &MemSnapshot) -> Result<(), MemError> {
        let s = &mut self.state;
        if saved.block_size != s.block_size {
            return Err(MemError::Snapshot(format!(
                "blocks of {}, the device's are {}",
                Size(saved.block_size),
                Size(s.block_size)
            )));
        }
        check_requested(saved.requested_size, s.region_size, s.block_size)
            .map_err(|e| MemError::Snapshot(e.to_string()))?;
        let mut plugged = Bitmap::new(s.plugged.len);
        let mut next_free = 0;
        for &(first, count) in &saved.plugged {
            let end = first.checked_add(count).filter(|&end| end <= plugged.len);
            let Some(end) = end.filter(|_| count > 0 && first >= next_free) else {
                return Err(MemError::Snapshot(format!(
                    "plugged range of {count} blocks at block {first} is empty, past the \
                     region's {} blocks, or not after the range before",
                    plugged.len
                )));
            };
            plugged.set(first, count, true);
            next_free = end;
        }
        let blocks: u64 = saved.plugged.iter().map(|&(_, count)| count).sum();
        s.plugged_size = blocks * s.block_size;
        s.plugged = plugged;
        s.requested_size = saved.requested_size;
        Ok(())
    }

    fn config_space(&self) -> ConfigSpace {
        let s = &self.state;
        ConfigSpace {
            block_size: s.block_size.into(),
            node_id: 0.into(),
            _padding: [0; 6],
            addr: s.addr.into(),
            region_size: s.region_size.into(),
            usable_region_size: s.region_size.into(),
            plugged_size: s.plugged_size.into(),
            requested_size: s.requested_size.into(),
        }
    }
}

/// Serves one chain: a request in the readable buffers, room for the
/// response in the writable ones. Returns the bytes written (0 when the
/// chain is dropped as malformed, before anything is carried out).
fn serve(
    state: &mut State,
    counters: &DeviceCounters,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let request = Reader::new(mem, chain.clone())
        .ok()
        .and_then(|mut reader| reader.read_obj::<Request>().ok());
    let writer = Writer::new(mem, chain)
        .ok()
        .filter(|w| w.available_bytes() >= RESPONSE_LEN);
    let (Some(request), Some(mut writer)) = (request, writer) else {
        log::debug!("virtio-mem: dropping malformed request");
        counters.error();
        return 0;
    };
    let response = state.execute(mem, &request);
    if writer.write_all(response.as_slice()).is_err() {
        counters.error();
        return 0;
    }
    match response.response_type.to_native() {
        RESP_ACK | RESP_NACK => counters.ok((REQUEST_LEN + RESPONSE_LEN) as u64),
        _ => counters.error(),
    }
    RESPONSE_LEN as u32
}

impl VirtioDevice for Mem {
    fn device_type(&self) -> u32 {
        device_type::MEM
    }

    fn name(&self) -> &'static str {
        "mem"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    /// Neither ACPI_PXM (one NUMA node) nor UNPLUGGED_INACCESSIBLE (reads
    /// of unplugged blocks find zero pages, as legacy x86 drivers expect).
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(self.config_space().as_slice(), offset, data);
    }

    fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        queues: &mut [Queue],
    ) -> UsedQueues {
        let Some(queue) = ready_queue(queues, index) else {
            return UsedQueues::NONE;
        };
        let (state, counters) = (&mut self.state, &self.counters);
        let used = drain_queue(mem, queue, counters, |chain| {
            serve(state, counters, mem, chain)
        });
        UsedQueues::when(used, index)
    }

    fn counters(&self) -> &DeviceCounters {
        &self.counters
    }

    /// Plugged memory stays plugged: the guest's memory is what it is, and
    /// a new driver unplugs it all first if it wants a clean start.
    fn reset(&mut self) {}

    fn save_state(&self) -> Option<serde_json::Value> {
        // Integers and a list of pairs always serialise.
        serde_json::to_value(self.snapshot()).ok()
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let saved = MemSnapshot::deserialize(state).map_err(|e| e.to_string())?;
        self.restore(&saved).map_err(|e| e.to_string())
    }

    fn as_hotplug_memory(&mut self) -> Option<&mut Mem> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    use super::*;
    use crate::devices::virtio::test_utils::{readable, writable};

    const REGION: u64 = 0x1000_0000;
    const REGION_SIZE: u64 = 16 << 20;
    const BLOCK: u64 = 2 << 20;
    const REQ: u64 = 0x10_0000;
    const RESP: u64 = 0x10_1000;

    /// Rings and buffers in the first 2 MiB, the device's region at 256 MiB.
    fn mem() -> GuestMemoryMmap {
        let region = (GuestAddress(REGION), REGION_SIZE as usize);
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000), region]).expect("memory")
    }

    fn config(requested_size: u64) -> MemConfig {
        MemConfig {
            addr: REGION,
            region_size: REGION_SIZE,
            block_size: BLOCK,
            requested_size,
        }
    }

    fn device(requested_size: u64) -> Mem {
        Mem::new(config(requested_size)).expect("device")
    }

    fn request(request_type: u16, addr: u64, nb_blocks: u16) -> Request {
        Request {
            request_type: request_type.into(),
            addr: addr.into(),
            nb_blocks: nb_blocks.into(),
            ..Request::default()
        }
    }

    /// Serves one chain of `descs` with `req` at REQ; returns the used
    /// length and the bytes at RESP afterwards.
    fn serve_chain(
        m: &GuestMemoryMmap,
        dev: &mut Mem,
        req: Request,
        descs: &[RawDescriptor],
    ) -> (u32, [u8; 10]) {
        m.write_obj(req, GuestAddress(REQ)).expect("request");
        m.write_slice(&[0xff; 10], GuestAddress(RESP))
            .expect("response");
        let vq = MockSplitQueue::new(m, 16);
        vq.build_desc_chain(descs).expect("chain");
        let mut q: Queue = vq.create_queue().expect("queue");
        assert!(dev.process_queue(m, 0, std::slice::from_mut(&mut q)).any());
        let used = vq.used().ring().ref_at(0).expect("used").load();
        let mut resp = [0u8; 10];
        m.read_slice(&mut resp, GuestAddress(RESP))
            .expect("response");
        (used.len(), resp)
    }

    /// One well-formed request; returns the response type and state.
    fn ask(
        m: &GuestMemoryMmap,
        dev: &mut Mem,
        request_type: u16,
        addr: u64,
        nb_blocks: u16,
    ) -> (u16, u16) {
        let descs = [readable(REQ, 24), writable(RESP, 10)];
        let (len, r) = serve_chain(m, dev, request(request_type, addr, nb_blocks), &descs);
        assert_eq!(len, 10);
        (
            u16::from_le_bytes([r[0], r[1]]),
            u16::from_le_bytes([r[8], r[9]]),
        )
    }

    fn plugged(dev: &Mem) -> u64 {
        dev.status().plugged_size
    }

    #[test]
    fn config_space_describes_the_region_at_the_spec_offsets() {
        let m = mem();
        let mut dev = device(4 * BLOCK);
        assert_eq!(ask(&m, &mut dev, REQ_PLUG, REGION, 1).0, RESP_ACK);
        let read = |offset: u64| {
            let mut b = [0xaa; 8];
            dev.read_config(offset, &mut b);
            u64::from_le_bytes(b)
        };
        assert_eq!(read(0), BLOCK);
        assert_eq!(read(8), 0, "node 0 and padding");
        assert_eq!(read(16), REGION);
        assert_eq!(read(24), REGION_SIZE);
        assert_eq!(read(32), REGION_SIZE, "the usable region is all of it");
        assert_eq!(read(40), BLOCK, "plugged");
        assert_eq!(read(48), 4 * BLOCK, "requested");
        assert_eq!(read(56), 0, "nothing past the end");
        let mut high = [0u8; 4];
        dev.read_config(20, &mut high);
        assert_eq!(u32::from_le_bytes(high), (REGION >> 32) as u32);
        assert_eq!(
            (dev.device_type(), dev.features()),
            (24, VIRTIO_F_VERSION_1)
        );
        assert_eq!(dev.queue_max_sizes(), &[128]);
    }

    #[test]
    fn plugs_within_the_requested_size_are_acked_and_beyond_it_nacked() {
        let m = mem();
        let mut dev = device(3 * BLOCK);
        assert_eq!(ask(&m, &mut dev, REQ_PLUG, REGION, 2).0, RESP_ACK);
        assert_eq!(plugged(&dev), 2 * BLOCK);
        assert_eq!(
            ask(&m, &mut dev, REQ_PLUG, REGION + 2 * BLOCK, 2).0,
            RESP_NACK
        );
        assert_eq!(
            ask(&m, &mut dev, REQ_PLUG, REGION + 7 * BLOCK, 1).0,
            RESP_ACK
        );
        assert_eq!(plugged(&dev), 3 * BLOCK);
        let errors = dev.counters().errors.load(Ordering::Relaxed);
        assert_eq!(errors, 0, "a NACK is an answer, not an error");
    }

    #[test]
    fn plugging_a_plugged_block_or_unplugging_an_unplugged_one_is_an_error() {
        let m = mem();
        let mut dev = device(REGION_SIZE);
        assert_eq!(ask(&m, &mut dev, REQ_PLUG, REGION + BLOCK, 1).0, RESP_ACK);
        assert_eq!(ask(&m, &mut dev, REQ_PLUG, REGION, 2).0, RESP_ERROR);
        assert_eq!(
            ask(&m, &mut dev, REQ_UNPLUG, REGION + BLOCK, 2).0,
            RESP_ERROR
        );
        assert_eq!(plugged(&dev), BLOCK, "a refused request changes nothing");
    }

    #[test]
    fn misaligned_empty_outside_overflowing_and_unknown_requests_are_errors() {
        let m = mem();
        let mut dev = device(REGION_SIZE);
        let top = !(BLOCK - 1);
        for (addr, nb_blocks) in [
            (REGION + 4096, 1),
            (REGION, 0),
            (REGION - BLOCK, 1),
            (REGION + REGION_SIZE, 1),
            (REGION + 7 * BLOCK, 2),
            (REGION, u16::MAX),
            (top, u16::MAX),
            (top, 1),
        ] {
            for request_type in [REQ_PLUG, REQ_UNPLUG, REQ_STATE] {
                let (response, _) = ask(&m, &mut dev, request_type, addr, nb_blocks);
                assert_eq!(
                    response, RESP_ERROR,
                    "{request_type} of {nb_blocks} at {addr:#x}"
                );
            }
        }
        assert_eq!(ask(&m, &mut dev, 7, REGION, 1).0, RESP_ERROR);
        assert_eq!(plugged(&dev), 0);
    }

    #[test]
    fn state_reports_plugged_unplugged_and_mixed() {
        let m = mem();
        let mut dev = device(REGION_SIZE);
        assert_eq!(
            ask(&m, &mut dev, REQ_PLUG, REGION + 2 * BLOCK, 2).0,
            RESP_ACK
        );
        let mut state = |addr, n| ask(&m, &mut dev, REQ_STATE, addr, n);
        assert_eq!(state(REGION + 2 * BLOCK, 2), (RESP_ACK, STATE_PLUGGED));
        assert_eq!(state(REGION, 2), (RESP_ACK, STATE_UNPLUGGED));
        assert_eq!(state(REGION + BLOCK, 2), (RESP_ACK, STATE_MIXED));
        assert_eq!(state(REGION, 8), (RESP_ACK, STATE_MIXED));
    }

    #[test]
    fn unplugging_gives_the_host_pages_back() {
        let m = mem();
        let mut dev = device(REGION_SIZE);
        let page_of = |block: u64| GuestAddress(REGION + block * BLOCK + 8192);
        let page = |block: u64| {
            let mut buf = [0u8; 4096];
            m.read_slice(&mut buf, page_of(block)).expect("read");
            buf
        };
        assert_eq!(ask(&m, &mut dev, REQ_PLUG, REGION, 3).0, RESP_ACK);
        for block in 0..3 {
            m.write_slice(&[0x5a; 4096], page_of(block))
                .expect("pattern");
        }
        assert_eq!(ask(&m, &mut dev, REQ_UNPLUG, REGION + BLOCK, 1).0, RESP_ACK);
        assert_eq!(plugged(&dev), 2 * BLOCK);
        assert_eq!(page(1), [0; 4096], "the unplugged block reads zeros");
        assert_eq!(
            (page(0), page(2)),
            ([0x5a; 4096], [0x5a; 4096]),
            "its neighbours keep theirs"
        );
        assert_eq!(ask(&m, &mut dev, REQ_UNPLUG_ALL, 0, 0).0, RESP_ACK);
        assert_eq!(plugged(&dev), 0);
        assert_eq!((page(0), page(2)), ([0; 4096], [0; 4096]));
        assert_eq!(
            ask(&m, &mut dev, REQ_STATE, REGION, 8),
            (RESP_ACK, STATE_UNPLUGGED)
        );
        assert_eq!(
            ask(&m, &mut dev, REQ_UNPLUG_ALL, 0, 0).0,
            RESP_ACK,
            "again: nothing to do"
        );
    }

    #[test]
    fn a_region_that_is_not_guest_memory_cannot_be_plugged() {
        let m = mem();
        let mut dev = Mem::new(MemConfig {
            addr: 0x2000_0000,
            ..config(REGION_SIZE)
        })
        .expect("device");
        assert_eq!(ask(&m, &mut dev, REQ_PLUG, 0x2000_0000, 1).0, RESP_ERROR);
        assert_eq!(plugged(&dev), 0);
    }

    #[test]
    fn malformed_chains_are_counted_and_returned_empty_without_effect() {
        let m = mem();
        let mut dev = device(REGION_SIZE);
        let plug = request(REQ_PLUG, REGION, 1);
        for descs in [
            [readable(REQ, 16), writable(RESP, 10)],
            [readable(REQ, 24), readable(RESP, 10)],
            [readable(REQ, 24), writable(RESP, 8)],
            [readable(0xffff_0000, 24), writable(RESP, 10)],
            [readable(REQ, 24), writable(0xffff_fff0, 10)],
            [writable(REQ, 24), writable(RESP, 10)],
        ] {
            let (len, resp) = serve_chain(&m, &mut dev, plug, &descs);
            assert_eq!((len, resp), (0, [0xff; 10]), "{descs:?}");
        }
        assert_eq!(dev.counters().errors.load(Ordering::Relaxed), 6);
        assert_eq!(plugged(&dev), 0);
        // A request split over two buffers is fine.
        let descs = [
            readable(REQ, 10),
            readable(REQ + 10, 14),
            writable(RESP, 10),
        ];
        assert_eq!(serve_chain(&m, &mut dev, plug, &descs).0, 10);
        assert_eq!(plugged(&dev), BLOCK);
    }

    #[test]
    fn the_requested_size_is_whole_blocks_within_the_region() {
        let mut dev = device(0);
        assert!(dev.set_requested_size(REGION_SIZE).is_ok());
        assert!(matches!(
            dev.set_requested_size(BLOCK + 4096),
            Err(MemError::Unaligned(..))
        ));
        let err = dev
            .set_requested_size(REGION_SIZE + BLOCK)
            .expect_err("too large");
        assert_eq!(
            err.to_string(),
            "requested size 18 MiB is more than the region's 16 MiB"
        );
        assert_eq!(dev.status().requested_size, REGION_SIZE);
    }

    #[test]
    fn construction_refuses_a_bad_geometry() {
        let bad: [fn(&mut MemConfig); 9] = [
            |c| c.block_size = 2048,
            |c| c.block_size = 3 << 20,
            |c| c.addr += 4096,
            |c| c.region_size = 0,
            |c| c.region_size += 4096,
            |c| c.addr = !(BLOCK - 1),
            |c| (c.block_size, c.region_size) = (4096, 1 << 40),
            |c| c.requested_size = REGION_SIZE + BLOCK,
            |c| c.requested_size = BLOCK / 2,
        ];
        for change in bad {
            let mut c = config(0);
            change(&mut c);
            assert!(Mem::new(c).is_err(), "{c:?}");
        }
        let small = MemConfig {
            block_size: 4096,
            ..config(4096)
        };
        assert_eq!(
            Mem::new(small).expect("4 KiB blocks").status().block_size,
            4096
        );
    }

    #[test]
    fn a_snapshot_saves_plugged_runs_and_a_driver_reset_keeps_them() {
        let m = mem();
        let mut dev = device(REGION_SIZE);
        assert_eq!(ask(&m, &mut dev, REQ_PLUG, REGION, 2).0, RESP_ACK);
        assert_eq!(
            ask(&m, &mut dev, REQ_PLUG, REGION + 7 * BLOCK, 1).0,
            RESP_ACK
        );
        dev.reset();
        let saved = dev.snapshot();
        assert_eq!(saved.plugged, vec![(0, 2), (7, 1)]);
        let mut restored = device(0);
        restored
            .restore_state(&dev.save_state().expect("state"))
            .expect("restore");
        assert_eq!(restored.status(), dev.status());
        assert_eq!(restored.snapshot(), saved);
        assert_eq!(
            ask(&m, &mut restored, REQ_STATE, REGION + BLOCK, 2),
            (RESP_ACK, STATE_MIXED)
        );
    }

    #[test]
    fn a_corrupt_snapshot_is_refused_and_changes_nothing() {
        let mut dev = device(BLOCK);
        let good = dev.snapshot();
        let bad: [fn(&mut MemSnapshot); 8] = [
            |s| s.plugged = vec![(7, 2)],
            |s| s.plugged = vec![(0, 0)],
            |s| s.plugged = vec![(u64::MAX, 2)],
            |s| s.plugged = vec![(0, 3), (2, 1)],
            |s| s.plugged = vec![(4, 1), (0, 1)],
            |s| s.requested_size = 2 * REGION_SIZE,
            |s| s.requested_size = 4096,
            |s| s.block_size = 4096,
        ];
        for change in bad {
            let mut saved = good.clone();
            change(&mut saved);
            let err = dev.restore(&saved).expect_err("corrupt");
            assert!(err.to_string().starts_with("saved state: "), "{err}");
        }
        assert!(dev
            .restore_state(&serde_json::json!({"plugged": 3}))
            .is_err());
        assert_eq!(dev.snapshot(), good);
    }

    /// A driver gone wrong gets no panic and only its own buffers back.
    /// The region lies in the fuzzer's buffer area, so plugs, unplugs and
    /// discards really happen under the random chains.
    #[test]
    fn a_driver_gone_wrong_gets_no_panic() {
        let addr = 0x10_0000;
        let mut dev = Mem::new(MemConfig {
            addr,
            region_size: 0x10_0000,
            block_size: 4096,
            requested_size: 0x8_0000,
        })
        .expect("device");
        let seeds = [
            request(REQ_PLUG, addr, 16),
            request(REQ_PLUG, addr + 0x8_0000, 1),
            request(REQ_UNPLUG, addr, 8),
            request(REQ_UNPLUG_ALL, 0, 0),
            request(REQ_STATE, addr, 256),
        ];
        let seeds: Vec<&[u8]> = seeds.iter().map(ByteValued::as_slice).collect();
        crate::devices::virtio::fuzz::drive(&mut dev, crate::fuzzing::iterations(), 0x5eed, &seeds)
            .assert_returns_most();
        let counters = dev.counters();
        let (requests, errors) = (&counters.requests, &counters.errors);
        let answered = requests.load(Ordering::Relaxed) - errors.load(Ordering::Relaxed);
        assert!(answered > 0, "some random requests were acked or nacked");
    }
}
