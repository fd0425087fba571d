//! Unmodified Linux kernels boot to their `Run /init` line through ec2lab-vmm
//! alone: a kernel built from Debian's linux-source with a small config and
//! no ACPI, as a vmlinux (ELF with a PVH note, like Firecracker's older
//! guest kernels) and as an LZ4 bzImage (Linux 64-bit boot protocol,
//! decompressed by the guest), and Debian's own cloud kernel (a bzImage
//! with ACPI). Nothing in either kernel is patched, so on hosts that
//! emulate guest kernel mode this proves the VMM's INT3/FWAIT emulation,
//! CPUID and command-line workarounds, both boot protocols, and both ways of
//! finding devices: the DSDT, or `virtio_mmio.device=` and the MP table.
//!
//! The kernels are fetched/built once by `scripts/fetch-debian-kernel` and
//! `scripts/build-kernel --variant plain` (cached outside the repo, see
//! `.ci/run`). Without them these tests skip, unless
//! `EC2LAB_REQUIRE_KERNELS=1`, where they fail.
//!
//! User space is not the point here: on a kernel-emulating host an
//! unmodified kernel cannot run it (SYSCALL never reaches ring 0, see
//! DESIGN.md), so each test stops the VM once init has been started.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{cached_kernel, status, Vmm};

/// Boots here take minutes: guest kernel code is emulated, and the
/// compressed bzImage is decompressed by emulated code too.
const BOOT_TIMEOUT: Duration = Duration::from_secs(1500);

/// Writes a newc cpio archive holding `/init` (a shell script: whether it can
/// run is not what these tests check) and `/dev/console`-less minimal tree.
fn write_initramfs(path: &Path) {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut cpio = Vec::new();
    entry(&mut cpio, 1, "dev", 0o040755, b"");
    entry(
        &mut cpio,
        2,
        "init",
        0o100755,
        b"#!/bin/sh\necho never reached without a shell\n",
    );
    entry(&mut cpio, 3, "TRAILER!!!", 0, b"");
    let mut f = std::fs::File::create(path).expect("create initramfs");
    f.write_all(&cpio).expect("write initramfs");
}

/// Boots `kernel` with `vcpus` and `extra` flags, waits for `Run /init`,
/// stops the VM with SIGTERM, and returns what it printed.
fn boot_to_init(kernel: &Path, vcpus: u32, extra: &[&str]) -> common::Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = dir.path().join("initramfs.cpio");
    write_initramfs(&initrd);
    let mut args: Vec<std::ffi::OsString> = vec![
        "--kernel".as_ref(),
        kernel.as_os_str(),
        "--initrd".as_ref(),
        initrd.as_os_str(),
        "--cmdline".as_ref(),
        "console=ttyS0 panic=-1".as_ref(),
        "--vcpus".as_ref(),
        vcpus.to_string().as_ref(),
        "--memory-mib".as_ref(),
        "256".as_ref(),
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    args.extend(extra.iter().map(Into::into));
    let mut vmm = Vmm::spawn(args);
    vmm.wait_for_stdout("Run /init as init process", BOOT_TIMEOUT);
    vmm.signal(libc::SIGTERM);
    vmm.wait(Duration::from_secs(30))
}

/// A zeroed disk of `bytes` in `dir`, as the `--disk PATH,ro` value.
fn read_only_disk(dir: &Path, bytes: usize) -> String {
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; bytes]).expect("write disk");
    format!("{},ro", disk.display())
}

/// What every boot must show, whichever kernel.
fn check_common(out: &common::Outcome) {
    out.assert_code(status::SIGTERM);
    out.assert_stdout_contains("Linux version");
    out.assert_stdout_contains("Run /init as init process");
    assert!(
        !out.stdout.contains("could not calculate TSC khz"),
        "the guest had no usable TSC\n{out}"
    );
    if common::on_emulating_host() {
        // The VMM's workarounds reached the kernel and its INT3s were emulated.
        out.assert_stdout_contains("nopv");
        out.assert_stdout_contains("Clearing CPUID bits:");
        let exits = out.exit_counts(0);
        assert!(
            exits["emulated_int3"] >= 1,
            "no INT3 emulated on vcpu0\n{out}"
        );
    }
}

/// Debian's distribution kernel runs hundreds of initcalls. Where the guest
/// kernel is emulated the VMM decompresses its payload, skips its tracing
/// set-up, crypto self-tests and (it carries BTF) its BPF kfunc
/// registrations, and it reaches `Run /init` in about 200 s on an AMD EPYC
/// host; more than 25 minutes without. One core for those minutes, once per
/// CI run: the only boot of an unmodified distribution kernel.
#[test]
fn debian_cloud_bzimage_boots_unmodified_to_run_init() {
    require_kvm!("debian_cloud_bzimage_boots_unmodified_to_run_init");
    let Some(bz) = cached_kernel("debian_cloud_bzimage", "kernels/debian-cloud/vmlinuz") else {
        return;
    };
    let out = boot_to_init(&bz, 1, &[]);
    check_common(&out);
    out.assert_stdout_contains("ACPI: RSDP");
    out.assert_stdout_contains("cloud-amd64");
    if common::on_emulating_host() {
        // The VMM decompresses the payload (minutes saved), boots the ELF
        // inside through PVH, finds its BTF there and skips the initcalls
        // that would parse it (the kernel echoes its command line).
        let how = "BzImage, lz4 payload decompressed by the VMM, PVH entry, ACPI present, BTF \
                   present";
        assert!(out.stderr.contains(how), "not booted as {how:?}\n{out}");
        out.assert_stdout_contains(",cubictcp_register,");
    } else {
        // Elsewhere the kernel's own decompressor runs.
        let how = "BzImage, 64-bit entry, ACPI assumed";
        assert!(out.stderr.contains(how), "not booted as {how:?}\n{out}");
    }
}

/// The bzImage of the plain kernel, through the Linux 64-bit boot protocol:
/// the guest decompresses its own LZ4 payload before `Linux version`.
#[test]
fn plain_bzimage_boots_unmodified_through_the_linux_boot_protocol() {
    require_kvm!("plain_bzimage_boots_unmodified_through_the_linux_boot_protocol");
    let Some(bz) = cached_kernel("plain_bzimage", "kernels/plain/bzImage") else {
        return;
    };
    let out = boot_to_init(&bz, 1, &["--bzimage-decompression", "guest"]);
    check_common(&out);
    out.assert_stdout_contains("-plain");
    assert!(
        out.stderr.contains("BzImage, 64-bit entry"),
        "not booted as a bzImage\n{out}"
    );
}

/// The same bzImage with its LZ4 payload decompressed by the VMM (the
/// default where guest kernel code is emulated): the ELF inside boots
/// through PVH, and since the VMM can now read the kernel, it sees that
/// this one has no ACPI and declares the devices on the command line.
#[test]
fn plain_bzimage_decompressed_by_the_vmm_boots_through_pvh_with_its_disk() {
    require_kvm!("plain_bzimage_decompressed_by_the_vmm_boots_through_pvh_with_its_disk");
    let Some(bz) = cached_kernel("plain_bzimage", "kernels/plain/bzImage") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = read_only_disk(dir.path(), 2 << 20);
    let out = boot_to_init(&bz, 1, &["--bzimage-decompression", "vmm", "--disk", &disk]);
    check_common(&out);
    out.assert_stdout_contains("-plain");
    assert!(
        out.stderr
            .contains("BzImage, lz4 payload decompressed by the VMM, PVH entry, ACPI absent"),
        "not booted from the decompressed ELF\n{out}"
    );
    out.assert_stdout_contains("virtio_mmio.device=4K@0xc0000000:5");
    out.assert_stdout_contains("[vda] 4096 512-byte logical blocks");
}

/// The plain kernel has no ACPI: the VMM sees that in the image and
/// declares its devices on the command line, the MP table brings up the
/// second CPU and routes the disk's interrupt. The TSC frequency leaves are
/// withheld, as on AMD hosts, so the boot path AMD guests take runs on any
/// host.
#[test]
fn plain_vmlinux_without_acpi_boots_unmodified_through_pvh_with_two_vcpus_and_its_disk() {
    require_kvm!(
        "plain_vmlinux_without_acpi_boots_unmodified_through_pvh_with_two_vcpus_and_its_disk"
    );
    let Some(elf) = cached_kernel("plain_vmlinux", "kernels/plain/vmlinux") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = read_only_disk(dir.path(), 4 << 20);
    let out = boot_to_init(&elf, 2, &["--disk", &disk, "--hide-tsc-leaves"]);
    check_common(&out);
    assert!(
        out.stderr.contains("Elf, PVH entry, ACPI absent"),
        "not booted through PVH as a kernel without ACPI\n{out}"
    );
    assert!(!out.stdout.contains("ACPI: RSDP"), "{out}");
    // No BTF in this kernel: its BPF initcalls, CUBIC's among them, run.
    assert!(!out.stderr.contains("BTF present"), "{out}");
    assert!(!out.stdout.contains("cubictcp_register"), "{out}");
    out.assert_stdout_contains("virtio_mmio.device=4K@0xc0000000:5");
    out.assert_stdout_contains("smp: Brought up 1 node, 2 CPUs");
    // 4 MiB = 8192 sectors; the line proves the device was probed and its
    // interrupt-driven first read completed (the partition scan).
    out.assert_stdout_contains("[vda] 8192 512-byte logical blocks");
}
