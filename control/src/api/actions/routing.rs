//! A VPC's routing, read-only: DescribeRouteTables, DescribeNetworkAcls
//! and DescribeInternetGateways.
//!
//! Terraform's `aws_vpc` and `aws_default_vpc` read the main route table
//! (`association.main` + `vpc-id`) and the default ACL (`default` +
//! `vpc-id`) on every refresh; an `UnsupportedOperation` there left
//! `main_route_table_id` and `default_network_acl_id` empty. The objects
//! are derived from the VPC (`model::routing`), so there is nothing to
//! create, change or delete, and those actions stay unsupported.

use super::common::{check_ids, filters, page, tag_set};
use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::db::NetworkQuery;
use crate::model::ids::IdKind;
use crate::model::routing::{InternetGateway, NetworkAcl, RouteTable};

/// `{name}.N` ids of `kind`, filters and page.
fn query(params: &Params, name: &str, kind: IdKind) -> Result<NetworkQuery, Ec2Error> {
    Ok(NetworkQuery {
        ids: check_ids(kind, &params.list(name)?)?,
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

/// `DescribeRouteTables`.
pub fn describe_route_tables(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "RouteTableId",
        "Filter",
        "MaxResults",
        "NextToken",
        "DryRun",
    ])?;
    let query = query(params, "RouteTableId", IdKind::RouteTable)?;
    let found = ctx.lab()?.db.list_route_tables(&query)?;
    Ok(with_token(
        vec![XmlNode::list(
            "routeTableSet",
            found.items.iter().map(route_table_node),
        )],
        found.next_token,
    ))
}

fn route_table_node(t: &RouteTable) -> Vec<XmlNode> {
    vec![
        XmlNode::text("routeTableId", t.id.as_str()),
        XmlNode::text("vpcId", t.vpc_id.as_str()),
        XmlNode::text("ownerId", t.owner_id.as_str()),
        XmlNode::list(
            "routeSet",
            t.routes.iter().map(|r| {
                vec![
                    XmlNode::text("destinationCidrBlock", r.destination_cidr_block.as_str()),
                    XmlNode::text("gatewayId", r.gateway_id.as_str()),
                    XmlNode::text("state", "active"),
                    XmlNode::text("origin", r.origin),
                ]
            }),
        ),
        XmlNode::list(
            "associationSet",
            [vec![
                XmlNode::text("routeTableAssociationId", t.main_association_id.as_str()),
                XmlNode::text("routeTableId", t.id.as_str()),
                XmlNode::bool("main", true),
                XmlNode::element(
                    "associationState",
                    vec![XmlNode::text("state", "associated")],
                ),
            ]],
        ),
        XmlNode::list("propagatingVgwSet", Vec::<Vec<XmlNode>>::new()),
        tag_set(&t.tags),
    ]
}

/// `DescribeNetworkAcls`.
pub fn describe_network_acls(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "NetworkAclId",
        "Filter",
        "MaxResults",
        "NextToken",
        "DryRun",
    ])?;
    let query = query(params, "NetworkAclId", IdKind::NetworkAcl)?;
    let found = ctx.lab()?.db.list_network_acls(&query)?;
    Ok(with_token(
        vec![XmlNode::list(
            "networkAclSet",
            found.items.iter().map(network_acl_node),
        )],
        found.next_token,
    ))
}

fn network_acl_node(a: &NetworkAcl) -> Vec<XmlNode> {
    vec![
        XmlNode::text("networkAclId", a.id.as_str()),
        XmlNode::text("vpcId", a.vpc_id.as_str()),
        XmlNode::bool("default", a.is_default),
        XmlNode::list(
            "entrySet",
            a.entries.iter().map(|e| {
                vec![
                    XmlNode::number("ruleNumber", e.rule_number),
                    XmlNode::text("protocol", "-1"),
                    XmlNode::text("ruleAction", e.rule_action),
                    XmlNode::bool("egress", e.egress),
                    XmlNode::text("cidrBlock", e.cidr_block.as_str()),
                ]
            }),
        ),
        XmlNode::list(
            "associationSet",
            a.associations.iter().map(|(association_id, subnet_id)| {
                vec![
                    XmlNode::text("networkAclAssociationId", association_id.as_str()),
                    XmlNode::text("networkAclId", a.id.as_str()),
                    XmlNode::text("subnetId", subnet_id.as_str()),
                ]
            }),
        ),
        tag_set(&a.tags),
        XmlNode::text("ownerId", a.owner_id.as_str()),
    ]
}

/// `DescribeInternetGateways`.
pub fn describe_internet_gateways(
    ctx: &Ctx<'_>,
    params: &Params,
) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "InternetGatewayId",
        "Filter",
        "MaxResults",
        "NextToken",
        "DryRun",
    ])?;
    let query = query(params, "InternetGatewayId", IdKind::InternetGateway)?;
    let found = ctx.lab()?.db.list_internet_gateways(&query)?;
    Ok(with_token(
        vec![XmlNode::list(
            "internetGatewaySet",
            found.items.iter().map(internet_gateway_node),
        )],
        found.next_token,
    ))
}

fn internet_gateway_node(g: &InternetGateway) -> Vec<XmlNode> {
    vec![
        XmlNode::text("internetGatewayId", g.id.as_str()),
        XmlNode::text("ownerId", g.owner_id.as_str()),
        XmlNode::list(
            "attachmentSet",
            [vec![
                XmlNode::text("vpcId", g.vpc_id.as_str()),
                XmlNode::text("state", "available"),
            ]],
        ),
        tag_set(&g.tags),
    ]
}
