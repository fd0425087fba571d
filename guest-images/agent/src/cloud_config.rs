//! `#cloud-config` user data: the `write_files` and `runcmd` modules, and
//! a clear warning for `packages`, which this image cannot honour.
//!
//! Order follows cloud-init: files are written before commands run.
//! Each action gets its own `ec2lab-guest: cloud-config: ...` line.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::log::{self, Done, Outcome};
use crate::paths::rooted;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

use crate::command;
use crate::yaml::{self, Yaml};

const STEP: &str = "cloud-config";

/// Largest file `write_files` will decompress.
const MAX_GUNZIPPED_FILE: u64 = 1 << 20;

/// Standard-alphabet base64 with or without `=` padding, as Python's
/// `b64decode` (cloud-init) accepts; whitespace is removed first by
/// [`decode_base64`].
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why cloud-config user data was not fully applied.
#[derive(Debug, thiserror::Error)]
pub enum CloudConfigError {
    /// The document is not in the supported YAML subset.
    #[error("cloud-config does not parse: {0}")]
    Parse(#[from] yaml::ParseError),
    /// The document is not a mapping of module names.
    #[error("cloud-config is not a mapping of module names")]
    NotAMapping,
    /// Some actions failed (each logged on its own line).
    #[error("{failed} of {total} cloud-config actions failed")]
    ActionsFailed {
        /// How many failed.
        failed: usize,
        /// How many were tried.
        total: usize,
    },
}

/// Why one `write_files` entry was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteFileError {
    /// The entry has no `path`.
    #[error("write_files[{0}] has no path")]
    NoPath(usize),
    /// The path is not absolute.
    #[error("write_files path {0:?} is not absolute")]
    RelativePath(String),
    /// `permissions` is not an octal mode.
    #[error("{path}: permissions {value:?} is not an octal mode like '0644'")]
    BadPermissions {
        /// The file.
        path: String,
        /// The value given.
        value: String,
    },
    /// The encoding is unknown or the content does not decode.
    #[error("{path}: content does not decode as {encoding}")]
    BadContent {
        /// The file.
        path: String,
        /// The encoding given.
        encoding: String,
    },
    /// Writing failed.
    #[error("cannot write {path}: {source}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Applies a cloud-config document with files below `root`.
pub fn apply(text: &str, root: &Path) -> Result<Done, CloudConfigError> {
    let doc = yaml::parse(text)?;
    let entries = match &doc {
        Yaml::Map(entries) => entries.as_slice(),
        Yaml::Null => &[],
        _ => return Err(CloudConfigError::NotAMapping),
    };
    let (mut total, mut failed) = (0, 0);
    let mut tally = |ok: bool| {
        total += 1;
        if !ok {
            failed += 1;
        }
    };

    let unsupported: Vec<&str> = entries
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| {
            !matches!(
                *k,
                "write_files" | "runcmd" | "packages" | "package_update" | "package_upgrade"
            )
        })
        .collect();
    if !unsupported.is_empty() {
        log::line(
            STEP,
            Outcome::Skipped,
            format!(
                "not supported by ec2lab-guest, ignored: {}",
                unsupported.join(", ")
            ),
        );
    }

    if let Some(files) = doc.get("write_files") {
        let files = match files {
            Yaml::List(items) => items.as_slice(),
            Yaml::Null => &[],
            _ => {
                log::line(STEP, Outcome::Failed, "write_files is not a list");
                tally(false);
                &[]
            }
        };
        for (i, file) in files.iter().enumerate() {
            match write_file(i, file, root) {
                Ok(detail) => {
                    log::line(STEP, Outcome::Ok, detail);
                    tally(true);
                }
                Err(e) => {
                    log::line(STEP, Outcome::Failed, e);
                    tally(false);
                }
            }
        }
    }

    if doc.get("packages").is_some_and(|p| *p != Yaml::Null) {
        log::line(
            STEP,
            Outcome::Skipped,
            "packages are not supported on this image",
        );
    }
    for key in ["package_update", "package_upgrade"] {
        if doc
            .get(key)
            .and_then(Yaml::as_str)
            .is_some_and(|v| v == "true")
        {
            log::line(
                STEP,
                Outcome::Skipped,
                format!("{key} is not supported on this image"),
            );
        }
    }

    if let Some(cmds) = doc.get("runcmd") {
        let cmds = match cmds {
            Yaml::List(items) => items.as_slice(),
            Yaml::Null => &[],
            _ => {
                log::line(STEP, Outcome::Failed, "runcmd is not a list");
                tally(false);
                &[]
            }
        };
        for (i, cmd) in cmds.iter().enumerate() {
            let ok = run_command(i, cmd);
            tally(ok);
        }
    }

    if failed > 0 {
        return Err(CloudConfigError::ActionsFailed { failed, total });
    }
    Ok(Done::Ok(format!("cloud-config applied: {total} actions")))
}

/// One `write_files` entry; returns the log detail.
fn write_file(index: usize, entry: &Yaml, root: &Path) -> Result<String, WriteFileError> {
    let field = |name| entry.get(name).and_then(Yaml::as_str);
    let path = field("path").ok_or(WriteFileError::NoPath(index))?;
    if !path.starts_with('/') {
        return Err(WriteFileError::RelativePath(path.to_string()));
    }
    let mode = match field("permissions") {
        None => 0o644,
        Some(value) => parse_mode(value).ok_or_else(|| WriteFileError::BadPermissions {
            path: path.to_string(),
            value: value.to_string(),
        })?,
    };
    let text = field("content").unwrap_or_default();
    let encoding = field("encoding").unwrap_or("text/plain");
    let bad_content = || WriteFileError::BadContent {
        path: path.to_string(),
        encoding: encoding.to_string(),
    };
    let content = match encoding {
        "text/plain" => text.as_bytes().to_vec(),
        "b64" | "base64" => decode_base64(text).ok_or_else(bad_content)?,
        "gz+b64" | "gz+base64" | "gzip+b64" | "gzip+base64" => {
            let compressed = decode_base64(text).ok_or_else(bad_content)?;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(compressed.as_slice())
                .take(MAX_GUNZIPPED_FILE + 1)
                .read_to_end(&mut out)
                .map_err(|_| bad_content())?;
            if out.len() as u64 > MAX_GUNZIPPED_FILE {
                return Err(bad_content());
            }
            out
        }
        _ => return Err(bad_content()),
    };
    let append = field("append") == Some("true");

    let target = rooted(root, path);
    let io_err = |source| WriteFileError::Io {
        path: target.clone(),
        source,
    };
    if let Some(dir) = target.parent() {
        fs::create_dir_all(dir).map_err(io_err)?;
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .mode(mode)
        .open(&target)
        .map_err(io_err)?;
    file.write_all(&content).map_err(io_err)?;
    drop(file);
    fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(io_err)?;

    let owner_note = match field("owner") {
        Some(o) if o != "root" && o != "root:root" => {
            format!("; owner {o} not supported, left root")
        }
        _ => String::new(),
    };
    let verb = if append { "appended to" } else { "wrote" };
    Ok(format!(
        "{verb} {path} ({:04o}, {} bytes){owner_note}",
        mode,
        content.len()
    ))
}

/// Decodes `write_files` base64 content, which is usually a `|` block
/// broken into lines. `None` on any other character or a bad length.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    BASE64.decode(compact).ok()
}

/// `0644`, `644` or `0o644`.
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.trim().trim_start_matches("0o");
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

/// One `runcmd` entry: a string runs under `/bin/sh -c`; a list is the
/// argv itself (the same as cloud-init, which shell-quotes list items, so
/// nothing in them is expanded). Logs and returns whether it succeeded.
fn run_command(index: usize, entry: &Yaml) -> bool {
    let (mut cmd, shown) = match entry {
        Yaml::Str(line) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(line);
            (cmd, line.clone())
        }
        Yaml::List(items) if !items.is_empty() => {
            let argv: Option<Vec<&str>> = items.iter().map(Yaml::as_str).collect();
            let Some(argv) = argv else {
                log::line(
                    STEP,
                    Outcome::Failed,
                    format!("runcmd[{index}] has a non-string argument"),
                );
                return false;
            };
            let mut cmd = Command::new(argv[0]);
            cmd.args(&argv[1..]);
            (cmd, argv.join(" "))
        }
        _ => {
            log::line(
                STEP,
                Outcome::Failed,
                format!("runcmd[{index}] is neither a string nor a list of strings"),
            );
            return false;
        }
    };
    match command::run(&mut cmd) {
        Ok(status) if status.success() => {
            log::line(
                STEP,
                Outcome::Ok,
                format!("runcmd[{index}] {}: {shown}", command::describe(status)),
            );
            true
        }
        Ok(status) => {
            log::line(
                STEP,
                Outcome::Failed,
                format!("runcmd[{index}] {}: {shown}", command::describe(status)),
            );
            false
        }
        Err(e) => {
            log::line(
                STEP,
                Outcome::Failed,
                format!("runcmd[{index}] cannot start: {e}: {shown}"),
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::{apply, decode_base64, parse_mode, CloudConfigError};
    use crate::log::Done;

    /// Written the way the cloud-init docs' examples are: anchors and a
    /// merge key, flow lists and a flow mapping, `|` and `>` blocks, base64
    /// split over lines, and modules this image does not run.
    const REAL_WORLD: &str = "#cloud-config
users:
  - default
  - name: ada
    groups: [adm, wheel]
    sudo: [\"ALL=(ALL) NOPASSWD:ALL\"]
    ssh_authorized_keys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEc2VGVzdEtleQ ada@example
packages: [nginx, htop]
file_defaults: &secret
  owner: root:root
  permissions: '0600'
write_files:
  - <<: *secret
    path: /etc/app/config.ini
    content: |
      [server]
      port = 8080
  - path: /etc/app/banner
    content: >
      folded lines
      become one
  - path: /usr/local/bin/hello
    permissions: '0755'
    encoding: b64
    content: |
      IyEvYmluL3NoCmVjaG8g
      aGVsbG8K
  - path: /etc/app/gz
    encoding: gz+b64
    content: |
      H4sIAAAAAAAAA0uvyiwo
      SE1RyEjNycnnAgDLBYAP
      DgAAAA==
  - {path: /etc/app/flow, content: \"inline\\n\", append: true}
";

    fn mode(path: &std::path::Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn real_world_cloud_config_writes_every_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let done = apply(REAL_WORLD, root.path()).expect("apply");
        assert!(
            matches!(&done, Done::Ok(d) if d == "cloud-config applied: 5 actions"),
            "{done:?}"
        );
        let read = |p: &str| fs::read_to_string(root.path().join(p)).expect(p);
        assert_eq!(read("etc/app/config.ini"), "[server]\nport = 8080\n");
        assert_eq!(mode(&root.path().join("etc/app/config.ini")), 0o600);
        assert_eq!(read("etc/app/banner"), "folded lines become one\n");
        assert_eq!(read("usr/local/bin/hello"), "#!/bin/sh\necho hello\n");
        assert_eq!(mode(&root.path().join("usr/local/bin/hello")), 0o755);
        assert_eq!(read("etc/app/gz"), "gzipped hello\n");
        assert_eq!(read("etc/app/flow"), "inline\n");
        assert_eq!(mode(&root.path().join("etc/app/flow")), 0o644);
    }

    #[test]
    fn a_module_of_the_wrong_shape_fails_that_action_only() {
        let root = tempfile::tempdir().expect("tempdir");
        let doc = "write_files: [{path: /a, content: x}]\nruncmd: {a: b}\n";
        match apply(doc, root.path()) {
            Err(CloudConfigError::ActionsFailed { failed, total }) => {
                assert_eq!((failed, total), (1, 2));
            }
            other => panic!("{other:?}"),
        }
        assert!(root.path().join("a").exists());
    }

    #[test]
    fn broken_yaml_names_its_line() {
        let root = tempfile::tempdir().expect("tempdir");
        let err = apply("#cloud-config\nruncmd: [ls\nwrite_files: []\n", root.path())
            .expect_err("broken");
        assert!(
            err.to_string()
                .starts_with("cloud-config does not parse: line 3: "),
            "{err}"
        );
    }

    #[test]
    fn base64_decodes_with_or_without_padding_across_lines() {
        assert_eq!(decode_base64("aGVsbG8K").as_deref(), Some(&b"hello\n"[..]));
        assert_eq!(decode_base64("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode_base64("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(
            decode_base64("aG\nVs bG8K\n").as_deref(),
            Some(&b"hello\n"[..])
        );
        assert_eq!(decode_base64("aGk*"), None);
        assert_eq!(decode_base64("a"), None);
    }

    #[test]
    fn modes_are_octal_text() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(parse_mode("rw"), None);
    }
}
