//! EC2 Instance Connect in the guest: the keys `SendSSHPublicKey` pushed,
//! which the metadata service lists under
//! `managed-ssh-keys/active-keys/<user>/` for their 60 seconds.
//!
//! Two ways to honour them, as EC2's own packages do:
//! - `ec2lab-guest connect-keys USER` prints USER's active keys, for
//!   OpenSSH's `AuthorizedKeysCommand` (debian-12): sshd asks at each
//!   login, so an expired key is refused at once.
//! - `ec2lab-guest connect-keys --watch` keeps each user's
//!   `~/.ssh/authorized_keys` in step with the metadata, for servers with
//!   no such hook (dropbear in lab-minimal): a pushed key appears, and an
//!   expired one disappears, within one polling interval. The lines it
//!   writes end in the comment [`MARK`], and only those are ever removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crate::imds::{Imds, ImdsConfig, ImdsError};
use crate::log::{self, Outcome};
use crate::paths::{is_safe_component, rooted};
use crate::ssh_keys::find_account;

/// The comment on every authorized_keys line the watcher manages.
pub const MARK: &str = "ec2-instance-connect@ec2lab";

const ACTIVE_KEYS: &str = "/latest/meta-data/managed-ssh-keys/active-keys/";

/// Why syncing a user's keys failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectKeysError {
    /// Asking the metadata service failed.
    #[error(transparent)]
    Imds(#[from] ImdsError),
    /// A file operation failed.
    #[error("{what} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The active key lines of `user` (empty when it has none), each reduced
/// to `type base64`.
pub fn active_keys(imds: &mut Imds, user: &str) -> Result<Vec<String>, ImdsError> {
    if !is_safe_component(user) {
        return Ok(Vec::new());
    }
    let Some(body) = imds.get(&format!("{ACTIVE_KEYS}{user}/"))? else {
        return Ok(Vec::new());
    };
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter_map(key_of)
        .collect())
}

/// Every user with an active key, and their keys.
fn all_active(imds: &mut Imds) -> Result<BTreeMap<String, Vec<String>>, ImdsError> {
    let mut all = BTreeMap::new();
    let Some(listing) = imds.get(ACTIVE_KEYS)? else {
        return Ok(all);
    };
    for user in String::from_utf8_lossy(&listing).lines() {
        let user = user.trim().trim_end_matches('/');
        if is_safe_component(user) {
            all.insert(user.to_string(), active_keys(imds, user)?);
        }
    }
    Ok(all)
}

/// `type base64` of a key line, or `None` if it is not one.
fn key_of(line: &str) -> Option<String> {
    let mut fields = line.split_whitespace();
    let (kind, body) = (fields.next()?, fields.next()?);
    let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    (!kind.starts_with('#') && printable(kind) && printable(body)).then(|| format!("{kind} {body}"))
}

/// `existing` authorized_keys text with the managed lines replaced by
/// `keys`; every other line is kept as it was.
pub fn merged(existing: &str, keys: &[String]) -> String {
    let mut out: String = existing
        .lines()
        .filter(|l| !is_managed(l))
        .flat_map(|l| [l, "\n"])
        .collect();
    for key in keys {
        out.push_str(key);
        out.push(' ');
        out.push_str(MARK);
        out.push('\n');
    }
    out
}

fn is_managed(line: &str) -> bool {
    line.split_whitespace().nth(2) == Some(MARK)
}

/// Writes `keys` as `user`'s managed lines under `root`; true when the
/// file changed. A user without a passwd entry is skipped (nobody could
/// log in as it).
pub fn sync_user(root: &Path, user: &str, keys: &[String]) -> Result<bool, ConnectKeysError> {
    let passwd = fs::read_to_string(rooted(root, "/etc/passwd")).unwrap_or_default();
    let Some(account) = find_account(&passwd, user) else {
        return Ok(false);
    };
    let ssh_dir = rooted(root, &account.home).join(".ssh");
    let file = ssh_dir.join("authorized_keys");
    let io_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| ConnectKeysError::Io { what, path, source }
    };
    let existing = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err("cannot read", &file)(e)),
    };
    let wanted = merged(&existing, keys);
    if wanted == existing || (existing.is_empty() && keys.is_empty()) {
        return Ok(false);
    }
    let owner = (account.uid, account.gid);
    if !ssh_dir.is_dir() {
        fs::create_dir_all(&ssh_dir).map_err(io_err("cannot create", &ssh_dir))?;
        fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot chmod", &ssh_dir))?;
        std::os::unix::fs::chown(&ssh_dir, Some(owner.0), Some(owner.1))
            .map_err(io_err("cannot chown", &ssh_dir))?;
    }
    // A whole new file renamed into place: sshd never reads half of it.
    let tmp = ssh_dir.join(".authorized_keys.ec2lab");
    let mut out = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("cannot open", &tmp))?;
    out.write_all(wanted.as_bytes())
        .map_err(io_err("cannot write", &tmp))?;
    drop(out);
    std::os::unix::fs::chown(&tmp, Some(owner.0), Some(owner.1))
        .map_err(io_err("cannot chown", &tmp))?;
    fs::rename(&tmp, &file).map_err(io_err("cannot replace", &file))?;
    Ok(true)
}

/// Users whose authorized_keys hold managed lines now (from an earlier
/// boot or watcher), so a key that expired meanwhile is removed too.
fn users_with_managed_lines(root: &Path) -> BTreeSet<String> {
    let passwd = fs::read_to_string(rooted(root, "/etc/passwd")).unwrap_or_default();
    passwd
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|user| is_safe_component(user))
        .filter(|user| {
            find_account(&passwd, user).is_some_and(|a| {
                let file = rooted(root, &a.home).join(".ssh/authorized_keys");
                fs::read_to_string(file).is_ok_and(|t| t.lines().any(is_managed))
            })
        })
        .map(str::to_string)
        .collect()
}

/// One pass of the watcher: every user with active keys gets them, every
/// user in `known` without any loses its managed lines. Returns the users
/// that now hold managed lines.
fn sync_all(
    imds: &mut Imds,
    root: &Path,
    known: &BTreeSet<String>,
) -> Result<BTreeSet<String>, ConnectKeysError> {
    let active = all_active(imds)?;
    let mut holding = BTreeSet::new();
    let users: BTreeSet<&String> = active.keys().chain(known.iter()).collect();
    for user in users {
        let keys = active.get(user).map_or(&[][..], Vec::as_slice);
        match sync_user(root, user, keys) {
            Ok(true) => log::line(
                "connect-keys",
                Outcome::Ok,
                format!("{} Instance Connect key(s) for {user}", keys.len()),
            ),
            Ok(false) => {}
            Err(e) => log::line("connect-keys", Outcome::Failed, e),
        }
        if !keys.is_empty() {
            holding.insert(user.clone());
        }
    }
    Ok(holding)
}

/// Keeps authorized_keys files in step with the metadata every
/// `interval`, for good.
pub fn watch(config: ImdsConfig, root: &Path, interval: Duration) -> ! {
    let mut known = users_with_managed_lines(root);
    let mut session: Option<Imds> = None;
    loop {
        let imds = match session.as_mut() {
            Some(imds) => Ok(imds),
            None => Imds::connect(config.clone()).map(|(imds, _)| session.insert(imds)),
        };
        let result = imds
            .map_err(ConnectKeysError::from)
            .and_then(|imds| sync_all(imds, root, &known));
        match result {
            Ok(holding) => known = holding,
            // The next pass opens a new session (the service may have been
            // disabled for a while, or the token rotated).
            Err(_) => session = None,
        }
        thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICtYnzSySIHq8QQfRJUzRQMqPnobgvnW74dY1GvmPst8";

    #[test]
    fn managed_lines_are_replaced_and_everything_else_kept() {
        let mine = "# my keys\nssh-ed25519 AAAAown laptop\n";
        let with = merged(mine, &[KEY.to_string()]);
        assert_eq!(with, format!("{mine}{KEY} {MARK}\n"));
        // Pushing again does not duplicate; expiry removes only ours.
        assert_eq!(merged(&with, &[KEY.to_string()]), with);
        assert_eq!(merged(&with, &[]), mine);
        // A file without a final newline keeps its last line whole.
        assert_eq!(
            merged("ssh-rsa AAAAx", &[KEY.into()]),
            format!("ssh-rsa AAAAx\n{KEY} {MARK}\n")
        );
    }

    #[test]
    fn only_key_lines_are_taken_from_the_service() {
        assert_eq!(
            key_of(&format!("{KEY} some comment")),
            Some(KEY.to_string())
        );
        assert_eq!(key_of("#Timestamp=1"), None);
        assert_eq!(key_of("ssh-ed25519"), None);
        assert_eq!(key_of("ssh-ed25519 AAAA\u{7f}"), None);
    }

    fn guest_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("etc")).expect("etc");
        let uid = own_uid();
        fs::write(
            root.path().join("etc/passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/sh\nec2-user:x:{uid}:{uid}::/home/ec2-user:/bin/sh\n"
            ),
        )
        .expect("passwd");
        fs::create_dir_all(root.path().join("home/ec2-user")).expect("home");
        root
    }

    /// The test's own ids, so chown works without root.
    fn own_uid() -> u32 {
        fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
    }

    #[test]
    fn a_user_gets_the_keys_and_loses_them_and_strangers_are_skipped() {
        let root = guest_root();
        let file = root.path().join("home/ec2-user/.ssh/authorized_keys");
        assert!(sync_user(root.path(), "ec2-user", &[KEY.into()]).expect("sync"));
        let text = fs::read_to_string(&file).expect("written");
        assert_eq!(text, format!("{KEY} {MARK}\n"));
        let mode = fs::metadata(&file).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            users_with_managed_lines(root.path()),
            BTreeSet::from(["ec2-user".to_string()])
        );
        assert!(!sync_user(root.path(), "ec2-user", &[KEY.into()]).expect("sync"));
        assert!(sync_user(root.path(), "ec2-user", &[]).expect("sync"));
        assert_eq!(fs::read_to_string(&file).expect("kept"), "");
        assert!(users_with_managed_lines(root.path()).is_empty());
        assert!(!sync_user(root.path(), "nobody-here", &[KEY.into()]).expect("sync"));
    }
}
