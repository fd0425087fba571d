//! The session service behind `ec2lab connect`: listens on vsock port
//! [`SESSION_PORT`] and gives each host connection a root login shell on a
//! pseudo-terminal, or runs one command with pipes, relaying frames of
//! [`ec2lab_guest::session_protocol`] both ways.
//!
//! One process per session (forked), no threads: the service itself only
//! accepts. At most [`MAX_SESSIONS`] run at once; the host must send its
//! `Open` frame within [`OPEN_TIMEOUT`]. A host that goes away hangs up the
//! session's process group, as a terminal would.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ec2lab_guest::session_protocol::{Decoder, Frame, Open, MAX_PAYLOAD, SESSION_PORT};

/// Sessions served at once; the next connection is refused with a reason.
pub const MAX_SESSIONS: usize = 8;

/// How long the host has to say what it wants.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long output is still relayed after the shell or command ended
/// (what a background job still holding the terminal writes is cut).
const DRAIN: Duration = Duration::from_secs(1);

/// Why the service cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// The call.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SessionError {
    move |source| SessionError::Io { what, source }
}

fn last(what: &'static str) -> SessionError {
    io(what)(std::io::Error::last_os_error())
}

/// Serves sessions until the listening socket fails. Never returns `Ok`.
pub fn serve() -> Result<(), SessionError> {
    let listener = listen(SESSION_PORT)?;
    crate::log::line(
        "session",
        crate::log::Outcome::Ok,
        format!("listening on vsock port {SESSION_PORT}"),
    );
    let mut active = 0usize;
    loop {
        // SAFETY: accept4 on our listening socket with no address buffer.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io("accept")(e));
        }
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        let mut conn = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // Sessions that ended since the last connection.
        // SAFETY: waitpid with a null status pointer only reaps children.
        while active > 0 && unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {
            active -= 1;
        }
        if active >= MAX_SESSIONS {
            let refusal = format!("{MAX_SESSIONS} sessions are open already");
            let _ = conn.write_all(&Frame::Failure(refusal).encode());
            continue;
        }
        // SAFETY: the agent is single-threaded, so the child may run Rust
        // code (allocate, spawn) before it exits.
        match unsafe { libc::fork() } {
            0 => {
                drop(listener);
                let code = match session(conn) {
                    Ok(()) => 0,
                    Err(_) => 1,
                };
                // SAFETY: ends the forked session process without running
                // the parent's exit handlers twice.
                unsafe { libc::_exit(code) };
            }
            pid if pid > 0 => active += 1,
            _ => {
                let _ = conn.write_all(&Frame::Failure("cannot fork".into()).encode());
            }
        }
    }
}

/// A listening AF_VSOCK stream socket on `port`, any CID.
fn listen(port: u32) -> Result<OwnedFd, SessionError> {
    // SAFETY: plain system call with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last("socket"));
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain integers and bytes; all zeroes is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = port;
    // SAFETY: `addr` is a live sockaddr_vm and its exact size is passed.
    let rc = unsafe {
        libc::bind(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(last("bind"));
    }
    // SAFETY: listen on our bound socket.
    if unsafe { libc::listen(fd, MAX_SESSIONS as i32) } < 0 {
        return Err(last("listen"));
    }
    Ok(socket)
}

/// Sets (or with `None` clears) the receive timeout of `fd`.
fn receive_timeout(fd: RawFd, timeout: Option<Duration>) -> Result<(), SessionError> {
    let t = timeout.unwrap_or_default();
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a live timeval and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(last("setsockopt"));
    }
    Ok(())
}

/// One session, in its own process: reads the `Open` frame, starts the
/// shell or command, relays until it ends, reports its status.
fn session(mut conn: File) -> Result<(), SessionError> {
    receive_timeout(conn.as_raw_fd(), Some(OPEN_TIMEOUT))?;
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let open = loop {
        match decoder.next_frame() {
            Ok(Some(Frame::Open(open))) => break open,
            Ok(Some(_)) => return fail(&mut conn, "the first frame must open the session"),
            Err(e) => return fail(&mut conn, &e.to_string()),
            Ok(None) => {}
        }
        let n = conn.read(&mut buf).map_err(io("read the open frame"))?;
        if n == 0 {
            return Ok(());
        }
        decoder.push(&buf[..n]);
    };
    receive_timeout(conn.as_raw_fd(), None)?;
    let mut running = match start(&open) {
        Ok(r) => r,
        Err(e) => return fail(&mut conn, &e),
    };
    let status = relay(&mut conn, &mut decoder, &mut running)?;
    conn.write_all(&Frame::Exit(status).encode())
        .map_err(io("write the exit status"))
}

/// Tells the host why the session is over.
fn fail(conn: &mut File, reason: &str) -> Result<(), SessionError> {
    conn.write_all(&Frame::Failure(reason.to_string()).encode())
        .map_err(io("write the failure"))
}

/// A started shell or command and the session's ends of its streams.
struct Running {
    child: Child,
    /// Where input goes: the pty's master, or the command's stdin pipe.
    input: Option<File>,
    /// The pty's master (shells), for resizes.
    terminal: Option<RawFd>,
    /// stdout (or the pty master), then stderr (commands only).
    outputs: [Option<File>; 2],
}

fn start(open: &Open) -> Result<Running, String> {
    match open {
        Open::Shell { rows, cols, term } => {
            let (master, slave) = openpty(*rows, *cols).map_err(|e| e.to_string())?;
            let stdio = |f: &File| f.try_clone().map(Stdio::from).map_err(|e| e.to_string());
            let mut shell = Command::new("/bin/sh");
            shell
                .arg0("-sh")
                .env_clear()
                .env("TERM", term)
                .env("HOME", "/root")
                .env("USER", "root")
                .env("LOGNAME", "root")
                .env("SHELL", "/bin/sh")
                .env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
                .current_dir(if std::path::Path::new("/root").is_dir() {
                    "/root"
                } else {
                    "/"
                })
                .stdin(stdio(&slave)?)
                .stdout(stdio(&slave)?)
                .stderr(stdio(&slave)?);
            // SAFETY: setsid and ioctl are async-signal-safe; the child
            // becomes a session leader and takes the pty (its stdin) as its
            // controlling terminal, so job control and ^C work.
            unsafe {
                shell.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = shell
                .spawn()
                .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
            drop(slave);
            let output = master.try_clone().map_err(|e| e.to_string())?;
            let fd = master.as_raw_fd();
            Ok(Running {
                child,
                terminal: Some(fd),
                input: Some(master),
                outputs: [Some(output), None],
            })
        }
        Open::Exec(argv) => {
            let mut command = Command::new(&argv[0]);
            command
                .args(&argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: setsid is async-signal-safe; its own process group
            // lets a hang-up reach everything the command started.
            unsafe {
                command.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
            let mut child = command
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
            let input = child.stdin.take().map(|s| File::from(OwnedFd::from(s)));
            let out = child.stdout.take().map(|s| File::from(OwnedFd::from(s)));
            let err = child.stderr.take().map(|s| File::from(OwnedFd::from(s)));
            Ok(Running {
                child,
                input,
                terminal: None,
                outputs: [out, err],
            })
        }
    }
}

/// A pseudo-terminal of `rows` × `cols`: (master, slave).
fn openpty(rows: u16, cols: u16) -> std::io::Result<(File, File)> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors; name and termios are null,
    // the size is a live winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    for fd in [master, slave] {
        // SAFETY: sets close-on-exec on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: openpty just returned these descriptors; nothing else owns them.
    unsafe {
        Ok((
            File::from(OwnedFd::from_raw_fd(master)),
            File::from(OwnedFd::from_raw_fd(slave)),
        ))
    }
}

/// Relays until the shell or command has ended and its output is read;
/// returns its status as a shell reports it.
fn relay(
    conn: &mut File,
    decoder: &mut Decoder,
    running: &mut Running,
) -> Result<i32, SessionError> {
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let mut ended: Option<(i32, Instant)> = None;
    // What came in the same read as the open frame (a host with input
    // ready sends it at once) is acted on before waiting for more.
    if !apply_frames(conn, decoder, running)? {
        hang_up(&mut running.child);
        return Ok(129);
    }
    loop {
        if ended.is_none() {
            if let Some(status) = running.child.try_wait().map_err(io("wait"))? {
                let code = status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(1);
                ended = Some((code, Instant::now()));
            }
        }
        if let Some((code, at)) = ended {
            if running.outputs.iter().all(Option::is_none) || at.elapsed() > DRAIN {
                return Ok(code);
            }
        }
        let mut fds = vec![libc::pollfd {
            fd: conn.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for out in running.outputs.iter().flatten() {
            fds.push(libc::pollfd {
                fd: out.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a live array of pollfd of the length passed.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io("poll")(e));
        }
        if fds[0].revents != 0 && !from_host(conn, decoder, running, &mut buf)? {
            hang_up(&mut running.child);
            return Ok(129);
        }
        for (i, tag) in [(0usize, true), (1, false)] {
            let Some(out) = running.outputs[i].as_mut() else {
                continue;
            };
            let ready = fds
                .iter()
                .any(|p| p.fd == out.as_raw_fd() && p.revents != 0);
            if !ready {
                continue;
            }
            match out.read(&mut buf) {
                // EIO: the pty's last slave end closed.
                Ok(0) | Err(_) => running.outputs[i] = None,
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    let frame = if tag {
                        Frame::Stdout(data)
                    } else {
                        Frame::Stderr(data)
                    };
                    conn.write_all(&frame.encode())
                        .map_err(io("write output"))?;
                }
            }
        }
    }
}

/// Reads what the host sent and acts on it; `false` once the host is gone
/// or broke the protocol.
fn from_host(
    conn: &mut File,
    decoder: &mut Decoder,
    running: &mut Running,
    buf: &mut [u8],
) -> Result<bool, SessionError> {
    let n = match conn.read(buf) {
        Ok(0) | Err(_) => return Ok(false),
        Ok(n) => n,
    };
    decoder.push(&buf[..n]);
    apply_frames(conn, decoder, running)
}

/// Acts on every whole frame the decoder holds; `false` once the host
/// broke the protocol.
fn apply_frames(
    conn: &mut File,
    decoder: &mut Decoder,
    running: &mut Running,
) -> Result<bool, SessionError> {
    loop {
        match decoder.next_frame() {
            Ok(None) => return Ok(true),
            Ok(Some(Frame::Input(data))) => {
                if let Some(input) = running.input.as_mut() {
                    // A command that closed its stdin simply gets no more.
                    if input.write_all(&data).is_err() {
                        running.input = None;
                    }
                }
            }
            Ok(Some(Frame::Close)) => {
                // A shell's terminal stays; a command sees end of file.
                if running.terminal.is_none() {
                    running.input = None;
                }
            }
            Ok(Some(Frame::Resize { rows, cols })) => {
                if let Some(fd) = running.terminal {
                    let size = libc::winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ on our pty master with a live winsize;
                    // the kernel signals SIGWINCH to the foreground group.
                    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) };
                }
            }
            Ok(Some(other)) => {
                let reason = format!("unexpected frame from the host: {other:?}");
                let _ = fail(conn, &reason);
                return Ok(false);
            }
            Err(e) => {
                let _ = fail(conn, &e.to_string());
                return Ok(false);
            }
        }
    }
}

/// Hangs up the session's process group, then makes sure its leader ends.
fn hang_up(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signals the process group our child leads (setsid).
        unsafe { libc::kill(-pid, libc::SIGHUP) };
    }
    std::thread::sleep(Duration::from_millis(200));
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `open` through `start` and `relay` over a socket pair, as the
    /// service would on a vsock connection, with `input` from the host.
    /// Runs a whole session as the service would on a vsock connection:
    /// the host's open frame and `input` all sent at once, before the
    /// session reads anything. The frames the host got, and the status.
    fn run(open: Open, input: &[Frame]) -> (Vec<Frame>, i32) {
        let (host, guest) = std::os::unix::net::UnixStream::pair().expect("pair");
        let mut host = File::from(OwnedFd::from(host));
        let guest = File::from(OwnedFd::from(guest));
        let mut wire = Frame::Open(open).encode();
        for f in input {
            wire.extend(f.encode());
        }
        host.write_all(&wire).expect("write");
        session(guest).expect("session");
        let mut got = Vec::new();
        receive_timeout(host.as_raw_fd(), Some(Duration::from_millis(200))).expect("timeout");
        let _ = host.read_to_end(&mut got);
        let mut d = Decoder::default();
        d.push(&got);
        let mut frames = Vec::new();
        while let Some(f) = d.next_frame().expect("valid frames") {
            frames.push(f);
        }
        let Some(Frame::Exit(status)) = frames.pop() else {
            panic!("the session did not end with an exit status: {frames:?}");
        };
        (frames, status)
    }

    fn stream(frames: &[Frame], which: fn(&Frame) -> Option<&Vec<u8>>) -> String {
        let bytes: Vec<u8> = frames.iter().filter_map(which).flatten().copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn stdout(f: &Frame) -> Option<&Vec<u8>> {
        match f {
            Frame::Stdout(d) => Some(d),
            _ => None,
        }
    }

    fn stderr(f: &Frame) -> Option<&Vec<u8>> {
        match f {
            Frame::Stderr(d) => Some(d),
            _ => None,
        }
    }

    #[test]
    fn a_command_gets_its_input_and_returns_both_streams_and_its_status() {
        let argv = ["sh", "-c", "tr a-z A-Z; echo oops >&2; exit 7"];
        let (frames, status) = run(
            Open::Exec(argv.iter().map(|s| s.to_string()).collect()),
            &[Frame::Input(b"hello\n".to_vec()), Frame::Close],
        );
        assert_eq!(status, 7);
        assert_eq!(stream(&frames, stdout), "HELLO\n");
        assert_eq!(stream(&frames, stderr), "oops\n");
    }

    fn shell(rows: u16, cols: u16) -> Open {
        Open::Shell {
            rows,
            cols,
            term: "vt100".into(),
        }
    }

    #[test]
    fn a_shell_runs_as_a_login_shell_on_a_terminal_of_the_size_asked() {
        let line = b"stty size; echo term=$TERM; [ -t 0 ] && echo tty; exit 3\n";
        let (frames, status) = run(shell(24, 80), &[Frame::Input(line.to_vec())]);
        assert_eq!(status, 3);
        let out = stream(&frames, stdout);
        assert!(out.contains("24 80"), "{out}");
        assert!(out.contains("term=vt100"), "{out}");
        assert!(out.contains("tty"), "{out}");
        assert_eq!(stream(&frames, stderr), "", "a terminal has one stream");
    }

    #[test]
    fn a_resize_reaches_the_shells_terminal() {
        let (frames, status) = run(
            shell(24, 80),
            &[
                Frame::Resize {
                    rows: 50,
                    cols: 132,
                },
                Frame::Input(b"stty size; exit\n".to_vec()),
            ],
        );
        assert_eq!(status, 0);
        let out = stream(&frames, stdout);
        assert!(out.contains("50 132"), "{out}");
    }

    #[test]
    fn a_command_killed_by_a_signal_reports_128_plus_it() {
        let argv = ["sh", "-c", "kill -TERM $$"];
        let (_, status) = run(
            Open::Exec(argv.iter().map(|s| s.to_string()).collect()),
            &[],
        );
        assert_eq!(status, 128 + libc::SIGTERM);
    }

    #[test]
    fn a_missing_command_is_a_clear_reason_not_a_session() {
        let Err(reason) = start(&Open::Exec(vec!["/nonexistent/ec2lab".into()])) else {
            panic!("started a command that does not exist");
        };
        assert!(
            reason.contains("cannot run /nonexistent/ec2lab"),
            "{reason}"
        );
    }

    #[test]
    fn a_host_that_hangs_up_ends_the_command() {
        let (host, guest) = std::os::unix::net::UnixStream::pair().expect("pair");
        let mut guest = File::from(OwnedFd::from(guest));
        drop(host);
        let mut running = start(&Open::Exec(vec!["sleep".into(), "600".into()])).expect("start");
        let began = Instant::now();
        let status = relay(&mut guest, &mut Decoder::default(), &mut running).expect("relay");
        assert_eq!(status, 129);
        assert!(began.elapsed() < Duration::from_secs(60));
        assert!(running.child.try_wait().expect("wait").is_some());
    }
}
