//! Elastic IPs: AllocateAddress, AssociateAddress, DisassociateAddress,
//! ReleaseAddress, DescribeAddresses and DescribeAddressesAttribute (domain
//! `vpc`; EC2-Classic's `standard` addresses are gone from AWS and absent
//! here).

use std::net::Ipv4Addr;

use super::common::{check_ids, filters, page, tag_set, tag_specifications};
use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::db::{AddressQuery, AddressRef, AssociationTarget};
use crate::model::address::ElasticIp;
use crate::model::ids::IdKind;
use crate::model::{DEFAULT_OWNER_ID, DEFAULT_REGION};

fn parse_ip(name: &str, text: &str) -> Result<Ipv4Addr, Ec2Error> {
    text.parse().map_err(|_| {
        Ec2Error::invalid_parameter_value(format!("Invalid value '{text}' for {name}"))
    })
}

/// `AllocationId` (checked) or else `PublicIp`, one required.
fn address_ref(params: &Params, id_name: &str, kind: IdKind) -> Result<AddressRef, Ec2Error> {
    match (params.optional(id_name), params.optional("PublicIp")) {
        (Some(id), None) => Ok(AddressRef::Id(check_ids(kind, &[id])?.remove(0))),
        (None, Some(ip)) => Ok(AddressRef::PublicIp(parse_ip("PublicIp", ip)?)),
        (Some(_), Some(_)) => Err(Ec2Error::invalid_parameter_combination(format!(
            "You may specify {id_name} or PublicIp, not both"
        ))),
        (None, None) => Err(Ec2Error::missing_parameter(id_name)),
    }
}

/// `AllocateAddress`.
pub fn allocate_address(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "Domain",
        "Address",
        "PublicIpv4Pool",
        "NetworkBorderGroup",
        "CustomerOwnedIpv4Pool",
        "TagSpecification",
        "DryRun",
    ])?;
    match params.optional("Domain") {
        None | Some("vpc") => {}
        Some(other) => {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Invalid value '{other}' for domain: ec2lab has VPC addresses only"
            )))
        }
    }
    for byo in ["Address", "PublicIpv4Pool", "CustomerOwnedIpv4Pool"] {
        if params.optional(byo).is_some() {
            return Err(Ec2Error::unsupported_operation(format!(
                "{byo}: addresses come from the lab's one pool (ec2lab serve --public-pool)"
            )));
        }
    }
    let tags = tag_specifications(params, "elastic-ip")?
        .into_iter()
        .collect();
    let eip = ctx.lab()?.allocate_address(&tags)?;
    let mut out = vec![
        XmlNode::text("publicIp", eip.public_ip.to_string()),
        XmlNode::text("domain", "vpc"),
        XmlNode::text("allocationId", eip.allocation_id.as_str()),
        XmlNode::text("publicIpv4Pool", "amazon"),
        XmlNode::text("networkBorderGroup", DEFAULT_REGION),
    ];
    if !eip.tags.is_empty() {
        out.push(tag_set(&eip.tags));
    }
    Ok(out)
}

/// `AssociateAddress`.
pub fn associate_address(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "AllocationId",
        "PublicIp",
        "InstanceId",
        "NetworkInterfaceId",
        "PrivateIpAddress",
        "AllowReassociation",
        "DryRun",
    ])?;
    let address = address_ref(params, "AllocationId", IdKind::ElasticIp)?;
    let target = match (
        params.optional("NetworkInterfaceId"),
        params.optional("InstanceId"),
    ) {
        (Some(eni), _) => {
            AssociationTarget::Interface(check_ids(IdKind::NetworkInterface, &[eni])?.remove(0))
        }
        (None, Some(instance)) => {
            AssociationTarget::Instance(check_ids(IdKind::Instance, &[instance])?.remove(0))
        }
        (None, None) => return Err(Ec2Error::missing_parameter("InstanceId")),
    };
    // Interfaces have one private address here, so any other is wrong.
    if let Some(ip) = params.optional("PrivateIpAddress") {
        parse_ip("PrivateIpAddress", ip)?;
    }
    let allow = params.bool("AllowReassociation")?.unwrap_or(false);
    let association_id = ctx.lab()?.associate_address(&address, &target, allow)?;
    ctx.lab()?.refresh_metadata();
    Ok(vec![XmlNode::text("associationId", association_id)])
}

/// `DisassociateAddress`.
pub fn disassociate_address(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["AssociationId", "PublicIp", "DryRun"])?;
    let association = address_ref(params, "AssociationId", IdKind::ElasticIpAssociation)?;
    ctx.lab()?.disassociate_address(&association)?;
    ctx.lab()?.refresh_metadata();
    // botocore models no output (EC2 sends a bare `return`).
    Ok(Vec::new())
}

/// `ReleaseAddress`.
pub fn release_address(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["AllocationId", "PublicIp", "NetworkBorderGroup", "DryRun"])?;
    let address = address_ref(params, "AllocationId", IdKind::ElasticIp)?;
    ctx.lab()?.release_address(&address)?;
    Ok(Vec::new())
}

fn address_node(a: &ElasticIp) -> Vec<XmlNode> {
    let mut out = vec![
        XmlNode::text("publicIp", a.public_ip.to_string()),
        XmlNode::text("allocationId", a.allocation_id.as_str()),
        XmlNode::text("domain", "vpc"),
    ];
    if let Some(assoc) = &a.association {
        if let Some(instance) = &assoc.instance_id {
            out.push(XmlNode::text("instanceId", instance.as_str()));
        }
        out.extend([
            XmlNode::text("associationId", assoc.association_id.as_str()),
            XmlNode::text("networkInterfaceId", assoc.network_interface_id.as_str()),
            XmlNode::text("networkInterfaceOwnerId", DEFAULT_OWNER_ID),
            XmlNode::text("privateIpAddress", assoc.private_ip.to_string()),
        ]);
    }
    out.extend([
        tag_set(&a.tags),
        XmlNode::text("publicIpv4Pool", "amazon"),
        XmlNode::text("networkBorderGroup", DEFAULT_REGION),
    ]);
    out
}

/// `DescribeAddresses`.
pub fn describe_addresses(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["PublicIp", "AllocationId", "Filter", "DryRun"])?;
    let query = AddressQuery {
        allocation_ids: check_ids(IdKind::ElasticIp, &params.list("AllocationId")?)?,
        public_ips: params
            .list("PublicIp")?
            .into_iter()
            .map(|ip| parse_ip("PublicIp", ip))
            .collect::<Result<_, _>>()?,
        filters: filters(params)?,
        ..AddressQuery::default()
    };
    let found = ctx.lab()?.db.list_addresses(&query)?;
    Ok(vec![XmlNode::list(
        "addressesSet",
        found.items.iter().map(address_node),
    )])
}

/// The one attribute DescribeAddressesAttribute knows.
const DOMAIN_NAME_ATTRIBUTE: &str = "domain-name";

/// `DescribeAddressesAttribute`: each address's reverse DNS record. The lab
/// serves no reverse DNS and has no ModifyAddressAttribute, so an address
/// is listed without `ptrRecord`, which is how EC2 shows one that has none
/// set. Terraform's `aws_eip` reads this on every refresh and fails on any
/// error but NotFound, so it must answer.
pub fn describe_addresses_attribute(
    ctx: &Ctx<'_>,
    params: &Params,
) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "AllocationId",
        "Attribute",
        "MaxResults",
        "NextToken",
        "DryRun",
    ])?;
    let attribute = params.required("Attribute")?;
    if attribute != DOMAIN_NAME_ATTRIBUTE {
        return Err(Ec2Error::invalid_parameter_value(format!(
            "Value ({attribute}) for parameter attribute is invalid. \
             Expected: '{DOMAIN_NAME_ATTRIBUTE}'."
        )));
    }
    let query = AddressQuery {
        allocation_ids: check_ids(IdKind::ElasticIp, &params.list("AllocationId")?)?,
        page: page(params)?,
        ..AddressQuery::default()
    };
    let found = ctx.lab()?.db.list_addresses(&query)?;
    let mut out = vec![XmlNode::list(
        "addressSet",
        found.items.iter().map(|a| {
            vec![
                XmlNode::text("publicIp", a.public_ip.to_string()),
                XmlNode::text("allocationId", a.allocation_id.as_str()),
            ]
        }),
    )];
    if let Some(token) = found.next_token {
        out.push(XmlNode::text("nextToken", token));
    }
    Ok(out)
}
