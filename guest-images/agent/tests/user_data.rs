//! User data: run once per instance id, gzip, size limit, kinds, and the
//! cloud-config subset — run against the real binary with a temp root.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{boot, FakeImds, Metadata};

/// A script that appends one line to `<root>/proof`, so runs can be counted.
fn proving_script(root: &Path) -> Vec<u8> {
    format!("#!/bin/sh\necho ran >> '{}/proof'\n", root.display()).into_bytes()
}

fn runs(root: &Path) -> usize {
    fs::read_to_string(root.join("proof")).map_or(0, |t| t.lines().count())
}

#[test]
fn user_data_runs_once_per_instance_id() {
    let root = tempfile::tempdir().expect("tempdir");
    let imds = FakeImds::start(Metadata {
        user_data: Some(proving_script(root.path())),
        ..Metadata::default()
    });
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line("ec2lab-guest: user-data: ok: user data script exited with status 0");
    assert_eq!(runs(root.path()), 1);
    let state = root.path().join("var/lib/ec2lab-guest");
    assert!(state.join("user-data-ran/i-0123456789abcdef0").is_file());
    let script_mode = fs::metadata(state.join("user-data.i-0123456789abcdef0"))
        .expect("script kept")
        .permissions()
        .mode();
    assert_eq!(script_mode & 0o777, 0o700);

    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line("ec2lab-guest: user-data: skipped: already ran for i-0123456789abcdef0");
    assert_eq!(runs(root.path()), 1);

    imds.set(|m| m.instance_id = "i-0fedcba9876543210".into());
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_line("ec2lab-guest: user-data: ok: user data script exited with status 0");
    assert_eq!(runs(root.path()), 2);
}

#[test]
fn failing_script_exit_status_is_logged() {
    let root = tempfile::tempdir().expect("tempdir");
    let imds = FakeImds::start(Metadata {
        user_data: Some(b"#!/bin/sh\nexit 3\n".to_vec()),
        ..Metadata::default()
    });
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line("ec2lab-guest: user-data: failed: user data script exited with status 3");
}

#[test]
fn gzipped_user_data_is_decompressed_and_run() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&proving_script(root.path())).expect("gzip");
    let imds = FakeImds::start(Metadata {
        user_data: Some(gz.finish().expect("gzip")),
        ..Metadata::default()
    });
    boot(&imds.url, root.path(), &[]).assert_done();
    assert_eq!(runs(root.path()), 1);
}

#[test]
fn binary_user_data_is_skipped() {
    let root = tempfile::tempdir().expect("tempdir");
    let imds = FakeImds::start(Metadata {
        user_data: Some(vec![0, 1, 2, 0xff, 0xfe, b'\n', 7]),
        ..Metadata::default()
    });
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line("ec2lab-guest: user-data: skipped: user data is not a script or cloud-config");
}

#[test]
fn missing_user_data_is_skipped() {
    let root = tempfile::tempdir().expect("tempdir");
    let imds = FakeImds::start(Metadata::default());
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line("ec2lab-guest: user-data: skipped: no user data");
}

/// The proving script padded with a comment to exactly `len` bytes.
fn script_of_len(root: &Path, len: usize) -> Vec<u8> {
    let mut script = proving_script(root);
    script.extend_from_slice(b"#");
    script.resize(len - 1, b'x');
    script.push(b'\n');
    assert_eq!(script.len(), len);
    script
}

#[test]
fn user_data_of_16384_bytes_runs_and_16385_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let imds = FakeImds::start(Metadata {
        user_data: Some(script_of_len(root.path(), 16384)),
        ..Metadata::default()
    });
    boot(&imds.url, root.path(), &[]).assert_done();
    assert_eq!(runs(root.path()), 1);

    let root = tempfile::tempdir().expect("tempdir");
    imds.set(|m| m.user_data = Some(script_of_len(root.path(), 16385)));
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line(
        "ec2lab-guest: user-data: failed: user data is 16385 bytes, over the 16384-byte limit; not running it",
    );
    assert_eq!(runs(root.path()), 0);
    assert!(!root
        .path()
        .join("var/lib/ec2lab-guest/user-data-ran")
        .exists());
}

#[test]
fn cloud_config_writes_files_then_runs_commands() {
    let root = tempfile::tempdir().expect("tempdir");
    // write_files lands below --root; the commands see real paths, so
    // they name the root. runcmd[0] reading a written file proves order.
    let r = root.path().display();
    let doc = format!(
        "#cloud-config\n\
         packages:\n\
         \x20 - nginx\n\
         runcmd:\n\
         \x20 - cat '{r}/etc/ec2lab-note' > '{r}/copied'\n\
         \x20 - [ sh, -c, \"echo \\\"$0\\\" > '{r}/argv'\", 'a b' ]\n\
         write_files:\n\
         \x20 - path: /etc/motd\n\
         \x20   permissions: '0600'\n\
         \x20   content: |\n\
         \x20     Welcome to ec2lab\n\
         \x20     second line\n\
         \x20 - path: /opt/app/blob\n\
         \x20   encoding: b64\n\
         \x20   content: aGVsbG8gZnJvbSBiNjQK\n\
         \x20 - path: /etc/ec2lab-note\n\
         \x20   content: note\n"
    );
    let imds = FakeImds::start(Metadata {
        user_data: Some(doc.into_bytes()),
        ..Metadata::default()
    });
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line("ec2lab-guest: cloud-config: ok: wrote /etc/motd (0600, 30 bytes)");
    run.assert_line(
        "ec2lab-guest: cloud-config: skipped: packages are not supported on this image",
    );
    run.assert_line_starting("ec2lab-guest: cloud-config: ok: runcmd[0] exited with status 0");
    run.assert_line_starting("ec2lab-guest: cloud-config: ok: runcmd[1] exited with status 0");
    run.assert_line("ec2lab-guest: user-data: ok: cloud-config applied: 5 actions");

    let motd = root.path().join("etc/motd");
    assert_eq!(
        fs::read_to_string(&motd).expect("motd"),
        "Welcome to ec2lab\nsecond line\n"
    );
    assert_eq!(
        fs::metadata(&motd).expect("motd").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_to_string(root.path().join("opt/app/blob")).expect("blob"),
        "hello from b64\n"
    );
    assert_eq!(
        fs::read_to_string(root.path().join("copied")).expect("copied"),
        "note"
    );
    assert_eq!(
        fs::read_to_string(root.path().join("argv")).expect("argv"),
        "a b\n"
    );
}

#[test]
fn cloud_config_that_does_not_parse_is_a_failure_not_a_crash() {
    let root = tempfile::tempdir().expect("tempdir");
    let imds = FakeImds::start(Metadata {
        user_data: Some(b"#cloud-config\nruncmd: [ls\nwrite_files: []\n".to_vec()),
        ..Metadata::default()
    });
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line_starting(
        "ec2lab-guest: user-data: failed: cloud-config does not parse: line 3:",
    );
}

#[test]
fn cloud_config_with_anchors_flow_lists_and_folded_commands_runs() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path().display();
    // The shapes users copy from the cloud-init docs: flow lists and a flow
    // mapping, an anchored argv reused by an alias, a `>` folded command.
    let doc = format!(
        "#cloud-config\n\
         ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEc2VGVzdEtleQ me]\n\
         write_files: [{{path: /etc/flow, content: \"from a flow mapping\\n\"}}]\n\
         runcmd:\n\
         \x20 - &append [ sh, -c, \"echo run >> '{r}/runs'\" ]\n\
         \x20 - *append\n\
         \x20 - >\n\
         \x20   cat '{r}/etc/flow'\n\
         \x20   > '{r}/copied'\n"
    );
    let imds = FakeImds::start(Metadata {
        user_data: Some(doc.into_bytes()),
        ..Metadata::default()
    });
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line(
        "ec2lab-guest: cloud-config: skipped: not supported by ec2lab-guest, ignored: ssh_authorized_keys",
    );
    run.assert_line("ec2lab-guest: user-data: ok: cloud-config applied: 4 actions");
    assert_eq!(
        fs::read_to_string(root.path().join("runs")).expect("runs"),
        "run\nrun\n"
    );
    assert_eq!(
        fs::read_to_string(root.path().join("copied")).expect("copied"),
        "from a flow mapping\n"
    );
}
