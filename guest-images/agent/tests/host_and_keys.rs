//! Host name and ssh key steps against the real binary with a temp root.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{boot, run_raw, FakeImds, Metadata};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVjMmxhYi10ZXN0LWtleS1ib2R5 my-key";

fn running_as_root(dir: &std::path::Path) -> bool {
    let probe = dir.join(".uid-probe");
    fs::write(&probe, b"").expect("probe");
    let uid = fs::metadata(&probe).expect("probe").uid();
    fs::remove_file(&probe).expect("probe");
    uid == 0
}

#[test]
fn authorized_keys_get_right_modes_and_owner_and_no_duplicates() {
    let root = tempfile::tempdir().expect("tempdir");
    let as_root = running_as_root(root.path());
    let uid = if as_root {
        1234
    } else {
        fs::metadata(root.path()).expect("root").uid()
    };
    let gid = if as_root {
        1235
    } else {
        fs::metadata(root.path()).expect("root").gid()
    };
    fs::create_dir_all(root.path().join("etc")).expect("etc");
    fs::write(
        root.path().join("etc/passwd"),
        format!("root:x:0:0:root:/root:/bin/sh\nec2-user:x:{uid}:{gid}::/home/ec2-user:/bin/sh\n"),
    )
    .expect("passwd");
    let imds = FakeImds::start(Metadata {
        keys: vec![("my-key".into(), KEY.into())],
        ..Metadata::default()
    });

    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line(
        "ec2lab-guest: ssh-key: ok: installed key 0=my-key for ec2-user in /home/ec2-user/.ssh/authorized_keys",
    );
    let ssh = root.path().join("home/ec2-user/.ssh");
    let keys = ssh.join("authorized_keys");
    assert_eq!(fs::read_to_string(&keys).expect("keys"), format!("{KEY}\n"));
    let dir_meta = fs::metadata(&ssh).expect("ssh dir");
    let file_meta = fs::metadata(&keys).expect("keys");
    assert_eq!(dir_meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(file_meta.permissions().mode() & 0o777, 0o600);
    assert_eq!((dir_meta.uid(), dir_meta.gid()), (uid, gid));
    assert_eq!((file_meta.uid(), file_meta.gid()), (uid, gid));

    let run = boot(&imds.url, root.path(), &[]);
    run.assert_line(
        "ec2lab-guest: ssh-key: ok: key 0=my-key already present for ec2-user in /home/ec2-user/.ssh/authorized_keys",
    );
    assert_eq!(fs::read_to_string(&keys).expect("keys"), format!("{KEY}\n"));
}

#[test]
fn existing_authorized_keys_are_kept() {
    let root = tempfile::tempdir().expect("tempdir");
    let ssh = root.path().join("home/admin/.ssh");
    fs::create_dir_all(&ssh).expect("ssh");
    fs::write(ssh.join("authorized_keys"), "ssh-rsa AAAAB3Nza old-key").expect("old");
    let imds = FakeImds::start(Metadata {
        keys: vec![("my-key".into(), KEY.into())],
        ..Metadata::default()
    });
    boot(&imds.url, root.path(), &["--user", "admin"]).assert_done();
    assert_eq!(
        fs::read_to_string(ssh.join("authorized_keys")).expect("keys"),
        format!("ssh-rsa AAAAB3Nza old-key\n{KEY}\n")
    );
}

#[test]
fn no_public_keys_is_skipped() {
    let root = tempfile::tempdir().expect("tempdir");
    let imds = FakeImds::start(Metadata::default());
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line("ec2lab-guest: ssh-key: skipped: no public keys in metadata");
    assert!(!root.path().join("home").exists());
}

#[test]
fn hostname_is_written_below_root() {
    let root = tempfile::tempdir().expect("tempdir");
    let imds = FakeImds::start(Metadata::default());
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    assert_eq!(
        fs::read_to_string(root.path().join("etc/hostname")).expect("hostname"),
        "ip-10-0-0-5.ec2.internal\n"
    );
    run.assert_line_starting("ec2lab-guest: hostname: ok: ip-10-0-0-5.ec2.internal (wrote ");
}

#[test]
fn kernel_hostname_is_left_alone_by_default_when_root_is_not_slash() {
    // Serve this machine's own host name, so even a broken default could
    // not rename the machine running the tests.
    let current = fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let imds = FakeImds::start(Metadata {
        local_hostname: Some(current.trim().to_string()),
        ..Metadata::default()
    });
    let root = tempfile::tempdir().expect("tempdir");
    let root_arg = root.path().to_str().expect("utf-8");
    let run = run_raw(&["--imds", &imds.url, "--root", root_arg]);
    run.assert_done();
    run.assert_line_starting("ec2lab-guest: hostname: ok: ");
    assert!(
        run.stdout.contains("kernel host name left alone"),
        "{}",
        run.stdout
    );
}
