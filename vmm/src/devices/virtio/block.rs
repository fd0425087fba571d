//! virtio-blk on a raw image file: IN, OUT, FLUSH (a real fsync) and
//! GET_ID, optionally read-only. Every request problem is reported to the
//! guest in the status byte, or the chain is returned unused when it has no
//! status byte to report in; nothing a guest sends can stop the VMM.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use smallvec::SmallVec;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::iov::GuestIovecs;

use super::{
    device_type, drain_queue, read_config_bytes, ready_queue, DeviceCounters, UsedQueues,
    VirtioDevice, VIRTIO_F_VERSION_1,
};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZES: &[u16] = &[256];
/// Largest data transfer of one request; bigger ones are refused (IOERR).
const MAX_TRANSFER: usize = 16 << 20;
/// Length of the GET_ID answer.
const ID_LEN: usize = 20;

const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The image size is not a whole number of sectors.
    #[error("disk image {path} is {size} bytes, not a multiple of 512")]
    Size {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
}

#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RequestHeader {
    request_type: u32,
    _reserved: u32,
    sector: u64,
}

// SAFETY: plain integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// A block device backed by a file.
pub struct Block {
    file: File,
    capacity_sectors: u64,
    read_only: bool,
    id: [u8; ID_LEN],
    counters: DeviceCounters,
}

impl Block {
    /// Opens `path` (read-only when `read_only`).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let size = file
            .metadata()
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::Size {
                path: path.to_path_buf(),
                size,
            });
        }
        let mut id = [0u8; ID_LEN];
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (dst, src) in id.iter_mut().zip(name.bytes()) {
            *dst = src;
        }
        Ok(Self {
            file,
            capacity_sectors: size / SECTOR_SIZE,
            read_only,
            id,
            counters: DeviceCounters::default(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Byte offset of `sector` if `len` bytes from there stay on the disk.
    fn checked_offset(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len as u64)?;
        (end <= self.capacity_sectors * SECTOR_SIZE).then_some(offset)
    }

    /// Parses one request chain, carries it out and writes its status;
    /// returns the bytes written into the guest's buffers (0 when the chain
    /// is dropped as malformed).
    fn serve(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let Some(request) = Request::parse(mem, chain) else {
            return self.drop_malformed();
        };
        let (status, len) = self.execute(mem, &request);
        if status == VIRTIO_BLK_S_OK {
            let read = request.header_len + request.out_data_len();
            self.counters.ok(u64::from(len) + read as u64);
        } else {
            self.counters.error();
        }
        match mem.write_obj(status, request.status) {
            Ok(()) => len + 1,
            Err(_) => 0,
        }
    }

    fn drop_malformed(&self) -> u32 {
        log::debug!("virtio-blk: dropping malformed request");
        self.counters.error();
        0
    }

    /// Carries out one request; returns the status and the bytes written into guest buffers.
    fn execute(&self, mem: &GuestMemoryMmap, request: &Request) -> (u8, u32) {
        match request.header.request_type {
            VIRTIO_BLK_T_IN => {
                let Some(offset) = self.data_offset(request.header.sector, &request.in_data) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                match GuestIovecs::new(mem, &request.in_data)
                    .map_err(std::io::Error::other)
                    .and_then(|iov| iov.read_from(&self.file, offset).map(|()| iov.len()))
                {
                    Ok(len) => (VIRTIO_BLK_S_OK, len as u32),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let Some(offset) = self.data_offset(request.header.sector, &request.out_data)
                else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                match GuestIovecs::new(mem, &request.out_data)
                    .map_err(std::io::Error::other)
                    .and_then(|iov| iov.write_to(&self.file, offset))
                {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_FLUSH => match self.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            },
            VIRTIO_BLK_T_GET_ID => {
                let mut id = &self.id[..];
                for &(addr, len) in &request.in_data {
                    let n = len.min(id.len());
                    if mem.write_slice(&id[..n], addr).is_err() {
                        return (VIRTIO_BLK_S_IOERR, 0);
                    }
                    id = &id[n..];
                }
                (VIRTIO_BLK_S_OK, (ID_LEN - id.len()) as u32)
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    /// The file offset of a transfer of `buffers` starting at `sector`, if
    /// it stays on the disk and within `MAX_TRANSFER`.
    fn data_offset(&self, sector: u64, buffers: &[(GuestAddress, usize)]) -> Option<u64> {
        let len = buffers
            .iter()
            .try_fold(0usize, |sum, &(_, len)| sum.checked_add(len))?;
        self.checked_offset(sector, len)
            .filter(|_| len <= MAX_TRANSFER)
    }
}

/// Guest buffers of one request. Linux sends one data buffer per request
/// segment; inline room for a few keeps small requests off the heap.
type Buffers = SmallVec<[(GuestAddress, usize); 4]>;

/// One request as virtio-blk lays it out in a chain: the header in the
/// device-readable buffers, then OUT data; IN data in the device-writable
/// buffers, whose last byte is the status.
#[derive(Debug)]
struct Request {
    header: RequestHeader,
    /// Bytes of the header (counted as read from the guest).
    header_len: usize,
    /// Readable buffers after the header (the data of an OUT).
    out_data: Buffers,
    /// Writable buffers before the status byte (the data of an IN).
    in_data: Buffers,
    /// Where the status byte goes.
    status: GuestAddress,
}

impl Request {
    /// Splits `chain`; None when it has no complete header, no status
    /// byte, or a buffer outside guest memory.
    fn parse(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Option<Self> {
        let mut readable = Buffers::new();
        let mut writable = Buffers::new();
        for desc in chain {
            let buffer = (desc.addr(), desc.len() as usize);
            if !mem.check_range(buffer.0, buffer.1) {
                return None;
            }
            if buffer.1 == 0 {
                continue;
            }
            if desc.is_write_only() {
                writable.push(buffer);
            } else {
                readable.push(buffer);
            }
        }
        // The header may be split over several buffers.
        let mut header = RequestHeader::default();
        let header_len = std::mem::size_of::<RequestHeader>();
        let mut out_data = readable;
        let mut filled = 0;
        while filled < header_len {
            let (addr, len) = *out_data.first()?;
            let n = len.min(header_len - filled);
            mem.read_slice(&mut header.as_mut_slice()[filled..filled + n], addr)
                .ok()?;
            filled += n;
            if n == len {
                out_data.remove(0);
            } else {
                out_data[0] = (addr.checked_add(n as u64)?, len - n);
            }
        }
        let mut in_data = writable;
        let (last_addr, last_len) = in_data.pop()?;
        let status = last_addr.checked_add(last_len as u64 - 1)?;
        if last_len > 1 {
            in_data.push((last_addr, last_len - 1));
        }
        Some(Self {
            header,
            header_len,
            out_data,
            in_data,
            status,
        })
    }

    fn out_data_len(&self) -> usize {
        self.out_data.iter().map(|&(_, len)| len).sum()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn name(&self) -> &'static str {
        "block"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config starts with the capacity in sectors.
        read_config_bytes(&self.capacity_sectors.to_le_bytes(), offset, data);
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
        let used = drain_queue(mem, queue, &self.counters, |chain| self.serve(mem, chain));
        UsedQueues::when(used, index)
    }

    fn counters(&self) -> &DeviceCounters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::test_utils::{mem, readable, writable};

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x11_0000;
    const STATUS: u64 = 0x12_0000;

    fn disk(sectors: u64, read_only: bool) -> (tempfile::NamedTempFile, Block) {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        let pattern: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(f.path(), pattern).expect("write image");
        let b = Block::open(f.path(), read_only).expect("open");
        (f, b)
    }

    /// Runs one request made of `descs`; returns (used length, status byte).
    fn run(
        m: &GuestMemoryMmap,
        b: &mut Block,
        request_type: u32,
        sector: u64,
        descs: &[RawDescriptor],
    ) -> (u32, u8) {
        let header = RequestHeader {
            request_type,
            _reserved: 0,
            sector,
        };
        m.write_obj(header, GuestAddress(HDR)).expect("header");
        m.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
        let vq = MockSplitQueue::new(m, 16);
        vq.build_desc_chain(descs).expect("chain");
        let mut q: Queue = vq.create_queue().expect("queue");
        assert!(b.process_queue(m, 0, std::slice::from_mut(&mut q)).any());
        let used = vq.used().ring().ref_at(0).expect("used").load();
        (
            used.len(),
            m.read_obj(GuestAddress(STATUS)).expect("status"),
        )
    }

    #[test]
    fn reads_return_the_image_contents() {
        let m = mem();
        let (_f, mut b) = disk(8, false);
        let (len, status) = run(
            &m,
            &mut b,
            VIRTIO_BLK_T_IN,
            2,
            &[readable(HDR, 16), writable(DATA, 1024), writable(STATUS, 1)],
        );
        assert_eq!((len, status), (1025, VIRTIO_BLK_S_OK));
        let mut buf = vec![0u8; 1024];
        m.read_slice(&mut buf, GuestAddress(DATA)).expect("read");
        let expected: Vec<u8> = (1024..2048u64).map(|i| (i % 251) as u8).collect();
        assert_eq!(buf, expected);
    }

    #[test]
    fn a_split_header_scattered_data_and_a_shared_status_buffer_work() {
        // Drivers may split the header, scatter the data over many buffers
        // and put the status byte at the end of the last data buffer.
        let m = mem();
        let (_f, mut b) = disk(8, false);
        let tail = DATA + 0x1000;
        m.write_obj(0xffu8, GuestAddress(tail + 512))
            .expect("status");
        let (len, _) = run(
            &m,
            &mut b,
            VIRTIO_BLK_T_IN,
            1,
            &[
                readable(HDR, 4),
                readable(HDR + 4, 12),
                writable(DATA, 512),
                writable(tail, 513),
            ],
        );
        assert_eq!(len, 1025);
        let status: u8 = m.read_obj(GuestAddress(tail + 512)).expect("status");
        assert_eq!(status, VIRTIO_BLK_S_OK);
        let mut buf = vec![0u8; 512];
        m.read_slice(&mut buf, GuestAddress(tail)).expect("read");
        let expected: Vec<u8> = (1024..1536u64).map(|i| (i % 251) as u8).collect();
        assert_eq!(buf, expected);
    }

    #[test]
    fn writes_reach_the_file_and_flush_succeeds() {
        let m = mem();
        let (f, mut b) = disk(8, false);
        m.write_slice(&[0xab; 512], GuestAddress(DATA))
            .expect("data");
        let (_, status) = run(
            &m,
            &mut b,
            VIRTIO_BLK_T_OUT,
            3,
            &[readable(HDR, 16), readable(DATA, 512), writable(STATUS, 1)],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
        let (_, status) = run(
            &m,
            &mut b,
            VIRTIO_BLK_T_FLUSH,
            0,
            &[readable(HDR, 16), writable(STATUS, 1)],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
        let image = std::fs::read(f.path()).expect("read image");
        assert!(image[1536..2048].iter().all(|b| *b == 0xab));
        assert_eq!(image[1535], (1535 % 251) as u8);
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let m = mem();
        let (f, mut b) = disk(8, true);
        assert_ne!(b.features() & VIRTIO_BLK_F_RO, 0);
        let (_, status) = run(
            &m,
            &mut b,
            VIRTIO_BLK_T_OUT,
            0,
            &[readable(HDR, 16), readable(DATA, 512), writable(STATUS, 1)],
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert_eq!(std::fs::read(f.path()).expect("image")[0], 0);
    }

    #[test]
    fn requests_past_the_end_fail_with_ioerr() {
        let m = mem();
        let (_f, mut b) = disk(8, false);
        let (_, status) = run(
            &m,
            &mut b,
            VIRTIO_BLK_T_IN,
            7,
            &[readable(HDR, 16), writable(DATA, 1024), writable(STATUS, 1)],
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        let (_, status) = run(
            &m,
            &mut b,
            VIRTIO_BLK_T_IN,
            u64::MAX / 2,
            &[readable(HDR, 16), writable(DATA, 512), writable(STATUS, 1)],
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn unknown_requests_are_unsupported_and_get_id_names_the_disk() {
        let m = mem();
        let (_f, mut b) = disk(8, false);
        let (_, status) = run(&m, &mut b, 99, 0, &[readable(HDR, 16), writable(STATUS, 1)]);
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
        let (len, status) = run(
            &m,
            &mut b,
            VIRTIO_BLK_T_GET_ID,
            0,
            &[readable(HDR, 16), writable(DATA, 20), writable(STATUS, 1)],
        );
        assert_eq!((len, status), (21, VIRTIO_BLK_S_OK));
    }

    #[test]
    fn hostile_chains_are_dropped_without_touching_the_disk() {
        let m = mem();
        let (f, mut b) = disk(8, false);
        let before = std::fs::read(f.path()).expect("image");
        // Header too short; data outside guest memory; wrong direction (no
        // writable status byte); all in turn.
        let (len, status) = run(
            &m,
            &mut b,
            VIRTIO_BLK_T_IN,
            0,
            &[readable(HDR, 4), writable(STATUS, 1)],
        );
        assert_eq!((len, status), (0, 0xff));
        let (len, _) = run(
            &m,
            &mut b,
            VIRTIO_BLK_T_OUT,
            0,
            &[
                readable(HDR, 16),
                readable(0xffff_0000, 512),
                writable(STATUS, 1),
            ],
        );
        assert_eq!(len, 0);
        let (len, status) = run(
            &m,
            &mut b,
            VIRTIO_BLK_T_OUT,
            0,
            &[readable(HDR, 16), readable(DATA, 512), readable(STATUS, 1)],
        );
        assert_eq!((len, status), (0, 0xff));
        assert_eq!(std::fs::read(f.path()).expect("image"), before);
        assert_eq!(
            b.counters()
                .errors
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }

    #[test]
    fn config_space_holds_the_capacity() {
        let (_f, b) = disk(8, false);
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut past = [0xffu8; 4];
        b.read_config(64, &mut past);
        assert_eq!(past, [0; 4]);
    }

    /// A driver gone wrong (random descriptor chains, request headers and
    /// sectors, indices past the ring) gets error statuses, never a panic,
    /// and the device returns only what it was offered.
    #[test]
    fn a_driver_gone_wrong_gets_errors_not_panics() {
        let (_f, mut b) = disk(128, false);
        let header = |request_type: u32, sector: u64| {
            let mut h = request_type.to_le_bytes().to_vec();
            h.extend(0u32.to_le_bytes());
            h.extend(sector.to_le_bytes());
            h
        };
        let seeds = [
            header(VIRTIO_BLK_T_IN, 0),
            header(VIRTIO_BLK_T_IN, 127),
            header(VIRTIO_BLK_T_OUT, 5),
            header(VIRTIO_BLK_T_OUT, u64::MAX / 512),
            header(VIRTIO_BLK_T_FLUSH, 0),
            header(VIRTIO_BLK_T_GET_ID, 0),
        ];
        let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
        crate::devices::virtio::fuzz::drive(&mut b, crate::fuzzing::iterations(), 0xb10c, &seeds)
            .assert_returns_most();
    }
}
