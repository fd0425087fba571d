//! Named network namespaces, as `ip netns` makes them: a file under
//! `/run/netns` bind-mounted on a namespace, so the namespace outlives the
//! thread that made it (and the daemon) and `ip netns exec` sees it too.
//!
//! Namespaces are per thread, so everything that must run inside one does
//! on a thread of its own ([`run_in`]): the daemon's runtime threads never
//! change namespace, and a thread that entered one dies with the closure.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where named namespaces live (iproute2's convention).
pub const NETNS_DIR: &str = "/run/netns";

/// Errors of namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A system call on a namespace failed.
    #[error("network namespace {name}: {what}: {source}")]
    Sys {
        /// The namespace.
        name: String,
        /// The step.
        what: &'static str,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The thread running inside the namespace panicked.
    #[error("network namespace {0}: the worker thread panicked")]
    Panicked(String),
}

fn sys(name: &str, what: &'static str) -> impl FnOnce(std::io::Error) -> NetnsError {
    let name = name.to_string();
    move |source| NetnsError::Sys { name, what, source }
}

/// The file naming namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists (its file is a mounted namespace).
pub fn exists(name: &str) -> bool {
    // A bind-mounted nsfs file has inode and device of the namespace, not
    // of the tmpfs: an empty leftover file (mount gone) opens but is no
    // namespace, and setns on it fails; that is checked where it matters.
    File::open(path(name)).is_ok_and(|f| {
        // SAFETY: NS_GET_NSTYPE only reads the fd's namespace type.
        let kind = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
        kind == libc::CLONE_NEWNET
    })
}

/// `ioctl(NS_GET_NSTYPE)` (linux/nsfs.h: _IO(0xb7, 0x3)).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so a
/// namespace mounted under it is seen by every mount namespace.
fn prepare_dir(name: &str) -> Result<(), NetnsError> {
    std::fs::create_dir_all(NETNS_DIR).map_err(sys(name, "create /run/netns"))?;
    let dir = c"/run/netns";
    let none = c"none";
    let make_shared = || {
        // SAFETY: mount(2) with valid NUL-terminated strings and no data.
        unsafe {
            libc::mount(
                none.as_ptr(),
                dir.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        }
    };
    if make_shared() == 0 {
        return Ok(());
    }
    // Not a mount point yet: bind it on itself, then share it.
    // SAFETY: as above.
    let bound = unsafe {
        libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            none.as_ptr(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if bound != 0 {
        return Err(sys(name, "bind /run/netns")(last_error()));
    }
    let shared = make_shared();
    if shared != 0 {
        return Err(sys(name, "share /run/netns")(last_error()));
    }
    Ok(())
}

/// Creates namespace `name` with its loopback up; an existing one is kept
/// (adopted after a daemon restart). Returns whether it was created.
pub fn ensure(name: &str) -> Result<bool, NetnsError> {
    if exists(name) {
        return Ok(false);
    }
    let (file, target) = mount_point(name)?;
    let owner = name.to_string();
    let made = std::thread::spawn(move || -> Result<(), NetnsError> {
        // SAFETY: unshare only changes this (short-lived) thread's namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(sys(&owner, "unshare")(last_error()));
        }
        bind_own(&owner, &target)
    })
    .join()
    .map_err(|_| NetnsError::Panicked(name.to_string()))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&file);
        return Err(e);
    }
    crate::network::fabric::set_loopback_up(name).map_err(|e| NetnsError::Sys {
        name: name.to_string(),
        what: "loopback up",
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(true)
}

/// Gives the calling thread's namespace the name `name` (as `ip netns
/// attach` does), so the code that works on named namespaces can work on
/// it; a name left pointing at another namespace is moved. Only the name
/// is made: [`remove`] on it later leaves the namespace alone, as
/// processes live in it.
pub fn name_current(name: &str) -> Result<(), NetnsError> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/thread-self/ns/net").map_err(sys(name, "stat own"))?;
    let same = std::fs::metadata(path(name))
        .is_ok_and(|m| exists(name) && m.ino() == own.ino() && m.dev() == own.dev());
    if same {
        return Ok(());
    }
    remove(name)?;
    let (file, target) = mount_point(name)?;
    bind_own(name, &target).inspect_err(|_| {
        let _ = std::fs::remove_file(&file);
    })
}

/// The file that will name namespace `name`, made (empty) under a shared
/// `/run/netns`, as a path and as the C string mount(2) takes. A file left
/// by an interrupted earlier attempt is no namespace: it is reused.
fn mount_point(name: &str) -> Result<(PathBuf, std::ffi::CString), NetnsError> {
    prepare_dir(name)?;
    let file = path(name);
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&file)
        .map_err(sys(name, "create its file"))?;
    let target = std::ffi::CString::new(file.as_os_str().as_encoded_bytes())
        .map_err(|_| sys(name, "name")(std::io::ErrorKind::InvalidInput.into()))?;
    Ok((file, target))
}

/// Bind-mounts the calling thread's network namespace on `target` (the
/// file naming namespace `name`).
fn bind_own(name: &str, target: &std::ffi::CStr) -> Result<(), NetnsError> {
    let source = c"/proc/thread-self/ns/net";
    // SAFETY: mount(2) with valid NUL-terminated strings, no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"none".as_ptr(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(sys(name, "bind-mount")(last_error()));
    }
    Ok(())
}

/// Removes namespace `name`: its devices go with it once no process is
/// left inside. Missing is fine (removal is idempotent).
pub fn remove(name: &str) -> Result<(), NetnsError> {
    let file = path(name);
    let target = std::ffi::CString::new(file.as_os_str().as_encoded_bytes())
        .map_err(|_| sys(name, "name")(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: umount2 on a NUL-terminated path; EINVAL (not mounted) is fine.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = last_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(sys(name, "unmount")(e));
        }
    }
    match std::fs::remove_file(&file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(sys(name, "remove its file")(e)),
    }
}

/// An open handle on namespace `name`, for `setns` (here or in a child
/// about to exec).
pub fn open(name: &str) -> Result<File, NetnsError> {
    File::open(path(name)).map_err(sys(name, "open"))
}

/// Moves the calling thread into the namespace `ns` is open on.
pub fn enter(name: &str, ns: &File) -> Result<(), NetnsError> {
    // SAFETY: setns on an open namespace fd changes only this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(sys(name, "setns")(last_error()));
    }
    Ok(())
}

/// Makes the child of `command` join the network namespace `ns` is open on
/// (when given) and, with `new_session`, start a session of its own (so
/// signals to the daemon's process group do not reach it), before it execs.
/// `ns` must stay open until the child is spawned (or, for
/// `CommandExt::exec`, until the exec).
pub fn exec_in(command: &mut std::process::Command, ns: Option<&File>, new_session: bool) {
    use std::os::unix::process::CommandExt;
    let fd = ns.map(|f| f.as_raw_fd());
    // SAFETY: setns and setsid are async-signal-safe and change only the
    // child about to exec; the fd is the caller's, open until then.
    unsafe {
        command.pre_exec(move || {
            if let Some(fd) = fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if new_session && libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `f` on a fresh thread inside namespace `name` and returns what it
/// returned; the thread (and its namespace membership) ends with `f`.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = open(name)?;
    let owner = name.to_string();
    std::thread::spawn(move || -> Result<T, NetnsError> {
        enter(&owner, &ns)?;
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Panicked(name.to_string()))?
}
