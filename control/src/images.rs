//! The image catalog: what `scripts/build-images` left in the images
//! directory, registered as EC2 images (`aki-` kernels, `ami-` machine
//! images naming their kernel) when the daemon starts.
//!
//! Ids are content ids (name and digest), so registering again is a no-op
//! and a rebuilt image with new contents is a new image, as in EC2.

use std::path::{Component, Path, PathBuf};

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

/// Why RegisterImage refused an image directory. The messages reach API
/// callers, so they say what is wrong and never what a host file holds.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The location is not an image directory of the store (outside it,
    /// through a symlink, or nothing there).
    #[error("ImageLocation must name an image directory in the lab's image store; import images from elsewhere with scripts/import-image first")]
    NotInStore,
    /// The directory is not a valid machine image (details in the log).
    #[error("ImageLocation: {}", .0.summary())]
    Image(ec2lab_images::ImageError),
    /// The repository (an unknown kernel, a duplicate name).
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What RegisterImage asks for, parsed.
#[derive(Debug, Clone, Default)]
pub struct RegisterRequest {
    /// `ImageLocation`: a directory in the store, as a path relative to
    /// it or an absolute path inside it.
    pub location: String,
    /// `Name` (else the manifest's).
    pub name: Option<String>,
    /// `Description` (else the manifest's).
    pub description: Option<String>,
    /// `KernelId` (else the catalog's kernel the manifest names).
    pub kernel_id: Option<String>,
}

impl Lab {
    /// RegisterImage: checks the image directory in the store against its
    /// manifest, digests included, and registers it; returns its `ami-` id.
    /// Only the store is readable this way: the daemon runs as root, and
    /// the caller must not be able to make it read (and later copy into a
    /// guest's disk) any other file on the host.
    pub fn register_image(&self, request: &RegisterRequest) -> Result<String, RegisterError> {
        let dir = store_location(&self.images_dir, &request.location)?;
        let logged = |e: ec2lab_images::ImageError| {
            log::warn!("RegisterImage {:?}: {e}", request.location);
            RegisterError::Image(e)
        };
        let ami = ec2lab_images::MachineImage::open_with(&dir, ec2lab_images::Verify::Digest)
            .map_err(logged)?;
        let kernel_id = match &request.kernel_id {
            Some(k) => Some(k.clone()),
            None => ec2lab_images::Catalog::scan(&self.images_dir)
                .map_err(logged)?
                .kernel(&ami.manifest.kernel)
                .map(|k| {
                    ids::content_id(IdKind::Kernel, &k.manifest.name, &k.manifest.kernel.sha256)
                }),
        };
        if let Some(k) = &kernel_id {
            self.db.get_image(k)?;
        }
        let name = request
            .name
            .clone()
            .unwrap_or_else(|| ami.manifest.name.clone());
        let digest = ami.root().map(|r| r.sha256.clone()).unwrap_or_default();
        let image = Image {
            description: request
                .description
                .clone()
                .or(Some(ami.manifest.description.clone())),
            architecture: ami.manifest.architecture.clone(),
            kernel_id,
            default_user: Some(ami.manifest.default_user.clone()),
            root_size_gib: ami
                .root()
                .map(|r| r.size_bytes.div_ceil(1 << 30).max(1) as u32),
            created: Lab::now(),
            ..available(
                ImageKind::Machine,
                &name,
                &digest,
                &dir,
                &ami.manifest.created,
            )
        };
        self.db.register_image(&image)?;
        Ok(image.id)
    }

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

/// The directory `location` names in `store`: relative to it, or absolute
/// and under it; plain components only, each a real directory (not a
/// symlink). The store itself is the administrator's and may be reached
/// through a link.
fn store_location(store: &Path, location: &str) -> Result<PathBuf, RegisterError> {
    let location = Path::new(location);
    let relative = if location.is_absolute() {
        let canonical = store.canonicalize().ok();
        location
            .strip_prefix(store)
            .ok()
            .or_else(|| {
                canonical
                    .as_deref()
                    .and_then(|c| location.strip_prefix(c).ok())
            })
            .ok_or(RegisterError::NotInStore)?
    } else {
        location
    };
    let plain = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !plain || relative.as_os_str().is_empty() {
        return Err(RegisterError::NotInStore);
    }
    let mut dir = store.to_path_buf();
    for component in relative.components() {
        dir.push(component);
        let real_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_dir());
        if !real_dir {
            return Err(RegisterError::NotInStore);
        }
    }
    Ok(dir)
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
