//! Where ec2lab keeps its state, and the API credentials `ec2lab init`
//! creates and `ec2lab serve` checks signatures against.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or creating the data directory.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or directory.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The credentials file is not what `ec2lab init` writes.
    #[error("invalid credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
    /// No credentials yet.
    #[error("no credentials in {0}: run `ec2lab init` first")]
    NotInitialised(PathBuf),
}

/// The default data directory: /var/lib/ec2lab for root, else
/// $XDG_DATA_HOME/ec2lab or ~/.local/share/ec2lab.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/ec2lab");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("ec2lab");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/ec2lab")
}

/// The default images directory (where scripts/build-images puts them).
pub fn default_images_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EC2LAB_IMAGES") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("EC2LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ec2lab")
        });
    cache.join("images")
}

/// The API credentials and region of a data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// `AKIA…`, 20 characters like AWS's.
    pub access_key_id: String,
    /// 40 characters like AWS's.
    pub secret_access_key: String,
    /// The one region this endpoint serves.
    pub region: String,
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut bytes = vec![0u8; len];
    // getrandom(2) fills small buffers completely or fails.
    // SAFETY: the pointer and length describe `bytes`, a live writable buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != len as isize {
        // Fall back to the clock: credentials of a local lab, never weaker
        // than a fixed string.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> (i % 16 * 8)) as u8 ^ i as u8;
        }
    }
    bytes
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect()
}

impl Credentials {
    /// New random credentials in AWS's formats.
    pub fn generate(region: &str) -> Self {
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        Self {
            access_key_id: format!("AKIA{}", random_string(UPPER, 16)),
            secret_access_key: random_string(SECRET, 40),
            region: region.to_string(),
        }
    }

    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("credentials.json")
    }

    /// Reads the data directory's credentials.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotInitialised(path))
            }
            Err(source) => {
                return Err(ConfigError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|source| ConfigError::Credentials { path, source })
    }

    /// Reads the credentials, creating the data directory and new
    /// credentials first if there are none (what `ec2lab init` does).
    ///
    /// The data directory is made (or made again) private, 0700: it holds
    /// user data, private keys and the database.
    pub fn load_or_create(data_dir: &Path, region: &str) -> Result<(Self, bool), ConfigError> {
        match Self::load(data_dir) {
            Ok(c) => {
                make_private(data_dir)?;
                return Ok((c, false));
            }
            Err(ConfigError::NotInitialised(_)) => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(data_dir).map_err(|source| ConfigError::Io {
            what: "create",
            path: data_dir.to_path_buf(),
            source,
        })?;
        make_private(data_dir)?;
        let creds = Self::generate(region);
        let path = Self::path(data_dir);
        let text = serde_json::to_string_pretty(&creds).unwrap_or_default();
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{text}\n").as_bytes()))
            .map_err(|source| ConfigError::Io {
                what: "write",
                path: path.clone(),
                source,
            })?;
        Ok((creds, true))
    }

    /// The shell lines that point the aws CLI and boto3 at this endpoint.
    pub fn exports(&self) -> String {
        format!(
            "export AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} AWS_DEFAULT_REGION={}",
            self.access_key_id, self.secret_access_key, self.region
        )
    }
}

/// Sets `dir` to 0700, whatever the umask made it or an older ec2lab left.
fn make_private(dir: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        ConfigError::Io {
            what: "chmod",
            path: dir.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_is_private_even_when_it_was_not() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        Credentials::load_or_create(&dir, "us-east-1").expect("create");
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Credentials::load_or_create(&dir, "us-east-1").expect("load");
        assert_eq!(
            mode(&dir),
            0o700,
            "an existing directory is made private again"
        );
    }

    #[test]
    fn generated_credentials_look_like_aws_ones_and_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, created) = Credentials::load_or_create(dir.path(), "us-east-1").expect("create");
        assert!(created);
        assert!(c.access_key_id.starts_with("AKIA") && c.access_key_id.len() == 20);
        assert_eq!(c.secret_access_key.len(), 40);
        let (again, created) = Credentials::load_or_create(dir.path(), "us-east-1").expect("load");
        assert!(!created);
        assert_eq!(again, c);
        assert_ne!(Credentials::generate("us-east-1"), c);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("credentials.json"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(c.exports().contains("AWS_DEFAULT_REGION=us-east-1"));
    }

    #[test]
    fn a_broken_credentials_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("credentials.json"), "{").expect("write");
        let e = Credentials::load(dir.path()).expect_err("broken");
        assert!(e.to_string().contains("credentials.json"), "{e}");
    }
}
