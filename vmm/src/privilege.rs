//! Dropping Linux capabilities once the VM is built.
//!
//! The control plane starts each VMM as root because building a VM needs
//! it: opening an existing tap (`TUNSETIFF`), `/dev/kvm` and disk images
//! owned by root. Once those descriptors are open the VMM needs no
//! privilege at all, so, as Firecracker's jailer does by running the VMM
//! unprivileged, it gives up every capability before the first thread
//! other than the main one starts: a thread that escaped its seccomp
//! allowlist would still be unable to load modules, change the host's
//! network, mount, trace other processes or override file permissions.
//!
//! Capabilities are per thread and inherited by the threads created
//! after a change, which is why this runs in the main thread before the
//! API, device, vCPU and helper threads exist. The bounding and ambient
//! sets are cleared too (they matter only across `execve`, which the
//! seccomp filters forbid anyway, together with `no_new_privs`).
//!
//! The VMM stays uid 0: what it still opens or connects to at run time
//! (vsock's Unix sockets, the API socket's directory) belongs to root.

use caps::CapSet;

/// Errors dropping capabilities.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The kernel refused to change a capability set.
    #[error("cannot clear the {set} capability set: {reason}")]
    Clear {
        /// Which set.
        set: &'static str,
        /// The kernel's answer.
        reason: String,
    },
    /// A set was cleared but still reads back non-empty.
    #[error("the {set} capability set still holds {left} after clearing it")]
    Left {
        /// Which set.
        set: &'static str,
        /// What was left.
        left: String,
    },
}

/// What [`drop_all`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// How many capabilities were effective before.
    pub effective_before: usize,
}

/// Clears the ambient, bounding, inheritable, effective and permitted
/// capability sets of the calling thread, in the order the kernel allows
/// (the bounding set needs `CAP_SETPCAP` while it is still effective), and
/// checks that each reads back empty. A VMM started without privilege has
/// nothing to drop (and no right to touch its bounding set, which then
/// stays as it was; `no_new_privs` keeps it from mattering).
pub fn drop_all() -> Result<Dropped, PrivilegeError> {
    let effective_before = caps::read(None, CapSet::Effective)
        .map_err(|e| clear_error("effective", e))?
        .len();
    // Ambient capabilities need a kernel of 4.3 or later; an older kernel
    // has none to clear.
    if caps::read(None, CapSet::Ambient).is_ok() {
        caps::clear(None, CapSet::Ambient).map_err(|e| clear_error("ambient", e))?;
    }
    let may_bound = caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP)
        .map_err(|e| clear_error("effective", e))?;
    if may_bound {
        caps::clear(None, CapSet::Bounding).map_err(|e| clear_error("bounding", e))?;
    }
    for (set, name) in [
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        caps::clear(None, set).map_err(|e| clear_error(name, e))?;
    }
    let mut check = vec![
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ];
    if may_bound {
        check.push((CapSet::Bounding, "bounding"));
    }
    for (set, name) in check {
        let left = caps::read(None, set).map_err(|e| clear_error(name, e))?;
        if !left.is_empty() {
            let mut names: Vec<String> = left.iter().map(ToString::to_string).collect();
            names.sort();
            return Err(PrivilegeError::Left {
                set: name,
                left: names.join(", "),
            });
        }
    }
    Ok(Dropped { effective_before })
}

fn clear_error(set: &'static str, e: caps::errors::CapsError) -> PrivilegeError {
    PrivilegeError::Clear {
        set,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_ends_with_no_capability_in_any_set() {
        // Capabilities are per thread, but a test binary's threads share a
        // process the other tests need: check it in a forked child.
        // SAFETY: the child makes only the calls drop_all and the reads
        // make (prctl, capget, capset, allocation) and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let ok = drop_all().is_ok()
                && [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable]
                    .into_iter()
                    .all(|set| caps::read(None, set).is_ok_and(|s| s.is_empty()));
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
