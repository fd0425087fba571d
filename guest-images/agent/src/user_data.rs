//! The user-data step: fetch, size-check, gunzip, run once per instance.
//!
//! "Once per instance" is a marker file named after the instance id,
//! written *before* the user data runs (as cloud-init's per-instance
//! semaphore): a script that reboots the machine must not run again on
//! every boot. A new instance id (an image made from this disk and
//! launched again) runs it again.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cloud_config::{self, CloudConfigError};
use crate::command;
use crate::imds::{Imds, ImdsError};
use crate::log::Done;
use crate::paths::{rooted, STATE_DIR};

/// EC2's limit on user data, before base64.
pub const MAX_USER_DATA_BYTES: usize = 16384;
/// Largest user data accepted after gunzip.
pub const MAX_GUNZIPPED_BYTES: u64 = 1 << 20;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Why user data did not run, or failed.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// Asking the metadata service failed.
    #[error(transparent)]
    Imds(#[from] ImdsError),
    /// Over [`MAX_USER_DATA_BYTES`].
    #[error("user data is {0} bytes, over the {MAX_USER_DATA_BYTES}-byte limit; not running it")]
    TooLarge(usize),
    /// Starts like gzip but does not decompress.
    #[error("user data looks gzipped but does not decompress: {0}")]
    Gunzip(io::Error),
    /// Decompresses to more than [`MAX_GUNZIPPED_BYTES`].
    #[error("gzipped user data is over {MAX_GUNZIPPED_BYTES} bytes decompressed; not running it")]
    GunzippedTooLarge,
    /// `#cloud-config` that is not UTF-8.
    #[error("cloud-config user data is not UTF-8")]
    NotUtf8,
    /// A state file could not be written or the script not started.
    #[error("{what} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The script ran and did not exit 0.
    #[error("user data script {0}")]
    ScriptFailed(String),
    /// Some cloud-config actions failed.
    #[error(transparent)]
    CloudConfig(#[from] CloudConfigError),
}

/// What user data is, judged by its first bytes as cloud-init does.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// `#!...`: an executable script.
    Script,
    /// `#cloud-config`.
    CloudConfig,
    /// MIME multipart, which this agent does not take apart.
    Multipart,
    /// Anything else.
    Other,
}

fn kind(data: &[u8]) -> Kind {
    let first_line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
    if data.starts_with(b"#!") {
        Kind::Script
    } else if first_line.trim_ascii_end() == b"#cloud-config" {
        Kind::CloudConfig
    } else if first_line
        .to_ascii_lowercase()
        .starts_with(b"content-type: multipart/")
    {
        Kind::Multipart
    } else {
        Kind::Other
    }
}

/// Runs the instance's user data unless it already ran for `instance_id`
/// (which the caller has checked is a safe file name).
pub fn run(imds: &mut Imds, root: &Path, instance_id: &str) -> Result<Done, UserDataError> {
    let state = rooted(root, STATE_DIR);
    let marker_dir = state.join("user-data-ran");
    let marker = marker_dir.join(instance_id);
    if marker.exists() {
        return Ok(Done::Skipped(format!("already ran for {instance_id}")));
    }
    let Some(raw) = imds.get("/latest/user-data")? else {
        return Ok(Done::Skipped("no user data".into()));
    };
    if raw.len() > MAX_USER_DATA_BYTES {
        return Err(UserDataError::TooLarge(raw.len()));
    }
    let data = if raw.starts_with(&GZIP_MAGIC) {
        gunzip(&raw)?
    } else {
        raw
    };
    let kind = kind(&data);
    match kind {
        Kind::Script | Kind::CloudConfig => {}
        Kind::Multipart => {
            return Ok(Done::Skipped(
                "multipart MIME user data is not supported".into(),
            ))
        }
        Kind::Other => {
            return Ok(Done::Skipped(
                "user data is not a script or cloud-config".into(),
            ))
        }
    }

    let io_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| UserDataError::Io { what, path, source }
    };
    fs::create_dir_all(&marker_dir).map_err(io_err("cannot create", &marker_dir))?;
    fs::write(&marker, b"").map_err(io_err("cannot write", &marker))?;

    if kind == Kind::CloudConfig {
        let text = std::str::from_utf8(&data).map_err(|_| UserDataError::NotUtf8)?;
        return Ok(cloud_config::apply(text, root)?);
    }

    let script = state.join(format!("user-data.{instance_id}"));
    write_executable(&script, &data).map_err(io_err("cannot write", &script))?;
    let status = command::run(&mut Command::new(&script)).map_err(io_err("cannot run", &script))?;
    if status.success() {
        Ok(Done::Ok(format!(
            "user data script {}",
            command::describe(status)
        )))
    } else {
        Err(UserDataError::ScriptFailed(command::describe(status)))
    }
}

fn gunzip(data: &[u8]) -> Result<Vec<u8>, UserDataError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(MAX_GUNZIPPED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(UserDataError::Gunzip)?;
    if out.len() as u64 > MAX_GUNZIPPED_BYTES {
        return Err(UserDataError::GunzippedTooLarge);
    }
    Ok(out)
}

/// Writes `data` to `path` with mode 0700, replacing any earlier file.
fn write_executable(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o700)
        .open(path)?;
    file.write_all(data)?;
    // Closed before exec: an open writer would make exec fail (ETXTBSY).
    drop(file);
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_is_judged_by_the_first_line() {
        assert_eq!(kind(b"#!/bin/sh\necho hi\n"), Kind::Script);
        assert_eq!(kind(b"#cloud-config\nruncmd: []\n"), Kind::CloudConfig);
        assert_eq!(kind(b"#cloud-config\r\n"), Kind::CloudConfig);
        assert_eq!(
            kind(b"Content-Type: multipart/mixed; boundary=x\n"),
            Kind::Multipart
        );
        assert_eq!(kind(b"\x00\x01binary"), Kind::Other);
        assert_eq!(kind(b"echo not a script"), Kind::Other);
    }

    #[test]
    fn gunzip_caps_the_output() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'a'; (MAX_GUNZIPPED_BYTES + 10) as usize])
            .expect("compress");
        let bomb = enc.finish().expect("finish");
        assert!(matches!(
            gunzip(&bomb),
            Err(UserDataError::GunzippedTooLarge)
        ));
        assert!(matches!(
            gunzip(&[0x1f, 0x8b, 0, 0]),
            Err(UserDataError::Gunzip(_))
        ));
    }
}
