//! Key pairs: CreateKeyPair / ImportKeyPair, DescribeKeyPairs and
//! DeleteKeyPair. Names are unique, as in EC2; the private key is never
//! stored.

use rusqlite::{params, Connection, Row};

use super::tags::{insert_tags, tags_of};
use super::{from_ms, not_found, parse_column, query_first, to_ms, unique_violation, Db, DbError};
use crate::model::filter::{self, Filter};
use crate::model::ids::IdKind;
use crate::model::{KeyPair, KeyType};

impl Db {
    /// CreateKeyPair / ImportKeyPair. Names are unique.
    pub fn insert_key_pair(&self, key: &KeyPair) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO key_pairs (id, name, key_type, fingerprint, public_key, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    key.id,
                    key.name,
                    key.key_type.name(),
                    key.fingerprint,
                    key.public_key,
                    to_ms(key.created)
                ],
            )
            .map_err(|e| unique_violation(e, IdKind::KeyPair, &key.name))?;
            insert_tags(tx, &key.id, &key.tags)
        })
    }

    /// The key pair called `name`.
    pub fn get_key_pair_by_name(&self, name: &str) -> Result<KeyPair, DbError> {
        let conn = self.lock();
        key_pair_where(&conn, "name = ?1", name)?.ok_or_else(|| not_found(IdKind::KeyPair, name))
    }

    /// The key pair with id `id`.
    pub fn get_key_pair(&self, id: &str) -> Result<KeyPair, DbError> {
        let conn = self.lock();
        key_pair_where(&conn, "id = ?1", id)?.ok_or_else(|| not_found(IdKind::KeyPair, id))
    }

    /// DescribeKeyPairs, ordered by name. Explicit names or ids that do not
    /// exist fail the call (InvalidKeyPair.NotFound), as in EC2.
    pub fn list_key_pairs(
        &self,
        names: &[String],
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<KeyPair>, DbError> {
        filter::validate::<KeyPair>(filters)?;
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!("{KEY_PAIR_SELECT} ORDER BY name"))?;
        let mut rows = stmt.query([])?;
        let mut all = Vec::new();
        while let Some(row) = rows.next()? {
            all.push(key_pair_from_row(&conn, row)?);
        }
        let mut missing: Vec<String> = names
            .iter()
            .filter(|n| !all.iter().any(|k| &k.name == *n))
            .chain(ids.iter().filter(|i| !all.iter().any(|k| &k.id == *i)))
            .cloned()
            .collect();
        if !missing.is_empty() {
            missing.dedup();
            return Err(DbError::NotFound {
                kind: IdKind::KeyPair,
                ids: missing,
            });
        }
        let selected = all
            .into_iter()
            .filter(|k| names.is_empty() || names.contains(&k.name))
            .filter(|k| ids.is_empty() || ids.contains(&k.id))
            .collect();
        Ok(filter::apply(selected, filters)?)
    }

    /// DeleteKeyPair by name; `None` if there was none (EC2 answers success
    /// either way).
    pub fn delete_key_pair_by_name(&self, name: &str) -> Result<Option<KeyPair>, DbError> {
        self.delete_key_pair_where("name = ?1", name)
    }

    /// DeleteKeyPair by KeyPairId.
    pub fn delete_key_pair(&self, id: &str) -> Result<Option<KeyPair>, DbError> {
        self.delete_key_pair_where("id = ?1", id)
    }

    fn delete_key_pair_where(
        &self,
        condition: &'static str,
        value: &str,
    ) -> Result<Option<KeyPair>, DbError> {
        self.write(|tx| {
            let Some(key) = key_pair_where(tx, condition, value)? else {
                return Ok(None);
            };
            tx.execute("DELETE FROM key_pairs WHERE id = ?1", [&key.id])?;
            tx.execute("DELETE FROM tags WHERE resource_id = ?1", [&key.id])?;
            Ok(Some(key))
        })
    }
}

const KEY_PAIR_SELECT: &str = "SELECT * FROM key_pairs";

fn key_pair_where(
    conn: &Connection,
    condition: &'static str,
    value: &str,
) -> Result<Option<KeyPair>, DbError> {
    query_first(
        conn,
        &format!("{KEY_PAIR_SELECT} WHERE {condition}"),
        value,
        key_pair_from_row,
    )
}

fn key_pair_from_row(conn: &Connection, row: &Row<'_>) -> Result<KeyPair, DbError> {
    let id: String = row.get("id")?;
    Ok(KeyPair {
        name: row.get("name")?,
        key_type: parse_column(row, "key_type", KeyType::from_name)?,
        fingerprint: row.get("fingerprint")?,
        public_key: row.get("public_key")?,
        created: from_ms(row.get("created_ms")?)?,
        tags: tags_of(conn, &id)?,
        id,
    })
}
