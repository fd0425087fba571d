//! The session wire protocol behind `ec2lab connect`: a shell or one
//! command in the instance over virtio-vsock, like Session Manager (no
//! network, no open port, no key).
//!
//! The host connects to the instance's vsock socket, says
//! `CONNECT <SESSION_PORT>` (Firecracker's host-initiated handshake, which
//! the VMM answers with `OK <port>`), and from then on both sides exchange
//! frames: one tag byte, a big-endian `u32` payload length (at most
//! [`MAX_PAYLOAD`]), the payload.
//!
//! ```text
//! host → guest   O open     'S' rows:u16 cols:u16 TERM   (a shell on a pty)
//!                           'X' argv, NUL-separated       (one command, pipes)
//!                I input    bytes for the shell or the command's stdin
//!                C close    the command's stdin is at its end
//!                W resize   rows:u16 cols:u16
//! guest → host   1 stdout   bytes (a shell's pty output is all stdout)
//!                2 stderr   bytes (commands only)
//!                E exit     status:i32 (128+N for a signal, as shells say)
//!                F failure  UTF-8 reason; the session is over
//! ```
//!
//! The first host frame must be `O`; the guest ends the session with
//! exactly one `E` or `F`. Whoever closes the stream ends the session (the
//! guest hangs up the shell's process group when the host goes).
//!
//! ```
//! use ec2lab_guest::session_protocol::{Decoder, Frame, Open};
//!
//! let mut wire = Frame::Open(Open::Exec(vec!["id".into(), "-u".into()])).encode();
//! wire.extend(Frame::Exit(0).encode());
//! let mut decoder = Decoder::default();
//! decoder.push(&wire[..3]);
//! assert_eq!(decoder.next_frame()?, None); // not whole yet
//! decoder.push(&wire[3..]);
//! assert_eq!(
//!     decoder.next_frame()?,
//!     Some(Frame::Open(Open::Exec(vec!["id".into(), "-u".into()])))
//! );
//! assert_eq!(decoder.next_frame()?, Some(Frame::Exit(0)));
//! # Ok::<(), ec2lab_guest::session_protocol::SessionError>(())
//! ```

/// The vsock port the agent's session service listens on in the guest.
pub const SESSION_PORT: u32 = 9001;

/// Largest payload of one frame. Senders split longer data.
pub const MAX_PAYLOAD: usize = 32 * 1024;

/// Most arguments of one command, and most bytes of them together.
pub const MAX_ARGS: usize = 256;

/// Longest TERM value accepted.
const MAX_TERM: usize = 64;

/// Tag byte plus length.
const HEADER: usize = 5;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A length above [`MAX_PAYLOAD`].
    #[error("frame of {0} bytes is longer than {MAX_PAYLOAD}")]
    TooLong(usize),
    /// A tag this version does not know.
    #[error("unknown frame tag {0:#04x}")]
    UnknownTag(u8),
    /// A known tag whose payload has the wrong shape.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

/// What the host asks for first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Open {
    /// An interactive login shell on a pseudo-terminal of this size.
    Shell {
        /// Terminal rows.
        rows: u16,
        /// Terminal columns.
        cols: u16,
        /// The TERM the shell gets (`xterm-256color`, ...).
        term: String,
    },
    /// One command (argv\[0\] looked up on PATH) with pipes for its
    /// standard streams.
    Exec(Vec<String>),
}

/// One frame, either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Host: start the session.
    Open(Open),
    /// Host: input.
    Input(Vec<u8>),
    /// Host: no more input.
    Close,
    /// Host: the terminal changed size.
    Resize {
        /// Terminal rows.
        rows: u16,
        /// Terminal columns.
        cols: u16,
    },
    /// Guest: standard output (a shell's whole terminal output).
    Stdout(Vec<u8>),
    /// Guest: standard error of a command.
    Stderr(Vec<u8>),
    /// Guest: the shell or command ended with this status.
    Exit(i32),
    /// Guest: the session could not start or broke.
    Failure(String),
}

impl Frame {
    /// The frame's bytes on the wire. Payloads longer than [`MAX_PAYLOAD`]
    /// are the caller's bug: split data with [`chunks`](slice::chunks).
    pub fn encode(&self) -> Vec<u8> {
        let (tag, payload): (u8, Vec<u8>) = match self {
            Frame::Open(Open::Shell { rows, cols, term }) => {
                let mut p = vec![b'S'];
                p.extend(rows.to_be_bytes());
                p.extend(cols.to_be_bytes());
                p.extend(term.as_bytes());
                (b'O', p)
            }
            Frame::Open(Open::Exec(argv)) => {
                let mut p = vec![b'X'];
                p.extend(argv.join("\0").as_bytes());
                (b'O', p)
            }
            Frame::Input(data) => (b'I', data.clone()),
            Frame::Close => (b'C', Vec::new()),
            Frame::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend(cols.to_be_bytes());
                (b'W', p)
            }
            Frame::Stdout(data) => (b'1', data.clone()),
            Frame::Stderr(data) => (b'2', data.clone()),
            Frame::Exit(status) => (b'E', status.to_be_bytes().to_vec()),
            Frame::Failure(reason) => (b'F', reason.as_bytes().to_vec()),
        };
        debug_assert!(payload.len() <= MAX_PAYLOAD);
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.push(tag);
        out.extend((payload.len() as u32).to_be_bytes());
        out.extend(payload);
        out
    }

    fn decode(tag: u8, p: &[u8]) -> Result<Frame, SessionError> {
        let size = |what| -> Result<(u16, u16), SessionError> {
            match p {
                [a, b, c, d] => Ok((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
                _ => Err(SessionError::Malformed(what)),
            }
        };
        Ok(match tag {
            b'O' => match p.split_first() {
                Some((b'S', rest)) if rest.len() >= 4 => {
                    let term = std::str::from_utf8(&rest[4..])
                        .map_err(|_| SessionError::Malformed("open"))?;
                    if term.len() > MAX_TERM || !term.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(SessionError::Malformed("open"));
                    }
                    Frame::Open(Open::Shell {
                        rows: u16::from_be_bytes([rest[0], rest[1]]),
                        cols: u16::from_be_bytes([rest[2], rest[3]]),
                        term: term.to_string(),
                    })
                }
                Some((b'X', rest)) => {
                    let text =
                        std::str::from_utf8(rest).map_err(|_| SessionError::Malformed("open"))?;
                    let argv: Vec<String> = text.split('\0').map(str::to_string).collect();
                    if text.is_empty() || argv.len() > MAX_ARGS || argv[0].is_empty() {
                        return Err(SessionError::Malformed("open"));
                    }
                    Frame::Open(Open::Exec(argv))
                }
                _ => return Err(SessionError::Malformed("open")),
            },
            b'I' => Frame::Input(p.to_vec()),
            b'C' if p.is_empty() => Frame::Close,
            b'W' => {
                let (rows, cols) = size("resize")?;
                Frame::Resize { rows, cols }
            }
            b'1' => Frame::Stdout(p.to_vec()),
            b'2' => Frame::Stderr(p.to_vec()),
            b'E' => Frame::Exit(i32::from_be_bytes(
                p.try_into().map_err(|_| SessionError::Malformed("exit"))?,
            )),
            b'F' => Frame::Failure(String::from_utf8_lossy(p).into_owned()),
            b'C' => return Err(SessionError::Malformed("close")),
            other => return Err(SessionError::UnknownTag(other)),
        })
    }
}

/// Reassembles frames from a byte stream read in arbitrary pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` until one has arrived. An error leaves
    /// the stream unusable: the peer is not speaking this protocol.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SessionError> {
        let Some(header) = self.buf.get(..HEADER) else {
            return Ok(None);
        };
        let tag = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(SessionError::TooLong(len));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let frame = Frame::decode(tag, &self.buf[HEADER..HEADER + len]);
        self.buf.drain(..HEADER + len);
        frame.map(Some)
    }

    /// Bytes received that are not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut d = Decoder::default();
        for b in frame.encode() {
            assert_eq!(d.next_frame(), Ok(None));
            d.push(&[b]);
        }
        assert_eq!(d.next_frame(), Ok(Some(frame)));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn every_frame_survives_the_wire_byte_by_byte() {
        round_trip(Frame::Open(Open::Shell {
            rows: 50,
            cols: 132,
            term: "xterm-256color".into(),
        }));
        round_trip(Frame::Open(Open::Exec(vec![
            "sh".into(),
            "-c".into(),
            "echo 'a b'".into(),
        ])));
        round_trip(Frame::Input(b"ls\n".to_vec()));
        round_trip(Frame::Close);
        round_trip(Frame::Resize {
            rows: 1,
            cols: 65535,
        });
        round_trip(Frame::Stdout(vec![0, 255, 10]));
        round_trip(Frame::Stderr(Vec::new()));
        round_trip(Frame::Exit(-1));
        round_trip(Frame::Exit(130));
        round_trip(Frame::Failure("no such command".into()));
        round_trip(Frame::Input(vec![7; MAX_PAYLOAD]));
    }

    fn decode(bytes: &[u8]) -> Result<Option<Frame>, SessionError> {
        let mut d = Decoder::default();
        d.push(bytes);
        d.next_frame()
    }

    #[test]
    fn hostile_frames_are_refused_without_waiting_for_their_payload() {
        let too_long = [b'I', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode(&too_long),
            Err(SessionError::TooLong(u32::MAX as usize))
        );
        assert_eq!(
            decode(&[b'Z', 0, 0, 0, 0]),
            Err(SessionError::UnknownTag(b'Z'))
        );
        assert_eq!(
            decode(&[b'C', 0, 0, 0, 1, 0]),
            Err(SessionError::Malformed("close"))
        );
        assert_eq!(
            decode(&[b'W', 0, 0, 0, 3, 1, 2, 3]),
            Err(SessionError::Malformed("resize"))
        );
        assert_eq!(
            decode(&[b'E', 0, 0, 0, 1, 1]),
            Err(SessionError::Malformed("exit"))
        );
        // Open: no mode, empty argv, empty command, a TERM with a space
        // or escape, a TERM too long, invalid UTF-8.
        for payload in [
            &b""[..],
            b"X",
            b"X\0ls",
            b"S\0\x18\0\x50a b",
            b"S\0\x18\0\x50\x1b[",
            b"S\0\x18",
            b"X\xff",
        ] {
            let mut wire = vec![b'O'];
            wire.extend((payload.len() as u32).to_be_bytes());
            wire.extend(payload);
            assert_eq!(
                decode(&wire),
                Err(SessionError::Malformed("open")),
                "{payload:?}"
            );
        }
        let long_term = Frame::Open(Open::Shell {
            rows: 1,
            cols: 1,
            term: "x".repeat(MAX_TERM + 1),
        });
        assert_eq!(
            decode(&long_term.encode()),
            Err(SessionError::Malformed("open"))
        );
        let many = Frame::Open(Open::Exec(vec!["a".into(); MAX_ARGS + 1]));
        assert_eq!(decode(&many.encode()), Err(SessionError::Malformed("open")));
    }

    #[test]
    fn frames_split_across_reads_come_out_in_order() {
        let mut wire = Frame::Stdout(b"one".to_vec()).encode();
        wire.extend(Frame::Stderr(b"two".to_vec()).encode());
        wire.extend(Frame::Exit(3).encode());
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for piece in wire.chunks(4) {
            d.push(piece);
            while let Some(f) = d.next_frame().expect("valid") {
                out.push(f);
            }
        }
        assert_eq!(
            out,
            [
                Frame::Stdout(b"one".to_vec()),
                Frame::Stderr(b"two".to_vec()),
                Frame::Exit(3)
            ]
        );
    }
}
