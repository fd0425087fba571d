//! Domain types with EC2 names: ids, instance types, instance states and
//! their legal transitions, filters.
//!
//! These are plain data: the API renders them, the repository (`db`) stores
//! them, and neither adds meaning of its own. Field names follow EC2's
//! (`image_id` for `imageId`), so a reader of the botocore model finds each
//! field where they expect it.

/// Gives a fieldless enum its EC2 names from one table: `ALL` (every
/// variant, in table order), `name` and `from_name`.
///
/// Both directions are generated from the same list, so they cannot
/// disagree: `name`'s match is exhaustive, so a variant without a name does
/// not compile, and a name listed twice is an unreachable pattern in
/// `from_name`, which `-D warnings` refuses. Defined before the submodules
/// so that `state` can use it too.
macro_rules! ec2_names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in the order of its name table.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];

            /// The name EC2 uses for this value.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }

            /// The value EC2 calls `name` (exact spelling, case-sensitive).
            pub fn from_name(name: &str) -> Option<$ty> {
                match name {
                    $($name => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

pub mod address;
pub mod filter;
pub mod ids;
pub mod instance_types;
pub mod routing;
pub mod security_group;
pub mod state;
pub mod status;
pub mod vpc;
pub mod zones;

use std::collections::BTreeMap;
use std::path::PathBuf;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub use filter::{Filter, FilterError, Filterable, Page, PageRequest};
pub use ids::IdKind;
pub use state::{InstanceState, ShutdownBehavior, StateReason};

/// The region the lab is (`ec2lab serve` answers as us-east-1), whose
/// zones the default VPC's subnets are in.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The availability zone every instance is placed in: one host, one zone.
pub const DEFAULT_AVAILABILITY_ZONE: &str = "us-east-1a";

/// The account that owns everything (EC2's `ownerId`). There is one user.
pub const DEFAULT_OWNER_ID: &str = "000000000000";

/// Tags of one resource: keys are unique per resource, and a sorted map
/// renders in a stable order.
pub type Tags = BTreeMap<String, String>;

/// EC2's limit of tags on one resource (user tags; ec2lab has no `aws:`
/// tags). CreateTags and launches answer `TagLimitExceeded` beyond it.
pub const MAX_TAGS_PER_RESOURCE: usize = 50;

/// `2026-11-25T23:00:00.000Z`: how EC2 writes `launchTime` and friends, and
/// what the `launch-time` filter matches against.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// `2026-11-25 23:00:00 GMT`: the form inside `stateTransitionReason`.
pub fn format_gmt(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} GMT",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses an RFC 3339 timestamp (what clients send in time filters).
pub fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// IMDSv2 `HttpTokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpTokens {
    #[default]
    Optional,
    Required,
}

ec2_names! {
    HttpTokens {
        Optional => "optional",
        Required => "required",
    }
}

/// `HttpEndpoint`, `InstanceMetadataTags`: enabled or disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    Enabled,
    Disabled,
}

ec2_names! {
    Toggle {
        Enabled => "enabled",
        Disabled => "disabled",
    }
}

impl Toggle {
    pub fn is_enabled(self) -> bool {
        self == Toggle::Enabled
    }
}

/// `metadataOptions`: what the instance's IMDS allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataOptions {
    pub http_tokens: HttpTokens,
    pub http_endpoint: Toggle,
    /// 1–64; EC2's default is 1 (2 on some AMIs); the token reply TTL.
    pub http_put_response_hop_limit: u8,
    pub instance_metadata_tags: Toggle,
}

impl Default for MetadataOptions {
    fn default() -> Self {
        MetadataOptions {
            http_tokens: HttpTokens::Optional,
            http_endpoint: Toggle::Enabled,
            http_put_response_hop_limit: 1,
            instance_metadata_tags: Toggle::Disabled,
        }
    }
}

/// `CpuCredits` of a burstable (T-family) instance: whether it may burst
/// beyond its earned credits. ec2lab stores and reports the choice but
/// meters no credits: a guest gets its vCPUs whatever it chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuCredits {
    Standard,
    Unlimited,
}

ec2_names! {
    CpuCredits {
        Standard => "standard",
        Unlimited => "unlimited",
    }
}

impl CpuCredits {
    /// EC2's default for a type: `standard` for T2, `unlimited` for the
    /// later T families; `None` for a type that does not burst.
    pub fn default_for(instance_type: &str) -> Option<CpuCredits> {
        let burstable = instance_types::lookup(instance_type).is_some_and(|t| t.burstable);
        match instance_type {
            _ if !burstable => None,
            t if t.starts_with("t2.") => Some(CpuCredits::Standard),
            _ => Some(CpuCredits::Unlimited),
        }
    }
}

/// The instance's root EBS volume, a sparse or reflinked copy of the AMI's
/// root image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootVolume {
    pub volume_id: String,
    pub size_gib: u32,
    pub delete_on_termination: bool,
    /// The file on the host backing the volume.
    pub path: PathBuf,
    /// Its own tags (RunInstances' `volume` tag specifications).
    pub tags: Tags,
}

/// The running VMM process of an instance, for supervision and the
/// per-VMM control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmHandle {
    pub pid: u32,
    pub api_sock: PathBuf,
    pub serial_log: PathBuf,
}

/// `placement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub availability_zone: String,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            availability_zone: DEFAULT_AVAILABILITY_ZONE.to_string(),
        }
    }
}

/// One EC2 instance (`instancesSet/item`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `instanceId`.
    pub id: String,
    pub reservation_id: String,
    pub image_id: String,
    /// The AKI the AMI names, if it names one.
    pub kernel_id: Option<String>,
    pub instance_type: String,
    pub key_name: Option<String>,
    pub state: InstanceState,
    pub state_reason: Option<StateReason>,
    /// `reason` in the XML; empty when there is none.
    pub state_transition_reason: String,
    /// Reset on every start from stopped, as in EC2.
    pub launch_time: OffsetDateTime,
    /// Raw bytes (the API base64-decodes `UserData`).
    pub user_data: Option<Vec<u8>>,
    pub tags: Tags,
    pub shutdown_behavior: ShutdownBehavior,
    pub disable_api_termination: bool,
    /// Stop protection: StopInstances refuses the instance while set.
    pub disable_api_stop: bool,
    /// The credit option chosen at launch or since, if any; a burstable
    /// type without one uses [`CpuCredits::default_for`]. Kept when the
    /// type changes, as EC2 keeps it.
    pub cpu_credits: Option<CpuCredits>,
    pub metadata_options: MetadataOptions,
    pub hibernation_configured: bool,
    pub root_volume: RootVolume,
    /// The RunInstances `ClientToken`, shared by the reservation.
    pub client_token: Option<String>,
    pub ami_launch_index: u32,
    pub placement: Placement,
    /// Present while a VMM process exists for the instance.
    pub vmm: Option<VmmHandle>,
    /// Where GetConsoleOutput reads from.
    pub console_output_path: Option<PathBuf>,
    /// When it entered `terminated`; garbage collection counts from here.
    pub terminated_at: Option<OffsetDateTime>,
    /// Attached ENIs by device index: one (index 0) from launch until
    /// termination deletes it, none for a terminated instance (EC2 then
    /// shows no VPC, subnet or address either).
    pub network_interfaces: Vec<vpc::NetworkInterface>,
}

impl Instance {
    /// The primary interface (device index 0), which gives the instance
    /// its VPC, subnet, private address and security groups.
    pub fn primary_interface(&self) -> Option<&vpc::NetworkInterface> {
        self.network_interfaces
            .iter()
            .find(|n| n.attachment.as_ref().is_some_and(|a| a.device_index == 0))
    }

    /// The credit option in force, or `None` when the instance's type does
    /// not burst (EC2 then refuses to talk about credits).
    pub fn effective_cpu_credits(&self) -> Option<CpuCredits> {
        let default = CpuCredits::default_for(&self.instance_type)?;
        Some(self.cpu_credits.unwrap_or(default))
    }
}

/// Filter names DescribeInstances accepts, besides `tag:<key>`.
pub const INSTANCE_FILTERS: &[&str] = &[
    "instance-id",
    "reservation-id",
    "instance-state-name",
    "instance-state-code",
    "instance-type",
    "image-id",
    "kernel-id",
    "key-name",
    "launch-time",
    "launch-index",
    "availability-zone",
    "client-token",
    "owner-id",
    "architecture",
    "root-device-type",
    "root-device-name",
    "hypervisor",
    "virtualization-type",
    "tenancy",
    "reason",
    "state-reason-code",
    "state-reason-message",
    "block-device-mapping.device-name",
    "block-device-mapping.volume-id",
    "block-device-mapping.delete-on-termination",
    "block-device-mapping.status",
    "metadata-options.http-tokens",
    "metadata-options.http-endpoint",
    "metadata-options.http-put-response-hop-limit",
    "metadata-options.instance-metadata-tags",
    "hibernation-options.configured",
    "vpc-id",
    "subnet-id",
    "private-ip-address",
    "private-dns-name",
    "source-dest-check",
    "network-interface.network-interface-id",
    "network-interface.subnet-id",
    "network-interface.vpc-id",
    "network-interface.mac-address",
    "network-interface.private-dns-name",
    "network-interface.status",
    "network-interface.attachment.device-index",
    "network-interface.addresses.private-ip-address",
    "network-interface.group-id",
    "network-interface.group-name",
    "instance.group-id",
    "instance.group-name",
    "tag-key",
    "tag-value",
];

/// The device name every root volume is attached as.
pub const ROOT_DEVICE_NAME: &str = "/dev/xvda";

fn one(v: impl Into<String>) -> Option<Vec<String>> {
    Some(vec![v.into()])
}

fn opt(v: &Option<String>) -> Option<Vec<String>> {
    Some(v.iter().cloned().collect())
}

/// `tag:K`, `tag-key`, `tag-value` for any tagged resource.
fn tag_filter_values(tags: &Tags, name: &str) -> Option<Vec<String>> {
    if let Some(key) = name.strip_prefix("tag:") {
        return Some(tags.get(key).cloned().into_iter().collect());
    }
    match name {
        "tag-key" => Some(tags.keys().cloned().collect()),
        "tag-value" => Some(tags.values().cloned().collect()),
        _ => None,
    }
}

fn is_tag_filter(name: &str) -> bool {
    matches!(name, "tag-key" | "tag-value") || name.starts_with("tag:")
}

impl Filterable for Instance {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        if is_tag_filter(name) {
            return tag_filter_values(&self.tags, name);
        }
        let b = |v: bool| one(v.to_string());
        match name {
            "instance-id" => one(&self.id),
            "reservation-id" => one(&self.reservation_id),
            "instance-state-name" => one(self.state.name()),
            "instance-state-code" => one(self.state.code().to_string()),
            "instance-type" => one(&self.instance_type),
            "image-id" => one(&self.image_id),
            "kernel-id" => opt(&self.kernel_id),
            "key-name" => opt(&self.key_name),
            "launch-time" => one(format_timestamp(self.launch_time)),
            "launch-index" => one(self.ami_launch_index.to_string()),
            "availability-zone" => one(&self.placement.availability_zone),
            "client-token" => opt(&self.client_token),
            "owner-id" => one(DEFAULT_OWNER_ID),
            "architecture" => one("x86_64"),
            "root-device-type" => one("ebs"),
            "root-device-name" | "block-device-mapping.device-name" => one(ROOT_DEVICE_NAME),
            "hypervisor" => one("xen"),
            "virtualization-type" => one("hvm"),
            "tenancy" => one("default"),
            "reason" => Some(
                Some(self.state_transition_reason.clone())
                    .filter(|r| !r.is_empty())
                    .into_iter()
                    .collect(),
            ),
            "state-reason-code" => Some(self.state_reason.iter().map(|r| r.code.clone()).collect()),
            "state-reason-message" => Some(
                self.state_reason
                    .iter()
                    .map(|r| r.message.clone())
                    .collect(),
            ),
            "block-device-mapping.volume-id" => one(&self.root_volume.volume_id),
            "block-device-mapping.delete-on-termination" => {
                b(self.root_volume.delete_on_termination)
            }
            "block-device-mapping.status" => one(if self.state == InstanceState::Terminated {
                "detached"
            } else {
                "attached"
            }),
            "metadata-options.http-tokens" => one(self.metadata_options.http_tokens.name()),
            "metadata-options.http-endpoint" => one(self.metadata_options.http_endpoint.name()),
            "metadata-options.http-put-response-hop-limit" => one(self
                .metadata_options
                .http_put_response_hop_limit
                .to_string()),
            "metadata-options.instance-metadata-tags" => {
                one(self.metadata_options.instance_metadata_tags.name())
            }
            "hibernation-options.configured" => b(self.hibernation_configured),
            _ => self.network_filter_values(name),
        }
    }

    fn knows_filter(name: &str) -> bool {
        is_tag_filter(name) || INSTANCE_FILTERS.contains(&name)
    }
}

impl Instance {
    /// The networking filters of DescribeInstances: the primary
    /// interface's for the instance-level names, every interface's for the
    /// `network-interface.*` ones.
    fn network_filter_values(&self, name: &str) -> Option<Vec<String>> {
        let primary = |f: &dyn Fn(&vpc::NetworkInterface) -> Vec<String>| {
            Some(self.primary_interface().map(f).unwrap_or_default())
        };
        let each = |f: &dyn Fn(&vpc::NetworkInterface) -> Vec<String>| {
            Some(self.network_interfaces.iter().flat_map(f).collect())
        };
        let groups = |n: &vpc::NetworkInterface| -> Vec<String> {
            n.groups.iter().map(|g| g.group_id.clone()).collect()
        };
        let group_names = |n: &vpc::NetworkInterface| -> Vec<String> {
            n.groups.iter().map(|g| g.group_name.clone()).collect()
        };
        match name {
            "vpc-id" => primary(&|n| vec![n.vpc_id.clone()]),
            "subnet-id" => primary(&|n| vec![n.subnet_id.clone()]),
            "private-ip-address" => primary(&|n| vec![n.private_ip_address.to_string()]),
            "private-dns-name" => {
                primary(&|n| vec![vpc::private_dns_name(n.private_ip_address, DEFAULT_REGION)])
            }
            "source-dest-check" => primary(&|n| vec![n.source_dest_check.to_string()]),
            "instance.group-id" => primary(&groups),
            "instance.group-name" => primary(&group_names),
            "network-interface.network-interface-id" => each(&|n| vec![n.id.clone()]),
            "network-interface.subnet-id" => each(&|n| vec![n.subnet_id.clone()]),
            "network-interface.vpc-id" => each(&|n| vec![n.vpc_id.clone()]),
            "network-interface.mac-address" => each(&|n| vec![n.mac_address.clone()]),
            "network-interface.private-dns-name" => {
                each(&|n| vec![vpc::private_dns_name(n.private_ip_address, DEFAULT_REGION)])
            }
            "network-interface.status" => each(&|n| vec![n.status().to_string()]),
            "network-interface.attachment.device-index" => each(&|n| {
                n.attachment
                    .iter()
                    .map(|a| a.device_index.to_string())
                    .collect()
            }),
            "network-interface.addresses.private-ip-address" => {
                each(&|n| vec![n.private_ip_address.to_string()])
            }
            "network-interface.group-id" => each(&groups),
            "network-interface.group-name" => each(&group_names),
            _ => None,
        }
    }
}

/// A RunInstances call's result: the instances it launched together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: String,
    pub owner_id: String,
    /// The RunInstances `ClientToken`, for idempotent retries.
    pub client_token: Option<String>,
    /// A digest of what the RunInstances with that token asked for, so a
    /// retry that asks for something else is told so
    /// (`IdempotentParameterMismatch`). `None` when unknown (reservations
    /// older than the digest, or listed by DescribeInstances).
    pub launch_digest: Option<String>,
    /// In `ami_launch_index` order.
    pub instances: Vec<Instance>,
}

/// Groups instances into reservations for DescribeInstances, keeping the
/// order in which each reservation first appears. A page boundary may split
/// a reservation; EC2 then shows it on both pages, and so do we.
pub fn group_into_reservations(instances: Vec<Instance>, owner_id: &str) -> Vec<Reservation> {
    let mut out: Vec<Reservation> = Vec::new();
    for instance in instances {
        match out.iter_mut().find(|r| r.id == instance.reservation_id) {
            Some(r) => r.instances.push(instance),
            None => out.push(Reservation {
                id: instance.reservation_id.clone(),
                owner_id: owner_id.to_string(),
                client_token: instance.client_token.clone(),
                launch_digest: None,
                instances: vec![instance],
            }),
        }
    }
    out
}

/// `keyType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ed25519,
}

ec2_names! {
    KeyType {
        Rsa => "rsa",
        Ed25519 => "ed25519",
    }
}

/// A key pair: only the public half is stored (CreateKeyPair returns the
/// private half once and forgets it, as EC2 does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// `keyPairId`, `key-…`.
    pub id: String,
    /// `keyName`, unique.
    pub name: String,
    pub key_type: KeyType,
    /// `keyFingerprint`, in the form EC2 uses for the key's origin.
    pub fingerprint: String,
    /// OpenSSH `authorized_keys` line.
    pub public_key: String,
    pub created: OffsetDateTime,
    pub tags: Tags,
}

/// Filter names DescribeKeyPairs accepts, besides `tag:<key>`.
pub const KEY_PAIR_FILTERS: &[&str] = &[
    "key-pair-id",
    "key-name",
    "fingerprint",
    "key-type",
    "tag-key",
    "tag-value",
];

impl Filterable for KeyPair {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        if is_tag_filter(name) {
            return tag_filter_values(&self.tags, name);
        }
        match name {
            "key-pair-id" => one(&self.id),
            "key-name" => one(&self.name),
            "fingerprint" => one(&self.fingerprint),
            "key-type" => one(self.key_type.name()),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        is_tag_filter(name) || KEY_PAIR_FILTERS.contains(&name)
    }
}

/// `imageType`: AMIs boot, AKIs are kernels that AMIs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Machine,
    Kernel,
}

ec2_names! {
    ImageKind {
        Machine => "machine",
        Kernel => "kernel",
    }
}

impl ImageKind {
    /// The id prefix images of this kind carry.
    pub fn id_kind(self) -> IdKind {
        match self {
            ImageKind::Machine => IdKind::Image,
            ImageKind::Kernel => IdKind::Kernel,
        }
    }
}

/// `imageState`. Deregistered images stay visible for a while, as in EC2,
/// so that instances launched from them still describe their image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageState {
    Available,
    Deregistered,
}

ec2_names! {
    ImageState {
        Available => "available",
        Deregistered => "deregistered",
    }
}

/// An AMI or AKI: a directory with `manifest.json` and the files it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `ami-…` / `aki-…`, from [`ids::content_id`] over name and digest.
    pub id: String,
    pub name: String,
    pub kind: ImageKind,
    /// The image directory on the host.
    pub dir: PathBuf,
    pub description: Option<String>,
    /// From the manifest: always `x86_64` today.
    pub architecture: String,
    /// From the manifest: the AKI a machine image boots with.
    pub kernel_id: Option<String>,
    /// From the manifest: `uefi`, `legacy-bios` or ec2lab's `direct`.
    pub boot_mode: Option<String>,
    /// From the manifest: the user SSH keys go to (`ec2-user`, `admin`).
    pub default_user: Option<String>,
    /// From the manifest: the root image's size, the smallest root volume.
    pub root_size_gib: Option<u32>,
    /// From the manifest: content digest of the image files.
    pub digest: String,
    pub owner_id: String,
    pub state: ImageState,
    pub created: OffsetDateTime,
    pub deregistered: Option<OffsetDateTime>,
    pub tags: Tags,
}

/// Filter names DescribeImages accepts, besides `tag:<key>`.
pub const IMAGE_FILTERS: &[&str] = &[
    "image-id",
    "name",
    "description",
    "image-type",
    "state",
    "owner-id",
    "architecture",
    "kernel-id",
    "boot-mode",
    "is-public",
    "root-device-type",
    "root-device-name",
    "virtualization-type",
    "hypervisor",
    "creation-date",
    "tag-key",
    "tag-value",
];

impl Filterable for Image {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        if is_tag_filter(name) {
            return tag_filter_values(&self.tags, name);
        }
        match name {
            "image-id" => one(&self.id),
            "name" => one(&self.name),
            "description" => opt(&self.description),
            "image-type" => one(self.kind.name()),
            "state" => one(self.state.name()),
            "owner-id" => one(&self.owner_id),
            "architecture" => one(&self.architecture),
            "kernel-id" => opt(&self.kernel_id),
            "boot-mode" => opt(&self.boot_mode),
            "is-public" => one("false"),
            "root-device-type" => one("ebs"),
            "root-device-name" => one(ROOT_DEVICE_NAME),
            "virtualization-type" => one("hvm"),
            "hypervisor" => one("xen"),
            "creation-date" => one(format_timestamp(self.created)),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        is_tag_filter(name) || IMAGE_FILTERS.contains(&name)
    }
}

/// One tag as DescribeTags lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub resource_id: String,
    pub key: String,
    pub value: String,
}

impl Tag {
    /// `resourceType`, from the id's prefix.
    pub fn resource_type(&self) -> &'static str {
        IdKind::of(&self.resource_id)
            .map(IdKind::resource_type)
            .unwrap_or("unknown")
    }
}

/// Filter names DescribeTags accepts.
pub const TAG_FILTERS: &[&str] = &["resource-id", "resource-type", "key", "value"];

impl Filterable for Tag {
    fn filter_values(&self, name: &str) -> Option<Vec<String>> {
        match name {
            "resource-id" => one(&self.resource_id),
            "resource-type" => one(self.resource_type()),
            "key" => one(&self.key),
            "value" => one(&self.value),
            _ => None,
        }
    }

    fn knows_filter(name: &str) -> bool {
        TAG_FILTERS.contains(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t2_defaults_to_standard_credits_later_t_families_to_unlimited_others_to_none() {
        assert_eq!(
            CpuCredits::default_for("t2.micro"),
            Some(CpuCredits::Standard)
        );
        assert_eq!(
            CpuCredits::default_for("t3.micro"),
            Some(CpuCredits::Unlimited)
        );
        assert_eq!(CpuCredits::default_for("lab.nano"), None);
        assert_eq!(CpuCredits::default_for("no.such"), None);
    }

    fn instance() -> Instance {
        Instance {
            id: "i-0123456789abcdef0".into(),
            reservation_id: "r-0123456789abcdef0".into(),
            image_id: "ami-0123456789abcdef0".into(),
            kernel_id: None,
            instance_type: "t3.micro".into(),
            key_name: Some("laptop".into()),
            state: InstanceState::Running,
            state_reason: None,
            state_transition_reason: String::new(),
            launch_time: time::macros::datetime!(2026-11-25 23:00:00.25 UTC),
            user_data: None,
            tags: Tags::from([("Name".to_string(), "web".to_string())]),
            shutdown_behavior: ShutdownBehavior::Stop,
            disable_api_termination: false,
            cpu_credits: None,
            disable_api_stop: false,
            metadata_options: MetadataOptions::default(),
            hibernation_configured: false,
            root_volume: RootVolume {
                volume_id: "vol-0123456789abcdef0".into(),
                size_gib: 8,
                delete_on_termination: true,
                path: "/tmp/root".into(),
                tags: Tags::new(),
            },
            client_token: None,
            ami_launch_index: 0,
            placement: Placement::default(),
            vmm: None,
            console_output_path: None,
            terminated_at: None,
            network_interfaces: Vec::new(),
        }
    }

    /// `from_name` inverts `name` over every variant of `all`, and refuses
    /// what EC2 would not send: another case, padding, the empty string.
    fn assert_names_round_trip<T: Copy + PartialEq + std::fmt::Debug>(
        all: &[T],
        name: fn(T) -> &'static str,
        from_name: fn(&str) -> Option<T>,
    ) {
        for &v in all {
            let n = name(v);
            assert_eq!(from_name(n), Some(v), "{n}");
            assert_eq!(from_name(&n.to_uppercase()), None, "{n}");
            assert_eq!(from_name(&format!(" {n}")), None, "{n}");
        }
        assert_eq!(from_name(""), None);
    }

    #[test]
    fn names_round_trip_for_every_variant() {
        assert_names_round_trip(&HttpTokens::ALL, HttpTokens::name, HttpTokens::from_name);
        assert_names_round_trip(&Toggle::ALL, Toggle::name, Toggle::from_name);
        assert_names_round_trip(&KeyType::ALL, KeyType::name, KeyType::from_name);
        assert_names_round_trip(&ImageKind::ALL, ImageKind::name, ImageKind::from_name);
        assert_names_round_trip(&ImageState::ALL, ImageState::name, ImageState::from_name);
        assert_names_round_trip(
            &InstanceState::ALL,
            InstanceState::name,
            InstanceState::from_name,
        );
        assert_names_round_trip(
            &ShutdownBehavior::ALL,
            ShutdownBehavior::name,
            ShutdownBehavior::from_name,
        );
    }

    #[test]
    fn timestamps_render_like_ec2() {
        let t = time::macros::datetime!(2026-11-25 23:00:00.25 UTC);
        assert_eq!(format_timestamp(t), "2026-11-25T23:00:00.250Z");
        assert_eq!(format_gmt(t), "2026-11-25 23:00:00 GMT");
        assert_eq!(parse_timestamp("2026-11-25T23:00:00.250Z"), Some(t));
    }

    #[test]
    fn every_listed_instance_filter_is_answered() {
        let i = instance();
        for name in INSTANCE_FILTERS {
            assert!(i.filter_values(name).is_some(), "{name}");
            assert!(Instance::knows_filter(name), "{name}");
        }
        assert!(i.filter_values("nope").is_none());
        assert!(!Instance::knows_filter("nope"));
        assert_eq!(i.filter_values("tag:Name"), Some(vec!["web".to_string()]));
        assert_eq!(i.filter_values("tag:missing"), Some(vec![]));
        assert_eq!(
            i.filter_values("key-name"),
            Some(vec!["laptop".to_string()])
        );
        assert_eq!(
            i.filter_values("instance-state-code"),
            Some(vec!["16".to_string()])
        );
    }

    #[test]
    fn tags_know_their_resource_type() {
        let t = Tag {
            resource_id: "ami-0123456789abcdef0".into(),
            key: "k".into(),
            value: "v".into(),
        };
        assert_eq!(t.resource_type(), "image");
        assert_eq!(t.filter_values("resource-type"), Some(vec!["image".into()]));
    }

    #[test]
    fn reservations_group_in_first_seen_order() {
        let mut a = instance();
        let mut b = instance();
        b.reservation_id = "r-b".into();
        b.id = "i-b".into();
        let mut c = instance();
        c.id = "i-c".into();
        a.id = "i-a".into();
        let rs = group_into_reservations(vec![a, b, c], DEFAULT_OWNER_ID);
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].instances.len(), 2);
        assert_eq!(rs[1].id, "r-b");
    }
}
