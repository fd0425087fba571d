//! The instance metadata document an instance's VMM serves at
//! 169.254.169.254, composed from the store when the instance boots: its
//! identity, placement, primary interface and addresses, groups, launch
//! key, user data, tags and metadata options.
//!
//! The VMM turns the document into EC2's category tree; this module only
//! gathers facts, so no metadata path is spelled in the control plane.

use ec2lab_vmm_api::metadata::{
    HttpTokens as ServedTokens, InstanceMetadata, InterfaceMetadata, MetadataOptions, PublicKey,
};

use std::sync::Arc;

use ec2lab_vmm_api::api::ApiRequest;

use crate::db::{Db, DbError, InstanceQuery, NetworkQuery};
use crate::lifecycle::Lab;
use crate::model::vpc::{private_dns_name, public_dns_name, NetworkInterface};
use crate::model::InstanceState;
use crate::model::{
    format_timestamp, zones, HttpTokens, Instance, DEFAULT_OWNER_ID, DEFAULT_REGION,
};

/// The document for `instance` as the store holds it now; `None` when it
/// has no network interface (nothing could reach the service).
pub fn document(db: &Db, instance: &Instance) -> Result<Option<InstanceMetadata>, DbError> {
    let mut enis: Vec<&NetworkInterface> = instance.network_interfaces.iter().collect();
    enis.sort_by_key(|n| n.attachment.as_ref().map_or(u32::MAX, |a| a.device_index));
    let Some(primary) = enis.first() else {
        return Ok(None);
    };
    let vpcs = db.list_vpcs(&NetworkQuery::default())?.items;
    let mut interfaces = Vec::with_capacity(enis.len());
    for eni in &enis {
        let subnet = db.get_subnet(&eni.subnet_id)?;
        let vpc_cidrs = vpcs
            .iter()
            .filter(|v| v.id == eni.vpc_id)
            .map(|v| v.cidr_block.clone())
            .collect();
        interfaces.push(InterfaceMetadata {
            mac: eni.mac_address.to_ascii_lowercase(),
            device_number: eni.attachment.as_ref().map_or(0, |a| a.device_index),
            interface_id: eni.id.clone(),
            local_hostname: private_dns_name(eni.private_ip_address, DEFAULT_REGION),
            local_ipv4s: vec![eni.private_ip_address.to_string()],
            public_ipv4: eni.public_ip.map(|ip| ip.to_string()),
            public_hostname: eni.public_ip.map(|ip| public_dns_name(ip, DEFAULT_REGION)),
            security_group_ids: eni.groups.iter().map(|g| g.group_id.clone()).collect(),
            security_groups: eni.groups.iter().map(|g| g.group_name.clone()).collect(),
            subnet_id: eni.subnet_id.clone(),
            subnet_ipv4_cidr_block: subnet.cidr_block,
            vpc_id: eni.vpc_id.clone(),
            vpc_ipv4_cidr_blocks: vpc_cidrs,
        });
    }
    // A key pair deleted since the launch is still the instance's key on
    // EC2; ec2lab keeps only the name, so such a key is left out.
    let public_keys = match &instance.key_name {
        Some(name) => match db.get_key_pair_by_name(name) {
            Ok(key) => vec![PublicKey {
                name: key.name,
                openssh: key.public_key,
            }],
            Err(DbError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        },
        None => Vec::new(),
    };
    let zone = &instance.placement.availability_zone;
    let zone_id = zones::zones(DEFAULT_REGION)
        .into_iter()
        .find(|z| &z.name == zone)
        .map(|z| z.id)
        .unwrap_or_default();
    let options = &instance.metadata_options;
    Ok(Some(InstanceMetadata {
        instance_id: instance.id.clone(),
        ami_id: instance.image_id.clone(),
        ami_launch_index: instance.ami_launch_index,
        instance_type: instance.instance_type.clone(),
        reservation_id: instance.reservation_id.clone(),
        account_id: DEFAULT_OWNER_ID.to_string(),
        region: DEFAULT_REGION.to_string(),
        availability_zone: zone.clone(),
        availability_zone_id: zone_id,
        architecture: "x86_64".to_string(),
        pending_time: format_timestamp(instance.launch_time),
        local_hostname: private_dns_name(primary.private_ip_address, DEFAULT_REGION),
        local_ipv4: primary.private_ip_address.to_string(),
        mac: primary.mac_address.to_ascii_lowercase(),
        public_ipv4: primary.public_ip.map(|ip| ip.to_string()),
        public_hostname: primary
            .public_ip
            .map(|ip| public_dns_name(ip, DEFAULT_REGION)),
        security_groups: primary
            .groups
            .iter()
            .map(|g| g.group_name.clone())
            .collect(),
        public_keys,
        managed_keys: Vec::new(),
        user_data: instance.user_data.clone(),
        tags: instance.tags.clone(),
        interfaces,
        options: MetadataOptions {
            http_tokens: match options.http_tokens {
                HttpTokens::Optional => ServedTokens::Optional,
                HttpTokens::Required => ServedTokens::Required,
            },
            hop_limit: options.http_put_response_hop_limit,
            http_endpoint: options.http_endpoint.is_enabled(),
            instance_metadata_tags: options.instance_metadata_tags.is_enabled(),
        },
    }))
}

impl Lab {
    /// [`document`] with the Instance Connect keys still valid now.
    pub fn metadata_document(
        &self,
        instance: &Instance,
    ) -> Result<Option<InstanceMetadata>, DbError> {
        let mut doc = document(&self.db, instance)?;
        if let Some(doc) = doc.as_mut() {
            doc.managed_keys = self
                .connect_keys
                .active(&instance.id, std::time::SystemTime::now());
        }
        Ok(doc)
    }

    /// Brings every running instance's metadata service up to date with
    /// the store (after a public address, group, tag or metadata-option
    /// change), in the background: EC2's metadata is eventually consistent
    /// too. Each push composes its documents from the store under one
    /// lock, so the last one to run leaves the newest state everywhere, and
    /// only documents that changed are sent.
    pub fn refresh_metadata(self: &Arc<Self>) {
        let lab = Arc::clone(self);
        self.runtime.spawn(async move {
            let mut pushed = lab.metadata_pushed.lock().await;
            let running = match lab.db.list_instances(&InstanceQuery::default()) {
                Ok(page) => page.items,
                Err(e) => {
                    log::error!("metadata refresh: {e}");
                    return;
                }
            };
            // Only instances with a VMM serve anything.
            let running: Vec<_> = running
                .into_iter()
                .filter(|i| i.state == InstanceState::Running && i.vmm.is_some())
                .collect();
            pushed.retain(|id, _| running.iter().any(|i| &i.id == id));
            for instance in &running {
                let doc = match lab.metadata_document(instance) {
                    Ok(Some(doc)) => doc,
                    Ok(None) => continue,
                    Err(e) => {
                        log::error!("{}: metadata: {e}", instance.id);
                        continue;
                    }
                };
                if pushed.get(&instance.id) == Some(&doc) {
                    continue;
                }
                let sock = lab.supervisor.files(&instance.id).api_sock();
                let request = ApiRequest::SetMetadata(Box::new(doc.clone()));
                match crate::supervisor::vmm_api(&sock, request).await {
                    Ok((204, _)) => {
                        pushed.insert(instance.id.clone(), doc);
                    }
                    // No card (no fabric): nothing serves metadata there.
                    Ok((409, _)) => {
                        pushed.insert(instance.id.clone(), doc);
                    }
                    Ok((status, body)) => {
                        log::warn!(
                            "{}: metadata update refused ({status}): {body}",
                            instance.id
                        )
                    }
                    Err(e) => log::warn!("{}: metadata update: {e}", instance.id),
                }
            }
        });
    }
}
