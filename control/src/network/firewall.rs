//! Putting a VPC's rules into its namespace: the kernel switches that make
//! the namespace a router whose bridged traffic passes the inet forward
//! chain (IPv4 forwarding, br_netfilter's `bridge-nf-call-iptables`), and
//! `nft -f -` run inside the namespace with the text [`super::rules`]
//! rendered, so a ruleset replaces the last one in one transaction: a
//! change is all there or not at all, and a failed change leaves the
//! previous rules filtering.
//!
//! nftables' own library has no maintained Rust binding that takes the
//! ruleset language, and the JSON form would be a second renderer of the
//! same rules; one `nft` process per change costs about a millisecond.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::{self, NetnsError};

/// How long one `nft` may take before it is killed: a whole VPC's ruleset
/// loads in milliseconds; anything near this is a wedged host.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors putting rules in place.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// Entering the namespace.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// `nft` could not be run (missing: install Debian's nftables).
    #[error("cannot run {binary:?} in {ns}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The namespace.
        ns: String,
        /// Why.
        source: std::io::Error,
    },
    /// `nft` refused the ruleset or failed; nothing of it was applied.
    #[error("{binary:?} in {ns} failed ({status}): {stderr}")]
    Refused {
        /// The binary.
        binary: PathBuf,
        /// The namespace.
        ns: String,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// A kernel switch could not be set.
    #[error("in {ns}: cannot set {key}: {source}")]
    Sysctl {
        /// The namespace.
        ns: String,
        /// The `/proc/sys` path.
        key: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// The switches every VPC namespace needs, as `/proc/sys` paths and
/// values. Both are per network namespace: writing them inside the
/// VPC's namespace never touches the host's.
const SWITCHES: [(&str, &str); 2] = [
    // The namespace routes between its subnets and to the uplink.
    ("/proc/sys/net/ipv4/ip_forward", "1"),
    // Bridged IPv4 passes the inet hooks, where conntrack is (the bridge
    // family has none on these hosts; DESIGN.md "Networking").
    ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
];

/// Sets [`SWITCHES`] inside namespace `ns`.
pub fn enable_routing(ns: &str) -> Result<(), FirewallError> {
    set(ns, &SWITCHES)
}

/// Turns IPv4 forwarding on in namespace `ns` and nothing else: with
/// `--uplink host`, the host routes between its uplink bridge and its own
/// links (its bridges keep bypassing its firewall as they did).
pub fn enable_forwarding(ns: &str) -> Result<(), FirewallError> {
    set(ns, &SWITCHES[..1])
}

fn set(ns: &str, switches: &[(&'static str, &'static str)]) -> Result<(), FirewallError> {
    let owner = ns.to_string();
    let switches = switches.to_vec();
    netns::run_in(ns, move || -> Result<(), FirewallError> {
        for (key, value) in switches {
            // /proc/sys/net is resolved in the opening thread's namespace.
            std::fs::write(key, value).map_err(|source| FirewallError::Sysctl {
                ns: owner.clone(),
                key,
                source,
            })?;
        }
        Ok(())
    })?
}

/// The `nft` binary the fabric runs.
#[derive(Clone, Debug)]
pub struct Nft {
    /// A path, or a name found on PATH.
    pub binary: PathBuf,
}

impl Nft {
    /// Loads `ruleset` (nft's language) inside namespace `ns` atomically.
    pub fn apply(&self, ns: &str, ruleset: &str) -> Result<(), FirewallError> {
        self.run(ns, &["-f", "-"], Some(ruleset)).map(drop)
    }

    /// What the kernel has in namespace `ns` now (`nft list ruleset`).
    pub fn list(&self, ns: &str) -> Result<String, FirewallError> {
        self.run(ns, &["list", "ruleset"], None)
    }

    fn run(&self, ns: &str, args: &[&str], input: Option<&str>) -> Result<String, FirewallError> {
        let namespace = netns::open(ns)?;
        let spawn_error = |source| FirewallError::Spawn {
            binary: self.binary.clone(),
            ns: ns.to_string(),
            source,
        };
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        netns::exec_in(&mut command, Some(&namespace), false);
        let mut child = command.spawn().map_err(spawn_error)?;
        drop(namespace);
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            // A failed write shows as nft's own error below.
            let _ = stdin.write_all(text.as_bytes());
        }
        // Read both pipes on threads so a chatty nft cannot fill one and
        // stall while this waits.
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let deadline = Instant::now() + NFT_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(spawn_error(std::io::ErrorKind::TimedOut.into()));
                }
                Err(e) => return Err(spawn_error(e)),
            }
        };
        let collect = |h: Option<std::thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        let (stdout, stderr) = (collect(stdout), collect(stderr));
        if !status.success() {
            return Err(FirewallError::Refused {
                binary: self.binary.clone(),
                ns: ns.to_string(),
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(stdout)
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}
