//! The host side of the instance status check: one Unix socket per
//! instance where its VMM's vsock device forwards the guest agent's
//! check-in (`<instance dir>/vsock.sock_<CHECKIN_PORT>`, Firecracker's
//! convention for guest-initiated connections).
//!
//! The socket's path is the instance's identity: only that instance's VMM
//! connects to it, so a check-in needs no credential and cannot be
//! spoofed by another guest. What arrives is still guest data: one line of
//! at most [`MAX_LINE`] bytes, read within [`READ_TIMEOUT`], parsed by the
//! shared protocol and answered with `ok` or `error <reason>`.

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use ec2lab_guest::checkin_protocol::{Answer, CheckIn, ProtocolError, CHECKIN_PORT, MAX_LINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// How long a guest gets to send its line once connected.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The vsock context id every instance's guest gets. Each VMM has its own
/// vsock device and Unix sockets (no vhost), so ids need not differ.
pub const GUEST_CID: u32 = 3;

/// Errors of the check-in listener.
#[derive(Debug, thiserror::Error)]
pub enum CheckinError {
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something other than a socket is in the way.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The guest sent nothing usable in time.
    #[error("no check-in line within {} s", READ_TIMEOUT.as_secs())]
    Timeout,
    /// Reading or answering failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The line is not a check-in.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The check-in was valid but could not be recorded.
    #[error("not recorded: {0}")]
    Rejected(#[from] Refusal),
}

/// Why a valid check-in was not recorded; the guest is told.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The instance is not pending or running (a late line from a VMM that
    /// is being stopped).
    #[error("the instance is {0}")]
    NotRunning(&'static str),
    /// The check-in names no VMM start to check in against.
    #[error("no VMM start is recorded for the instance")]
    NoVmmStart,
    /// The control plane is shutting down.
    #[error("the control plane is stopping")]
    Stopping,
    /// The store failed (logged by the daemon; the guest sees only this).
    #[error("the control plane could not record it")]
    Store,
}

/// Where the agent's check-in for an instance whose vsock device listens at
/// `vsock_uds` arrives.
pub fn socket_path(vsock_uds: &Path) -> PathBuf {
    let mut name = vsock_uds.as_os_str().to_owned();
    name.push(format!("_{CHECKIN_PORT}"));
    PathBuf::from(name)
}

/// What to do with a valid check-in for an instance: record it, or say why
/// not (the answer to the guest is then an error line).
pub type Sink = Arc<dyn Fn(&str, &CheckIn) -> Result<(), Refusal> + Send + Sync>;

/// The listening sockets, one per instance with a VMM.
#[derive(Default)]
pub struct CheckinListeners {
    tasks: Mutex<HashMap<String, (PathBuf, tokio::task::AbortHandle)>>,
}

impl CheckinListeners {
    /// Listens for `instance_id`'s check-ins at `path` (idempotent: an
    /// instance keeps its listener across reboots). A stale socket file
    /// left by an earlier daemon is replaced, any other file is not.
    pub fn listen(
        &self,
        runtime: &tokio::runtime::Handle,
        instance_id: &str,
        path: &Path,
        sink: Sink,
    ) -> Result<(), CheckinError> {
        let mut tasks = crate::lock(&self.tasks);
        if tasks
            .get(instance_id)
            .is_some_and(|(p, task)| p == path && !task.is_finished())
        {
            return Ok(());
        }
        remove_socket(path)?;
        let listen_error = |source| CheckinError::Listen {
            path: path.to_path_buf(),
            source,
        };
        let std_listener = std::os::unix::net::UnixListener::bind(path).map_err(listen_error)?;
        // Only the lab (and the VMM it starts, as the same user) may check
        // in: whatever the umask, another user must not forge a check-in.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(listen_error)?;
        }
        std_listener.set_nonblocking(true).map_err(listen_error)?;
        let listener = {
            let _entered = runtime.enter();
            UnixListener::from_std(std_listener).map_err(listen_error)?
        };
        let id = instance_id.to_string();
        let task = runtime.spawn(accept_loop(listener, id.clone(), sink));
        if let Some((_, old)) = tasks.insert(id, (path.to_path_buf(), task.abort_handle())) {
            old.abort();
        }
        Ok(())
    }

    /// Stops listening for `instance_id` and removes its socket at `path`
    /// (also when no listener ran: a daemon killed earlier left the file).
    pub fn close(&self, instance_id: &str, path: &Path) {
        if let Some((_, task)) = crate::lock(&self.tasks).remove(instance_id) {
            task.abort();
        }
        if let Err(e) = remove_socket(path) {
            log::warn!("{instance_id}: {e}");
        }
    }

    /// Whether a listener runs for `instance_id`.
    pub fn is_listening(&self, instance_id: &str) -> bool {
        crate::lock(&self.tasks)
            .get(instance_id)
            .is_some_and(|(_, task)| !task.is_finished())
    }
}

/// Removes a socket file at `path`, if there is one.
fn remove_socket(path: &Path) -> Result<(), CheckinError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| CheckinError::Listen {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(_) => Err(CheckinError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CheckinError::Listen {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Serves one connection at a time: a guest opening many silent
/// connections holds one daemon descriptor and waits its turn (the others
/// wait in the socket's backlog, outside the daemon), so it can neither
/// exhaust the daemon's descriptors nor delay other instances.
async fn accept_loop(listener: UnixListener, instance_id: String, sink: Sink) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match serve(stream, &instance_id, &sink).await {
                Ok(c) => log::info!("{instance_id}: agent checked in (boot {})", c.boot_id()),
                Err(e) => log::warn!("{instance_id}: check-in refused: {e}"),
            },
            Err(e) => {
                // Out of descriptors, most likely: wait instead of spinning.
                log::warn!("{instance_id}: accepting a check-in: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Serves one connection: reads one bounded line in bounded time, records
/// a valid check-in through `sink`, and answers either way.
pub async fn serve(
    mut stream: UnixStream,
    instance_id: &str,
    sink: &Sink,
) -> Result<CheckIn, CheckinError> {
    let result = match tokio::time::timeout(READ_TIMEOUT, read_line(&mut stream)).await {
        Err(_) => Err(CheckinError::Timeout),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(line)) => match CheckIn::parse(&line) {
            Ok(checkin) => sink(instance_id, &checkin)
                .map(|()| checkin)
                .map_err(CheckinError::Rejected),
            Err(e) => Err(e.into()),
        },
    };
    let answer = match &result {
        Ok(_) => Answer::Ok,
        Err(e) => Answer::Error(e.to_string()),
    };
    // The guest may be gone already; the outcome is what counts.
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        stream.write_all(answer.line().as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    result
}

/// Bytes up to and including the first newline, or up to one byte past
/// [`MAX_LINE`] (which the parser refuses), or up to the end of the stream.
async fn read_line(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(MAX_LINE);
    let mut buf = [0u8; MAX_LINE + 1];
    while !line.contains(&b'\n') && line.len() <= MAX_LINE {
        let room = MAX_LINE + 1 - line.len();
        let n = stream.read(&mut buf[..room]).await?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
    }
    // Anything after the newline is not part of the line: a second line
    // makes it malformed, which the parser reports.
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (instance id, boot id) of every check-in a sink recorded.
    type Recorded = Arc<Mutex<Vec<(String, String)>>>;

    fn recording_sink() -> (Sink, Recorded) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let sink: Sink = Arc::new(move |id: &str, c: &CheckIn| {
            crate::lock(&log).push((id.to_string(), c.boot_id().to_string()));
            Ok(())
        });
        (sink, seen)
    }

    /// Sends `send` and reads the answer line as the agent does, up to the
    /// newline: after an over-long line the host closes with unread data,
    /// which resets the connection once the answer has been read.
    async fn exchange(path: &Path, send: &[u8]) -> String {
        let mut stream = UnixStream::connect(path).await.expect("connect");
        stream.write_all(send).await.expect("send");
        let mut answer = Vec::new();
        while answer.last() != Some(&b'\n') {
            match stream.read_u8().await {
                Ok(b) => answer.push(b),
                Err(e) => panic!("answer so far {answer:?}: {e}"),
            }
        }
        String::from_utf8(answer).expect("utf-8")
    }

    #[tokio::test]
    async fn a_valid_check_in_is_recorded_for_the_socket_s_instance_and_answered_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = socket_path(&dir.path().join("vsock.sock"));
        assert!(path.ends_with(format!("vsock.sock_{CHECKIN_PORT}")));
        let (sink, seen) = recording_sink();
        let listeners = CheckinListeners::default();
        let rt = tokio::runtime::Handle::current();
        listeners
            .listen(&rt, "i-0123456789abcdef0", &path, sink.clone())
            .expect("listen");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the socket is the lab's alone");
        }
        // A second listen for the same instance keeps the first listener.
        listeners
            .listen(&rt, "i-0123456789abcdef0", &path, sink)
            .expect("listen again");
        let line = CheckIn::new("0b9c6c2e-5d1f").expect("id").line();
        assert_eq!(exchange(&path, line.as_bytes()).await, "ok\n");
        assert_eq!(
            *crate::lock(&seen),
            [(
                "i-0123456789abcdef0".to_string(),
                "0b9c6c2e-5d1f".to_string()
            )]
        );
        assert!(listeners.is_listening("i-0123456789abcdef0"));
        listeners.close("i-0123456789abcdef0", &path);
        assert!(!path.exists(), "close removes the socket file");
        assert!(!listeners.is_listening("i-0123456789abcdef0"));
    }

    #[tokio::test]
    async fn bad_input_is_answered_with_an_error_line_and_never_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = socket_path(&dir.path().join("vsock.sock"));
        let (sink, seen) = recording_sink();
        let listeners = CheckinListeners::default();
        let rt = tokio::runtime::Handle::current();
        listeners.listen(&rt, "i-1", &path, sink).expect("listen");
        let long = vec![b'a'; 10 * MAX_LINE];
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"ec2lab-checkin v9 abc\n",
            b"ec2lab-checkin v1 abc\nec2lab-checkin v1 abc\n",
            &long,
        ] {
            let answer = exchange(&path, bad).await;
            assert!(answer.starts_with("error "), "{bad:?} → {answer:?}");
            assert!(
                answer.len() <= MAX_LINE && answer.ends_with('\n'),
                "{answer:?}"
            );
        }
        assert!(crate::lock(&seen).is_empty());
        listeners.close("i-1", &path);
    }

    #[tokio::test]
    async fn a_check_in_the_sink_refuses_is_answered_with_its_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = socket_path(&dir.path().join("vsock.sock"));
        let sink: Sink = Arc::new(|_: &str, _: &CheckIn| Err(Refusal::NotRunning("stopped")));
        let listeners = CheckinListeners::default();
        let rt = tokio::runtime::Handle::current();
        listeners.listen(&rt, "i-1", &path, sink).expect("listen");
        let line = CheckIn::new("abc").expect("id").line();
        assert_eq!(
            exchange(&path, line.as_bytes()).await,
            "error not recorded: the instance is stopped\n"
        );
        listeners.close("i-1", &path);
    }

    /// A guest that opens many silent connections costs the daemon one
    /// descriptor, not one per connection (the rest wait in the backlog).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_connections_are_served_one_at_a_time() {
        const SILENT: usize = 200;
        let open_fds = || std::fs::read_dir("/proc/self/fd").expect("fds").count();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = socket_path(&dir.path().join("vsock.sock"));
        let (sink, _seen) = recording_sink();
        let listeners = CheckinListeners::default();
        let rt = tokio::runtime::Handle::current();
        listeners.listen(&rt, "i-1", &path, sink).expect("listen");
        let before = open_fds();
        let mut silent = Vec::new();
        for _ in 0..SILENT {
            silent.push(UnixStream::connect(&path).await.expect("connect"));
        }
        // Time for a listener that accepts everything to do so.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let grown = open_fds() - before;
        assert!(
            grown < SILENT + 60,
            "{grown} descriptors for {SILENT} silent connections: the daemon accepted them all"
        );
        drop(silent);
        listeners.close("i-1", &path);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_guest_is_cut_off_after_the_read_timeout() {
        let (host, mut guest) = UnixStream::pair().expect("pair");
        let (sink, seen) = recording_sink();
        let served = tokio::spawn(async move { serve(host, "i-1", &sink).await });
        let mut answer = String::new();
        // The clock is paused: the timeout fires without real waiting.
        guest.read_to_string(&mut answer).await.expect("answer");
        assert!(answer.starts_with("error no check-in line"), "{answer:?}");
        assert!(matches!(
            served.await.expect("task"),
            Err(CheckinError::Timeout)
        ));
        assert!(crate::lock(&seen).is_empty());
    }

    #[test]
    fn a_regular_file_in_the_socket_s_place_is_not_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vsock.sock_9000");
        std::fs::write(&path, "keep").expect("write");
        assert!(matches!(
            remove_socket(&path),
            Err(CheckinError::NotASocket(_))
        ));
        assert!(path.exists());
    }

    /// Random lines through the real socket, as a guest could send them
    /// (each connection's write side closed after the line, as a guest that
    /// hangs up does): every answer is one bounded line, `ok` exactly for
    /// the lines the parser accepts, and the sink records exactly those.
    #[tokio::test]
    async fn fuzzed_check_ins_get_one_bounded_answer_and_only_valid_ones_are_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = socket_path(&dir.path().join("vsock.sock"));
        let (sink, seen) = recording_sink();
        let listeners = CheckinListeners::default();
        let rt = tokio::runtime::Handle::current();
        listeners.listen(&rt, "i-1", &path, sink).expect("listen");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = CheckIn::new("0b9c6c2e-5d1f")
            .expect("id")
            .line()
            .into_bytes();
        let alphabet = b"ec2lab-checkin v1 0123456789abcdefXYZ \t\n\r\0\xff";
        let mut valid_sent = 0;
        for _ in 0..300 {
            let mut line = valid.clone();
            for _ in 0..(next() % 3) {
                let at = (next() as usize) % line.len();
                line[at] = alphabet[(next() as usize) % alphabet.len()];
            }
            if next() % 5 == 0 {
                line.truncate((next() as usize) % (line.len() + 1));
            }
            let ok = CheckIn::parse(&line).is_ok();
            valid_sent += usize::from(ok);
            let mut stream = UnixStream::connect(&path).await.expect("connect");
            stream.write_all(&line).await.expect("send");
            stream.shutdown().await.expect("hang up");
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.expect("answer");
            let answer = String::from_utf8(answer).expect("utf-8");
            assert!(
                answer.len() <= MAX_LINE
                    && answer.ends_with('\n')
                    && answer.matches('\n').count() == 1,
                "{line:?} → {answer:?}"
            );
            assert_eq!(answer == "ok\n", ok, "{line:?} → {answer:?}");
            assert!(ok || answer.starts_with("error "), "{line:?} → {answer:?}");
        }
        assert!(valid_sent > 0, "no valid line was sent");
        assert_eq!(crate::lock(&seen).len(), valid_sent);
        listeners.close("i-1", &path);
    }
}
