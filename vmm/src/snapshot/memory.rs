//! The memory file: a header page, then guest RAM with zero pages left as
//! holes; written from the paused VM, mapped privately on restore.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::residency::{self, PageMap, PAGE};

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

/// The header's size: one page, so RAM starts page-aligned in the file and
/// can be mapped straight from it.
pub const HEADER_LEN: u64 = 4096;
const MAGIC: &[u8; 8] = b"EC2LABME";
/// Bytes written between syncs: the dirty page cache a save leaves behind
/// stays this small, within the memory cap of the VMM's cgroup (page
/// cache counts against it) however much of the guest is written.
const SYNC_EVERY: usize = 32 << 20;

/// A memory file that does not belong to its state, or cannot be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// Reading or writing it.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a memory file, or one written with another state.
    #[error("{0} is not the memory file of this snapshot's state")]
    NotOurs(PathBuf),
    /// Shorter or longer than the guest's RAM.
    #[error("{path} holds {found} bytes of guest memory; the snapshot needs {expected}")]
    Size {
        /// The file.
        path: PathBuf,
        /// What the file holds past its header.
        found: u64,
        /// What the snapshot's machine has.
        expected: u64,
    },
    /// mmap failed.
    #[error("cannot map the memory file: {0}")]
    Map(String),
}

/// How much a save wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveStats {
    /// Guest RAM in bytes.
    pub total: u64,
    /// Bytes of it written (the rest are holes).
    pub written: u64,
}

/// Writes `mem` into `file` (empty, just created) under memory id `id`.
/// Every thread that writes guest memory must be parked. With `pagemap`,
/// pages known to be zero without reading them (never touched, or holes of
/// the file a restored VM maps) are skipped unread.
pub fn save(
    mem: &GuestMemoryMmap,
    file: &File,
    path: &Path,
    id: u64,
    pagemap: Option<&PageMap>,
) -> Result<SaveStats, MemoryFileError> {
    let io = |source| MemoryFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(HEADER_LEN + total).map_err(io)?;
    file.write_all_at(&header(id, total), 0).map_err(io)?;
    let mut offset = HEADER_LEN;
    let mut written = 0;
    for region in mem.iter() {
        let len = region.len() as usize;
        // SAFETY: the region is a live mapping of `len` bytes owned by
        // `mem`; the vCPUs and the device thread, the only writers, are
        // parked, so nothing changes it while the slice is alive.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), len) };
        let may_hold = residency::pages_that_may_hold_data(pagemap, region);
        written += write_nonzero(file, bytes, &may_hold, offset).map_err(io)?;
        offset += len as u64;
    }
    file.sync_all().map_err(io)?;
    Ok(SaveStats { total, written })
}

fn header(id: u64, total: u64) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h[16..24].copy_from_slice(&total.to_le_bytes());
    h
}

/// Writes the runs of pages of `bytes` that are not all zeros at `base`
/// onwards; the rest stays a hole. A page whose `may_hold` flag is false is
/// zero without being read. Returns the bytes written.
fn write_nonzero(file: &File, bytes: &[u8], may_hold: &[bool], base: u64) -> std::io::Result<u64> {
    let mut written = 0;
    let mut unsynced = 0;
    let mut run: Option<usize> = None;
    let mut flush = |start: usize, end: usize| -> std::io::Result<()> {
        for at in (start..end).step_by(SYNC_EVERY) {
            let chunk = &bytes[at..end.min(at + SYNC_EVERY)];
            file.write_all_at(chunk, base + at as u64)?;
            written += chunk.len() as u64;
            unsynced += chunk.len();
            if unsynced >= SYNC_EVERY {
                file.sync_all()?;
                unsynced = 0;
            }
        }
        Ok(())
    };
    for (i, page) in bytes.chunks(PAGE).enumerate() {
        let zero = !may_hold.get(i).copied().unwrap_or(true) || is_zero(page);
        match (zero, run) {
            (false, None) => run = Some(i * PAGE),
            (true, Some(start)) => {
                flush(start, i * PAGE)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        flush(start, bytes.len())?;
    }
    Ok(written)
}

fn is_zero(page: &[u8]) -> bool {
    let mut words = page.chunks_exact(8);
    let body = words
        .by_ref()
        .all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0);
    body && words.remainder().iter().all(|b| *b == 0)
}

/// Checks that `file` is the memory file written with id `id` and holds
/// `expected` bytes of RAM.
pub fn check_header(
    file: &File,
    path: &Path,
    id: u64,
    expected: u64,
) -> Result<(), MemoryFileError> {
    let io = |source| MemoryFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut h = [0u8; 24];
    file.read_exact_at(&mut h, 0)
        .map_err(|_| MemoryFileError::NotOurs(path.to_path_buf()))?;
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[at..at + 8]);
        u64::from_le_bytes(b)
    };
    if &h[..8] != MAGIC || word(8) != id {
        return Err(MemoryFileError::NotOurs(path.to_path_buf()));
    }
    let len = file.metadata().map_err(io)?.len();
    let found = len.saturating_sub(HEADER_LEN);
    if word(16) != expected || found != expected {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            found,
            expected,
        });
    }
    Ok(())
}

/// Maps guest RAM laid out as `ranges` (start, length) from `file`,
/// privately: the guest's writes stay in this process, pages are read
/// from the file on first touch, and the file may be replaced afterwards.
pub fn map(file: &File, ranges: &[(u64, u64)]) -> Result<GuestMemoryMmap, MemoryFileError> {
    let map_err = |e: &dyn std::fmt::Display| MemoryFileError::Map(e.to_string());
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = HEADER_LEN;
    for &(start, len) in ranges {
        let file = file.try_clone().map_err(|e| map_err(&e))?;
        let size = usize::try_from(len).map_err(|e| map_err(&e))?;
        let region = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::new(file, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(&e))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start)).ok_or_else(|| {
            MemoryFileError::Map("region past the end of the address space".into())
        })?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(&e))
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    #[test]
    fn zero_pages_become_holes_and_the_rest_maps_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory");
        let ranges = [(0u64, 1u64 << 20), (4u64 << 30, 1u64 << 20)];
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(ranges[0].0), ranges[0].1 as usize),
            (GuestAddress(ranges[1].0), ranges[1].1 as usize),
        ])
        .expect("memory");
        mem.write_slice(b"first page", GuestAddress(0))
            .expect("write");
        mem.write_slice(b"middle", GuestAddress(0x8_1234))
            .expect("write");
        mem.write_slice(b"high", GuestAddress((4 << 30) + 0xf_fffc))
            .expect("write");
        let file = File::create(&path).expect("create");
        let stats = save(&mem, &file, &path, 7, None).expect("save");
        assert_eq!(stats.total, 2 << 20);
        assert_eq!(stats.written, 3 * PAGE as u64, "three touched pages");

        let file = File::open(&path).expect("open");
        check_header(&file, &path, 7, 2 << 20).expect("header");
        let back = map(&file, &ranges).expect("map");
        let mut buf = [0u8; 10];
        back.read_slice(&mut buf, GuestAddress(0)).expect("read");
        assert_eq!(&buf, b"first page");
        let mut buf = [0u8; 6];
        back.read_slice(&mut buf, GuestAddress(0x8_1234))
            .expect("read");
        assert_eq!(&buf, b"middle");
        let mut buf = [0u8; 4];
        back.read_slice(&mut buf, GuestAddress((4 << 30) + 0xf_fffc))
            .expect("read");
        assert_eq!(&buf, b"high");
        // Private: the guest's writes do not reach the file.
        back.write_slice(b"changed", GuestAddress(0))
            .expect("write");
        let mut on_disk = [0u8; 10];
        file.read_exact_at(&mut on_disk, HEADER_LEN)
            .expect("read file");
        assert_eq!(&on_disk, b"first page");
    }

    #[test]
    fn another_states_memory_or_a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
        let file = File::create(&path).expect("create");
        save(&mem, &file, &path, 41, None).expect("save");
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let err = check_header(&file, &path, 42, 1 << 20).expect_err("other id");
        assert!(matches!(err, MemoryFileError::NotOurs(_)), "{err}");
        file.set_len(HEADER_LEN + (1 << 19)).expect("truncate");
        let err = check_header(&file, &path, 41, 1 << 20).expect_err("truncated");
        assert!(err.to_string().contains("needs 1048576"), "{err}");
        let empty = dir.path().join("empty");
        let file = File::create(&empty).expect("create");
        assert!(matches!(
            check_header(&file, &empty, 41, 1 << 20),
            Err(MemoryFileError::NotOurs(_))
        ));
    }

    fn read_back(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(at)).expect("read");
        buf
    }

    #[test]
    fn untouched_pages_are_skipped_unread_and_touched_ones_kept() {
        let Some(pagemap) = PageMap::open() else {
            panic!("/proc/self/pagemap cannot be read");
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let len = 64usize << 20;
        let ranges = [(0u64, len as u64)];
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).expect("memory");
        let writes: [(u64, &[u8]); 3] = [
            (0x1000, b"low"),
            (0x200_0000 + 0x77, b"middle"),
            (len as u64 - 4, b"high"),
        ];
        for (at, bytes) in writes {
            mem.write_slice(bytes, GuestAddress(at)).expect("write");
        }
        let region = mem.iter().next().expect("a region");
        let may_hold = residency::pages_that_may_hold_data(Some(&pagemap), region);
        let candidates = may_hold.iter().filter(|m| **m).count();
        // At least the written pages; at most their transparent huge pages.
        assert!(
            (3..=3 * 512).contains(&candidates),
            "{candidates} of {} pages would be read",
            may_hold.len()
        );
        for (at, _) in writes {
            assert!(may_hold[at as usize / PAGE], "written page {at:#x} skipped");
        }

        let first = dir.path().join("first");
        let file = File::create(&first).expect("create");
        let stats = save(&mem, &file, &first, 1, Some(&pagemap)).expect("save");
        assert_eq!(stats.written, 3 * PAGE as u64);

        // Restored from that file: two pages changed, one added; the
        // untouched ones are not in this process's page tables, yet the
        // next save keeps them (the file has data there).
        let file = File::open(&first).expect("open");
        let restored = map(&file, &ranges).expect("map");
        restored
            .write_slice(b"LOW", GuestAddress(0x1000))
            .expect("write");
        restored
            .write_slice(b"new", GuestAddress(0x300_0000))
            .expect("write");
        let second = dir.path().join("second");
        let out = File::create(&second).expect("create");
        let stats = save(&restored, &out, &second, 2, Some(&pagemap)).expect("save");
        assert_eq!(stats.written, 4 * PAGE as u64);
        let file = File::open(&second).expect("open");
        check_header(&file, &second, 2, len as u64).expect("header");
        let back = map(&file, &ranges).expect("map");
        assert_eq!(read_back(&back, 0x1000, 3), b"LOW");
        assert_eq!(read_back(&back, 0x200_0077, 6), b"middle");
        assert_eq!(read_back(&back, len as u64 - 4, 4), b"high");
        assert_eq!(read_back(&back, 0x300_0000, 3), b"new");
        assert_eq!(read_back(&back, 0x100_0000, 8), [0u8; 8]);
    }
}
