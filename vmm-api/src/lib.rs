//! The contract between `ec2lab-vmm` and whoever starts it: the JSON VM
//! config (`--config`) and the flag forms of its devices, the bodies of its
//! control API, and what its exit status and exit file mean.
//!
//! Both sides build against these types, so the control plane never spells
//! a field name, an action or an exit code by hand and a rename cannot
//! drift between the two. The crate holds data and its (de)serialisation
//! only: what the VMM checks beyond JSON (limits that depend on the host or
//! the architecture) stays in the VMM, and no I/O happens here. Changing a
//! serialised name here changes the wire format; the tests of each module
//! pin today's JSON.
//!
//! ```
//! use ec2lab_vmm_api::config::{DiskConfig, VmConfig};
//!
//! let config = VmConfig {
//!     memory_mib: 256,
//!     disks: vec![DiskConfig { path: "root.img".into(), read_only: false }],
//!     ..VmConfig::new("vmlinux".into())
//! };
//! assert_eq!(config.vcpus, 1);
//! ```

pub mod api;
pub mod config;
pub mod exit;
pub mod flags;
pub mod host;
pub mod metadata;
pub mod snapshot;
