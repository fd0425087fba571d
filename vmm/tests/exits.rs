//! How guest actions end up as VMM exits: ring-3 MMIO, exceptions routed to
//! the guest's own handlers (including the INT3 the VMM must inject on
//! kernel-emulating hosts), triple faults and guest-requested resets.

mod common;

use common::{boot_args, build_guest, build_guest_with, run_vmm, status};

#[test]
fn ring3_mmio_writes_are_counted_exits_and_ring3_ud2_reaches_the_guest_handler() {
    require_kvm!("ring3_mmio_writes_are_counted_exits_and_ring3_ud2_reaches_the_guest_handler");
    let guest = build_guest("ring3_mmio");
    let out = run_vmm(boot_args(&guest));
    out.assert_code(status::POWEROFF)
        .assert_stdout_contains("entering ring 3\n")
        .assert_stdout_contains("ring3 ok\n")
        .assert_stdout_contains("mmio read returned all-ones\n");
    let counts = out.exit_counts(0);
    let writes = counts.get("mmio_write").copied().unwrap_or(0);
    let reads = counts.get("mmio_read").copied().unwrap_or(0);
    assert!(
        writes >= 1000,
        "mmio_write={writes}, expected >= 1000\n{out}"
    );
    assert!(reads >= 1, "mmio_read={reads}, expected >= 1\n{out}");
}

#[test]
fn int3_in_guest_ring0_reaches_the_guest_bp_handler_and_resumes_after_it() {
    require_kvm!("int3_in_guest_ring0_reaches_the_guest_bp_handler_and_resumes_after_it");
    let guest = build_guest("int3");
    let out = run_vmm(boot_args(&guest));
    out.assert_code(status::POWEROFF)
        .assert_stdout_contains("bp ok\nafter int3\n");
}

#[test]
fn triple_fault_exits_4_and_logs_the_registers() {
    require_kvm!("triple_fault_exits_4_and_logs_the_registers");
    let guest = build_guest("triple_fault");
    let out = run_vmm(boot_args(&guest));
    out.assert_code(status::TRIPLE_FAULT)
        .assert_stdout_contains("about to triple fault\n");
    assert!(
        !out.stdout.contains("survived"),
        "ud2 with an empty IDT did not fault\n{out}"
    );
    let stderr = out.stderr.to_ascii_lowercase();
    assert!(
        stderr.contains("triple fault"),
        "stderr does not name the triple fault\n{out}"
    );
    assert!(stderr.contains("rip"), "stderr has no register dump\n{out}");
}

#[test]
fn i8042_reset_pulse_exits_3() {
    require_kvm!("i8042_reset_pulse_exits_3");
    let guest = build_guest("reset");
    let out = run_vmm(boot_args(&guest));
    out.assert_code(status::RESET)
        .assert_stdout_contains("resetting via i8042\n");
}

#[test]
fn acpi_reset_value_in_sleep_control_register_exits_3() {
    require_kvm!("acpi_reset_value_in_sleep_control_register_exits_3");
    let guest = build_guest_with("reset", &[("VIA_ACPI", 1)]);
    let out = run_vmm(boot_args(&guest));
    out.assert_code(status::RESET)
        .assert_stdout_contains("resetting via ACPI\n");
}

#[test]
fn unemulatable_ring0_mmio_instruction_exits_5_with_registers_and_disassembly() {
    require_kvm!("unemulatable_ring0_mmio_instruction_exits_5_with_registers_and_disassembly");
    let guest = build_guest("emulation_failure");
    let out = run_vmm(boot_args(&guest));
    out.assert_code(status::UNHANDLED_EXIT)
        .assert_stdout_contains("popcnt from mmio\n");
    assert!(!out.stdout.contains("was emulated"), "{out}");
    let stderr = out.stderr.to_ascii_lowercase();
    assert!(
        stderr.contains("emulation failure") || stderr.contains("internal error"),
        "stderr does not give the exit reason\n{out}"
    );
    assert!(stderr.contains("rip"), "stderr has no register dump\n{out}");
    // `popcnt (%rbx), %rax` is f3 48 0f b8 03.
    assert!(
        stderr.contains("f3 48 0f b8 03") || stderr.contains("f3480fb803"),
        "stderr lacks the instruction bytes at RIP\n{out}"
    );
    assert!(
        stderr.contains("popcnt"),
        "stderr lacks the disassembly\n{out}"
    );
}

/// A guest that asked to power off or reset must not run another
/// instruction: the VMM has to stop the vCPU on the exit that carried the
/// request, not when the main thread gets round to it. Each guest prints
/// "... did not stop the VM" right after its request, so any such output
/// means it kept running. The race is timing-dependent, hence the repeats.
#[test]
fn poweroff_and_reset_requests_stop_the_guest_before_its_next_instruction() {
    require_kvm!("poweroff_and_reset_requests_stop_the_guest_before_its_next_instruction");
    let guests = [
        ("ACPI poweroff", build_guest("hello"), status::POWEROFF),
        ("i8042 reset", build_guest("reset"), status::RESET),
        (
            "ACPI reset",
            build_guest_with("reset", &[("VIA_ACPI", 1)]),
            status::RESET,
        ),
    ];
    const RUNS: usize = 10;
    let mut failures = Vec::new();
    for (what, guest, expected) in &guests {
        let mut kept_running = 0;
        for _ in 0..RUNS {
            let out = run_vmm(boot_args(guest));
            out.assert_code(*expected);
            if out.stdout.contains("did not") || !out.stdout.ends_with('\n') {
                kept_running += 1;
            }
        }
        if kept_running > 0 {
            failures.push(format!(
                "{what}: guest ran on in {kept_running}/{RUNS} runs"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
}
