//! Elastic IP addresses: public IPv4 addresses an account holds until it
//! releases them, moved between interfaces without a restart, and kept
//! across stop and start (the address an interface gets from the pool on
//! its own is not).

use std::net::Ipv4Addr;

use super::filter::Filterable;
use super::vpc::public_dns_name;
use super::{Tags, DEFAULT_OWNER_ID, DEFAULT_REGION};

/// How many Elastic IPs an account may hold, as EC2's default quota.
pub const MAX_ELASTIC_IPS: usize = 5;

/// One Elastic IP (`Address` in EC2's API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticIp {
    /// `eipalloc-…`.
    pub allocation_id: String,
    pub public_ip: Ipv4Addr,
    /// Where it is associated, if anywhere.
    pub association: Option<ElasticIpAssociation>,
    pub tags: Tags,
}

/// An Elastic IP's association with an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticIpAssociation {
    /// `eipassoc-…`.
    pub association_id: String,
    pub network_interface_id: String,
    /// The instance the interface is attached to, if any.
    pub instance_id: Option<String>,
    /// The interface's private address the public one maps to.
    pub private_ip: Ipv4Addr,
}

/// Refusals of Elastic IP operations, each with EC2's code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The account holds [`MAX_ELASTIC_IPS`] already.
    #[error("The maximum number of addresses has been reached.")]
    LimitExceeded,
    /// Associated elsewhere, and AllowReassociation was not given.
    #[error("resource {allocation_id} is already associated with associate-id {association_id}")]
    AlreadyAssociated {
        allocation_id: String,
        association_id: String,
    },
    /// Released while associated.
    #[error("The address with allocation id [{0}] is currently associated; disassociate it first")]
    InUse(String),
    /// A public address that is no Elastic IP of the account.
    #[error("Address '{0}' not found.")]
    NotFound(String),
    /// An interface that is not attached, given by instance.
    #[error("The instance '{0}' has no network interface to associate with")]
    NoInterface(String),
}

impl AddressError {
    /// The EC2 error code.
    pub fn code(&self) -> &'static str {
        match self {
            AddressError::LimitExceeded => "AddressLimitExceeded",
            AddressError::AlreadyAssociated { .. } => "Resource.AlreadyAssociated",
            AddressError::InUse(_) => "InvalidIPAddress.InUse",
            AddressError::NotFound(_) => "InvalidAddress.NotFound",
            AddressError::NoInterface(_) => "InvalidInstanceID",
        }
    }
}

/// The filters DescribeAddresses takes (besides `tag:…`).
pub const ADDRESS_FILTERS: &[&str] = &[
    "allocation-id",
    "association-id",
    "domain",
    "instance-id",
    "network-interface-id",
    "network-interface-owner-id",
    "private-ip-address",
    "public-ip",
];

impl ElasticIp {
    /// `ec2-A-B-C-D.compute-1.amazonaws.com`.
    pub fn public_dns_name(&self) -> String {
        public_dns_name(self.public_ip, DEFAULT_REGION)
    }
}

impl Filterable for ElasticIp {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        if super::is_tag_filter(name) {
            return super::tag_filter_values(&self.tags, name);
        }
        let associated = |f: &dyn Fn(&ElasticIpAssociation) -> Option<String>| {
            Some(self.association.iter().filter_map(f).collect())
        };
        match name {
            "allocation-id" => Some(vec![self.allocation_id.clone()]),
            "association-id" => associated(&|a| Some(a.association_id.clone())),
            "domain" => Some(vec!["vpc".to_string()]),
            "instance-id" => associated(&|a| a.instance_id.clone()),
            "network-interface-id" => associated(&|a| Some(a.network_interface_id.clone())),
            "network-interface-owner-id" => associated(&|_| Some(DEFAULT_OWNER_ID.to_string())),
            "private-ip-address" => associated(&|a| Some(a.private_ip.to_string())),
            "public-ip" => Some(vec![self.public_ip.to_string()]),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        super::is_tag_filter(name) || ADDRESS_FILTERS.contains(&name)
    }
}
