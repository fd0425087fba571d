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

use std::time::{Duration, Instant};

use ec2lab_control::db::{Db, NetworkQuery, NewSecurityGroup, RevokeRequest};
use ec2lab_control::model::security_group::{GroupRef, RuleRequest};
use ec2lab_control::model::vpc::{
    Cidr, GroupIdentifier, NetworkInterface, RuleDirection, RulePeer, SecurityGroup, ANYWHERE,
};
mod common;

use ec2lab_control::network::uplink::Uplink;
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

/// Whether `nft` is here; without it a test skips, unless
/// EC2LAB_REQUIRE_NFT=1 makes that a failure.
fn nft_available(test: &str) -> bool {
    if have("nft") {
        return true;
    }
    assert!(
        std::env::var("EC2LAB_REQUIRE_NFT").as_deref() != Ok("1"),
        "{test}: nft missing and EC2LAB_REQUIRE_NFT=1"
    );
    println!("SKIPPED {test}: nft missing");
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
    let subnet = subnet_plan("0e", "10.77.16.0/20");
    let eni = InterfacePlan {
        eni_id: format!("eni-0e{pid:015x}"),
        subnet_id: subnet.subnet_id.clone(),
        mac: "02:42:ac:1f:10:4d".into(),
        ip: Ipv4Addr::new(10, 77, 16, 77),
        public_ip: None,
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

/// A stand-in instance for the security group test: a namespace whose
/// `eth0` is a veth named like the ENI's tap on the VPC side.
struct Guest {
    ns: String,
    ip: Ipv4Addr,
}

impl Guest {
    fn plug(vpc_ns: &str, bridge: &str, nic: &NetworkInterface, ns: &str) -> Self {
        netns::ensure(ns).expect("guest namespace");
        let tap = network::tap_name(&nic.id);
        run_in(
            vpc_ns,
            &[
                "ip",
                "link",
                "add",
                &tap,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &nic.mac_address,
                "netns",
                ns,
            ],
        );
        fabric::attach_to_bridge(vpc_ns, &tap, bridge).expect("on the bridge");
        let cidr = format!("{}/20", nic.private_ip_address);
        run_in(ns, &["ip", "addr", "add", &cidr, "dev", "eth0"]);
        run_in(ns, &["ip", "link", "set", "eth0", "up"]);
        Self {
            ns: ns.to_string(),
            ip: nic.private_ip_address,
        }
    }

    /// Listens on `port` of its address; accepts (and drops) connections
    /// until the test ends.
    fn listen(&self, port: u16) {
        let address = std::net::SocketAddr::from((self.ip, port));
        let listener = netns::run_in(&self.ns, move || std::net::TcpListener::bind(address))
            .expect("enter")
            .expect("bind");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
    }

    /// Listens on `port` of its address; says `text` to each connection
    /// and closes it.
    fn greet(&self, port: u16, text: &'static str) {
        use std::io::Write;
        let address = std::net::SocketAddr::from((self.ip, port));
        let listener = netns::run_in(&self.ns, move || std::net::TcpListener::bind(address))
            .expect("enter")
            .expect("bind");
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = stream.write_all(text.as_bytes());
            }
        });
    }

    /// Whether a TCP connection to `to:port` completes within a second.
    fn connects(&self, to: Ipv4Addr, port: u16) -> bool {
        let address = std::net::SocketAddr::from((to, port));
        netns::run_in(&self.ns, move || {
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
        })
        .expect("enter")
    }

    /// Whether one ping from `source` (default: its own address) to `to`
    /// is answered within a second.
    fn pings(&self, to: Ipv4Addr, source: Option<Ipv4Addr>) -> bool {
        let mut command = Command::new("ip");
        command.args([
            "netns", "exec", &self.ns, "busybox", "ping", "-c", "1", "-W", "1",
        ]);
        if let Some(source) = source {
            command.args(["-I", &source.to_string()]);
        }
        command
            .arg(to.to_string())
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

/// Removes the namespaces of the security group test.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = netns::remove(ns);
        }
    }
}

#[test]
fn security_groups_filter_traffic_between_interfaces_and_changes_are_live() {
    let test = "network_fabric security groups";
    if !prerequisites(test) || !nft_available(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = std::process::id();
    let db = Db::open_in_memory().expect("db");
    let vpc_id = db
        .list_vpcs(&NetworkQuery::default())
        .expect("vpcs")
        .items
        .into_iter()
        .next()
        .expect("the default VPC")
        .id;
    // Its namespace name must be this test's own: a copy of the default
    // VPC's id would collide with a lab on this host.
    let plan_vpc = format!("vpc-0f{pid:015x}");
    let network = Network::new(dir.path().join("network"), "dnsmasq".into());
    let _vpc = Cleanup {
        network: &network,
        vpc_id: plan_vpc.clone(),
        guest_ns: format!("ec2lab-test-sg-a-{pid}"),
    };
    let _guests = Namespaces(vec![
        format!("ec2lab-test-sg-b-{pid}"),
        format!("ec2lab-test-sg-c-{pid}"),
    ]);
    let subnet = subnet_plan("0f", "10.78.16.0/20");
    let web = db
        .create_security_group(&NewSecurityGroup {
            name: "web".into(),
            description: "web".into(),
            vpc_id: Some(vpc_id.clone()),
            ..NewSecurityGroup::default()
        })
        .expect("group");
    let web_ref = GroupRef::Id(web.id.clone());
    let default = db
        .list_security_groups(&NetworkQuery::default(), &["default".to_string()])
        .expect("default group")
        .items
        .remove(0);
    let nic = |n: u8, group: &ec2lab_control::model::vpc::SecurityGroup| NetworkInterface {
        id: format!("eni-0f{pid:013x}{n:02x}"),
        subnet_id: subnet.subnet_id.clone(),
        vpc_id: vpc_id.clone(),
        availability_zone: "us-east-1a".into(),
        description: String::new(),
        mac_address: format!("02:00:0a:4e:10:{n:02x}"),
        private_ip_address: Ipv4Addr::new(10, 78, 16, n),
        source_dest_check: true,
        public_ip: None,
        elastic_ip: None,
        groups: vec![GroupIdentifier {
            group_id: group.id.clone(),
            group_name: group.name.clone(),
        }],
        attachment: None,
        owner_id: group.owner_id.clone(),
        tags: Default::default(),
    };
    let nics = [nic(10, &web), nic(11, &web), nic(12, &default)];
    let plan = VpcPlan {
        subnets: vec![subnet.clone()],
        interfaces: nics
            .iter()
            .map(|n| InterfacePlan {
                eni_id: n.id.clone(),
                subnet_id: n.subnet_id.clone(),
                mac: n.mac_address.clone(),
                ip: n.private_ip_address,
                public_ip: None,
                tap: network::tap_name(&n.id),
            })
            .collect(),
        ..VpcPlan::new(&plan_vpc)
    };
    network.ensure_vpc(&plan).expect("VPC fabric");
    let apply = || {
        let groups = db
            .list_security_groups(&NetworkQuery::default(), &[])
            .expect("groups")
            .items;
        network
            .apply_rules(&plan.namespace, &groups, &nics)
            .expect("apply")
    };
    apply();
    let a = Guest::plug(&plan.namespace, &subnet.bridge, &nics[0], &_vpc.guest_ns);
    let b = Guest::plug(&plan.namespace, &subnet.bridge, &nics[1], &_guests.0[0]);
    let c = Guest::plug(&plan.namespace, &subnet.bridge, &nics[2], &_guests.0[1]);
    b.listen(22);
    b.listen(8080);

    // EC2's new group: all outbound, nothing inbound; from the router
    // (where `ec2lab ssh` connects from) as from a neighbour.
    let router = Guest {
        ns: plan.namespace.clone(),
        ip: subnet.router(),
    };
    assert!(
        !a.connects(b.ip, 22),
        "inbound allowed with no ingress rule"
    );
    assert!(!router.connects(b.ip, 22), "the router got in with no rule");
    assert!(!a.pings(b.ip, None), "ping allowed with no ingress rule");

    // The VPC's DHCP server answers whatever the groups say.
    let hook = write_dhcp_hook(dir.path());
    run_in(
        &c.ns,
        &[
            "busybox", "udhcpc", "-i", "eth0", "-q", "-n", "-f", "-t", "10", "-T", "1", "-s", &hook,
        ],
    );
    let lease = std::fs::read_to_string(dir.path().join("lease")).expect("a lease");
    assert!(lease.lines().any(|l| l == "ip=10.78.16.12"), "{lease}");

    // tcp/22 from members of the group itself: live at once, and the
    // return traffic of the allowed flow comes back.
    let ssh = RuleRequest {
        ip_protocol: "tcp".into(),
        from_port: Some(22),
        to_port: Some(22),
        peer: RulePeer::Group(web.id.clone()),
        description: Some("ssh from web; flush ruleset".into()),
    };
    db.authorize_security_group_rules(&web_ref, RuleDirection::Ingress, &[ssh])
        .expect("authorize");
    let started = Instant::now();
    apply();
    assert!(a.connects(b.ip, 22), "tcp/22 refused after authorizing it");
    println!(
        "authorize → first accepted connection: {:?}",
        started.elapsed()
    );
    assert!(!a.connects(b.ip, 8080), "a port no rule names is open");
    // Only members of the group the rule names: C is in another group,
    // and the router is in none.
    assert!(!c.connects(b.ip, 22), "a non-member got in");
    assert!(!router.connects(b.ip, 22), "the router got in");
    let web_port = RuleRequest {
        ip_protocol: "tcp".into(),
        from_port: Some(8080),
        to_port: Some(8080),
        peer: RulePeer::Cidr(ANYWHERE),
        description: None,
    };
    db.authorize_security_group_rules(&web_ref, RuleDirection::Ingress, &[web_port])
        .expect("authorize 8080");
    apply();
    assert!(
        router.connects(b.ip, 8080),
        "tcp/8080 from anywhere refused"
    );
    assert!(c.connects(b.ip, 8080), "tcp/8080 from anywhere refused");

    // ICMP echo by type.
    let echo = RuleRequest {
        ip_protocol: "icmp".into(),
        from_port: Some(8),
        to_port: Some(-1),
        peer: RulePeer::Cidr(Cidr::parse("10.78.0.0/16").expect("cidr")),
        description: None,
    };
    db.authorize_security_group_rules(&web_ref, RuleDirection::Ingress, &[echo])
        .expect("authorize icmp");
    apply();
    assert!(a.pings(b.ip, None), "echo refused after authorizing it");
    assert!(c.pings(b.ip, None), "echo from the allowed block refused");

    // Anti-spoofing: A sending from an address that is not its ENI's.
    let spoofed = Ipv4Addr::new(10, 78, 16, 99);
    run_in(
        &a.ns,
        &["ip", "addr", "add", "10.78.16.99/20", "dev", "eth0"],
    );
    assert!(
        !a.pings(b.ip, Some(spoofed)),
        "a spoofed source got through"
    );
    assert!(a.pings(b.ip, None), "the real source is still allowed");

    // Revoking the group's outbound rule cuts A's new connections.
    db.revoke_security_group_rules(
        &web_ref,
        RuleDirection::Egress,
        &RevokeRequest {
            permissions: vec![RuleRequest {
                ip_protocol: "-1".into(),
                from_port: None,
                to_port: None,
                peer: RulePeer::Cidr(ANYWHERE),
                description: None,
            }],
            rule_ids: Vec::new(),
        },
    )
    .expect("revoke egress");
    apply();
    assert!(
        !a.connects(b.ip, 22),
        "outbound allowed after revoking egress"
    );

    // The live ruleset is the rendered one, and names no description.
    let live = Command::new("ip")
        .args(["netns", "exec", &plan.namespace, "nft", "list", "ruleset"])
        .output()
        .expect("nft list");
    let live = String::from_utf8_lossy(&live.stdout);
    assert!(live.contains("table inet ec2lab_sg"), "{live}");
    assert!(!live.contains("flush"), "{live}");
}

#[test]
fn public_addresses_map_one_to_one_through_the_internet_gateway() {
    let test = "network_fabric internet gateway";
    if !prerequisites(test) || !nft_available(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = std::process::id();
    // The test's own "internet": a namespace it makes and removes.
    let internet = format!("ec2lab-test-up-{pid}");
    let _spaces = Namespaces(vec![internet.clone(), format!("ec2lab-test-igw-b-{pid}")]);
    netns::ensure(&internet).expect("uplink namespace");
    let uplink = Uplink {
        namespace: internet.clone(),
        owned: false,
        host: false,
        pool: Cidr::parse("203.0.113.0/24").expect("pool"),
    };
    // Loopback forwards, as the daemon opens them for the host.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let forward_base = common::free_port_range(256);
    let table = dir.path().join("forwards");
    let network = Network::new(dir.path().join("network"), "dnsmasq".into())
        .with_uplink(uplink.clone())
        .with_port_forwards(
            network::forwards::PortForwards::new(
                forward_base,
                uplink.pool,
                &internet,
                table.clone(),
                runtime.handle().clone(),
            )
            .expect("forwards"),
        );
    let vpc_id = format!("vpc-0d{pid:015x}");
    let _vpc = Cleanup {
        network: &network,
        vpc_id: vpc_id.clone(),
        guest_ns: format!("ec2lab-test-igw-a-{pid}"),
    };
    let db = Db::open_in_memory().expect("db");
    let (default, groups) = default_group_open_on_22(&db);
    let subnet = subnet_plan("0d", "10.79.0.0/20");
    let nic = |n: u8, public: Option<Ipv4Addr>| {
        stand_in_nic(&default, &subnet, Ipv4Addr::new(10, 79, 0, n), public)
    };
    let a_public = Ipv4Addr::new(203, 0, 113, 10);
    let b_public = Ipv4Addr::new(203, 0, 113, 11);
    let mut nics = vec![nic(10, Some(a_public)), nic(11, None)];
    let plan = VpcPlan {
        subnets: vec![subnet.clone()],
        ..VpcPlan::new(&vpc_id)
    };
    network
        .ensure_vpc(&plan)
        .expect("VPC fabric with its gateway");
    network
        .apply_rules(&plan.namespace, &groups, &nics)
        .expect("apply");
    let a = Guest::plug(&plan.namespace, &subnet.bridge, &nics[0], &_vpc.guest_ns);
    let b = Guest::plug(&plan.namespace, &subnet.bridge, &nics[1], &_spaces.0[1]);
    for g in [&a, &b] {
        run_in(
            &g.ns,
            &["ip", "route", "add", "default", "via", "10.79.0.1"],
        );
    }
    a.greet(22, "from A");
    b.listen(22);
    let outside = Guest {
        ns: internet.clone(),
        ip: uplink.gateway(),
    };

    // From the internet, A's public address reaches A's port 22 (its
    // group allows it from anywhere); B has no public address.
    assert!(outside.connects(a_public, 22), "A's public address is dead");
    assert!(
        !outside.connects(b_public, 22),
        "an unassigned address answers"
    );
    // The private addresses are not reachable from outside at all.
    assert!(!outside.connects(a.ip, 22), "a private address leaked out");

    // From the host's loopback, through the forward of A's public
    // address: the connection comes out of the uplink, so A's group
    // decides as for anyone on the internet.
    let a_port = forward_base + 10;
    let rows = std::fs::read_to_string(&table).expect("forwards table");
    assert_eq!(
        rows,
        format!("127.0.0.1:{a_port} 203.0.113.10:22 {}\n", nics[0].id),
        "the forwards table"
    );
    assert_eq!(forwarded(a_port), "from A");

    // Outbound, A appears as its public address; B (none) gets nowhere.
    let seen = {
        let address = std::net::SocketAddr::from((uplink.gateway(), 9000));
        let listener = netns::run_in(&internet, move || std::net::TcpListener::bind(address))
            .expect("enter")
            .expect("bind");
        assert!(a.connects(uplink.gateway(), 9000), "A cannot get out");
        let (_, peer) = listener.accept().expect("accept");
        assert!(
            !b.connects(uplink.gateway(), 9000),
            "B got out without a public address"
        );
        peer.ip()
    };
    assert_eq!(
        seen,
        std::net::IpAddr::V4(a_public),
        "A's source was not mapped"
    );

    // The address moves to B with no restart (as an EIP reassociation
    // does): A loses it, B answers at it.
    nics[0].public_ip = None;
    nics[1].public_ip = Some(a_public);
    network
        .apply_rules(&plan.namespace, &groups, &nics)
        .expect("apply after the move");
    assert!(outside.connects(a_public, 22), "the moved address is dead");
    let peer = {
        let address = std::net::SocketAddr::from((uplink.gateway(), 9001));
        let listener = netns::run_in(&internet, move || std::net::TcpListener::bind(address))
            .expect("enter")
            .expect("bind");
        assert!(b.connects(uplink.gateway(), 9001), "B cannot get out");
        assert!(!a.connects(uplink.gateway(), 9001), "A still gets out");
        listener.accept().expect("accept").1.ip()
    };
    assert_eq!(
        peer,
        std::net::IpAddr::V4(a_public),
        "B's source was not mapped"
    );
    let igw = run_in(
        &plan.namespace,
        &["ip", "-4", "-o", "addr", "show", "dev", "igw"],
    );
    assert!(igw.contains("203.0.113.10/32"), "{igw}");

    // A new address in place of the old (an EIP associated, a stopped
    // instance's address gone): the gateway keeps its route throughout.
    let c_public = Ipv4Addr::new(203, 0, 113, 12);
    for set in [None, Some(c_public)] {
        nics[1].public_ip = set;
        network
            .apply_rules(&plan.namespace, &groups, &nics)
            .expect("apply a new address");
    }
    assert!(outside.connects(c_public, 22), "the new address is dead");
    assert!(
        !outside.connects(a_public, 22),
        "the old address still answers"
    );
    // The forwards followed: A's old address has none, B's new one has.
    let rows = std::fs::read_to_string(&table).expect("forwards table");
    assert_eq!(
        rows,
        format!(
            "127.0.0.1:{} 203.0.113.12:22 {}\n",
            forward_base + 12,
            nics[1].id
        ),
        "the forwards table after the move"
    );
    assert!(
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, a_port)).is_err(),
        "the old forward still listens"
    );
    assert_eq!(forwarded(forward_base + 12), "", "B's port 22 says nothing");
    let routes = run_in(&plan.namespace, &["ip", "-4", "route", "show", "default"]);
    assert!(routes.contains("via 203.0.113.1 dev igw"), "{routes}");

    // The hairpin: A, with a public address of its own, reaches B at B's
    // public address from inside the VPC.
    nics[0].public_ip = Some(Ipv4Addr::new(203, 0, 113, 13));
    network
        .apply_rules(&plan.namespace, &groups, &nics)
        .expect("apply");
    assert!(a.connects(c_public, 22), "no hairpin to a public address");

    network.teardown_vpc(&vpc_id).expect("teardown");
    assert_eq!(std::fs::read_to_string(&table).expect("table"), "");
    assert!(
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, forward_base + 12)).is_err(),
        "a forward outlived its VPC"
    );
}

/// What a connection to 127.0.0.1:`port` reads until the far end closes.
fn forwarded(port: u16) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    got
}

/// Subnet `subnet-<tag><pid>` with block `cidr`: each test has its own
/// tag, so tests running at once in this process never share a name.
fn subnet_plan(tag: &str, cidr: &str) -> SubnetPlan {
    let id = format!("subnet-{tag}{:015x}", std::process::id());
    SubnetPlan {
        bridge: bridge_name(&id),
        subnet_id: id,
        cidr: Cidr::parse(cidr).expect("cidr"),
    }
}

/// The in-memory database's default group, opened to tcp/22 from
/// anywhere, and every group with its rules.
fn default_group_open_on_22(db: &Db) -> (SecurityGroup, Vec<SecurityGroup>) {
    let default = db
        .list_security_groups(&NetworkQuery::default(), &["default".to_string()])
        .expect("default group")
        .items
        .remove(0);
    let ssh = RuleRequest {
        ip_protocol: "tcp".into(),
        from_port: Some(22),
        to_port: Some(22),
        peer: RulePeer::Cidr(ANYWHERE),
        description: None,
    };
    db.authorize_security_group_rules(
        &GroupRef::Id(default.id.clone()),
        RuleDirection::Ingress,
        &[ssh],
    )
    .expect("authorize");
    let groups = db
        .list_security_groups(&NetworkQuery::default(), &[])
        .expect("groups")
        .items;
    (default, groups)
}

/// A stand-in instance's interface in `group` on `subnet` at `ip` (its
/// MAC and id made from the address), with public address `public`.
fn stand_in_nic(
    group: &SecurityGroup,
    subnet: &SubnetPlan,
    ip: Ipv4Addr,
    public: Option<Ipv4Addr>,
) -> NetworkInterface {
    let [a, b, c, d] = ip.octets();
    NetworkInterface {
        id: format!("eni-0d{:09x}{b:02x}{c:02x}{d:02x}", std::process::id()),
        subnet_id: subnet.subnet_id.clone(),
        vpc_id: group.vpc_id.clone(),
        availability_zone: "us-east-1a".into(),
        description: String::new(),
        mac_address: format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}"),
        private_ip_address: ip,
        source_dest_check: true,
        public_ip: public,
        elastic_ip: None,
        groups: vec![GroupIdentifier {
            group_id: group.id.clone(),
            group_name: group.name.clone(),
        }],
        attachment: None,
        owner_id: group.owner_id.clone(),
        tags: Default::default(),
    }
}

/// A DNS question for the A record of `name`, as a client sends it.
fn a_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).expect("short label"));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
fn names_outside_the_vpc_go_to_the_upstream_over_udp_and_tcp_and_its_own_names_stay_inside() {
    let test = "network_fabric";
    if !prerequisites(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = common::StandInResolver::start(dir.path());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let pid = std::process::id();
    let vpc_id = format!("vpc-0a{pid:015x}");
    let network = Network::new(dir.path().join("network"), "dnsmasq".into()).with_forwarder(
        network::dns_forward::Forwarder::new(vec![upstream.at], runtime.handle().clone()),
    );
    let cleanup = Cleanup {
        network: &network,
        vpc_id: vpc_id.clone(),
        guest_ns: format!("ec2lab-test-dns-{pid}"),
    };
    let subnet = subnet_plan("0a", "10.78.16.0/20");
    let plan = VpcPlan {
        subnets: vec![subnet.clone()],
        interfaces: vec![InterfacePlan {
            eni_id: format!("eni-0a{pid:015x}"),
            subnet_id: subnet.subnet_id.clone(),
            mac: "02:42:ac:1f:10:4e".into(),
            ip: Ipv4Addr::new(10, 78, 16, 9),
            public_ip: None,
            tap: network::tap_name(&format!("eni-0a{pid:015x}")),
        }],
        ..VpcPlan::new(&vpc_id)
    };
    let vpc_ns = plan.namespace.clone();
    network.ensure_vpc(&plan).expect("VPC fabric");
    network.ensure_vpc(&plan).expect("again: the relay is kept");
    let forwarder = network.forwarder().expect("a forwarder");
    assert!(forwarder.relays(&vpc_ns));

    let guest_ns = cleanup.guest_ns.clone();
    netns::ensure(&guest_ns).expect("guest namespace");
    let veth = format!("vd{pid}");
    run_in(
        &vpc_ns,
        &[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &guest_ns,
        ],
    );
    fabric::attach_to_bridge(&vpc_ns, &veth, &subnet.bridge).expect("veth on the bridge");
    run_in(
        &guest_ns,
        &["ip", "addr", "add", "10.78.16.9/20", "dev", "eth0"],
    );
    run_in(&guest_ns, &["ip", "link", "set", "eth0", "up"]);

    // Over UDP, as a guest's resolver asks.
    let outside = run_in(
        &guest_ns,
        &[
            "busybox",
            "nslookup",
            "-type=a",
            "www.example.test",
            "10.78.16.2",
        ],
    );
    assert!(outside.contains("192.0.2.44"), "{outside}");
    let inside = run_in(
        &guest_ns,
        &[
            "busybox",
            "nslookup",
            "-type=a",
            "ip-10-78-16-9.ec2.internal",
            "10.78.16.2",
        ],
    );
    assert!(inside.contains("10.78.16.9"), "{inside}");
    // A name of the VPC's domain that does not exist is not asked outside.
    let _ = Command::new("ip")
        .args(["netns", "exec", &guest_ns, "busybox", "nslookup"])
        .args(["ip-10-78-16-99.ec2.internal", "10.78.16.2"])
        .output();
    let asked = upstream.asked();
    assert!(asked.contains("www.example.test"), "{asked}");
    assert!(!asked.contains("ec2.internal"), "{asked}");

    // Over TCP (what a truncated answer makes a resolver do): dnsmasq
    // takes it over TCP to the relay, which pipes it to the upstream.
    let query = a_query("www.example.test");
    let answer = netns::run_in(&guest_ns, move || -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Write};
        let at = std::net::SocketAddr::from((Ipv4Addr::new(10, 78, 16, 2), 53));
        let mut s = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let len = u16::try_from(query.len()).expect("short").to_be_bytes();
        s.write_all(&[&len[..], &query].concat())?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut answer)?;
        Ok(answer)
    })
    .expect("enter")
    .expect("a TCP answer");
    assert_eq!(&answer[..2], &[0x12, 0x34], "the question's id");
    assert!(
        answer.windows(4).any(|w| w == [192, 0, 2, 44]),
        "no 192.0.2.44 in {answer:?}"
    );

    drop(cleanup);
    assert!(!forwarder.relays(&vpc_ns), "relay left after teardown");
    assert!(
        !Path::new(&netns::path(&vpc_ns)).exists(),
        "VPC namespace left"
    );
}

#[test]
fn with_uplink_host_the_host_routes_the_pool_and_masquerades_it_out() {
    let test = "network_fabric uplink host";
    if !prerequisites(test) || !nft_available(test) {
        return;
    }
    let pid = std::process::id();
    // A namespace standing for the host the daemon runs on, and one beyond
    // it standing for the network the host reaches (its LAN, the
    // internet): the host's real interfaces, routes and firewall are
    // never touched.
    let host = format!("ec2lab-test-host-{pid}");
    let beyond = format!("ec2lab-test-beyond-{pid}");
    let _spaces = Namespaces(vec![host.clone(), beyond.clone()]);
    for ns in [&host, &beyond] {
        netns::ensure(ns).expect("namespace");
    }
    run_in(
        &host,
        &[
            "ip", "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", &beyond,
        ],
    );
    for (ns, link, cidr) in [
        (&host, "out0", "192.0.2.1/24"),
        (&beyond, "eth0", "192.0.2.2/24"),
    ] {
        run_in(ns, &["ip", "addr", "add", cidr, "dev", link]);
        run_in(ns, &["ip", "link", "set", link, "up"]);
    }
    // The daemon's side runs on a thread inside the stand-in host, as
    // `ec2lab serve --uplink host` would run there.
    let (inside, far) = (host.clone(), beyond.clone());
    let body = std::thread::spawn(move || {
        netns::enter(&inside, &netns::open(&inside).expect("open")).expect("enter");
        uplink_host_body(&inside, &far);
    })
    .join();
    if let Err(panic) = body {
        std::panic::resume_unwind(panic);
    }
}

/// [`with_uplink_host_the_host_routes_the_pool_and_masquerades_it_out`],
/// on a thread inside namespace `host`.
fn uplink_host_body(host: &str, beyond: &str) {
    let pid = std::process::id();
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("ec2lab-test-hn-{pid}");
    // The name is only a name, but a failed run must not leave it.
    let _name = Namespaces(vec![name.clone()]);
    let pool = Cidr::parse("203.0.113.0/24").expect("pool");
    let network = Network::new(dir.path().join("network"), "dnsmasq".into())
        .with_uplink(Uplink::host(&name, pool));
    let vpc_id = format!("vpc-0c{pid:015x}");
    let cleanup = Cleanup {
        network: &network,
        vpc_id: vpc_id.clone(),
        guest_ns: format!("ec2lab-test-hg-{pid}"),
    };
    let db = Db::open_in_memory().expect("db");
    let (default, groups) = default_group_open_on_22(&db);
    let subnet = subnet_plan("0c", "10.80.0.0/20");
    let a_public = Ipv4Addr::new(203, 0, 113, 10);
    let nics = vec![stand_in_nic(
        &default,
        &subnet,
        Ipv4Addr::new(10, 80, 0, 10),
        Some(a_public),
    )];
    let plan = VpcPlan {
        subnets: vec![subnet.clone()],
        ..VpcPlan::new(&vpc_id)
    };
    network.ensure_vpc(&plan).expect("VPC with a host uplink");
    network
        .apply_rules(&plan.namespace, &groups, &nics)
        .expect("apply");
    assert!(netns::exists(&name), "the host's namespace has no name");
    let a = Guest::plug(&plan.namespace, &subnet.bridge, &nics[0], &cleanup.guest_ns);
    run_in(
        &a.ns,
        &["ip", "route", "add", "default", "via", "10.80.0.1"],
    );
    a.listen(22);

    // The host routes the pool: its own namespace reaches A's public
    // address directly (no forward, no `ip netns exec`).
    let routes = run_in(host, &["ip", "-4", "route", "show", "203.0.113.0/24"]);
    assert!(routes.contains("dev inet0"), "{routes}");
    let from_host = Guest {
        ns: host.to_string(),
        ip: Ipv4Addr::new(203, 0, 113, 1),
    };
    // A few tries of a second each, as a TCP client retransmits: the
    // first SYN can wait out the host's ARP for the address published a
    // moment ago.
    assert!(
        (0..5).any(|_| from_host.connects(a_public, 22)),
        "the host cannot reach A"
    );

    // Out: A reaches what the host reaches, as the host (masqueraded).
    let seen = {
        let at = std::net::SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 9000));
        let listener = netns::run_in(beyond, move || std::net::TcpListener::bind(at))
            .expect("enter")
            .expect("bind");
        assert!(
            a.connects(Ipv4Addr::new(192, 0, 2, 2), 9000),
            "A cannot get out"
        );
        listener.accept().expect("accept").1.ip()
    };
    assert_eq!(
        seen,
        std::net::IpAddr::from([192, 0, 2, 1]),
        "not masqueraded"
    );
    let forwarding = run_in(host, &["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(forwarding.trim(), "1");

    // Gone with the last VPC: the bridge, the NAT table and the name.
    drop(cleanup);
    network.teardown_uplink().expect("uplink teardown");
    let links = run_in(host, &["ip", "-o", "link", "show"]);
    assert!(!links.contains("inet0"), "{links}");
    let tables = run_in(host, &["nft", "list", "tables"]);
    assert!(!tables.contains("ec2lab_uplink"), "{tables}");
    assert!(!netns::exists(&name), "the name is left");
}
