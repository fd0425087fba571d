//! Tags of every resource kind in one table: CreateTags, DeleteTags,
//! DescribeTags, and the helpers every other family uses to store and read
//! a resource's tags with it.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::{params, Connection, Transaction};

use super::{missing_ids, not_found, Db, DbError};
use crate::model::filter::{self, Filter, Page, PageRequest};
use crate::model::ids::IdKind;
use crate::model::{Tag, Tags, MAX_TAGS_PER_RESOURCE};

/// One `Tag.N` of DeleteTags: a key, and optionally the value it must have
/// (`Some("")` matches only an empty value, as in EC2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSelector {
    pub key: String,
    pub value: Option<String>,
}

impl Db {
    /// CreateTags: adds or overwrites tags on every resource, all or
    /// nothing. Every resource must exist, and none may end with more than
    /// [`MAX_TAGS_PER_RESOURCE`] tags. A resource named twice is tagged
    /// once, and a key given twice takes its last value, so the work under
    /// the lock is one transaction of at most ids x distinct keys upserts.
    pub fn create_tags(
        &self,
        resource_ids: &[String],
        tags: &[(String, String)],
    ) -> Result<(), DbError> {
        let resource_ids = distinct(resource_ids);
        let tags: BTreeMap<&str, &str> =
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.write(|tx| {
            check_resources_exist(tx, &resource_ids)?;
            let mut keys_of = tx.prepare_cached("SELECT key FROM tags WHERE resource_id = ?1")?;
            for id in &resource_ids {
                let kept = keys_of
                    .query_map([id], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .filter(|k| !tags.contains_key(k.as_str()))
                    .count();
                let count = kept + tags.len();
                if count > MAX_TAGS_PER_RESOURCE {
                    return Err(DbError::TagLimitExceeded {
                        resource_id: id.to_string(),
                        count,
                    });
                }
            }
            let mut upsert = tx.prepare_cached(
                "INSERT INTO tags (resource_id, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (resource_id, key) DO UPDATE SET value = excluded.value",
            )?;
            for id in &resource_ids {
                for (key, value) in &tags {
                    upsert.execute(params![id, key, value])?;
                }
            }
            Ok(())
        })
    }

    /// DeleteTags: with no selectors deletes every tag of the resources;
    /// otherwise each selector deletes its key (if its value matches, when
    /// given). Deleting a tag that is not there is not an error (EC2).
    /// Each resource's tags are read once and matched against the
    /// selectors, so the work is bounded by the tags that exist, not by
    /// how many selectors a request repeats.
    pub fn delete_tags(
        &self,
        resource_ids: &[String],
        selectors: &[TagSelector],
    ) -> Result<(), DbError> {
        let resource_ids = distinct(resource_ids);
        let mut wanted: HashMap<&str, Vec<Option<&str>>> = HashMap::new();
        for s in selectors {
            wanted
                .entry(s.key.as_str())
                .or_default()
                .push(s.value.as_deref());
        }
        self.write(|tx| {
            check_resources_exist(tx, &resource_ids)?;
            if selectors.is_empty() {
                let mut delete_all =
                    tx.prepare_cached("DELETE FROM tags WHERE resource_id = ?1")?;
                for id in &resource_ids {
                    delete_all.execute([id])?;
                }
                return Ok(());
            }
            let mut tags_of =
                tx.prepare_cached("SELECT key, value FROM tags WHERE resource_id = ?1")?;
            let mut delete =
                tx.prepare_cached("DELETE FROM tags WHERE resource_id = ?1 AND key = ?2")?;
            for id in &resource_ids {
                let current = tags_of
                    .query_map([id], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                for (key, value) in current {
                    let selected = wanted
                        .get(key.as_str())
                        .is_some_and(|values| values.iter().any(|v| v.is_none_or(|v| v == value)));
                    if selected {
                        delete.execute(params![id, key])?;
                    }
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

/// `ids` without repeats, in first-seen order.
fn distinct(ids: &[String]) -> Vec<&str> {
    let mut seen = HashSet::new();
    ids.iter()
        .map(String::as_str)
        .filter(|id| seen.insert(*id))
        .collect()
}

/// CreateTags and DeleteTags need every named resource to exist.
fn check_resources_exist(conn: &Connection, resource_ids: &[&str]) -> Result<(), DbError> {
    for id in resource_ids.iter().copied() {
        let kind = IdKind::of(id).ok_or_else(|| DbError::InvalidId(id.to_string()))?;
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
        if !missing_ids(conn, table, &[id.to_string()])?.is_empty() {
            return Err(not_found(kind, id));
        }
    }
    Ok(())
}
