//! The control API on --api-sock (pause/resume, actions, state reporting)
//! and how the VMM stops when asked to by the API or by a signal.

mod common;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::api::{self, get_vm, request, vcpu_exits};
use common::{build_guest, status, Guest, Vmm, RUN_TIMEOUT};

/// Boots ring3_spin.S (endless ring-3 MMIO writes) with an API socket and
/// waits until the guest is in its loop and the API answers.
fn spawn_spinning_vm(vcpus: u32) -> (Guest, PathBuf, Vmm) {
    let guest = build_guest("ring3_spin");
    let vcpus = vcpus.to_string();
    let (socket, vmm) = api::spawn_with_api(
        &guest,
        &["--memory-mib", "128", "--vcpus", &vcpus],
        "spinning in ring 3\n",
    );
    (guest, socket, vmm)
}

fn put_state(socket: &std::path::Path, state: &str) {
    let reply = request(
        socket,
        "PUT",
        "/vm/state",
        Some(&format!(r#"{{"state":"{state}"}}"#)),
    );
    assert_eq!(reply.status, 204, "PUT /vm/state {state}: {reply:?}");
}

fn mmio_writes(socket: &std::path::Path) -> u64 {
    vcpu_exits(&get_vm(socket), 0, "mmio_write")
}

#[test]
fn pause_freezes_vcpu_exit_counts_and_resume_restarts_them() {
    require_kvm!("pause_freezes_vcpu_exit_counts_and_resume_restarts_them");
    let (_guest, socket, vmm) = spawn_spinning_vm(1);

    let vm = get_vm(&socket);
    assert_eq!(api::state(&vm), "Running", "{vm}");
    let before = mmio_writes(&socket);
    sleep(Duration::from_millis(300));
    let running = mmio_writes(&socket);
    assert!(
        running > before,
        "guest not making exits while running: {before} -> {running}"
    );

    put_state(&socket, "Paused");
    let vm = get_vm(&socket);
    assert_eq!(api::state(&vm), "Paused", "{vm}");
    // Pausing is complete when PUT returns; allow a short grace anyway
    // so a counter published a moment late does not decide the test.
    sleep(Duration::from_millis(100));
    let paused_at = mmio_writes(&socket);
    sleep(Duration::from_millis(300));
    let paused_later = mmio_writes(&socket);
    assert_eq!(
        paused_at, paused_later,
        "mmio_write kept increasing while Paused"
    );

    put_state(&socket, "Resumed");
    let vm = get_vm(&socket);
    assert_eq!(api::state(&vm), "Running", "{vm}");
    sleep(Duration::from_millis(300));
    let resumed = mmio_writes(&socket);
    assert!(
        resumed > paused_later,
        "guest made no exits after Resumed: {paused_later} -> {resumed}"
    );

    let reply = request(&socket, "PUT", "/actions", Some(r#"{"action":"Shutdown"}"#));
    assert_eq!(reply.status, 204, "PUT /actions Shutdown: {reply:?}");
    let out = vmm.wait(RUN_TIMEOUT);
    out.assert_code(status::API_SHUTDOWN);
    assert!(
        !socket.exists(),
        "API socket left behind after Shutdown\n{out}"
    );
}

/// Creates a FIFO at `path` and opens its read end without blocking, with
/// the smallest buffer Linux allows (one page), so a guest fills it at once.
fn small_fifo(path: &std::path::Path) -> std::fs::File {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open the FIFO's read end");
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&reader),
            libc::F_SETPIPE_SZ,
            4096,
        )
    };
    assert!(rc >= 0, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    reader
}

/// Polls vCPU 0's `io_out` count until it stops moving (the vCPU is
/// blocked in the host) and returns it.
fn wait_until_io_out_stops(socket: &std::path::Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = vcpu_exits(&get_vm(socket), 0, "io_out");
    loop {
        sleep(Duration::from_millis(300));
        let now = vcpu_exits(&get_vm(socket), 0, "io_out");
        if now == last && now > 0 {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the guest's console writes never blocked ({now} io_out exits)"
        );
        last = now;
    }
}

#[test]
fn a_vcpu_that_cannot_park_fails_the_pause_with_an_error_and_the_vm_keeps_running() {
    require_kvm!("a_vcpu_that_cannot_park_fails_the_pause_with_an_error_and_the_vm_keeps_running");
    let guest = build_guest("serial_flood");
    let fifo = guest.scratch("console.fifo");
    let mut reader = small_fifo(&fifo);
    let socket = guest.scratch("api.sock");
    let args = [
        "--kernel".to_string(),
        guest.elf.display().to_string(),
        "--api-sock".to_string(),
        socket.display().to_string(),
        "--serial-out".to_string(),
        fifo.display().to_string(),
    ];
    let mut vmm = Vmm::spawn(args);
    api::wait_ready(&mut vmm, &socket);
    // Nobody reads the console: the vCPU blocks in the VMM's write to it,
    // where no kick reaches it.
    let blocked_at = wait_until_io_out_stops(&socket);

    let started = Instant::now();
    let reply = request(&socket, "PUT", "/vm/state", Some(r#"{"state":"Paused"}"#));
    assert_eq!(reply.status, 500, "PUT /vm/state Paused: {reply:?}");
    let fault = reply.json();
    assert!(
        fault["fault_message"]
            .as_str()
            .is_some_and(|m| m.contains("vcpu0 did not pause")),
        "{fault}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the pause took {:?} to fail",
        started.elapsed()
    );
    let vm = get_vm(&socket);
    assert_eq!(api::state(&vm), "Running", "{vm}");

    // Read the console again: the vCPU must go on running, not park late
    // on the pause that failed.
    let draining = Arc::new(AtomicBool::new(true));
    let drain = {
        let draining = draining.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while draining.load(Ordering::Relaxed) {
                if !matches!(reader.read(&mut buf), Ok(n) if n > 0) {
                    sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while vcpu_exits(&get_vm(&socket), 0, "io_out") < blocked_at + 1_000 {
        assert!(
            Instant::now() < deadline,
            "the guest did not run on after the failed pause"
        );
        sleep(Duration::from_millis(50));
    }
    // With its console read, the same vCPU parks.
    put_state(&socket, "Paused");
    assert_eq!(api::state(&get_vm(&socket)), "Paused");
    put_state(&socket, "Resumed");

    let reply = request(&socket, "PUT", "/actions", Some(r#"{"action":"Shutdown"}"#));
    assert_eq!(reply.status, 204, "PUT /actions Shutdown: {reply:?}");
    vmm.wait(RUN_TIMEOUT).assert_code(status::API_SHUTDOWN);
    draining.store(false, Ordering::Relaxed);
    drain.join().expect("drain thread");
}

#[test]
fn shutdown_action_while_paused_exits_6() {
    require_kvm!("shutdown_action_while_paused_exits_6");
    let (_guest, socket, vmm) = spawn_spinning_vm(1);
    put_state(&socket, "Paused");
    let reply = request(&socket, "PUT", "/actions", Some(r#"{"action":"Shutdown"}"#));
    assert_eq!(reply.status, 204, "PUT /actions Shutdown: {reply:?}");
    vmm.wait(Duration::from_secs(10))
        .assert_code(status::API_SHUTDOWN);
}

#[test]
fn get_vm_reports_the_config_uptime_and_every_vcpu_of_an_smp_guest() {
    require_kvm!("get_vm_reports_the_config_uptime_and_every_vcpu_of_an_smp_guest");
    let (guest, socket, vmm) = spawn_spinning_vm(2);
    let vm = get_vm(&socket);
    assert_eq!(api::state(&vm), "Running", "{vm}");
    assert_eq!(vm["config"]["vcpus"], 2, "{vm}");
    assert_eq!(vm["config"]["memory_mib"], 128, "{vm}");
    assert_eq!(
        vm["config"]["kernel"].as_str(),
        Some(guest.elf.display().to_string().as_str()),
        "{vm}"
    );
    let mut ids: Vec<u64> = vm["vcpus"]
        .as_array()
        .unwrap_or_else(|| panic!("no vcpus array: {vm}"))
        .iter()
        .map(|v| v["id"].as_u64().unwrap_or(u64::MAX))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1], "{vm}");
    // The BSP runs the guest; the AP waits for a SIPI that never comes.
    assert!(vcpu_exits(&vm, 0, "mmio_write") > 0, "{vm}");
    let first_uptime = vm["uptime_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no uptime_ms: {vm}"));
    sleep(Duration::from_millis(200));
    let later_uptime = get_vm(&socket)["uptime_ms"].as_u64().unwrap_or(0);
    assert!(
        later_uptime >= first_uptime + 150,
        "uptime_ms did not advance: {first_uptime} -> {later_uptime}"
    );

    let reply = request(&socket, "PUT", "/actions", Some(r#"{"action":"Shutdown"}"#));
    assert_eq!(reply.status, 204, "{reply:?}");
    let out = vmm.wait(RUN_TIMEOUT);
    out.assert_code(status::API_SHUTDOWN);
    // One exit summary line per vCPU.
    out.exit_counts(0);
    out.exit_counts(1);
}

#[test]
fn send_ctrl_alt_del_delivers_the_key_sequence_to_the_guest_i8042() {
    require_kvm!("send_ctrl_alt_del_delivers_the_key_sequence_to_the_guest_i8042");
    let guest = build_guest("kbd");
    let (socket, vmm) = api::spawn_with_api(&guest, &[], "waiting for keys\n");
    let reply = request(
        &socket,
        "PUT",
        "/actions",
        Some(r#"{"action":"SendCtrlAltDel"}"#),
    );
    assert_eq!(reply.status, 204, "PUT /actions SendCtrlAltDel: {reply:?}");
    let out = vmm.wait(RUN_TIMEOUT);
    out.assert_code(status::POWEROFF)
        .assert_stdout_contains("key 0x00000000000000e0\n")
        .assert_stdout_contains("ctrl-alt-del received\n");
}

#[test]
fn invalid_api_requests_get_400_with_a_fault_message_and_change_nothing() {
    require_kvm!("invalid_api_requests_get_400_with_a_fault_message_and_change_nothing");
    let (_guest, socket, vmm) = spawn_spinning_vm(1);
    let bad = [
        ("PUT", "/vm/state", r#"{"state":"Sleeping"}"#),
        ("PUT", "/vm/state", r#"{"state":"#),
        ("PUT", "/vm/state", r#"{}"#),
        ("PUT", "/actions", r#"{"action":"SelfDestruct"}"#),
        ("PUT", "/actions", "not json"),
    ];
    for (method, path, body) in bad {
        let reply = request(&socket, method, path, Some(body));
        assert_eq!(reply.status, 400, "{method} {path} {body}: {reply:?}");
        let fault = reply.json();
        assert!(
            fault["fault_message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{method} {path} {body}: no fault_message in {fault}"
        );
    }
    let unknown = request(&socket, "GET", "/no-such-resource", None);
    assert!(
        (400..500).contains(&unknown.status),
        "GET /no-such-resource: {unknown:?}"
    );
    assert_eq!(api::state(&get_vm(&socket)), "Running");
    // None of the rejected requests may have stopped the guest.
    let before = mmio_writes(&socket);
    sleep(Duration::from_millis(200));
    assert!(
        mmio_writes(&socket) > before,
        "guest stopped after bad requests"
    );
    drop(vmm);
}

/// Boots the spinning guest, sends `signal`, and checks the clean stop.
fn assert_signal_stops_cleanly(signal: i32, expected: i32) {
    let (_guest, socket, vmm) = spawn_spinning_vm(1);
    let sent = Instant::now();
    vmm.signal(signal);
    let out = vmm.wait(Duration::from_secs(5));
    out.assert_code(expected);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        sent.elapsed()
    );
    assert!(
        !socket.exists(),
        "API socket left behind after signal {signal}\n{out}"
    );
}

#[test]
fn sigterm_stops_the_vmm_with_143_within_5s_and_removes_the_api_socket() {
    require_kvm!("sigterm_stops_the_vmm_with_143_within_5s_and_removes_the_api_socket");
    assert_signal_stops_cleanly(libc::SIGTERM, status::SIGTERM);
}

#[test]
fn sigint_stops_the_vmm_with_130_within_5s_and_removes_the_api_socket() {
    require_kvm!("sigint_stops_the_vmm_with_130_within_5s_and_removes_the_api_socket");
    assert_signal_stops_cleanly(libc::SIGINT, status::SIGINT);
}
