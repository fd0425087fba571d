//! EC2 key pairs: making them (`CreateKeyPair`), reading the public keys
//! users bring (`ImportKeyPair`), and the fingerprints EC2 shows for each.
//!
//! EC2 computes a key's fingerprint in one of three ways, and which one
//! depends on who made the key and of what type. Tools and people compare
//! these strings with what the console printed, so they must be byte-exact
//! (EC2 User Guide, "Verify the fingerprint of your key pair"):
//!
//! | key                | fingerprint                                                   |
//! |--------------------|---------------------------------------------------------------|
//! | RSA, made by EC2   | SHA-1 of the DER PKCS#8 private key, hex with colons          |
//! | RSA, imported      | MD5 of the DER SubjectPublicKeyInfo public key, hex with colons |
//! | ED25519, either    | SHA-256 of the OpenSSH public key blob, base64 with padding    |
//!
//! The ED25519 value is the one `ssh-keygen -l` prints after `SHA256:`,
//! except that EC2 keeps base64's trailing `=`.
//!
//! Nothing here keeps a private key: EC2 hands the key material out once,
//! in the `CreateKeyPair` answer, and the caller must not store it.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::rngs::OsRng;
use rsa::pkcs1::{DecodeRsaPublicKey, EncodeRsaPrivateKey};
use rsa::pkcs8::der::{pem, Decode as _};
use rsa::pkcs8::{
    DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding, ObjectIdentifier,
    SubjectPublicKeyInfoRef,
};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use sha1::{Digest, Sha1};
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{HashAlg, PrivateKey, PublicKey};

/// EC2: "Constraints: Up to 255 ASCII characters" (`KeyName`).
pub const MAX_NAME_LEN: usize = 255;

/// The size of the RSA keys `CreateKeyPair` makes; EC2 makes no other.
pub const CREATED_RSA_BITS: usize = 2048;

/// The RSA sizes `ImportKeyPair` takes. EC2 documents 1024, 2048 and 4096
/// as the supported lengths; keys in between (ssh-keygen's default 3072)
/// are imported by EC2 too, so the bound is a range, not a list.
pub const IMPORTED_RSA_BITS: std::ops::RangeInclusive<usize> = 1024..=4096;

/// RFC 8410: id-Ed25519, for ED25519 keys sent as SubjectPublicKeyInfo.
const ED25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// What a key pair operation can refuse, each with the EC2 error it becomes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The public key handed to `ImportKeyPair` is not one EC2 takes.
    /// The message is EC2's own, whatever the reason; `reason` is for logs.
    #[error("Key is not in valid OpenSSH public key format")]
    Format { reason: String },
    /// A key name EC2 would refuse.
    #[error("Value ({name}) for parameter KeyName is invalid. {why}")]
    InvalidName { name: String, why: &'static str },
    /// The random source or the key encoder failed while making a key.
    #[error("key pair generation failed: {0}")]
    Generate(String),
}

impl KeyError {
    /// The EC2 error code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Format { .. } => "InvalidKey.Format",
            KeyError::InvalidName { .. } => "InvalidParameterValue",
            KeyError::Generate(_) => "InternalError",
        }
    }

    fn format(reason: impl Into<String>) -> Self {
        KeyError::Format {
            reason: reason.into(),
        }
    }
}

/// EC2's `KeyType`: the algorithms it makes and imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Rsa,
    Ed25519,
}

impl KeyType {
    /// The value on the wire (`KeyType=rsa`, `<keyType>ed25519</keyType>`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Rsa => "rsa",
            KeyType::Ed25519 => "ed25519",
        }
    }

    /// Reads the wire value; `None` for anything EC2 does not define.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "rsa" => Some(KeyType::Rsa),
            "ed25519" => Some(KeyType::Ed25519),
            _ => None,
        }
    }
}

/// EC2's `KeyFormat`: how `CreateKeyPair` writes the private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFormat {
    /// OpenSSH's tools: PKCS#1 PEM for RSA, the OpenSSH format for ED25519.
    Pem,
    /// PuTTY's private key file.
    Ppk,
}

impl KeyFormat {
    /// The value on the wire (`KeyFormat=pem`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyFormat::Pem => "pem",
            KeyFormat::Ppk => "ppk",
        }
    }

    /// Reads the wire value; `None` for anything EC2 does not define.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "pem" => Some(KeyFormat::Pem),
            "ppk" => Some(KeyFormat::Ppk),
            _ => None,
        }
    }
}

/// What `CreateKeyPair` made.
#[derive(Clone, PartialEq, Eq)]
pub struct Created {
    /// The private key as EC2's `keyMaterial` carries it, usable when written
    /// to a file as is (boto3) or with the newline `--output text` adds.
    /// PKCS#1 PEM and PPK end without a newline; the OpenSSH format ends with
    /// one because `ssh` will not read it otherwise.
    pub key_material: String,
    /// `ssh-rsa AAAA…` / `ssh-ed25519 AAAA…`, without a comment; EC2 puts the
    /// key name there when `DescribeKeyPairs` shows the public key.
    pub public_key_openssh: String,
    /// See the module documentation for which rule applies.
    pub fingerprint: String,
}

/// Keeps the private key out of logs and panic messages.
impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("key_material", &"<redacted>")
            .field("public_key_openssh", &self.public_key_openssh)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// What `ImportKeyPair` accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub key_type: KeyType,
    /// The key in OpenSSH form without a comment, whatever form it came in.
    pub public_key_openssh: String,
    /// See the module documentation for which rule applies.
    pub fingerprint: String,
}

/// Checks a `KeyName` against EC2's constraint: 1 to 255 ASCII characters.
///
/// An absent `KeyName` is the API's `MissingParameter`; an empty one is
/// refused here.
pub fn validate_name(name: &str) -> Result<(), KeyError> {
    let why = if name.is_empty() {
        "It must not be empty."
    } else if !name.is_ascii() {
        "It must contain only ASCII characters."
    } else if name.len() > MAX_NAME_LEN {
        "It must be at most 255 characters long."
    } else {
        return Ok(());
    };
    Err(KeyError::InvalidName {
        name: name.to_owned(),
        why,
    })
}

/// Makes a key pair as `CreateKeyPair` does: RSA 2048 or ED25519, the private
/// key written in `format`.
pub fn create(key_type: KeyType, format: KeyFormat) -> Result<Created, KeyError> {
    match key_type {
        KeyType::Rsa => create_rsa(format),
        KeyType::Ed25519 => create_ed25519(format),
    }
}

fn create_rsa(format: KeyFormat) -> Result<Created, KeyError> {
    let private = RsaPrivateKey::new(&mut OsRng, CREATED_RSA_BITS)
        .map_err(|e| KeyError::Generate(format!("RSA {CREATED_RSA_BITS}: {e}")))?;
    let private = larger_prime_first(private)?;
    let key_data = rsa_key_data(&private.to_public_key())?;
    // EC2 fingerprints the keys it makes by their PKCS#8 private key; the
    // SHA-1 is what `openssl pkcs8 -topk8 -nocrypt -outform DER | openssl
    // sha1 -c` gives for the downloaded file.
    let pkcs8 = private
        .to_pkcs8_der()
        .map_err(|e| KeyError::Generate(format!("PKCS#8 encoding: {e}")))?;
    let fingerprint = hex_colons(&Sha1::digest(pkcs8.as_bytes()));
    let key_material = match format {
        KeyFormat::Pem => private
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|e| KeyError::Generate(format!("PKCS#1 encoding: {e}")))?
            .trim_end()
            .to_owned(),
        KeyFormat::Ppk => {
            let [p, q] = private.primes() else {
                return Err(KeyError::Generate("RSA key without two primes".into()));
            };
            let iqmp = private
                .crt_coefficient()
                .ok_or_else(|| KeyError::Generate("RSA key without CRT coefficient".into()))?;
            let mut secret = Vec::new();
            for part in [private.d(), p, q, &iqmp] {
                put_mpint(&mut secret, part);
            }
            ppk_v2(&key_data, &secret)?
        }
    };
    Ok(Created {
        key_material,
        public_key_openssh: openssh_line(key_data)?,
        fingerprint,
    })
}

/// Orders the primes p > q, as OpenSSL and OpenSSH write them. PKCS#1 allows
/// either order, but the order is in the DER and so in the fingerprint: with
/// p > q, a key that goes through puttygen or `openssl rsa` and back keeps
/// the fingerprint EC2 gave it.
fn larger_prime_first(private: RsaPrivateKey) -> Result<RsaPrivateKey, KeyError> {
    let [p, q] = private.primes() else {
        return Err(KeyError::Generate("RSA key without two primes".into()));
    };
    if p > q {
        return Ok(private);
    }
    RsaPrivateKey::from_components(
        private.n().clone(),
        private.e().clone(),
        private.d().clone(),
        vec![q.clone(), p.clone()],
    )
    .map_err(|e| KeyError::Generate(format!("RSA prime order: {e}")))
}

fn create_ed25519(format: KeyFormat) -> Result<Created, KeyError> {
    let keypair = Ed25519Keypair::random(&mut OsRng);
    let key_data = KeyData::Ed25519(keypair.public);
    let fingerprint = sha256_fingerprint(&key_data);
    let key_material = match format {
        KeyFormat::Pem => {
            // Named "pem" by EC2, but for ED25519 it hands out OpenSSH's own
            // private key format: there is no PKCS#1 for ED25519, and this is
            // what `ssh -i` reads.
            let private = PrivateKey::new(KeypairData::Ed25519(keypair.clone()), "")
                .map_err(|e| KeyError::Generate(format!("OpenSSH private key: {e}")))?;
            // Unlike PEM, OpenSSH's reader wants the END line's newline.
            private
                .to_openssh(ssh_key::LineEnding::LF)
                .map_err(|e| KeyError::Generate(format!("OpenSSH encoding: {e}")))?
                .to_string()
        }
        KeyFormat::Ppk => {
            let mut secret = Vec::new();
            put_string(&mut secret, keypair.private.as_ref());
            ppk_v2(&key_data, &secret)?
        }
    };
    Ok(Created {
        key_material,
        public_key_openssh: openssh_line(key_data)?,
        fingerprint,
    })
}

/// Reads a public key as `ImportKeyPair` does. `material` is the
/// `PublicKeyMaterial` parameter after the API's base64 decoding, i.e. the
/// bytes of the file the user named with `fileb://`.
///
/// EC2 takes RSA (1024 to 4096 bits) and ED25519, in OpenSSH's one-line
/// format, as an SSH2 public key file (RFC 4716), or as a DER
/// SubjectPublicKeyInfo, base64 or PEM. It refuses DSA ("Amazon EC2 does not
/// accept DSA keys"), ECDSA and anything else with `InvalidKey.Format`.
pub fn import(material: &[u8]) -> Result<Imported, KeyError> {
    let key = parse_public(material)?;
    let (key_type, key_data, fingerprint) = match key {
        ParsedKey::Rsa(public) => {
            let bits = public.n().bits();
            if !IMPORTED_RSA_BITS.contains(&bits) {
                return Err(KeyError::format(format!(
                    "RSA key of {bits} bits; EC2 takes 1024 to 4096"
                )));
            }
            // EC2 fingerprints imported RSA keys by their public key alone
            // (it never sees the private one): MD5 over the DER
            // SubjectPublicKeyInfo.
            let spki = public
                .to_public_key_der()
                .map_err(|e| KeyError::format(format!("RSA public key encoding: {e}")))?;
            let fingerprint = hex_colons(&Md5::digest(spki.as_bytes()));
            (KeyType::Rsa, rsa_key_data(&public)?, fingerprint)
        }
        ParsedKey::Ed25519(key_data) => {
            let fingerprint = sha256_fingerprint(&key_data);
            (KeyType::Ed25519, key_data, fingerprint)
        }
    };
    Ok(Imported {
        key_type,
        public_key_openssh: openssh_line(key_data)?,
        fingerprint,
    })
}

/// A public key EC2 could take, before the size checks.
enum ParsedKey {
    Rsa(RsaPublicKey),
    /// Always `KeyData::Ed25519`.
    Ed25519(KeyData),
}

fn parse_public(material: &[u8]) -> Result<ParsedKey, KeyError> {
    let Ok(text) = std::str::from_utf8(material) else {
        // Someone sent a DER file itself rather than its base64.
        return parse_spki_der(material);
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::format("empty public key"));
    }
    if text.starts_with("---- BEGIN SSH2 PUBLIC KEY ----") {
        parse_ssh_blob(&decode_rfc4716(text)?)
    } else if text.starts_with("-----BEGIN ") {
        let (label, der) =
            pem::decode_vec(text.as_bytes()).map_err(|e| KeyError::format(format!("PEM: {e}")))?;
        match label {
            "PUBLIC KEY" => parse_spki_der(&der),
            "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_der(&der)
                .map(ParsedKey::Rsa)
                .map_err(|e| KeyError::format(format!("PKCS#1 public key: {e}"))),
            other => Err(KeyError::format(format!("PEM label {other:?}"))),
        }
    } else if text.contains(char::is_whitespace) || text.starts_with("ssh-") {
        if text.lines().count() > 1 {
            return Err(KeyError::format("more than one line"));
        }
        let public = PublicKey::from_openssh(text)
            .map_err(|e| KeyError::format(format!("OpenSSH public key: {e}")))?;
        from_key_data(public.key_data())
    } else {
        // "Base64 encoded DER format": the DER SubjectPublicKeyInfo, base64.
        let der = BASE64
            .decode(text)
            .map_err(|e| KeyError::format(format!("not OpenSSH, PEM, RFC 4716 or base64: {e}")))?;
        parse_spki_der(&der)
    }
}

fn parse_spki_der(der: &[u8]) -> Result<ParsedKey, KeyError> {
    let spki = SubjectPublicKeyInfoRef::from_der(der)
        .map_err(|e| KeyError::format(format!("SubjectPublicKeyInfo: {e}")))?;
    if spki.algorithm.oid == ED25519_OID {
        let bytes: [u8; 32] = spki
            .subject_public_key
            .as_bytes()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError::format("ED25519 key not 32 bytes"))?;
        return Ok(ParsedKey::Ed25519(KeyData::Ed25519(Ed25519PublicKey(
            bytes,
        ))));
    }
    RsaPublicKey::from_public_key_der(der)
        .map(ParsedKey::Rsa)
        .map_err(|e| KeyError::format(format!("not an RSA or ED25519 key: {e}")))
}

fn parse_ssh_blob(blob: &[u8]) -> Result<ParsedKey, KeyError> {
    let public =
        PublicKey::from_bytes(blob).map_err(|e| KeyError::format(format!("SSH key blob: {e}")))?;
    from_key_data(public.key_data())
}

fn from_key_data(key_data: &KeyData) -> Result<ParsedKey, KeyError> {
    match key_data {
        KeyData::Ed25519(_) => Ok(ParsedKey::Ed25519(key_data.clone())),
        KeyData::Rsa(key) => {
            // Not ssh-key's own conversion: it refuses keys under 2048 bits,
            // and EC2 takes 1024.
            let (Some(n), Some(e)) = (key.n.as_positive_bytes(), key.e.as_positive_bytes()) else {
                return Err(KeyError::format("RSA key with a non-positive part"));
            };
            RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e))
                .map(ParsedKey::Rsa)
                .map_err(|e| KeyError::format(format!("RSA public key: {e}")))
        }
        other => Err(KeyError::format(format!(
            "{} keys are not accepted",
            other.algorithm()
        ))),
    }
}

/// The base64 body of an RFC 4716 "SSH2 public key" file, decoded. Header
/// lines (`Comment: …`) may continue onto the next line with a backslash.
fn decode_rfc4716(text: &str) -> Result<Vec<u8>, KeyError> {
    let mut lines = text.lines().map(str::trim);
    lines.next(); // the BEGIN line, checked by the caller
    let mut body = String::new();
    let mut in_header_continuation = false;
    let mut ended = false;
    for line in lines {
        if line == "---- END SSH2 PUBLIC KEY ----" {
            ended = true;
            break;
        }
        if in_header_continuation || line.contains(':') {
            in_header_continuation = line.ends_with('\\');
        } else {
            body.push_str(line);
        }
    }
    if !ended {
        return Err(KeyError::format("RFC 4716 key without END line"));
    }
    BASE64
        .decode(body)
        .map_err(|e| KeyError::format(format!("RFC 4716 body: {e}")))
}

fn rsa_key_data(public: &RsaPublicKey) -> Result<KeyData, KeyError> {
    ssh_key::public::RsaPublicKey::try_from(public)
        .map(KeyData::Rsa)
        .map_err(|e| KeyError::format(format!("RSA public key: {e}")))
}

fn openssh_line(key_data: KeyData) -> Result<String, KeyError> {
    PublicKey::new(key_data, "")
        .to_openssh()
        .map_err(|e| KeyError::Generate(format!("OpenSSH public key encoding: {e}")))
}

/// `ssh-keygen -l`'s SHA256 fingerprint, but with base64's padding kept, as
/// EC2 shows it for ED25519 keys.
fn sha256_fingerprint(key_data: &KeyData) -> String {
    BASE64.encode(key_data.fingerprint(HashAlg::Sha256).as_bytes())
}

fn hex_colons(digest: &[u8]) -> String {
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 4251 `string`.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("SSH strings here are far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// RFC 4251 `mpint` of a non-negative integer: big-endian, no leading zero
/// byte unless the top bit would otherwise read as a sign.
fn put_mpint(out: &mut Vec<u8>, value: &BigUint) {
    let bytes = value.to_bytes_be();
    let bytes = match bytes.iter().position(|&b| b != 0) {
        Some(first) => &bytes[first..],
        None => &[][..],
    };
    if bytes.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut padded = Vec::with_capacity(bytes.len() + 1);
        padded.push(0);
        padded.extend_from_slice(bytes);
        put_string(out, &padded);
    } else {
        put_string(out, bytes);
    }
}

/// A PuTTY private key file, format 2, unencrypted: the format every PuTTY
/// since 0.52 reads (format 3 needs 0.75 or later).
///
/// `private_blob` is PuTTY's private half for the algorithm: `mpint d, p, q,
/// iqmp` for RSA, `string seed` for ED25519. The MAC is HMAC-SHA-1 keyed by
/// SHA-1("putty-private-key-file-mac-key" ‖ passphrase), the passphrase
/// empty, over the algorithm, encryption, comment and both blobs.
fn ppk_v2(key_data: &KeyData, private_blob: &[u8]) -> Result<String, KeyError> {
    const ENCRYPTION: &str = "none";
    const COMMENT: &str = "";
    let algorithm = key_data.algorithm();
    let algorithm = algorithm.as_str();
    let public = PublicKey::new(key_data.clone(), "")
        .to_bytes()
        .map_err(|e| KeyError::Generate(format!("SSH public key blob: {e}")))?;

    let mut mac_input = Vec::new();
    put_string(&mut mac_input, algorithm.as_bytes());
    put_string(&mut mac_input, ENCRYPTION.as_bytes());
    put_string(&mut mac_input, COMMENT.as_bytes());
    put_string(&mut mac_input, &public);
    put_string(&mut mac_input, private_blob);
    let mac_key = Sha1::digest(b"putty-private-key-file-mac-key");
    let mut mac = Hmac::<Sha1>::new_from_slice(&mac_key)
        .map_err(|e| KeyError::Generate(format!("PPK MAC: {e}")))?;
    mac.update(&mac_input);
    let mac: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let public_lines = base64_lines(&public);
    let private_lines = base64_lines(private_blob);
    let mut out = String::new();
    out.push_str(&format!("PuTTY-User-Key-File-2: {algorithm}\n"));
    out.push_str(&format!("Encryption: {ENCRYPTION}\n"));
    out.push_str(&format!("Comment: {COMMENT}\n"));
    out.push_str(&format!("Public-Lines: {}\n", public_lines.len()));
    for line in &public_lines {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!("Private-Lines: {}\n", private_lines.len()));
    for line in &private_lines {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!("Private-MAC: {mac}"));
    Ok(out)
}

/// Base64 in the 64-character lines PuTTY writes.
fn base64_lines(bytes: &[u8]) -> Vec<String> {
    let encoded = BASE64.encode(bytes);
    encoded
        .as_bytes()
        .chunks(64)
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_up_to_255_ascii_characters_are_valid() {
        assert!(validate_name("k").is_ok());
        assert!(validate_name(&"a".repeat(255)).is_ok());
        assert!(validate_name("my key (prod) #1!").is_ok());
    }

    #[test]
    fn empty_long_and_non_ascii_names_are_invalid_parameter_values() {
        for name in ["".to_owned(), "a".repeat(256), "clé".to_owned()] {
            let err = validate_name(&name).expect_err(&name);
            assert!(matches!(err, KeyError::InvalidName { .. }));
            assert_eq!(err.code(), "InvalidParameterValue");
        }
    }

    #[test]
    fn format_errors_carry_ec2s_code_and_message() {
        let err = import(b"").expect_err("empty");
        assert_eq!(err.code(), "InvalidKey.Format");
        assert_eq!(
            err.to_string(),
            "Key is not in valid OpenSSH public key format"
        );
    }

    #[test]
    fn key_type_and_format_round_trip_their_wire_values() {
        for t in [KeyType::Rsa, KeyType::Ed25519] {
            assert_eq!(KeyType::parse(t.as_str()), Some(t));
        }
        for f in [KeyFormat::Pem, KeyFormat::Ppk] {
            assert_eq!(KeyFormat::parse(f.as_str()), Some(f));
        }
        assert_eq!(KeyType::parse("dsa"), None);
        assert_eq!(KeyFormat::parse("PEM"), None);
    }

    #[test]
    fn mpint_adds_a_zero_byte_only_before_a_set_top_bit() {
        let mut out = Vec::new();
        put_mpint(&mut out, &BigUint::from(0x80u32));
        assert_eq!(out, [0, 0, 0, 2, 0, 0x80]);
        out.clear();
        put_mpint(&mut out, &BigUint::from(0x7fu32));
        assert_eq!(out, [0, 0, 0, 1, 0x7f]);
        out.clear();
        put_mpint(&mut out, &BigUint::from(0u32));
        assert_eq!(out, [0, 0, 0, 0]);
    }

    #[test]
    fn rfc4716_header_lines_and_their_continuations_are_skipped() {
        let created = create(KeyType::Ed25519, KeyFormat::Pem).expect("create");
        let body = created
            .public_key_openssh
            .split(' ')
            .nth(1)
            .expect("base64 field");
        let (first, rest) = body.split_at(40);
        let file = format!(
            "---- BEGIN SSH2 PUBLIC KEY ----\n\
             Comment: \"a comment that goes on \\\n\
             past one line\"\n\
             x-private: yes\n\
             {first}\n{rest}\n\
             ---- END SSH2 PUBLIC KEY ----\n"
        );
        let imported = import(file.as_bytes()).expect("RFC 4716");
        assert_eq!(imported.public_key_openssh, created.public_key_openssh);
        let unterminated = file.replace("---- END SSH2 PUBLIC KEY ----", "");
        assert!(matches!(
            import(unterminated.as_bytes()),
            Err(KeyError::Format { .. })
        ));
    }

    #[test]
    fn created_ed25519_fingerprint_is_padded_base64_sha256() {
        let created = create(KeyType::Ed25519, KeyFormat::Pem).expect("create");
        assert_eq!(created.fingerprint.len(), 44);
        assert!(created.fingerprint.ends_with('='));
        let imported = import(created.public_key_openssh.as_bytes()).expect("import");
        assert_eq!(imported.fingerprint, created.fingerprint);
        assert_eq!(imported.public_key_openssh, created.public_key_openssh);
    }
}
