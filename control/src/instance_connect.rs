//! EC2 Instance Connect: `SendSSHPublicKey` makes a public key usable for
//! 60 seconds as one OS user of a running instance.
//!
//! Keys live here, in the daemon's memory, and reach the guest through the
//! instance's metadata document (`managed-ssh-keys/active-keys/<user>/`),
//! where the VMM stops serving each one at its expiry second. Nothing is
//! written to SQLite: a key outlives a daemon restart only as long as the
//! VMM already holds it, which is at most its 60 seconds anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ec2lab_vmm_api::metadata::ManagedKey;
use ssh_key::public::KeyData;
use ssh_key::PublicKey;

use crate::db::DbError;
use crate::lifecycle::Lab;
use crate::model::InstanceState;

/// How long a key stays usable, as on EC2.
pub const KEY_LIFETIME: Duration = Duration::from_secs(60);

/// The most keys one instance holds at once; a client pushing keys in a
/// loop cannot grow the metadata document past this.
pub const MAX_KEYS_PER_INSTANCE: usize = 64;

/// Why a `SendSSHPublicKey` was refused before it reached an instance.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectKeyError {
    /// InstanceOSUser is not a user name EC2 takes.
    #[error("InstanceOSUser {0:?} is not a valid user name (1 to 32 characters: letters, digits, '_', '-', '.', '@', starting with a letter or '_')")]
    BadUser(String),
    /// SSHPublicKey is not a single OpenSSH public key line of a type
    /// Instance Connect takes.
    #[error("SSHPublicKey is not usable: {0}")]
    BadKey(String),
    /// The instance already holds as many keys as it may.
    #[error("too many Instance Connect keys pushed to {0} in the last 60 seconds")]
    TooManyKeys(String),
}

/// Checks InstanceOSUser as EC2's model does:
/// `^[A-Za-z_][A-Za-z0-9@._-]{0,30}[A-Za-z0-9$_-]?$`.
pub fn validate_user(user: &str) -> Result<(), ConnectKeyError> {
    let bad = || ConnectKeyError::BadUser(user.chars().take(40).collect());
    let bytes = user.as_bytes();
    let (first, rest) = bytes.split_first().ok_or_else(bad)?;
    if !(first.is_ascii_alphabetic() || *first == b'_') || bytes.len() > 32 {
        return Err(bad());
    }
    let middle = |b: &u8| b.is_ascii_alphanumeric() || b"@._-".contains(b);
    let last = |b: &u8| b.is_ascii_alphanumeric() || b"$_-".contains(b);
    let ok = match rest.split_last() {
        None => true,
        Some((end, body)) => body.iter().all(middle) && (middle(end) || last(end)),
    };
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Reads SSHPublicKey: one OpenSSH line of ssh-rsa (2048 bits or more),
/// ecdsa-sha2-nistp256/384/521 or ssh-ed25519, the types Instance Connect
/// takes. Returns the line as the guest will see it, its comment dropped
/// (the comment is the caller's text and goes nowhere).
pub fn parse_key(text: &str) -> Result<String, ConnectKeyError> {
    let text = text.trim();
    if text.len() < 80 || text.len() > 4096 {
        return Err(ConnectKeyError::BadKey(format!(
            "{} characters; the key must be 80 to 4096",
            text.len()
        )));
    }
    if text.lines().count() != 1 {
        return Err(ConnectKeyError::BadKey("more than one line".into()));
    }
    let key = PublicKey::from_openssh(text)
        .map_err(|e| ConnectKeyError::BadKey(format!("not an OpenSSH public key: {e}")))?;
    match key.key_data() {
        KeyData::Ed25519(_) | KeyData::Ecdsa(_) => {}
        KeyData::Rsa(rsa) => {
            let bits = rsa.n.as_positive_bytes().map_or(0, |n| {
                n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize)
            });
            if bits < 2048 {
                return Err(ConnectKeyError::BadKey(format!(
                    "RSA key of {bits} bits; at least 2048 are required"
                )));
            }
        }
        other => {
            return Err(ConnectKeyError::BadKey(format!(
                "{} keys are not accepted (ssh-rsa, ECDSA and ED25519 are)",
                other.algorithm()
            )))
        }
    }
    let mut line = key
        .to_openssh()
        .map_err(|e| ConnectKeyError::BadKey(format!("cannot encode the key: {e}")))?;
    if !key.comment().is_empty() {
        // `to_openssh` writes the comment back; the guest gets type and
        // key only.
        line = line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
    }
    Ok(line)
}

/// The keys pushed to each instance and not yet expired.
#[derive(Debug, Default)]
pub struct ConnectKeys {
    by_instance: Mutex<HashMap<String, Vec<ManagedKey>>>,
}

impl ConnectKeys {
    /// Makes `openssh` (as [`parse_key`] returned it) usable as `user` on
    /// `instance_id` until [`KEY_LIFETIME`] after `now`; returns the
    /// expiry.
    pub fn push(
        &self,
        instance_id: &str,
        user: &str,
        openssh: String,
        now: SystemTime,
    ) -> Result<SystemTime, ConnectKeyError> {
        let now_unix = unix(now);
        let expires = now + KEY_LIFETIME;
        let mut map = crate::lock(&self.by_instance);
        let keys = map.entry(instance_id.to_string()).or_default();
        keys.retain(|k| k.expires_unix > now_unix);
        // The same key again renews it rather than taking another slot.
        keys.retain(|k| !(k.user == user && k.openssh == openssh));
        if keys.len() >= MAX_KEYS_PER_INSTANCE {
            return Err(ConnectKeyError::TooManyKeys(instance_id.to_string()));
        }
        keys.push(ManagedKey {
            user: user.to_string(),
            openssh,
            // Rounded up: a key is never served for less than its minute.
            expires_unix: unix(expires) + u64::from(expires_subsec(expires)),
        });
        Ok(expires)
    }

    /// The keys of `instance_id` still valid at `now`.
    pub fn active(&self, instance_id: &str, now: SystemTime) -> Vec<ManagedKey> {
        let now_unix = unix(now);
        let mut map = crate::lock(&self.by_instance);
        let Some(keys) = map.get_mut(instance_id) else {
            return Vec::new();
        };
        keys.retain(|k| k.expires_unix > now_unix);
        let active = keys.clone();
        if keys.is_empty() {
            map.remove(instance_id);
        }
        active
    }
}

/// Why `SendSSHPublicKey` did not make a key usable.
#[derive(Debug, thiserror::Error)]
pub enum SendKeyError {
    /// The user or key is not acceptable.
    #[error(transparent)]
    Invalid(#[from] ConnectKeyError),
    /// No such instance (or it is gone).
    #[error("Instance {0} not found")]
    NotFound(String),
    /// The instance exists but is not running.
    #[error("Instance {0} is not in a valid state for this operation (it is {1})")]
    NotRunning(String, &'static str),
    /// AvailabilityZone was given and is not the instance's.
    #[error("Instance {id} is in {actual}, not {given}")]
    WrongZone {
        /// The instance.
        id: String,
        /// Where it is.
        actual: String,
        /// What the caller said.
        given: String,
    },
    /// The store failed.
    #[error(transparent)]
    Db(DbError),
}

impl Lab {
    /// `SendSSHPublicKey`: `key` may log in as `user` on the running
    /// instance `instance_id` for the next [`KEY_LIFETIME`]. The instance's
    /// metadata is refreshed now and again once the key has expired, so
    /// the VMM's document stops naming it.
    pub fn send_ssh_public_key(
        self: &Arc<Self>,
        instance_id: &str,
        user: &str,
        key: &str,
        zone: Option<&str>,
    ) -> Result<SystemTime, SendKeyError> {
        validate_user(user)?;
        let line = parse_key(key)?;
        let instance = match self.db.get_instance(instance_id) {
            Ok(i) if i.state != InstanceState::Terminated => i,
            Ok(_) | Err(DbError::NotFound { .. }) => {
                return Err(SendKeyError::NotFound(instance_id.to_string()))
            }
            Err(e) => return Err(SendKeyError::Db(e)),
        };
        if instance.state != InstanceState::Running {
            return Err(SendKeyError::NotRunning(instance.id, instance.state.name()));
        }
        if let Some(given) = zone {
            if given != instance.placement.availability_zone {
                return Err(SendKeyError::WrongZone {
                    id: instance.id,
                    actual: instance.placement.availability_zone,
                    given: given.to_string(),
                });
            }
        }
        let expires = self
            .connect_keys
            .push(&instance.id, user, line, SystemTime::now())?;
        self.refresh_metadata();
        let lab = Arc::clone(self);
        self.runtime.spawn(async move {
            tokio::time::sleep(KEY_LIFETIME + Duration::from_secs(1)).await;
            lab.refresh_metadata();
        });
        Ok(expires)
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn expires_subsec(t: SystemTime) -> bool {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|d| d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICtYnzSySIHq8QQfRJUzRQMqPnobgvnW74dY1GvmPst8 me@laptop";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNKRDbzSyaUXxDYVRD6AJgylHuATCtCT8o9e1MysFMRNCRsdRZK9RlJXkdEfUm0Tr1lzKs0smVsRxyoCIqx2s2o= ec";
    /// A real 1024-bit RSA key: ImportKeyPair takes it, Instance Connect
    /// does not.
    const RSA1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC+W/Q4rNOL/zvSchzI0128b0ikik0VDezQSgf7frWvMw7C5SN/T4QzTge66Y/EG76GX6q518phgZzkcTlscZApCP9Oxtp4r5zZg2RKIvqRX68AcrKMdTI7RKGjhhyogJKJgc0pEKfpkBOT+C850dWmE9k0KHmt8TFmaAj3GKx/eQ== small";

    #[test]
    fn user_names_follow_ec2s_pattern() {
        for good in [
            "ec2-user",
            "root",
            "_svc",
            "a",
            "admin$",
            "u.name@corp",
            "x-1_",
        ] {
            assert_eq!(validate_user(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "../etc",
            "a/b",
            "a b",
            "a$b",
            "-x",
            ".",
            &"a".repeat(33),
        ] {
            assert!(validate_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_key_is_one_openssh_line_of_an_accepted_type_without_its_comment() {
        let line = parse_key(ED25519).expect("test input");
        assert!(line.starts_with("ssh-ed25519 AAAAC3Nza"), "{line}");
        assert!(!line.contains("me@laptop"), "{line}");
        let err = |text: &str| parse_key(text).expect_err(text).to_string();
        assert!(err("ssh-ed25519 AAAA").contains("80 to 4096"));
        assert!(err(&format!("{ED25519}\n{ED25519}")).contains("more than one line"));
        assert!(err(&"x".repeat(100)).contains("not an OpenSSH public key"));
        assert!(err(RSA1024).contains("RSA key of 1024 bits"));
        assert_eq!(
            parse_key(ECDSA).expect("test input"),
            ECDSA.trim_end_matches(" ec")
        );
    }

    #[test]
    fn keys_expire_after_a_minute_and_a_repeat_renews_instead_of_piling_up() {
        let keys = ConnectKeys::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let line = parse_key(ED25519).expect("test input");
        let until = keys
            .push("i-1", "ec2-user", line.clone(), t0)
            .expect("push");
        assert_eq!(until, t0 + KEY_LIFETIME);
        assert_eq!(keys.active("i-1", t0 + Duration::from_secs(59)).len(), 1);
        assert!(keys.active("i-1", t0 + Duration::from_secs(60)).is_empty());
        assert!(keys.active("i-2", t0).is_empty());

        keys.push("i-1", "ec2-user", line.clone(), t0)
            .expect("push");
        keys.push(
            "i-1",
            "ec2-user",
            line.clone(),
            t0 + Duration::from_secs(30),
        )
        .expect("push");
        let active = keys.active("i-1", t0 + Duration::from_secs(70));
        assert_eq!(active.len(), 1, "{active:?}");
        assert_eq!(active[0].expires_unix, 1_800_000_090);
    }

    #[test]
    fn one_instance_holds_a_bounded_number_of_keys() {
        let keys = ConnectKeys::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for n in 0..MAX_KEYS_PER_INSTANCE {
            keys.push("i-1", "ec2-user", format!("ssh-ed25519 K{n}"), t0)
                .expect("push");
        }
        assert_eq!(
            keys.push("i-1", "ec2-user", "ssh-ed25519 more".into(), t0),
            Err(ConnectKeyError::TooManyKeys("i-1".into()))
        );
        // Once the minute is over there is room again.
        keys.push(
            "i-1",
            "ec2-user",
            "ssh-ed25519 more".into(),
            t0 + KEY_LIFETIME,
        )
        .expect("push");
    }
}
