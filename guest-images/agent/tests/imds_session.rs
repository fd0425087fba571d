//! Token flow, IMDSv1 fallback rules, and bounded waits when the metadata
//! service is missing or mute — run against the real binary.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{boot, run_raw, FakeImds, Metadata, TokenMode, TOKEN};

#[test]
fn v2_token_is_requested_then_sent_on_every_get_when_imds_requires_it() {
    let imds = FakeImds::start(Metadata::default());
    let root = tempfile::tempdir().expect("tempdir");
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line("ec2lab-guest: token: ok: IMDSv2 session token for 21600 s");
    run.assert_line("ec2lab-guest: instance-id: ok: i-0123456789abcdef0");
    run.assert_line_starting("ec2lab-guest: hostname: ok: ip-10-0-0-5.ec2.internal");

    let seen = imds.seen();
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].path, "/latest/api/token");
    assert_eq!(seen[0].ttl.as_deref(), Some("21600"));
    let gets: Vec<_> = seen.iter().filter(|s| s.method == "GET").collect();
    assert!(gets.len() >= 4, "{seen:?}");
    for get in gets {
        assert_eq!(get.token.as_deref(), Some(TOKEN), "{get:?}");
    }
}

#[test]
fn imdsv1_is_used_when_the_token_endpoint_does_not_exist() {
    let imds = FakeImds::start(Metadata {
        token_mode: TokenMode::NoEndpoint,
        ..Metadata::default()
    });
    let root = tempfile::tempdir().expect("tempdir");
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line(
        "ec2lab-guest: token: skipped: IMDS has no token endpoint (HTTP 404); using IMDSv1",
    );
    run.assert_line("ec2lab-guest: instance-id: ok: i-0123456789abcdef0");
    assert!(imds.seen().iter().all(|s| s.token.is_none()));
}

#[test]
fn refused_token_is_a_clear_failure_without_imdsv1_fallback() {
    let imds = FakeImds::start(Metadata {
        token_mode: TokenMode::Refused,
        ..Metadata::default()
    });
    let root = tempfile::tempdir().expect("tempdir");
    let run = boot(&imds.url, root.path(), &[]);
    run.assert_done();
    run.assert_line(
        "ec2lab-guest: token: failed: IMDS refused a session token (HTTP 403); \
         not falling back to IMDSv1 (pass --allow-imdsv1 to allow it)",
    );
    assert!(
        imds.seen().iter().all(|s| s.method == "PUT"),
        "no GET without a token: {:?}",
        imds.seen()
    );
    assert!(!root.path().join("etc/hostname").exists());
}

#[test]
fn allowed_imdsv1_fallback_still_stops_at_401() {
    let imds = FakeImds::start(Metadata {
        token_mode: TokenMode::Refused,
        ..Metadata::default()
    });
    let root = tempfile::tempdir().expect("tempdir");
    let run = boot(&imds.url, root.path(), &["--allow-imdsv1"]);
    run.assert_done();
    run.assert_line_starting(
        "ec2lab-guest: token: failed: IMDS refused a session token (HTTP 403); using IMDSv1",
    );
    run.assert_line(
        "ec2lab-guest: instance-id: failed: IMDS answered HTTP 401 for \
         /latest/meta-data/instance-id: a session token is required; not falling back to IMDSv1",
    );
    run.assert_line_starting("ec2lab-guest: hostname: failed: IMDS answered HTTP 401");
    assert!(!root.path().join("etc/hostname").exists());
}

#[test]
fn optional_tokens_are_still_used() {
    let imds = FakeImds::start(Metadata {
        token_mode: TokenMode::Optional,
        ..Metadata::default()
    });
    let root = tempfile::tempdir().expect("tempdir");
    boot(&imds.url, root.path(), &[]).assert_done();
    assert!(imds
        .seen()
        .iter()
        .filter(|s| s.method == "GET")
        .all(|s| s.token.as_deref() == Some(TOKEN)));
}

/// A port with nothing listening: connection refused on every attempt.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn unreachable_metadata_is_reported_after_default_attempts_and_boot_goes_on() {
    let port = closed_port();
    let url = format!("http://127.0.0.1:{port}");
    let root = tempfile::tempdir().expect("tempdir");
    let root_arg = root.path().to_str().expect("utf-8");
    let run = run_raw(&["--imds", &url, "--root", root_arg, "--set-hostname=false"]);
    run.assert_done();
    run.assert_line(&format!(
        "ec2lab-guest: imds: failed: metadata unreachable at {url} after 5 attempts (connection refused)"
    ));
    // The check-in (disabled by run_raw), the metadata failure, done.
    run.assert_line("ec2lab-guest: checkin: skipped: disabled (--no-checkin)");
    assert_eq!(run.stdout.lines().count(), 3, "{}", run.stdout);
    // 5 refused connects and 50+100+200+400 ms of backoff.
    assert!(run.elapsed < Duration::from_secs(3), "{:?}", run.elapsed);
}

#[test]
fn mute_metadata_server_is_bounded_by_the_timeout() {
    // Bound but never accepted: the kernel completes the handshake, then
    // nothing ever answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let root = tempfile::tempdir().expect("tempdir");
    let root_arg = root.path().to_str().expect("utf-8");
    let run = run_raw(&[
        "--imds",
        &url,
        "--root",
        root_arg,
        "--set-hostname=false",
        "--attempts",
        "3",
        "--timeout-ms",
        "300",
    ]);
    run.assert_done();
    run.assert_line(&format!(
        "ec2lab-guest: imds: failed: metadata unreachable at {url} after 3 attempts (no response within 300 ms)"
    ));
    // 3 × 300 ms plus 150 ms of backoff, with slack for a loaded machine.
    assert!(
        run.elapsed >= Duration::from_millis(900),
        "{:?}",
        run.elapsed
    );
    assert!(run.elapsed < Duration::from_secs(4), "{:?}", run.elapsed);
    drop(listener);
}

#[test]
fn metadata_subcommand_prints_one_item() {
    let imds = FakeImds::start(Metadata::default());
    let run = run_raw(&["metadata", "instance-id", "--imds", &imds.url]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "i-0123456789abcdef0\n");

    let run = run_raw(&["metadata", "no/such/item", "--imds", &imds.url]);
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.stderr.trim(),
        "ec2lab-guest: metadata: failed: /latest/meta-data/no/such/item not found (HTTP 404)"
    );
}
