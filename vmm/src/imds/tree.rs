//! EC2's metadata category tree, built from an [`InstanceMetadata`]
//! document: what `GET /latest/meta-data/…`, `/latest/user-data` and
//! `/latest/dynamic/…` answer, with EC2's directory listings (entries one
//! per line, directories with a trailing `/`, no final newline).
//!
//! The tree is rebuilt whole whenever the control plane replaces the
//! document (a few hundred bytes of work), so a lookup is a walk over
//! maps and never formats anything.

use std::collections::BTreeMap;

use ec2lab_vmm_api::metadata::{InstanceMetadata, InterfaceMetadata};
use serde::Serialize;

/// The API versions the root lists; each answers like `latest`, as EC2's
/// do for every category ec2lab serves.
pub const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "2024-04-11",
    "latest",
];

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A value.
    Leaf(Vec<u8>),
    /// A directory; `listing` replaces the generated listing where EC2
    /// writes its own (public-keys/ says `0=<key name>`).
    Dir {
        /// The entries, in EC2's (alphabetical) order.
        entries: BTreeMap<String, Node>,
        /// A listing other than the entry names.
        listing: Option<String>,
    },
}

impl Node {
    fn dir() -> Self {
        Node::Dir {
            entries: BTreeMap::new(),
            listing: None,
        }
    }

    /// Adds a leaf at `path` (segments separated by `/`), making the
    /// directories on the way.
    fn put(&mut self, path: &str, value: impl Into<Vec<u8>>) {
        self.put_node(path, Node::Leaf(value.into()));
    }

    fn put_node(&mut self, path: &str, node: Node) {
        let mut here = self;
        let mut segments = path.split('/').filter(|s| !s.is_empty()).peekable();
        while let Some(segment) = segments.next() {
            let Node::Dir { entries, .. } = here else {
                return;
            };
            if segments.peek().is_none() {
                entries.insert(segment.to_string(), node);
                return;
            }
            here = entries.entry(segment.to_string()).or_insert_with(Node::dir);
        }
    }

    /// The node at `segments`, if any.
    pub fn find<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Option<&Node> {
        let mut here = self;
        for segment in segments {
            match here {
                Node::Dir { entries, .. } => here = entries.get(segment)?,
                Node::Leaf(_) => return None,
            }
        }
        Some(here)
    }

    /// What a GET of this node answers: a leaf's value, a directory's
    /// listing.
    pub fn body(&self) -> Vec<u8> {
        match self {
            Node::Leaf(value) => value.clone(),
            Node::Dir {
                listing: Some(listing),
                ..
            } => listing.clone().into_bytes(),
            Node::Dir { entries, .. } => entries
                .iter()
                .map(|(name, node)| match node {
                    Node::Dir { .. } => format!("{name}/"),
                    Node::Leaf(_) => name.clone(),
                })
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
        }
    }
}

/// EC2's instance identity document, fields in EC2's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument<'a> {
    account_id: &'a str,
    architecture: &'a str,
    availability_zone: &'a str,
    billing_products: Option<()>,
    devpay_product_codes: Option<()>,
    marketplace_product_codes: Option<()>,
    image_id: &'a str,
    instance_id: &'a str,
    instance_type: &'a str,
    kernel_id: Option<()>,
    pending_time: &'a str,
    private_ip: &'a str,
    ramdisk_id: Option<()>,
    region: &'a str,
    version: &'a str,
}

/// The tree under one API version (`/latest/`): `meta-data/`,
/// `dynamic/` and, when the instance has user data, `user-data`, as it
/// stands at `now_unix` (seconds since the Unix epoch), which decides the
/// Instance Connect keys still served.
pub fn build(doc: &InstanceMetadata, now_unix: u64) -> Node {
    let mut root = Node::dir();
    let mut md = meta_data(doc);
    if let Some(keys) = managed_keys(doc, now_unix) {
        md.put_node("managed-ssh-keys", keys);
    }
    root.put_node("meta-data", md);
    let identity = IdentityDocument {
        account_id: &doc.account_id,
        architecture: &doc.architecture,
        availability_zone: &doc.availability_zone,
        billing_products: None,
        devpay_product_codes: None,
        marketplace_product_codes: None,
        image_id: &doc.ami_id,
        instance_id: &doc.instance_id,
        instance_type: &doc.instance_type,
        kernel_id: None,
        pending_time: &doc.pending_time,
        private_ip: &doc.local_ipv4,
        ramdisk_id: None,
        region: &doc.region,
        version: "2017-09-30",
    };
    // Serialising plain strings and unit options cannot fail.
    let identity = serde_json::to_string_pretty(&identity).unwrap_or_default();
    root.put("dynamic/instance-identity/document", identity);
    if let Some(user_data) = &doc.user_data {
        root.put("user-data", user_data.clone());
    }
    // EC2 lists a version's categories without the trailing slashes its
    // other directory listings carry.
    if let Node::Dir { entries, listing } = &mut root {
        *listing = Some(entries.keys().cloned().collect::<Vec<_>>().join("\n"));
    }
    root
}

fn meta_data(doc: &InstanceMetadata) -> Node {
    let mut md = Node::dir();
    md.put("ami-id", doc.ami_id.as_str());
    md.put("ami-launch-index", doc.ami_launch_index.to_string());
    md.put("ami-manifest-path", "(unknown)");
    md.put("block-device-mapping/ami", "/dev/xvda");
    md.put("block-device-mapping/root", "/dev/xvda");
    md.put("hostname", doc.local_hostname.as_str());
    md.put("instance-action", "none");
    md.put("instance-id", doc.instance_id.as_str());
    md.put("instance-life-cycle", "on-demand");
    md.put("instance-type", doc.instance_type.as_str());
    md.put("local-hostname", doc.local_hostname.as_str());
    md.put("local-ipv4", doc.local_ipv4.as_str());
    md.put("mac", doc.mac.as_str());
    md.put(
        "placement/availability-zone",
        doc.availability_zone.as_str(),
    );
    md.put(
        "placement/availability-zone-id",
        doc.availability_zone_id.as_str(),
    );
    md.put("placement/region", doc.region.as_str());
    md.put("profile", "default-hvm");
    if let Some(public) = &doc.public_ipv4 {
        md.put("public-ipv4", public.as_str());
    }
    if let Some(name) = &doc.public_hostname {
        md.put("public-hostname", name.as_str());
    }
    if !doc.public_keys.is_empty() {
        let mut keys = BTreeMap::new();
        let mut listing = Vec::new();
        for (index, key) in doc.public_keys.iter().enumerate() {
            let mut entry = Node::dir();
            entry.put("openssh-key", key.openssh.as_str());
            keys.insert(index.to_string(), entry);
            listing.push(format!("{index}={}", key.name));
        }
        md.put_node(
            "public-keys",
            Node::Dir {
                entries: keys,
                listing: Some(listing.join("\n")),
            },
        );
    }
    md.put("reservation-id", doc.reservation_id.as_str());
    md.put("security-groups", doc.security_groups.join("\n"));
    md.put("services/domain", "amazonaws.com");
    md.put("services/partition", "aws");
    for interface in &doc.interfaces {
        md.put_node(
            &format!("network/interfaces/macs/{}", interface.mac),
            interface_node(interface, &doc.account_id),
        );
    }
    if doc.options.instance_metadata_tags {
        let mut tags = Node::dir();
        for (key, value) in &doc.tags {
            // A key that is not one path segment cannot be served; EC2
            // refuses to enable metadata tags while such a key exists.
            if !key.is_empty() && !key.contains('/') && key != "." && key != ".." {
                tags.put(key, value.as_str());
            }
        }
        md.put_node("tags/instance", tags);
    }
    md
}

/// The first second at which a key served at `now_unix` stops being
/// served, so the caller knows when its tree goes stale.
pub fn next_expiry(doc: &InstanceMetadata, now_unix: u64) -> Option<u64> {
    doc.managed_keys
        .iter()
        .map(|k| k.expires_unix)
        .filter(|&t| t > now_unix)
        .min()
}

/// `managed-ssh-keys/active-keys/<user>`: each user's unexpired Instance
/// Connect keys, one OpenSSH line each, as EC2 serves them to its
/// `AuthorizedKeysCommand` (ec2lab does not sign them, so there is no
/// `signer-cert`). `None` when no key is active.
fn managed_keys(doc: &InstanceMetadata, now_unix: u64) -> Option<Node> {
    let mut by_user: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for key in &doc.managed_keys {
        // A user that is not one path segment cannot be served (the API
        // refuses such names before they get here).
        let servable =
            !key.user.is_empty() && !key.user.contains('/') && key.user != "." && key.user != "..";
        if key.expires_unix > now_unix && servable {
            by_user
                .entry(key.user.as_str())
                .or_default()
                .push(key.openssh.trim());
        }
    }
    if by_user.is_empty() {
        return None;
    }
    let mut node = Node::dir();
    for (user, keys) in by_user {
        node.put(&format!("active-keys/{user}"), keys.join("\n"));
    }
    Some(node)
}

fn interface_node(interface: &InterfaceMetadata, owner: &str) -> Node {
    let mut node = Node::dir();
    node.put("device-number", interface.device_number.to_string());
    node.put("interface-id", interface.interface_id.as_str());
    node.put("local-hostname", interface.local_hostname.as_str());
    node.put("local-ipv4s", interface.local_ipv4s.join("\n"));
    node.put("mac", interface.mac.as_str());
    node.put("owner-id", owner);
    if let Some(public) = &interface.public_ipv4 {
        node.put("public-ipv4s", public.as_str());
        if let Some(private) = interface.local_ipv4s.first() {
            node.put(&format!("ipv4-associations/{public}"), private.as_str());
        }
    }
    if let Some(name) = &interface.public_hostname {
        node.put("public-hostname", name.as_str());
    }
    node.put(
        "security-group-ids",
        interface.security_group_ids.join("\n"),
    );
    node.put("security-groups", interface.security_groups.join("\n"));
    node.put("subnet-id", interface.subnet_id.as_str());
    node.put(
        "subnet-ipv4-cidr-block",
        interface.subnet_ipv4_cidr_block.as_str(),
    );
    node.put("vpc-id", interface.vpc_id.as_str());
    if let Some(primary) = interface.vpc_ipv4_cidr_blocks.first() {
        node.put("vpc-ipv4-cidr-block", primary.as_str());
    }
    node.put(
        "vpc-ipv4-cidr-blocks",
        interface.vpc_ipv4_cidr_blocks.join("\n"),
    );
    node
}
