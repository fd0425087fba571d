//! Images (AMIs and AKIs): RegisterImage and import, DescribeImages,
//! DeregisterImage. Deregistered images stay visible, as in EC2.

use std::path::PathBuf;

use rusqlite::{params, Connection, Row};
use time::OffsetDateTime;

use super::tags::{insert_tags, tags_of};
use super::{
    from_ms, missing_ids, not_found, parse_column, path_text, query_first, to_ms, truncate_ms,
    unique_violation, Db, DbError,
};
use crate::model::filter::{self, Filter, Page, PageRequest};
use crate::model::ids::IdKind;
use crate::model::{Image, ImageKind, ImageState};

/// A DescribeImages query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageQuery {
    pub image_ids: Vec<String>,
    pub filters: Vec<Filter>,
    pub page: PageRequest,
}

impl Db {
    /// RegisterImage / import. An id or name already available is a
    /// duplicate; a deregistered image with the same id is replaced, so
    /// re-importing an image brings it back under its content id.
    pub fn register_image(&self, image: &Image) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM images WHERE id = ?1 AND state = 'deregistered'",
                [&image.id],
            )?;
            tx.execute(
                "INSERT INTO images (id, name, kind, dir, description, architecture, kernel_id,
                    boot_mode, default_user, root_size_gib, digest, owner_id, state, created_ms,
                    deregistered_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    image.id,
                    image.name,
                    image.kind.name(),
                    path_text(&image.dir)?,
                    image.description,
                    image.architecture,
                    image.kernel_id,
                    image.boot_mode,
                    image.default_user,
                    image.root_size_gib,
                    image.digest,
                    image.owner_id,
                    image.state.name(),
                    to_ms(image.created),
                    image.deregistered.map(to_ms),
                ],
            )
            .map_err(|e| unique_violation(e, image.kind.id_kind(), &image.name))?;
            tx.execute("DELETE FROM tags WHERE resource_id = ?1", [&image.id])?;
            insert_tags(tx, &image.id, &image.tags)
        })
    }

    /// One image, deregistered ones included.
    pub fn get_image(&self, id: &str) -> Result<Image, DbError> {
        let conn = self.lock();
        image_where(&conn, "id = ?1", id)?.ok_or_else(|| not_found(IdKind::Image, id))
    }

    /// DescribeImages, ordered by id. Explicit ids that do not exist fail
    /// the call (InvalidAMIID.NotFound).
    pub fn list_images(&self, query: &ImageQuery) -> Result<Page<Image>, DbError> {
        filter::validate::<Image>(&query.filters)?;
        let conn = self.lock();
        if !query.image_ids.is_empty() {
            let missing = missing_ids(&conn, "images", &query.image_ids)?;
            if !missing.is_empty() {
                return Err(DbError::NotFound {
                    kind: IdKind::Image,
                    ids: missing,
                });
            }
        }
        let mut stmt = conn.prepare_cached(&format!("{IMAGE_SELECT} ORDER BY id"))?;
        let mut rows = stmt.query([])?;
        let mut all = Vec::new();
        while let Some(row) = rows.next()? {
            let image = image_from_row(&conn, row)?;
            if query.image_ids.is_empty() || query.image_ids.contains(&image.id) {
                all.push(image);
            }
        }
        let kept = filter::apply(all, &query.filters)?;
        Ok(filter::paginate(
            kept,
            |i| i.id.clone(),
            &query.page,
            filter::DESCRIBE_LIMITS,
        )?)
    }

    /// DeregisterImage: the image stays visible as `deregistered`.
    pub fn deregister_image(&self, id: &str, now: OffsetDateTime) -> Result<Image, DbError> {
        self.write(|tx| {
            let mut image =
                image_where(tx, "id = ?1", id)?.ok_or_else(|| not_found(IdKind::Image, id))?;
            if image.state == ImageState::Deregistered {
                return Err(DbError::Conflict {
                    kind: image.kind.id_kind(),
                    id: id.to_string(),
                    reason: "already deregistered",
                });
            }
            image.state = ImageState::Deregistered;
            image.deregistered = Some(truncate_ms(now));
            tx.execute(
                "UPDATE images SET state = 'deregistered', deregistered_ms = ?2 WHERE id = ?1",
                params![id, image.deregistered.map(to_ms)],
            )?;
            Ok(image)
        })
    }
}

const IMAGE_SELECT: &str = "SELECT * FROM images";

fn image_where(
    conn: &Connection,
    condition: &'static str,
    value: &str,
) -> Result<Option<Image>, DbError> {
    query_first(
        conn,
        &format!("{IMAGE_SELECT} WHERE {condition}"),
        value,
        image_from_row,
    )
}

fn image_from_row(conn: &Connection, row: &Row<'_>) -> Result<Image, DbError> {
    let id: String = row.get("id")?;
    Ok(Image {
        name: row.get("name")?,
        kind: parse_column(row, "kind", ImageKind::from_name)?,
        dir: PathBuf::from(row.get::<_, String>("dir")?),
        description: row.get("description")?,
        architecture: row.get("architecture")?,
        kernel_id: row.get("kernel_id")?,
        boot_mode: row.get("boot_mode")?,
        default_user: row.get("default_user")?,
        root_size_gib: row.get("root_size_gib")?,
        digest: row.get("digest")?,
        owner_id: row.get("owner_id")?,
        state: parse_column(row, "state", ImageState::from_name)?,
        created: from_ms(row.get("created_ms")?)?,
        deregistered: row
            .get::<_, Option<i64>>("deregistered_ms")?
            .map(from_ms)
            .transpose()?,
        tags: tags_of(conn, &id)?,
        id,
    })
}
