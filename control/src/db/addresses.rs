//! Elastic IPs: AllocateAddress, AssociateAddress, DisassociateAddress,
//! ReleaseAddress and DescribeAddresses. An associated address is also the
//! interface's `public_ip`, so the fabric and DescribeInstances read one
//! column; the pool's own addresses and Elastic IPs never overlap.

use std::net::Ipv4Addr;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::tags::{insert_tags, tags_of};
use super::{not_found, Db, DbError};
use crate::model::address::{AddressError, ElasticIp, ElasticIpAssociation, MAX_ELASTIC_IPS};
use crate::model::filter::{self, Filter, Page, PageRequest};
use crate::model::ids::{self, IdKind};
use crate::model::vpc::{self, Cidr};
use crate::model::Tags;

/// Which Elastic IP a request names: by id or by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressRef {
    /// `AllocationId`; for DisassociateAddress, its `AssociationId`.
    Id(String),
    /// `PublicIp`.
    PublicIp(Ipv4Addr),
}

/// Which interface an association targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssociationTarget {
    /// `InstanceId`: its primary interface.
    Instance(String),
    /// `NetworkInterfaceId`.
    Interface(String),
}

/// What DescribeAddresses asks for.
#[derive(Debug, Clone, Default)]
pub struct AddressQuery {
    pub allocation_ids: Vec<String>,
    pub public_ips: Vec<Ipv4Addr>,
    pub filters: Vec<Filter>,
    pub page: PageRequest,
}

/// What an association changed, for the fabric to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Association {
    /// `eipassoc-…`.
    pub association_id: String,
    /// The interface the address left, if it moved.
    pub moved_from: Option<String>,
}

const ADDRESS_SELECT: &str = "SELECT a.*, n.instance_id AS instance_id, n.private_ip AS private_ip
     FROM addresses a LEFT JOIN network_interfaces n ON n.id = a.network_interface_id";

impl Db {
    /// AllocateAddress: the lowest address of `pool` no interface or
    /// Elastic IP holds.
    pub fn allocate_address(&self, pool: Cidr, tags: &Tags) -> Result<ElasticIp, DbError> {
        self.write(|tx| {
            let count: i64 = tx.query_row("SELECT count(*) FROM addresses", [], |r| r.get(0))?;
            if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_ELASTIC_IPS {
                return Err(AddressError::LimitExceeded.into());
            }
            let held = super::network::held_public_addresses(tx)?;
            let ip = vpc::public_pool_addresses(pool)
                .find(|a| !held.contains(a))
                .ok_or_else(|| vpc::IpamError::PublicPoolExhausted {
                    pool: pool.to_string(),
                })?;
            let id = ids::generate(IdKind::ElasticIp);
            tx.execute(
                "INSERT INTO addresses (id, public_ip) VALUES (?1, ?2)",
                params![id, u32::from(ip)],
            )?;
            insert_tags(tx, &id, tags)?;
            get(tx, &id)
        })
    }

    /// DescribeAddresses, ordered by address. Named ids or addresses that
    /// are not the account's fail the call, as in EC2.
    pub fn list_addresses(&self, query: &AddressQuery) -> Result<Page<ElasticIp>, DbError> {
        filter::validate::<ElasticIp>(&query.filters)?;
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!("{ADDRESS_SELECT} ORDER BY a.public_ip"))?;
        let mut rows = stmt.query([])?;
        let mut all = Vec::new();
        while let Some(row) = rows.next()? {
            all.push(from_row(&conn, row)?);
        }
        let missing: Vec<String> = query
            .allocation_ids
            .iter()
            .filter(|id| !all.iter().any(|a| &a.allocation_id == *id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(DbError::NotFound {
                kind: IdKind::ElasticIp,
                ids: missing,
            });
        }
        if let Some(ip) = query
            .public_ips
            .iter()
            .find(|ip| !all.iter().any(|a| a.public_ip == **ip))
        {
            return Err(AddressError::NotFound(ip.to_string()).into());
        }
        let named = all
            .into_iter()
            .filter(|a| {
                query.allocation_ids.is_empty() || query.allocation_ids.contains(&a.allocation_id)
            })
            .filter(|a| query.public_ips.is_empty() || query.public_ips.contains(&a.public_ip))
            .collect();
        let kept = filter::apply(named, &query.filters)?;
        Ok(filter::paginate(
            kept,
            |a| format!("{:010}", u32::from(a.public_ip)),
            &query.page,
            filter::DESCRIBE_LIMITS,
        )?)
    }

    /// AssociateAddress: `address` becomes `target`'s public address. An
    /// address associated elsewhere moves only with `allow_reassociation`;
    /// an address the interface had from the pool is given back, and an
    /// Elastic IP it held before is disassociated.
    pub fn associate_address(
        &self,
        address: &AddressRef,
        target: &AssociationTarget,
        allow_reassociation: bool,
    ) -> Result<Association, DbError> {
        self.write(|tx| {
            let eip = resolve(tx, address)?;
            let eni = match target {
                AssociationTarget::Interface(id) => {
                    let exists: Option<String> = tx
                        .query_row(
                            "SELECT id FROM network_interfaces WHERE id = ?1",
                            [id],
                            |r| r.get(0),
                        )
                        .optional()?;
                    exists.ok_or_else(|| not_found(IdKind::NetworkInterface, id))?
                }
                AssociationTarget::Instance(id) => {
                    let instance: Option<String> = tx
                        .query_row("SELECT id FROM instances WHERE id = ?1", [id], |r| r.get(0))
                        .optional()?;
                    instance.ok_or_else(|| not_found(IdKind::Instance, id))?;
                    tx.query_row(
                        "SELECT id FROM network_interfaces WHERE instance_id = ?1
                         AND device_index = 0",
                        [id],
                        |r| r.get(0),
                    )
                    .optional()?
                    .ok_or_else(|| AddressError::NoInterface(id.clone()))?
                }
            };
            let mut moved_from = None;
            if let Some(current) = &eip.association {
                if current.network_interface_id == eni {
                    return Ok(Association {
                        association_id: current.association_id.clone(),
                        moved_from: None,
                    });
                }
                if !allow_reassociation {
                    return Err(AddressError::AlreadyAssociated {
                        allocation_id: eip.allocation_id.clone(),
                        association_id: current.association_id.clone(),
                    }
                    .into());
                }
                tx.execute(
                    "UPDATE network_interfaces SET public_ip = NULL WHERE id = ?1",
                    [&current.network_interface_id],
                )?;
                moved_from = Some(current.network_interface_id.clone());
            }
            // Whatever the interface held goes: an Elastic IP is
            // disassociated, a pool address is given back.
            tx.execute(
                "UPDATE addresses SET network_interface_id = NULL, association_id = NULL
                 WHERE network_interface_id = ?1",
                [&eni],
            )?;
            tx.execute(
                "UPDATE network_interfaces SET last_public_ip = public_ip, public_ip = NULL
                 WHERE id = ?1 AND public_ip IS NOT NULL",
                [&eni],
            )?;
            // Clear the address's old link before it takes the new one.
            tx.execute(
                "UPDATE addresses SET network_interface_id = NULL, association_id = NULL
                 WHERE id = ?1",
                [&eip.allocation_id],
            )?;
            let association_id = ids::generate(IdKind::ElasticIpAssociation);
            tx.execute(
                "UPDATE addresses SET network_interface_id = ?2, association_id = ?3 WHERE id = ?1",
                params![eip.allocation_id, eni, association_id],
            )?;
            tx.execute(
                "UPDATE network_interfaces SET public_ip = ?2 WHERE id = ?1",
                params![eni, u32::from(eip.public_ip)],
            )?;
            Ok(Association {
                association_id,
                moved_from,
            })
        })
    }

    /// DisassociateAddress by `AssociationId` (or by address); returns the
    /// interface the address left.
    pub fn disassociate_address(&self, association: &AddressRef) -> Result<String, DbError> {
        self.write(|tx| {
            let eip = match association {
                AddressRef::Id(association_id) => {
                    let id: Option<String> = tx
                        .query_row(
                            "SELECT id FROM addresses WHERE association_id = ?1",
                            [association_id],
                            |r| r.get(0),
                        )
                        .optional()?;
                    let id =
                        id.ok_or_else(|| not_found(IdKind::ElasticIpAssociation, association_id))?;
                    get(tx, &id)?
                }
                AddressRef::PublicIp(_) => resolve(tx, association)?,
            };
            let Some(current) = eip.association else {
                return Err(not_found(IdKind::ElasticIpAssociation, &eip.allocation_id));
            };
            tx.execute(
                "UPDATE addresses SET network_interface_id = NULL, association_id = NULL
                 WHERE id = ?1",
                [&eip.allocation_id],
            )?;
            tx.execute(
                "UPDATE network_interfaces SET public_ip = NULL WHERE id = ?1",
                [&current.network_interface_id],
            )?;
            Ok(current.network_interface_id)
        })
    }

    /// ReleaseAddress: only an address that is not associated.
    pub fn release_address(&self, address: &AddressRef) -> Result<(), DbError> {
        self.write(|tx| {
            let eip = resolve(tx, address)?;
            if eip.association.is_some() {
                return Err(AddressError::InUse(eip.allocation_id).into());
            }
            tx.execute("DELETE FROM addresses WHERE id = ?1", [&eip.allocation_id])?;
            tx.execute(
                "DELETE FROM tags WHERE resource_id = ?1",
                [&eip.allocation_id],
            )?;
            Ok(())
        })
    }
}

fn resolve(tx: &Transaction<'_>, address: &AddressRef) -> Result<ElasticIp, DbError> {
    match address {
        AddressRef::Id(id) => get(tx, id),
        AddressRef::PublicIp(ip) => {
            let id: Option<String> = tx
                .query_row(
                    "SELECT id FROM addresses WHERE public_ip = ?1",
                    [u32::from(*ip)],
                    |r| r.get(0),
                )
                .optional()?;
            let id = id.ok_or_else(|| AddressError::NotFound(ip.to_string()))?;
            get(tx, &id)
        }
    }
}

fn get(conn: &Connection, id: &str) -> Result<ElasticIp, DbError> {
    let mut stmt = conn.prepare_cached(&format!("{ADDRESS_SELECT} WHERE a.id = ?1"))?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(row) => from_row(conn, row),
        None => Err(not_found(IdKind::ElasticIp, id)),
    }
}

fn from_row(conn: &Connection, row: &Row<'_>) -> Result<ElasticIp, DbError> {
    let id: String = row.get("id")?;
    let association = match (
        row.get::<_, Option<String>>("network_interface_id")?,
        row.get::<_, Option<String>>("association_id")?,
    ) {
        (Some(network_interface_id), Some(association_id)) => Some(ElasticIpAssociation {
            association_id,
            network_interface_id,
            instance_id: row.get("instance_id")?,
            private_ip: Ipv4Addr::from(row.get::<_, u32>("private_ip")?),
        }),
        _ => None,
    };
    Ok(ElasticIp {
        public_ip: Ipv4Addr::from(row.get::<_, u32>("public_ip")?),
        association,
        tags: tags_of(conn, &id)?,
        allocation_id: id,
    })
}
