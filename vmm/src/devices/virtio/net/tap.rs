//! A Linux tap interface opened through /dev/net/tun: the host end of a
//! guest's network card. Frames cross it with a 12-byte virtio-net header
//! in front, so the guest's checksum and segmentation offloads pass through
//! to the host stack untouched.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size of `struct virtio_net_hdr_v1`, the header every frame on the tap
/// carries (VIRTIO_F_VERSION_1 always has the `num_buffers` field).
pub const VNET_HDR_LEN: usize = 12;

/// Offloads a tap can be asked to deliver (`TUN_F_*`), in the order they
/// are given up when a kernel refuses one.
const ALL_OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN | libc::TUN_F_UFO;

/// Errors attaching to a tap interface.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error("invalid tap interface name {name:?}: 1 to 15 bytes without NUL")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun for tap {name}: {source}")]
    OpenTun {
        /// The interface.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// TUNSETIFF refused: no permission to create or attach, the interface
    /// is busy or is not a tap.
    #[error("cannot attach to tap interface {name}: {source} (does it exist as a tap owned by this user?)")]
    Attach {
        /// The interface.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The virtio-net header size could not be set.
    #[error("cannot set the vnet header size of tap {name}: {source}")]
    VnetHeader {
        /// The interface.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The offloads could not be changed.
    #[error("cannot set offloads {flags:#x} on tap {name}: {source}")]
    Offload {
        /// The interface.
        name: String,
        /// The `TUN_F_*` flags asked for.
        flags: u32,
        /// Why.
        source: std::io::Error,
    },
}

/// An open tap interface, non-blocking, with virtio-net headers.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// `TUN_F_*` offloads the kernel accepted when probed at open.
    supported_offloads: u32,
}

/// An `ifreq` naming `name`.
pub(super) fn ifreq(name: &str) -> Option<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return None;
    }
    // SAFETY: ifreq is a C struct of a char array and a union of plain
    // integers, arrays and a pointer; all zeroes is a valid value of each.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Some(req)
}

impl Tap {
    /// Attaches to tap interface `name` (creating it if the caller may, as
    /// TUNSETIFF does), with 12-byte vnet headers and no offloads yet.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let mut req = ifreq(name).ok_or_else(|| TapError::InvalidName {
            name: name.to_string(),
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_string(),
                source,
            })?;
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one ifreq, and `req` is a live,
        // initialised ifreq for the duration of the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at `hdr_len`, alive for the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(TapError::VnetHeader {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let mut tap = Self {
            file,
            name: name.to_string(),
            supported_offloads: 0,
        };
        tap.supported_offloads = tap.probe_offloads();
        Ok(tap)
    }

    /// The offloads this kernel's tap accepts: all of them, or all but UFO
    /// (dropped from some kernels), or none. Leaves the tap with none set,
    /// so no offloaded frame reaches a guest that has not asked for it.
    fn probe_offloads(&self) -> u32 {
        let supported = [ALL_OFFLOADS, ALL_OFFLOADS & !libc::TUN_F_UFO]
            .into_iter()
            .find(|flags| self.set_offload(*flags).is_ok())
            .unwrap_or(0);
        if let Err(e) = self.set_offload(0) {
            log::warn!("{e}");
        }
        supported
    }

    /// Sets which offloaded frames (`TUN_F_*`) the kernel may hand us: the
    /// ones the guest said it can take.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // passed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// `TUN_F_*` offloads the kernel accepted when the tap was opened.
    pub fn supported_offloads(&self) -> u32 {
        self.supported_offloads
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (vnet header first); `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Reads one frame scattered over `bufs`.
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> std::io::Result<usize> {
        (&self.file).read_vectored(bufs)
    }

    /// Writes one frame (vnet header first).
    pub fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(buf)
    }

    /// Writes one frame gathered from `bufs`.
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for name in ["", "0123456789abcdef", "ta\0p"] {
            let err = Tap::open(name).expect_err(name);
            assert!(matches!(err, TapError::InvalidName { .. }), "{err}");
        }
    }
}
