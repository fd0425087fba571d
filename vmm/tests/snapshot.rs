//! Snapshot and restore (`PUT /snapshot/create`, `--restore-from`): a
//! guest paused in one VMM process goes on in a new one exactly where it
//! was, generation after generation, and snapshots that are corrupt, of
//! another machine or of another memory file are refused with one clear
//! error.
//!
//! The guest (`guests/snapshot_counter.S`) counts in ring 3 and prints
//! every count; the consoles of all generations, put end to end, must read
//! 1, 2, 3, ... with nothing missing and nothing repeated.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api::{self, request};
use common::{build_guest, status, Guest, Vmm, RUN_TIMEOUT};

/// The counts a console printed, in order; fails on a MISMATCH line (the
/// register and memory copies of the count disagreed).
fn counts(console: &str) -> Vec<u64> {
    assert!(
        !console.contains("MISMATCH"),
        "register and memory disagree:\n{console}"
    );
    console
        .lines()
        .filter_map(|l| l.strip_prefix("count 0x"))
        .filter(|hex| hex.len() == 16)
        .map(|hex| u64::from_str_radix(hex, 16).expect("hex count"))
        .collect()
}

/// Hotplug memory for the two-vCPU runs: 256 MiB, 64 of them requested
/// (the test guest has no driver to plug them; what it was asked for must
/// survive, and the region must be in the memory file).
const HOTPLUG: &str = "total=256,requested=64";

/// Starts a VMM on `guest` with an API socket and `dir` as its snapshot
/// directory, restoring from `restore` if given.
fn start(
    guest: &Guest,
    dir: &Path,
    generation: u32,
    vcpus: u32,
    hotplug: bool,
    restore: Option<&Path>,
) -> (PathBuf, Vmm) {
    let socket = guest.scratch(&format!("api{generation}.sock"));
    let mut args: Vec<String> = vec![
        "--kernel".into(),
        guest.elf.display().to_string(),
        "--vcpus".into(),
        vcpus.to_string(),
        "--memory-mib".into(),
        "128".into(),
        "--api-sock".into(),
        socket.display().to_string(),
        "--snapshot-dir".into(),
        dir.display().to_string(),
    ];
    if hotplug {
        args.push("--hotplug-memory".into());
        args.push(HOTPLUG.into());
    }
    if let Some(from) = restore {
        args.push("--restore-from".into());
        args.push(from.display().to_string());
    }
    let mut vmm = Vmm::spawn(args);
    api::wait_ready(&mut vmm, &socket);
    (socket, vmm)
}

/// Waits until the VMM's console shows at least `n` counts.
fn wait_for_counts(vmm: &mut Vmm, n: usize) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while counts(&vmm.stdout_so_far()).len() < n {
        if let Some(status) = vmm.try_status() {
            panic!(
                "VMM exited ({status}) after {} counts\nstdout:\n{}\nstderr:\n{}",
                counts(&vmm.stdout_so_far()).len(),
                vmm.stdout_so_far(),
                vmm.stderr_so_far()
            );
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} counts after {RUN_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
            vmm.stdout_so_far(),
            vmm.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn put(socket: &Path, path: &str, body: Option<&str>) -> api::Response {
    request(socket, "PUT", path, body)
}

/// Pauses, snapshots and shuts down the VMM on `socket`; returns its
/// console and the snapshot report.
fn snapshot_and_stop(socket: &Path, vmm: Vmm) -> (String, serde_json::Value) {
    let paused = put(socket, "/vm/state", Some(r#"{"state":"Paused"}"#));
    assert_eq!(paused.status, 204, "{paused:?}");
    let created = put(socket, "/snapshot/create", None);
    assert_eq!(created.status, 200, "{created:?}");
    let stop = put(socket, "/actions", Some(r#"{"action":"Shutdown"}"#));
    assert_eq!(stop.status, 204, "{stop:?}");
    let out = vmm.wait(RUN_TIMEOUT);
    out.assert_code(status::API_SHUTDOWN);
    (out.stdout, created.json())
}

/// Three generations of one guest: boot, then restore twice, each time
/// from the snapshot the previous process wrote into the same directory
/// (the new snapshot replaces the files the running VM's memory is mapped
/// from).
fn counter_survives_three_generations(vcpus: u32, hotplug: bool) {
    let guest = build_guest("snapshot_counter");
    let dir = guest.scratch("snapshot");
    std::fs::create_dir(&dir).expect("snapshot dir");

    let mut consoles = Vec::new();
    let (socket, mut vmm) = start(&guest, &dir, 1, vcpus, hotplug, None);
    wait_for_counts(&mut vmm, 3);
    let (console, report) = snapshot_and_stop(&socket, vmm);
    assert!(console.starts_with("counting in ring 3\n"), "{console}");
    let hotplug_bytes: u64 = if hotplug { 256 << 20 } else { 0 };
    assert_eq!(
        report["memory_bytes"],
        (128u64 << 20) + hotplug_bytes,
        "{report}"
    );
    let written = report["written_bytes"].as_u64().expect("written_bytes");
    assert!(
        written > 0 && written < 8 << 20,
        "a guest that touched a few pages wrote {written} bytes of memory"
    );
    let on_disk = std::fs::metadata(dir.join("memory")).expect("memory file");
    {
        use std::os::unix::fs::MetadataExt;
        assert!(
            on_disk.blocks() * 512 < 16 << 20,
            "the memory file is not sparse: {} bytes allocated",
            on_disk.blocks() * 512
        );
    }
    consoles.push(console);

    for generation in 2..=3 {
        let (socket, mut vmm) = start(&guest, &dir, generation, vcpus, hotplug, Some(&dir));
        let before = counts(&consoles.concat()).len();
        wait_for_counts(&mut vmm, 3);
        let vm = api::get_vm(&socket);
        assert_eq!(api::state(&vm), "Running", "{vm}");
        if hotplug {
            let memory = request(&socket, "GET", "/hotplug/memory", None).json();
            assert_eq!(
                (
                    &memory["total_size_mib"],
                    &memory["requested_size_mib"],
                    &memory["plugged_size_mib"]
                ),
                (&256.into(), &64.into(), &0.into()),
                "generation {generation}: {memory}"
            );
        }
        assert!(
            vmm.stderr_so_far().contains("restored from"),
            "{}",
            vmm.stderr_so_far()
        );
        let (console, _) = snapshot_and_stop(&socket, vmm);
        assert!(
            !console.contains("counting in ring 3"),
            "generation {generation} booted again instead of resuming:\n{console}"
        );
        consoles.push(console);
        assert!(counts(&consoles.concat()).len() > before);
    }

    let all = counts(&consoles.concat());
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(
        all,
        expected,
        "the counts of three generations are not one unbroken run:\n{}",
        consoles.join("---- next generation ----\n")
    );
}

#[test]
fn a_ring3_counter_survives_snapshot_and_restore_across_three_vmm_processes() {
    require_kvm!("a_ring3_counter_survives_snapshot_and_restore_across_three_vmm_processes");
    counter_survives_three_generations(1, false);
}

#[test]
fn a_two_vcpu_guest_with_hotplug_memory_survives_snapshot_and_restore() {
    require_kvm!("a_two_vcpu_guest_with_hotplug_memory_survives_snapshot_and_restore");
    counter_survives_three_generations(2, true);
}

/// Runs a restore that must fail; returns its stderr.
fn refused_restore(guest: &Guest, dir: &Path, extra: &[&str]) -> String {
    let mut args: Vec<String> = vec![
        "--kernel".into(),
        guest.elf.display().to_string(),
        "--restore-from".into(),
        dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = common::run_vmm(args);
    out.assert_code(status::BAD_INPUT);
    assert_eq!(
        out.stderr.matches("error:").count(),
        1,
        "one error line:\n{}",
        out.stderr
    );
    out.stderr
}

#[test]
fn snapshots_that_are_corrupt_truncated_mismatched_or_of_another_machine_are_refused() {
    require_kvm!(
        "snapshots_that_are_corrupt_truncated_mismatched_or_of_another_machine_are_refused"
    );
    let guest = build_guest("snapshot_counter");
    let dir = guest.scratch("snapshot");
    std::fs::create_dir(&dir).expect("snapshot dir");

    // Snapshots are of paused VMs, and only into the configured directory.
    let (socket, mut vmm) = start(&guest, &dir, 1, 1, false, None);
    wait_for_counts(&mut vmm, 1);
    let running = put(&socket, "/snapshot/create", None);
    assert_eq!(running.status, 409, "{running:?}");
    assert!(running.body.contains("pause it first"), "{running:?}");
    let named = put(
        &socket,
        "/snapshot/create",
        Some(r#"{"snapshot_path":"/etc/x"}"#),
    );
    assert_eq!(named.status, 400, "{named:?}");
    let (_, _) = snapshot_and_stop(&socket, vmm);

    let (socket, vmm) = api::spawn_with_api(&guest, &[], "counting in ring 3\n");
    assert_eq!(
        put(&socket, "/vm/state", Some(r#"{"state":"Paused"}"#)).status,
        204
    );
    let nowhere = put(&socket, "/snapshot/create", None);
    assert_eq!(nowhere.status, 409, "{nowhere:?}");
    assert!(
        nowhere.body.contains("no snapshot directory"),
        "{nowhere:?}"
    );
    drop(vmm);

    let state = std::fs::read(dir.join("state")).expect("state");
    let memory = std::fs::read(dir.join("memory")).expect("memory");
    let restore = |state: &[u8], memory: &[u8], extra: &[&str]| {
        let bad = tempfile::tempdir().expect("tempdir");
        std::fs::write(bad.path().join("state"), state).expect("write state");
        std::fs::write(bad.path().join("memory"), memory).expect("write memory");
        refused_restore(&guest, bad.path(), extra)
    };

    let mut flipped = state.clone();
    let last = flipped.len() - 10;
    flipped[last] ^= 0x20;
    let err = restore(&flipped, &memory, &[]);
    assert!(err.contains("corrupt (checksum mismatch)"), "{err}");

    let err = restore(&state[..state.len() / 2], &memory, &[]);
    assert!(err.contains("truncated"), "{err}");

    let mut future = state.clone();
    future[8..12].copy_from_slice(&99u32.to_le_bytes());
    let err = restore(&future, &memory, &[]);
    assert!(err.contains("version 99 snapshot"), "{err}");

    let err = restore(b"not a snapshot at all, just text", &memory, &[]);
    assert!(err.contains("bad magic"), "{err}");

    let err = restore(&state, &memory, &["--memory-mib", "256"]);
    assert!(
        err.contains("does not fit this VM: it has 128 MiB of memory, the config 256"),
        "{err}"
    );
    let err = restore(
        &state,
        &memory,
        &["--memory-mib", "128", "--hotplug-memory", "total=256"],
    );
    assert!(
        err.contains("it has 0 MiB of hotplug memory, the config 256"),
        "{err}"
    );
    let err = restore(&state, &memory, &["--memory-mib", "128", "--vcpus", "2"]);
    assert!(err.contains("it has 1 vCPU(s), the config 2"), "{err}");
    let err = restore(&state, &memory, &["--memory-mib", "128", "--rng"]);
    assert!(
        err.contains("it has the devices [], the config [rng]"),
        "{err}"
    );

    let mut other_memory = memory.clone();
    other_memory[8] ^= 1; // the memory id
    let err = restore(&state, &other_memory, &["--memory-mib", "128"]);
    assert!(
        err.contains("is not the memory file of this snapshot's state"),
        "{err}"
    );

    let err = restore(
        &state,
        &memory[..memory.len() - 4096],
        &["--memory-mib", "128"],
    );
    assert!(err.contains("the snapshot needs 134217728"), "{err}");
}
