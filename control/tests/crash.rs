//! `kill -9` of the daemon loses no instance and leaves no orphan: killed
//! while an instance is pending and again while it is stopping, a restarted
//! `ec2lab serve` finds the VMM it left running (or the one that ended
//! meanwhile) and every state converges; after terminate nothing is left.
//! And a host going down (the daemon and every VMM killed at once) loses
//! nothing either: the running instance comes back running on a new VMM,
//! as EC2's automatic recovery brings it back.
//!
//! Hibernation too: killed in the middle of saving (its VMM held stopped
//! so the save cannot finish first), the restarted daemon saves it again
//! and it ends `stopped` with its memory on disk; a host going down while
//! it is hibernated loses nothing; killed during the resume, the restarted
//! daemon finishes it (the same guest goes on, no second boot) and forgets
//! the saved files.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{Daemon, Prereqs};

#[test]
fn daemon_killed_while_pending_or_stopping_and_a_host_going_down_lose_nothing() {
    let Some(prereqs) = Prereqs::check("crash") else {
        return;
    };
    let mut daemon = Daemon::start(&prereqs);
    let ami = daemon.lab_minimal_ami(&prereqs);

    // Killed right after RunInstances answered: the instance is pending.
    let id = daemon.run_instance(
        &prereqs,
        &ami,
        "lab.micro",
        &["--hibernation-options", "Configured=true"],
    );
    daemon.kill9();
    daemon.restart();
    daemon.wait_state(&prereqs, &id, "running", Duration::from_secs(120));
    assert_eq!(
        daemon.live_vmms().len(),
        1,
        "exactly one VMM for the instance"
    );
    // lab.micro: 1 vCPU, 256 MiB.
    let checked = daemon.assert_vmm_cgroups(daemon.live_vmms()[0], &id, 1, 256);
    println!("cgroups checked: {checked}");

    // The host goes down: the daemon dies, and the VMM gets the SIGTERM a
    // shutting-down host sends (it records "stopped by signal 15"; power
    // loss would leave no record, which the unit tests cover). The
    // restarted daemon runs the same instance again on a new VMM: same
    // id, same private address, still running.
    let describe = |daemon: &Daemon| {
        daemon.aws(&prereqs, &["describe-instances", "--instance-ids", &id])["Reservations"][0]
            ["Instances"][0]
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
    assert_eq!(daemon.state(&prereqs, &id), "running");
    assert_eq!(describe(&daemon)["PrivateIpAddress"], private_ip);
    assert!(
        daemon.log().contains("recovering it on a new VMM"),
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.live_vmms(), vec![recovered]);

    // Killed while stopping.
    daemon.aws(&prereqs, &["stop-instances", "--instance-ids", &id]);
    daemon.kill9();
    assert_eq!(daemon.live_vmms().len(), 1, "the VMM outlives the daemon");
    daemon.restart();
    daemon.wait_state(&prereqs, &id, "stopped", Duration::from_secs(300));
    assert!(
        daemon.live_vmms().is_empty(),
        "a stopped instance has no VMM"
    );

    hibernate_and_resume_across_kills(&prereqs, &mut daemon, &id);

    daemon.aws(&prereqs, &["terminate-instances", "--instance-ids", &id]);
    daemon.wait_state(&prereqs, &id, "terminated", Duration::from_secs(120));
    let leftovers = daemon.stop_and_list_leftovers(Duration::from_secs(10));
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// The hibernation half of the test; `id` is stopped and was launched with
/// hibernation configured.
fn hibernate_and_resume_across_kills(prereqs: &Prereqs, daemon: &mut Daemon, id: &str) {
    let instance_dir = daemon.dir.path().join("instances").join(id);
    let saved_state = instance_dir.join("hibernation").join("state");
    let console = instance_dir.join("console.log");
    let boots = || {
        std::fs::read_to_string(&console)
            .unwrap_or_default()
            .matches("Linux version")
            .count()
    };
    daemon.aws(prereqs, &["start-instances", "--instance-ids", id]);
    daemon.wait_state(prereqs, id, "running", Duration::from_secs(120));
    // Let the guest get going, so that there is a boot on the console.
    let deadline = Instant::now() + Duration::from_secs(120);
    while boots() == 0 {
        assert!(
            Instant::now() < deadline,
            "no boot on {}",
            console.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let [vmm] = daemon.live_vmms()[..] else {
        panic!("not one VMM: {:?}", daemon.live_vmms());
    };

    // Killed mid-hibernation: with the VMM stopped (SIGSTOP), the daemon's
    // pause request cannot be answered, so it dies with the save under way.
    // SAFETY: kill(2) on the VMM this test's daemon started.
    unsafe { libc::kill(vmm, libc::SIGSTOP) };
    let stopping = daemon.aws(
        prereqs,
        &["stop-instances", "--hibernate", "--instance-ids", id],
    );
    assert_eq!(
        stopping["StoppingInstances"][0]["CurrentState"]["Name"], "stopping",
        "{stopping}"
    );
    std::thread::sleep(Duration::from_millis(500));
    daemon.kill9();
    assert!(!saved_state.exists(), "a stopped VMM saved itself");
    // SAFETY: as above.
    unsafe { libc::kill(vmm, libc::SIGCONT) };
    daemon.restart();
    daemon.wait_state(prereqs, id, "stopped", Duration::from_secs(120));
    let described = daemon.aws(prereqs, &["describe-instances", "--instance-ids", id]);
    let instance = &described["Reservations"][0]["Instances"][0];
    assert_eq!(
        instance["StateReason"]["Code"], "Client.UserInitiatedHibernate",
        "{instance}"
    );
    assert!(
        saved_state.exists(),
        "no hibernation on disk after the kill"
    );
    assert!(
        daemon.live_vmms().is_empty(),
        "a hibernated instance has no VMM"
    );
    assert!(
        daemon.log().contains(&format!("{id}: hibernated")),
        "{}",
        daemon.log()
    );

    // The host goes down while it is hibernated: the restarted daemon
    // leaves it stopped, its memory on disk. It comes back with a VMM
    // binary that holds a resume until this test opens a gate (the real
    // VMM, exec'd by a shell), so that the daemon can be killed while a
    // resume is under way, not only before or after.
    daemon.kill9();
    let gate_dir = tempfile::tempdir().expect("gate dir");
    let gate = gate_dir.path().join("open");
    let held_vmm = gate_dir.path().join("ec2lab-vmm");
    std::fs::write(
        &held_vmm,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" --restore-from \"*)\n  \
             while [ ! -e '{}' ]; do sleep 0.05; done;;\nesac\nexec '{}' \"$@\"\n",
            gate.display(),
            prereqs.vmm.display()
        ),
    )
    .expect("write the held VMM");
    std::fs::set_permissions(&held_vmm, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the held VMM");
    daemon.set_vmm(held_vmm.clone());
    daemon.restart();
    assert_eq!(daemon.state(prereqs, id), "stopped");
    assert!(
        saved_state.exists(),
        "the daemon's restart lost the hibernation"
    );
    assert!(
        daemon.live_vmms().is_empty(),
        "a hibernated instance was started"
    );

    // Killed during the resume: the restarted daemon finishes it.
    // (Each VMM starts its console file anew.)
    daemon.aws(prereqs, &["start-instances", "--instance-ids", id]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !held_resume_started(&held_vmm) {
        assert!(
            Instant::now() < deadline,
            "no resume started\n--- daemon log ---\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.kill9();
    std::fs::write(&gate, "").expect("open the gate");
    daemon.restart();
    daemon.wait_state(prereqs, id, "running", Duration::from_secs(120));
    let [resumed] = daemon.live_vmms()[..] else {
        panic!("not one VMM: {:?}", daemon.live_vmms());
    };
    let cmdline = std::fs::read(format!("/proc/{resumed}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--restore-from"),
        "the start did not resume the hibernation"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while saved_state.exists() {
        assert!(
            Instant::now() < deadline,
            "the resumed hibernation is still on disk\n--- daemon log ---\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = daemon.log();
    for line in [
        "adopting the resume of its hibernation",
        "resumed from hibernation",
    ] {
        assert!(
            log.contains(&format!("{id}: {line}")),
            "no '{line}' in\n{log}"
        );
    }
    // A resumed guest goes on where it was (here: its boot, which was
    // under way on a host that emulates guest kernel mode); a cold boot
    // would start its new console with the kernel's banner.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&console).map_or(0, |m| m.len()) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(boots(), 0, "the instance booted again instead of resuming");
    let described = daemon.aws(prereqs, &["describe-instances", "--instance-ids", id]);
    let reason = described["Reservations"][0]["Instances"][0]["StateTransitionReason"].clone();
    assert!(
        !reason
            .as_str()
            .unwrap_or_default()
            .contains("Resume from hibernation failed"),
        "{reason}"
    );
    assert_eq!(daemon.live_vmms(), vec![resumed]);
}

/// Whether a VMM started through `held_vmm` waits at its gate with a resume.
fn held_resume_started(held_vmm: &std::path::Path) -> bool {
    let script = held_vmm.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<_> = cmdline
                .split(|b| *b == 0)
                .map(String::from_utf8_lossy)
                .collect();
            args.iter().any(|a| *a == script) && args.iter().any(|a| a == "--restore-from")
        })
}
