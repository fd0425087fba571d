//! The VMM's seccomp filters: every thread runs under one once the guest
//! runs, a forbidden system call stops the VMM with its own exit status and
//! a reason naming the thread and the call, and `--no-seccomp` turns them
//! off. And its capabilities: a VMM started as root holds none once the
//! guest runs, in any thread.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::api::{self, request};
use common::{build_guest, Vmm};
use ec2lab_vmm::console::LOG_LIMIT;
use ec2lab_vmm::seccomp::{EXIT_SECCOMP, SELF_TEST_ENV};
use ec2lab_vmm_api::exit::{ExitRecord, EXIT_API_SHUTDOWN};

/// One field of a `/proc/.../status` text.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The `status` text of every thread of `pid`, with the thread's name.
fn thread_statuses(pid: i32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read tasks");
    tasks
        .flatten()
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            (status_field(&status, "Name:"), status)
        })
        .collect()
}

/// The `Seccomp:` mode of every thread of `pid` (2 = filtered).
fn seccomp_modes(pid: i32) -> Vec<(String, u32)> {
    thread_statuses(pid)
        .into_iter()
        .map(|(name, status)| {
            let mode = status_field(&status, "Seccomp:")
                .parse()
                .unwrap_or(u32::MAX);
            (name, mode)
        })
        .collect()
}

/// The capability sets of every thread of `pid` that are not empty.
fn capabilities_held(pid: i32) -> Vec<(String, &'static str, String)> {
    let mut held = Vec::new();
    for (name, status) in thread_statuses(pid) {
        for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            let mask = status_field(&status, set);
            if u64::from_str_radix(&mask, 16) != Ok(0) {
                held.push((name.clone(), set, mask));
            }
        }
    }
    held
}

fn shut_down(socket: &Path, vmm: Vmm) {
    let reply = request(socket, "PUT", "/actions", Some(r#"{"action":"Shutdown"}"#));
    assert_eq!(reply.status, 204, "{reply:?}");
    let outcome = vmm.wait(Duration::from_secs(10));
    assert_eq!(
        outcome.status.code(),
        Some(EXIT_API_SHUTDOWN),
        "{outcome:?}"
    );
}

#[test]
fn every_vmm_thread_runs_under_a_seccomp_filter_with_no_capability_once_the_guest_runs() {
    require_kvm!(
        "every_vmm_thread_runs_under_a_seccomp_filter_with_no_capability_once_the_guest_runs"
    );
    let guest = build_guest("ring3_spin");
    let (socket, vmm) = api::spawn_with_api(
        &guest,
        &["--memory-mib", "128", "--vcpus", "2"],
        "spinning in ring 3\n",
    );
    // The main thread installs its filter right after starting the vCPUs;
    // the API has answered, so give it a moment at most.
    let deadline = Instant::now() + Duration::from_secs(5);
    let modes = loop {
        let modes = seccomp_modes(vmm.pid());
        if modes.iter().all(|(_, mode)| *mode == 2) || Instant::now() > deadline {
            break modes;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        modes.iter().all(|(_, mode)| *mode == 2),
        "threads without a filter: {modes:?}"
    );
    for name in ["vcpu0", "vcpu1", "api", "signals"] {
        assert!(
            modes.iter().any(|(n, _)| n == name),
            "no {name} thread: {modes:?}"
        );
    }
    // Started by a test that holds capabilities (root, as in CI), the VMM
    // gave up all of them, in every thread and every set.
    let ours = std::fs::read_to_string("/proc/self/status").expect("own status");
    if u64::from_str_radix(&status_field(&ours, "CapEff:"), 16).is_ok_and(|m| m != 0) {
        let held = capabilities_held(vmm.pid());
        assert!(held.is_empty(), "capabilities left in the VMM: {held:?}");
    } else {
        eprintln!("note: this test holds no capabilities, so the VMM had none to drop");
    }
    shut_down(&socket, vmm);
}

#[test]
fn a_forbidden_system_call_stops_the_vmm_with_the_seccomp_status_and_says_which() {
    require_kvm!("a_forbidden_system_call_stops_the_vmm_with_the_seccomp_status_and_says_which");
    let guest = build_guest("ring3_spin");
    let socket = guest.scratch("api.sock");
    let exit_file = guest.scratch("exit.json");
    let kernel = guest.elf.display().to_string();
    let vmm = Vmm::spawn_with_env(
        &[(SELF_TEST_ENV, "api")],
        [
            "--kernel",
            &kernel,
            "--api-sock",
            &socket.display().to_string(),
            "--exit-file",
            &exit_file.display().to_string(),
        ],
    );
    let outcome = vmm.wait(Duration::from_secs(20));
    assert_eq!(outcome.status.code(), Some(EXIT_SECCOMP), "{outcome:?}");
    let record: ExitRecord =
        serde_json::from_str(&std::fs::read_to_string(&exit_file).expect("exit file"))
            .expect("an exit record");
    assert_eq!(record.code, EXIT_SECCOMP);
    let socket_call = format!("system call {}", libc::SYS_socket);
    assert!(
        record.reason.contains("api thread") && record.reason.contains(&socket_call),
        "{record:?}"
    );
    assert!(outcome.stderr.contains(&record.reason), "{outcome:?}");
}

#[test]
fn no_seccomp_runs_the_vmm_unfiltered_for_debugging() {
    require_kvm!("no_seccomp_runs_the_vmm_unfiltered_for_debugging");
    let guest = build_guest("ring3_spin");
    let socket = guest.scratch("api.sock");
    let kernel = guest.elf.display().to_string();
    // The self-test would stop a filtered VMM at once.
    let mut vmm = Vmm::spawn_with_env(
        &[(SELF_TEST_ENV, "api")],
        [
            "--kernel",
            &kernel,
            "--api-sock",
            &socket.display().to_string(),
            "--no-seccomp",
        ],
    );
    vmm.wait_for_stdout("spinning in ring 3\n", Duration::from_secs(30));
    api::wait_ready(&mut vmm, &socket);
    let modes = seccomp_modes(vmm.pid());
    assert!(modes.iter().all(|(_, mode)| *mode == 0), "{modes:?}");
    shut_down(&socket, vmm);
}

/// A guest that floods its console makes the VMM cut the console log in
/// place (console::CappedLog) from the vCPU thread, under its filter: the
/// VMM runs on, and the log never passes its cap.
#[test]
fn a_flooded_console_log_is_cut_under_the_filter_and_the_vmm_runs_on() {
    require_kvm!("a_flooded_console_log_is_cut_under_the_filter_and_the_vmm_runs_on");
    let guest = build_guest("serial_flood");
    let socket = guest.scratch("api.sock");
    let log = guest.scratch("console.log");
    let kernel = guest.elf.display().to_string();
    let mut vmm = Vmm::spawn([
        "--kernel",
        &kernel,
        "--api-sock",
        &socket.display().to_string(),
        "--serial-out",
        &log.display().to_string(),
    ]);
    api::wait_ready(&mut vmm, &socket);
    // Cut once: the file shrank from near its cap.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut largest = 0;
    loop {
        let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        assert!(len <= LOG_LIMIT, "the console log passed its cap: {len}");
        if len < largest {
            break;
        }
        largest = len;
        assert!(
            vmm.try_status().is_none(),
            "the VMM stopped while its console was flooded: {:?}",
            vmm.try_status()
        );
        assert!(
            Instant::now() < deadline,
            "the console log reached {largest} bytes and was never cut"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    shut_down(&socket, vmm);
}
