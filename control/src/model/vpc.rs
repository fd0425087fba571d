//! VPC resources as plain data: the VPC, its subnets, its security groups
//! and the network interfaces (ENIs) that give instances their addresses,
//! plus the address rules of a subnet (IPAM).
//!
//! Only AWS's *default VPC* exists today, created once per database
//! (see [`default_vpc_layout`]): 172.31.0.0/16 with one /20 default subnet
//! per availability zone and a `default` security group. Nothing here
//! touches the host; turning an ENI into a tap on a bridge is the
//! networking layer's job (see `lifecycle::Lab::network_attachments`).

use std::net::Ipv4Addr;

use time::OffsetDateTime;

use super::{format_timestamp, Filterable, Tags, DEFAULT_OWNER_ID};

/// The CIDR block of every AWS default VPC.
pub const DEFAULT_VPC_CIDR: &str = "172.31.0.0/16";
/// The prefix length of each default subnet (4096 addresses).
pub const DEFAULT_SUBNET_PREFIX: u8 = 20;
/// The name and description AWS gives every VPC's default security group.
pub const DEFAULT_SECURITY_GROUP_NAME: &str = "default";
pub const DEFAULT_SECURITY_GROUP_DESCRIPTION: &str = "default VPC security group";
/// AWS reserves the network address and the next three (router, DNS,
/// future use) at the start of every subnet…
pub const RESERVED_AT_START: u32 = 4;
/// …and the broadcast address at its end.
pub const RESERVED_AT_END: u32 = 1;

/// An IPv4 CIDR block, `base/prefix`, with `base` the network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`; the address must be the network address, as
    /// EC2 requires for VPC and subnet blocks.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = text.split_once('/')?;
        let base: Ipv4Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        let cidr = Cidr { base, prefix };
        (u32::from(base) & cidr.mask() == u32::from(base)).then_some(cidr)
    }

    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// How many addresses the block holds.
    pub fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.base)
    }

    /// The `/prefix` block number `index` inside this one (the default
    /// subnets are `/20` number 0, 1, 2 of the VPC's `/16`).
    pub fn subdivide(self, prefix: u8, index: u32) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let step = 1u64 << (32 - u32::from(prefix));
        let offset = step.checked_mul(u64::from(index))?;
        if offset >= self.size() {
            return None;
        }
        let base = Ipv4Addr::from(u32::from(self.base) + offset as u32);
        Some(Cidr { base, prefix })
    }

    /// The addresses an interface may take: all but AWS's reserved ones.
    /// Empty for blocks too small to have any (EC2 subnets are /28 or
    /// larger, so this never happens for a real subnet).
    pub fn assignable(self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u64::from(u32::from(self.base)) + u64::from(RESERVED_AT_START);
        let end = u64::from(u32::from(self.base)) + self.size() - u64::from(RESERVED_AT_END);
        (first..end).map(|n| Ipv4Addr::from(n as u32))
    }

    /// How many addresses [`Cidr::assignable`] yields.
    pub fn assignable_count(self) -> u64 {
        self.size()
            .saturating_sub(u64::from(RESERVED_AT_START + RESERVED_AT_END))
    }

    /// Whether `ip` is in the block and not reserved by AWS.
    pub fn is_assignable(self, ip: Ipv4Addr) -> bool {
        let n = u64::from(u32::from(ip));
        let base = u64::from(u32::from(self.base));
        self.contains(ip)
            && n >= base + u64::from(RESERVED_AT_START)
            && n < base + self.size() - u64::from(RESERVED_AT_END)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Why an address could not be given to an interface. Each variant is one
/// EC2 error code ([`IpamError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// EC2: InvalidIPAddress.InUse.
    #[error("Address {ip} is in use.")]
    InUse { ip: Ipv4Addr },
    /// EC2: InvalidParameterValue.
    #[error("Address {ip} does not fall within the subnet's address range ({cidr})")]
    OutsideSubnet { ip: Ipv4Addr, cidr: String },
    /// EC2: InvalidParameterValue.
    #[error("Address {ip} is reserved by AWS in subnet {cidr}")]
    Reserved { ip: Ipv4Addr, cidr: String },
    /// EC2: InsufficientFreeAddressesInSubnet.
    #[error("There are not enough free addresses in subnet '{subnet_id}' to satisfy the requested number of instances.")]
    SubnetFull { subnet_id: String },
    /// Every public address of the lab's pool is held. EC2:
    /// InsufficientAddressCapacity.
    #[error("There are no free public IPv4 addresses in the lab's pool {pool}; release an Elastic IP, stop an instance, or give `ec2lab serve --public-pool` a larger block")]
    PublicPoolExhausted { pool: String },
}

impl IpamError {
    /// The EC2 error code.
    pub fn code(&self) -> &'static str {
        match self {
            IpamError::InUse { .. } => "InvalidIPAddress.InUse",
            IpamError::OutsideSubnet { .. } | IpamError::Reserved { .. } => "InvalidParameterValue",
            IpamError::SubnetFull { .. } => "InsufficientFreeAddressesInSubnet",
            IpamError::PublicPoolExhausted { .. } => "InsufficientAddressCapacity",
        }
    }
}

/// The public addresses a pool gives out: all but its network address,
/// its first (the uplink's gateway) and its broadcast address.
pub fn public_pool_addresses(pool: Cidr) -> impl Iterator<Item = Ipv4Addr> {
    let base = u32::from(pool.base);
    let size = 1u64 << (32 - u32::from(pool.prefix.min(32)));
    let last = (u64::from(base) + size).saturating_sub(2);
    (u64::from(base) + 2..=last).filter_map(|a| u32::try_from(a).ok().map(Ipv4Addr::from))
}

/// The address for a new interface in `cidr`: `requested` if it is
/// assignable and free, otherwise the lowest free assignable one.
pub fn pick_address(
    subnet_id: &str,
    cidr: Cidr,
    used: &std::collections::BTreeSet<Ipv4Addr>,
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    match requested {
        Some(ip) if !cidr.contains(ip) => Err(IpamError::OutsideSubnet {
            ip,
            cidr: cidr.to_string(),
        }),
        Some(ip) if !cidr.is_assignable(ip) => Err(IpamError::Reserved {
            ip,
            cidr: cidr.to_string(),
        }),
        Some(ip) if used.contains(&ip) => Err(IpamError::InUse { ip }),
        Some(ip) => Ok(ip),
        None => cidr
            .assignable()
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| IpamError::SubnetFull {
                subnet_id: subnet_id.to_string(),
            }),
    }
}

/// `ec2-198-51-100-7.compute-1.amazonaws.com`: the public DNS name
/// us-east-1 gives a public address (other regions use
/// `{region}.compute.amazonaws.com`).
pub fn public_dns_name(ip: Ipv4Addr, region: &str) -> String {
    let dashed = ip.to_string().replace('.', "-");
    if region == "us-east-1" {
        format!("ec2-{dashed}.compute-1.amazonaws.com")
    } else {
        format!("ec2-{dashed}.{region}.compute.amazonaws.com")
    }
}

/// `ip-172-31-5-9.ec2.internal`: the private DNS name us-east-1 gives an
/// address (other regions use `{region}.compute.internal`).
pub fn private_dns_name(ip: Ipv4Addr, region: &str) -> String {
    let dashed = ip.to_string().replace('.', "-");
    if region == "us-east-1" {
        format!("ip-{dashed}.ec2.internal")
    } else {
        format!("ip-{dashed}.{region}.compute.internal")
    }
}

/// A random locally administered unicast MAC, `02:xx:xx:xx:xx:xx`, the
/// form EC2 gives ENIs. Uniqueness is the database's job (a UNIQUE column).
pub fn random_mac() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut mac = String::from("02");
    for _ in 0..5 {
        mac.push_str(&format!(":{:02x}", rng.gen::<u8>()));
    }
    mac
}

/// One default subnet to create: its block and zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultSubnet {
    pub cidr: Cidr,
    pub availability_zone: String,
    pub availability_zone_id: String,
}

/// AWS's default VPC layout for `region`: the `/16`, and its `/20`s in
/// zone order (a → 172.31.0.0/20, b → 172.31.16.0/20, c → 172.31.32.0/20).
pub fn default_vpc_layout(region: &str) -> (Cidr, Vec<DefaultSubnet>) {
    let vpc = Cidr {
        base: Ipv4Addr::new(172, 31, 0, 0),
        prefix: 16,
    };
    let subnets = super::zones::zones(region)
        .into_iter()
        .enumerate()
        .filter_map(|(i, zone)| {
            Some(DefaultSubnet {
                cidr: vpc.subdivide(DEFAULT_SUBNET_PREFIX, u32::try_from(i).ok()?)?,
                availability_zone: zone.name,
                availability_zone_id: zone.id,
            })
        })
        .collect();
    (vpc, subnets)
}

/// A VPC (`vpcSet/item`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    pub id: String,
    pub cidr_block: String,
    pub is_default: bool,
    pub owner_id: String,
    pub tags: Tags,
}

impl Vpc {
    /// The id of the (only) CIDR association, derived from the VPC id so
    /// it is stable without a table of its own.
    pub fn cidr_association_id(&self) -> String {
        format!("vpc-cidr-assoc-{}", id_digits(&self.id))
    }
}

/// A subnet (`subnetSet/item`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    pub cidr_block: String,
    pub availability_zone: String,
    pub availability_zone_id: String,
    pub default_for_az: bool,
    pub map_public_ip_on_launch: bool,
    /// Assignable addresses not taken by an interface.
    pub available_ip_address_count: u64,
    pub owner_id: String,
    pub tags: Tags,
}

impl Subnet {
    /// `arn:aws:ec2:{region}:{owner}:subnet/{id}`.
    pub fn arn(&self, region: &str) -> String {
        format!("arn:aws:ec2:{region}:{}:subnet/{}", self.owner_id, self.id)
    }
}

/// A security group (`securityGroupInfo/item`). Its rules are stored one
/// per EC2 `SecurityGroupRule`, so that the networking layer enforces and
/// DescribeSecurityGroups shows the same data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub vpc_id: String,
    pub owner_id: String,
    /// Ingress and egress rules, in the order they were added.
    pub rules: Vec<RuleRecord>,
    pub tags: Tags,
}

impl SecurityGroup {
    /// The rules of one direction folded into EC2's `IpPermission`s.
    pub fn ip_permissions(&self, direction: RuleDirection) -> Vec<IpPermission> {
        ip_permissions(self.rules.iter().map(|r| &r.rule), direction)
    }

    /// Whether this is its VPC's default group, which EC2 never deletes.
    pub fn is_default(&self) -> bool {
        self.name == DEFAULT_SECURITY_GROUP_NAME
    }
}

/// A stored rule with its identity, as DescribeSecurityGroupRules shows
/// it: `sgr-…`, the group it belongs to, and what it admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    pub id: String,
    pub group_id: String,
    pub rule: SecurityGroupRule,
}

/// Filter names DescribeSecurityGroupRules accepts.
pub const SECURITY_GROUP_RULE_FILTERS: &[&str] = &["group-id", "security-group-rule-id"];

impl Filterable for RuleRecord {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        match name {
            "group-id" => one(&self.group_id),
            "security-group-rule-id" => one(&self.id),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        SECURITY_GROUP_RULE_FILTERS.contains(&name)
    }
}

/// Which traffic a security group rule admits: arriving at the group's
/// members, or leaving them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleDirection {
    Ingress,
    Egress,
}

ec2_names! {
    RuleDirection {
        Ingress => "ingress",
        Egress => "egress",
    }
}

/// The other end of a rule's traffic: an address block, or the members of
/// a security group (possibly the rule's own group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulePeer {
    Cidr(Cidr),
    Group(String),
}

/// One security group rule as stored: EC2's `SecurityGroupRule` (one
/// protocol, port range and peer). DescribeSecurityGroups shows rules
/// folded into `IpPermission`s (see [`ip_permissions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupRule {
    pub direction: RuleDirection,
    /// As EC2 takes it: `-1` (all traffic), `tcp`, `udp`, `icmp` or an IP
    /// protocol number.
    pub ip_protocol: String,
    /// The port range (for ICMP: type and code); `None` with protocol `-1`.
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    pub peer: RulePeer,
    pub description: Option<String>,
}

/// The protocol EC2 writes for "all traffic".
pub const ALL_PROTOCOLS: &str = "-1";

/// The block EC2 writes for "anywhere".
pub const ANYWHERE: Cidr = Cidr {
    base: Ipv4Addr::UNSPECIFIED,
    prefix: 0,
};

/// The rules EC2 gives a group it creates: every group may send anything
/// anywhere, and a VPC's default group also admits everything from its own
/// members (so instances launched without a group can talk to each other).
pub fn standard_rules(group_id: &str, group_name: &str) -> Vec<SecurityGroupRule> {
    let all_traffic = |direction, peer| SecurityGroupRule {
        direction,
        ip_protocol: ALL_PROTOCOLS.to_string(),
        from_port: None,
        to_port: None,
        peer,
        description: None,
    };
    let mut rules = Vec::new();
    if group_name == DEFAULT_SECURITY_GROUP_NAME {
        rules.push(all_traffic(
            RuleDirection::Ingress,
            RulePeer::Group(group_id.to_string()),
        ));
    }
    rules.push(all_traffic(RuleDirection::Egress, RulePeer::Cidr(ANYWHERE)));
    rules
}

/// EC2's `IpPermission`: the rules of one direction that share a protocol
/// and port range, with their peers gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPermission {
    pub ip_protocol: String,
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    /// Peer groups (`UserIdGroupPairs`) with each rule's description.
    pub groups: Vec<(String, Option<String>)>,
    /// Peer blocks (`IpRanges`) with each rule's description.
    pub ip_ranges: Vec<(Cidr, Option<String>)>,
}

/// Folds `rules` of `direction` into permissions the way EC2 shows them:
/// one per protocol and port range, in the order each first appears.
pub fn ip_permissions<'a>(
    rules: impl IntoIterator<Item = &'a SecurityGroupRule>,
    direction: RuleDirection,
) -> Vec<IpPermission> {
    let mut out: Vec<IpPermission> = Vec::new();
    for rule in rules.into_iter().filter(|r| r.direction == direction) {
        let existing = out.iter().position(|p| {
            p.ip_protocol == rule.ip_protocol
                && p.from_port == rule.from_port
                && p.to_port == rule.to_port
        });
        let at = existing.unwrap_or_else(|| {
            out.push(IpPermission {
                ip_protocol: rule.ip_protocol.clone(),
                from_port: rule.from_port,
                to_port: rule.to_port,
                groups: Vec::new(),
                ip_ranges: Vec::new(),
            });
            out.len() - 1
        });
        let permission = &mut out[at];
        match &rule.peer {
            RulePeer::Group(id) => permission
                .groups
                .push((id.clone(), rule.description.clone())),
            RulePeer::Cidr(cidr) => permission.ip_ranges.push((*cidr, rule.description.clone())),
        }
    }
    out
}

/// A group an interface is in, as interfaces and instances list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupIdentifier {
    pub group_id: String,
    pub group_name: String,
}

/// An elastic network interface. Instances get one at launch (device
/// index 0) that lives and dies with them when `delete_on_termination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterface {
    pub id: String,
    pub subnet_id: String,
    pub vpc_id: String,
    pub availability_zone: String,
    pub description: String,
    pub mac_address: String,
    pub private_ip_address: Ipv4Addr,
    pub source_dest_check: bool,
    /// The public IPv4 address it holds while its instance runs.
    pub public_ip: Option<Ipv4Addr>,
    /// When that address is an Elastic IP: its allocation and association.
    pub elastic_ip: Option<ElasticIpRef>,
    pub groups: Vec<GroupIdentifier>,
    pub attachment: Option<NetworkInterfaceAttachment>,
    pub owner_id: String,
    pub tags: Tags,
}

impl NetworkInterface {
    /// `available` when detached, `in-use` when attached.
    pub fn status(&self) -> &'static str {
        if self.attachment.is_some() {
            "in-use"
        } else {
            "available"
        }
    }
}

/// The Elastic IP an interface holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticIpRef {
    /// `eipalloc-…`.
    pub allocation_id: String,
    /// `eipassoc-…`.
    pub association_id: String,
}

/// Where an interface is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterfaceAttachment {
    /// `eni-attach-…`.
    pub attachment_id: String,
    pub instance_id: String,
    pub device_index: u32,
    pub attach_time: OffsetDateTime,
    pub delete_on_termination: bool,
}

/// What RunInstances asks of an instance's primary interface; the
/// repository turns it into an ENI inside the launch's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceRequest {
    pub subnet_id: String,
    /// A specific address (`PrivateIpAddress`), else the lowest free one.
    pub private_ip: Option<Ipv4Addr>,
    /// Group ids; with `group_names`, all must be in the subnet's VPC.
    /// Both empty means the VPC's default group.
    pub group_ids: Vec<String>,
    pub group_names: Vec<String>,
    pub delete_on_termination: bool,
    pub description: String,
    /// `AssociatePublicIpAddress`; None: the subnet's
    /// MapPublicIpOnLaunch decides.
    pub associate_public_ip: Option<bool>,
    /// RunInstances' `network-interface` tag specifications.
    pub tags: Vec<(String, String)>,
}

/// The 17 (or 8) hex digits after an id's prefix.
fn id_digits(id: &str) -> &str {
    id.rsplit('-').next().unwrap_or(id)
}

/// `eni-attach-…` for a new attachment.
pub fn attachment_id(eni_id: &str) -> String {
    format!("eni-attach-{}", id_digits(eni_id))
}

fn one(v: impl Into<String>) -> Option<Vec<String>> {
    Some(vec![v.into()])
}

/// Filter names DescribeVpcs accepts, besides `tag:<key>`.
pub const VPC_FILTERS: &[&str] = &[
    "vpc-id",
    "is-default",
    "isDefault",
    "cidr",
    "cidr-block-association.cidr-block",
    "cidr-block-association.association-id",
    "cidr-block-association.state",
    "state",
    "owner-id",
    "dhcp-options-id",
    "tag-key",
    "tag-value",
];

impl Filterable for Vpc {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        if super::is_tag_filter(name) {
            return super::tag_filter_values(&self.tags, name);
        }
        match name {
            "vpc-id" => one(&self.id),
            "is-default" | "isDefault" => one(self.is_default.to_string()),
            "cidr" | "cidr-block-association.cidr-block" => one(&self.cidr_block),
            "cidr-block-association.association-id" => one(self.cidr_association_id()),
            "cidr-block-association.state" => one("associated"),
            "state" => one("available"),
            "owner-id" => one(&self.owner_id),
            "dhcp-options-id" => one(DHCP_OPTIONS_ID),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        super::is_tag_filter(name) || VPC_FILTERS.contains(&name)
    }
}

/// The DHCP options set every VPC reports. There is one, AWS's default
/// (`domain-name ec2.internal`, AmazonProvidedDNS); it is not a resource
/// of its own yet.
pub const DHCP_OPTIONS_ID: &str = "dopt-00000000000000000";

/// Filter names DescribeSubnets accepts, besides `tag:<key>`.
pub const SUBNET_FILTERS: &[&str] = &[
    "subnet-id",
    "subnet-arn",
    "vpc-id",
    "availability-zone",
    "availabilityZone",
    "availability-zone-id",
    "availabilityZoneId",
    "default-for-az",
    "defaultForAz",
    "cidr-block",
    "cidr",
    "cidrBlock",
    "map-public-ip-on-launch",
    "available-ip-address-count",
    "state",
    "owner-id",
    "tag-key",
    "tag-value",
];

impl Filterable for Subnet {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        if super::is_tag_filter(name) {
            return super::tag_filter_values(&self.tags, name);
        }
        match name {
            "subnet-id" => one(&self.id),
            // ARNs name the lab's region (the API answers as us-east-1).
            "subnet-arn" => one(self.arn(super::DEFAULT_REGION)),
            "vpc-id" => one(&self.vpc_id),
            "availability-zone" | "availabilityZone" => one(&self.availability_zone),
            "availability-zone-id" | "availabilityZoneId" => one(&self.availability_zone_id),
            "default-for-az" | "defaultForAz" => one(self.default_for_az.to_string()),
            "cidr-block" | "cidr" | "cidrBlock" => one(&self.cidr_block),
            "map-public-ip-on-launch" => one(self.map_public_ip_on_launch.to_string()),
            "available-ip-address-count" => one(self.available_ip_address_count.to_string()),
            "state" => one("available"),
            "owner-id" => one(&self.owner_id),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        super::is_tag_filter(name) || SUBNET_FILTERS.contains(&name)
    }
}

/// Filter names DescribeSecurityGroups accepts, besides `tag:<key>`.
pub const SECURITY_GROUP_FILTERS: &[&str] = &[
    "group-id",
    "group-name",
    "description",
    "vpc-id",
    "owner-id",
    "tag-key",
    "tag-value",
];

impl Filterable for SecurityGroup {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        if super::is_tag_filter(name) {
            return super::tag_filter_values(&self.tags, name);
        }
        match name {
            "group-id" => one(&self.id),
            "group-name" => one(&self.name),
            "description" => one(&self.description),
            "vpc-id" => one(&self.vpc_id),
            "owner-id" => one(&self.owner_id),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        super::is_tag_filter(name) || SECURITY_GROUP_FILTERS.contains(&name)
    }
}

/// Filter names DescribeNetworkInterfaces accepts, besides `tag:<key>`.
pub const NETWORK_INTERFACE_FILTERS: &[&str] = &[
    "network-interface-id",
    "subnet-id",
    "vpc-id",
    "availability-zone",
    "description",
    "status",
    "mac-address",
    "private-ip-address",
    "addresses.private-ip-address",
    "private-dns-name",
    "source-dest-check",
    "group-id",
    "group-name",
    "interface-type",
    "owner-id",
    "attachment.instance-id",
    "attachment.attachment-id",
    "attachment.device-index",
    "attachment.status",
    "attachment.delete-on-termination",
    "attachment.attach-time",
    "attachment.instance-owner-id",
    "tag-key",
    "tag-value",
];

impl Filterable for NetworkInterface {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        if super::is_tag_filter(name) {
            return super::tag_filter_values(&self.tags, name);
        }
        let attached = |f: &dyn Fn(&NetworkInterfaceAttachment) -> String| {
            Some(self.attachment.iter().map(f).collect())
        };
        match name {
            "network-interface-id" => one(&self.id),
            "subnet-id" => one(&self.subnet_id),
            "vpc-id" => one(&self.vpc_id),
            "availability-zone" => one(&self.availability_zone),
            "description" => one(&self.description),
            "status" => one(self.status()),
            "mac-address" => one(&self.mac_address),
            "private-ip-address" | "addresses.private-ip-address" => {
                one(self.private_ip_address.to_string())
            }
            "private-dns-name" => one(private_dns_name(
                self.private_ip_address,
                super::DEFAULT_REGION,
            )),
            "source-dest-check" => one(self.source_dest_check.to_string()),
            "group-id" => Some(self.groups.iter().map(|g| g.group_id.clone()).collect()),
            "group-name" => Some(self.groups.iter().map(|g| g.group_name.clone()).collect()),
            "interface-type" => one("interface"),
            "owner-id" => one(&self.owner_id),
            "attachment.instance-id" => attached(&|a| a.instance_id.clone()),
            "attachment.attachment-id" => attached(&|a| a.attachment_id.clone()),
            "attachment.device-index" => attached(&|a| a.device_index.to_string()),
            "attachment.status" => attached(&|_| "attached".to_string()),
            "attachment.delete-on-termination" => {
                attached(&|a| a.delete_on_termination.to_string())
            }
            "attachment.attach-time" => attached(&|a| format_timestamp(a.attach_time)),
            "attachment.instance-owner-id" => attached(&|_| DEFAULT_OWNER_ID.to_string()),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        super::is_tag_filter(name) || NETWORK_INTERFACE_FILTERS.contains(&name)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn cidr(text: &str) -> Cidr {
        Cidr::parse(text).expect("valid CIDR")
    }

    #[test]
    fn cidrs_parse_only_network_addresses() {
        assert_eq!(cidr("172.31.16.0/20").to_string(), "172.31.16.0/20");
        assert_eq!(Cidr::parse("172.31.16.1/20"), None);
        assert_eq!(Cidr::parse("172.31.0.0/33"), None);
        assert_eq!(Cidr::parse("172.31.0.0"), None);
        assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
    }

    #[test]
    fn a_default_group_admits_its_members_and_every_group_may_send_anywhere() {
        let id = "sg-0123456789abcdef0";
        let default = standard_rules(id, DEFAULT_SECURITY_GROUP_NAME);
        assert_eq!(
            default
                .iter()
                .map(|r| (r.direction, r.ip_protocol.as_str(), &r.peer))
                .collect::<Vec<_>>(),
            [
                (RuleDirection::Ingress, "-1", &RulePeer::Group(id.into())),
                (
                    RuleDirection::Egress,
                    "-1",
                    &RulePeer::Cidr(cidr("0.0.0.0/0"))
                ),
            ]
        );
        assert!(default
            .iter()
            .all(|r| r.from_port.is_none() && r.to_port.is_none() && r.description.is_none()));
        let web = standard_rules(id, "web");
        assert_eq!(web, default[1..]);
    }

    #[test]
    fn rules_sharing_a_protocol_and_ports_fold_into_one_permission() {
        let rule =
            |protocol: &str, port: Option<i32>, peer: RulePeer, description: Option<&str>| {
                SecurityGroupRule {
                    direction: RuleDirection::Ingress,
                    ip_protocol: protocol.into(),
                    from_port: port,
                    to_port: port,
                    peer,
                    description: description.map(Into::into),
                }
            };
        let mut rules = vec![
            rule(
                "tcp",
                Some(22),
                RulePeer::Cidr(cidr("10.0.0.0/8")),
                Some("ssh"),
            ),
            rule("tcp", Some(80), RulePeer::Cidr(cidr("0.0.0.0/0")), None),
            rule("tcp", Some(22), RulePeer::Group("sg-1".into()), None),
            rule(
                "tcp",
                Some(22),
                RulePeer::Cidr(cidr("192.168.0.0/16")),
                None,
            ),
        ];
        rules.push(SecurityGroupRule {
            direction: RuleDirection::Egress,
            ..rules[0].clone()
        });
        let ingress = ip_permissions(&rules, RuleDirection::Ingress);
        assert_eq!(
            ingress,
            [
                IpPermission {
                    ip_protocol: "tcp".into(),
                    from_port: Some(22),
                    to_port: Some(22),
                    groups: vec![("sg-1".into(), None)],
                    ip_ranges: vec![
                        (cidr("10.0.0.0/8"), Some("ssh".into())),
                        (cidr("192.168.0.0/16"), None)
                    ],
                },
                IpPermission {
                    ip_protocol: "tcp".into(),
                    from_port: Some(80),
                    to_port: Some(80),
                    groups: vec![],
                    ip_ranges: vec![(cidr("0.0.0.0/0"), None)],
                },
            ]
        );
        assert_eq!(ip_permissions(&rules, RuleDirection::Egress).len(), 1);
    }

    #[test]
    fn default_layout_is_awss() {
        let (vpc, subnets) = default_vpc_layout("us-east-1");
        assert_eq!(vpc.to_string(), DEFAULT_VPC_CIDR);
        let got: Vec<(String, &str, &str)> = subnets
            .iter()
            .map(|s| {
                (
                    s.cidr.to_string(),
                    s.availability_zone.as_str(),
                    s.availability_zone_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("172.31.0.0/20".to_string(), "us-east-1a", "use1-az1"),
                ("172.31.16.0/20".to_string(), "us-east-1b", "use1-az2"),
                ("172.31.32.0/20".to_string(), "us-east-1c", "use1-az3"),
            ]
        );
    }

    #[test]
    fn aws_reserves_four_addresses_at_the_start_and_one_at_the_end() {
        let c = cidr("172.31.16.0/20");
        assert_eq!(c.assignable_count(), 4091);
        assert_eq!(c.assignable().count(), 4091);
        assert_eq!(c.assignable().next(), Some(Ipv4Addr::new(172, 31, 16, 4)));
        assert_eq!(c.assignable().last(), Some(Ipv4Addr::new(172, 31, 31, 254)));
        for reserved in ["172.31.16.0", "172.31.16.1", "172.31.16.3", "172.31.31.255"] {
            let ip: Ipv4Addr = reserved.parse().expect("ip");
            assert!(c.contains(ip) && !c.is_assignable(ip), "{reserved}");
        }
    }

    #[test]
    fn addresses_are_picked_lowest_free_first_or_as_requested() {
        let c = cidr("10.0.0.0/28");
        let mut used = BTreeSet::new();
        let first = pick_address("subnet-1", c, &used, None).expect("free");
        assert_eq!(first, Ipv4Addr::new(10, 0, 0, 4));
        used.insert(first);
        used.insert(Ipv4Addr::new(10, 0, 0, 6));
        assert_eq!(
            pick_address("subnet-1", c, &used, None),
            Ok(Ipv4Addr::new(10, 0, 0, 5))
        );
        let want = Ipv4Addr::new(10, 0, 0, 9);
        assert_eq!(pick_address("subnet-1", c, &used, Some(want)), Ok(want));
        let err = pick_address("subnet-1", c, &used, Some(first)).expect_err("taken");
        assert_eq!(err.code(), "InvalidIPAddress.InUse");
        for bad in ["10.0.0.3", "10.0.0.15", "10.0.1.4"] {
            let ip: Ipv4Addr = bad.parse().expect("ip");
            let err = pick_address("subnet-1", c, &used, Some(ip)).expect_err(bad);
            assert_eq!(err.code(), "InvalidParameterValue", "{bad}");
        }
        // A /28 has 16 - 5 = 11 assignable addresses.
        let all: BTreeSet<Ipv4Addr> = c.assignable().collect();
        assert_eq!(all.len(), 11);
        let err = pick_address("subnet-1", c, &all, None).expect_err("full");
        assert_eq!(err.code(), "InsufficientFreeAddressesInSubnet");
    }

    fn answers_every_listed_filter<T: Filterable>(item: &T, names: &[&str]) {
        for name in names {
            assert!(T::knows_filter(name), "{name}");
            assert!(item.filter_values(name).is_some(), "{name}");
        }
        assert!(!T::knows_filter("colour"));
        assert!(item.filter_values("colour").is_none());
        assert!(T::knows_filter("tag:Name"));
    }

    #[test]
    fn every_listed_filter_is_answered() {
        let tags = Tags::from([("Name".to_string(), "lab".to_string())]);
        let vpc = Vpc {
            id: "vpc-0123456789abcdef0".into(),
            cidr_block: DEFAULT_VPC_CIDR.into(),
            is_default: true,
            owner_id: DEFAULT_OWNER_ID.into(),
            tags: tags.clone(),
        };
        answers_every_listed_filter(&vpc, VPC_FILTERS);
        assert_eq!(vpc.filter_values("isDefault"), Some(vec!["true".into()]));
        assert_eq!(vpc.filter_values("tag:Name"), Some(vec!["lab".into()]));
        let subnet = Subnet {
            id: "subnet-0123456789abcdef0".into(),
            vpc_id: vpc.id.clone(),
            cidr_block: "172.31.0.0/20".into(),
            availability_zone: "us-east-1a".into(),
            availability_zone_id: "use1-az1".into(),
            default_for_az: true,
            map_public_ip_on_launch: true,
            available_ip_address_count: 4091,
            owner_id: DEFAULT_OWNER_ID.into(),
            tags: tags.clone(),
        };
        answers_every_listed_filter(&subnet, SUBNET_FILTERS);
        assert_eq!(
            subnet.filter_values("subnet-arn"),
            Some(vec![
                "arn:aws:ec2:us-east-1:000000000000:subnet/subnet-0123456789abcdef0".into()
            ])
        );
        let group = SecurityGroup {
            id: "sg-0123456789abcdef0".into(),
            name: DEFAULT_SECURITY_GROUP_NAME.into(),
            description: DEFAULT_SECURITY_GROUP_DESCRIPTION.into(),
            vpc_id: vpc.id.clone(),
            owner_id: DEFAULT_OWNER_ID.into(),
            rules: standard_rules("sg-0123456789abcdef0", DEFAULT_SECURITY_GROUP_NAME)
                .into_iter()
                .map(|rule| RuleRecord {
                    id: "sgr-0123456789abcdef0".into(),
                    group_id: "sg-0123456789abcdef0".into(),
                    rule,
                })
                .collect(),
            tags: tags.clone(),
        };
        for name in SECURITY_GROUP_RULE_FILTERS {
            assert!(RuleRecord::knows_filter(name), "{name}");
            assert!(group.rules[0].filter_values(name).is_some(), "{name}");
        }
        answers_every_listed_filter(&group, SECURITY_GROUP_FILTERS);
        let mut eni = NetworkInterface {
            id: "eni-0123456789abcdef0".into(),
            subnet_id: subnet.id.clone(),
            vpc_id: vpc.id.clone(),
            availability_zone: "us-east-1a".into(),
            description: String::new(),
            mac_address: "02:00:00:00:00:01".into(),
            private_ip_address: Ipv4Addr::new(172, 31, 0, 4),
            source_dest_check: true,
            public_ip: None,
            elastic_ip: None,
            groups: vec![GroupIdentifier {
                group_id: group.id.clone(),
                group_name: group.name.clone(),
            }],
            attachment: Some(NetworkInterfaceAttachment {
                attachment_id: attachment_id("eni-0123456789abcdef0"),
                instance_id: "i-0123456789abcdef0".into(),
                device_index: 0,
                attach_time: time::macros::datetime!(2026-11-25 23:00:00 UTC),
                delete_on_termination: true,
            }),
            owner_id: DEFAULT_OWNER_ID.into(),
            tags,
        };
        answers_every_listed_filter(&eni, NETWORK_INTERFACE_FILTERS);
        assert_eq!(eni.filter_values("status"), Some(vec!["in-use".into()]));
        eni.attachment = None;
        assert_eq!(eni.filter_values("status"), Some(vec!["available".into()]));
        assert_eq!(eni.filter_values("attachment.instance-id"), Some(vec![]));
    }

    #[test]
    fn dns_names_and_macs_look_like_ec2s() {
        let ip = Ipv4Addr::new(172, 31, 5, 9);
        assert_eq!(
            private_dns_name(ip, "us-east-1"),
            "ip-172-31-5-9.ec2.internal"
        );
        assert_eq!(
            private_dns_name(ip, "eu-west-1"),
            "ip-172-31-5-9.eu-west-1.compute.internal"
        );
        let mac = random_mac();
        assert_eq!(mac.len(), 17, "{mac}");
        assert!(mac.starts_with("02:"), "{mac}");
        assert_eq!(
            attachment_id("eni-0123456789abcdef0"),
            "eni-attach-0123456789abcdef0"
        );
    }
}
