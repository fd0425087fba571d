//! The lab kernel (`scripts/build-kernel --variant lab`: Debian's 6.1
//! linux-source with guest-images/kernel/config and the syscall-entry patch)
//! runs guest user space through ec2lab-vmm on every KVM host, with SMP, and
//! its poweroff, reboot and Ctrl-Alt-Del reach the VMM as exit statuses.
//!
//! Each test boots the real kernel with a busybox initramfs built by
//! `scripts/build-initramfs`; a boot takes tens of seconds on hosts that
//! emulate guest kernel mode (about a second on bare-metal KVM), so each
//! boot checks many things.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{api, cached_kernel, repo_root, status, Vmm};

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Builds an initramfs whose /init is `script`, with `extra` files (host
/// path, guest path) added.
fn initramfs(dir: &Path, script: &str, extra: &[(PathBuf, &str)]) -> PathBuf {
    let init = dir.join("init.sh");
    std::fs::write(&init, script).expect("write init");
    let out = dir.join("initramfs.cpio");
    let mut cmd = Command::new(repo_root().join("scripts/build-initramfs"));
    cmd.arg(&out).arg(&init);
    for (src, dest) in extra {
        cmd.arg(format!("{}:{dest}", src.display()));
    }
    let result = cmd.output().expect("run scripts/build-initramfs");
    assert!(
        result.status.success(),
        "build-initramfs failed\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// Compiles a test program from tests/guests/userspace or guest-images into a static binary.
fn static_binary(dir: &Path, source: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let result = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(source)
        .output()
        .expect("run gcc");
    assert!(
        result.status.success(),
        "gcc {} failed\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

fn lab_kernel(test: &str) -> Option<PathBuf> {
    cached_kernel(test, "kernels/lab/vmlinux")
}

fn boot(kernel: &Path, initrd: &Path, vcpus: u32, api_sock: Option<&Path>) -> Vmm {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--kernel".into(),
        kernel.into(),
        "--initrd".into(),
        initrd.into(),
        "--cmdline".into(),
        "console=ttyS0".into(),
        "--vcpus".into(),
        vcpus.to_string().into(),
        "--memory-mib".into(),
        "128".into(),
    ];
    if let Some(sock) = api_sock {
        args.push("--api-sock".into());
        args.push(sock.into());
    }
    Vmm::spawn(args)
}

/// One boot, many checks: both vCPUs online, mounts, a pipe, fork/exec, the
/// syscall rate, the #PF syscall redirection (or its absence), clean poweroff.
#[test]
fn busybox_init_runs_to_its_end_on_two_vcpus_and_poweroff_exits_0() {
    require_kvm!("busybox_init_runs_to_its_end_on_two_vcpus_and_poweroff_exits_0");
    let Some(kernel) = lab_kernel("lab_kernel_two_vcpus") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let rate = static_binary(
        dir.path(),
        &repo_root().join("vmm/tests/guests/userspace/syscall_rate.c"),
        "syscall-rate",
    );
    let via_pf = static_binary(
        dir.path(),
        &repo_root().join("guest-images/kernel/test/syscall-via-pf.c"),
        "syscall-via-pf",
    );
    let script = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "LAB-INIT start cpus=$(nproc) online=$(cat /sys/devices/system/cpu/online) kernel=$(uname -r)"
echo "LAB-INIT procs=$(ls /proc | wc -l) mounts=$(grep -c . /proc/mounts)"
echo piped | cat > /tmp/pipe.out && echo "LAB-INIT pipe=$(cat /tmp/pipe.out)"
/bin/busybox sh -c 'echo LAB-INIT forked pid $$'
grep -q ec2lab_syscall_via_pf /proc/cpuinfo && echo "LAB-INIT syscall-via-pf active"
/syscall-rate 2000
lstar=$(grep ' entry_SYSCALL_64$' /proc/kallsyms | cut -d' ' -f1)
/syscall-via-pf "$lstar" 200
echo "LAB-INIT fake-jump-status=$?"
echo "LAB-INIT done uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"#;
    let initrd = initramfs(
        dir.path(),
        script,
        &[(rate, "/syscall-rate"), (via_pf, "/syscall-via-pf")],
    );
    let mut vmm = boot(&kernel, &initrd, 2, None);
    vmm.wait_for_stdout("LAB-INIT done", BOOT_TIMEOUT);
    let out = vmm.wait(Duration::from_secs(60));
    out.assert_code(status::POWEROFF);
    out.assert_stdout_contains("LAB-INIT start cpus=2 online=0-1");
    out.assert_stdout_contains("LAB-INIT pipe=piped");
    out.assert_stdout_contains("LAB-INIT forked pid");
    out.assert_stdout_contains("syscall-rate: 2000 calls in");
    out.assert_stdout_contains("reboot: Power down");
    if common::on_emulating_host() {
        // The VMM passed ec2lab.syscall_via_pf: a user jump to the syscall
        // entry is served like a real syscall, no more (exit_group(42)).
        out.assert_stdout_contains("LAB-INIT syscall-via-pf active");
        out.assert_stdout_contains("LAB-INIT fake-jump-status=42");
    } else {
        // Without the parameter the patch is inert: an ordinary SIGSEGV.
        assert!(!out.stdout.contains("syscall-via-pf active"), "{out}");
        out.assert_stdout_contains("LAB-INIT fake-jump-status=139");
    }
    let rate_line = out
        .stdout
        .lines()
        .find(|l| l.contains("syscall-rate:"))
        .unwrap_or_default();
    println!("measured: {rate_line}");
}

#[test]
fn reboot_f_exits_with_the_reboot_status() {
    require_kvm!("reboot_f_exits_with_the_reboot_status");
    let Some(kernel) = lab_kernel("lab_kernel_reboot") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = initramfs(
        dir.path(),
        "#!/bin/sh\necho LAB-INIT rebooting\nreboot -f\n",
        &[],
    );
    let mut vmm = boot(&kernel, &initrd, 1, None);
    vmm.wait_for_stdout("LAB-INIT rebooting", BOOT_TIMEOUT);
    let out = vmm.wait(Duration::from_secs(60));
    out.assert_code(status::RESET);
    out.assert_stdout_contains("reboot: Restarting system");
}

/// SendCtrlAltDel reaches the guest's keyboard driver: with init not
/// handling it, the kernel's default is an immediate restart.
#[test]
fn ctrl_alt_del_from_the_api_reboots_the_guest() {
    require_kvm!("ctrl_alt_del_from_the_api_reboots_the_guest");
    let Some(kernel) = lab_kernel("lab_kernel_ctrl_alt_del") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = initramfs(
        dir.path(),
        "#!/bin/sh\necho LAB-INIT waiting\nexec sleep 600\n",
        &[],
    );
    let sock = dir.path().join("api.sock");
    let mut vmm = boot(&kernel, &initrd, 1, Some(&sock));
    vmm.wait_for_stdout("LAB-INIT waiting", BOOT_TIMEOUT);
    vmm.wait_for_stdout("keyboard=1", Duration::from_secs(5));
    let reply = api::request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action":"SendCtrlAltDel"}"#),
    );
    assert_eq!(reply.status, 204, "{reply:?}");
    let out = vmm.wait(Duration::from_secs(120));
    out.assert_code(status::RESET);
    out.assert_stdout_contains("reboot: Restarting system");
}
