//! Runs the conformance suite (`control/tests/conformance/*.py`: the real
//! aws CLI and boto3) against a real `ec2lab serve` with real lab-minimal
//! guests under KVM, then checks that the daemon left nothing behind.
//!
//! Needs root, /dev/kvm, the images from `scripts/build-images` and the
//! Python environment from `scripts/python-env`; without them it prints a
//! SKIPPED line, unless CI's EC2LAB_REQUIRE_* variables make that a failure.

mod common;

use common::{Daemon, Prereqs};

#[test]
fn aws_cli_and_boto3_drive_instances_through_their_whole_life() {
    let Some(prereqs) = Prereqs::check("conformance") else {
        return;
    };
    // Names outside the VPC resolve through a stand-in for the host's
    // resolver on the loopback, and public addresses are forwarded from
    // loopback ports (guests have a network only as root).
    let resolver_dir = tempfile::tempdir().expect("tempdir");
    // SAFETY: geteuid only reads the process's credentials.
    let resolver = (unsafe { libc::geteuid() } == 0)
        .then(|| common::StandInResolver::start(resolver_dir.path()));
    let daemon = match &resolver {
        Some(resolver) => {
            Daemon::start_networked(&prereqs, resolver.at, common::free_port_range(256))
        }
        None => Daemon::start(&prereqs),
    };
    let mut pytest = prereqs.python();
    pytest.args(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]);
    if resolver.is_some() {
        pytest.envs([
            ("EC2LAB_OUTSIDE_NAME", common::OUTSIDE_NAME),
            ("EC2LAB_OUTSIDE_ADDRESS", common::OUTSIDE_ADDRESS),
        ]);
        pytest.env("EC2LAB_FORWARDS", daemon.dir.path().join("forwards"));
    }
    // A developer's shortcut to one part of the suite, e.g.
    // EC2LAB_CONFORMANCE_K=test_vpc (pytest's -k expression).
    if let Ok(only) = std::env::var("EC2LAB_CONFORMANCE_K") {
        pytest.args(["-k", &only]);
    }
    let out = pytest
        .arg(common::repo_root().join("control/tests/conformance"))
        .envs(daemon.client_env())
        .output()
        .expect("run pytest");
    daemon.assert_client_run_and_no_leftovers("conformance suite", &out);
}

/// The guestless part of the suite (security groups, Elastic IPs, the
/// Instance Connect API's refusals, Terraform's default-VPC resources) against a daemon that
/// cannot boot anything: needs only the Python clients, so it runs where
/// KVM or the images are missing.
#[test]
fn aws_cli_and_boto3_drive_security_groups_and_elastic_ips_without_a_guest() {
    let venv = common::venv_python().and_then(|p| Some(p.parent()?.parent()?.to_path_buf()));
    let Some(venv) = venv.filter(|v| v.join("bin/aws").exists()) else {
        common::skip(
            "aws_cli_and_boto3_drive_security_groups_and_elastic_ips_without_a_guest",
            "no Python clients",
        );
        return;
    };
    let nowhere = tempfile::tempdir().expect("empty image directory");
    // An executable that is no VMM (the daemon refuses to start without an
    // executable one): nothing here may launch.
    let no_vmm = nowhere.path().join("no-vmm");
    std::fs::write(&no_vmm, "#!/bin/sh\nexit 1\n").expect("write");
    std::fs::set_permissions(&no_vmm, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let prereqs = Prereqs {
        images: nowhere.path().to_path_buf(),
        venv,
        vmm: no_vmm,
        ec2lab: common::target_bin("ec2lab"),
    };
    let daemon = Daemon::start(&prereqs);
    let out = prereqs
        .python()
        .args(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"])
        .arg(common::repo_root().join("control/tests/conformance/test_security_groups.py"))
        .arg(common::repo_root().join("control/tests/conformance/test_addresses.py"))
        .arg(common::repo_root().join("control/tests/conformance/test_instance_connect.py"))
        .arg(common::repo_root().join("control/tests/conformance/test_terraform_default_vpc.py"))
        .envs(daemon.client_env())
        .output()
        .expect("run pytest");
    daemon.assert_client_run_and_no_leftovers("security group conformance", &out);
}
