//! Confining the VMM's view of the file system once the VM is built, as
//! Firecracker's jailer does before it starts the VMM: the process moves
//! into a mount namespace of its own whose root is one directory (an
//! instance's, holding its volume, console, sockets and hibernation), and
//! every other path of the host is gone from its view.
//!
//! The seccomp filters already keep every thread from opening files; what
//! is left of the file system at run time is what works by path on
//! sockets: the devices thread connects to `<uds>_<port>` for a guest's
//! vsock connections, and the API socket is bound by path. Jailed, those
//! paths can only name sockets inside the directory, so a compromised
//! thread cannot reach another root-owned socket of the host.
//!
//! How: `unshare(CLONE_NEWNS)`, every mount made private (nothing leaks
//! back to the host), the directory bind-mounted onto itself (a root must
//! be a mount point) and remounted nosuid, nodev and noexec, then
//! `pivot_root(".", ".")` with the old root detached (no directory is
//! created for it). This needs CAP_SYS_ADMIN and a single thread, so it
//! runs in the main thread before capabilities are dropped and before any
//! other thread starts. Descriptors opened before (KVM, taps, disks, the
//! console, the exit file, the snapshot directory) keep working.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Errors setting up or entering the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail directory cannot be resolved or is not a directory.
    #[error("jail directory {path}: {reason}")]
    Root {
        /// The directory given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A path the VMM uses at run time lies outside the jail.
    #[error("the {what} {path} is not inside the jail directory {root}")]
    Outside {
        /// What the path is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The jail directory.
        root: PathBuf,
    },
    /// A step of entering the jail failed.
    #[error("cannot confine the VMM to {root}: {step}: {source}")]
    Enter {
        /// The jail directory.
        root: PathBuf,
        /// The step.
        step: &'static str,
        /// The kernel's answer.
        source: std::io::Error,
    },
}

/// A directory the VMM will be confined to.
#[derive(Debug, Clone)]
pub struct Jail {
    /// Resolved (no symlinks, absolute).
    root: PathBuf,
}

impl Jail {
    /// The jail at `root`, an existing directory.
    pub fn new(root: &Path) -> Result<Self, JailError> {
        let error = |reason: String| JailError::Root {
            path: root.to_path_buf(),
            reason,
        };
        let resolved = std::fs::canonicalize(root).map_err(|e| error(e.to_string()))?;
        if !resolved.is_dir() {
            return Err(error("not a directory".to_string()));
        }
        Ok(Self { root: resolved })
    }

    /// The jail directory (resolved).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `path` (a socket the VMM binds or connects to by name, which
    /// may not exist yet) is seen from inside the jail. Its directory is
    /// resolved; the path must lie inside the jail.
    pub fn inside(&self, what: &'static str, path: &Path) -> Result<PathBuf, JailError> {
        let outside = || JailError::Outside {
            what,
            path: path.to_path_buf(),
            root: self.root.clone(),
        };
        let name = path.file_name().ok_or_else(outside)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = std::fs::canonicalize(dir).map_err(|_| outside())?;
        let relative = dir.strip_prefix(&self.root).map_err(|_| outside())?;
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(outside());
        }
        Ok(Path::new("/").join(relative).join(name))
    }

    /// Moves the calling process into the jail. Call from the only thread,
    /// with CAP_SYS_ADMIN, once nothing more is opened by path.
    pub fn enter(&self) -> Result<(), JailError> {
        // Called right after the failing call, while errno is its.
        let fail = |step: &'static str| JailError::Enter {
            root: self.root.clone(),
            step,
            source: std::io::Error::last_os_error(),
        };
        let root = CString::new(self.root.as_os_str().as_bytes()).map_err(|_| JailError::Root {
            path: self.root.clone(),
            reason: "contains a NUL byte".to_string(),
        })?;
        let slash = c"/";
        let dot = c".";
        let check = |ok: bool, step| if ok { Ok(()) } else { Err(fail(step)) };
        // SAFETY: unshare takes no pointers; it gives this (single-threaded)
        // process a copy of the mount table.
        let unshared = unsafe { libc::unshare(libc::CLONE_NEWNS) } == 0;
        check(unshared, "unshare(CLONE_NEWNS)")?;
        check(
            mount(None, slash, libc::MS_REC | libc::MS_PRIVATE),
            "making mounts private",
        )?;
        check(
            mount(Some(&root), &root, libc::MS_BIND | libc::MS_REC),
            "bind-mounting the directory",
        )?;
        let locked = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        check(
            mount(None, &root, libc::MS_REMOUNT | libc::MS_BIND | locked),
            "remounting it nosuid,nodev,noexec",
        )?;
        // SAFETY: a NUL-terminated path that outlives the call.
        let entered = unsafe { libc::chdir(root.as_ptr()) } == 0;
        check(entered, "chdir")?;
        // SAFETY: pivot_root has no libc wrapper; both arguments are
        // NUL-terminated strings that outlive the call.
        let pivoted =
            unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } == 0;
        check(pivoted, "pivot_root")?;
        // The old root is stacked on "." now: detach it.
        // SAFETY: a NUL-terminated path that outlives the call.
        let detached = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } == 0;
        check(detached, "detaching the old root")?;
        // SAFETY: as above.
        let at_root = unsafe { libc::chdir(slash.as_ptr()) } == 0;
        check(at_root, "chdir /")?;
        Ok(())
    }
}

/// mount(2) with no file system type or data (a propagation change, a bind
/// mount, or a bind remount's flags); whether it succeeded.
fn mount(source: Option<&CStr>, target: &CStr, flags: libc::c_ulong) -> bool {
    // SAFETY: NUL-terminated strings that outlive the call; a null source,
    // type and data are what these kinds of mount take.
    unsafe {
        libc::mount(
            source.map_or(std::ptr::null(), CStr::as_ptr),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_map_to_the_jails_root_and_others_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let jail = Jail::new(dir.path()).expect("jail");
        assert_eq!(
            jail.inside("API socket", &dir.path().join("api.sock"))
                .expect("inside"),
            Path::new("/api.sock")
        );
        assert_eq!(
            jail.inside("vsock socket", &dir.path().join("sub/v.sock"))
                .expect("inside"),
            Path::new("/sub/v.sock")
        );
        // Through a symlinked directory, resolved.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("sub"), &link).expect("symlink");
        assert_eq!(
            jail.inside("vsock socket", &link.join("v.sock"))
                .expect("inside"),
            Path::new("/sub/v.sock")
        );
        for outside in [
            PathBuf::from("/tmp/api.sock"),
            dir.path().join("../api.sock"),
            dir.path().join("missing/api.sock"),
            PathBuf::from("/"),
        ] {
            let err = jail.inside("API socket", &outside).expect_err("outside");
            assert!(
                err.to_string().contains("is not inside the jail directory"),
                "{outside:?}: {err}"
            );
        }
        let file = dir.path().join("file");
        std::fs::write(&file, "").expect("write");
        assert!(Jail::new(&file)
            .expect_err("a file")
            .to_string()
            .contains("not a directory"));
    }
}
