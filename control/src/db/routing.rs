//! The routing half of the repository: route tables, network ACLs and
//! internet gateways. Nothing of theirs is stored; each read derives them
//! from the stored VPCs and subnets (`model::routing` says why), then
//! filters and pages them like any stored resource.

use super::network::{describe, select_all, subnet_from_row, vpc_from_row};
use super::{Db, DbError};
use crate::db::NetworkQuery;
use crate::model::filter::Page;
use crate::model::ids::IdKind;
use crate::model::routing::{self, InternetGateway, NetworkAcl, RouteTable};
use crate::model::vpc::Vpc;

impl Db {
    /// DescribeRouteTables: each VPC's main table, ordered by id.
    pub fn list_route_tables(&self, query: &NetworkQuery) -> Result<Page<RouteTable>, DbError> {
        let all = self
            .all_vpcs()?
            .iter()
            .map(routing::main_route_table)
            .collect();
        let chosen = named(all, &query.ids, IdKind::RouteTable, |t| &t.id)?;
        describe(chosen, query, |t| t.id.clone())
    }

    /// DescribeNetworkAcls: each VPC's default ACL with its subnets.
    pub fn list_network_acls(&self, query: &NetworkQuery) -> Result<Page<NetworkAcl>, DbError> {
        let (vpcs, subnets) = {
            let conn = self.lock();
            let vpcs = select_all(&conn, "vpcs", IdKind::Vpc, &[], vpc_from_row)?;
            let subnets = select_all(&conn, "subnets", IdKind::Subnet, &[], subnet_from_row)?;
            (vpcs, subnets)
        };
        let all = vpcs
            .iter()
            .map(|v| routing::default_network_acl(v, &subnets))
            .collect();
        let chosen = named(all, &query.ids, IdKind::NetworkAcl, |a| &a.id)?;
        describe(chosen, query, |a| a.id.clone())
    }

    /// DescribeInternetGateways: the default VPC's gateway.
    pub fn list_internet_gateways(
        &self,
        query: &NetworkQuery,
    ) -> Result<Page<InternetGateway>, DbError> {
        let all = self
            .all_vpcs()?
            .iter()
            .filter_map(routing::internet_gateway)
            .collect();
        let chosen = named(all, &query.ids, IdKind::InternetGateway, |g| &g.id)?;
        describe(chosen, query, |g| g.id.clone())
    }

    fn all_vpcs(&self) -> Result<Vec<Vpc>, DbError> {
        select_all(&self.lock(), "vpcs", IdKind::Vpc, &[], vpc_from_row)
    }
}

/// `items` narrowed to `ids` (all of them when `ids` is empty); every id
/// must name one, as EC2 answers a Describe naming a missing id with
/// NotFound rather than with less.
fn named<T>(
    items: Vec<T>,
    ids: &[String],
    kind: IdKind,
    id_of: fn(&T) -> &String,
) -> Result<Vec<T>, DbError> {
    let missing: Vec<String> = ids
        .iter()
        .filter(|wanted| !items.iter().any(|i| id_of(i) == *wanted))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(DbError::NotFound { kind, ids: missing });
    }
    Ok(items
        .into_iter()
        .filter(|i| ids.is_empty() || ids.contains(id_of(i)))
        .collect())
}
