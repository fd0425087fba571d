//! `ec2lab-guest connect-keys` against an in-test metadata service: the
//! AuthorizedKeysCommand form prints a user's active Instance Connect keys,
//! the --watch form adds them to authorized_keys and takes them away again
//! when the service stops listing them.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_raw, FakeImds, Metadata};

const PUSHED: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICtYnzSySIHq8QQfRJUzRQMqPnobgvnW74dY1GvmPst8";
const OWN: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVjMmxhYi10ZXN0LWtleS1ib2R5 my-own-key";
const MARK: &str = "ec2-instance-connect@ec2lab";

#[test]
fn a_users_active_keys_are_printed_for_sshd() {
    let imds = FakeImds::start(Metadata {
        connect_keys: vec![
            ("ec2-user".into(), format!("{PUSHED} pushed")),
            ("admin".into(), OWN.into()),
        ],
        ..Metadata::default()
    });
    let run = run_raw(&["connect-keys", "ec2-user", "--imds", &imds.url]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, format!("{PUSHED}\n"));

    let run = run_raw(&["connect-keys", "nobody", "--imds", &imds.url]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(0), ""),
        "{}",
        run.stderr
    );
    // A user name that would leave the category is never asked for.
    let run = run_raw(&["connect-keys", "../public-keys", "--imds", &imds.url]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(0), ""),
        "{}",
        run.stderr
    );
    assert!(imds.seen().iter().all(|s| !s.path.contains("..")));

    let run = run_raw(&[
        "connect-keys",
        "--imds",
        "http://127.0.0.1:1",
        "ec2-user",
        "--attempts",
        "1",
    ]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("connect-keys: failed: metadata unreachable"),
        "{}",
        run.stderr
    );

    let run = run_raw(&["connect-keys"]);
    assert_eq!(
        run.code,
        Some(2),
        "a user or --watch is required: {}",
        run.stderr
    );
}

struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(file: &Path, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(file).unwrap_or_default();
        if ok(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}; authorized_keys:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_watcher_adds_pushed_keys_and_removes_them_when_they_expire() {
    let root = tempfile::tempdir().expect("tempdir");
    let uid = fs::metadata(root.path()).expect("root").uid();
    let gid = fs::metadata(root.path()).expect("root").gid();
    fs::create_dir_all(root.path().join("etc")).expect("etc");
    fs::write(
        root.path().join("etc/passwd"),
        format!("root:x:0:0:root:/root:/bin/sh\nec2-user:x:{uid}:{gid}::/home/ec2-user:/bin/sh\n"),
    )
    .expect("passwd");
    let ssh = root.path().join("home/ec2-user/.ssh");
    fs::create_dir_all(&ssh).expect("ssh dir");
    let file = ssh.join("authorized_keys");
    fs::write(&file, format!("{OWN}\n")).expect("own key");

    let imds = FakeImds::start(Metadata::default());
    let _watcher = Watcher(
        Command::new(env!("CARGO_BIN_EXE_ec2lab-guest"))
            .args([
                "connect-keys",
                "--watch",
                "--interval-ms",
                "100",
                "--imds",
                &imds.url,
            ])
            .arg("--root")
            .arg(root.path())
            .env("EC2LAB_GUEST_NO_CHECKIN", "true")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the watcher"),
    );

    imds.set(|m| {
        m.connect_keys = vec![
            ("ec2-user".into(), PUSHED.into()),
            ("ghost".into(), PUSHED.into()),
        ]
    });
    let text = wait_for(&file, "the pushed key never arrived", |t| {
        t.contains(PUSHED)
    });
    assert_eq!(text, format!("{OWN}\n{PUSHED} {MARK}\n"));
    let meta = fs::metadata(&file).expect("file");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (uid, gid, 0o600)
    );

    imds.set(|m| m.connect_keys.clear());
    let text = wait_for(&file, "the expired key stayed", |t| !t.contains(PUSHED));
    assert_eq!(text, format!("{OWN}\n"), "the user's own key is kept");
}

#[test]
fn a_new_watcher_removes_keys_an_earlier_boot_left() {
    let root = tempfile::tempdir().expect("tempdir");
    let uid = fs::metadata(root.path()).expect("root").uid();
    fs::create_dir_all(root.path().join("etc")).expect("etc");
    fs::write(
        root.path().join("etc/passwd"),
        format!("ec2-user:x:{uid}:{uid}::/home/ec2-user:/bin/sh\n"),
    )
    .expect("passwd");
    let ssh = root.path().join("home/ec2-user/.ssh");
    fs::create_dir_all(&ssh).expect("ssh dir");
    let file = ssh.join("authorized_keys");
    fs::write(&file, format!("{OWN}\n{PUSHED} {MARK}\n")).expect("left over");

    let imds = FakeImds::start(Metadata::default());
    let _watcher = Watcher(
        Command::new(env!("CARGO_BIN_EXE_ec2lab-guest"))
            .args([
                "connect-keys",
                "--watch",
                "--interval-ms",
                "100",
                "--imds",
                &imds.url,
            ])
            .arg("--root")
            .arg(root.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the watcher"),
    );
    let text = wait_for(&file, "a stale key survived", |t| !t.contains(PUSHED));
    assert_eq!(text, format!("{OWN}\n"));
}
