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
use crate::VmmEvent;

const CTRL_A: u8 = 0x01;

/// Opens the console sink: `path`, or a duplicate of stdout written unbuffered
/// so partial lines (prompts) appear at once.
pub fn open_output(path: Option<&Path>) -> std::io::Result<Box<dyn Write + Send>> {
    match path {
        Some(p) => Ok(Box::new(File::create(p)?)),
        None => Ok(Box::new(File::from(
            std::io::stdout().as_fd().try_clone_to_owned()?,
        ))),
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
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("console-in".to_string())
        .spawn(move || {
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
    fn ctrl_a_x_stops_and_ctrl_a_ctrl_a_is_literal() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b'a'), (Some(b'a'), false));
        assert_eq!(p.feed(CTRL_A), (None, false));
        assert_eq!(p.feed(CTRL_A), (Some(CTRL_A), false));
        assert_eq!(p.feed(CTRL_A), (None, false));
        assert_eq!(p.feed(b'x'), (None, true));
    }
}
