//! `scripts/install-service --print`: the systemd unit that starts
//! `ec2lab serve` at boot (so instances running when the host went down
//! are recovered) is one systemd accepts without a warning, runs this
//! checkout's binaries, and signals only the daemon, so a restart of the
//! service leaves the VMMs running for the next daemon to adopt.

use std::path::Path;
use std::process::Command;

#[test]
fn the_service_unit_is_valid_and_leaves_vmms_running_across_restarts() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root");
    let bin = Path::new(env!("CARGO_BIN_EXE_ec2lab"))
        .parent()
        .expect("binary directory");
    if !bin.join("ec2lab-vmm").exists() {
        eprintln!("SKIPPED: no ec2lab-vmm beside ec2lab (cargo build --workspace builds it)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).expect("images dir");
    let out = Command::new(repo.join("scripts/install-service"))
        .arg("--print")
        .arg("--bin")
        .arg(bin)
        .arg("--images")
        .arg(&images)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run install-service");
    assert!(out.status.success(), "{out:?}");
    let unit = String::from_utf8(out.stdout).expect("utf-8 unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(
        exec.starts_with(&format!("{}/ec2lab serve ", bin.display())),
        "{exec}"
    );
    assert!(
        exec.ends_with(&format!("--vmm {}/ec2lab-vmm", bin.display())),
        "{exec}"
    );
    assert!(exec.contains(&format!("--images {}", images.display())));
    assert!(unit.lines().any(|l| l == "KillMode=process"), "{unit}");
    assert!(unit.lines().any(|l| l == "WantedBy=multi-user.target"));

    // systemd itself checks it (offline: no running systemd needed).
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if analyze.is_err() {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    let path = dir.path().join("ec2lab.service");
    std::fs::write(&path, &unit).expect("write unit");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze verify");
    let said = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    // Complaints about the host's own units are not ours.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("ec2lab.service"))
        .collect();
    assert!(
        verify.status.success() && ours.is_empty(),
        "systemd-analyze verify: {:?}\n{said}\n--- unit ---\n{unit}",
        verify.status
    );
}
