//! A VPC's routing objects as EC2 shows them: its main route table, its
//! default network ACL and (for the default VPC) its internet gateway.
//!
//! None of them is stored. ec2lab has no CreateRouteTable, CreateNetworkAcl
//! or CreateInternetGateway, so each VPC has exactly the objects AWS gives
//! a new default VPC, and they are derived from the VPC and its subnets on
//! every read. Their ids are derived from the VPC's (as
//! [`Vpc::cidr_association_id`] is), so two reads always agree, and tools
//! that compare a resource across reads (Terraform's refresh) see no
//! change. The cost: tags cannot be put on them (CreateTags answers
//! `InvalidRouteTableID.NotFound` and friends), and the day ec2lab lets
//! users change routes these become tables.
//!
//! They describe what the data plane does (DESIGN.md, "Networking"): the
//! VPC router delivers inside the VPC's block, and the default VPC's
//! default route leaves through its `igw` veth to the uplink
//! (`network::uplink`); nothing filters by subnet, which is what a default
//! ACL that allows everything says.

use super::filter::Filterable;
use super::vpc::{Subnet, Vpc, ANYWHERE};
use super::{is_tag_filter, tag_filter_values, Tags};

/// The digits of a resource id (`vpc-0a1b…` → `0a1b…`), which the derived
/// ids reuse so they stay unique per VPC and subnet.
fn id_digits(id: &str) -> &str {
    id.rsplit('-').next().unwrap_or(id)
}

/// `rtb-…` of `vpc`'s main route table.
pub fn main_route_table_id(vpc_id: &str) -> String {
    format!("rtb-{}", id_digits(vpc_id))
}

/// `acl-…` of `vpc`'s default network ACL.
pub fn default_network_acl_id(vpc_id: &str) -> String {
    format!("acl-{}", id_digits(vpc_id))
}

/// `igw-…` of the default VPC's internet gateway.
pub fn internet_gateway_id(vpc_id: &str) -> String {
    format!("igw-{}", id_digits(vpc_id))
}

/// The `gatewayId` EC2 gives the route to the VPC's own block.
pub const LOCAL_GATEWAY: &str = "local";

/// One route (`routeSet/item`). Every route here is active: the VPC router
/// and the internet gateway exist as long as the VPC does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination_cidr_block: String,
    /// `local` or an `igw-…`.
    pub gateway_id: String,
    /// EC2's `origin`: `CreateRouteTable` for the local route (made with
    /// the table), `CreateRoute` for the default route AWS adds to a
    /// default VPC's table.
    pub origin: &'static str,
}

/// A route table (`routeTableSet/item`). Only main tables exist, and a
/// main table's one association is the VPC-wide `main` one: subnets use it
/// implicitly, and EC2 lists no per-subnet association for that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    pub id: String,
    pub vpc_id: String,
    pub owner_id: String,
    /// `rtbassoc-…` of the main association.
    pub main_association_id: String,
    pub routes: Vec<Route>,
    pub tags: Tags,
}

/// `vpc`'s main route table: the local route for its block and, when it
/// has an internet gateway, the default route through it.
pub fn main_route_table(vpc: &Vpc) -> RouteTable {
    let mut routes = vec![Route {
        destination_cidr_block: vpc.cidr_block.clone(),
        gateway_id: LOCAL_GATEWAY.to_string(),
        origin: "CreateRouteTable",
    }];
    if let Some(igw) = internet_gateway(vpc) {
        routes.push(Route {
            destination_cidr_block: ANYWHERE.to_string(),
            gateway_id: igw.id,
            origin: "CreateRoute",
        });
    }
    RouteTable {
        id: main_route_table_id(&vpc.id),
        vpc_id: vpc.id.clone(),
        owner_id: vpc.owner_id.clone(),
        main_association_id: format!("rtbassoc-{}", id_digits(&vpc.id)),
        routes,
        tags: Tags::new(),
    }
}

/// Filter names DescribeRouteTables accepts.
pub const ROUTE_TABLE_FILTERS: &[&str] = &[
    "association.main",
    "association.route-table-association-id",
    "association.route-table-id",
    "association.subnet-id",
    "association.gateway-id",
    "owner-id",
    "route-table-id",
    "route.destination-cidr-block",
    "route.gateway-id",
    "route.origin",
    "route.state",
    "vpc-id",
    "tag-key",
    "tag-value",
];

fn one(v: impl Into<String>) -> Option<Vec<String>> {
    Some(vec![v.into()])
}

impl Filterable for RouteTable {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        if is_tag_filter(name) {
            return tag_filter_values(&self.tags, name);
        }
        let routes = |f: fn(&Route) -> String| Some(self.routes.iter().map(f).collect());
        match name {
            "association.main" => one("true"),
            "association.route-table-association-id" => one(&self.main_association_id),
            "association.route-table-id" | "route-table-id" => one(&self.id),
            // The main association names no subnet and no gateway.
            "association.subnet-id" | "association.gateway-id" => Some(Vec::new()),
            "owner-id" => one(&self.owner_id),
            "route.destination-cidr-block" => routes(|r| r.destination_cidr_block.clone()),
            "route.gateway-id" => routes(|r| r.gateway_id.clone()),
            "route.origin" => routes(|r| r.origin.to_string()),
            "route.state" => routes(|_| "active".to_string()),
            "vpc-id" => one(&self.vpc_id),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        is_tag_filter(name) || ROUTE_TABLE_FILTERS.contains(&name)
    }
}

/// One ACL rule (`entrySet/item`). Only the default ACL's rules exist:
/// all protocols to or from anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAclEntry {
    pub rule_number: u32,
    /// Outbound (`true`) or inbound.
    pub egress: bool,
    /// EC2's `ruleAction`: `allow` or `deny`.
    pub rule_action: &'static str,
    pub cidr_block: String,
}

/// The rule number EC2 gives the default ACL's allow-all rules.
pub const ALLOW_ALL_RULE_NUMBER: u32 = 100;
/// The rule number of the catch-all deny every ACL ends with (`*` in the
/// console); nothing can be placed after it.
pub const DENY_ALL_RULE_NUMBER: u32 = 32767;

/// A network ACL (`networkAclSet/item`) with its subnet associations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAcl {
    pub id: String,
    pub vpc_id: String,
    pub owner_id: String,
    pub is_default: bool,
    /// `(aclassoc-…, subnet-…)` for each subnet of the VPC.
    pub associations: Vec<(String, String)>,
    pub entries: Vec<NetworkAclEntry>,
    pub tags: Tags,
}

/// `vpc`'s default ACL, associated with each of `subnets` that is in
/// `vpc` (the rest are ignored): allow everything in and out (rule 100),
/// then the catch-all deny (32767), in EC2's order (egress first).
pub fn default_network_acl(vpc: &Vpc, subnets: &[Subnet]) -> NetworkAcl {
    let entries = [true, false]
        .into_iter()
        .flat_map(|egress| {
            [
                (ALLOW_ALL_RULE_NUMBER, "allow"),
                (DENY_ALL_RULE_NUMBER, "deny"),
            ]
            .map(|(rule_number, rule_action)| NetworkAclEntry {
                rule_number,
                egress,
                rule_action,
                cidr_block: ANYWHERE.to_string(),
            })
        })
        .collect();
    NetworkAcl {
        id: default_network_acl_id(&vpc.id),
        vpc_id: vpc.id.clone(),
        owner_id: vpc.owner_id.clone(),
        is_default: true,
        associations: subnets
            .iter()
            .filter(|s| s.vpc_id == vpc.id)
            .map(|s| (format!("aclassoc-{}", id_digits(&s.id)), s.id.clone()))
            .collect(),
        entries,
        tags: Tags::new(),
    }
}

/// Filter names DescribeNetworkAcls accepts.
pub const NETWORK_ACL_FILTERS: &[&str] = &[
    "association.association-id",
    "association.network-acl-id",
    "association.subnet-id",
    "default",
    "entry.cidr",
    "entry.egress",
    "entry.protocol",
    "entry.rule-action",
    "entry.rule-number",
    "network-acl-id",
    "owner-id",
    "vpc-id",
    "tag-key",
    "tag-value",
];

impl Filterable for NetworkAcl {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        if is_tag_filter(name) {
            return tag_filter_values(&self.tags, name);
        }
        let associations =
            |f: fn(&(String, String)) -> String| Some(self.associations.iter().map(f).collect());
        let entries =
            |f: fn(&NetworkAclEntry) -> String| Some(self.entries.iter().map(f).collect());
        match name {
            "association.association-id" => associations(|(id, _)| id.clone()),
            "association.network-acl-id" => {
                Some(self.associations.iter().map(|_| self.id.clone()).collect())
            }
            "association.subnet-id" => associations(|(_, subnet)| subnet.clone()),
            "default" => one(self.is_default.to_string()),
            "entry.cidr" => entries(|e| e.cidr_block.clone()),
            "entry.egress" => entries(|e| e.egress.to_string()),
            "entry.protocol" => entries(|_| "-1".to_string()),
            "entry.rule-action" => entries(|e| e.rule_action.to_string()),
            "entry.rule-number" => entries(|e| e.rule_number.to_string()),
            "network-acl-id" => one(&self.id),
            "owner-id" => one(&self.owner_id),
            "vpc-id" => one(&self.vpc_id),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        is_tag_filter(name) || NETWORK_ACL_FILTERS.contains(&name)
    }
}

/// An internet gateway (`internetGatewaySet/item`), attached to its VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternetGateway {
    pub id: String,
    pub vpc_id: String,
    pub owner_id: String,
    pub tags: Tags,
}

/// The internet gateway of `vpc`: the default VPC has one, as on AWS, and
/// in ec2lab it is the `igw` veth to the uplink. Other VPCs would have
/// none until someone attached one (ec2lab has no such VPCs yet).
pub fn internet_gateway(vpc: &Vpc) -> Option<InternetGateway> {
    vpc.is_default.then(|| InternetGateway {
        id: internet_gateway_id(&vpc.id),
        vpc_id: vpc.id.clone(),
        owner_id: vpc.owner_id.clone(),
        tags: Tags::new(),
    })
}

/// Filter names DescribeInternetGateways accepts.
pub const INTERNET_GATEWAY_FILTERS: &[&str] = &[
    "attachment.state",
    "attachment.vpc-id",
    "internet-gateway-id",
    "owner-id",
    "tag-key",
    "tag-value",
];

impl Filterable for InternetGateway {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        if is_tag_filter(name) {
            return tag_filter_values(&self.tags, name);
        }
        match name {
            "attachment.state" => one("available"),
            "attachment.vpc-id" => one(&self.vpc_id),
            "internet-gateway-id" => one(&self.id),
            "owner-id" => one(&self.owner_id),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        is_tag_filter(name) || INTERNET_GATEWAY_FILTERS.contains(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::filter::{apply, Filter};
    use crate::model::ids::{self, IdKind};
    use crate::model::DEFAULT_OWNER_ID;

    fn vpc(id: &str, is_default: bool) -> Vpc {
        Vpc {
            id: id.into(),
            cidr_block: "172.31.0.0/16".into(),
            is_default,
            owner_id: DEFAULT_OWNER_ID.into(),
            tags: Tags::new(),
        }
    }

    fn subnet(id: &str, vpc_id: &str) -> Subnet {
        Subnet {
            id: id.into(),
            vpc_id: vpc_id.into(),
            cidr_block: "172.31.0.0/20".into(),
            availability_zone: "us-east-1a".into(),
            availability_zone_id: "use1-az6".into(),
            default_for_az: true,
            map_public_ip_on_launch: true,
            available_ip_address_count: 4091,
            owner_id: DEFAULT_OWNER_ID.into(),
            tags: Tags::new(),
        }
    }

    fn filter(name: &str, value: &str) -> Filter {
        Filter {
            name: name.into(),
            values: vec![value.into()],
        }
    }

    const VPC: &str = "vpc-0123456789abcdef0";

    #[test]
    fn derived_ids_are_well_formed_stable_and_follow_the_vpc() {
        let table = main_route_table(&vpc(VPC, true));
        assert_eq!(table.id, "rtb-0123456789abcdef0");
        assert!(ids::is_valid(IdKind::RouteTable, &table.id));
        assert!(ids::is_valid(
            IdKind::NetworkAcl,
            &default_network_acl_id(VPC)
        ));
        assert!(ids::is_valid(
            IdKind::InternetGateway,
            &internet_gateway_id(VPC)
        ));
        assert_eq!(table, main_route_table(&vpc(VPC, true)));
        assert_ne!(
            table.id,
            main_route_table(&vpc("vpc-0123456789abcdef1", true)).id
        );
    }

    #[test]
    fn the_default_vpcs_main_table_routes_its_block_locally_and_the_rest_to_its_gateway() {
        let table = main_route_table(&vpc(VPC, true));
        let routes: Vec<(&str, &str)> = table
            .routes
            .iter()
            .map(|r| (r.destination_cidr_block.as_str(), r.gateway_id.as_str()))
            .collect();
        assert_eq!(
            routes,
            [
                ("172.31.0.0/16", "local"),
                ("0.0.0.0/0", "igw-0123456789abcdef0")
            ]
        );
        // A VPC without a gateway has only the local route.
        let private = main_route_table(&vpc(VPC, false));
        assert_eq!(private.routes.len(), 1);
        assert!(internet_gateway(&vpc(VPC, false)).is_none());
    }

    #[test]
    fn the_default_acl_allows_everything_both_ways_then_denies_the_rest() {
        let acl = default_network_acl(&vpc(VPC, true), &[]);
        let entries: Vec<(bool, u32, &str, &str)> = acl
            .entries
            .iter()
            .map(|e| {
                (
                    e.egress,
                    e.rule_number,
                    e.rule_action,
                    e.cidr_block.as_str(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                (true, 100, "allow", "0.0.0.0/0"),
                (true, 32767, "deny", "0.0.0.0/0"),
                (false, 100, "allow", "0.0.0.0/0"),
                (false, 32767, "deny", "0.0.0.0/0"),
            ]
        );
    }

    #[test]
    fn the_default_acl_is_associated_with_the_vpcs_subnets_only() {
        let subnets = [
            subnet("subnet-0000000000000000a", VPC),
            subnet("subnet-0000000000000000b", "vpc-0fffffffffffffff0"),
        ];
        let acl = default_network_acl(&vpc(VPC, true), &subnets);
        assert_eq!(
            acl.associations,
            [(
                "aclassoc-0000000000000000a".to_string(),
                "subnet-0000000000000000a".to_string()
            )]
        );
        let found = apply(
            vec![acl.clone()],
            &[filter("association.subnet-id", "subnet-0000000000000000a")],
        )
        .expect("filter");
        assert_eq!(found.len(), 1);
        let found = apply(
            vec![acl],
            &[filter("association.subnet-id", "subnet-0000000000000000b")],
        )
        .expect("filter");
        assert!(found.is_empty());
    }

    #[test]
    fn the_providers_lookups_find_the_main_table_and_default_acl() {
        let tables = vec![
            main_route_table(&vpc(VPC, true)),
            main_route_table(&vpc("vpc-0fffffffffffffff0", false)),
        ];
        let main = apply(
            tables,
            &[filter("association.main", "true"), filter("vpc-id", VPC)],
        )
        .expect("filter");
        assert_eq!(main.len(), 1);
        assert_eq!(main[0].vpc_id, VPC);
        let acls = vec![default_network_acl(&vpc(VPC, true), &[])];
        let default =
            apply(acls, &[filter("default", "true"), filter("vpc-id", VPC)]).expect("filter");
        assert_eq!(default.len(), 1);
        let no_such = apply(
            vec![main_route_table(&vpc(VPC, true))],
            &[filter("association.main", "false")],
        )
        .expect("filter");
        assert!(no_such.is_empty());
    }

    #[test]
    fn every_listed_filter_is_answered_and_unknown_ones_are_not() {
        let table = main_route_table(&vpc(VPC, true));
        for name in ROUTE_TABLE_FILTERS {
            assert!(table.filter_values(name).is_some(), "{name}");
        }
        let acl = default_network_acl(&vpc(VPC, true), &[]);
        for name in NETWORK_ACL_FILTERS {
            assert!(acl.filter_values(name).is_some(), "{name}");
        }
        let igw = internet_gateway(&vpc(VPC, true)).expect("gateway");
        for name in INTERNET_GATEWAY_FILTERS {
            assert!(igw.filter_values(name).is_some(), "{name}");
        }
        assert!(!RouteTable::knows_filter("route.instance-id"));
        assert!(apply(vec![table], &[filter("no-such", "x")]).is_err());
    }
}
