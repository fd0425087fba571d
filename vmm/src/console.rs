//! The serial console's host side: output to stdout or a file, and input
//! from a terminal on stdin (raw mode; Ctrl-A x stops the VM, Ctrl-A Ctrl-A
//! sends a literal Ctrl-A).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::devices::bus::lock;
use crate::devices::serial::SerialDevice;
use crate::exit::VmExit;
use crate::seccomp::ThreadFilter;
use crate::VmmEvent;

const CTRL_A: u8 = 0x01;

/// The most a console log file grows to before it is cut to its tail.
pub const LOG_LIMIT: u64 = 1 << 20;
/// What a cut keeps: the newest output, four times what GetConsoleOutput
/// returns (64 KiB).
pub const LOG_KEEP: u64 = 256 << 10;

/// Opens the console sink: `path` (a regular file is capped at
/// [`LOG_LIMIT`] bytes; a FIFO or device is written as a stream), or a
/// duplicate of stdout written unbuffered so partial lines (prompts) appear
/// at once.
pub fn open_output(path: Option<&Path>) -> std::io::Result<Box<dyn Write + Send>> {
    match path {
        // A FIFO, a terminal or another device is written as a stream (it
        // holds nothing to cap, and cannot be cut in place).
        Some(p) if std::fs::metadata(p).is_ok_and(|m| !m.is_file()) => {
            Ok(Box::new(File::create(p)?))
        }
        Some(p) => Ok(Box::new(CappedLog::create(p, LOG_LIMIT, LOG_KEEP)?)),
        None => Ok(Box::new(File::from(
            std::io::stdout().as_fd().try_clone_to_owned()?,
        ))),
    }
}

/// A console log that never grows past `limit` bytes: a guest printing
/// without end would otherwise fill the host's disk. When a write would
/// pass the limit, the file is cut in place to its last `keep` bytes (same
/// descriptor, no path lookups after start), so readers of the tail still
/// find the newest output.
pub struct CappedLog {
    file: File,
    len: u64,
    limit: u64,
    keep: u64,
}

impl CappedLog {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path, limit: u64, keep: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Self {
            file,
            len: 0,
            limit,
            keep: keep.min(limit),
        })
    }

    /// Moves the last `keep` bytes to the start and cuts the rest.
    fn cut(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let keep = self.keep.min(self.len);
        let mut tail = vec![0u8; keep as usize];
        self.file.read_exact_at(&mut tail, self.len - keep)?;
        self.file.write_all_at(&tail, 0)?;
        self.file.set_len(keep)?;
        self.len = keep;
        Ok(())
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.len + buf.len() as u64 > self.limit {
            self.cut()?;
        }
        // At most what fits; the caller's write_all comes back for the rest.
        let room = (self.limit - self.len).max(1) as usize;
        let n = self.file.write_at(&buf[..buf.len().min(room)], self.len)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A terminal in raw mode, restored on drop.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Puts stdin in raw mode if it is a terminal.
    pub fn enable() -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain old data; tcgetattr fills it for a valid fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and pointer to a termios we own.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only modifies the struct we pass.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: valid fd and termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved from the same fd.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

/// Splits terminal input into bytes for the guest and the escape command.
#[derive(Debug, Default)]
pub struct EscapeParser {
    after_ctrl_a: bool,
}

impl EscapeParser {
    /// Feeds one byte; returns the bytes to forward and whether to stop.
    pub fn feed(&mut self, byte: u8) -> (Option<u8>, bool) {
        if self.after_ctrl_a {
            self.after_ctrl_a = false;
            return match byte {
                b'x' | b'X' => (None, true),
                CTRL_A => (Some(CTRL_A), false),
                other => (Some(other), false),
            };
        }
        if byte == CTRL_A {
            self.after_ctrl_a = true;
            return (None, false);
        }
        (Some(byte), false)
    }
}

/// Forwards terminal input to the UART from a background thread.
pub fn spawn_input(
    serial: Arc<Mutex<SerialDevice>>,
    events: Sender<VmmEvent>,
    filter: ThreadFilter,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("console-in".to_string())
        .spawn(move || {
            filter.apply_or_exit();
            let mut stdin = std::io::stdin();
            let mut parser = EscapeParser::default();
            let mut buf = [0u8; 64];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut forward = Vec::with_capacity(n);
                for b in &buf[..n] {
                    match parser.feed(*b) {
                        (_, true) => {
                            let _ = events.send(VmmEvent::Exit(VmExit::Signal(libc::SIGINT)));
                            return;
                        }
                        (Some(b), false) => forward.push(b),
                        (None, false) => {}
                    }
                }
                let mut rest = &forward[..];
                while !rest.is_empty() {
                    let taken = lock(&serial).enqueue_input(rest);
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        // The guest has not drained the FIFO yet.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_log_is_cut_to_its_newest_bytes_and_never_passes_its_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let mut log = CappedLog::create(&path, 1000, 300).expect("create");
        let mut written = Vec::new();
        for i in 0..500u32 {
            let line = format!("line {i}\n");
            log.write_all(line.as_bytes()).expect("write");
            written.extend_from_slice(line.as_bytes());
            let len = std::fs::metadata(&path).expect("stat").len();
            assert!(len <= 1000, "{len} bytes after line {i}");
        }
        let kept = std::fs::read(&path).expect("read");
        assert!(kept.len() >= 300, "{} bytes kept", kept.len());
        assert!(written.ends_with(&kept), "the file is the newest output");
    }

    #[test]
    fn ctrl_a_x_stops_and_ctrl_a_ctrl_a_is_literal() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b'a'), (Some(b'a'), false));
        assert_eq!(p.feed(CTRL_A), (None, false));
        assert_eq!(p.feed(CTRL_A), (Some(CTRL_A), false));
        assert_eq!(p.feed(CTRL_A), (None, false));
        assert_eq!(p.feed(b'x'), (None, true));
    }
}
