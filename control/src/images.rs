//! The image catalog: what `scripts/build-images` left in the images
//! directory, registered as EC2 images (`aki-` kernels, `ami-` machine
//! images naming their kernel) when the daemon starts.
//!
//! Ids are content ids (name and digest), so registering again is a no-op
//! and a rebuilt image with new contents is a new image, as in EC2.

use std::path::Path;

use crate::db::{Db, DbError};
use crate::lifecycle::Lab;
use crate::model::ids::{self, IdKind};
use crate::model::{Image, ImageKind, ImageState, DEFAULT_OWNER_ID};

/// Errors registering the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The images directory or a manifest in it.
    #[error(transparent)]
    Scan(#[from] ec2lab_images::ImageError),
    /// The repository refused an image.
    #[error("registering {name}: {source}")]
    Register {
        /// The image's name.
        name: String,
        /// Why.
        source: DbError,
    },
}

impl Lab {
    /// Registers every image under the lab's images directory (idempotent);
    /// returns how many the catalog holds.
    pub fn register_catalog(&self) -> Result<usize, CatalogError> {
        register_all(&self.db, &self.images_dir)
    }
}

/// Registers every image under `images_dir` in `db`: kernels as `aki-`,
/// machine images whose kernel is in the catalog as `ami-`.
fn register_all(db: &Db, images_dir: &Path) -> Result<usize, CatalogError> {
    let catalog = ec2lab_images::Catalog::scan(images_dir)?;
    let mut n = 0;
    for k in &catalog.kernels {
        let m = &k.manifest;
        let image = Image {
            description: Some(m.description.clone()),
            architecture: m.architecture.clone(),
            ..available(
                ImageKind::Kernel,
                &m.name,
                &m.kernel.sha256,
                &k.dir,
                &m.created,
            )
        };
        register(db, image)?;
        n += 1;
    }
    for a in &catalog.machines {
        let m = &a.manifest;
        let Some(kernel) = catalog.kernel(&m.kernel) else {
            continue;
        };
        let digest = a.root().map(|r| r.sha256.clone()).unwrap_or_default();
        let size = a.root().map_or(0, |r| r.size_bytes);
        let image = Image {
            description: Some(m.description.clone()),
            architecture: m.architecture.clone(),
            kernel_id: Some(ids::content_id(
                IdKind::Kernel,
                &kernel.manifest.name,
                &kernel.manifest.kernel.sha256,
            )),
            default_user: Some(m.default_user.clone()),
            root_size_gib: Some(size.div_ceil(1 << 30).max(1) as u32),
            ..available(ImageKind::Machine, &m.name, &digest, &a.dir, &m.created)
        };
        register(db, image)?;
        n += 1;
    }
    Ok(n)
}

/// An available image of ours, its id made from `name` and `digest`; the
/// caller adds what its kind of manifest says.
fn available(kind: ImageKind, name: &str, digest: &str, dir: &Path, created: &str) -> Image {
    let id_kind = match kind {
        ImageKind::Kernel => IdKind::Kernel,
        ImageKind::Machine => IdKind::Image,
    };
    Image {
        id: ids::content_id(id_kind, name, digest),
        name: name.to_string(),
        kind,
        dir: dir.to_path_buf(),
        description: None,
        architecture: String::new(),
        kernel_id: None,
        boot_mode: None,
        default_user: None,
        root_size_gib: None,
        digest: digest.to_string(),
        owner_id: DEFAULT_OWNER_ID.to_string(),
        state: ImageState::Available,
        created: crate::model::parse_timestamp(created).unwrap_or_else(Lab::now),
        deregistered: None,
        tags: Default::default(),
    }
}

/// Registers `image` unless an available image has its id already.
fn register(db: &Db, image: Image) -> Result<(), CatalogError> {
    match db.get_image(&image.id) {
        Ok(existing) if existing.state == ImageState::Available => Ok(()),
        _ => match db.register_image(&image) {
            Ok(()) => Ok(()),
            // Another build of the same name is registered: keep it.
            Err(DbError::Duplicate { .. }) => Ok(()),
            Err(source) => Err(CatalogError::Register {
                name: image.name,
                source,
            }),
        },
    }
}
