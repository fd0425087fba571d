//! Shared helpers for the control plane's integration tests: what a test
//! needs (KVM, images, the Python clients, botocore's model), a real
//! `ec2lab serve` on a private data directory and port, and the request
//! cases every implemented action must answer in botocore's shapes.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ec2lab_control::api::shapes::ServiceModel;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("EC2LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ec2lab")
        })
}

/// The workspace's built binaries (scripts/test builds every target first).
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    exe.parent()
        .and_then(Path::parent)
        .map(|p| p.join(name))
        .expect("target directory")
}

fn skip_or_fail(test: &str, var: &str, why: &str) -> Option<Prereqs> {
    if std::env::var(var).as_deref() == Ok("1") {
        panic!("{test}: {why} and {var}=1");
    }
    println!("SKIPPED {test}: {why}");
    None
}

/// What a control-plane test with real guests needs.
pub struct Prereqs {
    pub images: PathBuf,
    pub venv: PathBuf,
    pub vmm: PathBuf,
    pub ec2lab: PathBuf,
}

impl Prereqs {
    /// Checks for /dev/kvm, the images and the venv; None means skip.
    pub fn check(test: &str) -> Option<Prereqs> {
        if !Path::new("/dev/kvm").exists() {
            return skip_or_fail(test, "EC2LAB_REQUIRE_KVM", "/dev/kvm is missing");
        }
        let images = std::env::var_os("EC2LAB_IMAGES")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_dir().join("images"));
        if !images.join("lab-minimal/manifest.json").exists() {
            return skip_or_fail(
                test,
                "EC2LAB_REQUIRE_KERNELS",
                &format!(
                    "no lab-minimal image in {} (run scripts/build-images)",
                    images.display()
                ),
            );
        }
        let venv = cache_dir().join("venv");
        if !venv.join("bin/aws").exists() {
            return skip_or_fail(
                test,
                "EC2LAB_REQUIRE_VENV",
                "no Python clients (run scripts/python-env)",
            );
        }
        let vmm = target_bin("ec2lab-vmm");
        let ec2lab = target_bin("ec2lab");
        for bin in [&vmm, &ec2lab] {
            assert!(
                bin.exists(),
                "{} is not built (cargo build --workspace)",
                bin.display()
            );
        }
        Some(Prereqs {
            images,
            venv,
            vmm,
            ec2lab,
        })
    }

    /// The venv's python, with the venv's bin first on PATH (for `aws`).
    pub fn python(&self) -> Command {
        let mut c = Command::new(self.venv.join("bin/python"));
        let path = std::env::var("PATH").unwrap_or_default();
        c.env(
            "PATH",
            format!("{}:{path}", self.venv.join("bin").display()),
        );
        c
    }
}

/// A running `ec2lab serve` on a temporary data directory.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    listen: String,
    child: Option<Child>,
    images: PathBuf,
    vmm: PathBuf,
    ec2lab: PathBuf,
    /// The namespace this test made for the lab's internet gateways
    /// (`--uplink-netns`), when it runs as root; removed on drop.
    pub uplink: Option<String>,
    /// `--dns-upstream`: `none` unless a test runs a stand-in name server
    /// on the loopback ([`Daemon::start_networked`]); a test daemon never
    /// forwards to the host's real resolver.
    dns_upstream: String,
    /// `--forward-base`: 0 (no loopback forwards, so test daemons never
    /// compete for the ports of a user's lab) unless a test asks.
    pub forward_base: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The first of `n` consecutive loopback ports that are free now (for a
/// daemon's `--forward-base`), outside the kernel's ephemeral range.
pub fn free_port_range(n: u16) -> u16 {
    let slots = 10_000 / u32::from(n.max(1));
    let start = std::process::id() % slots;
    (0..slots)
        .map(|k| 20_000 + ((start + k) % slots * u32::from(n)) as u16)
        .find(|&base| {
            (base..base + n)
                .all(|p| std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, p)).is_ok())
        })
        .unwrap_or_else(|| panic!("no {n} free loopback ports between 20000 and 30000"))
}

impl Daemon {
    /// `ec2lab init` then `ec2lab serve`, waiting until it answers.
    pub fn start(prereqs: &Prereqs) -> Daemon {
        Self::start_on(prereqs, tempfile::tempdir().expect("data dir"))
    }

    /// As [`Daemon::start`], on the data directory `dir` (which may be a
    /// file system the test mounted there).
    pub fn start_on(prereqs: &Prereqs, dir: tempfile::TempDir) -> Daemon {
        Self::start_with(prereqs, dir, true)
    }

    /// As [`Daemon::start`], with the VPCs' DNS forwarding names outside
    /// them to `upstream` (a [`StandInResolver`] the test runs) and
    /// loopback forwards from `forward_base` up (a free range the test
    /// chose).
    pub fn start_networked(
        prereqs: &Prereqs,
        upstream: std::net::SocketAddr,
        forward_base: u16,
    ) -> Daemon {
        assert!(
            upstream.ip().is_loopback(),
            "tests resolve on the loopback only"
        );
        let dir = tempfile::tempdir().expect("data dir");
        let mut daemon = Self::start_with(prereqs, dir, false);
        daemon.dns_upstream = upstream.to_string();
        daemon.forward_base = forward_base;
        daemon.restart();
        daemon
    }

    fn start_with(prereqs: &Prereqs, dir: tempfile::TempDir, serve: bool) -> Daemon {
        let init = Command::new(&prereqs.ec2lab)
            .args(["init", "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("ec2lab init");
        let text = String::from_utf8_lossy(&init.stdout).into_owned();
        assert!(
            init.status.success(),
            "ec2lab init: {text}{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let find = |var: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{var}=")))
                .map(|v| v.trim_matches('\'').to_string())
                .unwrap_or_else(|| panic!("ec2lab init printed no {var}: {text}"))
        };
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        // SAFETY: geteuid only reads the process's credentials.
        let uplink = (unsafe { libc::geteuid() } == 0).then(|| {
            let ns = format!("ec2lab-test-uplink-{port}");
            ec2lab_control::network::netns::ensure(&ns).expect("uplink namespace");
            ns
        });
        let mut daemon = Daemon {
            uplink,
            endpoint: format!("http://{listen}"),
            access_key: find("AWS_ACCESS_KEY_ID"),
            secret_key: find("AWS_SECRET_ACCESS_KEY"),
            listen,
            dir,
            child: None,
            images: prereqs.images.clone(),
            vmm: prereqs.vmm.clone(),
            ec2lab: prereqs.ec2lab.clone(),
            dns_upstream: "none".into(),
            forward_base: 0,
        };
        if serve {
            daemon.restart();
        }
        daemon
    }

    /// (Re)starts the serve process on the same data directory and port.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .expect("serve log");
        let mut command = Command::new(&self.ec2lab);
        command
            .args(["serve", "--listen", &self.listen, "--data-dir"])
            .arg(self.dir.path())
            .arg("--images")
            .arg(&self.images)
            .arg("--vmm")
            .arg(&self.vmm);
        if let Some(ns) = &self.uplink {
            command.args(["--uplink-netns", ns]);
        }
        command.args(["--dns-upstream", &self.dns_upstream]);
        command.args(["--forward-base", &self.forward_base.to_string()]);
        let child = command
            .env("EC2LAB_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("ec2lab serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.listen).is_err() {
            assert!(
                Instant::now() < deadline,
                "ec2lab serve never listened\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The VMM binary the next `restart` hands the daemon.
    pub fn set_vmm(&mut self, vmm: PathBuf) {
        self.vmm = vmm;
    }

    /// Kills the serve process with SIGKILL (instances must survive it).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The environment for aws/boto3 clients of this daemon.
    pub fn client_env(&self) -> Vec<(String, String)> {
        vec![
            ("EC2LAB_ENDPOINT".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            (
                "EC2LAB_UPLINK_NETNS".into(),
                self.uplink.clone().unwrap_or_default(),
            ),
            // `ec2lab connect` reads the instance's vsock socket here.
            ("EC2LAB_CLI".into(), self.ec2lab.display().to_string()),
            (
                "EC2LAB_DATA_DIR".into(),
                self.dir.path().display().to_string(),
            ),
        ]
    }

    /// `aws ec2 ARGS` against this daemon, which must succeed; its JSON.
    pub fn aws(&self, prereqs: &Prereqs, args: &[&str]) -> serde_json::Value {
        let out = self.aws_output(prereqs, args);
        assert!(
            out.status.success(),
            "aws ec2 {args:?}: {}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// `aws ec2 ARGS` against this daemon, whatever its outcome.
    pub fn aws_output(&self, prereqs: &Prereqs, args: &[&str]) -> std::process::Output {
        prereqs
            .python()
            .args([
                "-m",
                "awscli",
                "--endpoint-url",
                &self.endpoint,
                "--output",
                "json",
                "ec2",
            ])
            .args(args)
            .envs(self.client_env())
            .output()
            .expect("run aws")
    }

    /// The id of the lab-minimal image the daemon registered.
    pub fn lab_minimal_ami(&self, prereqs: &Prereqs) -> String {
        let images = self.aws(
            prereqs,
            &[
                "describe-images",
                "--filters",
                "Name=name,Values=lab-minimal",
            ],
        );
        images["Images"][0]["ImageId"]
            .as_str()
            .expect("lab-minimal registered")
            .to_string()
    }

    /// RunInstances of one `instance_type` from `ami` (with `more`
    /// arguments); its instance id, as soon as the call answers.
    pub fn run_instance(
        &self,
        prereqs: &Prereqs,
        ami: &str,
        instance_type: &str,
        more: &[&str],
    ) -> String {
        let mut args = vec![
            "run-instances",
            "--image-id",
            ami,
            "--instance-type",
            instance_type,
        ];
        args.extend_from_slice(more);
        let run = self.aws(prereqs, &args);
        run["Instances"][0]["InstanceId"]
            .as_str()
            .expect("instance id")
            .to_string()
    }

    /// The state of instance `id`.
    pub fn state(&self, prereqs: &Prereqs, id: &str) -> String {
        let v = self.aws(prereqs, &["describe-instances", "--instance-ids", id]);
        v["Reservations"][0]["Instances"][0]["State"]["Name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until instance `id` is in state `want`.
    pub fn wait_state(&self, prereqs: &Prereqs, id: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.state(prereqs, id);
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} is {now}, not {want}, after {timeout:?}\n--- daemon log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The serve process's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// VMM processes started for this data directory that are still alive.
    pub fn live_vmms(&self) -> Vec<i32> {
        let needle = self.dir.path().display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
            // The VMM itself, not `ec2lab serve --vmm .../ec2lab-vmm`.
            let is_vmm = args
                .next()
                .is_some_and(|argv0| argv0.ends_with("/ec2lab-vmm") || argv0 == "ec2lab-vmm");
            if is_vmm && args.any(|a| a.contains(&needle)) {
                pids.push(pid);
            }
        }
        pids
    }

    /// The VPCs of this daemon's database.
    pub fn vpc_ids(&self) -> Vec<String> {
        ec2lab_control::db::Db::open(&self.dir.path().join("ec2lab.db"))
            .and_then(|db| db.list_vpcs(&Default::default()))
            .map(|page| page.items.into_iter().map(|v| v.id).collect())
            .unwrap_or_default()
    }

    /// The instances of this daemon's database.
    pub fn instance_ids(&self) -> Vec<String> {
        ec2lab_control::db::Db::open(&self.dir.path().join("ec2lab.db"))
            .and_then(|db| db.all_instances())
            .map(|all| all.into_iter().map(|i| i.id).collect())
            .unwrap_or_default()
    }

    /// Checks that VMM `pid` of instance `id` runs in the instance's
    /// cgroups with its caps (`vcpus`, `memory_mib`), when the host has a
    /// usable hierarchy and the daemon runs as root. Returns whether it
    /// checked.
    pub fn assert_vmm_cgroups(&self, pid: i32, id: &str, vcpus: u32, memory_mib: u64) -> bool {
        use ec2lab_control::cgroup::{Cgroups, Limits};
        let cgroups = Cgroups::detect();
        // SAFETY: geteuid only reads the process's credentials.
        let (Some(layout), true) = (cgroups.layout(), unsafe { libc::geteuid() } == 0) else {
            return false;
        };
        let member = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let lines = member
            .lines()
            .filter(|l| l.ends_with(&format!("/ec2lab/{id}")))
            .count();
        assert!(
            lines >= layout.groups(id).len(),
            "VMM {pid} is not in {id}'s cgroups:\n{member}"
        );
        for (path, value) in layout.settings(id, &Limits::for_instance(vcpus, memory_mib)) {
            if path.ends_with("memory.swap.max") && !path.exists() {
                continue;
            }
            let found = std::fs::read_to_string(&path).unwrap_or_default();
            let found = found.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(found, value, "{}", path.display());
        }
        true
    }

    /// dnsmasq processes serving this daemon's VPCs that are still alive.
    pub fn live_dnsmasqs(&self) -> Vec<i32> {
        let needle = self.dir.path().display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
            let is_dnsmasq = args.next().is_some_and(|argv0| argv0.ends_with("dnsmasq"));
            if is_dnsmasq && args.any(|a| a.contains(&needle)) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Removes this daemon's VPC fabric (dnsmasq by its pid file, the
    /// namespaces), whatever the test's outcome.
    fn remove_fabric(&self) {
        let network = ec2lab_control::network::Network::new(
            self.dir.path().join("network"),
            "dnsmasq".into(),
        );
        for vpc_id in self.vpc_ids() {
            let _ = network.teardown_vpc(&vpc_id);
        }
        if let Some(ns) = &self.uplink {
            let _ = ec2lab_control::network::netns::remove(ns);
        }
    }

    /// Judges a client suite (`what`: pytest, a playbook) that ran against
    /// this daemon: prints its output, fails with it and the daemon's log
    /// unless it succeeded, then stops the daemon and fails if anything was
    /// left behind.
    pub fn assert_client_run_and_no_leftovers(self, what: &str, out: &std::process::Output) {
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{report}");
        assert!(
            out.status.success(),
            "{what} failed:\n{report}\n--- daemon log ---\n{}",
            self.log()
        );
        let (leftovers, log) = self.stop_and_list(Duration::from_secs(60));
        if !leftovers.is_empty() {
            // What the daemon said about each leftover instance, the clue to
            // the race that left it.
            let about: Vec<&str> = log
                .lines()
                .filter(|line| {
                    leftovers.iter().any(|left| {
                        left.split(['/', ' '])
                            .find(|word| word.starts_with("i-"))
                            .is_some_and(|id| line.contains(id))
                    })
                })
                .collect();
            panic!(
                "left behind: {leftovers:?}\n--- what the daemon logged about them ---\n{}",
                about.join("\n")
            );
        }
    }

    /// Stops the daemon, then lists what it left: live VMMs (which are
    /// then killed, by PID) and instance directories.
    pub fn stop_and_list_leftovers(self, grace: Duration) -> Vec<String> {
        self.stop_and_list(grace).0
    }

    /// [`stop_and_list_leftovers`](Self::stop_and_list_leftovers), and the
    /// daemon's whole log, read once it stopped.
    fn stop_and_list(mut self, grace: Duration) -> (Vec<String>, String) {
        let deadline = Instant::now() + grace;
        // A boot still copying the volume of an instance terminated
        // meanwhile cleans up once the copy ends: give it the same grace.
        let instances = self.dir.path().join("instances");
        let busy = |d: &Self| {
            !d.live_vmms().is_empty()
                || std::fs::read_dir(&instances).is_ok_and(|mut e| e.next().is_some())
        };
        while busy(&self) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
        }
        self.kill9();
        let log = self.log();
        let mut left = Vec::new();
        for pid in self.live_vmms() {
            left.push(format!("VMM pid {pid}"));
            // SAFETY: kill(2) on a VMM this test's daemon started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for vpc_id in self.vpc_ids() {
            let ns = ec2lab_control::network::namespace_name(&vpc_id);
            if ec2lab_control::network::netns::path(&ns).exists() {
                left.push(format!("VPC namespace {ns}"));
            }
        }
        for pid in self.live_dnsmasqs() {
            left.push(format!("dnsmasq pid {pid}"));
        }
        // The gateways' bridge goes with the last VPC namespace.
        if let Some(ns) = &self.uplink {
            let links = ec2lab_control::network::fabric::link_names(ns).unwrap_or_default();
            if links.iter().any(|l| l != "lo") {
                left.push(format!("links {links:?} in the uplink namespace {ns}"));
            }
        }
        if let Some(layout) = ec2lab_control::cgroup::Cgroups::detect().layout() {
            for id in self.instance_ids() {
                for group in layout.groups(&id) {
                    if group.exists() {
                        left.push(format!("cgroup {}", group.display()));
                        let _ = std::fs::remove_dir(&group);
                    }
                }
            }
        }
        self.remove_fabric();
        for entry in std::fs::read_dir(self.dir.path().join("instances"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let mut names: Vec<String> = std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            left.push(format!(
                "instance directory {} holding {names:?}",
                entry.path().display()
            ));
        }
        (left, log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.live_vmms() {
            // SAFETY: kill(2) on a VMM this test's daemon started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.remove_fabric();
    }
}

/// Whether a missing venv must fail the test instead of skipping it.
pub fn venv_required() -> bool {
    std::env::var("EC2LAB_REQUIRE_VENV").is_ok_and(|v| v == "1")
}

/// Prints a SKIPPED line, or panics when the venv is required.
pub fn skip(test: &str, why: &str) {
    assert!(!venv_required(), "{test}: {why} (EC2LAB_REQUIRE_VENV=1)");
    // Written to the real stderr, past libtest's capture, so a skip shows
    // in the output of a passing run.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why}; run scripts/python-env to create it"
    );
}

/// The venv's python, made by `scripts/python-env`.
pub fn venv_python() -> Option<PathBuf> {
    let cache = std::env::var_os("EC2LAB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ec2lab")))?;
    let python = cache.join("venv/bin/python");
    python.is_file().then_some(python)
}

/// botocore's EC2 model, or `None` after printing SKIPPED.
pub fn model(test: &str) -> Option<ServiceModel> {
    match ServiceModel::load() {
        Ok(model) => Some(model),
        Err(err) => {
            skip(test, &err.to_string());
            None
        }
    }
}

/// Requests run through every implemented action: each one's response must
/// pass botocore's shape check. Add a case here with each new action (the
/// test `every_action_in_the_table_has_a_case` insists).
/// Actions that need resources (instances, images, keys): the scenario in
/// tests/shapes.rs runs each of them and checks its response.
pub const SCENARIO_ACTIONS: &[&str] = &[
    "AllocateAddress",
    "AssociateAddress",
    "CreateKeyPair",
    "CreateTags",
    "DeleteKeyPair",
    "DeleteTags",
    "DeregisterImage",
    "DescribeAddresses",
    "DescribeImages",
    "DescribeInstanceAttribute",
    "DescribeInstanceCreditSpecifications",
    "DescribeInstanceStatus",
    "DescribeInstances",
    "DescribeKeyPairs",
    "DescribeNetworkInterfaces",
    "DescribeSecurityGroups",
    "DescribeSubnets",
    "DescribeTags",
    "DescribeVolumes",
    "DescribeVpcAttribute",
    "DescribeVpcs",
    "DisassociateAddress",
    "GetConsoleOutput",
    "ImportKeyPair",
    "ModifyInstanceAttribute",
    "ModifyInstanceCreditSpecification",
    "ModifyInstanceMetadataOptions",
    "ModifyNetworkInterfaceAttribute",
    "RebootInstances",
    "RegisterImage",
    "ReleaseAddress",
    "RunInstances",
    "StartInstances",
    "StopInstances",
    "TerminateInstances",
];

/// Security group actions: the scenario in tests/shapes.rs
/// (`security_group_actions_pass_the_botocore_shape_check`) runs each.
pub const SECURITY_GROUP_SCENARIO_ACTIONS: &[&str] = &[
    "AuthorizeSecurityGroupEgress",
    "AuthorizeSecurityGroupIngress",
    "CreateSecurityGroup",
    "DeleteSecurityGroup",
    "DescribeSecurityGroupRules",
    "RevokeSecurityGroupEgress",
    "RevokeSecurityGroupIngress",
];

pub const CASES: &[(&str, &[(&str, &str)])] = &[
    ("DescribeRegions", &[]),
    ("DescribeRegions", &[("RegionName.1", "us-east-1")]),
    (
        "DescribeRegions",
        &[
            ("Filter.1.Name", "region-name"),
            ("Filter.1.Value.1", "eu-*"),
        ],
    ),
    ("DescribeAvailabilityZones", &[]),
    (
        "DescribeAvailabilityZones",
        &[("ZoneName.1", "us-east-1b"), ("ZoneId.1", "use1-az3")],
    ),
    ("DescribeInstanceTypes", &[]),
    (
        "DescribeInstanceTypes",
        &[
            ("InstanceType.1", "t2.micro"),
            ("InstanceType.2", "lab.nano"),
        ],
    ),
    (
        "DescribeInstanceTypes",
        &[
            ("Filter.1.Name", "instance-type"),
            ("Filter.1.Value.1", "t3.*"),
        ],
    ),
    ("DescribeInstanceTypes", &[("MaxResults", "5")]),
    ("DescribeRouteTables", &[]),
    (
        "DescribeRouteTables",
        &[
            ("Filter.1.Name", "association.main"),
            ("Filter.1.Value.1", "true"),
        ],
    ),
    ("DescribeRouteTables", &[("MaxResults", "5")]),
    ("DescribeNetworkAcls", &[]),
    (
        "DescribeNetworkAcls",
        &[("Filter.1.Name", "default"), ("Filter.1.Value.1", "true")],
    ),
    ("DescribeInternetGateways", &[]),
    (
        "DescribeInternetGateways",
        &[
            ("Filter.1.Name", "attachment.state"),
            ("Filter.1.Value.1", "available"),
        ],
    ),
    (
        "DescribeAddressesAttribute",
        &[("Attribute", "domain-name")],
    ),
];

/// A lab that can start no guest (in-memory database, no VMM binary, no
/// images) for the protocol-level tests, whose actions never reach it.
pub fn guestless_lab(
    runtime: &tokio::runtime::Handle,
) -> std::sync::Arc<ec2lab_control::lifecycle::Lab> {
    let nowhere = Path::new("/nonexistent");
    ec2lab_control::lifecycle::Lab::new(
        ec2lab_control::db::Db::open_in_memory().expect("in-memory db"),
        ec2lab_control::supervisor::Supervisor::new(nowhere.join("vmm"), nowhere.join("instances")),
        nowhere.join("images"),
        runtime.clone(),
        ec2lab_control::lifecycle::HealthChecks {
            checkin_timeout: ec2lab_control::model::status::DEFAULT_CHECKIN_TIMEOUT,
            stall_timeout: None,
        },
    )
}

/// An images directory under `dir/images` with a kernel `k` and a machine
/// image `lab-minimal` whose files are a few bytes: enough to register,
/// launch and describe, not to boot.
pub fn fake_catalog(dir: &std::path::Path) {
    let sha = |data: &[u8]| {
        ec2lab_images::sha256_file(&{
            let p = dir.join("tmp.bin");
            std::fs::write(&p, data).expect("write");
            p
        })
        .expect("sha")
    };
    let kernel = dir.join("images/kernels/k");
    let ami = dir.join("images/lab-minimal");
    std::fs::create_dir_all(&kernel).expect("mkdir");
    std::fs::create_dir_all(&ami).expect("mkdir");
    std::fs::write(kernel.join("vmlinux"), b"ELF").expect("kernel");
    std::fs::write(ami.join("root.ext4"), b"root").expect("root");
    let k = serde_json::json!({"schema_version":1,"image_type":"kernel","name":"k","description":"d",
        "architecture":"x86_64","kernel":{"path":"vmlinux","format":"elf-pvh","size_bytes":3,"sha256":sha(b"ELF")},
        "created":"2026-01-01T00:00:00Z"});
    let m = serde_json::json!({"schema_version":1,"image_type":"machine","name":"lab-minimal","description":"d",
        "architecture":"x86_64","root_device_type":"ebs","root_device_name":"/dev/xvda",
        "block_device_mappings":[{"device_name":"/dev/xvda","guest_device":"/dev/vda","path":"root.ext4",
        "format":"raw","size_bytes":4,"sha256":sha(b"root")}],"kernel":"k","initrd":null,
        "cmdline":"console=ttyS0","default_user":"ec2-user","created":"2026-01-01T00:00:00Z"});
    std::fs::write(kernel.join("manifest.json"), k.to_string()).expect("manifest");
    std::fs::write(ami.join("manifest.json"), m.to_string()).expect("manifest");
}

/// The one name outside the VPC a [`StandInResolver`] knows.
pub const OUTSIDE_NAME: &str = "www.example.test";
/// Its address (TEST-NET-1).
pub const OUTSIDE_ADDRESS: &str = "192.0.2.44";

/// A stand-in for the host's resolver: a dnsmasq on the loopback (in the
/// test's own namespace) that knows one outside name,
/// [`OUTSIDE_NAME`] at [`OUTSIDE_ADDRESS`], and logs what it is asked;
/// stopped on drop. Needs dnsmasq.
pub struct StandInResolver {
    child: Child,
    /// Where it answers (UDP and TCP).
    pub at: std::net::SocketAddr,
    log: PathBuf,
}

impl StandInResolver {
    /// Starts one logging to a file in `dir`.
    pub fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.join("upstream.log");
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-hosts",
                "--no-resolv",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--log-queries",
                &format!("--address=/{OUTSIDE_NAME}/{OUTSIDE_ADDRESS}"),
                &format!("--port={port}"),
                &format!("--log-facility={}", log.display()),
            ])
            .spawn()
            .expect("dnsmasq upstream");
        let at = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(at).is_err() {
            assert!(Instant::now() < deadline, "the upstream never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, at, log }
    }

    /// What it was asked so far (its query log).
    pub fn asked(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for StandInResolver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
