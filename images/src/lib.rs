//! ec2lab's images: what an AMI directory and a kernel image (AKI)
//! directory hold, checked against what their `manifest.json` claims.
//!
//! `scripts/build-images` and `scripts/import-image` write these
//! directories; the control plane registers them (RegisterImage,
//! DescribeImages) and boots them. Both sides go through this crate, so a
//! manifest that lies about its files is refused with a message that names
//! the file and the difference, before any instance depends on it.
//!
//! The serde types are the manifest schema: unknown fields are refused,
//! required fields must be present, and [`MachineImage::open`] /
//! [`KernelImage::open`] add the checks JSON cannot express (files exist,
//! sizes and digests match, paths stay inside the image directory).
//!
//! ```no_run
//! let ami = ec2lab_images::MachineImage::open("/root/.cache/ec2lab/images/lab-minimal".as_ref())?;
//! println!("{} boots {}", ami.manifest.name, ami.manifest.kernel);
//! # Ok::<(), ec2lab_images::ImageError>(())
//! ```

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format version this crate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// The manifest's file name inside an image directory.
pub const MANIFEST: &str = "manifest.json";

/// Errors about an image directory.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The manifest could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The manifest is not valid for the schema.
    #[error("invalid manifest {path}: {source}")]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// What serde said (names the field).
        source: serde_json::Error,
    },
    /// A field has a value the schema does not allow.
    #[error("invalid manifest {path}: {message}")]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file the manifest names is missing.
    #[error("{manifest} names {file}, which does not exist")]
    MissingFile {
        /// The manifest.
        manifest: PathBuf,
        /// The missing file.
        file: PathBuf,
    },
    /// A file's size differs from the manifest (a truncated image).
    #[error("{file} is {actual} bytes but {manifest} says {expected} (truncated or replaced?)")]
    SizeMismatch {
        /// The manifest.
        manifest: PathBuf,
        /// The file.
        file: PathBuf,
        /// Size in the manifest.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// A file's content differs from the manifest's digest.
    #[error("{file} has sha256 {actual} but {manifest} says {expected} (corrupt or replaced?)")]
    DigestMismatch {
        /// The manifest.
        manifest: PathBuf,
        /// The file.
        file: PathBuf,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the file.
        actual: String,
    },
    /// A file the image names is a symlink, a device, a FIFO or anything
    /// but a regular file: images are read as root, and a link could point
    /// anywhere on the host.
    #[error("{file} is not a regular file (symlinks and special files are refused)")]
    NotRegular {
        /// The file.
        file: PathBuf,
    },
    /// The AMI's default kernel is not in the catalog.
    #[error("image {image} boots kernel {kernel}, which is not among the kernel images in {dir}")]
    MissingKernel {
        /// The machine image.
        image: String,
        /// The kernel it names.
        kernel: String,
        /// Where kernels were looked for.
        dir: PathBuf,
    },
}

impl ImageError {
    /// What is wrong, without host paths, sizes, digests or file contents:
    /// for API callers, who may name a directory but must learn nothing
    /// about files they could not read themselves. The full error goes to
    /// the daemon's log.
    pub fn summary(&self) -> &'static str {
        match self {
            ImageError::Read { .. } => "the image's manifest or files cannot be read",
            ImageError::Parse { .. } | ImageError::Invalid { .. } => {
                "the image's manifest is not valid"
            }
            ImageError::MissingFile { .. } => "a file the image's manifest names is missing",
            ImageError::SizeMismatch { .. } | ImageError::DigestMismatch { .. } => {
                "the image's files do not match its manifest (changed, truncated or corrupt)"
            }
            ImageError::NotRegular { .. } => {
                "the image holds a symlink or special file where a regular file belongs"
            }
            ImageError::MissingKernel { .. } => "the image's kernel is not in the image store",
        }
    }
}

/// What an image directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    /// An AMI: a root volume (and maybe more) plus a default kernel.
    Machine,
    /// An AKI: a kernel to boot machine images with.
    Kernel,
}

/// A file of an image with its expected size and digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelFile {
    /// Relative to the image directory.
    pub path: PathBuf,
    /// `elf-pvh`, `elf` or `bzimage`.
    pub format: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// A kernel image's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelManifest {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Always [`ImageType::Kernel`].
    pub image_type: ImageType,
    /// Unique name; machine images refer to it.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Always `x86_64`.
    pub architecture: String,
    /// The kernel file.
    pub kernel: KernelFile,
    /// The kernel plugs memory through a virtio-mem device (the driver is
    /// built in). ec2lab may then boot an instance with part of its memory
    /// and plug the rest once the guest is up, where that boots faster
    /// (hosts that emulate the guest kernel).
    #[serde(default)]
    pub virtio_mem: bool,
    /// RFC 3339 UTC creation time.
    pub created: String,
}

/// One volume of a machine image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceMapping {
    /// EC2's name for it (`/dev/xvda`).
    pub device_name: String,
    /// What the guest sees (`/dev/vda`: virtio-blk in attach order).
    pub guest_device: String,
    /// The raw image file, relative to the image directory.
    pub path: PathBuf,
    /// Always `raw` (qcow2 is converted by scripts/import-image).
    pub format: String,
    /// Size in bytes (the volume's size; the file may be sparse).
    pub size_bytes: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// A machine image's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineManifest {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Always [`ImageType::Machine`].
    pub image_type: ImageType,
    /// Unique name (DescribeImages `name`).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Always `x86_64`.
    pub architecture: String,
    /// Always `ebs`: the root volume is a copy-on-launch disk image.
    pub root_device_type: String,
    /// The mapping that is the root volume.
    pub root_device_name: String,
    /// The volumes; one has `device_name == root_device_name`.
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    /// Name of the default kernel image.
    pub kernel: String,
    /// An initrd file relative to the directory, if the image needs one.
    pub initrd: Option<PathBuf>,
    /// The kernel command line to boot with.
    pub cmdline: String,
    /// The image's init leaves its first network card to the kernel's DHCP
    /// client: ec2lab adds `ip=:::::eth0:dhcp` to the command line when
    /// the instance has a card (without one the kernel would wait 12 s for
    /// it). lab-minimal asks for it: its address is then configured before
    /// init runs, with no process, which saves ~12 s of boot on hosts that
    /// emulate the guest kernel.
    #[serde(default)]
    pub kernel_dhcp: bool,
    /// The user whose authorized_keys gets the instance's key.
    pub default_user: String,
    /// RFC 3339 UTC creation time.
    pub created: String,
    /// The build's cache key.
    #[serde(default)]
    pub inputs_sha256: Option<String>,
}

/// A machine image directory whose files match its manifest.
#[derive(Clone, Debug)]
pub struct MachineImage {
    /// The directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: MachineManifest,
}

/// A kernel image directory whose files match its manifest.
#[derive(Clone, Debug)]
pub struct KernelImage {
    /// The directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: KernelManifest,
}

/// How thoroughly to check files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Existence and size: cheap, catches truncation.
    Size,
    /// Size and SHA-256 of the content: reads every byte.
    Digest,
}

fn read_manifest<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<(PathBuf, T), ImageError> {
    let path = dir.join(MANIFEST);
    let mut text = String::new();
    open_regular(&path)?
        .read_to_string(&mut text)
        .map_err(|source| ImageError::Read {
            path: path.clone(),
            source,
        })?;
    let manifest = serde_json::from_str(&text).map_err(|source| ImageError::Parse {
        path: path.clone(),
        source,
    })?;
    Ok((path, manifest))
}

/// Opens `path` for reading if it is a regular file, and not a symlink to
/// one: `O_NOFOLLOW` refuses a link, and the type is checked with `fstat`
/// on the opened descriptor, so a file swapped after a path check is never
/// the one read. `O_NONBLOCK` keeps a FIFO from stalling the open; it
/// changes nothing for a regular file's reads.
pub fn open_regular(path: &Path) -> Result<std::fs::File, ImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => ImageError::NotRegular {
                file: path.to_path_buf(),
            },
            _ => ImageError::Read {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ImageError::NotRegular {
            file: path.to_path_buf(),
        });
    }
    Ok(file)
}

fn invalid(path: &Path, message: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A path named by a manifest must be a file directly in its directory:
/// one plain component, so no `..`, no absolute path and no subdirectory
/// that could be a symlink out of the image (the file itself is opened
/// with [`open_regular`]).
fn inside(manifest: &Path, dir: &Path, relative: &Path) -> Result<PathBuf, ImageError> {
    let mut components = relative.components();
    let plain = matches!(components.next(), Some(Component::Normal(_)));
    if !plain || components.next().is_some() {
        return Err(invalid(
            manifest,
            format!(
                "path {} must be a file name inside the image directory",
                relative.display()
            ),
        ));
    }
    Ok(dir.join(relative))
}

fn common_fields(
    manifest: &Path,
    schema_version: u32,
    name: &str,
    architecture: &str,
) -> Result<(), ImageError> {
    if schema_version != SCHEMA_VERSION {
        return Err(invalid(
            manifest,
            format!("schema_version {schema_version} is not supported (expected {SCHEMA_VERSION})"),
        ));
    }
    let name_ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[]./-'@_ ".contains(c));
    if !name_ok {
        // EC2's AMI name character set, at most 128 characters.
        return Err(invalid(
            manifest,
            format!("name {name:?} is not a valid image name"),
        ));
    }
    if architecture != "x86_64" {
        return Err(invalid(
            manifest,
            format!("architecture {architecture:?} is not supported (only x86_64)"),
        ));
    }
    Ok(())
}

/// Hex SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    sha256_reader(&mut std::fs::File::open(path)?)
}

/// Hex SHA-256 of everything `reader` yields.
pub fn sha256_reader(file: &mut impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn check_file(
    manifest: &Path,
    file: &Path,
    size: u64,
    sha256: &str,
    verify: Verify,
) -> Result<(), ImageError> {
    let mut opened = open_regular(file).map_err(|e| match e {
        ImageError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            ImageError::MissingFile {
                manifest: manifest.to_path_buf(),
                file: file.to_path_buf(),
            }
        }
        e => e,
    })?;
    let meta = opened.metadata().map_err(|source| ImageError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    if meta.len() != size {
        return Err(ImageError::SizeMismatch {
            manifest: manifest.to_path_buf(),
            file: file.to_path_buf(),
            expected: size,
            actual: meta.len(),
        });
    }
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            manifest,
            format!("sha256 of {} is not 64 hex digits", file.display()),
        ));
    }
    if verify == Verify::Digest {
        let actual = sha256_reader(&mut opened).map_err(|source| ImageError::Read {
            path: file.to_path_buf(),
            source,
        })?;
        if !actual.eq_ignore_ascii_case(sha256) {
            return Err(ImageError::DigestMismatch {
                manifest: manifest.to_path_buf(),
                file: file.to_path_buf(),
                expected: sha256.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

impl KernelImage {
    /// Reads `dir/manifest.json` and checks the kernel file (size only).
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        Self::open_with(dir, Verify::Size)
    }

    /// As [`KernelImage::open`], checking files as thoroughly as `verify`.
    pub fn open_with(dir: &Path, verify: Verify) -> Result<Self, ImageError> {
        let (path, manifest): (PathBuf, KernelManifest) = read_manifest(dir)?;
        common_fields(
            &path,
            manifest.schema_version,
            &manifest.name,
            &manifest.architecture,
        )?;
        if manifest.image_type != ImageType::Kernel {
            return Err(invalid(&path, "image_type must be \"kernel\""));
        }
        if !["elf-pvh", "elf", "bzimage"].contains(&manifest.kernel.format.as_str()) {
            return Err(invalid(
                &path,
                format!(
                    "kernel format {:?} is not elf-pvh, elf or bzimage",
                    manifest.kernel.format
                ),
            ));
        }
        let file = inside(&path, dir, &manifest.kernel.path)?;
        check_file(
            &path,
            &file,
            manifest.kernel.size_bytes,
            &manifest.kernel.sha256,
            verify,
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The kernel file.
    pub fn kernel_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.kernel.path)
    }
}

impl MachineImage {
    /// Reads `dir/manifest.json` and checks every file it names (size only).
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        Self::open_with(dir, Verify::Size)
    }

    /// As [`MachineImage::open`], checking files as thoroughly as `verify`.
    pub fn open_with(dir: &Path, verify: Verify) -> Result<Self, ImageError> {
        let (path, manifest): (PathBuf, MachineManifest) = read_manifest(dir)?;
        common_fields(
            &path,
            manifest.schema_version,
            &manifest.name,
            &manifest.architecture,
        )?;
        if manifest.image_type != ImageType::Machine {
            return Err(invalid(&path, "image_type must be \"machine\""));
        }
        if manifest.root_device_type != "ebs" {
            return Err(invalid(&path, "root_device_type must be \"ebs\""));
        }
        if manifest.default_user.is_empty() || manifest.kernel.is_empty() {
            return Err(invalid(&path, "default_user and kernel must not be empty"));
        }
        let roots = manifest
            .block_device_mappings
            .iter()
            .filter(|m| m.device_name == manifest.root_device_name)
            .count();
        if roots != 1 {
            return Err(invalid(
                &path,
                format!(
                    "exactly one block device mapping must be the root device {} ({roots} are)",
                    manifest.root_device_name
                ),
            ));
        }
        for mapping in &manifest.block_device_mappings {
            if mapping.format != "raw" {
                return Err(invalid(
                    &path,
                    format!(
                        "{}: format {:?} is not raw",
                        mapping.device_name, mapping.format
                    ),
                ));
            }
            let file = inside(&path, dir, &mapping.path)?;
            check_file(&path, &file, mapping.size_bytes, &mapping.sha256, verify)?;
        }
        if let Some(initrd) = &manifest.initrd {
            let file = inside(&path, dir, initrd)?;
            match open_regular(&file) {
                Ok(_) => {}
                Err(ImageError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Err(ImageError::MissingFile {
                        manifest: path,
                        file,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The root volume's mapping.
    pub fn root(&self) -> Option<&BlockDeviceMapping> {
        self.manifest
            .block_device_mappings
            .iter()
            .find(|m| m.device_name == self.manifest.root_device_name)
    }

    /// The root volume's image file.
    pub fn root_path(&self) -> Option<PathBuf> {
        self.root().map(|m| self.dir.join(&m.path))
    }
}

/// Every image under an images directory (`<dir>/<name>/` machine images,
/// `<dir>/kernels/<name>/` kernel images).
#[derive(Debug, Default)]
pub struct Catalog {
    /// Machine images, by directory name order.
    pub machines: Vec<MachineImage>,
    /// Kernel images, by directory name order.
    pub kernels: Vec<KernelImage>,
}

impl Catalog {
    /// Opens every image directory under `dir` (directories without a
    /// manifest are skipped as incomplete builds); any invalid image, or a
    /// machine image whose kernel is missing, is an error.
    pub fn scan(dir: &Path) -> Result<Self, ImageError> {
        let mut catalog = Catalog::default();
        for sub in subdirs(&dir.join("kernels"))? {
            if sub.join(MANIFEST).exists() {
                catalog.kernels.push(KernelImage::open(&sub)?);
            }
        }
        for sub in subdirs(dir)? {
            if sub.file_name().is_some_and(|n| n == "kernels") || !sub.join(MANIFEST).exists() {
                continue;
            }
            let image = MachineImage::open(&sub)?;
            if catalog.kernel(&image.manifest.kernel).is_none() {
                return Err(ImageError::MissingKernel {
                    image: image.manifest.name,
                    kernel: image.manifest.kernel,
                    dir: dir.join("kernels"),
                });
            }
            catalog.machines.push(image);
        }
        Ok(catalog)
    }

    /// The kernel image called `name`.
    pub fn kernel(&self, name: &str) -> Option<&KernelImage> {
        self.kernels.iter().find(|k| k.manifest.name == name)
    }

    /// The machine image called `name`.
    pub fn machine(&self, name: &str) -> Option<&MachineImage> {
        self.machines.iter().find(|m| m.manifest.name == name)
    }
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ImageError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &[u8] = b"pretend this is an ext4 file system";

    fn digest(data: &[u8]) -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn machine_json(size: usize, sha: &str) -> serde_json::Value {
        serde_json::json!({
            "schema_version": 1,
            "image_type": "machine",
            "name": "lab-minimal",
            "description": "test",
            "architecture": "x86_64",
            "root_device_type": "ebs",
            "root_device_name": "/dev/xvda",
            "block_device_mappings": [{
                "device_name": "/dev/xvda", "guest_device": "/dev/vda", "path": "root.ext4",
                "format": "raw", "size_bytes": size, "sha256": sha
            }],
            "kernel": "k1",
            "initrd": null,
            "cmdline": "console=ttyS0",
            "default_user": "ec2-user",
            "created": "2026-01-01T00:00:00Z"
        })
    }

    fn kernel_json(size: usize, sha: &str) -> serde_json::Value {
        serde_json::json!({
            "schema_version": 1,
            "image_type": "kernel",
            "name": "k1",
            "description": "test kernel",
            "architecture": "x86_64",
            "kernel": {"path": "vmlinux", "format": "elf-pvh", "size_bytes": size, "sha256": sha},
            "created": "2026-01-01T00:00:00Z"
        })
    }

    /// An images directory with one valid kernel and one valid AMI.
    fn catalog_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        let ami = d.path().join("lab-minimal");
        let aki = d.path().join("kernels/k1");
        std::fs::create_dir_all(&ami).expect("mkdir");
        std::fs::create_dir_all(&aki).expect("mkdir");
        std::fs::write(ami.join("root.ext4"), ROOT).expect("root");
        write_json(&ami, &machine_json(ROOT.len(), &digest(ROOT)));
        std::fs::write(aki.join("vmlinux"), b"ELF").expect("kernel");
        write_json(&aki, &kernel_json(3, &digest(b"ELF")));
        d
    }

    fn write_json(dir: &Path, v: &serde_json::Value) {
        std::fs::write(dir.join(MANIFEST), v.to_string()).expect("manifest");
    }

    fn err_text(r: Result<MachineImage, ImageError>) -> String {
        r.expect_err("must be refused").to_string()
    }

    #[test]
    fn valid_catalog_opens_with_digests() {
        let d = catalog_dir();
        let c = Catalog::scan(d.path()).expect("valid");
        assert_eq!(c.machines.len(), 1);
        assert_eq!(c.kernels.len(), 1);
        let ami = c.machine("lab-minimal").expect("ami");
        assert_eq!(
            ami.root_path(),
            Some(d.path().join("lab-minimal/root.ext4"))
        );
        MachineImage::open_with(&ami.dir, Verify::Digest).expect("digest matches");
        KernelImage::open_with(&d.path().join("kernels/k1"), Verify::Digest).expect("kernel");
    }

    #[test]
    fn truncated_root_image_is_named() {
        let d = catalog_dir();
        let ami = d.path().join("lab-minimal");
        std::fs::write(ami.join("root.ext4"), &ROOT[..10]).expect("truncate");
        let e = err_text(MachineImage::open(&ami));
        assert!(e.contains("root.ext4 is 10 bytes but"), "{e}");
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn corrupt_root_image_fails_the_digest_check_only() {
        let d = catalog_dir();
        let ami = d.path().join("lab-minimal");
        let mut bad = ROOT.to_vec();
        bad[0] ^= 0xff;
        std::fs::write(ami.join("root.ext4"), &bad).expect("corrupt");
        MachineImage::open(&ami).expect("same size passes the cheap check");
        let e = err_text(MachineImage::open_with(&ami, Verify::Digest));
        assert!(e.contains("has sha256"), "{e}");
    }

    #[test]
    fn manifests_that_lie_are_refused() {
        let d = catalog_dir();
        let ami = d.path().join("lab-minimal");
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "does not exist",
                Box::new(|m| m["block_device_mappings"][0]["path"] = "nope.img".into()),
            ),
            (
                "inside the image directory",
                Box::new(|m| m["block_device_mappings"][0]["path"] = "../../etc/passwd".into()),
            ),
            (
                "inside the image directory",
                Box::new(|m| m["block_device_mappings"][0]["path"] = "/etc/passwd".into()),
            ),
            (
                "exactly one block device mapping",
                Box::new(|m| m["root_device_name"] = "/dev/sda1".into()),
            ),
            (
                "architecture",
                Box::new(|m| m["architecture"] = "arm64".into()),
            ),
            (
                "schema_version",
                Box::new(|m| m["schema_version"] = 9.into()),
            ),
            ("unknown field", Box::new(|m| m["colour"] = "blue".into())),
            (
                "missing field `kernel`",
                Box::new(|m| {
                    m.as_object_mut().map(|o| o.remove("kernel"));
                }),
            ),
            (
                "not a valid image name",
                Box::new(|m| m["name"] = "bad\nname".into()),
            ),
            (
                "image_type",
                Box::new(|m| m["image_type"] = "kernel".into()),
            ),
            (
                "not 64 hex digits",
                Box::new(|m| m["block_device_mappings"][0]["sha256"] = "abc".into()),
            ),
            (
                "is not raw",
                Box::new(|m| m["block_device_mappings"][0]["format"] = "qcow2".into()),
            ),
        ];
        for (expected, mutate) in cases {
            let mut m = machine_json(ROOT.len(), &digest(ROOT));
            mutate(&mut m);
            write_json(&ami, &m);
            let e = err_text(MachineImage::open(&ami));
            assert!(e.contains(expected), "expected {expected:?} in: {e}");
        }
    }

    #[test]
    fn symlinks_and_special_files_are_refused_wherever_the_image_names_a_file() {
        let d = catalog_dir();
        let ami = d.path().join("lab-minimal");
        // A link to a file with the very content the manifest expects:
        // refused for being a link, not for its content.
        let elsewhere = d.path().join("elsewhere.ext4");
        std::fs::write(&elsewhere, ROOT).expect("target");
        std::fs::remove_file(ami.join("root.ext4")).expect("rm");
        std::os::unix::fs::symlink(&elsewhere, ami.join("root.ext4")).expect("symlink");
        let e = MachineImage::open_with(&ami, Verify::Digest).expect_err("symlinked root");
        assert!(matches!(e, ImageError::NotRegular { .. }), "{e}");

        let d = catalog_dir();
        let ami = d.path().join("lab-minimal");
        std::fs::remove_file(ami.join("root.ext4")).expect("rm");
        let fifo = std::process::Command::new("mkfifo")
            .arg(ami.join("root.ext4"))
            .status()
            .expect("mkfifo");
        assert!(fifo.success());
        // Returns at once: a FIFO with no writer must not block the open.
        let e = MachineImage::open(&ami).expect_err("fifo root");
        assert!(matches!(e, ImageError::NotRegular { .. }), "{e}");

        let d = catalog_dir();
        let ami = d.path().join("lab-minimal");
        let manifest = std::fs::read(ami.join(MANIFEST)).expect("manifest");
        std::fs::write(d.path().join("m.json"), manifest).expect("copy");
        std::fs::remove_file(ami.join(MANIFEST)).expect("rm");
        std::os::unix::fs::symlink(d.path().join("m.json"), ami.join(MANIFEST)).expect("link");
        let e = MachineImage::open(&ami).expect_err("symlinked manifest");
        assert!(matches!(e, ImageError::NotRegular { .. }), "{e}");
    }

    #[test]
    fn files_must_sit_directly_in_the_image_directory() {
        let d = catalog_dir();
        let ami = d.path().join("lab-minimal");
        std::fs::create_dir(ami.join("sub")).expect("mkdir");
        std::fs::rename(ami.join("root.ext4"), ami.join("sub/root.ext4")).expect("mv");
        let mut m = machine_json(ROOT.len(), &digest(ROOT));
        m["block_device_mappings"][0]["path"] = "sub/root.ext4".into();
        write_json(&ami, &m);
        let e = err_text(MachineImage::open(&ami));
        assert!(e.contains("must be a file name"), "{e}");
    }

    #[test]
    fn summaries_say_what_is_wrong_without_sizes_digests_or_paths() {
        let d = catalog_dir();
        let ami = d.path().join("lab-minimal");
        let mut bad = ROOT.to_vec();
        bad[0] ^= 0xff;
        std::fs::write(ami.join("root.ext4"), &bad).expect("corrupt");
        let digest_error = MachineImage::open_with(&ami, Verify::Digest).expect_err("digest");
        std::fs::write(ami.join("root.ext4"), &ROOT[..10]).expect("truncate");
        let size_error = MachineImage::open(&ami).expect_err("size");
        for e in [digest_error, size_error] {
            let summary = e.summary();
            assert!(summary.contains("do not match"), "{summary}");
            assert!(!summary.chars().any(|c| c.is_ascii_digit()), "{summary}");
            assert!(!summary.contains('/'), "{summary}");
        }
    }

    #[test]
    fn missing_kernel_and_missing_manifest_are_named() {
        let d = catalog_dir();
        std::fs::remove_dir_all(d.path().join("kernels/k1")).expect("rm");
        let e = Catalog::scan(d.path()).expect_err("no kernel").to_string();
        assert!(e.contains("boots kernel k1"), "{e}");
        let e = MachineImage::open(d.path())
            .expect_err("no manifest")
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        let d = catalog_dir();
        std::fs::write(d.path().join("kernels/k1/vmlinux"), b"").expect("empty kernel");
        let e = Catalog::scan(d.path())
            .expect_err("truncated kernel")
            .to_string();
        assert!(e.contains("vmlinux is 0 bytes"), "{e}");
    }
}
