//! Snapshots: a paused VM saved to two files and started again from them
//! in a new VMM process, as Firecracker's snapshot/restore and EC2's
//! hibernation do.
//!
//! ```text
//! DIR/state    magic "EC2LABSN", format version, length, SHA-256, then JSON:
//!              the machine it fits, vCPU and VM state from KVM, every
//!              device's state (each device's own snapshot type, beside it)
//! DIR/memory   a 4 KiB header (magic, the state's memory id, size), then
//!              guest RAM, region after region; pages that are all zeros
//!              are holes, so the file is as sparse as the guest's memory
//! ```
//! `PUT /snapshot/create` writes both as `*.tmp` and renames them into
//! place, memory first. Each state names the memory file it was written
//! with (a random id in both), so a crash between the two renames leaves a
//! pair that is refused, never one that restores into the wrong memory.
//!
//! A VMM started with `--restore-from DIR` maps the memory file privately
//! (copy-on-write, pages read on first touch), so restore time does not
//! grow with the guest's RAM, and the file may be replaced or removed
//! while the VM runs.

pub mod memory;
pub mod residency;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::devices::cmos::CmosSnapshot;
use crate::devices::i8042::I8042Snapshot;
use crate::devices::serial::SerialSnapshot;
use crate::devices::virtio::mmio::TransportSnapshot;
use crate::vstate::persist::{VcpuState, VmState};

pub use ec2lab_vmm_api::snapshot::{MEMORY_FILE, MEMORY_TMP_FILE, STATE_FILE, STATE_TMP_FILE};
/// The flags every snapshot file is created with (the main thread's
/// seccomp filter allows `openat` in the snapshot directory with exactly
/// these).
pub const CREATE_FLAGS: libc::c_int =
    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW;

const MAGIC: &[u8; 8] = b"EC2LABSN";
/// The state format. Bump it when [`Snapshot`] changes shape; older
/// snapshots are refused rather than misread.
pub const VERSION: u32 = 1;
/// Magic, version, payload length, SHA-256 of the payload.
const HEADER_LEN: usize = 8 + 4 + 8 + 32;
/// No state is anywhere near this; a larger file is not ours.
const MAX_STATE_LEN: u64 = 64 << 20;

/// Errors saving or loading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The VM is running; snapshots are taken of a paused VM.
    #[error("the VM is running: pause it first (PUT /vm/state {{\"state\":\"Paused\"}})")]
    NotPaused,
    /// The VM was started without a snapshot directory.
    #[error("this VM has no snapshot directory (snapshot_dir in its config)")]
    NoDirectory,
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A vCPU could not save its state.
    #[error("cannot save the vCPU state: {0}")]
    Vcpu(String),
    /// KVM refused to give the VM's state.
    #[error("cannot save the VM state: {0}")]
    Vm(String),
    /// The state could not be encoded.
    #[error("cannot encode the snapshot: {0}")]
    Encode(serde_json::Error),
    /// Not a snapshot state file.
    #[error("{0} is not an ec2lab snapshot (bad magic)")]
    BadMagic(PathBuf),
    /// Written by another version of the format.
    #[error("{path} is a version {found} snapshot; this ec2lab-vmm reads version {VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("{0} is truncated")]
    Truncated(PathBuf),
    /// Larger than any state file.
    #[error("{0} is too large to be a snapshot state")]
    TooLarge(PathBuf),
    /// The payload does not match its checksum.
    #[error("{0} is corrupt (checksum mismatch)")]
    Checksum(PathBuf),
    /// The payload is not a snapshot of this format.
    #[error("{path} cannot be read: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// The memory file is not the one this state was written with.
    #[error("{0}")]
    Memory(#[from] memory::MemoryFileError),
    /// The snapshot is of another machine than the one configured.
    #[error("the snapshot does not fit this VM: {0}")]
    DoesNotFit(String),
}

/// What a snapshot must agree with to be restored: the host's CPU vendor
/// and the adaptations in force (a guest that started under one set of
/// CPUID workarounds must keep them), and the shape of the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// "Intel", "AMD".
    pub vendor: String,
    /// Whether the emulated-kernel workarounds were in force.
    pub emulated_kernel: bool,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// The hotplug (virtio-mem) region in bytes, plugged or not; the
    /// memory file holds it after the RAM (0 in snapshots written before
    /// there was one).
    #[serde(default)]
    pub hotplug_bytes: u64,
    /// The virtio devices' names, in guest order.
    pub devices: Vec<String>,
}

impl Machine {
    /// Why a snapshot of `self` cannot be restored as `here`, if it cannot.
    pub fn check_fits(&self, here: &Machine) -> Result<(), SnapshotError> {
        let unfit = |what: String| Err(SnapshotError::DoesNotFit(what));
        if self.vendor != here.vendor {
            return unfit(format!(
                "it was taken on an {} host, this host is {}",
                self.vendor, here.vendor
            ));
        }
        if self.emulated_kernel != here.emulated_kernel {
            let name = |e: bool| if e { "emulated-kernel" } else { "none" };
            return unfit(format!(
                "it was taken with CPU template {}, this VM has {}",
                name(self.emulated_kernel),
                name(here.emulated_kernel)
            ));
        }
        if self.vcpus != here.vcpus {
            return unfit(format!(
                "it has {} vCPU(s), the config {}",
                self.vcpus, here.vcpus
            ));
        }
        if self.memory_bytes != here.memory_bytes {
            return unfit(format!(
                "it has {} MiB of memory, the config {}",
                self.memory_bytes >> 20,
                here.memory_bytes >> 20
            ));
        }
        if self.hotplug_bytes != here.hotplug_bytes {
            return unfit(format!(
                "it has {} MiB of hotplug memory, the config {}",
                self.hotplug_bytes >> 20,
                here.hotplug_bytes >> 20
            ));
        }
        if self.devices != here.devices {
            return unfit(format!(
                "it has the devices [{}], the config [{}]",
                self.devices.join(", "),
                here.devices.join(", ")
            ));
        }
        Ok(())
    }
}

/// Everything a snapshot holds besides guest memory.
#[derive(Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// What it fits.
    pub machine: Machine,
    /// The id written into the memory file's header with it.
    pub memory_id: u64,
    /// The command line the guest booted with (reported by `GET /vm`).
    pub cmdline: String,
    /// Whether the virtio devices were declared on the command line.
    pub devices_on_cmdline: bool,
    /// The in-kernel PIT, clock and interrupt controllers.
    pub vm: VmState,
    /// Every vCPU, in order.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialSnapshot,
    /// The keyboard controller.
    pub i8042: I8042Snapshot,
    /// The CMOS clock (absent from snapshots written before it was saved).
    #[serde(default)]
    pub rtc: CmosSnapshot,
    /// Every virtio transport, in guest order.
    pub virtio: Vec<TransportSnapshot>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("machine", &self.machine)
            .field("memory_id", &format_args!("{:#x}", self.memory_id))
            .field("vcpus", &self.vcpus)
            .finish_non_exhaustive()
    }
}

/// A fresh id tying a state to its memory file.
pub fn new_memory_id() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Uniqueness, not secrecy, is what matters: fall back to the clock.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return now ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(bytes)
}

/// The state file's bytes for `snapshot`.
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, SnapshotError> {
    let payload = serde_json::to_vec(snapshot).map_err(SnapshotError::Encode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads a state file's bytes (`path` names it in errors).
pub fn decode(bytes: &[u8], path: &Path) -> Result<Snapshot, SnapshotError> {
    let path = || path.to_path_buf();
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(SnapshotError::BadMagic(path()));
    }
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| SnapshotError::Truncated(path()))?;
    let word = |range: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..range.len()].copy_from_slice(&header[range]);
        u64::from_le_bytes(b)
    };
    let version = word(8..12) as u32;
    if version != VERSION {
        return Err(SnapshotError::Version {
            path: path(),
            found: version,
        });
    }
    let len = word(12..20);
    let payload = usize::try_from(len)
        .ok()
        .and_then(|len| bytes.get(HEADER_LEN..HEADER_LEN.checked_add(len)?))
        .ok_or_else(|| SnapshotError::Truncated(path()))?;
    if bytes.len() != HEADER_LEN + payload.len() {
        return Err(SnapshotError::Checksum(path()));
    }
    if Sha256::digest(payload).as_slice() != &header[20..52] {
        return Err(SnapshotError::Checksum(path()));
    }
    serde_json::from_slice(payload).map_err(|source| SnapshotError::Decode {
        path: path(),
        source,
    })
}

/// A snapshot read from a directory, with its memory file open.
pub struct Loaded {
    /// The state.
    pub snapshot: Snapshot,
    /// The memory file, checked against the state; map it with
    /// [`memory::map`].
    pub memory: File,
}

/// Reads and checks the snapshot in `dir`. Nothing is trusted: the state's
/// size, magic, version and checksum are checked before it is parsed, and
/// the memory file must be the one written with it and hold the whole of
/// guest RAM.
pub fn load(dir: &Path) -> Result<Loaded, SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    let file = File::open(&state_path).map_err(io(&state_path))?;
    let size = file.metadata().map_err(io(&state_path))?.len();
    if size > MAX_STATE_LEN {
        return Err(SnapshotError::TooLarge(state_path));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_STATE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io(&state_path))?;
    let snapshot = decode(&bytes, &state_path)?;
    let memory_path = dir.join(MEMORY_FILE);
    let memory = File::open(&memory_path).map_err(io(&memory_path))?;
    memory::check_header(
        &memory,
        &memory_path,
        snapshot.memory_id,
        snapshot
            .machine
            .memory_bytes
            .saturating_add(snapshot.machine.hotplug_bytes),
    )?;
    Ok(Loaded { snapshot, memory })
}

/// The directory `PUT /snapshot/create` writes into, opened when the VMM
/// starts: once the guest runs, the main thread may create files only
/// relative to this descriptor (see `seccomp::MainDirs`).
pub struct SnapshotDir {
    path: PathBuf,
    fd: OwnedFd,
    /// Opened with the directory, while files may still be opened.
    pagemap: Option<residency::PageMap>,
}

impl SnapshotDir {
    /// Opens `path`, which must be an existing directory.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            path: path.to_path_buf(),
            // SAFETY: `fd` was just opened and is owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pagemap: residency::PageMap::open(),
        })
    }

    /// The descriptor, for the seccomp filter.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (or truncates) `name` in the directory, mode 0600.
    pub fn create(&self, name: &str) -> Result<File, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: self.path.join(name),
            source,
        };
        let c = std::ffi::CString::new(name)
            .map_err(|_| io(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
        // SAFETY: `c` is a NUL-terminated name that outlives the call; the
        // directory descriptor is owned by `self`.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), CREATE_FLAGS, 0o600) };
        if fd < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Writes a snapshot: memory and state under temporary names, each
    /// synced, then renamed into place, memory first (see the module
    /// documentation for why a crash in between is harmless).
    pub fn write(
        &self,
        state: &[u8],
        mem: &vm_memory::GuestMemoryMmap,
        memory_id: u64,
    ) -> Result<memory::SaveStats, SnapshotError> {
        let file = self.create(MEMORY_TMP_FILE)?;
        let stats = memory::save(
            mem,
            &file,
            &self.path.join(MEMORY_TMP_FILE),
            memory_id,
            self.pagemap.as_ref(),
        )?;
        drop(file);
        let io = |source| SnapshotError::Io {
            path: self.path.join(STATE_TMP_FILE),
            source,
        };
        let mut file = self.create(STATE_TMP_FILE)?;
        std::io::Write::write_all(&mut file, state).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        self.rename(MEMORY_TMP_FILE, MEMORY_FILE)?;
        self.rename(STATE_TMP_FILE, STATE_FILE)?;
        // SAFETY: fsync on a descriptor `self` owns.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            log::warn!(
                "cannot sync {}: {}",
                self.path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(stats)
    }

    /// Renames `from` to `to` within the directory (atomically replacing `to`).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: self.path.join(to),
            source,
        };
        let (Ok(f), Ok(t)) = (std::ffi::CString::new(from), std::ffi::CString::new(to)) else {
            return Err(io(std::io::Error::from(std::io::ErrorKind::InvalidInput)));
        };
        let dir = self.fd.as_raw_fd();
        // SAFETY: both names are NUL-terminated and outlive the call; the
        // directory descriptor is owned by `self`.
        if unsafe { libc::renameat(dir, f.as_ptr(), dir, t.as_ptr()) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
