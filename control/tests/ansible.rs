//! Ansible as a second, independent EC2 client: runs
//! `control/tests/ansible/lifecycle.yml` (amazon.aws.ec2_key, ec2_ami_info,
//! ec2_instance, ec2_instance_info) with the venv's `ansible-playbook`
//! against a real `ec2lab serve` with a real lab-minimal guest under KVM,
//! then checks that the daemon left nothing behind.
//!
//! Needs root, /dev/kvm, the images from `scripts/build-images` and the
//! Python environment from `scripts/python-env` (which installs ansible);
//! without them it prints a SKIPPED line, unless CI's EC2LAB_REQUIRE_*
//! variables make that a failure.

mod common;

use common::{Daemon, Prereqs};

#[test]
fn ansible_amazon_aws_drives_an_instance_through_its_whole_life() {
    // amazon.aws.ec2_instance looks up the default VPC and its default
    // subnet before a launch (DescribeVpcs isDefault, DescribeSubnets
    // default-for-az) and launches with NetworkInterface.1.SubnetId: the
    // default VPC is real control-plane state, so this runs by default.
    let Some(prereqs) = Prereqs::check("ansible") else {
        return;
    };
    let playbook_bin = prereqs.venv.join("bin/ansible-playbook");
    if !playbook_bin.exists() {
        common::skip("ansible", &format!("{} is missing", playbook_bin.display()));
        return;
    }
    let daemon = Daemon::start(&prereqs);
    let ansible_home = daemon.dir.path().join("ansible");
    let out = std::process::Command::new(&playbook_bin)
        .arg(common::repo_root().join("control/tests/ansible/lifecycle.yml"))
        .args(["-i", "localhost,", "-e"])
        .arg(format!("endpoint={}", daemon.endpoint))
        .envs(daemon.client_env())
        .env("PATH", prereqs_path(&prereqs))
        .env("ANSIBLE_HOME", &ansible_home)
        .env("ANSIBLE_LOCAL_TEMP", ansible_home.join("tmp"))
        .env(
            "ANSIBLE_PYTHON_INTERPRETER",
            prereqs.venv.join("bin/python"),
        )
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCALHOST_WARNING", "false")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
        .output()
        .expect("run ansible-playbook");
    daemon.assert_client_run_and_no_leftovers("ansible playbook", &out);
}

/// The venv's bin first on PATH, so modules run with the venv's boto3.
fn prereqs_path(prereqs: &Prereqs) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{path}", prereqs.venv.join("bin").display())
}
