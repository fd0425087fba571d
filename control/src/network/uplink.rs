//! The internet gateway and "the internet" of the lab (DESIGN.md,
//! "Networking"). The uplink is a network namespace holding one bridge,
//! `inet0`, with the public pool's first address (the far side of every
//! internet gateway); each VPC namespace gets a veth, `igw`, whose peer is
//! a port of that bridge. The public addresses of a VPC's instances are
//! /32 addresses on its `igw` (so the segment's ARP finds the right VPC)
//! and the VPC router maps them 1:1 to private addresses with nftables
//! ([`super::rules::render_nat`]).
//!
//! By default ec2lab makes and owns the uplink namespace (`ec2lab-uplink`),
//! so the host's own interfaces, routes and firewall are never touched;
//! tests name a namespace they made instead. Nothing routes between the
//! uplink and the host unless the user opts in: with `--uplink host` the
//! uplink is the daemon's own namespace (named [`HOST_NAMESPACE`] so the
//! same code reaches it), the bridge with the pool's gateway address is
//! the host's (so the host routes the pool), IPv4 forwarding is on, and
//! the pool is masqueraded out of the host's other links
//! ([`super::rules::render_host_uplink`]).

use std::net::Ipv4Addr;

use super::fabric::{self, FabricError};
use super::netns::{self, NetnsError};
use crate::model::vpc::Cidr;

/// The uplink's bridge.
pub const BRIDGE: &str = "inet0";
/// A VPC namespace's end of its internet gateway.
pub const IGW_LINK: &str = "igw";
/// An address every `igw` keeps whatever public addresses come and go
/// (link-local, never routed): a link left with no address loses every
/// route through it, the VPC's default route included.
pub const IGW_ANCHOR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
/// The namespace ec2lab makes when none is named.
pub const DEFAULT_NAMESPACE: &str = "ec2lab-uplink";
/// The name `--uplink host` gives the daemon's own namespace.
pub const HOST_NAMESPACE: &str = "ec2lab-host";
/// The public pool when none is given: TEST-NET-2 (RFC 5737), never
/// routed on the real internet, so a lab's "public" addresses can never be
/// mistaken for someone's real ones.
pub const DEFAULT_POOL: Cidr = Cidr {
    base: Ipv4Addr::new(198, 51, 100, 0),
    prefix: 24,
};

/// Errors building the uplink.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// Namespaces.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Links and addresses.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// A namespace the user named is not there.
    #[error("uplink namespace {0} does not exist (create it, or leave --uplink-netns out)")]
    Missing(String),
}

/// Where the lab's internet gateways lead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// The namespace.
    pub namespace: String,
    /// Whether ec2lab made it (and may remove it).
    pub owned: bool,
    /// Whether it is the host's own namespace (`--uplink host`): named by
    /// ec2lab, never made or removed, the host routes the pool.
    pub host: bool,
    /// The block public addresses come from.
    pub pool: Cidr,
}

impl Uplink {
    /// The uplink ec2lab makes and owns, with the default pool.
    pub fn owned_default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_string(),
            owned: true,
            host: false,
            pool: DEFAULT_POOL,
        }
    }

    /// The uplink of `--uplink host`: the namespace of the calling thread
    /// (the daemon's), under the name `name`, with public pool `pool`.
    pub fn host(name: &str, pool: Cidr) -> Self {
        Self {
            namespace: name.to_string(),
            owned: false,
            host: true,
            pool,
        }
    }

    /// The far side of every internet gateway: the pool's first address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pool.base) + 1)
    }

    /// The uplink end of VPC `vpc_id`'s gateway.
    pub fn port_name(vpc_id: &str) -> String {
        super::link_name("up", vpc_id)
    }

    /// Makes the uplink exist: its namespace (when owned) and bridge.
    pub fn ensure(&self) -> Result<(), UplinkError> {
        if self.host {
            netns::name_current(&self.namespace)?;
        } else if self.owned {
            netns::ensure(&self.namespace)?;
        } else if !netns::exists(&self.namespace) {
            return Err(UplinkError::Missing(self.namespace.clone()));
        }
        fabric::ensure_bridge(
            &self.namespace,
            BRIDGE,
            &[(self.gateway(), self.pool.prefix)],
        )?;
        Ok(())
    }

    /// Connects VPC namespace `vpc_ns` to the uplink: its `igw` veth on the
    /// uplink's bridge, and its default route through the gateway.
    pub fn connect(&self, vpc_id: &str, vpc_ns: &str) -> Result<(), UplinkError> {
        self.ensure()?;
        fabric::ensure_veth_to(
            vpc_ns,
            IGW_LINK,
            &self.namespace,
            &Self::port_name(vpc_id),
            BRIDGE,
        )?;
        fabric::add_host_address(vpc_ns, IGW_LINK, IGW_ANCHOR)?;
        fabric::ensure_default_route(vpc_ns, IGW_LINK, self.gateway())?;
        Ok(())
    }

    /// Removes VPC `vpc_id`'s port from the uplink. Its namespace's end
    /// would take the port with it, but only once the kernel gets round to
    /// destroying that namespace (asynchronously, after its last process
    /// and socket are gone), so the port is deleted here, at once.
    pub fn disconnect(&self, vpc_id: &str) -> Result<(), UplinkError> {
        if netns::exists(&self.namespace) {
            fabric::remove_link(&self.namespace, &Self::port_name(vpc_id))?;
        }
        Ok(())
    }

    /// Makes `public` the addresses VPC namespace `vpc_ns` answers for on
    /// the uplink. The uplink forgets where those addresses were: each VPC's gateway
    /// has a MAC of its own, and addresses move between VPCs (a stopped
    /// instance's address goes to the next one that starts).
    pub fn publish(&self, vpc_ns: &str, public: &[Ipv4Addr]) -> Result<(), UplinkError> {
        let mut addresses = vec![IGW_ANCHOR];
        addresses.extend_from_slice(public);
        fabric::set_host_addresses(vpc_ns, IGW_LINK, &addresses)?;
        fabric::ensure_default_route(vpc_ns, IGW_LINK, self.gateway())?;
        fabric::forget_neighbours(&self.namespace, public)?;
        Ok(())
    }

    /// Removes what ec2lab made: the namespace when owned, else the
    /// bridge (each VPC's port went with its namespace).
    pub fn teardown(&self) -> Result<(), UplinkError> {
        if self.owned {
            netns::remove(&self.namespace)?;
        } else if netns::exists(&self.namespace) {
            fabric::remove_link(&self.namespace, BRIDGE)?;
        }
        if self.host {
            // Only the name: the host's namespace stays, of course.
            netns::remove(&self.namespace)?;
        }
        Ok(())
    }
}
