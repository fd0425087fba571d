//! A full disk does not take the API down. The daemon's data directory is
//! a 1.5 GiB tmpfs this test mounts in a mount namespace of its own (the
//! host's file systems are never filled); an instance runs, then the disk
//! is filled to the last byte. DescribeInstances still answers, RunInstances
//! answers InsufficientInstanceCapacity, and TerminateInstances works: the
//! daemon gives its database the room it kept (`reserve`), the instance
//! ends `terminated` and its files are gone. Once the disk has room again,
//! the reserve comes back.

mod common;

use std::ffi::CString;
use std::io::Write;
use std::time::{Duration, Instant};

use common::{Daemon, Prereqs};

/// Runs `test` on a thread of its own in a new mount namespace (mount
/// namespaces are per thread, and the processes it starts inherit it).
fn in_mount_namespace<T: Send + 'static>(test: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNS gives this thread
        // a copy of the mount table.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNS) }, 0, "unshare");
        // SAFETY: NUL-terminated strings that outlive the call; nothing
        // mounted here propagates back to the host.
        let private = unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        assert_eq!(private, 0, "make mounts private");
        test()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn mount_tmpfs(dir: &std::path::Path, size: &str) {
    let target = CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    let options = CString::new(format!("size={size},mode=0700")).expect("options");
    // SAFETY: NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::mount(
            c"ec2lab-full-disk".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    assert_eq!(ret, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
}

/// Writes zeros into `path` until the disk is full.
fn fill(path: &std::path::Path) {
    let mut file = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 1 << 20];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // The last partial block.
    let byte = [0u8; 1];
    while file.write(&byte).is_ok_and(|n| n == 1) {}
}

/// Waits (30 s at most) for the daemon's reserve file at `path`.
fn wait_for_reserve(daemon: &Daemon, path: &std::path::Path, missing: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{missing}\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn terminate_and_describe_work_on_a_full_disk() {
    let Some(prereqs) = Prereqs::check("full_disk") else {
        return;
    };
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        common::skip("full_disk", "mounting a tmpfs needs root");
        return;
    }
    in_mount_namespace(move || {
        let dir = tempfile::tempdir().expect("data dir");
        mount_tmpfs(dir.path(), "1536m");
        let data = dir.path().to_path_buf();
        let daemon = Daemon::start_on(&prereqs, dir);
        let reserve = data.join("reserve");
        wait_for_reserve(&daemon, &reserve, "no reserve");
        let ami = daemon.lab_minimal_ami(&prereqs);
        let id = daemon.run_instance(&prereqs, &ami, "lab.nano", &[]);
        daemon.wait_state(&prereqs, &id, "running", Duration::from_secs(120));

        // The disk fills (a guest writing into its volume would do it more
        // slowly): not a byte left.
        let filler = data.join("filler");
        fill(&filler);
        assert_eq!(
            daemon.state(&prereqs, &id),
            "running",
            "describe on a full disk"
        );
        let refused = daemon.aws_output(
            &prereqs,
            &[
                "run-instances",
                "--image-id",
                &ami,
                "--instance-type",
                "lab.nano",
            ],
        );
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("InsufficientInstanceCapacity"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
        daemon.aws(&prereqs, &["terminate-instances", "--instance-ids", &id]);
        daemon.wait_state(&prereqs, &id, "terminated", Duration::from_secs(120));
        assert!(
            !data.join("instances").join(&id).exists(),
            "the terminated instance's files are still there"
        );
        assert!(
            daemon.log().contains("gave the database the 64 MiB"),
            "{}",
            daemon.log()
        );

        // Room again: the reserve comes back.
        std::fs::remove_file(&filler).expect("remove filler");
        wait_for_reserve(&daemon, &reserve, "the reserve did not come back");
        let leftovers = daemon.stop_and_list_leftovers(Duration::from_secs(10));
        assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
        let target = CString::new(data.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path; the tmpfs this thread mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        // The empty mount point, now the host's directory again.
        let _ = std::fs::remove_dir(&data);
    });
}
