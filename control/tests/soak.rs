//! Soak: a real `ec2lab serve` takes rounds of 1,000 clients connecting at
//! once (loopback only, each with one signed DescribeInstances) and comes
//! out of each as it went in: every client gets an answer or, past the
//! connection cap, a closed connection (none hangs), the daemon's open
//! descriptors return to their count before the round, and its resident
//! memory does not keep growing from round to round (the first rounds are
//! the warm-up: the allocator and the runtime's threads settle there).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use common::{Daemon, Prereqs};
use ec2lab_control::api::sigv4::{sign_request, Credentials, Request};

const CLIENTS: usize = 1_000;
const ROUNDS: usize = 10;
/// Rounds the allocator and the runtime settle in before growth counts.
const WARM_UP: usize = 4;
/// How much the rounds after the warm-up may add to the daemon's resident
/// memory in all without counting as growth. Measured here (AMD EPYC,
/// 2 CPUs, 40 rounds): +4 to +6 MiB over the first four rounds (glibc's
/// per-thread arenas, the runtime's threads), then ever slower: +2 to
/// +5 MiB over the next six, +6 MiB over the next 36 (about 50 bytes per
/// request, falling). A leak of 1.5 KiB per request passes this bound
/// within the six rounds counted.
const RSS_SLACK_KIB: u64 = 8 * 1024;

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// One signed DescribeInstances as raw HTTP/1.1 bytes.
fn signed_request(daemon: &Daemon, host: &str) -> Vec<u8> {
    let body = "Action=DescribeInstances&Version=2016-11-15";
    let headers = vec![(
        "content-type".to_string(),
        "application/x-www-form-urlencoded; charset=utf-8".to_string(),
    )];
    let credentials = Credentials {
        access_key_id: daemon.access_key.clone(),
        secret_access_key: daemon.secret_key.clone(),
    };
    let request = Request {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body: body.as_bytes(),
    };
    let added = sign_request(
        &request,
        host,
        &credentials,
        ("us-east-1", "ec2"),
        SystemTime::now(),
    );
    let mut text = String::from("POST / HTTP/1.1\r\n");
    for (k, v) in headers.iter().chain(&added) {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    text.into_bytes()
}

/// What one round's clients got: (answered 200, closed without an answer).
fn round(daemon: &Daemon, host: &str) -> (usize, usize) {
    let request = Arc::new(signed_request(daemon, host));
    let start = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (request, start, host) = (request.clone(), start.clone(), host.to_string());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    start.wait();
                    let Ok(mut stream) = TcpStream::connect(&host) else {
                        return None;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                    let _ = stream.write_all(&request);
                    let mut answer = Vec::new();
                    match stream.read_to_end(&mut answer) {
                        Ok(_) => Some(answer),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(answer),
                        // A read timeout: the client hung.
                        Err(_) => None,
                    }
                })
                .expect("client thread")
        })
        .collect();
    let (mut ok, mut closed) = (0, 0);
    for client in clients {
        let answer = client
            .join()
            .expect("client thread")
            .expect("a client hung or could not connect");
        if answer.starts_with(b"HTTP/1.1 200") {
            ok += 1;
        } else if answer.is_empty() {
            closed += 1;
        } else {
            panic!("unexpected answer: {}", String::from_utf8_lossy(&answer));
        }
    }
    (ok, closed)
}

#[test]
fn rounds_of_a_thousand_concurrent_clients_leave_no_descriptor_and_no_memory_growth() {
    let Some(prereqs) = Prereqs::check("soak") else {
        return;
    };
    let daemon = Daemon::start(&prereqs);
    let pid = daemon.pid().expect("daemon pid");
    let host = daemon.endpoint.trim_start_matches("http://").to_string();
    let fds_before = open_fds(pid);
    let mut rss_after = Vec::new();
    for n in 0..ROUNDS {
        let started = Instant::now();
        let (ok, closed) = round(&daemon, &host);
        assert_eq!(ok + closed, CLIENTS);
        assert!(ok >= 100, "round {n}: only {ok} of {CLIENTS} answered");
        // Connections close as their tasks end: give them a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        while open_fds(pid) > fds_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let fds = open_fds(pid);
        assert!(
            fds <= fds_before,
            "round {n}: the daemon holds {fds} descriptors, {fds_before} before\n{}",
            daemon.log()
        );
        rss_after.push(rss_kib(pid));
        eprintln!(
            "soak round {n}: {ok} answered, {closed} closed at the cap, {:.1} s, \
             daemon RSS {} KiB, {fds} descriptors",
            started.elapsed().as_secs_f64(),
            rss_after[n]
        );
    }
    let warm = rss_after[WARM_UP - 1];
    let last = *rss_after.last().expect("rounds");
    assert!(
        last <= warm + RSS_SLACK_KIB,
        "the daemon's memory grew from {warm} KiB after the warm-up to {last} KiB: {rss_after:?}"
    );
    let leftovers = daemon.stop_and_list_leftovers(Duration::from_secs(5));
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}
