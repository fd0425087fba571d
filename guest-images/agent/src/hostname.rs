//! The hostname step: `local-hostname` (or `hostname`) from metadata into
//! `/etc/hostname`, and into the kernel with sethostname(2) when the agent
//! manages the real root.

use std::io;
use std::path::{Path, PathBuf};

use crate::imds::{Imds, ImdsError};
use crate::log::Done;
use crate::paths::rooted;

/// Longest name sethostname(2) accepts (HOST_NAME_MAX on Linux).
const HOST_NAME_MAX: usize = 64;

/// Why the hostname step failed.
#[derive(Debug, thiserror::Error)]
pub enum HostnameError {
    /// Asking the metadata service failed.
    #[error(transparent)]
    Imds(#[from] ImdsError),
    /// The metadata value is not a host name.
    #[error("metadata host name {0:?} is not a valid host name")]
    Invalid(String),
    /// Writing `/etc/hostname` failed.
    #[error("cannot write {path}: {source}", path = .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// sethostname(2) failed.
    #[error("sethostname({name}) failed: {source}")]
    Set {
        /// The name.
        name: String,
        /// The error.
        source: io::Error,
    },
}

/// Fetches the host name and applies it.
pub fn apply(imds: &mut Imds, root: &Path, set_kernel: bool) -> Result<Done, HostnameError> {
    let raw = match imds.get("/latest/meta-data/local-hostname")? {
        Some(v) => v,
        None => match imds.get("/latest/meta-data/hostname")? {
            Some(v) => v,
            None => {
                return Ok(Done::Skipped(
                    "no local-hostname or hostname in metadata".into(),
                ))
            }
        },
    };
    let name = String::from_utf8_lossy(&raw).trim().to_string();
    if !is_valid_hostname(&name) {
        return Err(HostnameError::Invalid(name));
    }
    let path = rooted(root, "/etc/hostname");
    let write = |path: &Path| -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, format!("{name}\n"))
    };
    write(&path).map_err(|source| HostnameError::Write {
        path: path.clone(),
        source,
    })?;
    if !set_kernel {
        return Ok(Done::Ok(format!(
            "{name} (wrote {}; kernel host name left alone)",
            path.display()
        )));
    }
    set_kernel_hostname(&name).map_err(|source| HostnameError::Set {
        name: name.clone(),
        source,
    })?;
    Ok(Done::Ok(format!("{name} (wrote {}, set)", path.display())))
}

/// Letters, digits, `-` and `.`, labels of 1–63 characters, at most
/// [`HOST_NAME_MAX`] in all.
fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= HOST_NAME_MAX
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn set_kernel_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which live
    // for the whole call; the kernel copies at most `len` bytes and does
    // not need a terminating NUL.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid_hostname;

    #[test]
    fn ec2_style_names_are_valid() {
        assert!(is_valid_hostname("ip-10-0-0-5.ec2.internal"));
        assert!(is_valid_hostname("web1"));
    }

    #[test]
    fn odd_names_are_rejected() {
        assert!(!is_valid_hostname(""));
        assert!(!is_valid_hostname("a..b"));
        assert!(!is_valid_hostname("has space"));
        assert!(!is_valid_hostname("-lead"));
        assert!(!is_valid_hostname(&"a".repeat(65)));
    }
}
