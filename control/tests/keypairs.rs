//! Key pairs checked against the tools users hold them up to: OpenSSH's
//! `ssh-keygen`, the `openssl` pipelines the EC2 User Guide gives for
//! verifying fingerprints, and PuTTY's `puttygen`. A test whose tool is not
//! installed says so on stderr and passes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use ec2lab_control::keypairs::{self, KeyError, KeyFormat, KeyType};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};

/// Made with `ssh-keygen -t dsa`; EC2 refuses DSA keys.
const DSA_PUBLIC_KEY: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBAORTmi8qTdv42BXYazir1/lE3XdRRdGB3FgORMthHMMcR3aQQba74Cj154syMuzeQIG2GUk4Ep8o+5zkETiMfIvQ9RHESpOvDB2lT2jHTVoUuHNCc5NyJaKZ58v1NDrfnvjEh+evgcKhtfiMhzp+HGdCiIdGPMo60CyOF0XKg33rAAAAFQC0JhnnY6fRui+Aun3wZEnH8lIojQAAAIEAxorb+FUpSMrVEzT/K6W/sLpXSpf2ugd5cXhIf0ythML+8MukEWhCT8GWUBvvJ7Qz/g2irNd6nKDJty13ldJMuWhrSOCUjxQ0auNwGh3luvbgZEnKuH22cX5sk0h5gU9DkoYRTwDMZJpkW53JT8vfss6XVfvDuK9QNEII1mgfEsAAAACBAMAdzaY0TlQ4geaMlKaXXAZYYVCRkB2qClJmHrCLsk4DEAYauutiRg7olBkXwdrbk8AWlcUW68oybFIdER/l3iKgrde+xKEHFN+69Oo42yOHCuN1fCitJM4mR+Ccj5nzKRMwNrNf/5WTcJNQKyhmoDyd/ntFWh3BLbQAqd+4U1sa dsa-test";

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("skipping: {tool} is not installed");
    }
    found
}

/// Runs a shell pipeline, panicking with its stderr if it fails.
fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .args(["-euc", script])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Writes a private key the way `--output text > k.pem; chmod 400` leaves
/// it; ssh-keygen refuses keys others can read.
fn write_private(dir: &Path, name: &str, material: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, material).expect("write key");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn ssh_keygen(dir: &Path, args: &str) -> PathBuf {
    let path = dir.join("key");
    sh(&format!(
        "ssh-keygen -q -N '' -C test-comment -f {} {args}",
        path.display()
    ));
    path
}

/// `openssl md5 -c` prints `MD5(stdin)= aa:bb:…`.
fn openssl_digest(output: &str) -> String {
    output.rsplit(' ').next().expect("digest").trim().to_owned()
}

fn first_base64_body(pem: &str) -> String {
    pem.lines()
        .filter(|line| !line.starts_with("-----"))
        .collect()
}

fn expect_format_error(material: &[u8]) {
    match keypairs::import(material) {
        Err(err @ KeyError::Format { .. }) => {
            assert_eq!(err.code(), "InvalidKey.Format");
            assert_eq!(
                err.to_string(),
                "Key is not in valid OpenSSH public key format"
            );
        }
        other => panic!(
            "{:?} imported as {other:?}",
            String::from_utf8_lossy(material)
        ),
    }
}

#[test]
fn created_rsa_pem_is_a_2048_bit_pkcs1_key_whose_public_half_is_the_openssh_key() {
    let created = keypairs::create(KeyType::Rsa, KeyFormat::Pem).expect("create");
    assert!(created
        .key_material
        .starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
    assert!(created
        .key_material
        .ends_with("\n-----END RSA PRIVATE KEY-----"));
    let private = rsa::RsaPrivateKey::from_pkcs1_pem(&created.key_material).expect("PKCS#1 PEM");
    assert_eq!(private.n().bits(), 2048);
    assert!(
        private.primes()[0] > private.primes()[1],
        "p > q, as OpenSSL orders them"
    );

    let public = ssh_key::PublicKey::from_openssh(&created.public_key_openssh).expect("OpenSSH");
    let ssh_rsa = public.key_data().rsa().expect("an RSA key");
    assert_eq!(
        ssh_rsa.n.as_positive_bytes(),
        Some(&private.n().to_bytes_be()[..])
    );
    assert_eq!(
        ssh_rsa.e.as_positive_bytes(),
        Some(&private.e().to_bytes_be()[..])
    );
    assert!(created.public_key_openssh.starts_with("ssh-rsa AAAA"));
    assert!(!created.public_key_openssh.ends_with(' '));
}

#[test]
fn created_rsa_fingerprint_is_the_sha1_openssl_gives_for_the_pkcs8_key() {
    if !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let created = keypairs::create(KeyType::Rsa, KeyFormat::Pem).expect("create");
    assert_eq!(created.fingerprint.len(), 59, "20 bytes, hex with colons");
    let pem = write_private(dir.path(), "k.pem", &created.key_material);
    let sha1 = sh(&format!(
        "openssl pkcs8 -topk8 -nocrypt -in {} -outform DER | openssl sha1 -c",
        pem.display()
    ));
    assert_eq!(created.fingerprint, openssl_digest(&sha1));
}

#[test]
fn ssh_keygen_reads_created_private_keys_of_both_types() {
    if !have("ssh-keygen") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for key_type in [KeyType::Rsa, KeyType::Ed25519] {
        let created = keypairs::create(key_type, KeyFormat::Pem).expect("create");
        let pem = write_private(dir.path(), key_type.as_str(), &created.key_material);
        let public = sh(&format!("ssh-keygen -y -f {}", pem.display()));
        assert_eq!(public.trim(), created.public_key_openssh, "{key_type:?}");
    }
}

#[test]
fn created_ed25519_is_an_openssh_private_key_fingerprinted_like_ssh_keygen() {
    let created = keypairs::create(KeyType::Ed25519, KeyFormat::Pem).expect("create");
    assert!(created
        .key_material
        .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
    assert!(created
        .key_material
        .ends_with("\n-----END OPENSSH PRIVATE KEY-----\n"));
    assert!(created.public_key_openssh.starts_with("ssh-ed25519 AAAA"));
    // 32 bytes of SHA-256 in padded base64, as the EC2 console shows it.
    assert_eq!(created.fingerprint.len(), 44);
    assert!(created.fingerprint.ends_with('='));
    if !have("ssh-keygen") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = write_private(dir.path(), "k.pem", &created.key_material);
    let listed = sh(&format!("ssh-keygen -l -E sha256 -f {}", pem.display()));
    let sha256 = listed.split_whitespace().nth(1).expect("fingerprint field");
    assert_eq!(
        format!("SHA256:{}", created.fingerprint.trim_end_matches('=')),
        sha256
    );
}

#[test]
fn imported_rsa_fingerprint_is_the_md5_of_the_der_public_key_as_aws_documents() {
    if !have("ssh-keygen") || !have("openssl") {
        return;
    }
    for bits in [1024, 2048, 3072, 4096] {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = ssh_keygen(dir.path(), &format!("-t rsa -b {bits}"));
        let public = fs::read(key.with_extension("pub")).expect("key.pub");
        let imported = keypairs::import(&public).expect("import");
        assert_eq!(imported.key_type, KeyType::Rsa);
        let md5 = sh(&format!(
            "ssh-keygen -ef {}.pub -m PEM | openssl rsa -RSAPublicKey_in -outform DER | openssl md5 -c",
            key.display()
        ));
        assert_eq!(imported.fingerprint, openssl_digest(&md5), "{bits} bits");
        let without_comment = String::from_utf8(public).expect("utf-8");
        let without_comment = without_comment.trim().trim_end_matches(" test-comment");
        assert_eq!(imported.public_key_openssh, without_comment);
    }
}

#[test]
fn imported_ed25519_fingerprint_is_ssh_keygens_sha256_with_padding() {
    if !have("ssh-keygen") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "-t ed25519");
    let public = fs::read(key.with_extension("pub")).expect("key.pub");
    let imported = keypairs::import(&public).expect("import");
    assert_eq!(imported.key_type, KeyType::Ed25519);
    let listed = sh(&format!("ssh-keygen -l -E sha256 -f {}.pub", key.display()));
    let sha256 = listed.split_whitespace().nth(1).expect("fingerprint field");
    assert_eq!(
        format!("SHA256:{}", imported.fingerprint.trim_end_matches('=')),
        sha256
    );
    assert!(imported.fingerprint.ends_with('='));
}

#[test]
fn every_public_key_file_format_ec2_lists_imports_to_the_same_key() {
    if !have("ssh-keygen") {
        return;
    }
    for key_type in ["rsa", "ed25519"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = ssh_keygen(dir.path(), &format!("-t {key_type}"));
        let pub_path = format!("{}.pub", key.display());
        let openssh = keypairs::import(&fs::read(&pub_path).expect("key.pub")).expect("OpenSSH");

        let rfc4716 = sh(&format!("ssh-keygen -e -m RFC4716 -f {pub_path}"));
        assert!(rfc4716.contains("Comment:"));
        assert_eq!(
            keypairs::import(rfc4716.as_bytes()).expect("RFC 4716"),
            openssh
        );

        if key_type == "rsa" {
            // ssh-keygen writes ED25519 keys in neither of these.
            let spki = sh(&format!("ssh-keygen -e -m PKCS8 -f {pub_path}"));
            assert_eq!(
                keypairs::import(spki.as_bytes()).expect("SPKI PEM"),
                openssh
            );
            let base64_der = first_base64_body(&spki);
            assert_eq!(
                keypairs::import(base64_der.as_bytes()).expect("base64 DER"),
                openssh
            );
            let pkcs1 = sh(&format!("ssh-keygen -e -m PEM -f {pub_path}"));
            assert_eq!(
                keypairs::import(pkcs1.as_bytes()).expect("PKCS#1 PEM"),
                openssh
            );
        }
    }
}

#[test]
fn ed25519_subject_public_key_info_imports_as_the_same_openssh_key() {
    if !have("openssl") {
        return;
    }
    let spki = sh("openssl genpkey -algorithm ed25519 | openssl pkey -pubout");
    let der = base64::engine::general_purpose::STANDARD
        .decode(first_base64_body(&spki))
        .expect("base64");
    // RFC 8410: a 12-byte header, then the 32-byte key.
    let raw: [u8; 32] = der[12..].try_into().expect("32 bytes");
    let expected = ssh_key::PublicKey::new(
        ssh_key::public::KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(raw)),
        "",
    );
    let expected = expected.to_openssh().expect("OpenSSH");
    for material in [spki.clone(), first_base64_body(&spki)] {
        let imported = keypairs::import(material.as_bytes()).expect("import");
        assert_eq!(imported.key_type, KeyType::Ed25519);
        assert_eq!(imported.public_key_openssh, expected);
    }
    assert_eq!(
        keypairs::import(&der).expect("raw DER").public_key_openssh,
        expected
    );
}

#[test]
fn garbage_empty_dsa_ecdsa_and_small_rsa_keys_are_format_errors() {
    expect_format_error(b"");
    expect_format_error(b"  \n");
    expect_format_error(b"hello, world");
    expect_format_error(b"ssh-rsa notbase64!!");
    expect_format_error(b"ssh-rsa AAAA");
    expect_format_error(&[0x30, 0x82, 0xff]);
    expect_format_error(DSA_PUBLIC_KEY.as_bytes());

    let small = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 768).expect("RSA 768");
    let small = ssh_key::public::RsaPublicKey::try_from(small.to_public_key()).expect("to SSH");
    let small = ssh_key::PublicKey::new(ssh_key::public::KeyData::Rsa(small), "");
    expect_format_error(small.to_openssh().expect("OpenSSH").as_bytes());

    if have("ssh-keygen") {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = ssh_keygen(dir.path(), "-t ecdsa -b 256");
        expect_format_error(&fs::read(key.with_extension("pub")).expect("key.pub"));
    }
}

#[test]
fn two_keys_in_one_import_are_a_format_error() {
    let a = keypairs::create(KeyType::Ed25519, KeyFormat::Pem).expect("create");
    let b = keypairs::create(KeyType::Ed25519, KeyFormat::Pem).expect("create");
    let both = format!("{}\n{}\n", a.public_key_openssh, b.public_key_openssh);
    expect_format_error(both.as_bytes());
}

#[test]
fn puttygen_loads_created_ppk_keys_of_both_types() {
    if !have("puttygen") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for key_type in [KeyType::Rsa, KeyType::Ed25519] {
        let created = keypairs::create(key_type, KeyFormat::Ppk).expect("create");
        assert!(created.key_material.starts_with("PuTTY-User-Key-File-2: "));
        let ppk = write_private(dir.path(), "k.ppk", &created.key_material);
        // puttygen checks the MAC, and the RSA key's consistency, on load.
        let public = sh(&format!(
            "puttygen {} -O public-openssh -o /dev/stdout",
            ppk.display()
        ));
        assert_eq!(public.trim(), created.public_key_openssh, "{key_type:?}");
        if key_type == KeyType::Rsa && have("openssl") {
            // The fingerprint of a key made as PPK follows the same PKCS#8 rule.
            let sha1 = sh(&format!(
                "puttygen {} -O private-openssh -o /dev/stdout | openssl pkcs8 -topk8 -nocrypt -outform DER | openssl sha1 -c",
                ppk.display()
            ));
            assert_eq!(created.fingerprint, openssl_digest(&sha1));
        }
    }
}
