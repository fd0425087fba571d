//! Launch/terminate cycles leave nothing behind: after N cycles (3 in the
//! suite, where `test_leaks.py` adds 20 more for the network fabric;
//! `EC2LAB_SOAK_CYCLES=100` for the soak the hardening review asked for) no VMM, dnsmasq, instance directory, cgroup, VPC namespace or
//! network interface is left, the daemon holds as many descriptors as after
//! the first cycle, and its resident memory has not grown by more than a
//! few MiB. Each instance is terminated while its guest is still booting
//! (the racy case).

mod common;

use std::time::Duration;

use common::{Daemon, Prereqs};

/// Descriptors the daemon has open.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The daemon's resident memory in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn launch_terminate_cycles_leave_nothing_behind() {
    let Some(prereqs) = Prereqs::check("cycles") else {
        return;
    };
    let cycles: usize = std::env::var("EC2LAB_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let daemon = Daemon::start(&prereqs);
    let ami = daemon.lab_minimal_ami(&prereqs);
    let pid = daemon.pid().expect("daemon pid");
    let mut baseline = None;
    for cycle in 0..cycles {
        let id = daemon.run_instance(&prereqs, &ami, "lab.nano", &[]);
        daemon.wait_state(&prereqs, &id, "running", Duration::from_secs(120));
        daemon.aws(&prereqs, &["terminate-instances", "--instance-ids", &id]);
        daemon.wait_state(&prereqs, &id, "terminated", Duration::from_secs(120));
        if cycle == 0 {
            // After one whole cycle: every pool and cache the daemon keeps
            // has been made once.
            baseline = Some((open_fds(pid), rss_kib(pid)));
        }
    }
    let (fds_after_one, rss_after_one) = baseline.unwrap_or_default();
    let interfaces = daemon.aws(&prereqs, &["describe-network-interfaces"]);
    assert_eq!(
        interfaces["NetworkInterfaces"].as_array().map(Vec::len),
        Some(0),
        "network interfaces left: {interfaces}"
    );
    // Give the last terminate's clean-up its moment, then compare.
    std::thread::sleep(Duration::from_secs(2));
    let (fds, rss) = (open_fds(pid), rss_kib(pid));
    println!(
        "{cycles} cycles: descriptors {fds_after_one} after one, {fds} after all; \
         RSS {rss_after_one} KiB after one, {rss} KiB after all"
    );
    assert!(
        fds <= fds_after_one,
        "the daemon holds {fds} descriptors after {cycles} cycles, {fds_after_one} after one"
    );
    assert!(
        rss <= rss_after_one + 16 * 1024,
        "the daemon's RSS grew from {rss_after_one} KiB to {rss} KiB over {cycles} cycles"
    );
    let leftovers = daemon.stop_and_list_leftovers(Duration::from_secs(10));
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}
