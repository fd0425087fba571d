//! Security groups as nftables rules: one VPC's ruleset, rendered from
//! the stored groups and the interfaces that have a tap, as text for one
//! `nft -f` (applied atomically by the fabric in the VPC's namespace).
//!
//! Two tables, because of what this kernel can do (DESIGN.md,
//! "Networking"): the bridge family has no conntrack here, so stateful
//! filtering happens in an `inet` forward chain that bridged traffic
//! reaches through br_netfilter. But there, `iifname`/`oifname` are the
//! *bridge*, not the tap (measured: a bridged packet from `tapa` matched
//! `iifname "br0"` and never `iifname "tapa"`). So:
//!
//! - `table bridge ec2lab_ports`, prerouting: the one place that sees
//!   which tap a frame came in on. Per tap, a `port_<tap>` chain stamps the
//!   port's number into the low 16 bits of the packet mark (upper bits are
//!   left to the fabric) and drops spoofed frames: only the ENI's MAC, and
//!   unless source/dest check is off, only its IPv4 address (plus the DHCP
//!   discover from 0.0.0.0), leave the tap; ARP must tell the truth the
//!   same way; IPv6 is dropped (the lab's VPCs are IPv4 only).
//! - `table inet ec2lab_sg`, forward: `ct state established,related
//!   accept`, then the sender's `egress_<tap>` chain by mark (allowed
//!   traffic `return`s, the rest is dropped), then the receiver's
//!   `ingress_<tap>` chain by destination address (routed traffic reaches
//!   a tap only after the bridge's own lookup, so the address is the one
//!   key that works for bridged and routed packets alike; it is unique in
//!   the VPC). Allowed traffic is accepted; everything else is dropped:
//!   default deny inbound, and outbound only what egress rules allow.
//!   A group named by a rule is a set of its members' private addresses.
//!
//! Nothing a user typed reaches the text except through a parser that
//! re-renders it: addresses, CIDRs, MACs and ports are printed from typed
//! values, protocols from [`Protocol`], group ids and tap names are
//! checked against strict alphabets; group names and rule descriptions
//! are never printed. A test proves it with hostile names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::model::ids::{self, IdKind};
use crate::model::security_group::Protocol;
use crate::model::vpc::{
    Cidr, NetworkInterface, RuleDirection, RulePeer, SecurityGroup, SecurityGroupRule, ANYWHERE,
};

/// The bridge-family table: port marks and anti-spoofing.
pub const BRIDGE_TABLE: &str = "ec2lab_ports";
/// The inet table: the stateful security group rules.
pub const INET_TABLE: &str = "ec2lab_sg";
/// The mark bits that carry a port's number (1-based; 0 is "not from an
/// ENI"). The fabric may use the others.
pub const PORT_MARK_MASK: u32 = 0x0000_ffff;

/// Why a ruleset could not be rendered. Every case is a caller's or a
/// store's bug, never user input that could be escaped instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// Tap names become chain names: 1 to 15 of `a-zA-Z0-9_`, starting
    /// with a letter.
    #[error("tap name {0:?} is not a plain interface name")]
    BadTap(String),
    #[error("tap {0:?} is given twice")]
    DuplicateTap(String),
    #[error("address {0} is on two interfaces")]
    DuplicateAddress(Ipv4Addr),
    #[error("MAC address {0:?} of {1} is not six hex octets")]
    BadMac(String, String),
    #[error("security group id {0:?} is malformed")]
    BadGroupId(String),
    #[error("rule of {group} has protocol {protocol:?}, which ec2lab does not store")]
    BadProtocol { group: String, protocol: String },
    /// More ports than the mark bits can number.
    #[error("{0} ports are more than the {PORT_MARK_MASK} a VPC can mark")]
    TooManyPorts(usize),
}

/// One ENI with a tap on its subnet's bridge.
#[derive(Debug, Clone, Copy)]
pub struct Port<'a> {
    pub tap: &'a str,
    pub interface: &'a NetworkInterface,
}

/// The ruleset for one VPC: `groups` are the VPC's security groups (with
/// their rules), `ports` its interfaces that have a tap. The text replaces
/// both tables atomically when given to `nft -f`.
pub fn render(groups: &[SecurityGroup], ports: &[Port<'_>]) -> Result<String, RulesError> {
    let ports = checked_ports(ports)?;
    if ports.len() > PORT_MARK_MASK as usize {
        return Err(RulesError::TooManyPorts(ports.len()));
    }
    let by_id: BTreeMap<&str, &SecurityGroup> = groups.iter().map(|g| (g.id.as_str(), g)).collect();
    for id in by_id.keys() {
        set_name(id)?;
    }
    // The members of every group, by private address.
    let mut members: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for port in &ports {
        for g in &port.interface.groups {
            members
                .entry(set_name(&g.group_id)?)
                .or_default()
                .insert(port.interface.private_ip_address);
        }
    }
    let mut out = String::new();
    // `table x` then `delete table x`: create-if-missing then remove, so
    // the file replaces whatever is there in one transaction.
    for (family, table) in [("bridge", BRIDGE_TABLE), ("inet", INET_TABLE)] {
        let _ = writeln!(out, "table {family} {table}\ndelete table {family} {table}");
    }
    render_bridge_table(&mut out, &ports);
    // Each port's rules, and the groups those rules name.
    let mut chains = String::new();
    let mut referenced = BTreeSet::new();
    for port in &ports {
        let rules: Vec<(&str, &SecurityGroupRule)> = port
            .interface
            .groups
            .iter()
            .filter_map(|g| by_id.get(g.group_id.as_str()))
            .flat_map(|g| g.rules.iter().map(|r| (g.id.as_str(), &r.rule)))
            .collect();
        for direction in [RuleDirection::Egress, RuleDirection::Ingress] {
            let (chain, verdict) = match direction {
                RuleDirection::Egress => ("egress", "return"),
                RuleDirection::Ingress => ("ingress", "accept"),
            };
            let _ = writeln!(chains, "\tchain {chain}_{} {{", port.tap);
            let mut seen = BTreeSet::new();
            for (group, rule) in rules.iter().filter(|(_, r)| r.direction == direction) {
                if let RulePeer::Group(id) = &rule.peer {
                    referenced.insert(set_name(id)?);
                }
                let line = rule_match(group, rule)?;
                // Two groups may hold the same rule; say it once.
                if seen.insert(line.clone()) {
                    let _ = writeln!(chains, "\t\t{line} {verdict}");
                }
            }
            let _ = writeln!(chains, "\t\tdrop\n\t}}");
        }
    }
    let _ = writeln!(out, "table inet {INET_TABLE} {{");
    for set in &referenced {
        let _ = write!(out, "\tset {set} {{\n\t\ttype ipv4_addr\n");
        if let Some(ips) = members.get(set).filter(|m| !m.is_empty()) {
            let list: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
        }
        let _ = writeln!(out, "\t}}");
    }
    // The receiver's chain by its address; the sender's by its port mark.
    let ingress = ports
        .iter()
        .map(|p| {
            format!(
                "{} : jump ingress_{}",
                p.interface.private_ip_address, p.tap
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let egress = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{} : jump egress_{}", mark(i), p.tap))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = write!(
        out,
        "\tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n"
    );
    if !ports.is_empty() {
        let _ = writeln!(
            out,
            "\t\tmeta mark and {PORT_MARK_MASK:#010x} vmap {{ {egress} }}"
        );
        let _ = writeln!(out, "\t\tip daddr vmap {{ {ingress} }}");
    }
    let _ = writeln!(out, "\t}}");
    // What the router itself sends (`ec2lab ssh`, the loopback forwards)
    // meets the same ingress rules; only its DHCP answers pass regardless,
    // as the Amazon-provided DHCP and DNS do in EC2.
    let _ = write!(
        out,
        "\tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tudp sport 67 udp dport 68 accept\n"
    );
    if !ports.is_empty() {
        let _ = writeln!(out, "\t\tip daddr vmap {{ {ingress} }}");
    }
    let _ = writeln!(out, "\t}}");
    out.push_str(&chains);
    let _ = writeln!(out, "}}");
    Ok(out)
}

/// The NAT table: its name.
pub const NAT_TABLE: &str = "ec2lab_nat";

/// The internet gateway's half of a VPC's ruleset: 1:1 NAT between each
/// `(private, public)` pair for traffic through `igw` (the public address
/// in, the private one inside), and nothing else through `igw`: an
/// instance without a public address has no route to the internet, as in
/// EC2, and its private address never leaves the VPC. Replaces the table
/// atomically like [`render`]; appended to its text, one transaction.
pub fn render_nat(igw: &str, pairs: &[(Ipv4Addr, Ipv4Addr)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}");
    let _ = writeln!(out, "table ip {NAT_TABLE} {{");
    let inward: Vec<String> = pairs.iter().map(|(p, q)| format!("{q} : {p}")).collect();
    let outward: Vec<String> = pairs.iter().map(|(p, q)| format!("{p} : {q}")).collect();
    let _ = writeln!(
        out,
        "\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;"
    );
    let publics: Vec<String> = pairs.iter().map(|(_, q)| q.to_string()).collect();
    let privates: Vec<String> = pairs.iter().map(|(p, _)| p.to_string()).collect();
    if !pairs.is_empty() {
        // From the uplink, and from inside the VPC (one instance reaching
        // another at its public address, as through EC2's gateway).
        let _ = writeln!(
            out,
            "\t\tip daddr {{ {} }} dnat to ip daddr map {{ {} }}",
            publics.join(", "),
            inward.join(", ")
        );
    }
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(
        out,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    if !pairs.is_empty() {
        let _ = writeln!(
            out,
            "\t\toifname \"{igw}\" snat to ip saddr map {{ {} }}",
            outward.join(", ")
        );
        // The hairpin: the receiver sees the sender's public address, and
        // its replies come back through the router to be translated.
        let _ = writeln!(
            out,
            "\t\toifname != \"{igw}\" ct status dnat ip saddr {{ {} }} snat to ip saddr map {{ {} }}",
            privates.join(", "),
            outward.join(", ")
        );
    }
    let _ = writeln!(out, "\t}}");
    // Forwarded traffic out of the gateway must come from an address that
    // has a public one (checked before NAT: the source is still private).
    let _ = writeln!(
        out,
        "\tchain forward {{\n\t\ttype filter hook forward priority filter - 10; policy accept;"
    );
    if pairs.is_empty() {
        let _ = writeln!(out, "\t\toifname \"{igw}\" drop");
    } else {
        let _ = writeln!(
            out,
            "\t\toifname \"{igw}\" ip saddr != {{ {} }} drop",
            privates.join(", ")
        );
    }
    let _ = writeln!(out, "\t}}\n}}");
    out
}

/// The table of the host's outbound NAT with `--uplink host`.
pub const HOST_UPLINK_TABLE: &str = "ec2lab_uplink";

/// With `--uplink host`, the host's half: what comes from the public
/// `pool` and leaves by any link but the uplink's `bridge` is masqueraded
/// to the host's own address there, so instances reach what the host
/// reaches and answers find their way back. Nothing else: the host's own
/// firewall still decides what is forwarded (one that drops forwarded
/// traffic must be told to let the pool through). Replaces the table
/// atomically like [`render`].
pub fn render_host_uplink(pool: Cidr, bridge: &str) -> String {
    format!(
        "table ip {HOST_UPLINK_TABLE}\ndelete table ip {HOST_UPLINK_TABLE}\n\
         table ip {HOST_UPLINK_TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pool} oifname != \"{bridge}\" masquerade\n\
         \t}}\n}}\n"
    )
}

/// Removes what [`render_host_uplink`] made (nothing if it is not there).
pub fn remove_host_uplink() -> String {
    format!("table ip {HOST_UPLINK_TABLE}\ndelete table ip {HOST_UPLINK_TABLE}\n")
}

fn mark(index: usize) -> String {
    format!("{:#010x}", index + 1)
}

fn render_bridge_table(out: &mut String, ports: &[Port<'_>]) {
    let _ = write!(
        out,
        "table bridge {BRIDGE_TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority -200; policy accept;\n"
    );
    if !ports.is_empty() {
        let jumps: Vec<String> = ports
            .iter()
            .map(|p| format!("\"{}\" : jump port_{}", p.tap, p.tap))
            .collect();
        let _ = writeln!(out, "\t\tiifname vmap {{ {} }}", jumps.join(", "));
    }
    let _ = writeln!(out, "\t}}");
    for (i, port) in ports.iter().enumerate() {
        let nic = port.interface;
        // Checked by `checked_ports`; re-rendered from the parsed octets.
        let mac = nic.mac_address.to_ascii_lowercase();
        let ip = nic.private_ip_address;
        let _ = writeln!(out, "\tchain port_{} {{", port.tap);
        let _ = writeln!(
            out,
            "\t\tmeta mark set meta mark and {:#010x} or {}",
            !PORT_MARK_MASK,
            mark(i)
        );
        let _ = writeln!(out, "\t\tether saddr != {mac} drop");
        let _ = writeln!(out, "\t\tmeta protocol ip6 drop");
        let _ = writeln!(out, "\t\tmeta protocol arp arp saddr ether != {mac} drop");
        if nic.source_dest_check {
            let _ = writeln!(
                out,
                "\t\tmeta protocol arp arp saddr ip != {{ {ip}, 0.0.0.0 }} drop"
            );
            let _ = writeln!(
                out,
                "\t\tmeta protocol ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp dport 67 accept"
            );
            let _ = writeln!(out, "\t\tmeta protocol ip ip saddr != {ip} drop");
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
}

/// `ports` sorted by tap, each checked: a plain tap name, a real MAC, no
/// tap or address twice.
fn checked_ports<'a>(ports: &[Port<'a>]) -> Result<Vec<Port<'a>>, RulesError> {
    let mut sorted = ports.to_vec();
    sorted.sort_by(|a, b| a.tap.cmp(b.tap));
    let mut addresses = BTreeSet::new();
    for (i, port) in sorted.iter().enumerate() {
        let tap = port.tap;
        let plain = (1..=15).contains(&tap.len())
            && tap.starts_with(|c: char| c.is_ascii_alphabetic())
            && tap.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            return Err(RulesError::BadTap(tap.to_string()));
        }
        if i > 0 && sorted[i - 1].tap == tap {
            return Err(RulesError::DuplicateTap(tap.to_string()));
        }
        let nic = port.interface;
        let octets: Vec<&str> = nic.mac_address.split(':').collect();
        let mac_ok = octets.len() == 6
            && octets
                .iter()
                .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
        if !mac_ok {
            return Err(RulesError::BadMac(nic.mac_address.clone(), nic.id.clone()));
        }
        if !addresses.insert(nic.private_ip_address) {
            return Err(RulesError::DuplicateAddress(nic.private_ip_address));
        }
        for g in &nic.groups {
            set_name(&g.group_id)?;
        }
    }
    Ok(sorted)
}

/// `sg_<hex>`: the set of a group's members, from its (checked) id.
fn set_name(group_id: &str) -> Result<String, RulesError> {
    ids::parse(IdKind::SecurityGroup, group_id)
        .ok()
        .and_then(|id| id.strip_prefix("sg-"))
        .map(|hex| format!("sg_{hex}"))
        .ok_or_else(|| RulesError::BadGroupId(group_id.to_string()))
}

/// The match part of one rule: peer address (source for ingress,
/// destination for egress), protocol, ports or ICMP type and code.
fn rule_match(group: &str, rule: &SecurityGroupRule) -> Result<String, RulesError> {
    let field = match rule.direction {
        RuleDirection::Ingress => "saddr",
        RuleDirection::Egress => "daddr",
    };
    let mut parts = vec![match &rule.peer {
        RulePeer::Cidr(cidr) if *cidr == ANYWHERE => "meta nfproto ipv4".to_string(),
        RulePeer::Cidr(cidr) if cidr.prefix == 32 => format!("ip {field} {}", cidr.base),
        RulePeer::Cidr(cidr) => format!("ip {field} {cidr}"),
        RulePeer::Group(id) => format!("ip {field} @{}", set_name(id)?),
    }];
    let protocol = Protocol::parse(&rule.ip_protocol).map_err(|_| RulesError::BadProtocol {
        group: group.to_string(),
        protocol: rule.ip_protocol.clone(),
    })?;
    match protocol {
        Protocol::All => {}
        Protocol::Tcp | Protocol::Udp => {
            let name = if protocol == Protocol::Tcp {
                "tcp"
            } else {
                "udp"
            };
            match (rule.from_port, rule.to_port) {
                (Some(from), Some(to)) if (from, to) != (0, 65535) && from == to => {
                    parts.push(format!("{name} dport {from}"))
                }
                (Some(from), Some(to)) if (from, to) != (0, 65535) => {
                    parts.push(format!("{name} dport {from}-{to}"))
                }
                _ => parts.push(format!("meta l4proto {name}")),
            }
        }
        Protocol::Icmp => match (rule.from_port, rule.to_port) {
            (Some(t), Some(c)) if t >= 0 && c >= 0 => {
                parts.push(format!("icmp type {t} icmp code {c}"))
            }
            (Some(t), _) if t >= 0 => parts.push(format!("icmp type {t}")),
            _ => parts.push("meta l4proto icmp".to_string()),
        },
        Protocol::Number(n) => parts.push(format!("meta l4proto {n}")),
    }
    Ok(parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vpc::{Cidr, GroupIdentifier, RuleRecord};
    use crate::model::DEFAULT_OWNER_ID;

    const DEFAULT: &str = "sg-0000000000000000d";
    const WEB: &str = "sg-0000000000000000a";
    const DB: &str = "sg-0000000000000000b";

    fn rule(
        direction: RuleDirection,
        protocol: &str,
        ports: Option<(i32, i32)>,
        peer: RulePeer,
    ) -> SecurityGroupRule {
        SecurityGroupRule {
            direction,
            ip_protocol: protocol.into(),
            from_port: ports.map(|p| p.0),
            to_port: ports.map(|p| p.1),
            peer,
            description: None,
        }
    }

    fn cidr(text: &str) -> RulePeer {
        RulePeer::Cidr(Cidr::parse(text).expect("cidr"))
    }

    fn group(id: &str, name: &str, rules: Vec<SecurityGroupRule>) -> SecurityGroup {
        SecurityGroup {
            id: id.into(),
            name: name.into(),
            description: name.into(),
            vpc_id: "vpc-0123456789abcdef0".into(),
            owner_id: DEFAULT_OWNER_ID.into(),
            rules: rules
                .into_iter()
                .enumerate()
                .map(|(i, rule)| RuleRecord {
                    id: format!("sgr-{i:017x}"),
                    group_id: id.into(),
                    rule,
                })
                .collect(),
            tags: Default::default(),
        }
    }

    fn nic(n: u8, groups: &[&str]) -> NetworkInterface {
        NetworkInterface {
            id: format!("eni-{n:017x}"),
            subnet_id: "subnet-0123456789abcdef0".into(),
            vpc_id: "vpc-0123456789abcdef0".into(),
            availability_zone: "us-east-1a".into(),
            description: String::new(),
            mac_address: format!("02:00:00:00:00:{n:02X}"),
            private_ip_address: Ipv4Addr::new(172, 31, 0, n),
            source_dest_check: true,
            public_ip: None,
            elastic_ip: None,
            groups: groups
                .iter()
                .map(|g| GroupIdentifier {
                    group_id: (*g).into(),
                    group_name: String::new(),
                })
                .collect(),
            attachment: None,
            owner_id: DEFAULT_OWNER_ID.into(),
            tags: Default::default(),
        }
    }

    /// The default group as EC2 makes it, a web tier open on 22 and 80-81
    /// and to pings, a database tier reachable from the web tier only,
    /// with its egress limited to the VPC.
    fn lab() -> (Vec<SecurityGroup>, Vec<NetworkInterface>) {
        use RuleDirection::{Egress, Ingress};
        let groups = vec![
            group(
                DEFAULT,
                "default",
                crate::model::vpc::standard_rules(DEFAULT, "default"),
            ),
            group(
                WEB,
                "web",
                vec![
                    rule(Egress, "-1", None, RulePeer::Cidr(ANYWHERE)),
                    rule(Ingress, "tcp", Some((22, 22)), cidr("0.0.0.0/0")),
                    rule(Ingress, "tcp", Some((80, 81)), cidr("10.0.0.0/8")),
                    rule(Ingress, "icmp", Some((8, -1)), cidr("192.168.1.7/32")),
                    rule(Ingress, "icmp", Some((3, 4)), cidr("0.0.0.0/0")),
                ],
            ),
            group(
                DB,
                "db",
                vec![
                    rule(
                        Ingress,
                        "tcp",
                        Some((5432, 5432)),
                        RulePeer::Group(WEB.into()),
                    ),
                    rule(Ingress, "udp", Some((0, 65535)), RulePeer::Group(DB.into())),
                    rule(Ingress, "47", None, cidr("172.31.0.0/16")),
                    rule(Ingress, "icmp", Some((-1, -1)), cidr("172.31.0.0/16")),
                    rule(Egress, "tcp", Some((443, 443)), cidr("172.31.0.0/16")),
                ],
            ),
        ];
        let mut db = nic(6, &[DB]);
        db.source_dest_check = false;
        let nics = vec![nic(4, &[WEB, DEFAULT]), nic(5, &[DEFAULT]), db];
        (groups, nics)
    }

    fn ports<'a>(nics: &'a [NetworkInterface], taps: &[&'a str]) -> Vec<Port<'a>> {
        nics.iter()
            .zip(taps)
            .map(|(interface, tap)| Port { tap, interface })
            .collect()
    }

    fn three_ports() -> String {
        let (groups, nics) = lab();
        render(&groups, &ports(&nics, &["tapweb", "tapplain", "tapdb"])).expect("render")
    }

    /// The whole ruleset for the three-tier lab, byte for byte (checked
    /// with `nft -c` by tests/nft_rules.rs). Regenerate deliberately.
    #[test]
    fn the_three_tier_lab_renders_as_the_golden_file() {
        assert_eq!(three_ports(), include_str!("rules_golden.nft"));
    }

    #[test]
    fn inbound_is_denied_unless_a_rule_allows_it_and_outbound_follows_egress_rules() {
        let text = three_ports();
        let chain = |name: &str| -> String {
            let start = text.find(&format!("chain {name} {{")).expect(name);
            let end = text[start..].find("\t}").expect("chain end") + start;
            text[start..end].to_string()
        };
        // A port in only the default group admits its group and nothing else.
        assert_eq!(
            chain("ingress_tapplain"),
            "chain ingress_tapplain {\n\t\tip saddr @sg_0000000000000000d accept\n\t\tdrop\n"
        );
        // Revoked all-outbound: only what is left passes, then drop.
        assert!(chain("egress_tapdb").ends_with("tcp dport 443 return\n\t\tdrop\n"));
        // Stateful: replies pass before any per-port chain.
        let forward = chain("forward");
        let established = forward
            .find("ct state established,related accept")
            .expect("ct");
        assert!(established < forward.find("vmap").expect("dispatch"));
    }

    #[test]
    fn source_dest_check_off_keeps_the_mac_check_only() {
        let text = three_ports();
        let db = &text[text.find("chain port_tapdb").expect("db")..];
        let db = &db[..db.find("\t}").expect("end")];
        assert!(db.contains("ether saddr != 02:00:00:00:00:06 drop"), "{db}");
        assert!(!db.contains("ip saddr"), "{db}");
        let web = &text[text.find("chain port_tapweb").expect("web")..];
        assert!(web.contains("ip saddr != 172.31.0.4 drop"), "{web}");
    }

    #[test]
    fn names_and_descriptions_never_reach_the_ruleset() {
        let hostile = "x\" }\n}\nflush ruleset\ntable inet evil { chain c {";
        let (mut groups, nics) = lab();
        for g in &mut groups {
            g.name = hostile.into();
            g.description = hostile.into();
            for r in &mut g.rules {
                r.rule.description = Some(hostile.into());
            }
        }
        let mut nics = nics;
        nics[0].description = hostile.into();
        let text =
            render(&groups, &ports(&nics, &["tapweb", "tapplain", "tapdb"])).expect("render");
        assert_eq!(text, three_ports(), "names changed the ruleset");
        assert!(!text.contains("flush") && !text.contains("evil"));
    }

    #[test]
    fn tap_names_macs_ids_and_protocols_that_could_inject_are_refused() {
        let (mut groups, nics) = lab();
        for tap in [
            "",
            "tap\"x",
            "tap x",
            "tap;drop",
            "0tap",
            "tap-a",
            "averyveryverylongtap",
        ] {
            let err = render(&groups, &ports(&nics[..1], &[tap])).expect_err(tap);
            assert_eq!(err, RulesError::BadTap(tap.to_string()));
        }
        let err = render(&groups, &ports(&nics[..2], &["tapa", "tapa"])).expect_err("twice");
        assert_eq!(err, RulesError::DuplicateTap("tapa".into()));
        let mut bad = nics.clone();
        bad[0].mac_address = "02:00:00:00:00:04 drop; flush ruleset".into();
        assert!(matches!(
            render(&groups, &ports(&bad[..1], &["tapa"])),
            Err(RulesError::BadMac(..))
        ));
        let mut bad = nics.clone();
        bad[1].private_ip_address = bad[0].private_ip_address;
        assert!(matches!(
            render(&groups, &ports(&bad[..2], &["tapa", "tapb"])),
            Err(RulesError::DuplicateAddress(_))
        ));
        let mut bad = nics.clone();
        bad[0].groups[0].group_id = "sg-x } flush".into();
        assert!(matches!(
            render(&groups, &ports(&bad[..1], &["tapa"])),
            Err(RulesError::BadGroupId(_))
        ));
        groups[1].rules[1].rule.ip_protocol = "tcp accept; flush ruleset".into();
        assert!(matches!(
            render(&groups, &ports(&nics[..1], &["tapa"])),
            Err(RulesError::BadProtocol { .. })
        ));
    }

    #[test]
    fn a_vpc_without_taps_renders_empty_tables_that_still_replace_old_ones() {
        let (groups, _) = lab();
        let text = render(&groups, &[]).expect("render");
        assert!(text.starts_with("table bridge ec2lab_ports\ndelete table bridge ec2lab_ports\n"));
        assert!(!text.contains("vmap"), "{text}");
        assert!(text.contains("ct state established,related accept"));
    }

    #[test]
    fn icmp_type_and_code_and_port_ranges_render_as_nft_matches() {
        use RuleDirection::Ingress;
        let any = RulePeer::Cidr(ANYWHERE);
        let cases = [
            (
                rule(Ingress, "icmp", Some((-1, -1)), any.clone()),
                "meta nfproto ipv4 meta l4proto icmp",
            ),
            (
                rule(Ingress, "icmp", Some((0, -1)), any.clone()),
                "meta nfproto ipv4 icmp type 0",
            ),
            (
                rule(Ingress, "icmp", Some((3, 13)), any.clone()),
                "meta nfproto ipv4 icmp type 3 icmp code 13",
            ),
            (
                rule(Ingress, "udp", Some((53, 53)), cidr("10.1.0.0/16")),
                "ip saddr 10.1.0.0/16 udp dport 53",
            ),
            (
                rule(Ingress, "tcp", Some((0, 65535)), any.clone()),
                "meta nfproto ipv4 meta l4proto tcp",
            ),
            (
                rule(Ingress, "-1", None, RulePeer::Group(WEB.into())),
                "ip saddr @sg_0000000000000000a",
            ),
            (
                rule(
                    RuleDirection::Egress,
                    "tcp",
                    Some((1024, 2048)),
                    cidr("10.0.0.1/32"),
                ),
                "ip daddr 10.0.0.1 tcp dport 1024-2048",
            ),
        ];
        for (r, expected) in cases {
            assert_eq!(rule_match(WEB, &r).expect("render"), expected);
        }
    }

    #[test]
    fn the_host_uplink_masquerades_the_pool_leaving_by_other_links() {
        let pool = Cidr::parse("198.51.100.0/24").expect("pool");
        assert_eq!(
            render_host_uplink(pool, "inet0"),
            "table ip ec2lab_uplink\ndelete table ip ec2lab_uplink\n\
             table ip ec2lab_uplink {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr 198.51.100.0/24 oifname != \"inet0\" masquerade\n\
             \t}\n}\n"
        );
        assert_eq!(
            remove_host_uplink(),
            "table ip ec2lab_uplink\ndelete table ip ec2lab_uplink\n"
        );
    }
}
