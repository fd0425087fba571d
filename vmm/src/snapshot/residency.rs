//! Which guest pages can hold anything but zeros, found without reading
//! them: a snapshot of a large, mostly untouched guest would otherwise read
//! every page of its RAM only to find it zero (1.8 s for 4 GiB).
//!
//! - Anonymous RAM (a booted VM): a page the process never touched has no
//!   page table entry. `/proc/self/pagemap` says which pages are present
//!   or swapped out; every other page reads as zeros.
//! - RAM mapped privately from a memory file (a restored VM): a page not
//!   touched since the restore reads from the file, so it can hold data
//!   where the file has data (`SEEK_DATA`); the file's holes read as zeros.
//!
//! Whatever cannot be told (no pagemap, a short read, a failing `lseek`)
//! counts as "may hold data": the page is read and checked, as without
//! this module. Nothing here ever lets a page with data be skipped.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::{GuestMemoryRegion, GuestRegionMmap};

/// The host page size (x86_64).
pub const PAGE: usize = 4096;
/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
/// Entries read per `pread` (512 KiB of pagemap, 256 MiB of RAM).
const ENTRIES_PER_READ: usize = 64 * 1024;

/// The process's page map, opened before the VMM confines itself (the
/// main thread may not open files afterwards).
pub struct PageMap(File);

impl PageMap {
    /// Opens `/proc/self/pagemap`; None (logged) where it cannot be read,
    /// in which case every page is read and checked.
    pub fn open() -> Option<Self> {
        match File::open("/proc/self/pagemap") {
            Ok(file) => Some(Self(file)),
            Err(e) => {
                log::warn!("cannot open /proc/self/pagemap ({e}): snapshots read every page");
                None
            }
        }
    }

    /// Marks in `may_hold` (one entry per page of `region`) the pages the
    /// process has present or swapped out. Returns false if the map could
    /// not be read (the caller then reads every page).
    fn mark_resident(&self, region: &GuestRegionMmap, may_hold: &mut [bool]) -> bool {
        let first = region.as_ptr() as u64 / PAGE as u64;
        let mut buf = vec![0u8; ENTRIES_PER_READ * 8];
        for (n, slots) in may_hold.chunks_mut(ENTRIES_PER_READ).enumerate() {
            let bytes = &mut buf[..slots.len() * 8];
            let at = (first + (n * ENTRIES_PER_READ) as u64) * 8;
            if self.0.read_exact_at(bytes, at).is_err() {
                return false;
            }
            for (slot, entry) in slots.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut word = [0u8; 8];
                word.copy_from_slice(entry);
                *slot |= u64::from_le_bytes(word) & (PM_PRESENT | PM_SWAPPED) != 0;
            }
        }
        true
    }
}

/// One flag per page of `region`: false only for a page known to read as
/// zeros without being read. Without a page map, every page may hold data.
pub fn pages_that_may_hold_data(pagemap: Option<&PageMap>, region: &GuestRegionMmap) -> Vec<bool> {
    let pages = (region.len() as usize).div_ceil(PAGE);
    let Some(pagemap) = pagemap else {
        return vec![true; pages];
    };
    let mut may_hold = vec![false; pages];
    if let Some(backing) = region.file_offset() {
        if !mark_file_data(backing.file(), backing.start(), &mut may_hold) {
            return vec![true; pages];
        }
    }
    if !pagemap.mark_resident(region, &mut may_hold) {
        return vec![true; pages];
    }
    may_hold
}

/// Marks the pages of a private file mapping (`may_hold.len()` pages from
/// offset `start` of `file`) where the file has data. False if the file
/// cannot say.
fn mark_file_data(file: &File, start: u64, may_hold: &mut [bool]) -> bool {
    let end = start + (may_hold.len() * PAGE) as u64;
    let fd = file.as_raw_fd();
    let mut pos = start;
    while pos < end {
        // SAFETY: lseek on a descriptor the region owns; only its offset
        // changes, and the VMM reads the file at explicit offsets.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            // ENXIO: no data from `pos` to the end of the file.
            return std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
        }
        let data = data as u64;
        if data >= end {
            return true;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return false;
        }
        let hole = (hole as u64).min(end);
        let first = ((data - start) / PAGE as u64) as usize;
        let last = (((hole - start).div_ceil(PAGE as u64)) as usize).min(may_hold.len());
        for slot in &mut may_hold[first..last] {
            *slot = true;
        }
        pos = hole.max(data + 1);
    }
    true
}
