//! Resource limits the VMM sets on itself before the guest runs.
//!
//! No core dumps: a VMM's core holds the guest's memory, which is the
//! guest owner's data, not the host's. A bounded descriptor table: a guest
//! that opens vsock connections without end gets refused connections, not
//! a VMM (or host) out of descriptors. Both are set before the seccomp
//! filters, which do not allow `prlimit64`, so a compromised thread cannot
//! raise them again.

/// The most descriptors a VMM may hold: its own need is a few dozen (KVM,
/// vCPUs, eventfds per queue, taps, disks), and each vsock connection
/// takes one more.
pub const MAX_OPEN_FILES: u64 = 4096;

/// Errors setting a limit.
#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    /// setrlimit failed.
    #[error("cannot set {what}: {source}")]
    Set {
        /// Which limit.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Sets RLIMIT_CORE to 0 and RLIMIT_NOFILE to at most [`MAX_OPEN_FILES`]
/// (never above what the VMM was started with).
pub fn apply() -> Result<(), RlimitError> {
    set(libc::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    let current = get(libc::RLIMIT_NOFILE);
    set(
        libc::RLIMIT_NOFILE,
        "RLIMIT_NOFILE",
        current.map_or(MAX_OPEN_FILES, |c| c.min(MAX_OPEN_FILES)),
    )
}

fn get(resource: libc::__rlimit_resource_t) -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`, which outlives it.
    let rc = unsafe { libc::getrlimit(resource, &mut limit) };
    (rc == 0).then_some(limit.rlim_max)
}

fn set(
    resource: libc::__rlimit_resource_t,
    what: &'static str,
    value: u64,
) -> Result<(), RlimitError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads one rlimit from `limit`, which outlives it.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(RlimitError::Set {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_in_a_child_process_without_core_dumps_and_bounded_descriptors() {
        // setrlimit is process-wide: check it in a forked child so the
        // test process keeps its own limits.
        // SAFETY: the child only makes async-signal-safe calls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let ok = apply().is_ok()
                && get(libc::RLIMIT_CORE) == Some(0)
                && get(libc::RLIMIT_NOFILE).is_some_and(|n| n <= MAX_OPEN_FILES);
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
