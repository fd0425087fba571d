//! The HMAC-SHA256 key chain and the signature itself.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::auth::{CredentialScope, ALGORITHM};
use super::canonical::sha256_hex;

type HmacSha256 = Hmac<Sha256>;

/// `AWS4-HMAC-SHA256\n<timestamp>\n<scope>\n<hex sha256(canonical request)>`.
pub(crate) fn string_to_sign(
    timestamp: &str,
    scope: &CredentialScope,
    canonical_request: &str,
) -> String {
    format!(
        "{ALGORITHM}\n{timestamp}\n{}\n{}",
        scope.scope_line(),
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Derives the scope's signing key from the secret and opens a MAC over
/// `message` with it, ready to be finalised or verified.
fn signer(secret_access_key: &str, scope: &CredentialScope, message: &str) -> HmacSha256 {
    let mut key = format!("AWS4{secret_access_key}").into_bytes();
    for part in [
        scope.date.as_str(),
        scope.region.as_str(),
        scope.service.as_str(),
        "aws4_request",
    ] {
        key = mac(&key, part).finalize().into_bytes().to_vec();
    }
    mac(&key, message)
}

/// HMAC-SHA256 keyed with `key` over `data`.
fn mac(key: &[u8], data: &str) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(hmac::digest::InvalidLength) => unreachable!("HMAC accepts any key length"),
    };
    mac.update(data.as_bytes());
    mac
}

/// The lower-case hex signature a client sends (the `ec2lab` client signs
/// with it; the verifier only ever compares).
pub(crate) fn sign(
    secret_access_key: &str,
    scope: &CredentialScope,
    string_to_sign: &str,
) -> String {
    hex::encode(
        signer(secret_access_key, scope, string_to_sign)
            .finalize()
            .into_bytes(),
    )
}

/// Whether `provided` (hex, either case) is the signature of
/// `string_to_sign`; the comparison takes the same time wherever the first
/// differing byte is, so timing leaks nothing about the right signature.
pub(crate) fn signature_matches(
    secret_access_key: &str,
    scope: &CredentialScope,
    string_to_sign: &str,
    provided: &str,
) -> bool {
    let Ok(provided) = hex::decode(provided) else {
        return false;
    };
    signer(secret_access_key, scope, string_to_sign)
        .verify_slice(&provided)
        .is_ok()
}
