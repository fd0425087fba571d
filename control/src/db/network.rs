//! The VPC half of the repository: the default VPC, subnets, security
//! groups and their rules, network interfaces, and the address allocation
//! (IPAM) that RunInstances does inside its own transaction.
//!
//! Addresses are stored as integers so that "lowest free" and "in use" are
//! plain comparisons and a `UNIQUE (subnet_id, private_ip)` index makes a
//! double allocation impossible even if two writers raced.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use time::OffsetDateTime;

use super::tags::tags_of;
use super::{from_ms, missing_ids, not_found, parse_column, query_first, to_ms, Db, DbError};
use crate::model::filter::{self, Filter, Page, PageRequest};
use crate::model::ids::{self, IdKind};
use crate::model::vpc::{
    self, Cidr, ElasticIpRef, GroupIdentifier, InterfaceRequest, NetworkInterface,
    NetworkInterfaceAttachment, RuleDirection, RulePeer, RuleRecord, SecurityGroup,
    SecurityGroupRule, Subnet, Vpc,
};
use crate::model::DEFAULT_OWNER_ID;

/// A Describe query over one VPC resource kind: explicit ids (all must
/// exist), filters, page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkQuery {
    pub ids: Vec<String>,
    pub filters: Vec<Filter>,
    pub page: PageRequest,
}

/// One change to a network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceChange {
    /// Its security groups (ids, at least one), replacing the old set.
    Groups(Vec<String>),
    /// Its source/destination check.
    SourceDestCheck(bool),
    /// Its description.
    Description(String),
}

/// Schema version 2: the VPC resources. The default VPC's rows are not
/// here: their ids are random, so [`ensure_default_vpc`] creates them.
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE vpcs (
        id          TEXT PRIMARY KEY,
        cidr_block  TEXT NOT NULL,
        is_default  INTEGER NOT NULL,
        owner_id    TEXT NOT NULL,
        created_ms  INTEGER NOT NULL
    ) STRICT;
    -- At most one default VPC, as in an AWS region.
    CREATE UNIQUE INDEX vpcs_one_default ON vpcs(is_default) WHERE is_default = 1;

    CREATE TABLE subnets (
        id                       TEXT PRIMARY KEY,
        vpc_id                   TEXT NOT NULL REFERENCES vpcs(id),
        cidr_block               TEXT NOT NULL,
        availability_zone        TEXT NOT NULL,
        availability_zone_id     TEXT NOT NULL,
        default_for_az           INTEGER NOT NULL,
        map_public_ip_on_launch  INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE security_groups (
        id           TEXT PRIMARY KEY,
        vpc_id       TEXT NOT NULL REFERENCES vpcs(id),
        name         TEXT NOT NULL,
        description  TEXT NOT NULL,
        UNIQUE (vpc_id, name)
    ) STRICT;

    CREATE TABLE network_interfaces (
        id                     TEXT PRIMARY KEY,
        subnet_id              TEXT NOT NULL REFERENCES subnets(id),
        private_ip             INTEGER NOT NULL,
        mac_address            TEXT NOT NULL UNIQUE,
        description            TEXT NOT NULL,
        source_dest_check      INTEGER NOT NULL,
        instance_id            TEXT REFERENCES instances(id),
        device_index           INTEGER,
        attach_time_ms         INTEGER,
        delete_on_termination  INTEGER NOT NULL,
        UNIQUE (subnet_id, private_ip),
        UNIQUE (instance_id, device_index)
    ) STRICT;
    CREATE INDEX network_interfaces_instance ON network_interfaces(instance_id);

    CREATE TABLE network_interface_groups (
        network_interface_id  TEXT NOT NULL REFERENCES network_interfaces(id) ON DELETE CASCADE,
        group_id              TEXT NOT NULL REFERENCES security_groups(id),
        PRIMARY KEY (network_interface_id, group_id)
    ) STRICT;
"#;

/// Schema version 9: whether an interface gets a public address from the
/// lab's pool while its instance runs (AssociatePublicIpAddress, else the
/// subnet's MapPublicIpOnLaunch), the one it holds now, and the one it
/// held last (a stopped and started instance gets a different one, as in
/// EC2). An address is held by one interface at a time.
pub(super) const PUBLIC_IP_MIGRATION: &str = r#"
    ALTER TABLE network_interfaces ADD COLUMN associate_public_ip INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE network_interfaces ADD COLUMN public_ip INTEGER;
    ALTER TABLE network_interfaces ADD COLUMN last_public_ip INTEGER;
    CREATE UNIQUE INDEX network_interfaces_public_ip ON network_interfaces(public_ip)
        WHERE public_ip IS NOT NULL;

    -- Elastic IPs: an address is associated with at most one interface,
    -- and the interface's public_ip is then this address. An interface
    -- deleted (terminated with DeleteOnTermination) leaves its address
    -- allocated and disassociated, as in EC2.
    CREATE TABLE addresses (
        id                    TEXT PRIMARY KEY,
        public_ip             INTEGER NOT NULL UNIQUE,
        network_interface_id  TEXT UNIQUE REFERENCES network_interfaces(id) ON DELETE SET NULL,
        association_id        TEXT UNIQUE
    ) STRICT;
    CREATE TRIGGER addresses_disassociate_on_interface_delete
        AFTER DELETE ON network_interfaces
    BEGIN
        UPDATE addresses SET association_id = NULL
         WHERE network_interface_id IS NULL AND association_id IS NOT NULL;
    END;
"#;

/// Schema version 4: security group rules, one row per EC2
/// `SecurityGroupRule`. The peer is a block or a group, never both; a
/// group's rules go with it.
const RULES_MIGRATION: &str = r#"
    CREATE TABLE security_group_rules (
        id                   INTEGER PRIMARY KEY,
        group_id             TEXT NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
        direction            TEXT NOT NULL CHECK (direction IN ('ingress', 'egress')),
        ip_protocol          TEXT NOT NULL,
        from_port            INTEGER,
        to_port              INTEGER,
        cidr_ipv4            TEXT,
        referenced_group_id  TEXT REFERENCES security_groups(id),
        description          TEXT,
        CHECK ((cidr_ipv4 IS NULL) <> (referenced_group_id IS NULL))
    ) STRICT;
    CREATE INDEX security_group_rules_group ON security_group_rules(group_id);
"#;

/// Migration 4: the rules table, and for every group that has no rules
/// (all of them, in a file from before rules were stored) the standard
/// rules it was created with, so the file answers as it did before.
pub(super) fn migrate_rules(tx: &Transaction<'_>) -> Result<(), DbError> {
    tx.execute_batch(RULES_MIGRATION)?;
    backfill_standard_rules(tx)
}

/// Gives every group without rules its standard ones; groups with any rule
/// keep exactly what they have.
fn backfill_standard_rules(tx: &Transaction<'_>) -> Result<(), DbError> {
    let groups: Vec<(String, String)> = {
        let mut stmt = tx.prepare(
            "SELECT id, name FROM security_groups g
             WHERE NOT EXISTS (SELECT 1 FROM security_group_rules r WHERE r.group_id = g.id)
             ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, name) in &groups {
        insert_rules_schema_4(tx, id, &vpc::standard_rules(id, name))?;
    }
    if !groups.is_empty() {
        log::info!(
            "stored the standard rules of {} security group(s)",
            groups.len()
        );
    }
    Ok(())
}

/// Migration 4's own insert: the columns of schema 4, no rule id (the file
/// may be at schema 4 when it runs; migration 5 gives these rows ids).
fn insert_rules_schema_4(
    tx: &Transaction<'_>,
    group_id: &str,
    rules: &[SecurityGroupRule],
) -> Result<(), DbError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO security_group_rules (group_id, direction, ip_protocol, from_port,
            to_port, cidr_ipv4, referenced_group_id, description)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for rule in rules {
        let (cidr, group) = peer_columns(&rule.peer);
        stmt.execute(params![
            group_id,
            rule.direction.name(),
            rule.ip_protocol,
            rule.from_port,
            rule.to_port,
            cidr,
            group,
            rule.description
        ])?;
    }
    Ok(())
}

/// Migration 5: every rule gets EC2's `sgr-…` id (random, so this is code:
/// existing rows get fresh ones), unique across the lab. Rules that
/// reference a group are indexed, for DeleteSecurityGroup's dependency
/// check.
pub(super) fn migrate_rule_ids(tx: &Transaction<'_>) -> Result<(), DbError> {
    tx.execute_batch("ALTER TABLE security_group_rules ADD COLUMN rule_id TEXT;")?;
    let rows: Vec<i64> = {
        let mut stmt = tx.prepare("SELECT id FROM security_group_rules ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for row in &rows {
        tx.execute(
            "UPDATE security_group_rules SET rule_id = ?1 WHERE id = ?2",
            params![ids::generate(IdKind::SecurityGroupRule), row],
        )?;
    }
    tx.execute_batch(
        "CREATE UNIQUE INDEX security_group_rules_rule_id ON security_group_rules(rule_id);
         CREATE INDEX security_group_rules_referenced
             ON security_group_rules(referenced_group_id);",
    )?;
    Ok(())
}

fn peer_columns(peer: &RulePeer) -> (Option<String>, Option<&str>) {
    match peer {
        RulePeer::Cidr(cidr) => (Some(cidr.to_string()), None),
        RulePeer::Group(id) => (None, Some(id.as_str())),
    }
}

/// Creates AWS's default VPC for `region` unless there is one: the /16,
/// a default /20 subnet per zone, the `default` security group. Runs on
/// every open; after the first it only looks.
pub(super) fn ensure_default_vpc(tx: &Transaction<'_>, region: &str) -> Result<(), DbError> {
    let exists = tx
        .prepare_cached("SELECT 1 FROM vpcs WHERE is_default = 1")?
        .exists([])?;
    if exists {
        return Ok(());
    }
    let (cidr, subnets) = vpc::default_vpc_layout(region);
    let vpc_id = ids::generate(IdKind::Vpc);
    tx.execute(
        "INSERT INTO vpcs (id, cidr_block, is_default, owner_id, created_ms)
         VALUES (?1, ?2, 1, ?3, ?4)",
        params![
            vpc_id,
            cidr.to_string(),
            DEFAULT_OWNER_ID,
            to_ms(OffsetDateTime::now_utc())
        ],
    )?;
    for s in subnets {
        tx.execute(
            "INSERT INTO subnets (id, vpc_id, cidr_block, availability_zone,
                availability_zone_id, default_for_az, map_public_ip_on_launch)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, 1)",
            params![
                ids::generate(IdKind::Subnet),
                vpc_id,
                s.cidr.to_string(),
                s.availability_zone,
                s.availability_zone_id
            ],
        )?;
    }
    insert_group(
        tx,
        &vpc_id,
        vpc::DEFAULT_SECURITY_GROUP_NAME,
        vpc::DEFAULT_SECURITY_GROUP_DESCRIPTION,
    )?;
    log::info!("created the default VPC {vpc_id} ({cidr}) for {region}");
    Ok(())
}

/// Creates a security group in `vpc_id` with the rules EC2 gives a new
/// group (`vpc::standard_rules`) and returns its id. The one way groups are
/// made, so that no group is ever without its standard rules.
pub(super) fn insert_group(
    tx: &Transaction<'_>,
    vpc_id: &str,
    name: &str,
    description: &str,
) -> Result<String, DbError> {
    let id = ids::generate(IdKind::SecurityGroup);
    tx.execute(
        "INSERT INTO security_groups (id, vpc_id, name, description) VALUES (?1, ?2, ?3, ?4)",
        params![id, vpc_id, name, description],
    )?;
    insert_rules(tx, &id, &vpc::standard_rules(&id, name))?;
    Ok(id)
}

/// Appends `rules` to the group `group_id`, each with a fresh `sgr-…` id,
/// and returns them as stored.
pub(super) fn insert_rules(
    tx: &Transaction<'_>,
    group_id: &str,
    rules: &[SecurityGroupRule],
) -> Result<Vec<RuleRecord>, DbError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO security_group_rules (rule_id, group_id, direction, ip_protocol,
            from_port, to_port, cidr_ipv4, referenced_group_id, description)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut stored = Vec::with_capacity(rules.len());
    for rule in rules {
        let id = ids::generate(IdKind::SecurityGroupRule);
        let (cidr, group) = peer_columns(&rule.peer);
        stmt.execute(params![
            id,
            group_id,
            rule.direction.name(),
            rule.ip_protocol,
            rule.from_port,
            rule.to_port,
            cidr,
            group,
            rule.description
        ])?;
        stored.push(RuleRecord {
            id,
            group_id: group_id.to_string(),
            rule: rule.clone(),
        });
    }
    Ok(stored)
}

/// The rules of `group_id`, in the order they were added.
pub(super) fn rules_of(conn: &Connection, group_id: &str) -> Result<Vec<RuleRecord>, DbError> {
    let mut stmt =
        conn.prepare_cached("SELECT * FROM security_group_rules WHERE group_id = ?1 ORDER BY id")?;
    let mut rows = stmt.query([group_id])?;
    let mut rules = Vec::new();
    while let Some(row) = rows.next()? {
        rules.push(rule_from_row(row)?);
    }
    Ok(rules)
}

pub(super) fn rule_from_row(row: &Row<'_>) -> Result<RuleRecord, DbError> {
    let cidr: Option<String> = row.get("cidr_ipv4")?;
    let group: Option<String> = row.get("referenced_group_id")?;
    let peer = match (cidr, group) {
        (Some(text), None) => RulePeer::Cidr(Cidr::parse(&text).ok_or(DbError::Corrupt {
            column: "security_group_rules.cidr_ipv4",
            value: text,
        })?),
        (None, Some(id)) => RulePeer::Group(id),
        (cidr, group) => {
            return Err(DbError::Corrupt {
                column: "security_group_rules peer",
                value: format!("cidr {cidr:?}, group {group:?}"),
            })
        }
    };
    let id: Option<String> = row.get("rule_id")?;
    Ok(RuleRecord {
        id: id.ok_or(DbError::Corrupt {
            column: "security_group_rules.rule_id",
            value: "NULL".to_string(),
        })?,
        group_id: row.get("group_id")?,
        rule: SecurityGroupRule {
            direction: parse_column(row, "direction", RuleDirection::from_name)?,
            ip_protocol: row.get("ip_protocol")?,
            from_port: row.get("from_port")?,
            to_port: row.get("to_port")?,
            peer,
            description: row.get("description")?,
        },
    })
}

impl Db {
    /// DescribeVpcs, ordered by id.
    pub fn list_vpcs(&self, query: &NetworkQuery) -> Result<Page<Vpc>, DbError> {
        let conn = self.lock();
        let all = select_all(&conn, "vpcs", IdKind::Vpc, &query.ids, vpc_from_row)?;
        describe(all, query, |v| v.id.clone())
    }

    /// DescribeSubnets, ordered by id, with free addresses counted.
    pub fn list_subnets(&self, query: &NetworkQuery) -> Result<Page<Subnet>, DbError> {
        let conn = self.lock();
        let all = select_all(
            &conn,
            "subnets",
            IdKind::Subnet,
            &query.ids,
            subnet_from_row,
        )?;
        describe(all, query, |s| s.id.clone())
    }

    /// One subnet.
    pub fn get_subnet(&self, id: &str) -> Result<Subnet, DbError> {
        get_subnet(&self.lock(), id)
    }

    /// The default subnet of `zone` in the default VPC, if there is one.
    pub fn default_subnet_for_zone(&self, zone: &str) -> Result<Option<Subnet>, DbError> {
        let conn = self.lock();
        let id: Option<String> = conn
            .query_row(
                "SELECT s.id FROM subnets s JOIN vpcs v ON v.id = s.vpc_id
                 WHERE v.is_default = 1 AND s.default_for_az = 1 AND s.availability_zone = ?1",
                [zone],
                |r| r.get(0),
            )
            .optional()?;
        id.map(|id| get_subnet(&conn, &id)).transpose()
    }

    /// DescribeSecurityGroups, ordered by id. `names` are `GroupName.N`:
    /// each must name a group (in any VPC), as in EC2.
    pub fn list_security_groups(
        &self,
        query: &NetworkQuery,
        names: &[String],
    ) -> Result<Page<SecurityGroup>, DbError> {
        let conn = self.lock();
        let all = select_all(
            &conn,
            "security_groups",
            IdKind::SecurityGroup,
            &query.ids,
            group_from_row,
        )?;
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !all.iter().any(|g| &g.name == *n))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(DbError::NotFound {
                kind: IdKind::SecurityGroup,
                ids: missing,
            });
        }
        let named = all
            .into_iter()
            .filter(|g| names.is_empty() || names.contains(&g.name))
            .collect();
        describe(named, query, |g| g.id.clone())
    }

    /// ModifyNetworkInterfaceAttribute (and ModifyInstanceAttribute's
    /// groups and source/destination check, on the primary interface):
    /// applies `change` to interface `id` and returns it as it is now.
    pub fn modify_network_interface(
        &self,
        id: &str,
        change: &InterfaceChange,
    ) -> Result<NetworkInterface, DbError> {
        self.write(|tx| {
            let select = format!("{INTERFACE_SELECT} WHERE n.id = ?1");
            let eni = query_first(tx, &select, id, interface_from_row)?
                .ok_or_else(|| not_found(IdKind::NetworkInterface, id))?;
            match change {
                InterfaceChange::Groups(groups) => {
                    // Each named group must exist in the interface's VPC.
                    let mut stmt = tx.prepare_cached(
                        "SELECT 1 FROM security_groups WHERE id = ?1 AND vpc_id = ?2",
                    )?;
                    let mut missing = Vec::new();
                    for g in groups {
                        if !stmt.exists([g, &eni.vpc_id])? {
                            missing.push(g.clone());
                        }
                    }
                    if !missing.is_empty() {
                        return Err(DbError::NotFound {
                            kind: IdKind::SecurityGroup,
                            ids: missing,
                        });
                    }
                    tx.execute(
                        "DELETE FROM network_interface_groups WHERE network_interface_id = ?1",
                        [id],
                    )?;
                    let mut add = tx.prepare_cached(
                        "INSERT OR IGNORE INTO network_interface_groups
                            (network_interface_id, group_id) VALUES (?1, ?2)",
                    )?;
                    for g in groups {
                        add.execute([id, g])?;
                    }
                }
                InterfaceChange::SourceDestCheck(on) => {
                    tx.execute(
                        "UPDATE network_interfaces SET source_dest_check = ?2 WHERE id = ?1",
                        params![id, on],
                    )?;
                }
                InterfaceChange::Description(text) => {
                    tx.execute(
                        "UPDATE network_interfaces SET description = ?2 WHERE id = ?1",
                        params![id, text],
                    )?;
                }
            }
            query_first(tx, &select, id, interface_from_row)?
                .ok_or_else(|| not_found(IdKind::NetworkInterface, id))
        })
    }

    /// Gives each interface of `instance_id` that asks for a public
    /// address (and holds none) the lowest free one of `pool`; all or none.
    pub fn assign_public_ips(&self, instance_id: &str, pool: Cidr) -> Result<(), DbError> {
        self.write(|tx| {
            let wanting: Vec<(String, Option<u32>)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id, last_public_ip FROM network_interfaces WHERE instance_id = ?1
                     AND associate_public_ip = 1 AND public_ip IS NULL ORDER BY device_index",
                )?;
                let rows = stmt.query_map([instance_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            if wanting.is_empty() {
                return Ok(());
            }
            let mut held = held_public_addresses(tx)?;
            for (id, last) in wanting {
                let last = last.map(Ipv4Addr::from);
                let free = |skip_last: bool| {
                    vpc::public_pool_addresses(pool)
                        .find(|a| !(held.contains(a) || skip_last && Some(*a) == last))
                };
                // The lowest free address other than the last one held,
                // unless that is the only one left.
                let ip = free(true).or_else(|| free(false)).ok_or_else(|| {
                    vpc::IpamError::PublicPoolExhausted {
                        pool: pool.to_string(),
                    }
                })?;
                held.insert(ip);
                tx.execute(
                    "UPDATE network_interfaces SET public_ip = ?2 WHERE id = ?1",
                    params![id, u32::from(ip)],
                )?;
            }
            Ok(())
        })
    }

    /// Takes back the pool addresses `instance_id`'s interfaces hold (on
    /// stop and terminate, as in EC2); Elastic IPs stay.
    pub fn release_public_ips(&self, instance_id: &str) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE network_interfaces SET last_public_ip = public_ip, public_ip = NULL
                 WHERE instance_id = ?1 AND public_ip IS NOT NULL
                 AND public_ip NOT IN (SELECT public_ip FROM addresses)",
                [instance_id],
            )?;
            Ok(())
        })
    }

    /// DescribeNetworkInterfaces, ordered by id.
    pub fn list_network_interfaces(
        &self,
        query: &NetworkQuery,
    ) -> Result<Page<NetworkInterface>, DbError> {
        let conn = self.lock();
        let all = select_all(
            &conn,
            "network_interfaces",
            IdKind::NetworkInterface,
            &query.ids,
            interface_from_row,
        )?;
        describe(all, query, |n| n.id.clone())
    }
}

/// Every row of `table` (ordered by id), after checking that each of `ids`
/// exists; only those rows when `ids` is not empty.
pub(super) fn select_all<T>(
    conn: &Connection,
    table: &'static str,
    kind: IdKind,
    ids: &[String],
    from_row: fn(&Connection, &Row<'_>) -> Result<T, DbError>,
) -> Result<Vec<T>, DbError> {
    let missing = missing_ids(conn, table, ids)?;
    if !missing.is_empty() {
        return Err(DbError::NotFound { kind, ids: missing });
    }
    let sql = match table {
        "network_interfaces" => format!("{INTERFACE_SELECT} ORDER BY n.id"),
        _ => format!("SELECT * FROM {table} ORDER BY id"),
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get("id")?;
        if ids.is_empty() || ids.contains(&id) {
            out.push(from_row(conn, row)?);
        }
    }
    Ok(out)
}

pub(super) fn describe<T: filter::Filterable>(
    items: Vec<T>,
    query: &NetworkQuery,
    sort_key: impl Fn(&T) -> String,
) -> Result<Page<T>, DbError> {
    let kept = filter::apply(items, &query.filters)?;
    Ok(filter::paginate(
        kept,
        sort_key,
        &query.page,
        filter::DESCRIBE_LIMITS,
    )?)
}

pub(super) fn vpc_from_row(conn: &Connection, row: &Row<'_>) -> Result<Vpc, DbError> {
    let id: String = row.get("id")?;
    Ok(Vpc {
        cidr_block: row.get("cidr_block")?,
        is_default: row.get("is_default")?,
        owner_id: row.get("owner_id")?,
        tags: tags_of(conn, &id)?,
        id,
    })
}

pub(super) fn subnet_from_row(conn: &Connection, row: &Row<'_>) -> Result<Subnet, DbError> {
    let id: String = row.get("id")?;
    let cidr = parse_cidr(row.get("cidr_block")?)?;
    let used: i64 = conn.query_row(
        "SELECT count(*) FROM network_interfaces WHERE subnet_id = ?1",
        [&id],
        |r| r.get(0),
    )?;
    Ok(Subnet {
        vpc_id: row.get("vpc_id")?,
        cidr_block: cidr.to_string(),
        availability_zone: row.get("availability_zone")?,
        availability_zone_id: row.get("availability_zone_id")?,
        default_for_az: row.get("default_for_az")?,
        map_public_ip_on_launch: row.get("map_public_ip_on_launch")?,
        available_ip_address_count: cidr
            .assignable_count()
            .saturating_sub(u64::try_from(used).unwrap_or(0)),
        owner_id: DEFAULT_OWNER_ID.to_string(),
        tags: tags_of(conn, &id)?,
        id,
    })
}

fn get_subnet(conn: &Connection, id: &str) -> Result<Subnet, DbError> {
    query_first(
        conn,
        "SELECT * FROM subnets WHERE id = ?1",
        id,
        subnet_from_row,
    )?
    .ok_or_else(|| not_found(IdKind::Subnet, id))
}

pub(super) fn group_from_row(conn: &Connection, row: &Row<'_>) -> Result<SecurityGroup, DbError> {
    let id: String = row.get("id")?;
    Ok(SecurityGroup {
        name: row.get("name")?,
        description: row.get("description")?,
        vpc_id: row.get("vpc_id")?,
        owner_id: DEFAULT_OWNER_ID.to_string(),
        rules: rules_of(conn, &id)?,
        tags: tags_of(conn, &id)?,
        id,
    })
}

/// Interfaces with what they take from their subnet, in one query: a
/// DescribeInstances of many instances reads one row per interface.
const INTERFACE_SELECT: &str =
    "SELECT n.*, s.vpc_id AS vpc_id, s.availability_zone AS availability_zone
     FROM network_interfaces n JOIN subnets s ON s.id = n.subnet_id";

fn interface_from_row(conn: &Connection, row: &Row<'_>) -> Result<NetworkInterface, DbError> {
    let id: String = row.get("id")?;
    let ip: u32 = row.get("private_ip")?;
    let instance_id: Option<String> = row.get("instance_id")?;
    let attachment = match instance_id {
        Some(instance_id) => Some(NetworkInterfaceAttachment {
            attachment_id: vpc::attachment_id(&id),
            instance_id,
            device_index: row.get::<_, Option<u32>>("device_index")?.unwrap_or(0),
            attach_time: from_ms(row.get::<_, Option<i64>>("attach_time_ms")?.unwrap_or(0))?,
            delete_on_termination: row.get("delete_on_termination")?,
        }),
        None => None,
    };
    let mut stmt = conn.prepare_cached(
        "SELECT g.id, g.name FROM network_interface_groups ng
         JOIN security_groups g ON g.id = ng.group_id
         WHERE ng.network_interface_id = ?1 ORDER BY g.id",
    )?;
    let groups = stmt
        .query_map([&id], |r| {
            Ok(GroupIdentifier {
                group_id: r.get(0)?,
                group_name: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(NetworkInterface {
        subnet_id: row.get("subnet_id")?,
        vpc_id: row.get("vpc_id")?,
        availability_zone: row.get("availability_zone")?,
        description: row.get("description")?,
        mac_address: row.get("mac_address")?,
        private_ip_address: Ipv4Addr::from(ip),
        source_dest_check: row.get("source_dest_check")?,
        public_ip: row.get::<_, Option<u32>>("public_ip")?.map(Ipv4Addr::from),
        elastic_ip: conn
            .prepare_cached(
                "SELECT id, association_id FROM addresses WHERE network_interface_id = ?1",
            )?
            .query_row([&id], |r| {
                Ok(ElasticIpRef {
                    allocation_id: r.get(0)?,
                    association_id: r.get(1)?,
                })
            })
            .optional()?,
        groups,
        attachment,
        owner_id: DEFAULT_OWNER_ID.to_string(),
        tags: tags_of(conn, &id)?,
        id,
    })
}

fn parse_cidr(text: String) -> Result<Cidr, DbError> {
    Cidr::parse(&text).ok_or(DbError::Corrupt {
        column: "subnets.cidr_block",
        value: text,
    })
}

/// The interfaces attached to `instance_id`, by device index.
pub(super) fn interfaces_of_instance(
    conn: &Connection,
    instance_id: &str,
) -> Result<Vec<NetworkInterface>, DbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "{INTERFACE_SELECT} WHERE n.instance_id = ?1 ORDER BY n.device_index"
    ))?;
    let mut rows = stmt.query([instance_id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(interface_from_row(conn, row)?);
    }
    Ok(out)
}

/// Every public address an interface or an Elastic IP holds.
pub(super) fn held_public_addresses(conn: &Connection) -> Result<BTreeSet<Ipv4Addr>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT public_ip FROM network_interfaces WHERE public_ip IS NOT NULL
         UNION SELECT public_ip FROM addresses",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, u32>(0))?;
    Ok(rows
        .map(|r| r.map(Ipv4Addr::from))
        .collect::<Result<_, _>>()?)
}

/// The security groups `request` names, resolved in the subnet's VPC; the
/// VPC's default group when it names none.
fn resolve_groups(
    tx: &Transaction<'_>,
    vpc_id: &str,
    request: &InterfaceRequest,
) -> Result<Vec<String>, DbError> {
    // The id of the VPC's group whose `column` is `key`, if there is one.
    let group_id = |column: &str, key: &str| -> Result<Option<String>, DbError> {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT id FROM security_groups WHERE {column} = ?1 AND vpc_id = ?2"
        ))?;
        Ok(stmt.query_row([key, vpc_id], |r| r.get(0)).optional()?)
    };
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (column, keys) in [("id", &request.group_ids), ("name", &request.group_names)] {
        for key in keys {
            match group_id(column, key)? {
                Some(id) => found.push(id),
                None => missing.push(key.clone()),
            }
        }
    }
    if !missing.is_empty() {
        return Err(DbError::NotFound {
            kind: IdKind::SecurityGroup,
            ids: missing,
        });
    }
    if found.is_empty() {
        // Every VPC has its default group.
        found.push(
            group_id("name", vpc::DEFAULT_SECURITY_GROUP_NAME)?
                .ok_or(rusqlite::Error::QueryReturnedNoRows)?,
        );
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// Creates the primary interface (device index 0) of `instance_id` as
/// `request` asks, inside the launch's transaction, and returns it.
pub(super) fn create_primary_interface(
    tx: &Transaction<'_>,
    instance_id: &str,
    request: &InterfaceRequest,
    now: OffsetDateTime,
) -> Result<NetworkInterface, DbError> {
    let subnet = get_subnet(tx, &request.subnet_id)?;
    let cidr = parse_cidr(subnet.cidr_block.clone())?;
    let groups = resolve_groups(tx, &subnet.vpc_id, request)?;
    let used: BTreeSet<Ipv4Addr> = {
        let mut stmt =
            tx.prepare_cached("SELECT private_ip FROM network_interfaces WHERE subnet_id = ?1")?;
        let rows = stmt.query_map([&subnet.id], |r| r.get::<_, u32>(0))?;
        rows.map(|r| r.map(Ipv4Addr::from))
            .collect::<Result<_, _>>()?
    };
    let ip = vpc::pick_address(&subnet.id, cidr, &used, request.private_ip)?;
    let id = ids::generate(IdKind::NetworkInterface);
    let mac = fresh_mac(tx)?;
    tx.execute(
        "INSERT INTO network_interfaces (id, subnet_id, private_ip, mac_address, description,
            source_dest_check, instance_id, device_index, attach_time_ms, delete_on_termination,
            associate_public_ip)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, 0, ?7, ?8, ?9)",
        params![
            id,
            subnet.id,
            u32::from(ip),
            mac,
            request.description,
            instance_id,
            to_ms(now),
            request.delete_on_termination,
            request
                .associate_public_ip
                .unwrap_or(subnet.map_public_ip_on_launch)
        ],
    )?;
    let mut add_group = tx.prepare_cached(
        "INSERT INTO network_interface_groups (network_interface_id, group_id) VALUES (?1, ?2)",
    )?;
    for g in &groups {
        add_group.execute([&id, g])?;
    }
    query_first(
        tx,
        &format!("{INTERFACE_SELECT} WHERE n.id = ?1"),
        &id,
        interface_from_row,
    )?
    .ok_or_else(|| not_found(IdKind::NetworkInterface, &id))
}

/// A MAC no interface has. 40 random bits make a clash unlikely; a few
/// tries make it practically impossible.
fn fresh_mac(tx: &Transaction<'_>) -> Result<String, DbError> {
    let mut taken = tx.prepare_cached("SELECT 1 FROM network_interfaces WHERE mac_address = ?1")?;
    for _ in 0..16 {
        let mac = vpc::random_mac();
        if !taken.exists([&mac])? {
            return Ok(mac);
        }
    }
    Err(DbError::Conflict {
        kind: IdKind::NetworkInterface,
        id: String::new(),
        reason: "no unused MAC address found",
    })
}

/// Termination: interfaces with DeleteOnTermination go (freeing their
/// address), the others are detached and stay `available`.
pub(super) fn release_interfaces(tx: &Transaction<'_>, instance_id: &str) -> Result<(), DbError> {
    let doomed: Vec<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id FROM network_interfaces WHERE instance_id = ?1 AND delete_on_termination = 1",
        )?;
        let rows = stmt.query_map([instance_id], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for id in &doomed {
        tx.execute("DELETE FROM network_interfaces WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM tags WHERE resource_id = ?1", [id])?;
    }
    tx.execute(
        "UPDATE network_interfaces SET instance_id = NULL, device_index = NULL,
            attach_time_ms = NULL
         WHERE instance_id = ?1",
        [instance_id],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{migrate_to, MIGRATIONS};
    use super::*;
    use crate::model::vpc::ANYWHERE;

    fn everything() -> NetworkQuery {
        NetworkQuery::default()
    }

    /// What `rules` admit, without their ids.
    fn specs(rules: &[RuleRecord]) -> Vec<SecurityGroupRule> {
        rules.iter().map(|r| r.rule.clone()).collect()
    }

    fn all_groups(db: &Db) -> Vec<SecurityGroup> {
        db.list_security_groups(&everything(), &[])
            .expect("groups")
            .items
    }

    #[test]
    fn the_default_group_is_created_with_ec2s_default_rules() {
        let db = Db::open_in_memory().expect("open");
        let groups = all_groups(&db);
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        assert!(g
            .rules
            .iter()
            .all(|r| r.id.starts_with("sgr-") && r.group_id == g.id));
        assert_eq!(
            specs(&g.rules),
            [
                SecurityGroupRule {
                    direction: RuleDirection::Ingress,
                    ip_protocol: "-1".into(),
                    from_port: None,
                    to_port: None,
                    peer: RulePeer::Group(g.id.clone()),
                    description: None,
                },
                SecurityGroupRule {
                    direction: RuleDirection::Egress,
                    ip_protocol: "-1".into(),
                    from_port: None,
                    to_port: None,
                    peer: RulePeer::Cidr(ANYWHERE),
                    description: None,
                },
            ]
        );
    }

    #[test]
    fn a_new_group_gets_only_the_standard_egress_rule() {
        let db = Db::open_in_memory().expect("open");
        let vpc_id = db.list_vpcs(&everything()).expect("vpcs").items[0]
            .id
            .clone();
        let id = db
            .write(|tx| insert_group(tx, &vpc_id, "web", "web servers"))
            .expect("insert");
        let web = all_groups(&db)
            .into_iter()
            .find(|g| g.id == id)
            .expect("stored");
        let rules = specs(&web.rules);
        assert_eq!(rules, vpc::standard_rules(&id, "web"));
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].direction, RuleDirection::Egress);
        assert_eq!(rules[0].peer, RulePeer::Cidr(ANYWHERE));
    }

    /// A file from before rules were stored (schema 3) with its default
    /// VPC and group, as that ec2lab created them.
    fn schema_3_file_with_default_group() -> (Connection, String) {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("PRAGMA foreign_keys = ON;")
            .expect("foreign keys");
        migrate_to(&mut conn, 3).expect("schema 3");
        conn.execute(
            "INSERT INTO vpcs (id, cidr_block, is_default, owner_id, created_ms)
             VALUES ('vpc-0123456789abcdef0', '172.31.0.0/16', 1, ?1, 0)",
            [DEFAULT_OWNER_ID],
        )
        .expect("vpc");
        let group_id = "sg-0123456789abcdef0".to_string();
        conn.execute(
            "INSERT INTO security_groups (id, vpc_id, name, description)
             VALUES (?1, 'vpc-0123456789abcdef0', 'default', 'default VPC security group')",
            [&group_id],
        )
        .expect("group");
        (conn, group_id)
    }

    #[test]
    fn migrating_an_old_file_backfills_the_default_groups_rules() {
        let (conn, group_id) = schema_3_file_with_default_group();
        let db = Db::with_connection(conn).expect("migrate");
        assert_eq!(
            db.schema_version().expect("version") as usize,
            MIGRATIONS.len()
        );
        let groups = all_groups(&db);
        assert_eq!(groups.len(), 1, "the default VPC was not created again");
        assert_eq!(groups[0].id, group_id);
        assert_eq!(
            specs(&groups[0].rules),
            vpc::standard_rules(&group_id, vpc::DEFAULT_SECURITY_GROUP_NAME)
        );
        assert!(groups[0].rules.iter().all(|r| r.id.starts_with("sgr-")));
    }

    #[test]
    fn the_backfill_leaves_groups_that_have_rules_alone() {
        let (mut conn, default_id) = schema_3_file_with_default_group();
        let tx = conn.transaction().expect("tx");
        tx.execute_batch(RULES_MIGRATION).expect("table");
        let only_ssh = SecurityGroupRule {
            direction: RuleDirection::Ingress,
            ip_protocol: "tcp".into(),
            from_port: Some(22),
            to_port: Some(22),
            peer: RulePeer::Cidr(ANYWHERE),
            description: Some("ssh".into()),
        };
        insert_rules_schema_4(&tx, &default_id, std::slice::from_ref(&only_ssh)).expect("rule");
        tx.execute(
            "INSERT INTO security_groups (id, vpc_id, name, description)
             VALUES ('sg-0000000000000000f', 'vpc-0123456789abcdef0', 'web', 'web')",
            [],
        )
        .expect("second group");
        backfill_standard_rules(&tx).expect("backfill");
        migrate_rule_ids(&tx).expect("rule ids");
        assert_eq!(
            specs(&rules_of(&tx, &default_id).expect("rules")),
            [only_ssh]
        );
        assert_eq!(
            specs(&rules_of(&tx, "sg-0000000000000000f").expect("rules")),
            vpc::standard_rules("sg-0000000000000000f", "web")
        );
    }
}
