//! `kill -9` of the daemon loses no instance and leaves no orphan: killed
//! while an instance is pending and again while it is stopping, a restarted
//! `ec2lab serve` finds the VMM it left running (or the one that ended
//! meanwhile) and every state converges; after terminate nothing is left.
//! And a host going down (the daemon and every VMM killed at once) loses
//! nothing either: the running instance comes back running on a new VMM,
//! as EC2's automatic recovery brings it back.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Prereqs};

fn aws(prereqs: &Prereqs, daemon: &Daemon, args: &[&str]) -> serde_json::Value {
    let out = prereqs
        .python()
        .args([
            "-m",
            "awscli",
            "--endpoint-url",
            &daemon.endpoint,
            "--output",
            "json",
            "ec2",
        ])
        .args(args)
        .envs(daemon.client_env())
        .output()
        .expect("run aws");
    assert!(
        out.status.success(),
        "aws ec2 {args:?}: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn state(prereqs: &Prereqs, daemon: &Daemon, id: &str) -> String {
    let v = aws(
        prereqs,
        daemon,
        &["describe-instances", "--instance-ids", id],
    );
    v["Reservations"][0]["Instances"][0]["State"]["Name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn wait_state(prereqs: &Prereqs, daemon: &Daemon, id: &str, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = state(prereqs, daemon, id);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} is {now}, not {want}, after {timeout:?}\n--- daemon log ---\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn daemon_killed_while_pending_or_stopping_and_a_host_going_down_lose_nothing() {
    let Some(prereqs) = Prereqs::check("crash") else {
        return;
    };
    let mut daemon = Daemon::start(&prereqs);
    let images = aws(
        &prereqs,
        &daemon,
        &[
            "describe-images",
            "--filters",
            "Name=name,Values=lab-minimal",
        ],
    );
    let ami = images["Images"][0]["ImageId"]
        .as_str()
        .expect("lab-minimal registered")
        .to_string();

    // Killed right after RunInstances answered: the instance is pending.
    let run = aws(
        &prereqs,
        &daemon,
        &[
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "lab.micro",
        ],
    );
    let id = run["Instances"][0]["InstanceId"]
        .as_str()
        .expect("instance id")
        .to_string();
    daemon.kill9();
    daemon.restart();
    wait_state(&prereqs, &daemon, &id, "running", Duration::from_secs(120));
    assert_eq!(
        daemon.live_vmms().len(),
        1,
        "exactly one VMM for the instance"
    );

    // The host goes down: the daemon dies, and the VMM gets the SIGTERM a
    // shutting-down host sends (it records "stopped by signal 15"; power
    // loss would leave no record, which the unit tests cover). The
    // restarted daemon runs the same instance again on a new VMM: same
    // id, same private address, still running.
    let describe = |daemon: &Daemon| {
        aws(
            &prereqs,
            daemon,
            &["describe-instances", "--instance-ids", &id],
        )["Reservations"][0]["Instances"][0]
            .clone()
    };
    let private_ip = describe(&daemon)["PrivateIpAddress"].clone();
    let old = daemon.live_vmms();
    daemon.kill9();
    for pid in &old {
        // SAFETY: kill(2) on a VMM this test's daemon started.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.live_vmms().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.live_vmms().is_empty(), "the VMM outlived SIGTERM");
    daemon.restart();
    let deadline = Instant::now() + Duration::from_secs(120);
    let recovered = loop {
        let live = daemon.live_vmms();
        if live.len() == 1 && !old.contains(&live[0]) {
            break live[0];
        }
        assert!(
            Instant::now() < deadline,
            "no new VMM for {id} after the host went down: {live:?}\n--- daemon log ---\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(state(&prereqs, &daemon, &id), "running");
    assert_eq!(describe(&daemon)["PrivateIpAddress"], private_ip);
    assert!(
        daemon.log().contains("recovering it on a new VMM"),
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.live_vmms(), vec![recovered]);

    // Killed while stopping.
    aws(
        &prereqs,
        &daemon,
        &["stop-instances", "--instance-ids", &id],
    );
    daemon.kill9();
    assert_eq!(daemon.live_vmms().len(), 1, "the VMM outlives the daemon");
    daemon.restart();
    wait_state(&prereqs, &daemon, &id, "stopped", Duration::from_secs(300));
    assert!(
        daemon.live_vmms().is_empty(),
        "a stopped instance has no VMM"
    );

    aws(
        &prereqs,
        &daemon,
        &["terminate-instances", "--instance-ids", &id],
    );
    wait_state(
        &prereqs,
        &daemon,
        &id,
        "terminated",
        Duration::from_secs(120),
    );
    let leftovers = daemon.stop_and_list_leftovers(Duration::from_secs(10));
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}
