//! Security groups users make and change: CreateSecurityGroup,
//! DeleteSecurityGroup, Authorize/RevokeSecurityGroupIngress/Egress and
//! DescribeSecurityGroupRules. (DescribeSecurityGroups is with the other
//! VPC reads in `vpcs`.)
//!
//! Rules arrive in two spellings: `IpPermissions.N` (what boto3 and the
//! CLI's `--ip-permissions` send) and the legacy top-level `IpProtocol`,
//! `FromPort`, `ToPort`, `CidrIp`, `SourceSecurityGroupName` that the
//! CLI's `--protocol tcp --port 22 --cidr 0.0.0.0/0` becomes. Both parse
//! into `RuleRequest`s here; everything else is the repository's.

use super::common::{check_ids, filters, page, tag_set, tag_specifications};
use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::db::{DbError, NetworkQuery, NewSecurityGroup, RevokeRequest};
use crate::model::ids::IdKind;
use crate::model::security_group::{GroupRef, RuleRequest, SecurityGroupError};
use crate::model::vpc::{Cidr, RuleDirection, RulePeer, RuleRecord, ALL_PROTOCOLS};
use crate::model::DEFAULT_OWNER_ID;

/// The permission members of Authorize and Revoke, both directions.
const PERMISSION_PARAMETERS: &[&str] = &[
    "IpPermissions",
    "IpProtocol",
    "FromPort",
    "ToPort",
    "CidrIp",
    "SourceSecurityGroupName",
    "SourceSecurityGroupOwnerId",
];

/// `CreateSecurityGroup`.
pub fn create_security_group(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "GroupName",
        "GroupDescription",
        "VpcId",
        "TagSpecification",
        "DryRun",
    ])?;
    let vpc_id = params
        .optional("VpcId")
        .map(|id| check_ids(IdKind::Vpc, &[id]))
        .transpose()?
        .and_then(|ids| ids.into_iter().next());
    let new = NewSecurityGroup {
        name: params.required("GroupName")?.to_string(),
        description: params.required("GroupDescription")?.to_string(),
        vpc_id,
        tags: tag_specifications(params, "security-group")?
            .into_iter()
            .collect(),
    };
    let group = ctx.lab()?.db.create_security_group(&new)?;
    let mut out = vec![XmlNode::text("groupId", group.id.as_str())];
    if !group.tags.is_empty() {
        out.push(tag_set(&group.tags));
    }
    out.push(XmlNode::text(
        "securityGroupArn",
        group_arn(ctx.region, &group.id),
    ));
    Ok(out)
}

/// `DeleteSecurityGroup`, by `GroupId` or `GroupName`.
pub fn delete_security_group(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["GroupId", "GroupName", "DryRun"])?;
    let group = group_ref(params)?;
    let id = ctx.lab()?.db.delete_security_group(&group)?;
    Ok(vec![
        XmlNode::bool("return", true),
        XmlNode::text("groupId", id),
    ])
}

/// `DescribeSecurityGroupRules`: by `SecurityGroupRuleId.N` and filters
/// (`group-id`, `security-group-rule-id`).
pub fn describe_security_group_rules(
    ctx: &Ctx<'_>,
    params: &Params,
) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "SecurityGroupRuleId",
        "Filter",
        "MaxResults",
        "NextToken",
        "DryRun",
    ])?;
    let query = NetworkQuery {
        ids: check_ids(
            IdKind::SecurityGroupRule,
            &params.list("SecurityGroupRuleId")?,
        )?,
        filters: filters(params)?,
        page: page(params)?,
    };
    let found = ctx.lab()?.db.list_security_group_rules(&query)?;
    let mut out = vec![XmlNode::list(
        "securityGroupRuleSet",
        found.items.iter().map(|r| rule_node(r, ctx.region)),
    )];
    if let Some(token) = found.next_token {
        out.push(XmlNode::text("nextToken", token));
    }
    Ok(out)
}

/// `UnknownParameter` for anything an Authorize or Revoke of `direction`
/// does not take: the group (by id; by name for ingress only, as on EC2),
/// the permissions, `DryRun`, and the action's own `extra` parameters.
fn reject_unknown_rule_parameters(
    params: &Params,
    direction: RuleDirection,
    extra: &[&'static str],
) -> Result<(), Ec2Error> {
    let mut known = vec!["GroupId", "DryRun"];
    if direction == RuleDirection::Ingress {
        known.push("GroupName");
    }
    known.extend(extra);
    known.extend(PERMISSION_PARAMETERS);
    params.reject_unknown(&known)
}

/// `AuthorizeSecurityGroupIngress` and `AuthorizeSecurityGroupEgress`.
pub(super) fn authorize(
    ctx: &Ctx<'_>,
    params: &Params,
    direction: RuleDirection,
) -> Result<Vec<XmlNode>, Ec2Error> {
    reject_unknown_rule_parameters(params, direction, &["TagSpecification"])?;
    let group = group_ref(params)?;
    let requests = permissions(params)?;
    // Rule tags need tags on `sgr-` ids; refuse them rather than drop them.
    if !tag_specifications(params, "security-group-rule")?.is_empty() {
        return Err(Ec2Error::unsupported_operation(
            "Tags on security group rules are not supported by ec2lab yet",
        ));
    }
    let added = ctx
        .lab()?
        .authorize_security_group_rules(&group, direction, &requests)?;
    Ok(vec![
        XmlNode::bool("return", true),
        XmlNode::list(
            "securityGroupRuleSet",
            added.iter().map(|r| rule_node(r, ctx.region)),
        ),
    ])
}

/// `RevokeSecurityGroupIngress` and `RevokeSecurityGroupEgress`.
pub(super) fn revoke(
    ctx: &Ctx<'_>,
    params: &Params,
    direction: RuleDirection,
) -> Result<Vec<XmlNode>, Ec2Error> {
    reject_unknown_rule_parameters(params, direction, &["SecurityGroupRuleId"])?;
    let group = group_ref(params)?;
    // An IPv6 or prefix-list rule cannot exist in an IPv4-only lab, so
    // revoking one is revoking a rule that is not there: EC2's answer to
    // that, not Authorize's UnsupportedOperation. Terraform's
    // `aws_security_group` revokes the IPv6 default egress (`::/0`) of
    // every group it creates and accepts exactly this answer.
    for p in params.structs("IpPermissions")? {
        if !p.structs("Ipv6Ranges")?.is_empty() || !p.structs("PrefixListIds")?.is_empty() {
            return Err(DbError::from(SecurityGroupError::RuleNotFound).into());
        }
    }
    let request = RevokeRequest {
        permissions: permissions(params)?,
        rule_ids: check_ids(
            IdKind::SecurityGroupRule,
            &params.list("SecurityGroupRuleId")?,
        )?,
    };
    let revoked = ctx
        .lab()?
        .revoke_security_group_rules(&group, direction, &request)?;
    Ok(vec![
        XmlNode::bool("return", true),
        XmlNode::list(
            "revokedSecurityGroupRuleSet",
            revoked.iter().map(revoked_rule_node),
        ),
    ])
}

/// `GroupId` (checked) or else `GroupName`; one is required.
fn group_ref(params: &Params) -> Result<GroupRef, Ec2Error> {
    match (params.optional("GroupId"), params.optional("GroupName")) {
        (Some(id), _) => {
            check_ids(IdKind::SecurityGroup, &[id])?;
            Ok(GroupRef::Id(id.to_string()))
        }
        (None, Some(name)) => Ok(GroupRef::Name(name.to_string())),
        (None, None) => Err(Ec2Error::missing_parameter("GroupId")),
    }
}

fn parse_cidr(text: &str) -> Result<Cidr, Ec2Error> {
    Cidr::parse(text).ok_or_else(|| {
        Ec2Error::invalid_parameter_value(format!(
            "Value ({text}) for parameter cidrIp is invalid. This is not a valid CIDR block."
        ))
    })
}

/// Every rule the request names: one per peer of each `IpPermissions.N`,
/// plus the legacy top-level form.
fn permissions(params: &Params) -> Result<Vec<RuleRequest>, Ec2Error> {
    let mut out = Vec::new();
    for p in params.structs("IpPermissions")? {
        p.reject_unknown(&[
            "IpProtocol",
            "FromPort",
            "ToPort",
            "Groups",
            "IpRanges",
            "Ipv6Ranges",
            "PrefixListIds",
        ])?;
        if !p.structs("Ipv6Ranges")?.is_empty() || !p.structs("PrefixListIds")?.is_empty() {
            return Err(Ec2Error::unsupported_operation(
                "IPv6 ranges and prefix lists are not supported by ec2lab (its VPCs are IPv4 only)",
            ));
        }
        let rule = |peer, description: Option<&str>| -> Result<RuleRequest, Ec2Error> {
            Ok(RuleRequest {
                ip_protocol: p.required("IpProtocol")?.to_string(),
                from_port: p.int("FromPort")?,
                to_port: p.int("ToPort")?,
                peer,
                description: description.map(str::to_string),
            })
        };
        for range in p.structs("IpRanges")? {
            range.reject_unknown(&["CidrIp", "Description"])?;
            let cidr = parse_cidr(range.required("CidrIp")?)?;
            out.push(rule(RulePeer::Cidr(cidr), range.optional("Description"))?);
        }
        for pair in p.structs("Groups")? {
            pair.reject_unknown(&[
                "GroupId",
                "GroupName",
                "UserId",
                "Description",
                "VpcId",
                "VpcPeeringConnectionId",
                "PeeringStatus",
            ])?;
            let key = match (pair.optional("GroupId"), pair.optional("GroupName")) {
                (Some(id), _) => check_ids(IdKind::SecurityGroup, &[id])?.concat(),
                (None, Some(name)) => name.to_string(),
                (None, None) => return Err(Ec2Error::missing_parameter("GroupId")),
            };
            out.push(rule(RulePeer::Group(key), pair.optional("Description"))?);
        }
    }
    let legacy_peer = match (
        params.optional("CidrIp"),
        params.optional("SourceSecurityGroupName"),
    ) {
        (Some(_), Some(_)) => {
            return Err(Ec2Error::invalid_parameter_combination(
                "CidrIp and SourceSecurityGroupName cannot be used together",
            ))
        }
        (Some(cidr), None) => Some(RulePeer::Cidr(parse_cidr(cidr)?)),
        (None, Some(name)) => Some(RulePeer::Group(name.to_string())),
        (None, None) => None,
    };
    let legacy_ports = params.optional("IpProtocol").is_some()
        || params.optional("FromPort").is_some()
        || params.optional("ToPort").is_some();
    match legacy_peer {
        Some(peer) => out.push(RuleRequest {
            ip_protocol: params
                .optional("IpProtocol")
                .unwrap_or(ALL_PROTOCOLS)
                .to_string(),
            from_port: params.int("FromPort")?,
            to_port: params.int("ToPort")?,
            peer,
            description: None,
        }),
        None if legacy_ports => return Err(Ec2Error::missing_parameter("CidrIp")),
        None => {}
    }
    Ok(out)
}

fn group_arn(region: &str, id: &str) -> String {
    format!("arn:aws:ec2:{region}:{DEFAULT_OWNER_ID}:security-group/{id}")
}

/// EC2 shows "no ports" (all traffic, other protocols) as -1 in
/// `SecurityGroupRule`, unlike `IpPermission` which leaves them out.
fn port_or_all(port: Option<i32>) -> i32 {
    port.unwrap_or(-1)
}

/// One `SecurityGroupRule`, fields in EC2's order.
fn rule_node(r: &RuleRecord, region: &str) -> Vec<XmlNode> {
    let mut n = vec![
        XmlNode::text("securityGroupRuleId", r.id.as_str()),
        XmlNode::text("groupId", r.group_id.as_str()),
        XmlNode::text("groupOwnerId", DEFAULT_OWNER_ID),
        XmlNode::bool("isEgress", r.rule.direction == RuleDirection::Egress),
        XmlNode::text("ipProtocol", r.rule.ip_protocol.as_str()),
        XmlNode::number("fromPort", port_or_all(r.rule.from_port)),
        XmlNode::number("toPort", port_or_all(r.rule.to_port)),
    ];
    match &r.rule.peer {
        RulePeer::Cidr(cidr) => n.push(XmlNode::text("cidrIpv4", cidr.to_string())),
        RulePeer::Group(id) => n.push(XmlNode::element(
            "referencedGroupInfo",
            vec![
                XmlNode::text("groupId", id.as_str()),
                XmlNode::text("userId", DEFAULT_OWNER_ID),
            ],
        )),
    }
    if let Some(d) = &r.rule.description {
        n.push(XmlNode::text("description", d.as_str()));
    }
    n.push(XmlNode::list("tagSet", Vec::<Vec<XmlNode>>::new()));
    n.push(XmlNode::text(
        "securityGroupRuleArn",
        format!(
            "arn:aws:ec2:{region}:{DEFAULT_OWNER_ID}:security-group-rule/{}",
            r.id
        ),
    ));
    n
}

/// One `RevokedSecurityGroupRule`.
fn revoked_rule_node(r: &RuleRecord) -> Vec<XmlNode> {
    let mut n = vec![
        XmlNode::text("securityGroupRuleId", r.id.as_str()),
        XmlNode::text("groupId", r.group_id.as_str()),
        XmlNode::bool("isEgress", r.rule.direction == RuleDirection::Egress),
        XmlNode::text("ipProtocol", r.rule.ip_protocol.as_str()),
        XmlNode::number("fromPort", port_or_all(r.rule.from_port)),
        XmlNode::number("toPort", port_or_all(r.rule.to_port)),
    ];
    match &r.rule.peer {
        RulePeer::Cidr(cidr) => n.push(XmlNode::text("cidrIpv4", cidr.to_string())),
        RulePeer::Group(id) => n.push(XmlNode::text("referencedGroupId", id.as_str())),
    }
    if let Some(d) = &r.rule.description {
        n.push(XmlNode::text("description", d.as_str()));
    }
    n
}
