//! Tags of every resource kind in one table: CreateTags, DeleteTags,
//! DescribeTags, and the helpers every other family uses to store and read
//! a resource's tags with it.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, Transaction};

use super::{missing_ids, not_found, Db, DbError};
use crate::model::filter::{self, Filter, Page, PageRequest};
use crate::model::ids::IdKind;
use crate::model::{Tag, Tags};

/// One `Tag.N` of DeleteTags: a key, and optionally the value it must have
/// (`Some("")` matches only an empty value, as in EC2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSelector {
    pub key: String,
    pub value: Option<String>,
}

impl Db {
    /// CreateTags: adds or overwrites tags on every resource, all or
    /// nothing. Every resource must exist.
    pub fn create_tags(
        &self,
        resource_ids: &[String],
        tags: &[(String, String)],
    ) -> Result<(), DbError> {
        self.write(|tx| {
            check_resources_exist(tx, resource_ids)?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO tags (resource_id, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (resource_id, key) DO UPDATE SET value = excluded.value",
            )?;
            for id in resource_ids {
                for (key, value) in tags {
                    stmt.execute(params![id, key, value])?;
                }
            }
            Ok(())
        })
    }

    /// DeleteTags: with no selectors deletes every tag of the resources;
    /// otherwise each selector deletes its key (if its value matches, when
    /// given). Deleting a tag that is not there is not an error (EC2).
    pub fn delete_tags(
        &self,
        resource_ids: &[String],
        selectors: &[TagSelector],
    ) -> Result<(), DbError> {
        self.write(|tx| {
            check_resources_exist(tx, resource_ids)?;
            for id in resource_ids {
                if selectors.is_empty() {
                    tx.execute("DELETE FROM tags WHERE resource_id = ?1", [id])?;
                }
                for s in selectors {
                    match &s.value {
                        None => tx.execute(
                            "DELETE FROM tags WHERE resource_id = ?1 AND key = ?2",
                            params![id, s.key],
                        )?,
                        Some(v) => tx.execute(
                            "DELETE FROM tags WHERE resource_id = ?1 AND key = ?2 AND value = ?3",
                            params![id, s.key, v],
                        )?,
                    };
                }
            }
            Ok(())
        })
    }

    /// DescribeTags: ordered by resource id then key, filtered, one page.
    pub fn describe_tags(
        &self,
        filters: &[Filter],
        page: &PageRequest,
    ) -> Result<Page<Tag>, DbError> {
        filter::validate::<Tag>(filters)?;
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT resource_id, key, value FROM tags ORDER BY resource_id, key")?;
        let all: Vec<Tag> = stmt
            .query_map([], |r| {
                Ok(Tag {
                    resource_id: r.get(0)?,
                    key: r.get(1)?,
                    value: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let kept = filter::apply(all, filters)?;
        // NUL sorts before every other character, so this string order is
        // the (resource_id, key) order SQLite used.
        Ok(filter::paginate(
            kept,
            |t| format!("{}\0{}", t.resource_id, t.key),
            page,
            filter::DESCRIBE_LIMITS,
        )?)
    }

    /// The tags of one resource.
    pub fn tags_of(&self, resource_id: &str) -> Result<Tags, DbError> {
        tags_of(&self.lock(), resource_id)
    }
}

pub(super) fn tags_of(conn: &Connection, resource_id: &str) -> Result<Tags, DbError> {
    let mut stmt = conn.prepare_cached("SELECT key, value FROM tags WHERE resource_id = ?1")?;
    let rows = stmt.query_map([resource_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
}

pub(super) fn insert_tags(
    tx: &Transaction<'_>,
    resource_id: &str,
    tags: &Tags,
) -> Result<(), DbError> {
    let mut stmt =
        tx.prepare_cached("INSERT INTO tags (resource_id, key, value) VALUES (?1, ?2, ?3)")?;
    for (key, value) in tags {
        stmt.execute(params![resource_id, key, value])?;
    }
    Ok(())
}

/// CreateTags and DeleteTags need every named resource to exist.
fn check_resources_exist(conn: &Connection, resource_ids: &[String]) -> Result<(), DbError> {
    for id in resource_ids {
        let kind = IdKind::of(id).ok_or_else(|| DbError::InvalidId(id.clone()))?;
        let table = match kind {
            IdKind::Instance => "instances",
            IdKind::Image | IdKind::Kernel => "images",
            IdKind::KeyPair => "key_pairs",
            IdKind::Vpc => "vpcs",
            IdKind::Subnet => "subnets",
            IdKind::SecurityGroup => "security_groups",
            IdKind::NetworkInterface => "network_interfaces",
            _ => return Err(not_found(kind, id)),
        };
        if !missing_ids(conn, table, std::slice::from_ref(id))?.is_empty() {
            return Err(not_found(kind, id));
        }
    }
    Ok(())
}
