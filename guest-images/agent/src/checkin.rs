//! The check-in step: tells the control plane, over virtio-vsock, that the
//! agent is up, which turns the instance's status check to `ok`.
//!
//! It runs first and independently of the metadata service: vsock needs no
//! network, and an instance with no metadata service still reports in. It
//! never fails the boot: no vsock device is `skipped`, a host that never
//! answers is `failed` after [`ATTEMPTS`] bounded tries.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use ec2lab_guest::checkin_protocol::{Answer, CheckIn, ProtocolError, CHECKIN_PORT, MAX_LINE};

use crate::log::Done;

/// Tries before giving up: the daemon may be restarting while its VMM runs.
const ATTEMPTS: u32 = 5;

/// Pause between tries.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Deadline for each connect, send and answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the kernel says which boot this is.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Why a check-in failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckinError {
    /// The boot id could not be read or is not one.
    #[error("boot id from {BOOT_ID_PATH}: {0}")]
    BootId(String),
    /// A socket call failed.
    #[error("{what}: {source}")]
    Io {
        /// The call.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The host's answer is not the protocol's.
    #[error("answer: {0}")]
    Answer(#[from] ProtocolError),
    /// The host refused the check-in.
    #[error("refused by the host: {0}")]
    Refused(String),
    /// Every try failed; the last error says why.
    #[error("no answer after {ATTEMPTS} tries: {0}")]
    GaveUp(Box<CheckinError>),
}

impl CheckinError {
    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> CheckinError {
        move |source| CheckinError::Io { what, source }
    }

    /// The guest has no vsock transport to the host: nothing to retry.
    fn is_no_vsock(&self) -> bool {
        matches!(self, CheckinError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENODEV | libc::EAFNOSUPPORT | libc::ENETUNREACH)))
    }
}

/// Checks in; `Skipped` when the instance has no vsock device.
pub fn run() -> Result<Done, CheckinError> {
    let boot_id =
        std::fs::read_to_string(BOOT_ID_PATH).map_err(|e| CheckinError::BootId(e.to_string()))?;
    let checkin = CheckIn::new(&boot_id).map_err(|e| CheckinError::BootId(e.to_string()))?;
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        match check_in_once(&checkin) {
            Ok(()) => {
                return Ok(Done::Ok(format!(
                    "host CID {} port {CHECKIN_PORT} (boot {})",
                    libc::VMADDR_CID_HOST,
                    checkin.boot_id()
                )))
            }
            Err(e) if e.is_no_vsock() => return Ok(Done::Skipped("no vsock".to_string())),
            // A refusal or an answer in another protocol will not change
            // on a retry; a connection closed before the answer might.
            Err(e @ CheckinError::Refused(_)) => return Err(e),
            Err(e @ CheckinError::Answer(ProtocolError::BadAnswer(_))) => return Err(e),
            Err(e) => last = Some(e),
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(RETRY_PAUSE);
        }
    }
    Err(CheckinError::GaveUp(Box::new(last.unwrap_or(
        CheckinError::Refused("no attempt made".to_string()),
    ))))
}

/// One connection: send the line, read the answer.
fn check_in_once(checkin: &CheckIn) -> Result<(), CheckinError> {
    let mut stream = connect_host(CHECKIN_PORT)?;
    stream
        .write_all(checkin.line().as_bytes())
        .map_err(CheckinError::io("send"))?;
    let mut answer = Vec::with_capacity(MAX_LINE);
    let mut byte = [0u8; 1];
    // Byte by byte up to the newline: the answer is a few bytes, and
    // reading no further leaves nothing unread when the host closes.
    while answer.len() <= MAX_LINE && answer.last() != Some(&b'\n') {
        match stream
            .read(&mut byte)
            .map_err(CheckinError::io("receive"))?
        {
            0 => break,
            _ => answer.push(byte[0]),
        }
    }
    match Answer::parse(&answer)? {
        Answer::Ok => Ok(()),
        Answer::Error(reason) => Err(CheckinError::Refused(reason)),
    }
}

/// A connected AF_VSOCK stream to the host on `port`, with [`IO_TIMEOUT`]
/// on every read and write.
fn connect_host(port: u32) -> Result<File, CheckinError> {
    // SAFETY: plain system call with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(CheckinError::io("socket")(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: `timeout` is a live timeval and its exact size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::addr_of!(timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(CheckinError::io("setsockopt")(
                std::io::Error::last_os_error(),
            ));
        }
    }
    // SAFETY: sockaddr_vm is plain integers and bytes; all zeroes is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_HOST;
    addr.svm_port = port;
    // SAFETY: `addr` is a live sockaddr_vm and its exact size is passed; the
    // socket is ours. The kernel bounds the connect by its vsock timeout.
    let rc = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(CheckinError::io("connect")(std::io::Error::last_os_error()));
    }
    Ok(File::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_vsock_transport_is_not_retried_but_a_refused_connection_is() {
        let no_device =
            CheckinError::io("connect")(std::io::Error::from_raw_os_error(libc::ENODEV));
        assert!(no_device.is_no_vsock());
        let refused =
            CheckinError::io("connect")(std::io::Error::from_raw_os_error(libc::ECONNRESET));
        assert!(!refused.is_no_vsock());
    }
}
