//! Scatter-gather file I/O straight between a file and guest buffers.
//!
//! virtio-queue's `Reader`/`Writer` copy through ordinary Rust slices, so a
//! device that reads a file into a guest's buffers has to bounce the data
//! through a buffer of its own: two copies per byte. Here the guest's
//! buffers become an `iovec` list and one `preadv`/`pwritev` moves the data
//! between the page cache and guest memory, as Cloud Hypervisor and
//! Firecracker's block devices do.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;

use smallvec::SmallVec;
use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// A guest buffer list that does not lie inside guest memory.
#[derive(Debug, thiserror::Error)]
#[error("guest buffer at {addr:#x} ({len} bytes) is outside guest memory")]
pub struct OutsideGuestMemory {
    /// Guest-physical start of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: usize,
}

/// Guest buffers (guest-physical address, length) as host `iovec`s.
///
/// Borrows the guest memory for `'m`, so the mappings the `iovec`s point
/// into stay mapped as long as the list exists.
pub struct GuestIovecs<'m> {
    /// Never zero-length: one would make a finished transfer look unfinished.
    iovecs: SmallVec<[libc::iovec; 4]>,
    /// Keep the pointers valid (they pin a mapping on Xen-style memory).
    _guards: SmallVec<[PtrGuardMut; 4]>,
    len: usize,
    _mem: PhantomData<&'m GuestMemoryMmap>,
}

impl<'m> GuestIovecs<'m> {
    /// The host view of `buffers`; a buffer that spans two memory regions
    /// becomes two `iovec`s.
    pub fn new(
        mem: &'m GuestMemoryMmap,
        buffers: &[(GuestAddress, usize)],
    ) -> Result<Self, OutsideGuestMemory> {
        let mut iovecs = SmallVec::new();
        let mut guards = SmallVec::new();
        let mut len = 0usize;
        for &(addr, count) in buffers {
            let outside = || OutsideGuestMemory {
                addr: addr.0,
                len: count,
            };
            for slice in mem.get_slices(addr, count) {
                let slice = slice.map_err(|_| outside())?;
                if slice.is_empty() {
                    continue;
                }
                let guard = slice.ptr_guard_mut();
                iovecs.push(libc::iovec {
                    iov_base: guard.as_ptr().cast(),
                    iov_len: slice.len(),
                });
                guards.push(guard);
            }
            len = len.checked_add(count).ok_or_else(outside)?;
        }
        Ok(Self {
            iovecs,
            _guards: guards,
            len,
            _mem: PhantomData,
        })
    }

    /// Total bytes of the buffers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is nothing to transfer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills every buffer from `file` at `offset`; a file that ends first
    /// is an `UnexpectedEof` error.
    pub fn read_from(&self, file: &File, offset: u64) -> io::Result<()> {
        self.transfer(offset, |iov, count, at| {
            // SAFETY: `iov` points at `count` iovecs built in `new` from
            // slices of guest memory that `'m` keeps mapped; the kernel
            // writes only inside them.
            unsafe { libc::preadv(file.as_raw_fd(), iov, count, at) }
        })
    }

    /// Writes every buffer to `file` at `offset`.
    pub fn write_to(&self, file: &File, offset: u64) -> io::Result<()> {
        self.transfer(offset, |iov, count, at| {
            // SAFETY: as in `read_from`; the kernel only reads the buffers.
            unsafe { libc::pwritev(file.as_raw_fd(), iov, count, at) }
        })
    }

    /// Runs `op` until every byte moved, resuming after short transfers and
    /// EINTR.
    fn transfer(
        &self,
        offset: u64,
        op: impl Fn(*const libc::iovec, libc::c_int, libc::off_t) -> isize,
    ) -> io::Result<()> {
        let mut iovecs = self.iovecs.clone();
        let mut first = 0usize;
        let mut at = offset;
        while first < iovecs.len() {
            let rest = &iovecs[first..];
            // The kernel takes at most IOV_MAX entries per call.
            let count = rest.len().min(libc::UIO_MAXIOV as usize);
            let file_offset = libc::off_t::try_from(at)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let done = op(rest.as_ptr(), count as libc::c_int, file_offset);
            if done < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if done == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut done = done as usize;
            at += done as u64;
            while done > 0 {
                let v = &mut iovecs[first];
                if done >= v.iov_len {
                    done -= v.iov_len;
                    first += 1;
                } else {
                    // SAFETY: advancing inside the same buffer, `done` is
                    // less than its length.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(done) }.cast();
                    v.iov_len -= done;
                    done = 0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use vm_memory::Bytes;

    use super::*;

    fn two_regions() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
            .expect("memory")
    }

    #[test]
    fn reads_scatter_across_buffers_and_regions() {
        let mem = two_regions();
        let mut file = tempfile::tempfile().expect("temp file");
        let data: Vec<u8> = (0..0x900u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).expect("write");
        // 0x100 bytes at 0x10, then 0x700 bytes crossing the region border.
        let iov = GuestIovecs::new(
            &mem,
            &[(GuestAddress(0x10), 0x100), (GuestAddress(0xc00), 0x700)],
        )
        .expect("inside memory");
        assert_eq!(iov.len(), 0x800);
        iov.read_from(&file, 0x100).expect("read");
        let mut first = vec![0u8; 0x100];
        mem.read_slice(&mut first, GuestAddress(0x10))
            .expect("guest");
        assert_eq!(first, data[0x100..0x200]);
        let mut second = vec![0u8; 0x700];
        mem.read_slice(&mut second, GuestAddress(0xc00))
            .expect("guest");
        assert_eq!(second, data[0x200..0x900]);
    }

    #[test]
    fn writes_gather_and_a_short_file_is_an_error() {
        let mem = two_regions();
        mem.write_slice(&[1u8; 0x20], GuestAddress(0x100))
            .expect("guest");
        mem.write_slice(&[2u8; 0x30], GuestAddress(0x1800))
            .expect("guest");
        let file = tempfile::tempfile().expect("temp file");
        let iov = GuestIovecs::new(
            &mem,
            &[(GuestAddress(0x100), 0x20), (GuestAddress(0x1800), 0x30)],
        )
        .expect("inside memory");
        iov.write_to(&file, 8).expect("write");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut back).expect("read back");
        let mut expected = vec![0u8; 8];
        expected.extend([1u8; 0x20]);
        expected.extend([2u8; 0x30]);
        assert_eq!(back, expected);
        // Reading past the end of the file does not pass for success.
        let err = iov.read_from(&file, 0x40).expect_err("short file");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn buffers_outside_guest_memory_are_refused() {
        let mem = two_regions();
        assert!(GuestIovecs::new(&mem, &[(GuestAddress(0x1f00), 0x200)]).is_err());
        assert!(GuestIovecs::new(&mem, &[(GuestAddress(0x10_0000), 1)]).is_err());
        assert!(GuestIovecs::new(&mem, &[(GuestAddress(u64::MAX), 2)]).is_err());
    }
}
