//! Booting tiny guests through the VMM's two ELF entry paths and the boot
//! information it hands them (entry registers, zero page, PVH start_info),
//! plus the CLI/config options that shape that boot.

mod common;

use common::{boot_args, build_guest, run_vmm, status};

#[test]
fn serial_port_writes_reach_stdout_and_acpi_poweroff_exits_0() {
    require_kvm!("serial_port_writes_reach_stdout_and_acpi_poweroff_exits_0");
    let guest = build_guest("hello");
    let out = run_vmm(boot_args(&guest));
    out.assert_code(status::POWEROFF)
        .assert_stdout_contains("hello from ring 0\n");
    // 18 bytes of text plus the poweroff write, each one port-I/O exit.
    let counts = out.exit_counts(0);
    let io_out = counts.get("io_out").copied().unwrap_or(0);
    assert!(io_out >= 19, "io_out={io_out}, expected >= 19\n{out}");
}

#[test]
fn pvh_note_enters_32bit_protected_mode_with_start_info_in_ebx() {
    require_kvm!("pvh_note_enters_32bit_protected_mode_with_start_info_in_ebx");
    let guest = build_guest("pvh");
    let mut args = boot_args(&guest);
    args.extend(["--cmdline".into(), "pvh-cmdline-check".into()]);
    let out = run_vmm(args);
    out.assert_code(status::POWEROFF)
        .assert_stdout_contains("pvh: start_info magic ok\n")
        .assert_stdout_contains("pvh: protected mode, paging off\n")
        .assert_stdout_contains("pvh: cmdline [pvh-cmdline-check");
}

#[test]
fn elf64_entry_state_matches_the_boot_contract() {
    require_kvm!("elf64_entry_state_matches_the_boot_contract");
    let guest = build_guest("bootinfo");
    let out = run_vmm(boot_args(&guest));
    out.assert_code(status::POWEROFF)
        .assert_stdout_contains("entry state ok\n");
}

#[test]
fn cmdline_reaches_the_guest_through_the_zero_page() {
    require_kvm!("cmdline_reaches_the_guest_through_the_zero_page");
    let guest = build_guest("bootinfo");
    let mut args = boot_args(&guest);
    args.extend([
        "--cmdline".into(),
        "console=ttyS0 ec2lab.test=cmdline-42".into(),
    ]);
    let out = run_vmm(args);
    // On kernel-emulating hosts the VMM may append its workarounds, so the
    // given command line must come first, not necessarily alone.
    out.assert_code(status::POWEROFF)
        .assert_stdout_contains("cmdline: [console=ttyS0 ec2lab.test=cmdline-42");
}

#[test]
fn cpu_template_none_passes_the_cmdline_unchanged() {
    require_kvm!("cpu_template_none_passes_the_cmdline_unchanged");
    let guest = build_guest("bootinfo");
    let mut args = boot_args(&guest);
    args.extend([
        "--cpu-template".into(),
        "none".into(),
        "--cmdline".into(),
        "exactly-this".into(),
    ]);
    run_vmm(args)
        .assert_code(status::POWEROFF)
        .assert_stdout_contains("cmdline: [exactly-this]\n");
}

#[test]
fn cpu_template_emulated_kernel_appends_the_host_workarounds_to_the_cmdline() {
    require_kvm!("cpu_template_emulated_kernel_appends_the_host_workarounds_to_the_cmdline");
    let guest = build_guest("bootinfo");
    let mut args = boot_args(&guest);
    args.extend([
        "--cpu-template".into(),
        "emulated-kernel".into(),
        "--cmdline".into(),
        "user-part".into(),
    ]);
    let out = run_vmm(args);
    out.assert_code(status::POWEROFF)
        .assert_stdout_contains("cmdline: [user-part");
    // DESIGN.md "KVM hosts that emulate the guest kernel", items 2 and 4.
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("cmdline: ["))
        .expect("cmdline line");
    for param in ["noxsave", "clearcpuid=", "nopv"] {
        assert!(
            line.contains(param),
            "{param} not appended: {line:?}\n{out}"
        );
    }
}

#[test]
fn memory_mib_sets_the_top_of_ram_in_the_e820_map() {
    require_kvm!("memory_mib_sets_the_top_of_ram_in_the_e820_map");
    let guest = build_guest("bootinfo");
    for (mib, top) in [(64, "0x0000000004000000"), (200, "0x000000000c800000")] {
        let args = vec![
            "--kernel".to_string(),
            guest.elf.display().to_string(),
            "--memory-mib".into(),
            mib.to_string(),
        ];
        run_vmm(args)
            .assert_code(status::POWEROFF)
            .assert_stdout_contains(&format!("ram top={top}\n"));
    }
}

#[test]
fn initrd_is_loaded_into_guest_memory_and_described_in_the_zero_page() {
    require_kvm!("initrd_is_loaded_into_guest_memory_and_described_in_the_zero_page");
    let guest = build_guest("bootinfo");
    let initrd = guest.scratch("initrd.img");
    let mut contents = b"INITRD-HEAD-0123".to_vec();
    contents.resize(5000, b'x');
    std::fs::write(&initrd, &contents).expect("write initrd");
    let mut args = boot_args(&guest);
    args.extend(["--initrd".into(), initrd.display().to_string()]);
    run_vmm(args)
        .assert_code(status::POWEROFF)
        .assert_stdout_contains("initrd: size=0x0000000000001388 head=[INITRD-HEAD-0123]\n");
}

#[test]
fn without_initrd_the_zero_page_reports_none() {
    require_kvm!("without_initrd_the_zero_page_reports_none");
    let guest = build_guest("bootinfo");
    run_vmm(boot_args(&guest))
        .assert_code(status::POWEROFF)
        .assert_stdout_contains("initrd: none\n");
}

#[test]
fn serial_out_writes_guest_output_to_the_file_instead_of_stdout() {
    require_kvm!("serial_out_writes_guest_output_to_the_file_instead_of_stdout");
    let guest = build_guest("hello");
    let serial = guest.scratch("serial.log");
    let mut args = boot_args(&guest);
    args.extend(["--serial-out".into(), serial.display().to_string()]);
    let out = run_vmm(args);
    out.assert_code(status::POWEROFF);
    let logged = std::fs::read_to_string(&serial)
        .unwrap_or_else(|e| panic!("read {}: {e}\n{out}", serial.display()));
    assert!(
        logged.contains("hello from ring 0\n"),
        "serial file: {logged:?}\n{out}"
    );
    assert!(
        !out.stdout.contains("hello from ring 0"),
        "serial output also went to stdout\n{out}"
    );
}

#[test]
fn exit_file_records_the_status_and_reason_for_a_supervisor() {
    require_kvm!("exit_file_records_the_status_and_reason_for_a_supervisor");
    let guest = build_guest("hello");
    let exit_file = guest.scratch("exit.json");
    let mut args = boot_args(&guest);
    args.extend(["--exit-file".into(), exit_file.display().to_string()]);
    run_vmm(args).assert_code(status::POWEROFF);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exit_file).expect("exit file"))
            .expect("exit file is JSON");
    assert_eq!(record["code"], 0, "{record}");
    assert_eq!(record["reason"], "guest powered off", "{record}");

    // Bad input is recorded too, with the error.
    let missing = guest.scratch("no-such-kernel");
    let out = run_vmm([
        "--kernel".to_string(),
        missing.display().to_string(),
        "--exit-file".to_string(),
        exit_file.display().to_string(),
    ]);
    out.assert_code(status::BAD_INPUT);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exit_file).expect("exit file"))
            .expect("exit file is JSON");
    assert_eq!(record["code"], 2, "{record}");
    assert!(
        record["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no-such-kernel"),
        "{record}"
    );
}

#[test]
fn config_file_boots_the_same_as_the_equivalent_flags() {
    require_kvm!("config_file_boots_the_same_as_the_equivalent_flags");
    let guest = build_guest("bootinfo");
    let initrd = guest.scratch("initrd.img");
    std::fs::write(&initrd, b"CONFIG-INITRD-16-and-more").expect("write initrd");
    let cmdline = "console=ttyS0 from=config-or-flags";

    let by_flags = run_vmm([
        "--kernel",
        &guest.elf.display().to_string(),
        "--initrd",
        &initrd.display().to_string(),
        "--cmdline",
        cmdline,
        "--vcpus",
        "1",
        "--memory-mib",
        "96",
        "--cpu-template",
        "none",
    ]);
    let config = serde_json::json!({
        "kernel": guest.elf,
        "initrd": initrd,
        "cmdline": cmdline,
        "vcpus": 1,
        "memory_mib": 96,
        "api_sock": null,
        "serial_out": null,
        "cpu_template": "none",
    });
    let config_path = guest.scratch("vm.json");
    std::fs::write(&config_path, config.to_string()).expect("write config");
    let by_config = run_vmm(["--config", &config_path.display().to_string()]);

    by_flags
        .assert_code(status::POWEROFF)
        .assert_stdout_contains(&format!("cmdline: [{cmdline}]\n"))
        .assert_stdout_contains("ram top=0x0000000006000000\n")
        .assert_stdout_contains("head=[CONFIG-INITRD-16]\n");
    by_config.assert_code(status::POWEROFF);
    assert_eq!(
        boot_report(&by_flags.stdout),
        boot_report(&by_config.stdout),
        "guest saw a different boot\nflags:\n{by_flags}\nconfig:\n{by_config}"
    );
}

/// bootinfo.S's report: everything up to the end of its last line
/// ("initrd: …"), without whatever the guest may print after powering off.
fn boot_report(stdout: &str) -> &str {
    let last = stdout
        .find("initrd: ")
        .unwrap_or_else(|| panic!("no initrd line in {stdout:?}"));
    let end = stdout[last..]
        .find('\n')
        .map_or(stdout.len(), |i| last + i + 1);
    &stdout[..end]
}
