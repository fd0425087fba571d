//! Room kept on the data directory's disk for the database, so that a
//! full disk does not take the API down: root volumes are sparse and grow
//! as guests write, and once the disk is full even TerminateInstances (the
//! very call that frees space) would fail to record its state.
//!
//! The daemon keeps a reserve file of [`DiskReserve::SIZE`] bytes,
//! allocated (not sparse) in the data directory. Before each database
//! write, if the disk has less than [`DiskReserve::LOW_WATER`] free, the
//! file is removed: the write, and the ones after it, find that space. The
//! file comes back once the disk has room for it again (the daemon checks
//! every 5 s). Launches already stop
//! below `lifecycle::DISK_RESERVE_BYTES` free, so only guests writing into
//! their volumes, or other programs, can bring the disk this far.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::db::KeptRoom;

/// The reserve file and what it is for.
#[derive(Debug)]
pub struct DiskReserve {
    path: PathBuf,
    /// Serialises creating and removing the file.
    lock: Mutex<()>,
}

impl DiskReserve {
    /// Bytes kept.
    pub const SIZE: u64 = 64 << 20;
    /// Free bytes below which the reserve is given back.
    pub const LOW_WATER: u64 = 32 << 20;
    /// Free bytes the disk must have, beyond the reserve, to take it again.
    const REFILL_MARGIN: u64 = 256 << 20;

    /// The reserve at `<data_dir>/reserve` (not created yet: see
    /// [`DiskReserve::replenish`]).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("reserve"),
            lock: Mutex::new(()),
        }
    }

    /// The reserve file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the reserve file is there.
    pub fn held(&self) -> bool {
        self.path.exists()
    }

    /// Creates the reserve if it is missing and the disk has room for it
    /// and a margin. Returns whether it is held afterwards.
    pub fn replenish(&self) -> bool {
        let _guard = crate::lock(&self.lock);
        if self.held() {
            return true;
        }
        match self.free() {
            Some(free) if free >= Self::SIZE + Self::REFILL_MARGIN => {}
            _ => return false,
        }
        match allocate(&self.path, Self::SIZE) {
            Ok(()) => {
                log::info!(
                    "keeping {} MiB in {} for the database on a full disk",
                    Self::SIZE >> 20,
                    self.path.display()
                );
                true
            }
            Err(e) => {
                log::warn!("cannot keep room in {}: {e}", self.path.display());
                let _ = std::fs::remove_file(&self.path);
                false
            }
        }
    }

    /// Free bytes on the disk that holds the reserve.
    fn free(&self) -> Option<u64> {
        free_bytes(self.path.parent()?)
    }

    fn give_back(&self, why: &str) {
        let _guard = crate::lock(&self.lock);
        match std::fs::remove_file(&self.path) {
            Ok(()) => log::warn!(
                "{why}: gave the database the {} MiB kept in {}",
                Self::SIZE >> 20,
                self.path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::error!("cannot remove {}: {e}", self.path.display()),
        }
    }
}

impl KeptRoom for DiskReserve {
    fn before_write(&self) {
        // One statvfs per write; the file itself is looked at only when the
        // disk is nearly full (giving back a reserve already gone is a no-op).
        if self.free().is_some_and(|free| free < Self::LOW_WATER) {
            self.give_back("the disk is nearly full");
        }
    }

    fn release(&self) {
        self.give_back("the disk is full");
    }
}

/// Free bytes on the file system holding the existing directory `dir`, as
/// unprivileged users see them: root's own reserve is not counted on, as
/// the guests' volumes are written by root too.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is plain old data, filled in by the call below.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a statvfs we own.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Creates `path` (0600) with `size` bytes allocated on disk.
fn allocate(path: &Path, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // SAFETY: fallocate on a descriptor we own; mode 0 allocates.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_allocated_private_and_given_back_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reserve = DiskReserve::new(dir.path());
        assert!(!reserve.held());
        assert!(reserve.replenish(), "this disk has room for 64 MiB");
        let meta = std::fs::metadata(reserve.path()).expect("reserve file");
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(meta.len(), DiskReserve::SIZE);
        assert!(
            meta.blocks() * 512 >= DiskReserve::SIZE,
            "the reserve is sparse"
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // A disk with room does not give it back before a write.
        reserve.before_write();
        assert!(reserve.held());
        reserve.release();
        assert!(!reserve.held());
        reserve.release();
        assert!(reserve.replenish());
    }
}
