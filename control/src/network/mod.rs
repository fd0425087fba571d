//! The VPC data plane on this host (DESIGN.md "Networking"): each VPC is
//! a network namespace acting as its router (so VPCs may overlap), each
//! subnet a Linux bridge in it with the router on base+1 and DNS/DHCP on
//! base+2, each ENI a tap on its subnet's bridge that the instance's VMM
//! opens from inside the namespace.
//!
//! The database says what should exist; [`Network`] makes the host match
//! it, on demand (an instance starting), when a resource goes (an
//! instance stopped or terminated), and when the daemon starts
//! ([`Network::reconcile`]). A VPC's namespace and its dnsmasq exist only
//! while one of its instances holds a tap: an idle VPC costs nothing on
//! the host and leaves nothing behind, and building one again takes about
//! a tenth of a second.
//!
//! Security groups are enforced: every change to a VPC's taps, and every
//! change to a group, its rules or an interface's groups, renders the
//! VPC's ruleset from the database ([`rules`]) and replaces the live one
//! in one `nft` transaction ([`firewall`]). A VPC whose rules cannot be
//! applied gets no new tap: an instance never runs unfiltered.
//!
//! With an [`uplink::Uplink`], every VPC namespace has an internet
//! gateway to it, and an interface that asks for a public address gets
//! one from the uplink's pool while its instance runs (released on stop
//! and terminate, kept across reboot), mapped 1:1 to its private address.
//!
//! With a [`dns_forward::Forwarder`], names outside the VPC resolve through
//! the host's resolver; with [`forwards::PortForwards`], the host reaches
//! each public address in use at a loopback port.

mod accept;
pub mod dhcp;
pub mod dns_forward;
pub mod fabric;
pub mod firewall;
pub mod forwards;
pub mod netns;
pub mod rules;
pub mod uplink;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use ec2lab_vmm_api::config::{MacAddr, NetConfig};

use crate::db::{Db, DbError, NetworkQuery};
use crate::model::state::InstanceState;
use crate::model::vpc::{self, Cidr, NetworkInterface, SecurityGroup};
use crate::model::{Instance, DEFAULT_REGION};
use dhcp::{DhcpHost, DhcpSubnet, Dnsmasq, DnsmasqFiles};
use fabric::FabricError;
use firewall::{FirewallError, Nft};
use netns::NetnsError;
use uplink::{Uplink, UplinkError};

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The repository.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Links and addresses.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// Namespaces.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// DHCP and DNS.
    #[error(transparent)]
    Dhcp(#[from] dhcp::DhcpError),
    /// Putting security group rules in place.
    #[error("security groups: {0}")]
    Firewall(#[from] FirewallError),
    /// Rendering security group rules from what is stored.
    #[error("security groups: {0}")]
    Rules(#[from] rules::RulesError),
    /// The internet gateway.
    #[error("internet gateway: {0}")]
    Uplink(#[from] UplinkError),
    /// Forwarding names outside the VPC.
    #[error("DNS forwarding: {0}")]
    Forward(#[from] dns_forward::ForwardError),
    /// A stored value the fabric cannot use.
    #[error("{what} {value:?} of {owner} is not usable")]
    Stored {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: String,
        /// The resource.
        owner: String,
    },
}

/// The longest interface name Linux takes (IFNAMSIZ less the NUL).
const IFNAME_MAX: usize = 15;

/// `prefix` followed by as much of the end of `id` (its random hex) as
/// fits an interface name. Names only need to be unique inside one VPC's
/// namespace, where ids differ in their last 12 or more hex digits.
fn link_name(prefix: &str, id: &str) -> String {
    let digits = id.rsplit('-').next().unwrap_or(id);
    let room = IFNAME_MAX - prefix.len();
    let tail = &digits[digits.len().saturating_sub(room)..];
    format!("{prefix}{tail}")
}

/// The namespace that is VPC `vpc_id`'s router.
pub fn namespace_name(vpc_id: &str) -> String {
    format!("ec2lab-{vpc_id}")
}

/// The bridge of subnet `subnet_id`.
pub fn bridge_name(subnet_id: &str) -> String {
    link_name("br", subnet_id)
}

/// What every tap's name starts with (and no other link's in a VPC).
const TAP_PREFIX: &str = "tap";

/// The tap of interface `eni_id`.
pub fn tap_name(eni_id: &str) -> String {
    link_name(TAP_PREFIX, eni_id)
}

/// One subnet as the fabric builds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetPlan {
    /// `subnet-…`.
    pub subnet_id: String,
    /// Its block.
    pub cidr: Cidr,
    /// Its bridge.
    pub bridge: String,
}

impl SubnetPlan {
    /// The VPC router's address on the subnet: base+1.
    pub fn router(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.base) + 1)
    }
    /// The Amazon-provided DNS (and DHCP) address: base+2.
    pub fn dns(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.base) + 2)
    }
}

/// One ENI as the fabric builds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfacePlan {
    /// `eni-…`.
    pub eni_id: String,
    /// Its subnet.
    pub subnet_id: String,
    /// Its MAC, as stored.
    pub mac: String,
    /// Its primary private address.
    pub ip: Ipv4Addr,
    /// Its public address, while it has one.
    pub public_ip: Option<Ipv4Addr>,
    /// Its tap.
    pub tap: String,
}

/// Everything of one VPC the host needs, read from the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcPlan {
    /// `vpc-…`.
    pub vpc_id: String,
    /// Its namespace.
    pub namespace: String,
    /// Its subnets.
    pub subnets: Vec<SubnetPlan>,
    /// Its attached interfaces (DHCP leases and DNS names).
    pub interfaces: Vec<InterfacePlan>,
}

impl VpcPlan {
    /// An empty plan for `vpc_id`.
    pub fn new(vpc_id: &str) -> Self {
        Self {
            vpc_id: vpc_id.to_string(),
            namespace: namespace_name(vpc_id),
            subnets: Vec::new(),
            interfaces: Vec::new(),
        }
    }

    /// The subnet `subnet_id`, if the plan has it.
    pub fn subnet(&self, subnet_id: &str) -> Option<&SubnetPlan> {
        self.subnets.iter().find(|s| s.subnet_id == subnet_id)
    }

    /// What dnsmasq serves for this VPC.
    pub fn dhcp(&self) -> (Vec<DhcpSubnet>, Vec<DhcpHost>) {
        let subnets = self
            .subnets
            .iter()
            .map(|s| DhcpSubnet {
                bridge: s.bridge.clone(),
                base: s.cidr.base,
                prefix: s.cidr.prefix,
                router: s.router(),
                dns: s.dns(),
            })
            .collect();
        let hosts = self
            .interfaces
            .iter()
            .map(|i| DhcpHost {
                mac: i.mac.clone(),
                ip: i.ip,
                fqdn: vpc::private_dns_name(i.ip, DEFAULT_REGION),
                public_fqdn: i.public_ip.map(|q| vpc::public_dns_name(q, DEFAULT_REGION)),
            })
            .collect();
        (subnets, hosts)
    }
}

/// The private DNS domain of the region (what `private_dns_name` ends in).
pub fn private_domain() -> String {
    let name = vpc::private_dns_name(Ipv4Addr::UNSPECIFIED, DEFAULT_REGION);
    name.split_once('.')
        .map_or_else(String::new, |(_, d)| d.to_string())
}

/// What an instance's VMM needs of the network: where to run and which
/// cards to open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    /// The namespace file the VMM must run in (None: no card).
    pub netns: Option<PathBuf>,
    /// The cards, eth0 first.
    pub nets: Vec<NetConfig>,
}

/// Whether an instance in `state` may have a VMM, hence needs its taps.
fn holds_taps(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Pending
            | InstanceState::Running
            | InstanceState::Stopping
            | InstanceState::ShuttingDown
    )
}

/// The instances that hold taps in VPC `vpc_id`.
fn holders(db: &Db, vpc_id: &str) -> Result<Vec<Instance>, NetworkError> {
    Ok(db
        .all_instances()?
        .into_iter()
        .filter(|i| holds_taps(i.state) && i.network_interfaces.iter().any(|e| e.vpc_id == vpc_id))
        .collect())
}

/// The interfaces of `holders` in VPC `vpc_id`: the ports its rules cover.
fn ports_in(vpc_id: &str, holders: &[Instance]) -> Vec<NetworkInterface> {
    holders
        .iter()
        .flat_map(|i| &i.network_interfaces)
        .filter(|e| e.vpc_id == vpc_id)
        .cloned()
        .collect()
}

/// The `(private, public)` address pairs of `interfaces`.
fn nat_pairs(interfaces: &[NetworkInterface]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    interfaces
        .iter()
        .filter_map(|i| Some((i.private_ip_address, i.public_ip?)))
        .collect()
}

/// The public addresses `interfaces` hold.
fn public_addresses(interfaces: &[NetworkInterface]) -> Vec<Ipv4Addr> {
    nat_pairs(interfaces).into_iter().map(|(_, q)| q).collect()
}

/// The security groups of VPC `vpc_id`, with their rules.
fn groups_in(db: &Db, vpc_id: &str) -> Result<Vec<SecurityGroup>, NetworkError> {
    Ok(db
        .list_security_groups(&NetworkQuery::default(), &[])?
        .items
        .into_iter()
        .filter(|g| g.vpc_id == vpc_id)
        .collect())
}

/// The host side of the lab's VPCs.
#[derive(Debug)]
pub struct Network {
    /// Per-VPC state (dnsmasq's files), `<data>/network/<vpc-id>/`.
    state_dir: PathBuf,
    dnsmasq: Dnsmasq,
    nft: Nft,
    /// Where internet gateways lead (None: VPCs have none, and no
    /// interface gets a public address).
    uplink: Option<Uplink>,
    /// Where names outside a VPC go (None: they do not resolve).
    forwarder: Option<dns_forward::Forwarder>,
    /// Loopback ports to public addresses (None: none are opened).
    port_forwards: Option<forwards::PortForwards>,
    /// One fabric change at a time: a launch and a teardown of the same
    /// VPC must not interleave.
    changes: Mutex<()>,
}

impl Network {
    /// A network layer keeping its files under `state_dir`, running
    /// `dnsmasq` (a path, or a name found on PATH).
    pub fn new(state_dir: PathBuf, dnsmasq: PathBuf) -> Self {
        Self {
            state_dir,
            dnsmasq: Dnsmasq { binary: dnsmasq },
            nft: Nft {
                binary: "nft".into(),
            },
            uplink: None,
            forwarder: None,
            port_forwards: None,
            changes: Mutex::new(()),
        }
    }

    /// Gives every VPC an internet gateway to `uplink`, and interfaces
    /// public addresses from its pool.
    pub fn with_uplink(mut self, uplink: Uplink) -> Self {
        self.uplink = Some(uplink);
        self
    }

    /// Has every VPC's DNS forward names outside the VPC through
    /// `forwarder`.
    pub fn with_forwarder(mut self, forwarder: dns_forward::Forwarder) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// Opens loopback forwards to the public addresses in use.
    pub fn with_port_forwards(mut self, port_forwards: forwards::PortForwards) -> Self {
        self.port_forwards = Some(port_forwards);
        self
    }

    /// The DNS forwarder, when there is one.
    pub fn forwarder(&self) -> Option<&dns_forward::Forwarder> {
        self.forwarder.as_ref()
    }

    /// The uplink, when there is one.
    pub fn uplink(&self) -> Option<&Uplink> {
        self.uplink.as_ref()
    }

    /// Runs `nft` from `binary` (a path, or a name found on PATH) instead
    /// of `nft` on PATH.
    pub fn with_nft(mut self, binary: PathBuf) -> Self {
        self.nft = Nft { binary };
        self
    }

    fn files(&self, vpc_id: &str) -> DnsmasqFiles {
        DnsmasqFiles {
            dir: self.state_dir.join(vpc_id),
        }
    }

    /// VPC `vpc_id` as the database has it: its subnets, and the
    /// interfaces attached to instances that are not terminated.
    pub fn plan(&self, db: &Db, vpc_id: &str) -> Result<VpcPlan, NetworkError> {
        let mut plan = VpcPlan::new(vpc_id);
        for s in db.list_subnets(&NetworkQuery::default())?.items {
            if s.vpc_id != vpc_id {
                continue;
            }
            let cidr = Cidr::parse(&s.cidr_block).ok_or_else(|| NetworkError::Stored {
                what: "CIDR block",
                value: s.cidr_block.clone(),
                owner: s.id.clone(),
            })?;
            plan.subnets.push(SubnetPlan {
                bridge: bridge_name(&s.id),
                subnet_id: s.id,
                cidr,
            });
        }
        let live: Vec<String> = db
            .all_instances()?
            .into_iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .map(|i| i.id)
            .collect();
        for eni in db.list_network_interfaces(&NetworkQuery::default())?.items {
            let attached = eni
                .attachment
                .as_ref()
                .is_some_and(|a| live.contains(&a.instance_id));
            if eni.vpc_id != vpc_id || !attached {
                continue;
            }
            plan.interfaces.push(InterfacePlan {
                tap: tap_name(&eni.id),
                eni_id: eni.id,
                subnet_id: eni.subnet_id,
                mac: eni.mac_address,
                ip: eni.private_ip_address,
                public_ip: eni.public_ip,
            });
        }
        Ok(plan)
    }

    /// Makes the host match `plan`: namespace, bridges with the router and
    /// DNS addresses, dnsmasq serving its leases. Idempotent.
    pub fn ensure_vpc(&self, plan: &VpcPlan) -> Result<(), NetworkError> {
        if netns::ensure(&plan.namespace)? {
            log::info!("{}: namespace {} created", plan.vpc_id, plan.namespace);
        }
        firewall::enable_routing(&plan.namespace)?;
        for s in &plan.subnets {
            fabric::ensure_bridge(
                &plan.namespace,
                &s.bridge,
                &[(s.router(), s.cidr.prefix), (s.dns(), s.cidr.prefix)],
            )?;
        }
        if let Some(uplink) = &self.uplink {
            uplink.connect(&plan.vpc_id, &plan.namespace)?;
            if uplink.host {
                firewall::enable_forwarding(&uplink.namespace)?;
                self.nft.apply(
                    &uplink.namespace,
                    &rules::render_host_uplink(uplink.pool, uplink::BRIDGE),
                )?;
            }
        }
        if let Some(forwarder) = &self.forwarder {
            forwarder.ensure(&plan.namespace)?;
        }
        self.ensure_dns(plan)
    }

    /// Makes the VPC's dnsmasq serve `plan`'s leases and names (restarted
    /// only when they changed).
    fn ensure_dns(&self, plan: &VpcPlan) -> Result<(), NetworkError> {
        let (subnets, hosts) = plan.dhcp();
        let files = self.files(&plan.vpc_id);
        let forward = self.forwarder.is_some().then_some(dns_forward::RELAY);
        let config = dhcp::render(&files, &private_domain(), &subnets, &hosts, forward)?;
        self.dnsmasq
            .ensure(&plan.vpc_id, &plan.namespace, &files, &config)?;
        Ok(())
    }

    /// Removes VPC `vpc_id` from the host: dnsmasq, its uplink port, then
    /// the namespace with every bridge and tap in it. Idempotent.
    pub fn teardown_vpc(&self, vpc_id: &str) -> Result<(), NetworkError> {
        let files = self.files(vpc_id);
        self.dnsmasq.stop(&files);
        if let Some(forwarder) = &self.forwarder {
            forwarder.remove(&namespace_name(vpc_id));
        }
        if let Some(port_forwards) = &self.port_forwards {
            port_forwards.publish(&namespace_name(vpc_id), &[]);
        }
        if let Some(uplink) = &self.uplink {
            uplink.disconnect(vpc_id)?;
        }
        netns::remove(&namespace_name(vpc_id))?;
        match std::fs::remove_dir_all(&files.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(dhcp::DhcpError::Io {
                    what: "remove",
                    path: files.dir,
                    source,
                }
                .into())
            }
        }
        Ok(())
    }

    /// Builds what `instance` needs before its VMM starts: its VPC, its
    /// taps on their bridges, its leases; returns where the VMM runs and
    /// the cards it opens.
    pub fn attach(&self, db: &Db, instance: &Instance) -> Result<Attachment, NetworkError> {
        let mut enis: Vec<_> = instance.network_interfaces.iter().collect();
        if enis.is_empty() {
            return Ok(Attachment::default());
        }
        enis.sort_by_key(|e| e.attachment.as_ref().map_or(0, |a| a.device_index));
        let _guard = crate::lock(&self.changes);
        let vpc_id = enis[0].vpc_id.clone();
        let plan = self.plan(db, &vpc_id)?;
        self.ensure_vpc(&plan)?;
        let mut nets = Vec::new();
        for eni in enis {
            let subnet = plan
                .subnet(&eni.subnet_id)
                .ok_or_else(|| NetworkError::Stored {
                    what: "subnet",
                    value: eni.subnet_id.clone(),
                    owner: eni.id.clone(),
                })?;
            let tap = tap_name(&eni.id);
            fabric::ensure_tap(&plan.namespace, &tap, &subnet.bridge)?;
            let mac = eni
                .mac_address
                .parse::<MacAddr>()
                .map_err(|_| NetworkError::Stored {
                    what: "MAC address",
                    value: eni.mac_address.clone(),
                    owner: eni.id.clone(),
                })?;
            nets.push(NetConfig {
                tap,
                mac: Some(mac),
            });
        }
        // The instance is Pending, so its interfaces are ports now: its
        // rules are live before its VMM can send a frame.
        self.refresh_locked(db, &vpc_id, &holders(db, &vpc_id)?)?;
        Ok(Attachment {
            netns: Some(netns::path(&plan.namespace)),
            nets,
        })
    }

    /// Undoes [`Network::attach`] once `instance`'s VMM is gone: its taps
    /// go, and its VPC too when no other instance holds a tap in it.
    ///
    /// A terminated instance's ENIs may already be deleted from the
    /// database (DeleteOnTermination), so every VPC is settled from what
    /// the database still holds rather than from the instance's record.
    pub fn detach(&self, db: &Db, instance: &Instance) -> Result<(), NetworkError> {
        let _guard = crate::lock(&self.changes);
        for eni in &instance.network_interfaces {
            let ns = namespace_name(&eni.vpc_id);
            if netns::exists(&ns) {
                fabric::remove_link(&ns, &tap_name(&eni.id))?;
            }
        }
        for vpc in db.list_vpcs(&NetworkQuery::default())?.items {
            self.settle_vpc(db, &vpc.id)?;
        }
        self.settle_uplink(db)
    }

    /// Removes the uplink when no VPC has a namespace left (it is made
    /// again with the next VPC's).
    fn settle_uplink(&self, db: &Db) -> Result<(), NetworkError> {
        if self.uplink.is_none() {
            return Ok(());
        }
        let vpcs = db.list_vpcs(&NetworkQuery::default())?.items;
        if vpcs.iter().all(|v| !netns::exists(&namespace_name(&v.id))) {
            self.teardown_uplink()?;
        }
        Ok(())
    }

    /// Removes what the uplink has of ec2lab's (every VPC's port must be
    /// gone): its namespace when owned, else its bridge, and with
    /// `--uplink host` the host's NAT table too. Idempotent.
    pub fn teardown_uplink(&self) -> Result<(), NetworkError> {
        let Some(uplink) = &self.uplink else {
            return Ok(());
        };
        if uplink.host && netns::exists(&uplink.namespace) {
            self.nft
                .apply(&uplink.namespace, &rules::remove_host_uplink())?;
        }
        Ok(uplink.teardown()?)
    }

    /// Makes VPC `vpc_id` match the database: torn down when none of its
    /// instances holds a tap; otherwise rebuilt, with those instances'
    /// taps and no others (a tap whose instance stopped, or whose ENI was
    /// deleted, while the daemon was down is removed).
    fn settle_vpc(&self, db: &Db, vpc_id: &str) -> Result<(), NetworkError> {
        let holders = holders(db, vpc_id)?;
        if holders.is_empty() {
            return self.teardown_vpc(vpc_id);
        }
        let plan = self.plan(db, vpc_id)?;
        self.ensure_vpc(&plan)?;
        let mut wanted = Vec::new();
        for eni in holders.iter().flat_map(|i| &i.network_interfaces) {
            if let Some(subnet) = plan.subnet(&eni.subnet_id) {
                let tap = tap_name(&eni.id);
                fabric::ensure_tap(&plan.namespace, &tap, &subnet.bridge)?;
                wanted.push(tap);
            }
        }
        for link in fabric::link_names(&plan.namespace)? {
            if link.starts_with(TAP_PREFIX) && !wanted.contains(&link) {
                log::info!("{vpc_id}: removing stale tap {link}");
                fabric::remove_link(&plan.namespace, &link)?;
            }
        }
        self.refresh_locked(db, vpc_id, &holders)
    }

    /// Renders the ruleset of `groups` for `interfaces` (each with its
    /// tap; with the gateway's NAT for their public addresses) and makes it
    /// the live one in namespace `ns`, then has the namespace answer for
    /// those public addresses on the uplink; returns the ruleset.
    pub fn apply_rules(
        &self,
        ns: &str,
        groups: &[SecurityGroup],
        interfaces: &[NetworkInterface],
    ) -> Result<String, NetworkError> {
        let text = self.render_rules(groups, interfaces)?;
        self.nft.apply(ns, &text)?;
        if let Some(uplink) = &self.uplink {
            uplink.publish(ns, &public_addresses(interfaces))?;
        }
        if let Some(port_forwards) = &self.port_forwards {
            let public: Vec<(Ipv4Addr, String)> = interfaces
                .iter()
                .filter_map(|i| {
                    let instance = i.attachment.as_ref().map(|a| a.instance_id.clone());
                    Some((i.public_ip?, instance.unwrap_or_else(|| i.id.clone())))
                })
                .collect();
            port_forwards.publish(ns, &public);
        }
        Ok(text)
    }

    /// The ruleset of `groups` for `interfaces`, each on its tap, with the
    /// internet gateway's NAT when there is an uplink.
    fn render_rules(
        &self,
        groups: &[SecurityGroup],
        interfaces: &[NetworkInterface],
    ) -> Result<String, rules::RulesError> {
        let taps: Vec<String> = interfaces.iter().map(|i| tap_name(&i.id)).collect();
        let ports: Vec<rules::Port<'_>> = taps
            .iter()
            .zip(interfaces)
            .map(|(tap, interface)| rules::Port { tap, interface })
            .collect();
        let mut text = rules::render(groups, &ports)?;
        if self.uplink.is_some() {
            text.push_str(&rules::render_nat(uplink::IGW_LINK, &nat_pairs(interfaces)));
        }
        Ok(text)
    }

    /// Re-renders and applies VPC `vpc_id`'s rules for the interfaces of
    /// `holders` (the instances that hold taps there); nothing when the
    /// VPC has no namespace (no tap, nothing to filter).
    fn refresh_locked(
        &self,
        db: &Db,
        vpc_id: &str,
        holders: &[Instance],
    ) -> Result<(), NetworkError> {
        let ns = namespace_name(vpc_id);
        if !netns::exists(&ns) {
            return Ok(());
        }
        let interfaces = ports_in(vpc_id, holders);
        self.apply_rules(&ns, &groups_in(db, vpc_id)?, &interfaces)?;
        // Public names follow public addresses.
        self.ensure_dns(&self.plan(db, vpc_id)?)
    }

    /// After a change to security groups, their rules or an interface's
    /// groups: every VPC with a namespace gets its rules re-rendered and
    /// applied. A VPC that fails is reported; the others still change.
    pub fn refresh_rules(&self, db: &Db) -> Result<(), NetworkError> {
        let _guard = crate::lock(&self.changes);
        let mut first_error = None;
        for vpc in db.list_vpcs(&NetworkQuery::default())?.items {
            if let Err(e) = self.refresh_locked(db, &vpc.id, &holders(db, &vpc.id)?) {
                log::error!("{}: applying security groups: {e}", vpc.id);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// VPC `vpc_id`'s ruleset as the database renders it, and as the
    /// kernel holds it now (None when the VPC has no namespace).
    pub fn rules_of(
        &self,
        db: &Db,
        vpc_id: &str,
    ) -> Result<(String, Option<String>), NetworkError> {
        let holders = holders(db, vpc_id)?;
        let interfaces = ports_in(vpc_id, &holders);
        let rendered = self.render_rules(&groups_in(db, vpc_id)?, &interfaces)?;
        let ns = namespace_name(vpc_id);
        let live = if netns::exists(&ns) {
            Some(self.nft.list(&ns)?)
        } else {
            None
        };
        Ok((rendered, live))
    }

    /// After a daemon (re)start: every VPC with instances that hold taps
    /// is rebuilt (namespace and VMMs survived, dnsmasq may not have) with
    /// its instances' taps; every other VPC is torn down.
    pub fn reconcile(&self, db: &Db) -> Result<(), NetworkError> {
        let _guard = crate::lock(&self.changes);
        for vpc in db.list_vpcs(&NetworkQuery::default())?.items {
            self.settle_vpc(db, &vpc.id)?;
        }
        self.settle_uplink(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_fit_ifnamsiz_and_keep_the_ids_random_end() {
        assert_eq!(tap_name("eni-0123456789abcdef0"), "tap56789abcdef0");
        assert_eq!(bridge_name("subnet-0123456789abcdef0"), "br456789abcdef0");
        for name in [tap_name("eni-0123456789abcdef0"), bridge_name("subnet-1")] {
            assert!(name.len() <= IFNAME_MAX, "{name}");
        }
    }

    #[test]
    fn the_router_is_base_plus_one_and_dns_base_plus_two() {
        let s = SubnetPlan {
            subnet_id: "subnet-1".into(),
            cidr: Cidr::parse("172.31.16.0/20").expect("cidr"),
            bridge: "br1".into(),
        };
        assert_eq!(s.router(), Ipv4Addr::new(172, 31, 16, 1));
        assert_eq!(s.dns(), Ipv4Addr::new(172, 31, 16, 2));
    }

    #[test]
    fn the_private_domain_is_the_regions() {
        assert_eq!(private_domain(), "ec2.internal");
    }
}
