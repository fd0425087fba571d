//! EC2 resource ids: `i-0123456789abcdef0`, `r-…`, `ami-…`, `aki-…`, `key-…`,
//! `vol-…`, `eni-…`, `vpc-…`, `subnet-…`, `sg-…`, `sgr-…`, `rtb-…`, `acl-…`,
//! `igw-…`.
//!
//! EC2 ids are a type prefix, a dash and 17 lowercase hex digits (older
//! resources have 8). Clients parse nothing but the prefix, yet the API must
//! tell a *malformed* id (`InvalidInstanceID.Malformed`) from a well-formed
//! one that names nothing (`InvalidInstanceID.NotFound`), so validation lives
//! here, next to generation.

use rand::Rng;
use sha2::{Digest, Sha256};

/// Hex digits in a current-format id.
pub const ID_HEX_LEN: usize = 17;
/// Hex digits in a legacy id (`i-1a2b3c4d`); EC2 still accepts them.
pub const LEGACY_ID_HEX_LEN: usize = 8;

/// The kind of resource an id names, which fixes its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    Instance,
    Reservation,
    /// A machine image (AMI).
    Image,
    /// A kernel image (AKI): as in EC2, kernels are images an AMI names.
    Kernel,
    KeyPair,
    Volume,
    NetworkInterface,
    Snapshot,
    Vpc,
    Subnet,
    SecurityGroup,
    /// One rule of a security group (EC2's `SecurityGroupRuleId`).
    SecurityGroupRule,
    /// An Elastic IP address (its `AllocationId`).
    ElasticIp,
    /// An Elastic IP's association with an interface.
    ElasticIpAssociation,
    /// A VPC's main route table (derived from the VPC, see
    /// `model::routing`).
    RouteTable,
    /// A VPC's default network ACL (derived from the VPC).
    NetworkAcl,
    /// The default VPC's internet gateway (derived from the VPC).
    InternetGateway,
}

impl IdKind {
    /// Every kind, for tables and exhaustive tests.
    pub const ALL: [IdKind; 17] = [
        IdKind::Instance,
        IdKind::Reservation,
        IdKind::Image,
        IdKind::Kernel,
        IdKind::KeyPair,
        IdKind::Volume,
        IdKind::NetworkInterface,
        IdKind::Snapshot,
        IdKind::Vpc,
        IdKind::Subnet,
        IdKind::SecurityGroup,
        IdKind::SecurityGroupRule,
        IdKind::ElasticIp,
        IdKind::ElasticIpAssociation,
        IdKind::RouteTable,
        IdKind::NetworkAcl,
        IdKind::InternetGateway,
    ];

    /// The prefix before the dash.
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Instance => "i",
            IdKind::Reservation => "r",
            IdKind::Image => "ami",
            IdKind::Kernel => "aki",
            IdKind::KeyPair => "key",
            IdKind::Volume => "vol",
            IdKind::NetworkInterface => "eni",
            IdKind::Snapshot => "snap",
            IdKind::Vpc => "vpc",
            IdKind::Subnet => "subnet",
            IdKind::SecurityGroup => "sg",
            IdKind::SecurityGroupRule => "sgr",
            IdKind::ElasticIp => "eipalloc",
            IdKind::ElasticIpAssociation => "eipassoc",
            IdKind::RouteTable => "rtb",
            IdKind::NetworkAcl => "acl",
            IdKind::InternetGateway => "igw",
        }
    }

    /// The EC2 `resource-type` of DescribeTags (`instance`, `image`, …).
    /// Kernels are images to EC2, so they answer `image` too.
    pub fn resource_type(self) -> &'static str {
        match self {
            IdKind::Instance => "instance",
            IdKind::Reservation => "reservation",
            IdKind::Image | IdKind::Kernel => "image",
            IdKind::KeyPair => "key-pair",
            IdKind::Volume => "volume",
            IdKind::NetworkInterface => "network-interface",
            IdKind::Snapshot => "snapshot",
            IdKind::Vpc => "vpc",
            IdKind::Subnet => "subnet",
            IdKind::SecurityGroup => "security-group",
            IdKind::SecurityGroupRule => "security-group-rule",
            IdKind::ElasticIp => "elastic-ip",
            IdKind::ElasticIpAssociation => "elastic-ip-association",
            IdKind::RouteTable => "route-table",
            IdKind::NetworkAcl => "network-acl",
            IdKind::InternetGateway => "internet-gateway",
        }
    }

    /// The EC2 error code for a malformed id of this kind. EC2 has no
    /// dedicated code for a malformed key pair id (`InvalidKeyPair.Format`
    /// is about key material), so those get the generic one.
    pub fn malformed_code(self) -> &'static str {
        match self {
            IdKind::Instance => "InvalidInstanceID.Malformed",
            IdKind::Reservation => "InvalidReservationID.Malformed",
            IdKind::Image | IdKind::Kernel => "InvalidAMIID.Malformed",
            IdKind::KeyPair => "InvalidParameterValue",
            IdKind::Volume => "InvalidVolumeID.Malformed",
            IdKind::NetworkInterface => "InvalidNetworkInterfaceID.Malformed",
            IdKind::Snapshot => "InvalidSnapshotID.Malformed",
            IdKind::Vpc => "InvalidVpcID.Malformed",
            IdKind::Subnet => "InvalidSubnetID.Malformed",
            IdKind::SecurityGroup => "InvalidGroupId.Malformed",
            IdKind::SecurityGroupRule => "InvalidSecurityGroupRuleId.Malformed",
            IdKind::ElasticIp => "InvalidAllocationID.Malformed",
            IdKind::ElasticIpAssociation => "InvalidAssociationID.Malformed",
            // EC2 spells these three with "Id", unlike the older codes.
            IdKind::RouteTable => "InvalidRouteTableId.Malformed",
            IdKind::NetworkAcl => "InvalidNetworkAclId.Malformed",
            IdKind::InternetGateway => "InvalidInternetGatewayId.Malformed",
        }
    }

    /// The EC2 error code for a well-formed id that names nothing.
    pub fn not_found_code(self) -> &'static str {
        match self {
            IdKind::Instance => "InvalidInstanceID.NotFound",
            IdKind::Reservation => "InvalidReservationID.NotFound",
            IdKind::Image | IdKind::Kernel => "InvalidAMIID.NotFound",
            IdKind::KeyPair => "InvalidKeyPair.NotFound",
            IdKind::Volume => "InvalidVolume.NotFound",
            IdKind::NetworkInterface => "InvalidNetworkInterfaceID.NotFound",
            IdKind::Snapshot => "InvalidSnapshot.NotFound",
            IdKind::Vpc => "InvalidVpcID.NotFound",
            IdKind::Subnet => "InvalidSubnetID.NotFound",
            IdKind::SecurityGroup => "InvalidGroup.NotFound",
            IdKind::SecurityGroupRule => "InvalidSecurityGroupRuleId.NotFound",
            IdKind::ElasticIp => "InvalidAllocationID.NotFound",
            IdKind::ElasticIpAssociation => "InvalidAssociationID.NotFound",
            IdKind::RouteTable => "InvalidRouteTableID.NotFound",
            IdKind::NetworkAcl => "InvalidNetworkAclID.NotFound",
            IdKind::InternetGateway => "InvalidInternetGatewayID.NotFound",
        }
    }

    /// The kind whose prefix `id` carries, if any; says nothing about the
    /// rest of the id (use [`parse`] for that).
    pub fn of(id: &str) -> Option<IdKind> {
        let (prefix, _) = id.split_once('-')?;
        IdKind::ALL.into_iter().find(|k| k.prefix() == prefix)
    }
}

/// Why an id is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// EC2's message for every `*.Malformed` error.
    #[error("Invalid id: \"{id}\"")]
    Malformed { kind: IdKind, id: String },
}

impl IdError {
    /// The EC2 error code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            IdError::Malformed { kind, .. } => kind.malformed_code(),
        }
    }
}

/// A fresh random id of `kind`, e.g. `i-0b22a22eec53b9321`.
pub fn generate(kind: IdKind) -> String {
    let mut rng = rand::thread_rng();
    let mut id = String::with_capacity(kind.prefix().len() + 1 + ID_HEX_LEN);
    id.push_str(kind.prefix());
    id.push('-');
    for _ in 0..ID_HEX_LEN {
        let nibble: u8 = rng.gen_range(0..16);
        id.push(hex_digit(nibble));
    }
    id
}

/// The id of an image whose content is fixed: `ami-` (or `aki-`) plus the
/// first 17 hex digits of sha256(name, 0, digest). Registering the same
/// image twice therefore gives the same id, so a re-import is a duplicate
/// rather than a second AMI; the zero byte keeps ("ab","c") and ("a","bc")
/// apart.
pub fn content_id(kind: IdKind, name: &str, digest: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0u8]);
    hasher.update(digest.as_bytes());
    let hash = hasher.finalize();
    let mut id = String::with_capacity(kind.prefix().len() + 1 + ID_HEX_LEN);
    id.push_str(kind.prefix());
    id.push('-');
    for byte in hash.iter() {
        for nibble in [byte >> 4, byte & 0xf] {
            if id.len() == kind.prefix().len() + 1 + ID_HEX_LEN {
                return id;
            }
            id.push(hex_digit(nibble));
        }
    }
    id
}

/// Checks that `id` is a well-formed id of `kind` (prefix, dash, 17 or 8
/// lowercase hex digits) and returns it unchanged. EC2 treats upper-case hex
/// as malformed, and so do we.
pub fn parse(kind: IdKind, id: &str) -> Result<&str, IdError> {
    let malformed = || IdError::Malformed {
        kind,
        id: id.to_string(),
    };
    let hex = id
        .strip_prefix(kind.prefix())
        .and_then(|rest| rest.strip_prefix('-'))
        .ok_or_else(malformed)?;
    let well_formed = (hex.len() == ID_HEX_LEN || hex.len() == LEGACY_ID_HEX_LEN)
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if well_formed {
        Ok(id)
    } else {
        Err(malformed())
    }
}

/// Whether `id` is a well-formed id of `kind`.
pub fn is_valid(kind: IdKind, id: &str) -> bool {
    parse(kind, id).is_ok()
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0xf)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_well_formed_for_every_kind() {
        for kind in IdKind::ALL {
            let id = generate(kind);
            assert_eq!(id.len(), kind.prefix().len() + 1 + ID_HEX_LEN, "{id}");
            assert_eq!(parse(kind, &id), Ok(id.as_str()));
            assert_eq!(IdKind::of(&id), Some(kind));
        }
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(generate(IdKind::Instance), generate(IdKind::Instance));
    }

    #[test]
    fn legacy_eight_digit_ids_are_well_formed() {
        assert!(is_valid(IdKind::Instance, "i-1a2b3c4d"));
        assert!(is_valid(IdKind::Image, "ami-1a2b3c4d"));
    }

    #[test]
    fn malformed_ids_are_rejected_with_the_kinds_code() {
        for bad in [
            "",
            "i-",
            "i",
            "i-123",
            "i-0123456789abcdef",   // 16 digits
            "i-0123456789abcdef01", // 18 digits
            "i-0123456789ABCDEF0",  // upper case
            "i-0123456789abcdefg",  // not hex
            "ami-0123456789abcdef0",
            "x-0123456789abcdef0",
            "i_0123456789abcdef0",
            " i-0123456789abcdef0",
        ] {
            let err = parse(IdKind::Instance, bad).expect_err(bad);
            assert_eq!(err.code(), "InvalidInstanceID.Malformed");
            assert_eq!(err.to_string(), format!("Invalid id: \"{bad}\""));
        }
    }

    #[test]
    fn content_ids_are_deterministic_and_depend_on_name_and_digest() {
        let a = content_id(IdKind::Image, "lab-minimal", "sha256:abc");
        assert_eq!(a, content_id(IdKind::Image, "lab-minimal", "sha256:abc"));
        assert!(is_valid(IdKind::Image, &a), "{a}");
        assert_ne!(a, content_id(IdKind::Image, "lab-minimal", "sha256:abd"));
        assert_ne!(a, content_id(IdKind::Image, "lab-minima", "lsha256:abc"));
        let k = content_id(IdKind::Kernel, "lab-minimal", "sha256:abc");
        assert!(k.starts_with("aki-") && is_valid(IdKind::Kernel, &k), "{k}");
    }

    #[test]
    fn content_id_is_the_sha256_prefix() {
        // Hex-encode the whole digest a different way and compare prefixes.
        let mut h = Sha256::new();
        h.update(b"a\0b");
        let full: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            content_id(IdKind::Image, "a", "b"),
            format!("ami-{}", &full[..17])
        );
    }

    #[test]
    fn kind_of_reads_only_the_prefix() {
        assert_eq!(IdKind::of("aki-0123"), Some(IdKind::Kernel));
        assert_eq!(IdKind::of("key-x"), Some(IdKind::KeyPair));
        assert_eq!(IdKind::of("sg-0123"), Some(IdKind::SecurityGroup));
        assert_eq!(IdKind::of("igw-0123"), Some(IdKind::InternetGateway));
        assert_eq!(IdKind::of("nat-0123"), None);
        assert_eq!(IdKind::of("nodash"), None);
    }
}
