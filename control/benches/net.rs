//! `scripts/bench net`: the VPC data plane beside a plain veth path, in one
//! run (needs root and nft; every namespace is the bench's own and removed
//! at the end; no traffic leaves them).
//!
//! Two stand-in instances (namespaces whose eth0 is a veth on the subnet
//! bridge, named like taps so the rules apply to them) talk through the
//! VPC router's bridge with 0, 100 and 1,000 security group rules; the
//! baseline is the same client and server between two namespaces joined by
//! one veth pair. A third path comes from the uplink (the lab's internet)
//! to B's public address, through the VPC's internet gateway and its 1:1
//! NAT. Reported: TCP throughput (one stream, 2 s), connections per second
//! (connect + close, 2 s), the time from a rule change to the first
//! accepted connection, the time to apply a VPC's ruleset, and what a
//! launch spends on the network (a VPC with its gateway, a tap).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use ec2lab_control::db::{Db, NetworkQuery, NewSecurityGroup};
use ec2lab_control::model::security_group::{GroupRef, RuleRequest};
use ec2lab_control::model::vpc::{
    Cidr, GroupIdentifier, NetworkInterface, RuleDirection, RulePeer, SecurityGroup,
};
use ec2lab_control::network::uplink::Uplink;
use ec2lab_control::network::{self, bridge_name, fabric, netns, Network, SubnetPlan, VpcPlan};

const PORT: u16 = 5201;
const RUN: Duration = Duration::from_secs(2);

fn ip(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "{ns}: {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server in `ns` on `addr`: sinks every byte of each connection.
fn serve(ns: &str, addr: Ipv4Addr) {
    let at = SocketAddr::from((addr, PORT));
    let listener = netns::run_in(ns, move || TcpListener::bind(at))
        .expect("enter")
        .expect("bind");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = vec![0u8; 1 << 16];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
}

/// MiB/s of one stream and connections/s from `ns` to `to`.
fn measure(ns: &str, to: Ipv4Addr) -> (f64, f64) {
    let at = SocketAddr::from((to, PORT));
    netns::run_in(ns, move || {
        let mut stream = TcpStream::connect_timeout(&at, Duration::from_secs(2)).expect("connect");
        let buf = vec![0x5au8; 1 << 16];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < RUN {
            stream.write_all(&buf).expect("write");
            sent += buf.len() as u64;
        }
        let mib = sent as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64();
        drop(stream);
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < RUN {
            drop(TcpStream::connect_timeout(&at, Duration::from_secs(2)).expect("connect"));
            n += 1;
        }
        (mib, n as f64 / start.elapsed().as_secs_f64())
    })
    .expect("enter")
}

fn connects(ns: &str, to: Ipv4Addr) -> bool {
    let at = SocketAddr::from((to, PORT));
    netns::run_in(ns, move || {
        TcpStream::connect_timeout(&at, Duration::from_millis(100)).is_ok()
    })
    .expect("enter")
}

/// Removes everything the bench made, even when it fails half-way.
struct Cleanup<'a> {
    namespaces: Vec<String>,
    network: &'a Network,
    vpc: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.network.teardown_vpc(&self.vpc);
        for ns in &self.namespaces {
            let _ = netns::remove(ns);
        }
    }
}

fn rule(port: u16, peer: RulePeer) -> RuleRequest {
    RuleRequest {
        ip_protocol: "tcp".into(),
        from_port: Some(i64::from(port)),
        to_port: Some(i64::from(port)),
        peer,
        description: None,
    }
}

fn main() {
    let pid = std::process::id();
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_ns, b_ns, p_ns, q_ns, u_ns) = (
        format!("ec2lab-bench-a-{pid}"),
        format!("ec2lab-bench-b-{pid}"),
        format!("ec2lab-bench-p-{pid}"),
        format!("ec2lab-bench-q-{pid}"),
        format!("ec2lab-bench-u-{pid}"),
    );
    let vpc = format!("vpc-0b{pid:015x}");
    // The bench's own internet.
    netns::ensure(&u_ns).expect("uplink namespace");
    let uplink = Uplink {
        namespace: u_ns.clone(),
        owned: false,
        host: false,
        pool: Cidr::parse("203.0.113.0/24").expect("pool"),
    };
    let network =
        Network::new(dir.path().join("network"), "dnsmasq".into()).with_uplink(uplink.clone());
    let cleanup = Cleanup {
        namespaces: vec![
            a_ns.clone(),
            b_ns.clone(),
            p_ns.clone(),
            q_ns.clone(),
            u_ns.clone(),
        ],
        network: &network,
        vpc: vpc.clone(),
    };

    // Baseline: P and Q joined by one veth pair.
    for ns in [&p_ns, &q_ns] {
        netns::ensure(ns).expect("namespace");
    }
    ip(
        &p_ns,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &q_ns,
        ],
    );
    for (ns, addr) in [(&p_ns, "10.99.0.1/24"), (&q_ns, "10.99.0.2/24")] {
        ip(ns, &["ip", "addr", "add", addr, "dev", "eth0"]);
        ip(ns, &["ip", "link", "set", "eth0", "up"]);
    }
    let q_ip = Ipv4Addr::new(10, 99, 0, 2);
    serve(&q_ns, q_ip);
    let (base_mib, base_cps) = measure(&p_ns, q_ip);

    // The VPC path: A and B on a subnet bridge in a VPC namespace.
    let db = Db::open_in_memory().expect("db");
    let subnet = SubnetPlan {
        subnet_id: format!("subnet-0b{pid:015x}"),
        cidr: Cidr::parse("10.98.0.0/20").expect("cidr"),
        bridge: bridge_name(&format!("subnet-0b{pid:015x}")),
    };
    let plan = VpcPlan {
        subnets: vec![subnet.clone()],
        ..VpcPlan::new(&vpc)
    };
    let started = Instant::now();
    network.ensure_vpc(&plan).expect("VPC fabric");
    let build_vpc = started.elapsed();
    // A launch's own part: its tap on the bridge (the ruleset is timed
    // below). This one is a spare, removed at once.
    let started = Instant::now();
    fabric::ensure_tap(&plan.namespace, "tapbench", &subnet.bridge).expect("tap");
    let build_tap = started.elapsed();
    fabric::remove_link(&plan.namespace, "tapbench").expect("remove tap");
    let group = db
        .create_security_group(&NewSecurityGroup {
            name: "bench".into(),
            description: "bench".into(),
            ..NewSecurityGroup::default()
        })
        .expect("group");
    let groups = |db: &Db| -> Vec<SecurityGroup> {
        db.list_security_groups(&NetworkQuery::default(), &[])
            .expect("groups")
            .items
    };
    let nic = |n: u8| NetworkInterface {
        id: format!("eni-0b{pid:013x}{n:02x}"),
        subnet_id: subnet.subnet_id.clone(),
        vpc_id: group.vpc_id.clone(),
        availability_zone: "us-east-1a".into(),
        description: String::new(),
        mac_address: format!("02:00:0a:62:00:{n:02x}"),
        private_ip_address: Ipv4Addr::new(10, 98, 0, n),
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
    let b_public = Ipv4Addr::new(203, 0, 113, 11);
    let mut nics = [nic(10), nic(11)];
    nics[1].public_ip = Some(b_public);
    for (ns, n) in [(&a_ns, &nics[0]), (&b_ns, &nics[1])] {
        netns::ensure(ns).expect("namespace");
        let tap = network::tap_name(&n.id);
        ip(
            &plan.namespace,
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
                &n.mac_address,
                "netns",
                ns,
            ],
        );
        fabric::attach_to_bridge(&plan.namespace, &tap, &subnet.bridge).expect("bridge");
        ip(
            ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/20", n.private_ip_address),
                "dev",
                "eth0",
            ],
        );
        ip(ns, &["ip", "link", "set", "eth0", "up"]);
        ip(ns, &["ip", "route", "add", "default", "via", "10.98.0.1"]);
    }
    let b_ip = nics[1].private_ip_address;
    serve(&b_ns, b_ip);
    let web = GroupRef::Id(group.id.clone());
    db.authorize_security_group_rules(
        &web,
        RuleDirection::Ingress,
        &[
            rule(PORT, RulePeer::Group(group.id.clone())),
            // The uplink's own address (the far side of the gateway).
            rule(
                PORT,
                RulePeer::Cidr(Cidr::parse("203.0.113.1/32").expect("cidr")),
            ),
        ],
    )
    .expect("authorize");
    // Filler groups of FILL rules each (EC2 allows 60 per direction), rules
    // that never match (other ports, another block): B wears up to four of
    // them (its SYNs meet those rules), and stand-in interfaces without
    // traffic wear the rest, so the VPC's ruleset has them all.
    const FILL: u16 = 50;
    let mut filler_groups: Vec<GroupIdentifier> = Vec::new();
    let mut nics = nics.to_vec();
    let mut rows = Vec::new();
    for extra in [0u16, 100, 1000] {
        while (filler_groups.len() as u16) * FILL < extra {
            let n = filler_groups.len() as u16;
            let g = db
                .create_security_group(&NewSecurityGroup {
                    name: format!("filler-{n}"),
                    description: "rules that never match".into(),
                    ..NewSecurityGroup::default()
                })
                .expect("filler group");
            let rules: Vec<RuleRequest> = (0..FILL)
                .map(|i| {
                    rule(
                        10_000 + n * FILL + i,
                        RulePeer::Cidr(Cidr::parse("192.0.2.0/24").expect("cidr")),
                    )
                })
                .collect();
            db.authorize_security_group_rules(
                &GroupRef::Id(g.id.clone()),
                RuleDirection::Ingress,
                &rules,
            )
            .expect("filler rules");
            filler_groups.push(GroupIdentifier {
                group_id: g.id,
                group_name: g.name,
            });
        }
        // B: the bench's group after up to four fillers (the worst case for
        // its SYNs); the rest on stand-ins, five groups each.
        nics.truncate(2);
        let on_b = filler_groups.len().min(4);
        nics[1].groups = filler_groups[..on_b].to_vec();
        nics[1].groups.push(GroupIdentifier {
            group_id: group.id.clone(),
            group_name: group.name.clone(),
        });
        for (k, chunk) in filler_groups[on_b..].chunks(5).enumerate() {
            let mut stand_in = nic(20 + k as u8);
            stand_in.groups = chunk.to_vec();
            nics.push(stand_in);
        }
        let started = Instant::now();
        let text = network
            .apply_rules(&plan.namespace, &groups(&db), &nics)
            .expect("apply");
        let apply = started.elapsed();
        let mut live = None;
        while started.elapsed() < Duration::from_secs(5) {
            if connects(&a_ns, b_ip) {
                live = Some(started.elapsed());
                break;
            }
        }
        let (mib, cps) = measure(&a_ns, b_ip);
        let (up_mib, up_cps) = measure(&u_ns, b_public);
        let on_chain = on_b * usize::from(FILL) + 1;
        rows.push((
            text.lines().count(),
            on_chain,
            (mib, cps),
            (up_mib, up_cps),
            apply,
            live,
        ));
    }

    println!(
        "machine: {}, {} CPUs, kernel {}",
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string()))
            .unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "A launch's networking: the VPC (namespace, bridge, dnsmasq, internet \
         gateway) built in {build_vpc:.1?} when it is the VPC's first instance; its tap in \
         {build_tap:.1?}; its ruleset applied in the time of the apply column.\n"
    );
    println!("| path | ruleset lines | rules before B's | MiB/s (1 stream) | × veth | connections/s | × veth | apply ruleset | change → first accepted SYN |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| veth pair (baseline) | – | – | {base_mib:.0} | 1.00 | {base_cps:.0} | 1.00 | – | – |"
    );
    for (lines, on_chain, (mib, cps), _, apply, live) in &rows {
        println!(
            "| A → B, VPC bridge + nft | {lines} | {} | {mib:.0} | {:.2} | {cps:.0} | {:.2} | {apply:.1?} | {} |",
            on_chain - 1,
            mib / base_mib,
            cps / base_cps,
            live.map_or("never".to_string(), |d| format!("{d:.1?}")),
        );
    }
    for (lines, on_chain, _, (mib, cps), _, _) in &rows {
        println!(
            "| uplink → B's public address, gateway 1:1 NAT + nft | {lines} | {} | {mib:.0} | {:.2} | {cps:.0} | {:.2} | – | – |",
            on_chain - 1,
            mib / base_mib,
            cps / base_cps,
        );
    }
    drop(cleanup);
}
