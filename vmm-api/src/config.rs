//! The VM config: what `ec2lab-vmm --config FILE` reads and `GET /vm`
//! echoes under `config`. The command-line flags fill the same struct (see
//! [`crate::flags`]), so every field has one name everywhere.
//!
//! Unknown fields are refused, so a misspelt field fails the boot instead
//! of being silently ignored; absent fields take the same defaults as the
//! flags. The limits the VMM enforces on top (vCPU count, memory against
//! the host, command-line length) live in the VMM, which knows the host
//! and the architecture.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default stall watchdog period. On hosts that emulate the guest kernel a
/// healthy boot prints a line at least every minute or so (the longest quiet
/// stretch measured was decompressing Debian's bzImage); five minutes of
/// kernel code with no exit and no output is a hang on any host.
pub const DEFAULT_STALL_TIMEOUT_SECS: u64 = 300;
/// Default kernel command line: the serial console is how anyone sees a
/// guest that has no network yet.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// Default vCPU count.
pub const DEFAULT_VCPUS: u64 = 1;
/// Default guest memory in MiB: enough for a small kernel and initramfs.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// How the VMM adapts the guest to the host's KVM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl CpuTemplate {
    /// Every template, in the order `--help` lists them.
    pub const ALL: [CpuTemplate; 3] = [Self::Auto, Self::None, Self::EmulatedKernel];

    /// The name in JSON and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::None => "none",
            Self::EmulatedKernel => "emulated-kernel",
        }
    }
}

impl std::fmt::Display for CpuTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who decompresses a bzImage's kernel before it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BzImageDecompression {
    /// The VMM on hosts that emulate guest kernel mode, where the kernel's
    /// own decompressor takes minutes; the guest everywhere else, which
    /// keeps the kernel's address randomisation (KASLR).
    #[default]
    Auto,
    /// The kernel's own decompressor, through the 64-bit entry point, as
    /// a boot loader on real hardware runs it.
    Guest,
    /// The VMM, which then loads the ELF vmlinux inside (PVH entry when it
    /// has the note); the kernel runs at its link address.
    Vmm,
}

impl BzImageDecompression {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [BzImageDecompression; 3] = [Self::Auto, Self::Guest, Self::Vmm];

    /// The name in JSON and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Guest => "guest",
            Self::Vmm => "vmm",
        }
    }
}

impl std::fmt::Display for BzImageDecompression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
    /// Who decompresses a bzImage (ignored for an ELF vmlinux).
    #[serde(default)]
    pub bzimage_decompression: BzImageDecompression,
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
    /// Memory the guest can be given while it runs (a virtio-mem device),
    /// beyond the `memory_mib` it boots with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_memory: Option<HotplugMemoryConfig>,
    /// The instance metadata served at 169.254.169.254 on the first
    /// network card, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<crate::metadata::InstanceMetadata>,
    /// Where `PUT /snapshot/create` writes the snapshot (`state` and
    /// `memory`). An existing directory, opened when the VMM starts: the
    /// API itself never takes a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_dir: Option<PathBuf>,
    /// Confine the VMM to this directory once the VM is built: a mount
    /// namespace of its own whose root is the directory, so that no other
    /// host path is in its reach. The API and vsock sockets must be inside
    /// it. Needs CAP_SYS_ADMIN (root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<PathBuf>,
}

impl VmConfig {
    /// A config booting `kernel` with every other field at the default a
    /// JSON file that names only the kernel gets: the base a caller
    /// overrides with struct update syntax.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            api_sock: None,
            serial_out: None,
            cpu_template: CpuTemplate::default(),
            hide_tsc_leaves: false,
            bzimage_decompression: BzImageDecompression::default(),
            stall_timeout_secs: DEFAULT_STALL_TIMEOUT_SECS,
            disks: Vec::new(),
            nets: Vec::new(),
            rng: false,
            vsock: None,
            hotplug_memory: None,
            metadata: None,
            snapshot_dir: None,
            jail: None,
        }
    }

    /// Guest memory size in bytes (meaningful once the VMM has checked
    /// `memory_mib` against its limits).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

fn default_stall_timeout_secs() -> u64 {
    DEFAULT_STALL_TIMEOUT_SECS
}

fn default_vcpus() -> u64 {
    DEFAULT_VCPUS
}

fn default_memory_mib() -> u64 {
    DEFAULT_MEMORY_MIB
}

/// Hotpluggable memory: a virtio-mem device whose region lies above the
/// boot memory. The guest sees none of it until its size is requested
/// (here or with `PATCH /hotplug/memory`), and then plugs it in blocks.
///
/// On hosts that emulate the guest kernel, a kernel spends ~21 s per GiB
/// initialising memory at boot, so ec2lab boots an instance with part of
/// its memory and requests the rest once the guest is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotplugMemoryConfig {
    /// The region's size: the most the guest can be given, in MiB.
    pub total_size_mib: u64,
    /// The unit the guest plugs, in MiB (a power of two).
    #[serde(default = "default_hotplug_block_size_mib")]
    pub block_size_mib: u64,
    /// What the guest is asked to plug from the start, in MiB.
    #[serde(default)]
    pub requested_size_mib: u64,
}

/// The default block: 2 MiB, a huge page, as QEMU and Cloud Hypervisor use.
pub const DEFAULT_HOTPLUG_BLOCK_SIZE_MIB: u64 = 2;

fn default_hotplug_block_size_mib() -> u64 {
    DEFAULT_HOTPLUG_BLOCK_SIZE_MIB
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

/// A MAC address that is not a multicast one did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MacAddrError {
    /// Not six two-digit hex bytes separated by colons.
    #[error("invalid MAC address {0:?} (expected six hex bytes like 06:00:0a:00:00:05)")]
    Syntax(String),
    /// The group bit is set: a card cannot own a multicast address.
    #[error("MAC address {0} is a multicast address")]
    Multicast(String),
}

/// A unicast MAC address, written `06:00:0a:00:00:05` in flags and JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = MacAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MacAddrError::Syntax(s.to_string());
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
            return Err(MacAddrError::Multicast(s.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> VmConfig {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    /// What the control plane's supervisor wrote before this crate existed
    /// (`serde_json::json!`, so keys sorted), for an instance with a vsock
    /// device and a network card.
    const CONTROL_PLANE_CONFIG: &str = r#"{
  "api_sock": "/i/api.sock",
  "cmdline": "console=ttyS0 root=/dev/vda rw",
  "disks": [
    {
      "path": "/i/root.img",
      "read_only": false
    }
  ],
  "initrd": null,
  "kernel": "/images/vmlinux",
  "memory_mib": 512,
  "nets": [
    {
      "mac": "06:00:0a:00:00:05",
      "tap": "tap0"
    }
  ],
  "rng": true,
  "serial_out": "/i/console.log",
  "stall_timeout_secs": 120,
  "vcpus": 2,
  "vsock": {
    "cid": 3,
    "uds": "/i/vsock.sock"
  }
}"#;

    fn control_plane_config() -> VmConfig {
        VmConfig {
            cmdline: "console=ttyS0 root=/dev/vda rw".to_string(),
            vcpus: 2,
            memory_mib: 512,
            api_sock: Some("/i/api.sock".into()),
            serial_out: Some("/i/console.log".into()),
            stall_timeout_secs: 120,
            disks: vec![DiskConfig {
                path: "/i/root.img".into(),
                read_only: false,
            }],
            nets: vec![NetConfig {
                tap: "tap0".to_string(),
                mac: Some(MacAddr([6, 0, 0x0a, 0, 0, 5])),
            }],
            rng: true,
            vsock: Some(VsockConfig {
                cid: 3,
                uds: "/i/vsock.sock".into(),
            }),
            ..VmConfig::new("/images/vmlinux".into())
        }
    }

    #[test]
    fn the_control_planes_former_json_parses_to_the_typed_config() {
        assert_eq!(parse(CONTROL_PLANE_CONFIG), control_plane_config());
    }

    #[test]
    fn a_config_serialises_every_field_in_declaration_order() {
        // `GET /vm` shows this form under `config`, and it reads back as is.
        let json = serde_json::to_string(&control_plane_config()).expect("serialises");
        assert_eq!(
            json,
            r#"{"kernel":"/images/vmlinux","initrd":null,"cmdline":"console=ttyS0 root=/dev/vda rw","vcpus":2,"memory_mib":512,"api_sock":"/i/api.sock","serial_out":"/i/console.log","cpu_template":"auto","hide_tsc_leaves":false,"bzimage_decompression":"auto","stall_timeout_secs":120,"disks":[{"path":"/i/root.img","read_only":false}],"nets":[{"tap":"tap0","mac":"06:00:0a:00:00:05"}],"rng":true,"vsock":{"cid":3,"uds":"/i/vsock.sock"}}"#
        );
        assert_eq!(parse(&json), control_plane_config());
    }

    #[test]
    fn new_gives_the_defaults_of_a_config_naming_only_the_kernel() {
        assert_eq!(parse(r#"{"kernel":"/k"}"#), VmConfig::new("/k".into()));
        let c = VmConfig::new("/k".into());
        assert_eq!(
            (
                c.vcpus,
                c.memory_mib,
                c.cmdline.as_str(),
                c.stall_timeout_secs
            ),
            (1, 128, "console=ttyS0", 300)
        );
        assert_eq!(c.cpu_template, CpuTemplate::Auto);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","vcpu":2}"#)
            .expect_err("misspelt field");
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(serde_json::from_str::<VmConfig>(
            r#"{"kernel":"/k","nets":[{"tap":"t","speed":1}]}"#
        )
        .is_err());
    }

    #[test]
    fn template_names_are_kebab_case_in_json_and_display() {
        for template in CpuTemplate::ALL {
            let json = serde_json::to_string(&template).expect("serialises");
            assert_eq!(json, format!("\"{template}\""));
            assert_eq!(template.name(), template.to_string());
        }
        let c = parse(r#"{"kernel":"/k","cpu_template":"emulated-kernel"}"#);
        assert_eq!(c.cpu_template, CpuTemplate::EmulatedKernel);
    }

    #[test]
    fn macs_are_six_lowercase_hex_bytes_and_never_multicast() {
        let mac: MacAddr = "06:00:0A:00:00:05".parse().expect("parses");
        assert_eq!(mac, MacAddr([6, 0, 0x0a, 0, 0, 5]));
        assert_eq!(
            serde_json::to_string(&mac).expect("serialises"),
            r#""06:00:0a:00:00:05""#
        );
        for bad in [
            "",
            "06:00:0a:00:00",
            "06:00:0a:00:00:05:07",
            "zz:00:00:00:00:00",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>(),
                Err(MacAddrError::Syntax(bad.to_string()))
            );
        }
        assert!(matches!(
            "01:00:00:00:00:00".parse::<MacAddr>(),
            Err(MacAddrError::Multicast(_))
        ));
        let err = serde_json::from_str::<NetConfig>(r#"{"tap":"t","mac":"x"}"#)
            .expect_err("bad mac in JSON");
        assert!(err.to_string().contains("invalid MAC address"), "{err}");
    }

    #[test]
    fn an_absent_or_null_mac_means_a_random_one() {
        let net: NetConfig = serde_json::from_str(r#"{"tap":"t"}"#).expect("parses");
        assert_eq!(net.mac, None);
        let net: NetConfig = serde_json::from_str(r#"{"tap":"t","mac":null}"#).expect("parses");
        assert_eq!(net.mac, None);
    }
}
