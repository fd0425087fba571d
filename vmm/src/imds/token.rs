//! IMDSv2 session tokens, stateless: a token is its expiry and an
//! HMAC-SHA256 over the instance id and that expiry, keyed by a secret the
//! service draws when it starts.
//!
//! Why stateless: a guest may ask for tokens as fast as it likes, and a
//! table of them would need a size limit and an eviction rule that a
//! guest could use to push out another process's token. Here a token costs
//! the VMM nothing to hold. It is bound to the instance (its id is in the
//! MAC) and to this VMM process (the key lives only in its memory), so a
//! stop/start, which starts a new VMM, invalidates every outstanding token
//! as EC2 does; a resume from hibernation draws a new key for the same
//! reason ([`TokenKey::rotate`]).

use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// TTLs EC2 accepts, in seconds.
pub const TTL_RANGE: std::ops::RangeInclusive<u64> = 1..=21600;

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// version, expiry (ms since the key's epoch, big-endian), MAC: 41 bytes,
/// 56 characters of base64 like EC2's tokens.
const TOKEN_LEN: usize = 1 + 8 + MAC_LEN;

/// Why a token request or a token is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The TTL header is missing, not a number or outside 1–21600 (400).
    #[error("token TTL must be 1-21600 seconds")]
    BadTtl,
    /// Not a token this service issued, for this instance (401).
    #[error("invalid token")]
    Invalid,
    /// A token this service issued, past its TTL (401).
    #[error("expired token")]
    Expired,
    /// The system's random source failed.
    #[error("no randomness for the token key: {0}")]
    Random(String),
}

/// The secret tokens are signed with, and the clock they count from.
pub struct TokenKey {
    key: [u8; 32],
    epoch: Instant,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("TokenKey").finish_non_exhaustive()
    }
}

impl TokenKey {
    /// A fresh key from the kernel's random source, counting from `epoch`.
    pub fn new(epoch: Instant) -> Result<Self, TokenError> {
        let mut key = [0u8; 32];
        fill_random(&mut key)?;
        Ok(TokenKey { key, epoch })
    }

    /// Draws a new key: every token issued so far stops working.
    pub fn rotate(&mut self) -> Result<(), TokenError> {
        fill_random(&mut self.key)
    }

    /// A token for `instance_id` valid for `ttl` (the header's text) from
    /// `now`, with the TTL as parsed.
    pub fn issue(
        &self,
        instance_id: &str,
        ttl: Option<&str>,
        now: Instant,
    ) -> Result<(String, u64), TokenError> {
        let seconds: u64 = ttl
            .and_then(|t| t.trim().parse().ok())
            .filter(|s| TTL_RANGE.contains(s))
            .ok_or(TokenError::BadTtl)?;
        let expiry = self.millis(now) + seconds * 1000;
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.push(VERSION);
        token.extend_from_slice(&expiry.to_be_bytes());
        token.extend_from_slice(&self.mac(instance_id, expiry).finalize().into_bytes());
        Ok((STANDARD.encode(token), seconds))
    }

    /// Checks a token presented by the guest at `now`.
    pub fn verify(&self, instance_id: &str, token: &str, now: Instant) -> Result<(), TokenError> {
        let raw = STANDARD.decode(token).map_err(|_| TokenError::Invalid)?;
        if raw.len() != TOKEN_LEN || raw[0] != VERSION {
            return Err(TokenError::Invalid);
        }
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&raw[1..9]);
        let expiry = u64::from_be_bytes(expiry);
        // Constant-time comparison, so the MAC cannot be guessed a byte at
        // a time from response timing.
        self.mac(instance_id, expiry)
            .verify_slice(&raw[9..])
            .map_err(|_| TokenError::Invalid)?;
        if self.millis(now) >= expiry {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    fn mac(&self, instance_id: &str, expiry: u64) -> Hmac<Sha256> {
        // A 32-byte key is always a valid HMAC key.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(&[VERSION]);
        mac.update(&expiry.to_be_bytes());
        mac.update(instance_id.as_bytes());
        mac
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

/// Fills `buf` from getrandom(2), which blocks only before the host's pool
/// is initialised (long before a VMM runs).
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), TokenError> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable
        // slice; getrandom writes at most `rest.len()` bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match n {
            n if n > 0 => filled += n as usize,
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(TokenError::Random(err.to_string()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ttl(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn fresh() -> (TokenKey, Instant) {
        let t0 = Instant::now();
        (TokenKey::new(t0).expect("test input"), t0)
    }

    #[test]
    fn a_token_works_until_its_ttl_and_not_a_millisecond_after() {
        let (key, t0) = fresh();
        let (token, seconds) = key.issue("i-1", Some("21600"), t0).expect("test input");
        assert_eq!(seconds, 21600);
        assert_eq!(token.len(), 56, "{token}");
        assert_eq!(key.verify("i-1", &token, t0), Ok(()));
        let almost = t0 + ttl(21600) - Duration::from_millis(1);
        assert_eq!(key.verify("i-1", &token, almost), Ok(()));
        assert_eq!(
            key.verify("i-1", &token, t0 + ttl(21600)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn ttls_outside_1_to_21600_or_missing_are_refused() {
        let (key, t0) = fresh();
        for bad in [
            None,
            Some("0"),
            Some("21601"),
            Some("-5"),
            Some("ten"),
            Some(""),
        ] {
            assert_eq!(
                key.issue("i-1", bad, t0),
                Err(TokenError::BadTtl),
                "{bad:?}"
            );
        }
        assert_eq!(key.issue("i-1", Some(" 1 "), t0).expect("test input").1, 1);
    }

    #[test]
    fn a_token_is_bound_to_its_instance_its_key_and_its_bytes() {
        let (mut key, t0) = fresh();
        let (token, _) = key.issue("i-1", Some("60"), t0).expect("test input");
        assert_eq!(key.verify("i-2", &token, t0), Err(TokenError::Invalid));
        let (other, _) = fresh();
        assert_eq!(other.verify("i-1", &token, t0), Err(TokenError::Invalid));
        // Stretching the expiry breaks the MAC.
        let mut raw = STANDARD.decode(&token).expect("test input");
        raw[8] ^= 0xff;
        assert_eq!(
            key.verify("i-1", &STANDARD.encode(&raw), t0),
            Err(TokenError::Invalid)
        );
        for forged in ["", "AAAA", "not base64!", &"A".repeat(56), &token[..55]] {
            assert_eq!(
                key.verify("i-1", forged, t0),
                Err(TokenError::Invalid),
                "{forged}"
            );
        }
        key.rotate().expect("test input");
        assert_eq!(key.verify("i-1", &token, t0), Err(TokenError::Invalid));
    }
}
