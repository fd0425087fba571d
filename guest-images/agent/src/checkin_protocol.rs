//! The check-in line protocol, spoken once per boot over virtio-vsock from
//! the agent (guest) to the control plane (host).
//!
//! The guest connects to the host (CID 2) on [`CHECKIN_PORT`]; the VMM
//! forwards the stream to `<instance's vsock socket>_<CHECKIN_PORT>`, where
//! the daemon listens. The socket path names the instance, so the line
//! carries no identity to spoof: it only says "this agent is up".
//!
//! ```text
//! guest: ec2lab-checkin v1 <boot-id>\n
//! host:  ok\n                 (recorded)
//! host:  error <reason>\n     (not recorded; the connection is closed)
//! ```
//!
//! `<boot-id>` is the kernel's `/proc/sys/kernel/random/boot_id`, which
//! tells one boot's check-in from the next in the daemon's log. Lines are
//! at most [`MAX_LINE`] bytes with the newline; anything else is refused.
//!
//! ```
//! use ec2lab_guest::checkin_protocol::{Answer, CheckIn};
//!
//! let line = CheckIn::new("6f1c0ee2-8d4e-4a57-9b7e-0a1c2d3e4f50")?.line();
//! let parsed = CheckIn::parse(line.as_bytes())?;
//! assert_eq!(parsed.boot_id(), "6f1c0ee2-8d4e-4a57-9b7e-0a1c2d3e4f50");
//! assert_eq!(Answer::parse(Answer::Ok.line().as_bytes())?, Answer::Ok);
//! # Ok::<(), ec2lab_guest::checkin_protocol::ProtocolError>(())
//! ```

/// The vsock port the agent connects to on the host (CID 2). Outside the
/// range guests' kernels pick local ports from (1024 and up are handed out
/// from 1024; no guest service listens on the host side anyway).
pub const CHECKIN_PORT: u32 = 9000;

/// Longest line either side sends, newline included.
pub const MAX_LINE: usize = 128;

/// First word of a check-in line.
const MAGIC: &str = "ec2lab-checkin";

/// The protocol version this crate speaks.
const VERSION: &str = "v1";

/// Longest boot id accepted (the kernel's is a 36-character UUID).
const MAX_BOOT_ID: usize = 64;

/// Why a line is not a valid check-in or answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    /// No newline at the end (the peer closed or timed out mid-line).
    #[error("line does not end with a newline")]
    Unterminated,
    /// Not UTF-8.
    #[error("line is not UTF-8")]
    NotUtf8,
    /// Not `ec2lab-checkin <version> <boot-id>`.
    #[error("not a check-in line: {0:?}")]
    Malformed(String),
    /// A version this side does not speak.
    #[error("unsupported check-in version {0:?} (this side speaks {VERSION})")]
    UnsupportedVersion(String),
    /// The boot id is empty, too long, or not lower-case hex and dashes.
    #[error("invalid boot id {0:?}")]
    BadBootId(String),
    /// An answer that is neither `ok` nor `error <reason>`.
    #[error("unexpected answer {0:?}")]
    BadAnswer(String),
}

/// One check-in: the agent of the boot `boot_id` is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckIn {
    boot_id: String,
}

impl CheckIn {
    /// A check-in for `boot_id` (surrounding white space is dropped).
    pub fn new(boot_id: &str) -> Result<Self, ProtocolError> {
        let boot_id = boot_id.trim();
        let valid = !boot_id.is_empty()
            && boot_id.len() <= MAX_BOOT_ID
            && boot_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-');
        if !valid {
            return Err(ProtocolError::BadBootId(boot_id.chars().take(80).collect()));
        }
        Ok(Self {
            boot_id: boot_id.to_string(),
        })
    }

    /// The boot it was sent from.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// The line the agent sends, newline included.
    pub fn line(&self) -> String {
        format!("{MAGIC} {VERSION} {}\n", self.boot_id)
    }

    /// Parses the line a guest sent (untrusted bytes, newline included).
    pub fn parse(line: &[u8]) -> Result<Self, ProtocolError> {
        let text = one_line(line)?;
        let mut words = text.split(' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some(MAGIC), Some(VERSION), Some(boot_id), None) => Self::new(boot_id),
            (Some(MAGIC), Some(version), _, _) if version != VERSION => Err(
                ProtocolError::UnsupportedVersion(version.chars().take(16).collect()),
            ),
            _ => Err(ProtocolError::Malformed(text.chars().take(80).collect())),
        }
    }
}

/// The host's answer to a check-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Recorded.
    Ok,
    /// Refused, with why.
    Error(String),
}

impl Answer {
    /// The line the host sends, newline included; a reason is cut to fit
    /// [`MAX_LINE`] and kept on one line.
    pub fn line(&self) -> String {
        match self {
            Answer::Ok => "ok\n".to_string(),
            Answer::Error(reason) => {
                let reason: String = reason
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                let mut line = format!("error {reason}");
                while line.len() > MAX_LINE - 1 {
                    line.pop();
                }
                line.push('\n');
                line
            }
        }
    }

    /// Parses the host's answer (newline included).
    pub fn parse(line: &[u8]) -> Result<Self, ProtocolError> {
        let text = one_line(line)?;
        if text == "ok" {
            return Ok(Answer::Ok);
        }
        match text.strip_prefix("error ") {
            Some(reason) => Ok(Answer::Error(reason.to_string())),
            None => Err(ProtocolError::BadAnswer(text.chars().take(80).collect())),
        }
    }
}

/// The text of one newline-terminated line of at most [`MAX_LINE`] bytes.
fn one_line(line: &[u8]) -> Result<&str, ProtocolError> {
    if line.len() > MAX_LINE {
        return Err(ProtocolError::TooLong);
    }
    let body = line
        .strip_suffix(b"\n")
        .ok_or(ProtocolError::Unterminated)?;
    if body.contains(&b'\n') {
        return Err(ProtocolError::Malformed("several lines".to_string()));
    }
    std::str::from_utf8(body).map_err(|_| ProtocolError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT_ID: &str = "0b9c6c2e-5d1f-4f7e-8a34-2f8e1d2c3b4a";

    #[test]
    fn a_check_in_line_parses_back_to_the_same_boot_id() {
        let line = CheckIn::new(&format!("{BOOT_ID}\n")).expect("valid").line();
        assert_eq!(line, format!("ec2lab-checkin v1 {BOOT_ID}\n"));
        assert_eq!(
            CheckIn::parse(line.as_bytes()).expect("parses").boot_id(),
            BOOT_ID
        );
    }

    #[test]
    fn lines_that_are_not_check_ins_are_refused() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"ec2lab-checkin v1 abc", ProtocolError::Unterminated),
            (b"", ProtocolError::Unterminated),
            (
                b"GET / HTTP/1.1\n",
                ProtocolError::Malformed("GET / HTTP/1.1".into()),
            ),
            (
                b"ec2lab-checkin v1\n",
                ProtocolError::Malformed("ec2lab-checkin v1".into()),
            ),
            (
                b"ec2lab-checkin v1 abc extra\n",
                ProtocolError::Malformed("ec2lab-checkin v1 abc extra".into()),
            ),
            (
                b"ec2lab-checkin v2 abc\n",
                ProtocolError::UnsupportedVersion("v2".into()),
            ),
            (
                b"ec2lab-checkin v1 ../x\n",
                ProtocolError::BadBootId("../x".into()),
            ),
            (
                b"ec2lab-checkin v1 ABC\n",
                ProtocolError::BadBootId("ABC".into()),
            ),
            (b"ec2lab-checkin v1 \xff\n", ProtocolError::NotUtf8),
            (
                b"ec2lab-checkin v1 a\nb\n",
                ProtocolError::Malformed("several lines".into()),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(CheckIn::parse(line).as_ref(), Err(want), "{line:?}");
        }
        let long = format!("ec2lab-checkin v1 {}\n", "a".repeat(MAX_LINE));
        assert_eq!(CheckIn::parse(long.as_bytes()), Err(ProtocolError::TooLong));
        let id = "a".repeat(MAX_BOOT_ID + 1);
        assert!(matches!(
            CheckIn::new(&id),
            Err(ProtocolError::BadBootId(_))
        ));
    }

    #[test]
    fn answers_round_trip_and_error_reasons_stay_one_bounded_line() {
        assert_eq!(Answer::parse(b"ok\n"), Ok(Answer::Ok));
        let long = Answer::Error(format!("bad\nthing {}", "x".repeat(500))).line();
        assert!(long.len() <= MAX_LINE, "{}", long.len());
        assert_eq!(long.matches('\n').count(), 1);
        match Answer::parse(long.as_bytes()) {
            Ok(Answer::Error(reason)) => assert!(reason.starts_with("bad thing x")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Answer::parse(b"okay\n"),
            Err(ProtocolError::BadAnswer("okay".into()))
        );
    }

    /// Random bytes and mutations of a valid line, as a guest could send
    /// them: parsing never panics, and what it accepts is a line of at most
    /// MAX_LINE bytes whose boot id is short lowercase hex and dashes. Any
    /// reason the host may give becomes one bounded line that parses back.
    /// `EC2LAB_FUZZ_ITERATIONS` rounds (default 100,000).
    #[test]
    fn fuzzed_lines_never_panic_and_only_well_formed_ones_pass() {
        let rounds: u32 = std::env::var("EC2LAB_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = format!("ec2lab-checkin v1 {BOOT_ID}\n").into_bytes();
        let alphabet = b"ec2lab-checkin v1 0123456789abcdefABCDEF \t\n\r\0\xff/.";
        let mut accepted = 0;
        for _ in 0..rounds {
            let mut line = valid.clone();
            match next() % 4 {
                0 => line.truncate((next() as usize) % (valid.len() + 1)),
                1 => {
                    for _ in 0..=(next() % 4) {
                        let at = (next() as usize) % line.len();
                        line[at] = alphabet[(next() as usize) % alphabet.len()];
                    }
                }
                2 => {
                    let at = (next() as usize) % (line.len() + 1);
                    let extra: Vec<u8> = (0..(next() % 200))
                        .map(|_| alphabet[(next() as usize) % alphabet.len()])
                        .collect();
                    line.splice(at..at, extra);
                }
                _ => line = (0..(next() % 300)).map(|_| next() as u8).collect(),
            }
            if let Ok(checkin) = CheckIn::parse(&line) {
                accepted += 1;
                let id = checkin.boot_id();
                assert!(line.len() <= MAX_LINE, "{line:?}");
                assert!(
                    !id.is_empty()
                        && id.len() <= MAX_BOOT_ID
                        && id
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-'),
                    "{line:?} gave boot id {id:?}"
                );
            }
            let _ = Answer::parse(&line);
            let reason = String::from_utf8_lossy(&line).into_owned();
            let answer = Answer::Error(reason).line();
            assert!(
                answer.len() <= MAX_LINE && answer.ends_with('\n'),
                "{answer:?}"
            );
            assert_eq!(answer.matches('\n').count(), 1, "{answer:?}");
            assert!(
                matches!(Answer::parse(answer.as_bytes()), Ok(Answer::Error(_))),
                "{answer:?}"
            );
        }
        // The mutations keep some lines valid: the accepting path ran too.
        assert!(accepted > 0);
    }
}
