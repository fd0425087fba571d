//! The ssh-key step: the instance's public keys from metadata into the
//! default user's `~/.ssh/authorized_keys`, without duplicates.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::imds::{Imds, ImdsError};
use crate::log::Done;
use crate::paths::{is_safe_component, rooted};

/// Why the ssh-key step failed.
#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    /// Asking the metadata service failed.
    #[error(transparent)]
    Imds(#[from] ImdsError),
    /// `--user` cannot be a file name.
    #[error("user name {0:?} is not usable")]
    BadUser(String),
    /// The metadata listed keys but none had a usable OpenSSH key.
    #[error("no usable OpenSSH key among {0}")]
    NoUsableKey(String),
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

/// The parts of a passwd entry the step needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Numeric user id.
    pub uid: u32,
    /// Numeric primary group id.
    pub gid: u32,
    /// Home directory, absolute, as seen inside the guest.
    pub home: String,
}

/// Finds `user` in the text of an `/etc/passwd`.
pub fn find_account(passwd: &str, user: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || fields[0] != user {
            return None;
        }
        Some(Account {
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5].to_string(),
        })
    })
}

/// Installs every key the metadata lists for the instance.
pub fn install(imds: &mut Imds, root: &Path, user: &str) -> Result<Done, SshKeyError> {
    if !is_safe_component(user) {
        return Err(SshKeyError::BadUser(user.to_string()));
    }
    let Some(listing) = imds.get("/latest/meta-data/public-keys/")? else {
        return Ok(Done::Skipped("no public keys in metadata".into()));
    };
    let listing = String::from_utf8_lossy(&listing);
    // Lines look like `0=my-key`; the index names the key's directory.
    let entries: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(idx, _)| !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    if entries.is_empty() {
        return Ok(Done::Skipped("no public keys in metadata".into()));
    }
    let names = entries
        .iter()
        .map(|(i, n)| format!("{i}={n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut keys = Vec::new();
    for (idx, _) in &entries {
        if let Some(body) = imds.get(&format!("/latest/meta-data/public-keys/{idx}/openssh-key"))? {
            keys.extend(
                String::from_utf8_lossy(&body)
                    .lines()
                    .map(str::trim)
                    .filter(|l| is_key_line(l))
                    .map(String::from),
            );
        }
    }
    if keys.is_empty() {
        return Err(SshKeyError::NoUsableKey(names));
    }

    let passwd = fs::read_to_string(rooted(root, "/etc/passwd")).unwrap_or_default();
    let account = find_account(&passwd, user);
    let home = account
        .as_ref()
        .map_or_else(|| format!("/home/{user}"), |a| a.home.clone());
    let owner = account.as_ref().map(|a| (a.uid, a.gid));
    let home_path = rooted(root, &home);
    let ssh_dir = home_path.join(".ssh");
    let file = ssh_dir.join("authorized_keys");
    let io_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| SshKeyError::Io { what, path, source }
    };

    let home_existed = home_path.is_dir();
    fs::create_dir_all(&ssh_dir).map_err(io_err("cannot create", &ssh_dir))?;
    if !home_existed {
        chown(&home_path, owner).map_err(io_err("cannot chown", &home_path))?;
    }
    fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err("cannot chmod", &ssh_dir))?;
    chown(&ssh_dir, owner).map_err(io_err("cannot chown", &ssh_dir))?;

    let existing = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err("cannot read", &file)(e)),
    };
    let mut to_add = String::new();
    let mut added = 0;
    for key in &keys {
        let present = existing.lines().any(|l| l.trim() == key) || to_add.lines().any(|l| l == key);
        if !present {
            to_add.push_str(key);
            to_add.push('\n');
            added += 1;
        }
    }
    if !existing.is_empty() && !existing.ends_with('\n') && added > 0 {
        to_add.insert(0, '\n');
    }
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&file)
        .map_err(io_err("cannot open", &file))?;
    out.write_all(to_add.as_bytes())
        .map_err(io_err("cannot write", &file))?;
    drop(out);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot chmod", &file))?;
    chown(&file, owner).map_err(io_err("cannot chown", &file))?;

    let shown = format!("{home}/.ssh/authorized_keys");
    Ok(Done::Ok(if added == 0 {
        format!("key {names} already present for {user} in {shown}")
    } else {
        format!("installed key {names} for {user} in {shown}")
    }))
}

/// An authorized_keys line: `type base64 [comment]`, printable, one line.
fn is_key_line(line: &str) -> bool {
    !line.starts_with('#')
        && line.split_whitespace().count() >= 2
        && line.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

/// Gives `path` to the user when passwd named one; without a passwd
/// entry the files stay root's, which sshd accepts for root-owned homes.
fn chown(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup_reads_ids_and_home() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nec2-user:x:1000:1001::/home/ec2-user:/bin/sh\n";
        assert_eq!(
            find_account(passwd, "ec2-user"),
            Some(Account {
                uid: 1000,
                gid: 1001,
                home: "/home/ec2-user".into()
            })
        );
        assert_eq!(find_account(passwd, "nobody"), None);
    }

    #[test]
    fn key_lines_need_type_and_body() {
        assert!(is_key_line("ssh-ed25519 AAAAC3Nz my-key"));
        assert!(!is_key_line("ssh-ed25519"));
        assert!(!is_key_line("# comment here"));
    }
}
