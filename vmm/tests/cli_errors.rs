//! Bad input on the command line or in --config: the VMM must refuse it
//! with exit status 2 and one clear error line on stderr, print nothing on
//! the serial console, and leave nothing behind (no process, no socket).
//!
//! These tests start no guest, but they are gated on /dev/kvm like the
//! others because the VMM may open KVM before it has seen every input.

mod common;

use std::path::Path;

use common::{build_guest, run_vmm, status, Guest, Outcome};

/// Asserts the refusal contract, with the input named in the message.
fn assert_refused(out: &Outcome, what: &str) {
    out.assert_code(status::BAD_INPUT);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one stderr line, got {}\n{out}",
        lines.len()
    );
    assert!(
        lines[0].to_ascii_lowercase().contains("error"),
        "{what}: stderr line does not say error\n{out}"
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: guest output on a refused boot\n{out}"
    );
}

/// Runs the VMM with `args` plus an --api-sock and checks the refusal,
/// and that the socket was not left behind.
fn refuse_with_socket(guest: &Guest, what: &str, args: &[&str]) -> Outcome {
    let socket = guest.scratch("api.sock");
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--api-sock".into(), socket.display().to_string()]);
    let out = run_vmm(all);
    assert_refused(&out, what);
    assert!(!socket.exists(), "{what}: API socket left behind\n{out}");
    out
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn missing_kernel_file_is_refused_naming_the_path() {
    require_kvm!("missing_kernel_file_is_refused_naming_the_path");
    let guest = build_guest("hello");
    let missing = path(&guest.scratch("no-such-vmlinux"));
    let out = refuse_with_socket(&guest, "missing kernel", &["--kernel", &missing]);
    assert!(
        out.stderr.contains("no-such-vmlinux"),
        "path not named\n{out}"
    );
}

#[test]
fn truncated_elf_kernel_is_refused() {
    require_kvm!("truncated_elf_kernel_is_refused");
    let guest = build_guest("hello");
    let full = std::fs::read(&guest.elf).expect("read guest ELF");
    let truncated = guest.scratch("truncated.elf");
    std::fs::write(&truncated, &full[..100]).expect("write truncated ELF");
    refuse_with_socket(&guest, "truncated ELF", &["--kernel", &path(&truncated)]);
}

#[test]
fn text_file_as_kernel_is_refused() {
    require_kvm!("text_file_as_kernel_is_refused");
    let guest = build_guest("hello");
    let text = guest.scratch("notes.txt");
    std::fs::write(&text, "this is not a kernel\n".repeat(200)).expect("write text");
    refuse_with_socket(&guest, "text kernel", &["--kernel", &path(&text)]);
}

#[test]
fn random_bytes_as_kernel_are_refused() {
    require_kvm!("random_bytes_as_kernel_are_refused");
    let guest = build_guest("hello");
    // A fixed xorshift stream: arbitrary bytes, same on every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let junk = guest.scratch("junk.bin");
    std::fs::write(&junk, bytes).expect("write junk");
    refuse_with_socket(&guest, "random kernel", &["--kernel", &path(&junk)]);
}

#[test]
fn empty_kernel_file_is_refused() {
    require_kvm!("empty_kernel_file_is_refused");
    let guest = build_guest("hello");
    let empty = guest.scratch("empty");
    std::fs::write(&empty, b"").expect("write empty file");
    refuse_with_socket(&guest, "empty kernel", &["--kernel", &path(&empty)]);
}

/// A bzImage whose compressed kernel is damaged: when the VMM decompresses
/// it, the boot is refused with what is wrong, before any guest code runs
/// (the kernel's own decompressor would halt the guest with "System
/// halted" on the console, or not notice). A kernel that would not fit in
/// guest memory is refused before its payload is decompressed.
#[test]
fn damaged_or_oversized_bzimage_payloads_are_refused_when_the_vmm_decompresses() {
    require_kvm!("damaged_or_oversized_bzimage_payloads_are_refused_when_the_vmm_decompresses");
    let Some(bz) = common::cached_kernel(
        "damaged_or_oversized_bzimage_payloads_are_refused_when_the_vmm_decompresses",
        "kernels/plain/bzImage",
    ) else {
        return;
    };
    let guest = build_guest("hello");
    let image = std::fs::read(&bz).expect("read bzImage");
    // Zeroes in the middle of the LZ4 stream: a match offset of 0 is invalid.
    let mut damaged = image.clone();
    let middle = damaged.len() / 2;
    damaged[middle..middle + 65536].fill(0);
    let file = guest.scratch("damaged-bzImage");
    std::fs::write(&file, &damaged).expect("write");
    let out = refuse_with_socket(
        &guest,
        "damaged payload",
        &["--kernel", &path(&file), "--bzimage-decompression", "vmm"],
    );
    assert!(
        out.stderr.contains("lz4 payload is corrupt"),
        "damage not named\n{out}"
    );
    // The same image in a guest of 16 MiB: the kernel needs more than that.
    let out = refuse_with_socket(
        &guest,
        "oversized payload",
        &[
            "--kernel",
            &path(&bz),
            "--bzimage-decompression",
            "vmm",
            "--memory-mib",
            "16",
        ],
    );
    assert!(
        out.stderr.contains("beyond guest memory"),
        "size not named\n{out}"
    );
}

#[test]
fn initrd_larger_than_guest_memory_is_refused() {
    require_kvm!("initrd_larger_than_guest_memory_is_refused");
    let guest = build_guest("hello");
    let initrd = guest.scratch("huge.initrd");
    let file = std::fs::File::create(&initrd).expect("create initrd");
    file.set_len(64 << 20).expect("size sparse initrd"); // sparse: no disk used
    refuse_with_socket(
        &guest,
        "initrd > memory",
        &[
            "--kernel",
            &path(&guest.elf),
            "--memory-mib",
            "32",
            "--initrd",
            &path(&initrd),
        ],
    );
}

#[test]
fn missing_initrd_file_is_refused() {
    require_kvm!("missing_initrd_file_is_refused");
    let guest = build_guest("hello");
    let missing = path(&guest.scratch("no-such-initrd"));
    refuse_with_socket(
        &guest,
        "missing initrd",
        &["--kernel", &path(&guest.elf), "--initrd", &missing],
    );
}

#[test]
fn zero_vcpus_is_refused() {
    require_kvm!("zero_vcpus_is_refused");
    let guest = build_guest("hello");
    refuse_with_socket(
        &guest,
        "--vcpus 0",
        &["--kernel", &path(&guest.elf), "--vcpus", "0"],
    );
}

#[test]
fn zero_memory_is_refused() {
    require_kvm!("zero_memory_is_refused");
    let guest = build_guest("hello");
    refuse_with_socket(
        &guest,
        "--memory-mib 0",
        &["--kernel", &path(&guest.elf), "--memory-mib", "0"],
    );
}

#[test]
fn absurdly_large_memory_is_refused() {
    require_kvm!("absurdly_large_memory_is_refused");
    let guest = build_guest("hello");
    refuse_with_socket(
        &guest,
        "--memory-mib 100000000",
        &["--kernel", &path(&guest.elf), "--memory-mib", "100000000"],
    );
}

#[test]
fn unknown_cpu_template_is_refused() {
    require_kvm!("unknown_cpu_template_is_refused");
    let guest = build_guest("hello");
    let out = run_vmm(["--kernel", &path(&guest.elf), "--cpu-template", "turbo"]);
    // clap-style usage errors may add usage lines; only the status and the
    // word "error" are part of the contract here.
    out.assert_code(status::BAD_INPUT);
    assert!(out.stderr.to_ascii_lowercase().contains("error"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
}

#[test]
fn malformed_config_json_is_refused() {
    require_kvm!("malformed_config_json_is_refused");
    let guest = build_guest("hello");
    let config = guest.scratch("vm.json");
    std::fs::write(
        &config,
        format!(r#"{{"kernel": "{}", "vcpus": 1,"#, path(&guest.elf)),
    )
    .expect("write config");
    assert_refused(&run_vmm(["--config", &path(&config)]), "malformed JSON");
}

#[test]
fn unknown_config_field_is_refused_naming_the_field() {
    require_kvm!("unknown_config_field_is_refused_naming_the_field");
    let guest = build_guest("hello");
    let config = guest.scratch("vm.json");
    let json = serde_json::json!({
        "kernel": guest.elf,
        "vcpus": 1,
        "memory_mib": 128,
        "turbo_boost": true,
    });
    std::fs::write(&config, json.to_string()).expect("write config");
    let out = run_vmm(["--config", &path(&config)]);
    assert_refused(&out, "unknown field");
    assert!(out.stderr.contains("turbo_boost"), "field not named\n{out}");
}

#[test]
fn config_with_zero_vcpus_is_refused() {
    require_kvm!("config_with_zero_vcpus_is_refused");
    let guest = build_guest("hello");
    let config = guest.scratch("vm.json");
    let json = serde_json::json!({ "kernel": guest.elf, "vcpus": 0, "memory_mib": 128 });
    std::fs::write(&config, json.to_string()).expect("write config");
    assert_refused(&run_vmm(["--config", &path(&config)]), "config vcpus 0");
}

#[test]
fn missing_config_file_is_refused() {
    require_kvm!("missing_config_file_is_refused");
    let guest = build_guest("hello");
    let missing = path(&guest.scratch("no-such-vm.json"));
    assert_refused(&run_vmm(["--config", &missing]), "missing config");
}

#[test]
fn a_jail_that_leaves_a_socket_outside_or_is_not_a_directory_is_refused() {
    require_kvm!("a_jail_that_leaves_a_socket_outside_or_is_not_a_directory_is_refused");
    let guest = build_guest("hello");
    let jail = guest.scratch("jail");
    std::fs::create_dir_all(&jail).expect("jail dir");
    // The API socket (refuse_with_socket's, beside the jail) is outside it.
    let out = refuse_with_socket(
        &guest,
        "API socket outside the jail",
        &["--kernel", &path(&guest.elf), "--jail", &path(&jail)],
    );
    assert!(
        out.stderr.contains("API socket") && out.stderr.contains("is not inside the jail"),
        "{out}"
    );
    let vsock = format!("cid=3,uds={}", path(&guest.scratch("v.sock")));
    let out = run_vmm([
        "--kernel",
        &path(&guest.elf),
        "--jail",
        &path(&jail),
        "--vsock",
        &vsock,
    ]);
    assert_refused(&out, "vsock socket outside the jail");
    assert!(out.stderr.contains("vsock socket"), "{out}");
    assert!(
        !guest.scratch("v.sock").exists(),
        "vsock socket left behind\n{out}"
    );
    let out = run_vmm(["--kernel", &path(&guest.elf), "--jail", &path(&guest.elf)]);
    assert_refused(&out, "a file as the jail");
    assert!(out.stderr.contains("not a directory"), "{out}");
}
