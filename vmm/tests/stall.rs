//! The stall watchdog: a guest that stops making exits while running kernel
//! code, or halts with interrupts off, is reported on `GET /vm` (`stall`) and
//! in the log; an idle guest or a busy user program never is. Tiny guests
//! (tests/guests/stall.S) make each case in milliseconds.

mod common;

use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::api::{self, get_vm};
use common::{build_guest_with, status, Guest, Vmm};

const STALL_TIMEOUT_SECS: u64 = 2;

/// Boots stall.S in `mode` with a short watchdog and waits for its last exit.
fn spawn(mode: i64) -> (Guest, PathBuf, Vmm) {
    let guest = build_guest_with("stall", &[("MODE", mode)]);
    let timeout = STALL_TIMEOUT_SECS.to_string();
    let (socket, vmm) =
        api::spawn_with_api(&guest, &["--stall-timeout-secs", &timeout], "quiet now\n");
    (guest, socket, vmm)
}

/// Polls `GET /vm` until `stall` is set or `timeout` passes.
fn wait_for_stall(socket: &std::path::Path, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let vm = get_vm(socket);
        if !vm["stall"].is_null() || Instant::now() >= deadline {
            return vm;
        }
        sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_guest_spinning_in_its_kernel_or_halted_with_interrupts_off_is_reported_stalled() {
    require_kvm!(
        "a_guest_spinning_in_its_kernel_or_halted_with_interrupts_off_is_reported_stalled"
    );
    let spinning = spawn(0);
    let dead = spawn(1);
    for ((_guest, socket, vmm), halted) in [(spinning, false), (dead, true)] {
        let vm = wait_for_stall(&socket, Duration::from_secs(20));
        let stall = &vm["stall"];
        assert!(!stall.is_null(), "no stall reported: {vm}");
        assert!(
            stall["quiet_secs"].as_u64() >= Some(STALL_TIMEOUT_SECS),
            "{vm}"
        );
        let vcpu = &stall["vcpus"][0];
        assert_eq!(vcpu["id"], 0, "{vm}");
        assert_eq!(vcpu["kernel_mode"], true, "{vm}");
        assert_eq!(vcpu["halted"], halted, "{vm}");
        if halted {
            assert_eq!(vcpu["interrupts_enabled"], false, "{vm}");
        }
        assert!(vcpu["rip"].as_u64().is_some_and(|rip| rip > 0), "{vm}");
        assert_eq!(api::state(&vm), "Running", "{vm}");
        vmm.signal(libc::SIGTERM);
        let out = vmm.wait(Duration::from_secs(10));
        out.assert_code(status::SIGTERM);
        let expected = if halted {
            "vcpu0 halted with interrupts off"
        } else {
            "vcpu0 in guest kernel code"
        };
        assert!(
            out.stderr
                .contains("guest stalled: no exit and no serial output for")
                && out.stderr.contains(expected),
            "no stall line naming {expected:?}\n{out}"
        );
    }
}

#[test]
fn an_idle_guest_and_a_busy_user_program_are_never_reported_stalled() {
    require_kvm!("an_idle_guest_and_a_busy_user_program_are_never_reported_stalled");
    let idle = spawn(2);
    let user_busy = spawn(3);
    // Three watchdog periods: each VM is sampled at least once.
    sleep(Duration::from_secs(3 * STALL_TIMEOUT_SECS + 1));
    for (_guest, socket, vmm) in [idle, user_busy] {
        let vm = get_vm(&socket);
        assert!(vm["stall"].is_null(), "{vm}");
        let kicks = api::vcpu_exits(&vm, 0, "interrupted");
        assert!(kicks >= 1, "the watchdog never sampled the vCPU: {vm}");
        vmm.signal(libc::SIGTERM);
        let out = vmm.wait(Duration::from_secs(10));
        out.assert_code(status::SIGTERM);
        assert!(!out.stderr.contains("guest stalled"), "{out}");
    }
}
