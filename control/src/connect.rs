//! `ec2lab connect`: a root shell in a running instance, or one command,
//! over the instance's vsock device, like Session Manager: no network, no
//! open port, no key. The guest side is `ec2lab-guest session`; the wire
//! format is [`ec2lab_guest::session_protocol`].
//!
//! The host end is the VMM's vsock Unix socket (Firecracker's
//! host-initiated handshake: `CONNECT <port>\n`, answered `OK <port>\n`).
//! Only root on the host can open it: the instance directory is the lab's.
//! With a terminal the session runs it in raw mode (so ^C, ^D and
//! full-screen programs reach the guest) and passes size changes through.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use ec2lab_guest::session_protocol::{Decoder, Frame, Open, MAX_PAYLOAD, SESSION_PORT};

/// How long the VMM and the guest have to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the terminal's size is looked at (a SIGWINCH handler would do
/// the same, with more machinery).
const RESIZE_POLL_MS: i32 = 250;

/// Why a session could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The VMM's vsock socket is not there or refused.
    #[error("cannot reach the instance's vsock socket {path}: {source}")]
    Socket {
        /// The socket.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The guest closed or refused the handshake.
    #[error(
        "the instance's agent does not serve sessions on vsock port {SESSION_PORT} \
         (still booting, or an image without `ec2lab-guest session`)"
    )]
    NoAgent,
    /// The guest refused or broke off the session.
    #[error("the instance refused the session: {0}")]
    Refused(String),
    /// The stream ended with no exit status.
    #[error("the session ended without an exit status")]
    Cut,
    /// The command did not finish in time.
    #[error("no exit status within {0:?}")]
    Timeout(Duration),
    /// The guest spoke something else.
    #[error("the instance broke the session protocol: {0}")]
    Protocol(#[from] ec2lab_guest::session_protocol::SessionError),
    /// Reading or writing the terminal or the socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ConnectError {
    move |source| ConnectError::Io { what, source }
}

/// Opens a session on the VMM vsock socket `vsock_uds` and relays this
/// process's standard streams until the guest reports an exit status,
/// which is returned. `command` empty: an interactive shell.
pub fn run(vsock_uds: &Path, command: &[String]) -> Result<i32, ConnectError> {
    session(vsock_uds, command, libc::STDIN_FILENO)
}

/// Runs `command` in the instance for the daemon itself: no input, output
/// discarded, and an error once `timeout` has passed without the exit
/// status. Returns the command's exit status.
pub fn exec_quietly(
    vsock_uds: &Path,
    command: &[String],
    timeout: Duration,
) -> Result<i32, ConnectError> {
    let deadline = Instant::now() + timeout;
    let devnull = std::fs::File::open("/dev/null").map_err(io("open /dev/null"))?;
    let mut sock = handshake(vsock_uds)?;
    send(&mut sock, &Frame::Open(Open::Exec(command.to_vec())))?;
    let sinks = Sinks {
        stdout: &mut std::io::sink(),
        stderr: &mut std::io::sink(),
    };
    relay(&mut sock, devnull.as_raw_fd(), false, sinks, Some(deadline))
}

/// Where a session's output goes.
struct Sinks<'a> {
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
}

/// [`run`] with input from `input`.
fn session(vsock_uds: &Path, command: &[String], input: RawFd) -> Result<i32, ConnectError> {
    let mut sock = handshake(vsock_uds)?;
    let terminal = is_terminal(input);
    let open = if command.is_empty() {
        let (rows, cols) = window_size().unwrap_or((24, 80));
        Open::Shell {
            rows,
            cols,
            term: std::env::var("TERM")
                .ok()
                .filter(|t| {
                    !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_graphic())
                })
                .unwrap_or_else(|| "xterm".to_string()),
        }
    } else {
        Open::Exec(command.to_vec())
    };
    let shell = matches!(open, Open::Shell { .. });
    send(&mut sock, &Frame::Open(open))?;
    // Raw only for a shell on a terminal; restored however this ends.
    let _raw = if shell && terminal {
        Some(RawMode::enter(input)?)
    } else {
        None
    };
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let sinks = Sinks {
        stdout: &mut stdout,
        stderr: &mut stderr,
    };
    relay(&mut sock, input, shell && terminal, sinks, None)
}

/// Connects to the guest's session port through the VMM.
fn handshake(vsock_uds: &Path) -> Result<UnixStream, ConnectError> {
    let socket_error = |source| ConnectError::Socket {
        path: vsock_uds.display().to_string(),
        source,
    };
    let mut sock = UnixStream::connect(vsock_uds).map_err(socket_error)?;
    sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(io("set a timeout"))?;
    sock.write_all(format!("CONNECT {SESSION_PORT}\n").as_bytes())
        .map_err(io("send the handshake"))?;
    // One byte at a time: what follows the line is already the session's.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 32 {
        match sock.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => return Err(ConnectError::NoAgent),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(ConnectError::NoAgent);
    }
    sock.set_read_timeout(None)
        .map_err(io("clear the timeout"))?;
    Ok(sock)
}

fn send(sock: &mut UnixStream, frame: &Frame) -> Result<(), ConnectError> {
    sock.write_all(&frame.encode())
        .map_err(io("write to the instance"))
}

/// Relays `input` to the guest and its output to `sinks` until the exit
/// status arrives (or `deadline` passes).
fn relay(
    sock: &mut UnixStream,
    input: RawFd,
    resizes: bool,
    sinks: Sinks<'_>,
    deadline: Option<Instant>,
) -> Result<i32, ConnectError> {
    let mut stdin_open = true;
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let mut size = if resizes { window_size() } else { None };
    let (stdout, stderr) = (sinks.stdout, sinks.stderr);
    let started = Instant::now();
    loop {
        let mut fds = vec![libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if stdin_open {
            fds.push(libc::pollfd {
                fd: input,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ConnectError::Timeout(
                        deadline.saturating_duration_since(started),
                    ));
                }
                let left = left.as_millis().min(i32::MAX as u128) as i32;
                if resizes {
                    left.min(RESIZE_POLL_MS)
                } else {
                    left
                }
            }
            None if resizes => RESIZE_POLL_MS,
            None => -1,
        };
        // SAFETY: `fds` is a live array of pollfd of the length passed.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io("poll")(e));
        }
        if resizes {
            let now = window_size();
            if now != size {
                if let Some((rows, cols)) = now {
                    send(sock, &Frame::Resize { rows, cols })?;
                }
                size = now;
            }
        }
        if fds[0].revents != 0 {
            // A guest that hung up while our last frame was on its way
            // resets the stream: that is the same cut as an end of stream.
            let n = match sock.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(io("read from the instance")(e)),
            };
            if n == 0 {
                return Err(ConnectError::Cut);
            }
            decoder.push(&buf[..n]);
            while let Some(frame) = decoder.next_frame()? {
                match frame {
                    Frame::Stdout(data) => {
                        stdout.write_all(&data).map_err(io("write stdout"))?;
                        stdout.flush().map_err(io("write stdout"))?;
                    }
                    Frame::Stderr(data) => {
                        stderr.write_all(&data).map_err(io("write stderr"))?;
                    }
                    Frame::Exit(status) => return Ok(status),
                    Frame::Failure(reason) => return Err(ConnectError::Refused(reason)),
                    other => {
                        return Err(ConnectError::Refused(format!("unexpected frame {other:?}")))
                    }
                }
            }
        }
        if stdin_open && fds.get(1).is_some_and(|p| p.revents != 0) {
            // Read the descriptor, not a buffered handle: poll judged it.
            // SAFETY: read(2) into a live buffer of the length passed.
            let n = unsafe { libc::read(input, buf.as_mut_ptr().cast(), buf.len()) };
            let frame = if n <= 0 {
                stdin_open = false;
                Frame::Close
            } else {
                Frame::Input(buf[..n as usize].to_vec())
            };
            // A guest that already hung up still has its last frames (the
            // exit status) in the socket: read those rather than fail here.
            if sock.write_all(&frame.encode()).is_err() {
                stdin_open = false;
            }
        }
    }
}

fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The controlling terminal's rows and columns, if stdout or stdin is one.
fn window_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        // SAFETY: winsize is plain integers; all zeroes is valid.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize into the live `ws`.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// The terminal in raw mode until dropped.
struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: RawFd) -> Result<Self, ConnectError> {
        // SAFETY: termios is plain integers; all zeroes is valid.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes the terminal's settings into `saved`.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io("read the terminal's settings")(
                std::io::Error::last_os_error(),
            ));
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the live copy in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr with a termios derived from the terminal's own.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io("put the terminal in raw mode")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same terminal.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A stand-in for the VMM's socket: answers the handshake with `answer`,
    /// checks the open frame, then sends `frames`.
    fn vmm(answer: &'static [u8], frames: Vec<Frame>) -> (tempfile::TempDir, std::path::PathBuf) {
        vmm_then(answer, frames, true)
    }

    /// [`vmm`], closing the stream after `frames` unless `linger`.
    fn vmm_then(
        answer: &'static [u8],
        frames: Vec<Frame>,
        linger: bool,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut line = [0u8; 13];
            s.read_exact(&mut line).expect("handshake");
            assert_eq!(&line, format!("CONNECT {SESSION_PORT}\n").as_bytes());
            s.write_all(answer).expect("answer");
            if answer.is_empty() {
                return;
            }
            let mut d = Decoder::default();
            let mut buf = [0u8; 256];
            while !matches!(d.next_frame(), Ok(Some(Frame::Open(_)))) {
                let n = s.read(&mut buf).expect("read");
                d.push(&buf[..n]);
            }
            for f in frames {
                s.write_all(&f.encode()).expect("frame");
            }
            if linger {
                // Stay until the client goes, as a guest would.
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            }
        });
        (dir, path)
    }

    fn run(path: &Path, command: &[String]) -> Result<i32, ConnectError> {
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        session(path, command, null.as_raw_fd())
    }

    #[test]
    fn the_guests_exit_status_is_the_sessions() {
        let (_dir, path) = vmm(
            b"OK 1073741824\n",
            vec![Frame::Stdout(b"0\n".to_vec()), Frame::Exit(42)],
        );
        let status = run(&path, &["id".into(), "-u".into()]).expect("session");
        assert_eq!(status, 42);
    }

    #[test]
    fn a_guest_without_the_session_service_is_named_as_such() {
        let (_dir, path) = vmm(b"", Vec::new());
        let err = run(&path, &["true".into()]).expect_err("no agent");
        assert!(matches!(err, ConnectError::NoAgent), "{err}");
        assert!(err.to_string().contains("ec2lab-guest session"));
    }

    #[test]
    fn a_refusal_and_a_cut_stream_are_errors_not_statuses() {
        let (_dir, path) = vmm(b"OK 5\n", vec![Frame::Failure("cannot run nope".into())]);
        let err = run(&path, &["nope".into()]).expect_err("refused");
        assert!(err.to_string().contains("cannot run nope"), "{err}");
        let (_dir, path) = vmm_then(b"OK 5\n", vec![Frame::Stdout(b"partial".to_vec())], false);
        let err = run(&path, &["x".into()]).expect_err("cut");
        assert!(matches!(err, ConnectError::Cut), "{err}");
    }

    #[test]
    fn a_missing_socket_names_its_path() {
        let err = run(Path::new("/nonexistent/ec2lab/vsock.sock"), &[]).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/ec2lab/vsock.sock"),
            "{err}"
        );
    }
}
