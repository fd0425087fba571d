//! The host side of the device, Firecracker's convention: one listening
//! AF_UNIX socket at the configured path for host-initiated connections
//! (the host writes `CONNECT <port>\n` and reads `OK <host port>\n`), and
//! `<path>_<port>` sockets that guest-initiated connections are forwarded to.

use std::io::{ErrorKind, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::VsockError;

/// Longest `CONNECT <port>\n` line accepted; a port has at most 10 digits.
pub const MAX_CONNECT_LINE: usize = 32;

/// Binds a non-blocking listener at `path`, replacing a stale socket file
/// left by an earlier run but never any other kind of file.
pub fn bind_listener(path: &Path) -> Result<UnixListener, VsockError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| VsockError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(VsockError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(source) => {
            return Err(VsockError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let bind_error = |source| VsockError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok(listener)
}

/// Where a guest connection to `port` is forwarded: `<uds_path>_<port>`.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut name = uds_path.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Connects to `path` without ever blocking: an AF_UNIX connect completes at
/// once or fails, except that a blocking one waits while the listener's
/// backlog is full, and a host program that stopped accepting must not
/// stall the device thread. That case fails with `WouldBlock` here.
pub fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain integers and bytes; all zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // Keep a NUL terminator: the kernel accepts a full sun_path, but
    // it is not portable and a truncated name would reach another socket.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            format!("socket path {} is too long", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain system call with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, initialised sockaddr_un of `len` bytes that
    // outlives the call, and `fd` is an open socket.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Parses `CONNECT <port>` (the newline already stripped).
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// What reading a host connection's first line came to.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectLine {
    /// Not all of it has arrived yet.
    Incomplete,
    /// A well-formed request for this guest port.
    Port(u32),
    /// A malformed or overlong line, end of file or an error: hang up.
    Invalid,
}

/// A host connection that has not yet said which guest port it wants.
pub struct PendingHost {
    /// The connection.
    pub stream: UnixStream,
    line: Vec<u8>,
}

impl PendingHost {
    /// Starts reading `stream`'s CONNECT line.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            line: Vec::with_capacity(MAX_CONNECT_LINE),
        }
    }

    /// Reads what has arrived of the CONNECT line. Reads a byte at a time
    /// so that data the host sends right after the line stays in the socket
    /// for the guest.
    pub fn read_line(&mut self) -> ConnectLine {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return ConnectLine::Invalid,
                Ok(_) if byte[0] == b'\n' => {
                    return match parse_connect_line(&self.line) {
                        Some(port) => ConnectLine::Port(port),
                        None => ConnectLine::Invalid,
                    };
                }
                Ok(_) => {
                    if self.line.len() + 1 >= MAX_CONNECT_LINE {
                        return ConnectLine::Invalid;
                    }
                    self.line.push(byte[0]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return ConnectLine::Incomplete,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return ConnectLine::Invalid,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn connect_lines_need_the_exact_verb_and_a_decimal_port() {
        assert_eq!(parse_connect_line(b"CONNECT 5000"), Some(5000));
        assert_eq!(parse_connect_line(b"CONNECT 5000\r"), Some(5000));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT +5",
            b"CONNECT ",
            b"CONNECT x",
            b"connect 5",
            b"CONNECT  5",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_connect_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stale_sockets_are_replaced_and_other_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("v.sock");
        drop(bind_listener(&sock).expect("first bind"));
        bind_listener(&sock).expect("rebind over the stale socket");
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").expect("file");
        let err = bind_listener(&file).expect_err("must refuse");
        assert!(err.to_string().contains("file"), "{err}");
        assert_eq!(std::fs::read(&file).expect("still there"), b"keep me");
    }

    #[test]
    fn nonblocking_connect_reaches_a_listener_and_fails_without_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = port_path(&dir.path().join("v.sock"), 52);
        assert!(path.to_string_lossy().ends_with("v.sock_52"));
        assert!(connect_nonblocking(&path).is_err());
        let listener = UnixListener::bind(&path).expect("bind");
        let mut s = connect_nonblocking(&path).expect("connect");
        s.write_all(b"x").expect("write");
        let (mut peer, _) = listener.accept().expect("accept");
        let mut b = [0u8; 1];
        peer.read_exact(&mut b).expect("read");
        assert_eq!(&b, b"x");
    }

    #[test]
    fn the_connect_line_leaves_following_data_in_the_socket() {
        let (mut host, ours) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("nonblocking");
        let mut pending = PendingHost::new(ours);
        host.write_all(b"CONNECT 7").expect("write");
        assert_eq!(pending.read_line(), ConnectLine::Incomplete);
        host.write_all(b"7\nhello").expect("write");
        assert_eq!(pending.read_line(), ConnectLine::Port(77));
        let mut rest = [0u8; 5];
        pending.stream.read_exact(&mut rest).expect("rest");
        assert_eq!(&rest, b"hello");
    }

    #[test]
    fn overlong_connect_lines_are_refused() {
        let (mut host, ours) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("nonblocking");
        let mut pending = PendingHost::new(ours);
        host.write_all(&[b'9'; 40]).expect("write");
        assert_eq!(pending.read_line(), ConnectLine::Invalid);
    }
}
