//! The instance metadata document the control plane hands the VMM, which
//! serves it to the guest at 169.254.169.254 (IMDS, Nitro-style: in the
//! VMM, before the tap).
//!
//! The document is facts, not HTTP: the VMM builds EC2's category tree,
//! listings and identity document from it, so the control plane never
//! spells a metadata path. Everything the control plane may change while
//! the instance runs (public address, groups, tags, keys, options) is in
//! here and replaced whole.
//!
//! ```
//! use ec2lab_vmm_api::metadata::{InstanceMetadata, MetadataOptions};
//!
//! let doc = InstanceMetadata {
//!     instance_id: "i-0123456789abcdef0".into(),
//!     ..InstanceMetadata::default()
//! };
//! assert_eq!(doc.options, MetadataOptions::default());
//! assert!(doc.options.http_endpoint);
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The largest user data EC2 accepts (16 KiB before base64), which is also
/// the most the VMM keeps.
pub const MAX_USER_DATA: usize = 16 * 1024;

/// Whether IMDSv1 (GET without a session token) is still answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpTokens {
    /// v1 and v2 both work (EC2's default for older AMIs).
    #[default]
    Optional,
    /// Every GET must carry a token from PUT /latest/api/token.
    Required,
}

/// EC2's InstanceMetadataOptions, as they act on the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataOptions {
    /// HttpTokens.
    #[serde(default)]
    pub http_tokens: HttpTokens,
    /// HttpPutResponseHopLimit (1–64): the IP TTL of token responses, so a
    /// token cannot travel past that many hops (containers, proxies).
    #[serde(default = "default_hop_limit")]
    pub hop_limit: u8,
    /// HttpEndpoint: when false, 169.254.169.254 does not answer at all.
    #[serde(default = "default_true")]
    pub http_endpoint: bool,
    /// InstanceMetadataTags: tags under meta-data/tags/instance/.
    #[serde(default)]
    pub instance_metadata_tags: bool,
}

fn default_hop_limit() -> u8 {
    1
}

fn default_true() -> bool {
    true
}

impl Default for MetadataOptions {
    fn default() -> Self {
        MetadataOptions {
            http_tokens: HttpTokens::Optional,
            hop_limit: default_hop_limit(),
            http_endpoint: true,
            instance_metadata_tags: false,
        }
    }
}

/// One key of public-keys/: EC2 serves the launch key pair as index 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    /// The key pair's name (the listing says `0=<name>`).
    pub name: String,
    /// The OpenSSH public key line.
    pub openssh: String,
}

/// A key EC2 Instance Connect made usable for a short while (60 seconds
/// on EC2), served under `managed-ssh-keys/active-keys/<user>/` until it
/// expires. The expiry is wall-clock time because the control plane and
/// the VMM are different processes; the VMM stops serving the key at that
/// second even if no newer document arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedKey {
    /// The OS user the key logs in as (InstanceOSUser).
    pub user: String,
    /// The OpenSSH public key line.
    pub openssh: String,
    /// When the key stops being served, in seconds since the Unix epoch.
    pub expires_unix: u64,
}

/// One network interface, under network/interfaces/macs/<mac>/.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceMetadata {
    /// The interface's MAC, lower case with colons: the directory name.
    pub mac: String,
    /// DeviceIndex.
    pub device_number: u32,
    /// eni-….
    pub interface_id: String,
    /// ip-A-B-C-D.ec2.internal.
    pub local_hostname: String,
    /// Private addresses, primary first.
    pub local_ipv4s: Vec<String>,
    /// The public address (pool or Elastic IP), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv4: Option<String>,
    /// ec2-A-B-C-D.compute-1.amazonaws.com, with `public_ipv4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_hostname: Option<String>,
    /// The interface's security groups: ids and names, in the same order.
    pub security_group_ids: Vec<String>,
    /// Names of the same groups.
    pub security_groups: Vec<String>,
    /// subnet-….
    pub subnet_id: String,
    /// The subnet's IPv4 CIDR.
    pub subnet_ipv4_cidr_block: String,
    /// vpc-….
    pub vpc_id: String,
    /// The VPC's IPv4 CIDRs, primary first.
    pub vpc_ipv4_cidr_blocks: Vec<String>,
}

/// Everything the metadata service says about one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceMetadata {
    /// i-….
    pub instance_id: String,
    /// ami-….
    pub ami_id: String,
    /// AmiLaunchIndex within its reservation.
    #[serde(default)]
    pub ami_launch_index: u32,
    /// t2.micro, lab.nano, ….
    pub instance_type: String,
    /// r-….
    pub reservation_id: String,
    /// The owning account (identity document, owner-id).
    pub account_id: String,
    /// us-east-1.
    pub region: String,
    /// us-east-1a.
    pub availability_zone: String,
    /// use1-az1.
    pub availability_zone_id: String,
    /// x86_64.
    pub architecture: String,
    /// When the instance last started, RFC 3339 (identity document).
    pub pending_time: String,
    /// The primary interface's private DNS name (hostname, local-hostname).
    pub local_hostname: String,
    /// The primary private address.
    pub local_ipv4: String,
    /// The primary interface's MAC.
    pub mac: String,
    /// The primary public address, when there is one (public-ipv4 is a
    /// 404 otherwise, as on EC2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv4: Option<String>,
    /// Its public DNS name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_hostname: Option<String>,
    /// Names of the primary interface's groups (security-groups).
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// The launch key pair, when there was one.
    #[serde(default)]
    pub public_keys: Vec<PublicKey>,
    /// Instance Connect keys, expired or not (the VMM serves those still
    /// valid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_keys: Vec<ManagedKey>,
    /// User data as the guest reads it (decoded bytes); at most
    /// [`MAX_USER_DATA`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<Vec<u8>>,
    /// The instance's tags (served only with `instance_metadata_tags`).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Every interface, by device index.
    #[serde(default)]
    pub interfaces: Vec<InterfaceMetadata>,
    /// How the service answers.
    #[serde(default)]
    pub options: MetadataOptions,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default_to_what_ec2_gives_an_instance_launched_without_any() {
        let options: MetadataOptions = serde_json::from_str("{}").expect("test input");
        assert_eq!(options, MetadataOptions::default());
        assert_eq!(options.http_tokens, HttpTokens::Optional);
        assert_eq!(options.hop_limit, 1);
        assert!(options.http_endpoint);
        assert!(!options.instance_metadata_tags);
    }

    #[test]
    fn the_document_round_trips_and_pins_its_field_names() {
        let doc = InstanceMetadata {
            instance_id: "i-1".into(),
            public_ipv4: Some("198.51.100.3".into()),
            user_data: Some(b"#!/bin/sh\n".to_vec()),
            options: MetadataOptions {
                http_tokens: HttpTokens::Required,
                ..MetadataOptions::default()
            },
            ..InstanceMetadata::default()
        };
        let json = serde_json::to_value(&doc).expect("test input");
        assert_eq!(json["options"]["http_tokens"], "required");
        assert_eq!(json["public_ipv4"], "198.51.100.3");
        assert!(json.get("public_hostname").is_none());
        let back: InstanceMetadata = serde_json::from_value(json).expect("test input");
        assert_eq!(back, doc);
    }

    #[test]
    fn an_unknown_field_is_refused_rather_than_ignored() {
        let err = serde_json::from_str::<MetadataOptions>(r#"{"http_token":"required"}"#);
        assert!(err.is_err());
    }
}
