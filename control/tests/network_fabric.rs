//! The VPC fabric without guests: a VPC namespace with a subnet bridge,
//! dnsmasq serving it, and a veth whose far end sits in a namespace this
//! test makes, standing in for an instance's tap. A DHCP client there gets
//! exactly the interface's address, router, DNS and name; the private DNS
//! name resolves at base+2; teardown leaves nothing.
//!
//! Needs root, dnsmasq and busybox (scripts/install-deps); without them it
//! prints a SKIPPED line, unless EC2LAB_REQUIRE_NETWORK=1 makes that a
//! failure. Traffic stays between the namespaces it creates.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use ec2lab_control::model::vpc::Cidr;
use ec2lab_control::network::{
    self, bridge_name, fabric, netns, InterfacePlan, Network, SubnetPlan, VpcPlan,
};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn prerequisites(test: &str) -> bool {
    // SAFETY: geteuid only reads the process's credentials.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<&str> = [
        ("root", root),
        ("dnsmasq", have("dnsmasq")),
        ("busybox", have("busybox")),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(what, _)| what)
    .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("EC2LAB_REQUIRE_NETWORK").as_deref() != Ok("1"),
        "{test}: missing {missing:?} and EC2LAB_REQUIRE_NETWORK=1"
    );
    println!("SKIPPED {test}: missing {missing:?}");
    false
}

/// Runs `args` inside namespace `ns`; its stdout, or a panic with stderr.
fn run_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "in {ns}: {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes everything the test made, even when an assertion failed.
struct Cleanup<'a> {
    network: &'a Network,
    vpc_id: String,
    guest_ns: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.network.teardown_vpc(&self.vpc_id);
        let _ = netns::remove(&self.guest_ns);
    }
}

/// The DHCP client's hook: writes what the server offered, one `key=value`
/// a line, and configures nothing.
fn write_dhcp_hook(dir: &Path) -> String {
    let hook = dir.join("hook.sh");
    let record = dir.join("lease");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\n\
             printf 'ip=%s\\nmask=%s\\nrouter=%s\\ndns=%s\\nhostname=%s\\ndomain=%s\\n' \
             \"$ip\" \"$mask\" \"$router\" \"$dns\" \"$hostname\" \"$domain\" > {}\n",
            record.display()
        ),
    )
    .expect("hook");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    hook.display().to_string()
}

#[test]
fn a_vpc_namespace_serves_each_interface_its_own_address_and_name_then_leaves_nothing() {
    let test = "network_fabric";
    if !prerequisites(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = std::process::id();
    let vpc_id = format!("vpc-0e{pid:015x}");
    let network = Network::new(dir.path().join("network"), "dnsmasq".into());
    let cleanup = Cleanup {
        network: &network,
        vpc_id: vpc_id.clone(),
        guest_ns: format!("ec2lab-test-guest-{pid}"),
    };
    let subnet = SubnetPlan {
        subnet_id: format!("subnet-0e{pid:015x}"),
        cidr: Cidr::parse("10.77.16.0/20").expect("cidr"),
        bridge: bridge_name(&format!("subnet-0e{pid:015x}")),
    };
    let eni = InterfacePlan {
        eni_id: format!("eni-0e{pid:015x}"),
        subnet_id: subnet.subnet_id.clone(),
        mac: "02:42:ac:1f:10:4d".into(),
        ip: Ipv4Addr::new(10, 77, 16, 77),
        tap: network::tap_name(&format!("eni-0e{pid:015x}")),
    };
    let plan = VpcPlan {
        subnets: vec![subnet.clone()],
        interfaces: vec![eni.clone()],
        ..VpcPlan::new(&vpc_id)
    };
    let vpc_ns = plan.namespace.clone();

    network.ensure_vpc(&plan).expect("VPC fabric");
    // Idempotent: a daemon restart runs the same again over what exists.
    network.ensure_vpc(&plan).expect("VPC fabric again");
    let addresses = run_in(
        &vpc_ns,
        &["ip", "-4", "-o", "addr", "show", "dev", &subnet.bridge],
    );
    assert!(addresses.contains("10.77.16.1/20"), "{addresses}");
    assert!(addresses.contains("10.77.16.2/20"), "{addresses}");

    // The instance's tap as the VMM will find it, on the bridge.
    fabric::ensure_tap(&vpc_ns, &eni.tap, &subnet.bridge).expect("tap");
    let tap = run_in(&vpc_ns, &["ip", "-o", "link", "show", "dev", &eni.tap]);
    assert!(tap.contains(&format!("master {}", subnet.bridge)), "{tap}");

    // A stand-in guest: a veth on the bridge whose far end, with the
    // interface's MAC, is eth0 of a namespace of its own.
    let guest_ns = cleanup.guest_ns.clone();
    netns::ensure(&guest_ns).expect("guest namespace");
    let veth = format!("vg{pid}");
    run_in(
        &vpc_ns,
        &[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "address",
            &eni.mac, "netns", &guest_ns,
        ],
    );
    fabric::attach_to_bridge(&vpc_ns, &veth, &subnet.bridge).expect("veth on the bridge");
    run_in(&guest_ns, &["ip", "link", "set", "eth0", "up"]);

    let hook = write_dhcp_hook(dir.path());
    run_in(
        &guest_ns,
        &[
            "busybox", "udhcpc", "-i", "eth0", "-q", "-n", "-f", "-t", "10", "-T", "1", "-s", &hook,
        ],
    );
    let lease = std::fs::read_to_string(dir.path().join("lease")).expect("a lease");
    for want in [
        "ip=10.77.16.77",
        "mask=20",
        "router=10.77.16.1",
        "dns=10.77.16.2",
        "hostname=ip-10-77-16-77",
        "domain=ec2.internal",
    ] {
        assert!(lease.lines().any(|l| l == want), "no {want} in\n{lease}");
    }

    run_in(
        &guest_ns,
        &["ip", "addr", "add", "10.77.16.77/20", "dev", "eth0"],
    );
    let answer = run_in(
        &guest_ns,
        &[
            "busybox",
            "nslookup",
            "ip-10-77-16-77.ec2.internal",
            "10.77.16.2",
        ],
    );
    assert!(answer.contains("10.77.16.77"), "{answer}");

    let dnsmasq_pid =
        std::fs::read_to_string(dir.path().join(format!("network/{vpc_id}/dnsmasq.pid")))
            .expect("pid file")
            .trim()
            .to_string();
    drop(cleanup);
    assert!(
        !Path::new(&netns::path(&vpc_ns)).exists(),
        "VPC namespace left"
    );
    assert!(
        !Path::new(&netns::path(&guest_ns)).exists(),
        "guest namespace left"
    );
    // Gone, or a zombie until init reaps it (it is not our child).
    let stat = std::fs::read_to_string(format!("/proc/{dnsmasq_pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    assert!(
        matches!(state, None | Some("Z")),
        "dnsmasq {dnsmasq_pid} still runs: {stat}"
    );
    assert!(
        !dir.path().join("network").join(&vpc_id).exists(),
        "state left"
    );
}
