//! VPC networking: DescribeVpcs, DescribeSubnets, DescribeSecurityGroups,
//! DescribeNetworkInterfaces, and the rendering of an instance's network
//! interfaces that DescribeInstances shares.
//!
//! The only VPC is the default one (see `model::vpc`); these actions show
//! it as AWS does so that tools which look it up before a launch (Ansible's
//! `ec2_instance`, Terraform's default-VPC data sources) find it.

use std::net::Ipv4Addr;

use super::common::{check_ids, filters, page, system_time_ms, tag_set};
use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::db::{InterfaceChange, NetworkQuery};
use crate::instances::LaunchNetwork;
use crate::model::ids::IdKind;
use crate::model::vpc::{
    private_dns_name, public_dns_name, GroupIdentifier, IpPermission, NetworkInterface,
    RuleDirection, SecurityGroup, Subnet, Vpc, DHCP_OPTIONS_ID,
};
use crate::model::DEFAULT_OWNER_ID;

/// Explicit `{name}.N` ids of `kind`, filters and page.
fn query(params: &Params, name: &str, kind: IdKind) -> Result<NetworkQuery, Ec2Error> {
    let ids = params.list(name)?;
    Ok(NetworkQuery {
        ids: check_ids(kind, &ids)?,
        filters: filters(params)?,
        page: page(params)?,
    })
}

fn with_token(mut out: Vec<XmlNode>, token: Option<String>) -> Vec<XmlNode> {
    if let Some(token) = token {
        out.push(XmlNode::text("nextToken", token));
    }
    out
}

/// `DescribeVpcs`.
pub fn describe_vpcs(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["VpcId", "Filter", "MaxResults", "NextToken", "DryRun"])?;
    let query = query(params, "VpcId", IdKind::Vpc)?;
    let found = ctx.lab()?.db.list_vpcs(&query)?;
    Ok(with_token(
        vec![XmlNode::list("vpcSet", found.items.iter().map(vpc_node))],
        found.next_token,
    ))
}

/// `DescribeVpcAttribute`. A VPC resolves names (DNS support) always;
/// AWS gives instances DNS hostnames in the default VPC only, and ec2lab
/// does not measure address usage.
pub fn describe_vpc_attribute(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["VpcId", "Attribute", "DryRun"])?;
    let id = params.required("VpcId")?;
    let ids = check_ids(IdKind::Vpc, &[id])?;
    let attribute = params.required("Attribute")?;
    let vpc = ctx
        .lab()?
        .db
        .list_vpcs(&NetworkQuery {
            ids,
            ..NetworkQuery::default()
        })?
        .items
        .into_iter()
        .next()
        .ok_or_else(Ec2Error::internal_error)?;
    let (name, value) = match attribute {
        "enableDnsSupport" => ("enableDnsSupport", true),
        "enableDnsHostnames" => ("enableDnsHostnames", vpc.is_default),
        "enableNetworkAddressUsageMetrics" => ("enableNetworkAddressUsageMetrics", false),
        other => {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Value ({other}) for parameter attribute is invalid. Unknown attribute."
            )))
        }
    };
    Ok(vec![
        XmlNode::text("vpcId", vpc.id.as_str()),
        XmlNode::element(name, vec![XmlNode::bool("value", value)]),
    ])
}

fn vpc_node(v: &Vpc) -> Vec<XmlNode> {
    let mut n = vec![
        XmlNode::text("vpcId", v.id.as_str()),
        XmlNode::text("ownerId", v.owner_id.as_str()),
        XmlNode::text("state", "available"),
        XmlNode::text("cidrBlock", v.cidr_block.as_str()),
        XmlNode::list(
            "cidrBlockAssociationSet",
            [vec![
                XmlNode::text("cidrBlock", v.cidr_block.as_str()),
                XmlNode::text("associationId", v.cidr_association_id()),
                XmlNode::element("cidrBlockState", vec![XmlNode::text("state", "associated")]),
            ]],
        ),
        XmlNode::text("dhcpOptionsId", DHCP_OPTIONS_ID),
        XmlNode::text("instanceTenancy", "default"),
        XmlNode::bool("isDefault", v.is_default),
    ];
    if !v.tags.is_empty() {
        n.push(tag_set(&v.tags));
    }
    n
}

/// `DescribeSubnets`.
pub fn describe_subnets(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["SubnetId", "Filter", "MaxResults", "NextToken", "DryRun"])?;
    let query = query(params, "SubnetId", IdKind::Subnet)?;
    let found = ctx.lab()?.db.list_subnets(&query)?;
    Ok(with_token(
        vec![XmlNode::list(
            "subnetSet",
            found.items.iter().map(|s| subnet_node(s, ctx.region)),
        )],
        found.next_token,
    ))
}

fn subnet_node(s: &Subnet, region: &str) -> Vec<XmlNode> {
    let mut n = vec![
        XmlNode::text("subnetId", s.id.as_str()),
        XmlNode::text("subnetArn", s.arn(region)),
        XmlNode::text("state", "available"),
        XmlNode::text("ownerId", s.owner_id.as_str()),
        XmlNode::text("vpcId", s.vpc_id.as_str()),
        XmlNode::text("cidrBlock", s.cidr_block.as_str()),
        XmlNode::list("ipv6CidrBlockAssociationSet", Vec::<Vec<XmlNode>>::new()),
        XmlNode::number("availableIpAddressCount", s.available_ip_address_count),
        XmlNode::text("availabilityZone", s.availability_zone.as_str()),
        XmlNode::text("availabilityZoneId", s.availability_zone_id.as_str()),
        XmlNode::bool("defaultForAz", s.default_for_az),
        XmlNode::bool("mapPublicIpOnLaunch", s.map_public_ip_on_launch),
        XmlNode::bool("mapCustomerOwnedIpOnLaunch", false),
        XmlNode::bool("assignIpv6AddressOnCreation", false),
        XmlNode::bool("enableDns64", false),
        XmlNode::bool("ipv6Native", false),
        XmlNode::element(
            "privateDnsNameOptionsOnLaunch",
            vec![
                XmlNode::text("hostnameType", "ip-name"),
                XmlNode::bool("enableResourceNameDnsARecord", false),
                XmlNode::bool("enableResourceNameDnsAAAARecord", false),
            ],
        ),
    ];
    if !s.tags.is_empty() {
        n.push(tag_set(&s.tags));
    }
    n
}

/// `DescribeSecurityGroups`: by `GroupId.N`, `GroupName.N` and filters.
pub fn describe_security_groups(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "GroupId",
        "GroupName",
        "Filter",
        "MaxResults",
        "NextToken",
        "DryRun",
    ])?;
    let query = query(params, "GroupId", IdKind::SecurityGroup)?;
    let names: Vec<String> = params
        .list("GroupName")?
        .into_iter()
        .map(str::to_string)
        .collect();
    let found = ctx.lab()?.db.list_security_groups(&query, &names)?;
    Ok(with_token(
        vec![XmlNode::list(
            "securityGroupInfo",
            found
                .items
                .iter()
                .map(|g| security_group_node(g, ctx.region)),
        )],
        found.next_token,
    ))
}

/// A group as DescribeSecurityGroups shows it, its stored rules folded
/// into `IpPermission`s.
fn security_group_node(g: &SecurityGroup, region: &str) -> Vec<XmlNode> {
    let permissions = |direction| {
        g.ip_permissions(direction)
            .iter()
            .map(|p| ip_permission_node(p, &g.owner_id))
            .collect::<Vec<_>>()
    };
    let mut n = vec![
        XmlNode::text("ownerId", g.owner_id.as_str()),
        XmlNode::text("groupId", g.id.as_str()),
        XmlNode::text("groupName", g.name.as_str()),
        XmlNode::text("groupDescription", g.description.as_str()),
        XmlNode::list("ipPermissions", permissions(RuleDirection::Ingress)),
        XmlNode::list("ipPermissionsEgress", permissions(RuleDirection::Egress)),
        XmlNode::text("vpcId", g.vpc_id.as_str()),
        XmlNode::text(
            "securityGroupArn",
            format!(
                "arn:aws:ec2:{region}:{}:security-group/{}",
                g.owner_id, g.id
            ),
        ),
    ];
    if !g.tags.is_empty() {
        n.push(tag_set(&g.tags));
    }
    n
}

/// One `IpPermission`, fields in EC2's order; a peer group is the
/// caller's own (`owner_id`), as every group in the lab is.
fn ip_permission_node(p: &IpPermission, owner_id: &str) -> Vec<XmlNode> {
    let with_description = |mut item: Vec<XmlNode>, description: &Option<String>| {
        if let Some(d) = description {
            item.push(XmlNode::text("description", d.as_str()));
        }
        item
    };
    let mut n = vec![XmlNode::text("ipProtocol", p.ip_protocol.as_str())];
    if let Some(port) = p.from_port {
        n.push(XmlNode::number("fromPort", port));
    }
    if let Some(port) = p.to_port {
        n.push(XmlNode::number("toPort", port));
    }
    n.push(XmlNode::list(
        "groups",
        p.groups.iter().map(|(id, description)| {
            with_description(
                vec![
                    XmlNode::text("userId", owner_id),
                    XmlNode::text("groupId", id.as_str()),
                ],
                description,
            )
        }),
    ));
    n.push(XmlNode::list(
        "ipRanges",
        p.ip_ranges.iter().map(|(cidr, description)| {
            with_description(vec![XmlNode::text("cidrIp", cidr.to_string())], description)
        }),
    ));
    n.push(XmlNode::list("ipv6Ranges", Vec::<Vec<XmlNode>>::new()));
    n.push(XmlNode::list("prefixListIds", Vec::<Vec<XmlNode>>::new()));
    n
}

/// `DescribeNetworkInterfaces`.
pub fn describe_network_interfaces(
    ctx: &Ctx<'_>,
    params: &Params,
) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "NetworkInterfaceId",
        "Filter",
        "MaxResults",
        "NextToken",
        "DryRun",
    ])?;
    let query = query(params, "NetworkInterfaceId", IdKind::NetworkInterface)?;
    let found = ctx.lab()?.db.list_network_interfaces(&query)?;
    Ok(with_token(
        vec![XmlNode::list(
            "networkInterfaceSet",
            found
                .items
                .iter()
                .map(|n| network_interface_node(n, ctx.region)),
        )],
        found.next_token,
    ))
}

/// `ModifyNetworkInterfaceAttribute`: one attribute per call, as in EC2.
pub fn modify_network_interface_attribute(
    ctx: &Ctx<'_>,
    params: &Params,
) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "NetworkInterfaceId",
        "SecurityGroupId",
        "SourceDestCheck",
        "Description",
        "DryRun",
    ])?;
    let id = params.required("NetworkInterfaceId")?;
    check_ids(IdKind::NetworkInterface, &[id])?;
    let groups = params.list("SecurityGroupId")?;
    let mut changes = Vec::new();
    if !groups.is_empty() {
        changes.push(InterfaceChange::Groups(check_ids(
            IdKind::SecurityGroup,
            &groups,
        )?));
    }
    if let Some(v) = params.optional("SourceDestCheck.Value") {
        let on = match v {
            "true" => true,
            "false" => false,
            _ => {
                return Err(Ec2Error::invalid_parameter_value(format!(
                    "Invalid boolean '{v}' for SourceDestCheck"
                )))
            }
        };
        changes.push(InterfaceChange::SourceDestCheck(on));
    }
    if let Some(text) = params.optional("Description.Value") {
        changes.push(InterfaceChange::Description(text.to_string()));
    }
    let change = match changes.len() {
        0 => return Err(Ec2Error::missing_parameter("Attribute")),
        1 => changes.remove(0),
        _ => {
            return Err(Ec2Error::invalid_parameter_combination(
                "Only one attribute can be modified at a time",
            ))
        }
    };
    ctx.lab()?.modify_network_interface(id, &change)?;
    ctx.lab()?.refresh_metadata();
    Ok(Vec::new())
}

pub(super) fn group_set(groups: &[GroupIdentifier]) -> XmlNode {
    XmlNode::list(
        "groupSet",
        groups.iter().map(|g| {
            vec![
                XmlNode::text("groupId", g.group_id.as_str()),
                XmlNode::text("groupName", g.group_name.as_str()),
            ]
        }),
    )
}

/// `association`: the public address an interface holds, if any.
fn association(n: &NetworkInterface, region: &str) -> Option<XmlNode> {
    let ip = n.public_ip?;
    Some(XmlNode::element(
        "association",
        vec![
            XmlNode::text("publicIp", ip.to_string()),
            XmlNode::text("publicDnsName", public_dns_name(ip, region)),
            XmlNode::text("ipOwnerId", "amazon"),
        ],
    ))
}

/// `privateIpAddressesSet`: the one (primary) address.
fn private_ip_set(n: &NetworkInterface, region: &str) -> XmlNode {
    let mut item = vec![
        XmlNode::text("privateIpAddress", n.private_ip_address.to_string()),
        XmlNode::text(
            "privateDnsName",
            private_dns_name(n.private_ip_address, region),
        ),
        XmlNode::bool("primary", true),
    ];
    item.extend(association(n, region));
    XmlNode::list("privateIpAddressesSet", [item])
}

/// The members DescribeNetworkInterfaces' `NetworkInterface` and
/// DescribeInstances' `InstanceNetworkInterface` share; each shape adds
/// its own.
fn interface_common_nodes(n: &NetworkInterface, region: &str) -> Vec<XmlNode> {
    vec![
        XmlNode::text("networkInterfaceId", n.id.as_str()),
        XmlNode::text("subnetId", n.subnet_id.as_str()),
        XmlNode::text("vpcId", n.vpc_id.as_str()),
        XmlNode::text("description", n.description.as_str()),
        XmlNode::text("ownerId", n.owner_id.as_str()),
        XmlNode::text("status", n.status()),
        XmlNode::text("macAddress", n.mac_address.as_str()),
        XmlNode::text("privateIpAddress", n.private_ip_address.to_string()),
        XmlNode::text(
            "privateDnsName",
            private_dns_name(n.private_ip_address, region),
        ),
        XmlNode::bool("sourceDestCheck", n.source_dest_check),
        group_set(&n.groups),
    ]
    .into_iter()
    .chain(association(n, region))
    .collect()
}

fn network_interface_node(n: &NetworkInterface, region: &str) -> Vec<XmlNode> {
    let mut out = interface_common_nodes(n, region);
    out.extend([
        XmlNode::text("availabilityZone", n.availability_zone.as_str()),
        XmlNode::bool("requesterManaged", false),
    ]);
    if let Some(a) = &n.attachment {
        out.push(XmlNode::element(
            "attachment",
            vec![
                XmlNode::text("attachmentId", a.attachment_id.as_str()),
                XmlNode::text("instanceId", a.instance_id.as_str()),
                XmlNode::text("instanceOwnerId", DEFAULT_OWNER_ID),
                XmlNode::number("deviceIndex", a.device_index),
                XmlNode::number("networkCardIndex", 0),
                XmlNode::text("status", "attached"),
                XmlNode::timestamp("attachTime", system_time_ms(a.attach_time)),
                XmlNode::bool("deleteOnTermination", a.delete_on_termination),
            ],
        ));
    }
    // Always present, even empty: AWS sends it, and clients index it
    // (Ansible's ec2_eni_info reads `TagSet` unguarded).
    out.push(tag_set(&n.tags));
    out.extend([
        private_ip_set(n, region),
        XmlNode::list("ipv6AddressesSet", Vec::<Vec<XmlNode>>::new()),
        XmlNode::text("interfaceType", "interface"),
    ]);
    out
}

/// The networking members of one `instancesSet/item`: `subnetId`, `vpcId`,
/// `privateIpAddress`, `privateDnsName`, `sourceDestCheck`, `groupSet`
/// and `networkInterfaceSet`, from the primary interface. A terminated
/// instance has none, and shows only empty sets, as in EC2.
pub(super) fn instance_network_nodes(
    interfaces: &[NetworkInterface],
    primary: Option<&NetworkInterface>,
    region: &str,
) -> Vec<XmlNode> {
    let mut out = Vec::new();
    match primary {
        Some(p) => out.extend([
            XmlNode::text(
                "privateDnsName",
                private_dns_name(p.private_ip_address, region),
            ),
            XmlNode::text("subnetId", p.subnet_id.as_str()),
            XmlNode::text("vpcId", p.vpc_id.as_str()),
            XmlNode::text("privateIpAddress", p.private_ip_address.to_string()),
            XmlNode::bool("sourceDestCheck", p.source_dest_check),
            group_set(&p.groups),
        ]),
        None => out.extend([
            XmlNode::text("privateDnsName", ""),
            XmlNode::list("groupSet", Vec::<Vec<XmlNode>>::new()),
        ]),
    }
    out.push(XmlNode::list(
        "networkInterfaceSet",
        interfaces.iter().map(|n| {
            let mut item = interface_common_nodes(n, region);
            if let Some(a) = &n.attachment {
                item.push(XmlNode::element(
                    "attachment",
                    vec![
                        XmlNode::text("attachmentId", a.attachment_id.as_str()),
                        XmlNode::number("deviceIndex", a.device_index),
                        XmlNode::text("status", "attached"),
                        XmlNode::timestamp("attachTime", system_time_ms(a.attach_time)),
                        XmlNode::bool("deleteOnTermination", a.delete_on_termination),
                        XmlNode::number("networkCardIndex", 0),
                    ],
                ));
            }
            item.extend([
                private_ip_set(n, region),
                XmlNode::list("ipv6AddressesSet", Vec::<Vec<XmlNode>>::new()),
                XmlNode::text("interfaceType", "interface"),
            ]);
            item
        }),
    ));
    out
}

/// The top-level RunInstances parameters this module reads.
pub(super) const LAUNCH_PARAMETERS: &[&str] = &[
    "SubnetId",
    "PrivateIpAddress",
    "SecurityGroupId",
    "SecurityGroup",
    "NetworkInterface",
];

fn parse_ip(name: &str, text: &str) -> Result<Ipv4Addr, Ec2Error> {
    text.parse().map_err(|_| {
        Ec2Error::invalid_parameter_value(format!(
            "Value ({text}) for parameter {name} is invalid. Not a valid IPv4 address."
        ))
    })
}

fn strings(list: Vec<&str>) -> Vec<String> {
    list.into_iter().map(str::to_string).collect()
}

/// Reads `SubnetId`, `PrivateIpAddress`, `SecurityGroupId.N`,
/// `SecurityGroup.N` and `NetworkInterface.N.*`. ec2lab gives an instance
/// one interface, so only `NetworkInterface.1` with device index 0 is
/// accepted; the instance-level forms and the interface form exclude each
/// other, as in EC2.
pub(super) fn parse_launch_network(params: &Params) -> Result<LaunchNetwork, Ec2Error> {
    let mut net = LaunchNetwork {
        subnet_id: params.optional("SubnetId").map(str::to_string),
        private_ip: params
            .optional("PrivateIpAddress")
            .map(|ip| parse_ip("PrivateIpAddress", ip))
            .transpose()?,
        group_ids: strings(params.list("SecurityGroupId")?),
        group_names: strings(params.list("SecurityGroup")?),
        delete_on_termination: true,
        description: String::new(),
        associate_public_ip: None,
    };
    let interfaces = params.structs("NetworkInterface")?;
    if interfaces.len() > 1 {
        return Err(Ec2Error::unsupported_operation(
            "ec2lab gives an instance one network interface; more than one \
             NetworkInterface is not supported yet",
        ));
    }
    if let Some(eni) = interfaces.first() {
        eni.reject_unknown(&[
            "DeviceIndex",
            "SubnetId",
            "PrivateIpAddress",
            "PrivateIpAddresses",
            "DeleteOnTermination",
            "AssociatePublicIpAddress",
            "SecurityGroupId",
            "Description",
            "NetworkInterfaceId",
            "SecondaryPrivateIpAddressCount",
            "NetworkCardIndex",
            "InterfaceType",
        ])?;
        if net.subnet_id.is_some() {
            return Err(Ec2Error::invalid_parameter_combination(
                "Network interfaces and an instance-level subnet ID may not be specified on \
                 the same request",
            ));
        }
        if !net.group_ids.is_empty() || !net.group_names.is_empty() {
            return Err(Ec2Error::invalid_parameter_combination(
                "Network interfaces and an instance-level security groups may not be \
                 specified on the same request",
            ));
        }
        if net.private_ip.is_some() {
            return Err(Ec2Error::invalid_parameter_combination(
                "Network interfaces and an instance-level private IP address may not be \
                 specified on the same request",
            ));
        }
        match eni.int("DeviceIndex")? {
            Some(0) => {}
            Some(n) => {
                return Err(Ec2Error::invalid_parameter_value(format!(
                    "ec2lab gives an instance one network interface, at device index 0; \
                     got device index {n}"
                )))
            }
            None => {
                return Err(Ec2Error::missing_parameter(
                    "NetworkInterface.1.DeviceIndex",
                ))
            }
        }
        if eni.optional("NetworkInterfaceId").is_some() {
            return Err(Ec2Error::unsupported_operation(
                "Attaching an existing network interface at launch is not supported by \
                 ec2lab yet",
            ));
        }
        if eni.int("SecondaryPrivateIpAddressCount")?.unwrap_or(0) > 0 {
            return Err(Ec2Error::unsupported_operation(
                "Secondary private IP addresses are not supported by ec2lab yet",
            ));
        }
        net.subnet_id = eni.optional("SubnetId").map(str::to_string);
        net.private_ip = eni
            .optional("PrivateIpAddress")
            .map(|ip| parse_ip("NetworkInterface.1.PrivateIpAddress", ip))
            .transpose()?;
        // `PrivateIpAddresses.N` may name the primary address instead.
        for extra in eni.structs("PrivateIpAddresses")? {
            extra.reject_unknown(&["PrivateIpAddress", "Primary"])?;
            let ip = parse_ip(
                "NetworkInterface.1.PrivateIpAddresses.PrivateIpAddress",
                extra.required("PrivateIpAddress")?,
            )?;
            let primary = extra.bool("Primary")?.unwrap_or(true);
            match (primary, net.private_ip) {
                (true, None) => net.private_ip = Some(ip),
                (true, Some(existing)) if existing == ip => {}
                _ => {
                    return Err(Ec2Error::unsupported_operation(
                        "Secondary private IP addresses are not supported by ec2lab yet",
                    ))
                }
            }
        }
        net.group_ids = strings(eni.list("SecurityGroupId")?);
        net.delete_on_termination = eni.bool("DeleteOnTermination")?.unwrap_or(true);
        net.description = eni.optional("Description").unwrap_or("").to_string();
        net.associate_public_ip = eni.bool("AssociatePublicIpAddress")?;
    }
    if let Some(subnet) = &net.subnet_id {
        check_ids(IdKind::Subnet, &[subnet.as_str()])?;
    }
    let ids: Vec<&str> = net.group_ids.iter().map(String::as_str).collect();
    check_ids(IdKind::SecurityGroup, &ids)?;
    Ok(net)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::xml::render_response;
    use crate::model::vpc::{
        standard_rules, Cidr, RulePeer, RuleRecord, SecurityGroupRule,
        DEFAULT_SECURITY_GROUP_DESCRIPTION, DEFAULT_SECURITY_GROUP_NAME,
    };

    fn group(name: &str, rules: Vec<SecurityGroupRule>) -> SecurityGroup {
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| RuleRecord {
                id: format!("sgr-{i:017x}"),
                group_id: "sg-0123456789abcdef0".into(),
                rule,
            })
            .collect();
        SecurityGroup {
            id: "sg-0123456789abcdef0".into(),
            name: name.into(),
            description: DEFAULT_SECURITY_GROUP_DESCRIPTION.into(),
            vpc_id: "vpc-0123456789abcdef0".into(),
            owner_id: DEFAULT_OWNER_ID.into(),
            rules,
            tags: Default::default(),
        }
    }

    fn render(g: &SecurityGroup) -> String {
        render_response(
            "DescribeSecurityGroups",
            "req",
            &[XmlNode::list(
                "securityGroupInfo",
                [security_group_node(g, "us-east-1")],
            )],
        )
    }

    /// The bytes ec2lab answered with when the default group's rules were
    /// fixed in this renderer: storing them must not change a byte.
    #[test]
    fn the_default_groups_stored_rules_render_as_before() {
        let g = group(
            DEFAULT_SECURITY_GROUP_NAME,
            standard_rules("sg-0123456789abcdef0", DEFAULT_SECURITY_GROUP_NAME),
        );
        let expected = concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            "\n",
            r#"<DescribeSecurityGroupsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">"#,
            "<requestId>req</requestId><securityGroupInfo><item>",
            "<ownerId>000000000000</ownerId><groupId>sg-0123456789abcdef0</groupId>",
            "<groupName>default</groupName>",
            "<groupDescription>default VPC security group</groupDescription>",
            "<ipPermissions><item><ipProtocol>-1</ipProtocol><groups><item>",
            "<userId>000000000000</userId><groupId>sg-0123456789abcdef0</groupId>",
            "</item></groups><ipRanges></ipRanges><ipv6Ranges></ipv6Ranges>",
            "<prefixListIds></prefixListIds></item></ipPermissions>",
            "<ipPermissionsEgress><item><ipProtocol>-1</ipProtocol><groups></groups>",
            "<ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item></ipRanges>",
            "<ipv6Ranges></ipv6Ranges><prefixListIds></prefixListIds></item>",
            "</ipPermissionsEgress><vpcId>vpc-0123456789abcdef0</vpcId>",
            "<securityGroupArn>arn:aws:ec2:us-east-1:000000000000:security-group/",
            "sg-0123456789abcdef0</securityGroupArn></item></securityGroupInfo>",
            "</DescribeSecurityGroupsResponse>",
        );
        assert_eq!(render(&g), expected);
    }

    #[test]
    fn port_rules_render_their_range_and_descriptions() {
        let cidr = Cidr::parse("10.0.0.0/8").expect("cidr");
        let g = group(
            "web",
            vec![SecurityGroupRule {
                direction: RuleDirection::Ingress,
                ip_protocol: "tcp".into(),
                from_port: Some(22),
                to_port: Some(22),
                peer: RulePeer::Cidr(cidr),
                description: Some("ssh".into()),
            }],
        );
        let xml = render(&g);
        assert!(
            xml.contains(concat!(
                "<ipPermissions><item><ipProtocol>tcp</ipProtocol><fromPort>22</fromPort>",
                "<toPort>22</toPort><groups></groups><ipRanges><item><cidrIp>10.0.0.0/8</cidrIp>",
                "<description>ssh</description></item></ipRanges>"
            )),
            "{xml}"
        );
        assert!(
            xml.contains("<ipPermissionsEgress></ipPermissionsEgress>"),
            "{xml}"
        );
    }
}
