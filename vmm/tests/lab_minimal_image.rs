//! The lab-minimal AMI built by `scripts/build-images`: its manifests hold
//! (files, sizes, digests, kernel), its file system is clean and has what
//! the image promises with the right owners and modes, a rebuild with the
//! same inputs is a cache hit, and it boots under ec2lab-vmm to an SSH
//! login: DHCP on a tap in a namespace the test creates (udhcpd there),
//! dropbear, the agent reporting that metadata is unreachable (the metadata
//! service comes with the control plane), `sudo` for ec2-user, memory
//! hotplug (the guest's virtio-mem driver plugs what `PATCH
//! /hotplug/memory` asks for, and the kernel's MemTotal grows by it), and
//! a clean poweroff on Ctrl-Alt-Del.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    api, cache_dir, debugfs, repo_root, seed_authorized_key, stat_in_image, status, NetNs, Vmm,
};
use ec2lab_images::{Catalog, MachineImage, Verify};

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const GUEST_IP: &str = "10.0.3.15";
const HOST_IP: &str = "10.0.3.1";

/// The images directory, or None (skip) when lab-minimal has not been built;
/// with `EC2LAB_REQUIRE_KERNELS=1` (CI) a missing image fails.
fn images_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("EC2LAB_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("images"));
    if dir.join("lab-minimal/manifest.json").exists() {
        return Some(dir);
    }
    if std::env::var("EC2LAB_REQUIRE_KERNELS").as_deref() == Ok("1") {
        panic!(
            "{test}: {} has no lab-minimal image and EC2LAB_REQUIRE_KERNELS=1",
            dir.display()
        );
    }
    println!(
        "SKIPPED {test}: no lab-minimal in {} (run scripts/build-images)",
        dir.display()
    );
    None
}

#[test]
fn manifests_validate_fsck_is_clean_files_are_right_and_a_rebuild_is_a_cache_hit() {
    let Some(images) = images_dir("lab_minimal_image") else {
        return;
    };
    let catalog = Catalog::scan(&images).expect("every image in the catalog is valid");
    let ami = catalog.machine("lab-minimal").expect("lab-minimal");
    MachineImage::open_with(&ami.dir, Verify::Digest).expect("root.ext4 matches its digest");
    let kernel = catalog.kernel(&ami.manifest.kernel).expect("its kernel");
    assert!(kernel.kernel_path().is_file());
    assert_eq!(ami.manifest.default_user, "ec2-user");

    let root = ami.root_path().expect("root volume");
    let fsck = Command::new("fsck.ext4")
        .args(["-n", "-f"])
        .arg(&root)
        .output()
        .expect("fsck");
    assert!(
        fsck.status.success(),
        "fsck.ext4 -n: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    for (path, mode, user) in [
        ("/init", "0755", "0"),
        ("/bin/busybox", "0755", "0"),
        ("/usr/sbin/dropbear", "0755", "0"),
        ("/usr/bin/dropbearkey", "0755", "0"),
        ("/usr/bin/ec2lab-guest", "0755", "0"),
        ("/usr/bin/sudo", "04755", "0"),
        ("/etc/shadow", "0600", "0"),
        ("/etc/udhcpc/default.script", "0755", "0"),
        ("/home/ec2-user", "0700", "1000"),
        ("/root", "0700", "0"),
        ("/tmp", "01777", "0"),
    ] {
        let (m, u) =
            stat_in_image(&root, path).unwrap_or_else(|| panic!("{path} is not in the image"));
        assert_eq!((m.as_str(), u.as_str()), (mode, user), "{path}");
    }
    // Every program is static: no loader, no shared libraries (on hosts
    // that emulate the guest kernel, loading them cost seconds per start).
    assert!(
        stat_in_image(&root, "/lib64/ld-linux-x86-64.so.2").is_none(),
        "the image has a dynamic loader"
    );
    let dropbear = debugfs(&root, "cat /usr/sbin/dropbear");
    assert!(
        dropbear.starts_with("\u{7f}ELF") && !dropbear.contains("/lib64/ld-linux-x86-64.so.2"),
        "dropbear is not a static executable"
    );
    let passwd = debugfs(&root, "cat /etc/shadow");
    assert!(
        passwd.lines().all(|l| l.split(':').nth(1) == Some("*")),
        "no passwords anywhere: {passwd}"
    );

    // Unchanged inputs: nothing is rebuilt.
    let before = std::fs::metadata(&root)
        .and_then(|m| m.modified())
        .expect("mtime");
    let out = Command::new(repo_root().join("scripts/build-images"))
        .arg("--out")
        .arg(&images)
        .output()
        .expect("run build-images");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("lab-minimal: up to date"), "{log}");
    let after = std::fs::metadata(&root)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(before, after, "root.ext4 was rewritten");
}

#[test]
fn lab_minimal_boots_to_an_ssh_login_with_dhcp_and_powers_off_on_ctrl_alt_del() {
    require_kvm!("lab_minimal_boot");
    let Some(images) = images_dir("lab_minimal_boot") else {
        return;
    };
    let catalog = Catalog::scan(&images).expect("valid catalog");
    let ami = catalog.machine("lab-minimal").expect("lab-minimal");
    let kernel = catalog.kernel(&ami.manifest.kernel).expect("kernel");
    let dir = tempfile::tempdir().expect("tempdir");

    // The instance's root volume: a sparse copy, as the control plane makes.
    let root = dir.path().join("root.ext4");
    let cp = Command::new("cp")
        .arg("--sparse=always")
        .arg(ami.root_path().expect("root"))
        .arg(&root)
        .status()
        .expect("cp");
    assert!(cp.success());
    let key = dir.path().join("id_ed25519");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(keygen.success());
    seed_authorized_key(
        dir.path(),
        &root,
        "/home/ec2-user",
        &key.with_extension("pub"),
    );

    let ns = NetNs::new("ami");
    ns.add_tap("tap0", &format!("{HOST_IP}/24"));
    let _udhcpd = ns.serve_dhcp(dir.path(), "tap0", GUEST_IP, HOST_IP);

    let sock = dir.path().join("api.sock");
    let started = Instant::now();
    let mut vmm = Vmm::spawn_in(
        &ns,
        [
            "--kernel",
            &kernel.kernel_path().display().to_string(),
            "--cmdline",
            &ami.manifest.cmdline,
            "--memory-mib",
            "256",
            "--hotplug-memory",
            "total=256",
            "--api-sock",
            &sock.display().to_string(),
            "--disk",
            &root.display().to_string(),
            "--net",
            "tap=tap0,mac=06:00:0a:00:03:0f",
            "--rng",
        ],
    );
    vmm.wait_for_stdout("lab-minimal: dropbear listening", BOOT_TIMEOUT);

    // Boot to SSH: the first moment dropbear's banner reaches the namespace.
    let ns_name = ns.name.clone();
    let banner = std::thread::spawn(move || {
        common::enter_netns(&ns_name);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(mut s) = TcpStream::connect_timeout(
                &format!("{GUEST_IP}:22").parse().expect("addr"),
                Duration::from_secs(5),
            ) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).unwrap_or(0);
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            assert!(Instant::now() < deadline, "port 22 never opened");
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .join()
    .expect("banner thread");
    let boot_to_ssh = started.elapsed();
    println!(
        "lab-minimal boot to SSH banner: {:.1} s",
        boot_to_ssh.as_secs_f64()
    );
    assert!(banner.starts_with("SSH-2.0-dropbear"), "banner {banner:?}");

    vmm.wait_for_stdout("lab-minimal: ready", BOOT_TIMEOUT);
    let run = |command: &str| ns.ssh(&key, &format!("ec2-user@{GUEST_IP}"), command);
    let ssh = run("echo login=$(id -un) root=$(sudo id -u) host=$(hostname)");
    let login = String::from_utf8_lossy(&ssh.stdout);
    assert!(
        login.contains("login=ec2-user root=0"),
        "ssh: {login}{}",
        String::from_utf8_lossy(&ssh.stderr)
    );

    // Memory hotplug: nothing plugged until asked, then the guest's
    // virtio-mem driver plugs all of it and the kernel counts it.
    let mem_total = || {
        let out = run("grep MemTotal /proc/meminfo");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .nth(1)
            .and_then(|kib| kib.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("MemTotal: {text:?}"))
    };
    let hotplug = |method: &str, body: Option<&str>| -> serde_json::Value {
        let answer = api::request(&sock, method, "/hotplug/memory", body);
        assert_eq!(answer.status, 200, "{method} /hotplug/memory: {answer:?}");
        answer.json()
    };
    let before = hotplug("GET", None);
    assert_eq!(before["total_size_mib"], 256, "{before}");
    assert_eq!(before["plugged_size_mib"], 0, "{before}");
    let booted_kib = mem_total();
    assert!(booted_kib < 256 * 1024, "MemTotal {booted_kib} KiB at boot");
    let asked = hotplug("PATCH", Some(r#"{"requested_size_mib":256}"#));
    assert_eq!(asked["requested_size_mib"], 256, "{asked}");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let now = hotplug("GET", None);
        if now["plugged_size_mib"] == 256 {
            break;
        }
        assert!(Instant::now() < deadline, "the guest never plugged: {now}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let plugged_kib = mem_total();
    assert!(
        plugged_kib >= booted_kib + 250 * 1024,
        "MemTotal {booted_kib} KiB at boot, {plugged_kib} KiB after plugging 256 MiB"
    );

    api::request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action":"SendCtrlAltDel"}"#),
    );
    let out = vmm.wait(Duration::from_secs(120));
    out.assert_code(status::POWEROFF);
    out.assert_stdout_contains(&format!("lab-minimal: eth0: inet {GUEST_IP}/24"));
    out.assert_stdout_contains("ec2lab-guest: ");
    out.assert_stdout_contains("metadata unreachable");
    out.assert_stdout_contains("lab-minimal: shutting down");
    let fsck = Command::new("fsck.ext4")
        .args(["-n", "-f"])
        .arg(&root)
        .output()
        .expect("fsck");
    assert!(
        fsck.status.success(),
        "root volume not clean after poweroff: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}
