//! The VM's configuration: one plain struct, filled either from command-line
//! flags or from a JSON file (`--config`), validated once before anything is
//! built. The control plane writes the JSON form.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest vCPU count we accept; the MP table and MADT use 8-bit APIC ids.
pub const MAX_VCPUS: u8 = 64;
/// Virtio devices get IOAPIC lines 5..=23.
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// Smallest guest we accept: below this no Linux kernel boots.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Default stall watchdog period. On hosts that emulate the guest kernel a
/// healthy boot prints a line at least every minute or so (the longest quiet
/// stretch measured was decompressing Debian's bzImage); five minutes of
/// kernel code with no exit and no output is a hang on any host.
pub const DEFAULT_STALL_TIMEOUT_SECS: u64 = 300;

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

/// How the VMM adapts the guest to the host's KVM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CpuTemplate {
    /// Detect the host and apply workarounds only where needed.
    #[default]
    Auto,
    /// Never apply host workarounds (the right choice on bare-metal KVM).
    None,
    /// Always apply the workarounds for KVM hosts that emulate guest kernel mode.
    EmulatedKernel,
}

/// A complete VM description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd / initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line as given by the user (the VMM may append to it).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u64,
    /// Guest memory in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Control API socket path.
    #[serde(default)]
    pub api_sock: Option<PathBuf>,
    /// Where the serial console goes; stdout when absent.
    #[serde(default)]
    pub serial_out: Option<PathBuf>,
    /// Host adaptation.
    #[serde(default)]
    pub cpu_template: CpuTemplate,
    /// Withhold the TSC frequency CPUID leaves, as an AMD host does.
    #[serde(default)]
    pub hide_tsc_leaves: bool,
    /// Stall watchdog period in seconds (0: off).
    #[serde(default = "default_stall_timeout_secs")]
    pub stall_timeout_secs: u64,
    /// Block devices, in order: the first is /dev/vda.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Network cards, in order: the first is eth0.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// Whether the guest gets a virtio-rng entropy device.
    #[serde(default)]
    pub rng: bool,
    /// The guest's vsock device, if any.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
}

/// Longest interface name Linux accepts (IFNAMSIZ minus the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// A MAC address, written `06:00:0a:00:00:05` in flags and JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("invalid MAC address {s:?} (expected six hex bytes like 06:00:0a:00:00:05)");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac[0] & 1 != 0 {
            return Err(format!("MAC address {s} is a multicast address"));
        }
        Ok(Self(mac))
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Splits `key=value,key=value` option lists (the command-line form of
/// devices), refusing keys outside `allowed` and repeated keys.
fn parse_options<'a>(
    s: &'a str,
    allowed: &[&str],
) -> Result<std::collections::HashMap<&'a str, &'a str>, String> {
    let mut options = std::collections::HashMap::new();
    for item in s.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {item:?}"))?;
        if !allowed.contains(&key) {
            return Err(format!(
                "unknown option {key:?} (expected {})",
                allowed.join(", ")
            ));
        }
        if options.insert(key, value).is_some() {
            return Err(format!("option {key:?} given twice"));
        }
    }
    Ok(options)
}

/// A virtio-net device backed by a tap interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of an existing tap interface (created by whoever owns the
    /// network, e.g. the control plane, in the VMM's network namespace).
    pub tap: String,
    /// The guest's MAC address; a random locally administered one if absent.
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

impl std::str::FromStr for NetConfig {
    type Err = String;

    /// `tap=NAME[,mac=MAC]` (the command-line form).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let options = parse_options(s, &["tap", "mac"])?;
        let tap = options.get("tap").ok_or("missing tap=NAME")?.to_string();
        let mac = options.get("mac").map(|m| m.parse()).transpose()?;
        Ok(Self { tap, mac })
    }
}

/// The vsock device: the guest's context id and the Unix socket its host
/// side listens on (Firecracker's convention: a host process connects and
/// writes `CONNECT <port>`; guest-initiated connections to port P go to
/// `<uds>_<P>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Guest context id (3 or more; 0-2 are reserved).
    pub cid: u64,
    /// Host-side listening socket.
    pub uds: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = String;

    /// `cid=N,uds=PATH` (the command-line form).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let options = parse_options(s, &["cid", "uds"])?;
        let cid = options.get("cid").ok_or("missing cid=N")?;
        let cid = cid
            .parse()
            .map_err(|_| format!("invalid cid {cid:?} (expected a number)"))?;
        let uds = PathBuf::from(options.get("uds").ok_or("missing uds=PATH")?);
        Ok(Self { cid, uds })
    }
}

/// A virtio-blk device backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = String;

    /// `PATH` or `PATH,ro` (the command-line form).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            Some((_, opt)) => {
                return Err(format!("unknown disk option {opt:?} (expected ro or rw)"))
            }
            None => (s, false),
        };
        if path.is_empty() {
            return Err("empty disk path".to_string());
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

fn default_cmdline() -> String {
    "console=ttyS0".to_string()
}

fn default_stall_timeout_secs() -> u64 {
    DEFAULT_STALL_TIMEOUT_SECS
}

fn default_vcpus() -> u64 {
    1
}

fn default_memory_mib() -> u64 {
    128
}

impl VmConfig {
    /// Reads a JSON config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses the JSON form.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Checks every field against hard limits; `host_mem_mib` is the host's
    /// physical memory (a guest larger than the host is refused up front
    /// rather than failing later with an obscure mmap or OOM error).
    pub fn validate(&self, host_mem_mib: u64) -> Result<(), ConfigError> {
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
        let devices = self.disks.len()
            + self.nets.len()
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices {
                got: devices,
                max: MAX_VIRTIO_DEVICES,
            });
        }
        if self.cmdline.len() >= crate::arch::x86_64::layout::CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        Ok(())
    }

    /// Guest memory size in bytes (valid after [`VmConfig::validate`]).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
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
        VmConfig::from_json(r#"{"kernel":"/k"}"#).expect("minimal config parses")
    }

    #[test]
    fn json_defaults_match_the_flags() {
        let c = config();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.cmdline, "console=ttyS0");
        assert_eq!(c.cpu_template, CpuTemplate::Auto);
        assert!(c.validate(1024).is_ok());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = VmConfig::from_json(r#"{"kernel":"/k","vcpu":2}"#).expect_err("misspelt field");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn template_names_are_kebab_case() {
        let c = VmConfig::from_json(r#"{"kernel":"/k","cpu_template":"emulated-kernel"}"#)
            .expect("parses");
        assert_eq!(c.cpu_template, CpuTemplate::EmulatedKernel);
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
    fn disk_flags_parse() {
        let d: DiskConfig = "/img/root.ext4".parse().expect("plain");
        assert_eq!(
            (d.path.to_str(), d.read_only),
            (Some("/img/root.ext4"), false)
        );
        let d: DiskConfig = "data.img,ro".parse().expect("ro");
        assert!(d.read_only);
        assert!("data.img,rx".parse::<DiskConfig>().is_err());
        assert!(",ro".parse::<DiskConfig>().is_err());
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
    fn net_flags_parse_and_validate() {
        let n: NetConfig = "tap=tap0,mac=06:00:0a:00:00:05".parse().expect("parses");
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, Some(MacAddr([6, 0, 0x0a, 0, 0, 5])));
        assert_eq!(
            n.mac.map(|m| m.to_string()).as_deref(),
            Some("06:00:0a:00:00:05")
        );
        let n: NetConfig = "tap=t".parse().expect("no mac");
        assert_eq!(n.mac, None);
        for bad in [
            "",
            "mac=06:00:0a:00:00:05",
            "tap=a,tap=b",
            "tap=a,speed=10",
            "tap=a,mac=06:00:0a:00:00",
            "tap=a,mac=01:00:00:00:00:00",
            "tap=a,mac=zz:00:00:00:00:00",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad:?} accepted");
        }
        let mut c = config();
        c.nets = vec!["tap=a-name-that-is-too-long".parse().expect("parses")];
        assert!(matches!(c.validate(1024), Err(ConfigError::Net(_))));
        let c = VmConfig::from_json(
            r#"{"kernel":"/k","nets":[{"tap":"tap0","mac":"06:00:00:00:00:01"}]}"#,
        )
        .expect("json form");
        assert_eq!(c.nets[0].mac, Some(MacAddr([6, 0, 0, 0, 0, 1])));
        assert!(VmConfig::from_json(r#"{"kernel":"/k","nets":[{"tap":"t","mac":"x"}]}"#).is_err());
    }

    #[test]
    fn vsock_flags_parse_and_validate() {
        let v: VsockConfig = "cid=3,uds=/run/vm1.vsock".parse().expect("parses");
        assert_eq!((v.cid, v.uds.to_str()), (3, Some("/run/vm1.vsock")));
        for bad in ["cid=3", "uds=/x", "cid=x,uds=/x", "cid=3,uds=/x,port=1"] {
            assert!(bad.parse::<VsockConfig>().is_err(), "{bad:?} accepted");
        }
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
