//! The VM's configuration: the contract crate's [`VmConfig`], filled either
//! from command-line flags or from a JSON file (`--config`), and validated
//! here once before anything is built. The control plane writes the JSON
//! form through the same crate, so the two cannot disagree on a field.
//!
//! What stays here is what only the VMM knows: limits that follow from the
//! host (its memory) and the architecture (APIC ids, interrupt lines, the
//! command-line buffer).

use std::path::{Path, PathBuf};

use ec2lab_vmm_api::metadata::{InstanceMetadata, MAX_USER_DATA};

pub use ec2lab_vmm_api::config::{
    BzImageDecompression, CpuTemplate, DiskConfig, HotplugMemoryConfig, MacAddr, NetConfig,
    VmConfig, VsockConfig, DEFAULT_STALL_TIMEOUT_SECS,
};

/// Largest vCPU count we accept; the MP table and MADT use 8-bit APIC ids.
pub const MAX_VCPUS: u8 = 64;
/// Virtio devices get IOAPIC lines 5..=23.
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// Smallest guest we accept: below this no Linux kernel boots.
pub const MIN_MEMORY_MIB: u64 = 16;

/// Errors in a VM configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid JSON for a VM config.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The instance metadata cannot be served as given.
    #[error("invalid instance metadata: {0}")]
    Metadata(String),
    /// No kernel was given.
    #[error("no kernel given (use --kernel or \"kernel\" in the config file)")]
    NoKernel,
    /// vCPU count out of range.
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u64),
    /// Memory size out of range.
    #[error(
        "memory_mib must be between {MIN_MEMORY_MIB} and the host's {host_mib} MiB, got {got}"
    )]
    MemorySize {
        /// Requested size.
        got: u64,
        /// The host's physical memory.
        host_mib: u64,
    },
    /// Too many devices for the interrupt lines we hand out.
    #[error("at most {max} virtio devices are supported, got {got}")]
    TooManyDevices {
        /// Requested.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// The hotplug memory's sizes are wrong.
    #[error("invalid hotplug memory: {0}")]
    HotplugMemory(String),
    /// A network device's options are wrong.
    #[error("invalid network device: {0}")]
    Net(String),
    /// The vsock device's options are wrong.
    #[error("invalid vsock device: {0}")]
    Vsock(String),
    /// Command line too long.
    #[error("kernel command line is {0} bytes; the limit is {max}", max = crate::arch::x86_64::layout::CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
}

/// Longest interface name Linux accepts (IFNAMSIZ minus the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// Reads a JSON config file.
pub fn from_file(path: &Path) -> Result<VmConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_json(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses the JSON form.
pub fn from_json(text: &str) -> Result<VmConfig, serde_json::Error> {
    serde_json::from_str(text)
}

/// The VMM's checks of a config beyond what its JSON form can express; a
/// trait because the config type belongs to the contract crate.
pub trait Validate {
    /// Checks every field against hard limits; `host_mem_mib` is the host's
    /// physical memory (a guest larger than the host is refused up front
    /// rather than failing later with an obscure mmap or OOM error).
    fn validate(&self, host_mem_mib: u64) -> Result<(), ConfigError>;
}

/// Largest hotplug block: Linux plugs memory in 128 MiB sections, and a
/// block larger than a section only wastes what does not fill one.
const MAX_HOTPLUG_BLOCK_MIB: u64 = 128;

/// The hotplug region: a power-of-two block, a whole number of blocks, a
/// request that fits, and boot plus hotplug memory within the host's.
fn check_hotplug_memory(
    h: &HotplugMemoryConfig,
    memory_mib: u64,
    host_mem_mib: u64,
) -> Result<(), ConfigError> {
    let bad = |why: String| Err(ConfigError::HotplugMemory(why));
    if !h.block_size_mib.is_power_of_two() || h.block_size_mib > MAX_HOTPLUG_BLOCK_MIB {
        return bad(format!(
            "block_size_mib must be a power of two from 1 to {MAX_HOTPLUG_BLOCK_MIB}, got {}",
            h.block_size_mib
        ));
    }
    if h.total_size_mib == 0 || !h.total_size_mib.is_multiple_of(h.block_size_mib) {
        return bad(format!(
            "total_size_mib must be a positive multiple of the {} MiB block, got {}",
            h.block_size_mib, h.total_size_mib
        ));
    }
    if h.requested_size_mib > h.total_size_mib
        || !h.requested_size_mib.is_multiple_of(h.block_size_mib)
    {
        return bad(format!(
            "requested_size_mib must be a multiple of the {} MiB block up to {}, got {}",
            h.block_size_mib, h.total_size_mib, h.requested_size_mib
        ));
    }
    match memory_mib.checked_add(h.total_size_mib) {
        Some(all) if all <= host_mem_mib => Ok(()),
        _ => bad(format!(
            "{memory_mib} MiB of boot memory and {} MiB to plug are more than the host's {host_mem_mib} MiB",
            h.total_size_mib
        )),
    }
}

impl Validate for VmConfig {
    fn validate(&self, host_mem_mib: u64) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if self.vcpus == 0 || self.vcpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::VcpuCount(self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB || self.memory_mib > host_mem_mib {
            return Err(ConfigError::MemorySize {
                got: self.memory_mib,
                host_mib: host_mem_mib,
            });
        }
        for net in &self.nets {
            if net.tap.is_empty()
                || net.tap.len() > MAX_IFNAME_LEN
                || net.tap.contains(['/', ' ', '\0'])
            {
                return Err(ConfigError::Net(format!(
                    "tap name {:?} is not a valid interface name (1 to {MAX_IFNAME_LEN} characters)",
                    net.tap
                )));
            }
        }
        if let Some(vsock) = &self.vsock {
            // Linux's vsock addresses hold 32-bit context ids, and 0-2 are
            // the hypervisor, local and host ids.
            if vsock.cid < 3 || vsock.cid >= u64::from(u32::MAX) {
                return Err(ConfigError::Vsock(format!(
                    "guest cid must be between 3 and {}, got {}",
                    u32::MAX - 1,
                    vsock.cid
                )));
            }
            if vsock.uds.as_os_str().is_empty() {
                return Err(ConfigError::Vsock("empty uds path".to_string()));
            }
        }
        if let Some(hotplug) = &self.hotplug_memory {
            check_hotplug_memory(hotplug, self.memory_mib, host_mem_mib)?;
        }
        let devices = self.disks.len()
            + self.nets.len()
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some())
            + usize::from(self.hotplug_memory.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices {
                got: devices,
                max: MAX_VIRTIO_DEVICES,
            });
        }
        if let Some(metadata) = &self.metadata {
            if self.nets.is_empty() {
                return Err(ConfigError::Metadata(
                    "instance metadata needs a network card to be served on".into(),
                ));
            }
            check_metadata(metadata)?;
        }
        if self.cmdline.len() >= crate::arch::x86_64::layout::CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        Ok(())
    }
}

/// The limits a metadata document must keep, at start and on `PUT
/// /metadata`.
pub fn check_metadata(metadata: &InstanceMetadata) -> Result<(), ConfigError> {
    let user_data = metadata.user_data.as_ref().map_or(0, Vec::len);
    if user_data > MAX_USER_DATA {
        return Err(ConfigError::Metadata(format!(
            "user data is {user_data} bytes, at most {MAX_USER_DATA}"
        )));
    }
    let hop_limit = metadata.options.hop_limit;
    if !(1..=64).contains(&hop_limit) {
        return Err(ConfigError::Metadata(format!(
            "hop limit must be 1 to 64, got {hop_limit}"
        )));
    }
    Ok(())
}

/// The host's physical memory in MiB, from /proc/meminfo.
pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo_total_mib(&text))
        .unwrap_or(u64::MAX >> 20)
}

fn parse_meminfo_total_mib(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        from_json(r#"{"kernel":"/k"}"#).expect("minimal config parses")
    }

    #[test]
    fn json_defaults_match_the_flags_and_pass_validation() {
        let c = config();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.cmdline, "console=ttyS0");
        assert_eq!(c.cpu_template, CpuTemplate::Auto);
        assert!(c.validate(1024).is_ok());
    }

    #[test]
    fn hotplug_memory_is_checked() {
        let with = |json: &str| {
            from_json(&format!(
                r#"{{"kernel":"/k","memory_mib":256,"hotplug_memory":{json}}}"#
            ))
            .expect("parses")
        };
        let ok = with(r#"{"total_size_mib":768}"#);
        assert_eq!(ok.hotplug_memory.map(|h| h.block_size_mib), Some(2));
        assert!(ok.validate(4096).is_ok());
        for (json, why) in [
            (r#"{"total_size_mib":0}"#, "total_size_mib"),
            (r#"{"total_size_mib":767}"#, "total_size_mib"),
            (
                r#"{"total_size_mib":768,"block_size_mib":3}"#,
                "power of two",
            ),
            (
                r#"{"total_size_mib":768,"block_size_mib":256}"#,
                "power of two",
            ),
            (
                r#"{"total_size_mib":768,"requested_size_mib":1024}"#,
                "requested_size_mib",
            ),
            (
                r#"{"total_size_mib":768,"requested_size_mib":3}"#,
                "requested_size_mib",
            ),
            (r#"{"total_size_mib":4096}"#, "more than the host"),
        ] {
            let err = with(json).validate(4096).expect_err(json);
            assert!(err.to_string().contains(why), "{json}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = from_json(r#"{"kernel":"/k","vcpu":2}"#).expect_err("misspelt field");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn metadata_needs_a_card_and_bounded_user_data_and_hop_limit() {
        let mut c = from_json(
            r#"{"kernel":"/k","nets":[{"tap":"tap0"}],
                "metadata":{"instance_id":"i-1","ami_id":"ami-1","instance_type":"t2.micro",
                "reservation_id":"r-1","account_id":"0","region":"us-east-1",
                "availability_zone":"us-east-1a","availability_zone_id":"use1-az1",
                "architecture":"x86_64","pending_time":"","local_hostname":"",
                "local_ipv4":"","mac":""}}"#,
        )
        .expect("config with metadata parses");
        assert!(c.validate(1024).is_ok());
        let metadata = c.metadata.as_mut().expect("metadata");
        metadata.user_data = Some(vec![b'x'; MAX_USER_DATA + 1]);
        let err = c.validate(1024).expect_err("16 KiB + 1");
        assert!(err.to_string().contains("user data"), "{err}");
        let metadata = c.metadata.as_mut().expect("metadata");
        metadata.user_data = None;
        metadata.options.hop_limit = 0;
        assert!(matches!(c.validate(1024), Err(ConfigError::Metadata(_))));
        c.metadata.as_mut().expect("metadata").options.hop_limit = 64;
        c.nets.clear();
        let err = c.validate(1024).expect_err("no card");
        assert!(err.to_string().contains("network card"), "{err}");
    }

    #[test]
    fn an_empty_kernel_path_is_refused() {
        let mut c = config();
        c.kernel = PathBuf::new();
        assert!(matches!(c.validate(1024), Err(ConfigError::NoKernel)));
    }

    #[test]
    fn zero_and_too_many_vcpus_are_refused() {
        let mut c = config();
        c.vcpus = 0;
        assert!(matches!(c.validate(1024), Err(ConfigError::VcpuCount(0))));
        c.vcpus = 65;
        assert!(matches!(c.validate(1024), Err(ConfigError::VcpuCount(65))));
    }

    #[test]
    fn memory_outside_limits_is_refused() {
        let mut c = config();
        c.memory_mib = 0;
        assert!(c.validate(1024).is_err());
        c.memory_mib = 2048;
        assert!(c.validate(1024).is_err());
        c.memory_mib = 1024;
        assert!(c.validate(1024).is_ok());
    }

    #[test]
    fn overlong_cmdline_is_refused() {
        let mut c = config();
        c.cmdline = "x".repeat(5000);
        assert!(matches!(
            c.validate(1024),
            Err(ConfigError::CmdlineTooLong(5000))
        ));
    }

    #[test]
    fn too_many_devices_are_refused() {
        let mut c = config();
        c.disks = (0..20)
            .map(|i| DiskConfig {
                path: format!("/d{i}").into(),
                read_only: false,
            })
            .collect();
        assert!(matches!(
            c.validate(1024),
            Err(ConfigError::TooManyDevices { got: 20, .. })
        ));
    }

    #[test]
    fn tap_names_linux_would_refuse_are_refused() {
        let mut c = config();
        for bad in ["", "a-name-that-is-too-long", "a/b", "a b"] {
            c.nets = vec![NetConfig {
                tap: bad.to_string(),
                mac: None,
            }];
            assert!(
                matches!(c.validate(1024), Err(ConfigError::Net(_))),
                "{bad:?}"
            );
        }
        c.nets = vec!["tap=tap0,mac=06:00:0a:00:00:05".parse().expect("parses")];
        assert!(c.validate(1024).is_ok());
    }

    #[test]
    fn vsock_cids_outside_the_guest_range_are_refused() {
        let mut c = config();
        for cid in [0, 2, u64::from(u32::MAX)] {
            c.vsock = Some(VsockConfig {
                cid,
                uds: "/x".into(),
            });
            assert!(
                matches!(c.validate(1024), Err(ConfigError::Vsock(_))),
                "cid {cid}"
            );
        }
        c.vsock = Some(VsockConfig {
            cid: 3,
            uds: "/x".into(),
        });
        assert!(c.validate(1024).is_ok());
    }

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal:       24589944 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_meminfo_total_mib(text), Some(24013));
        assert_eq!(parse_meminfo_total_mib("garbage"), None);
    }
}
