//! DHCP and DNS for a VPC: one dnsmasq inside the VPC's namespace,
//! listening on each subnet's DNS address (base+2), its configuration
//! rendered from the database by [`render`].
//!
//! dnsmasq daemonizes and outlives the control plane like the VMMs do; it
//! is found again by the pid file it writes, checked against its command
//! line so a reused pid is never signalled. Its configuration is one file
//! read at start: a change (an instance launched or gone) restarts it,
//! which costs a few milliseconds and no state, since every lease is a
//! static `dhcp-host` and `dhcp-authoritative` lets it answer renewals of
//! leases it did not hand out itself. (Reloading with SIGHUP would need
//! the files readable by the unprivileged user dnsmasq drops to.)

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::netns::{self, NetnsError};

/// Errors of the DHCP/DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// A file of the server (config, pid file).
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The namespace it runs in.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// dnsmasq could not be started, or refused its configuration.
    #[error("dnsmasq ({binary}) for {vpc}: {detail}")]
    Start {
        /// The binary.
        binary: PathBuf,
        /// The VPC.
        vpc: String,
        /// What went wrong (its stderr).
        detail: String,
    },
    /// A value that cannot go into the configuration as it is.
    #[error("refusing to render {what} {value:?} into a dnsmasq configuration")]
    Unsafe {
        /// Which field.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// One subnet as DHCP serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpSubnet {
    /// The subnet's bridge (where dnsmasq listens).
    pub bridge: String,
    /// Network address.
    pub base: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// The VPC router (base+1), the default route.
    pub router: Ipv4Addr,
    /// The Amazon-provided DNS (base+2): dnsmasq's own address.
    pub dns: Ipv4Addr,
}

/// One interface's lease: MAC, address and host name, fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpHost {
    /// `02:…` as stored.
    pub mac: String,
    /// Its private address.
    pub ip: Ipv4Addr,
    /// The private DNS name, `ip-A-B-C-D.ec2.internal`.
    pub fqdn: String,
    /// The public DNS name while it has a public address: inside the VPC
    /// it resolves to the private address, as in EC2.
    pub public_fqdn: Option<String>,
}

/// The files of one VPC's server, under its state directory.
#[derive(Clone, Debug)]
pub struct DnsmasqFiles {
    /// The directory.
    pub dir: PathBuf,
}

impl DnsmasqFiles {
    /// The rendered configuration.
    pub fn config(&self) -> PathBuf {
        self.dir.join("dnsmasq.conf")
    }
    /// The pid dnsmasq writes.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }
    /// Its log (queries and DHCP exchanges).
    pub fn log(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }
}

fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn checked<'a>(
    what: &'static str,
    value: &'a str,
    ok: fn(&str) -> bool,
) -> Result<&'a str, DhcpError> {
    if ok(value) {
        Ok(value)
    } else {
        Err(DhcpError::Unsafe {
            what,
            value: value.to_string(),
        })
    }
}

fn checked_path<'a>(what: &'static str, path: &'a Path) -> Result<&'a str, DhcpError> {
    let unsafe_path = || DhcpError::Unsafe {
        what,
        value: path.display().to_string(),
    };
    let text = path.to_str().ok_or_else(unsafe_path)?;
    if text.contains(['\n', '\r', '\0']) {
        return Err(unsafe_path());
    }
    Ok(text)
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// The configuration of a VPC's dnsmasq: DHCP only for the listed MACs
/// (static leases, nothing from a pool), each subnet's router and DNS,
/// and the private DNS names. Nothing from the host is read (`no-hosts`,
/// `no-resolv`). Other names go to `forward` (the daemon's relay to the
/// host's resolver, [`super::dns_forward`]) when given, except what EC2's
/// resolver keeps to itself too: names in the VPC's domain, names without
/// a dot, and reverse lookups of private addresses. Without `forward`
/// only the VPC's names resolve. Every value is checked, so nothing
/// stored can add a line of its own.
pub fn render(
    files: &DnsmasqFiles,
    domain: &str,
    subnets: &[DhcpSubnet],
    hosts: &[DhcpHost],
    forward: Option<std::net::SocketAddrV4>,
) -> Result<String, DhcpError> {
    let mut out =
        String::from("# Rendered by ec2lab from its database; changes are overwritten.\n");
    let (pid_file, log_file) = (files.pid_file(), files.log());
    let pid = checked_path("pid file", &pid_file)?;
    let log = checked_path("log file", &log_file)?;
    let domain = checked("domain", domain, is_name)?;
    // `user=` stays dnsmasq's default: it drops root after binding.
    let _ = write!(
        out,
        "pid-file={pid}\nlog-facility={log}\nlog-dhcp\nno-hosts\nno-resolv\nno-poll\n\
         bind-interfaces\nexcept-interface=lo\nleasefile-ro\ndhcp-authoritative\n\
         domain={domain}\nlocal=/{domain}/\ndhcp-option=option:domain-name,{domain}\n"
    );
    if let Some(relay) = forward {
        let _ = write!(
            out,
            "server={}#{}\ndomain-needed\nbogus-priv\n",
            relay.ip(),
            relay.port()
        );
    }
    for (n, s) in subnets.iter().enumerate() {
        let bridge = checked("bridge", &s.bridge, is_name)?;
        let _ = write!(
            out,
            "interface={bridge}\nlisten-address={dns}\n\
             dhcp-range=set:s{n},{base},static,{mask},1h\n\
             dhcp-option=tag:s{n},option:router,{router}\n\
             dhcp-option=tag:s{n},option:dns-server,{dns}\n",
            dns = s.dns,
            base = s.base,
            mask = netmask(s.prefix),
            router = s.router,
        );
    }
    for h in hosts {
        let mac = checked("MAC address", &h.mac, is_mac)?;
        let fqdn = checked("host name", &h.fqdn, is_name)?;
        let short = fqdn.split('.').next().unwrap_or(fqdn);
        let _ = write!(
            out,
            "dhcp-host={mac},{ip},{short}\nhost-record={fqdn},{short},{ip}\n",
            ip = h.ip
        );
        if let Some(public) = &h.public_fqdn {
            let public = checked("public host name", public, is_name)?;
            let _ = writeln!(out, "host-record={public},{}", h.ip);
        }
    }
    Ok(out)
}

/// Runs dnsmasq servers.
#[derive(Clone, Debug)]
pub struct Dnsmasq {
    /// The binary (found on PATH when not a path).
    pub binary: PathBuf,
}

impl Dnsmasq {
    /// The live server whose pid file is in `files`, if it is still the
    /// dnsmasq started on that configuration.
    pub fn running(&self, files: &DnsmasqFiles) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(files.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let config = files.config();
        let wanted = format!("--conf-file={}", config.display());
        cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == wanted.as_bytes())
            .then_some(pid)
    }

    /// Makes the server of `files` run `config` inside namespace `ns`:
    /// started when missing, restarted when its configuration changed,
    /// left alone otherwise.
    pub fn ensure(
        &self,
        vpc: &str,
        ns: &str,
        files: &DnsmasqFiles,
        config: &str,
    ) -> Result<(), DhcpError> {
        let path = files.config();
        let io = |what, source| DhcpError::Io {
            what,
            path: path.clone(),
            source,
        };
        let current = std::fs::read_to_string(&path).ok();
        let running = self.running(files);
        if running.is_some() && current.as_deref() == Some(config) {
            return Ok(());
        }
        std::fs::create_dir_all(&files.dir).map_err(|e| io("create", e))?;
        std::fs::write(&path, config).map_err(|e| io("write", e))?;
        self.stop(files);
        self.start(vpc, ns, files)
    }

    fn start(&self, vpc: &str, ns: &str, files: &DnsmasqFiles) -> Result<(), DhcpError> {
        let namespace = netns::open(ns)?;
        let fail = |detail: String| DhcpError::Start {
            binary: self.binary.clone(),
            vpc: vpc.to_string(),
            detail,
        };
        let mut command = std::process::Command::new(&self.binary);
        command
            .arg(format!("--conf-file={}", files.config().display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        super::netns::exec_in(&mut command, Some(&namespace), true);
        // dnsmasq forks its daemon once it has bound its sockets; the
        // parent's exit status says whether the configuration was taken.
        let out = command.output().map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            return Err(fail(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.running(files).is_none() {
            if Instant::now() > deadline {
                return Err(fail("started but wrote no pid file".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops the server of `files`, if one runs (by its verified pid).
    pub fn stop(&self, files: &DnsmasqFiles) {
        let Some(pid) = self.running(files) else {
            return;
        };
        // SAFETY: kill(2) on a pid verified to be this VPC's dnsmasq.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.running(files).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.running(files).is_some() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_file(files.pid_file());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> DnsmasqFiles {
        DnsmasqFiles {
            dir: "/lab/network/vpc-1".into(),
        }
    }

    fn subnet() -> DhcpSubnet {
        DhcpSubnet {
            bridge: "br1234567890abc".into(),
            base: Ipv4Addr::new(172, 31, 16, 0),
            prefix: 20,
            router: Ipv4Addr::new(172, 31, 16, 1),
            dns: Ipv4Addr::new(172, 31, 16, 2),
        }
    }

    fn host() -> DhcpHost {
        DhcpHost {
            mac: "02:ab:cd:ef:01:23".into(),
            ip: Ipv4Addr::new(172, 31, 16, 77),
            fqdn: "ip-172-31-16-77.ec2.internal".into(),
            public_fqdn: Some("ec2-198-51-100-9.compute-1.amazonaws.com".into()),
        }
    }

    #[test]
    fn a_subnet_and_an_interface_render_as_static_dhcp_and_a_dns_record() {
        let text = render(&files(), "ec2.internal", &[subnet()], &[host()], None).expect("renders");
        assert!(!text.contains("server="), "{text}");
        for line in [
            "pid-file=/lab/network/vpc-1/dnsmasq.pid",
            "no-resolv",
            "no-hosts",
            "interface=br1234567890abc",
            "listen-address=172.31.16.2",
            "dhcp-range=set:s0,172.31.16.0,static,255.255.240.0,1h",
            "dhcp-option=tag:s0,option:router,172.31.16.1",
            "dhcp-option=tag:s0,option:dns-server,172.31.16.2",
            "dhcp-host=02:ab:cd:ef:01:23,172.31.16.77,ip-172-31-16-77",
            "host-record=ip-172-31-16-77.ec2.internal,ip-172-31-16-77,172.31.16.77",
            "host-record=ec2-198-51-100-9.compute-1.amazonaws.com,172.31.16.77",
            "domain=ec2.internal",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn other_names_go_to_the_relay_when_there_is_one() {
        let relay = std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 53);
        let text = render(
            &files(),
            "ec2.internal",
            &[subnet()],
            &[host()],
            Some(relay),
        )
        .expect("renders");
        for line in [
            "server=127.0.0.1#53",
            "no-resolv",
            "local=/ec2.internal/",
            "domain-needed",
            "bogus-priv",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn stored_values_cannot_add_lines_to_the_configuration() {
        let evil_mac = DhcpHost {
            mac: "02:ab:cd:ef:01:23\ndhcp-script=/bin/sh".into(),
            ..host()
        };
        assert!(matches!(
            render(&files(), "ec2.internal", &[subnet()], &[evil_mac], None),
            Err(DhcpError::Unsafe { .. })
        ));
        let evil_name = DhcpHost {
            fqdn: "a,b\nserver=1.2.3.4".into(),
            ..host()
        };
        assert!(render(&files(), "ec2.internal", &[], &[evil_name], None).is_err());
        let evil_public = DhcpHost {
            public_fqdn: Some("x\naddn-hosts=/etc/shadow".into()),
            ..host()
        };
        assert!(render(&files(), "ec2.internal", &[], &[evil_public], None).is_err());
        let evil_dir = DnsmasqFiles {
            dir: "/lab\nuser=root".into(),
        };
        assert!(render(&evil_dir, "ec2.internal", &[], &[], None).is_err());
    }

    #[test]
    fn netmasks_follow_the_prefix() {
        assert_eq!(netmask(20), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(netmask(28), Ipv4Addr::new(255, 255, 255, 240));
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
    }
}
