//! The command-line forms of the config's devices and template
//! (`--disk PATH,ro`, `--net tap=NAME,mac=MAC`, `--vsock cid=N,uds=PATH`,
//! `--cpu-template NAME`): `FromStr` on the same types the JSON form fills,
//! so a flag and a JSON field cannot mean different things. Also the names
//! of the two flags a supervisor passes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;

use crate::config::{
    BzImageDecompression, CpuTemplate, DiskConfig, HotplugMemoryConfig, MacAddrError, NetConfig,
    VsockConfig, DEFAULT_HOTPLUG_BLOCK_SIZE_MIB,
};

/// `--config FILE`: boot from a JSON [`crate::config::VmConfig`] (the
/// name as clap's `long` takes it, without the dashes).
pub const CONFIG: &str = "config";
/// `--exit-file FILE`: where the VMM writes its
/// [`crate::exit::ExitRecord`] when it ends.
pub const EXIT_FILE: &str = "exit-file";
/// `--restore-from DIR`: start from the snapshot in DIR (written by
/// `PUT /snapshot/create`) instead of booting the kernel; the VM config
/// must describe the same machine.
pub const RESTORE_FROM: &str = "restore-from";

/// A device or template flag that did not parse; the message names the
/// offending text, since it ends up as the VMM's one error line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// An item of a `key=value,...` list has no `=`.
    #[error("expected key=value, got {0:?}")]
    NotKeyValue(String),
    /// A key the device does not know.
    #[error("unknown option {key:?} (expected {expected})")]
    UnknownOption {
        /// The key given.
        key: String,
        /// The keys the device takes, comma-separated.
        expected: String,
    },
    /// A key given twice, which would leave one of them silently ignored.
    #[error("option {0:?} given twice")]
    Repeated(String),
    /// A required key is absent; the text says which (`tap=NAME`).
    #[error("missing {0}")]
    Missing(&'static str),
    /// A vsock context id that is not a number.
    #[error("invalid cid {0:?} (expected a number)")]
    Cid(String),
    /// A disk option other than `ro` or `rw`.
    #[error("unknown disk option {0:?} (expected ro or rw)")]
    DiskOption(String),
    /// `--disk ""` or `--disk ,ro`.
    #[error("empty disk path")]
    EmptyDiskPath,
    /// A template name that is not one of [`CpuTemplate::ALL`].
    #[error("unknown cpu template {0:?} (expected auto, none or emulated-kernel)")]
    CpuTemplate(String),
    /// A choice that is not one of [`BzImageDecompression::ALL`].
    #[error("unknown bzImage decompression {0:?} (expected auto, guest or vmm)")]
    BzImageDecompression(String),
    /// A size in `--hotplug-memory` that is not a number of MiB.
    #[error("invalid size {0:?} (expected a number of MiB)")]
    Size(String),
    /// A MAC address in `mac=`.
    #[error(transparent)]
    Mac(#[from] MacAddrError),
}

/// Splits `key=value,key=value` option lists, refusing keys outside
/// `allowed` and repeated keys.
fn parse_options<'a>(s: &'a str, allowed: &[&str]) -> Result<HashMap<&'a str, &'a str>, FlagError> {
    let mut options = HashMap::new();
    for item in s.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| FlagError::NotKeyValue(item.to_string()))?;
        if !allowed.contains(&key) {
            return Err(FlagError::UnknownOption {
                key: key.to_string(),
                expected: allowed.join(", "),
            });
        }
        if options.insert(key, value).is_some() {
            return Err(FlagError::Repeated(key.to_string()));
        }
    }
    Ok(options)
}

impl FromStr for NetConfig {
    type Err = FlagError;

    /// `tap=NAME[,mac=MAC]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let options = parse_options(s, &["tap", "mac"])?;
        let tap = options
            .get("tap")
            .ok_or(FlagError::Missing("tap=NAME"))?
            .to_string();
        let mac = options.get("mac").map(|m| m.parse()).transpose()?;
        Ok(Self { tap, mac })
    }
}

impl FromStr for VsockConfig {
    type Err = FlagError;

    /// `cid=N,uds=PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let options = parse_options(s, &["cid", "uds"])?;
        let cid = options.get("cid").ok_or(FlagError::Missing("cid=N"))?;
        let cid = cid.parse().map_err(|_| FlagError::Cid(cid.to_string()))?;
        let uds = PathBuf::from(options.get("uds").ok_or(FlagError::Missing("uds=PATH"))?);
        Ok(Self { cid, uds })
    }
}

impl FromStr for HotplugMemoryConfig {
    type Err = FlagError;

    /// `total=MIB[,block=MIB][,requested=MIB]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let options = parse_options(s, &["total", "block", "requested"])?;
        let mib = |key: &str, default: Option<u64>| -> Result<u64, FlagError> {
            match (options.get(key), default) {
                (Some(v), _) => v.parse().map_err(|_| FlagError::Size(v.to_string())),
                (None, Some(d)) => Ok(d),
                (None, None) => Err(FlagError::Missing("total=MIB")),
            }
        };
        Ok(Self {
            total_size_mib: mib("total", None)?,
            block_size_mib: mib("block", Some(DEFAULT_HOTPLUG_BLOCK_SIZE_MIB))?,
            requested_size_mib: mib("requested", Some(0))?,
        })
    }
}

impl FromStr for DiskConfig {
    type Err = FlagError;

    /// `PATH` or `PATH,ro` (or `PATH,rw`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            Some((_, opt)) => return Err(FlagError::DiskOption(opt.to_string())),
            None => (s, false),
        };
        if path.is_empty() {
            return Err(FlagError::EmptyDiskPath);
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

impl FromStr for CpuTemplate {
    type Err = FlagError;

    /// The JSON name: `auto`, `none` or `emulated-kernel`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| FlagError::CpuTemplate(s.to_string()))
    }
}

impl FromStr for BzImageDecompression {
    type Err = FlagError;

    /// The JSON name: `auto`, `guest` or `vmm`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| FlagError::BzImageDecompression(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MacAddr;

    #[test]
    fn disk_flags_parse() {
        let d: DiskConfig = "/img/root.ext4".parse().expect("plain");
        assert_eq!(
            (d.path.to_str(), d.read_only),
            (Some("/img/root.ext4"), false)
        );
        let d: DiskConfig = "data.img,ro".parse().expect("ro");
        assert!(d.read_only);
        let d: DiskConfig = "a,b.img,rw".parse().expect("comma in the path");
        assert_eq!((d.path.to_str(), d.read_only), (Some("a,b.img"), false));
        assert_eq!(
            "data.img,rx".parse::<DiskConfig>(),
            Err(FlagError::DiskOption("rx".to_string()))
        );
        assert_eq!(",ro".parse::<DiskConfig>(), Err(FlagError::EmptyDiskPath));
    }

    #[test]
    fn hotplug_memory_flags_parse() {
        let h: HotplugMemoryConfig = "total=768".parse().expect("total only");
        assert_eq!(
            (h.total_size_mib, h.block_size_mib, h.requested_size_mib),
            (768, 2, 0)
        );
        let h: HotplugMemoryConfig = "total=1024,block=128,requested=512".parse().expect("all");
        assert_eq!(
            (h.total_size_mib, h.block_size_mib, h.requested_size_mib),
            (1024, 128, 512)
        );
        assert_eq!(
            "block=2".parse::<HotplugMemoryConfig>(),
            Err(FlagError::Missing("total=MIB"))
        );
        assert_eq!(
            "total=1G".parse::<HotplugMemoryConfig>(),
            Err(FlagError::Size("1G".to_string()))
        );
    }

    #[test]
    fn net_flags_parse() {
        let n: NetConfig = "tap=tap0,mac=06:00:0a:00:00:05".parse().expect("parses");
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, Some(MacAddr([6, 0, 0x0a, 0, 0, 5])));
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
    }

    #[test]
    fn vsock_flags_parse() {
        let v: VsockConfig = "cid=3,uds=/run/vm1.vsock".parse().expect("parses");
        assert_eq!((v.cid, v.uds.to_str()), (3, Some("/run/vm1.vsock")));
        for bad in ["cid=3", "uds=/x", "cid=x,uds=/x", "cid=3,uds=/x,port=1"] {
            assert!(bad.parse::<VsockConfig>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn flag_errors_name_what_was_wrong() {
        let cases: [(&str, Result<NetConfig, FlagError>); 4] = [
            ("tap0", Err(FlagError::NotKeyValue("tap0".to_string()))),
            ("mac=06:00:0a:00:00:05", Err(FlagError::Missing("tap=NAME"))),
            ("tap=a,tap=b", Err(FlagError::Repeated("tap".to_string()))),
            (
                "tap=a,speed=10",
                Err(FlagError::UnknownOption {
                    key: "speed".to_string(),
                    expected: "tap, mac".to_string(),
                }),
            ),
        ];
        for (flag, want) in cases {
            assert_eq!(flag.parse::<NetConfig>(), want, "{flag}");
        }
        assert_eq!(
            "tap=a,speed=10"
                .parse::<NetConfig>()
                .map_err(|e| e.to_string()),
            Err(r#"unknown option "speed" (expected tap, mac)"#.to_string())
        );
        assert_eq!(
            "cid=x,uds=/x"
                .parse::<VsockConfig>()
                .map_err(|e| e.to_string()),
            Err(r#"invalid cid "x" (expected a number)"#.to_string())
        );
    }

    #[test]
    fn cpu_template_flags_are_the_json_names() {
        for template in CpuTemplate::ALL {
            assert_eq!(template.name().parse::<CpuTemplate>(), Ok(template));
        }
        assert_eq!(
            "turbo".parse::<CpuTemplate>(),
            Err(FlagError::CpuTemplate("turbo".to_string()))
        );
    }

    #[test]
    fn bzimage_decompression_flags_are_the_json_names() {
        for choice in BzImageDecompression::ALL {
            assert_eq!(choice.name().parse::<BzImageDecompression>(), Ok(choice));
            let json = serde_json::to_string(&choice).expect("serialises");
            assert_eq!(json, format!("\"{}\"", choice.name()));
        }
        assert_eq!(
            "host".parse::<BzImageDecompression>(),
            Err(FlagError::BzImageDecompression("host".to_string()))
        );
    }
}
