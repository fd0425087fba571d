//! Instances: RunInstances, DescribeInstances,
//! Start/Stop/Reboot/TerminateInstances, GetConsoleOutput and the instance
//! attributes. Handlers parse, call the lab, and render; the rendering of an
//! instance is complete (every member EC2 returns), so tools that diff
//! state see no drift.

use std::time::SystemTime;

use base64::Engine;
use time::OffsetDateTime;

use super::common::{
    check_ids, db_error, filters, lab, lab_error, page, system_time_ms, tag_set, tag_specifications,
};
use super::{vpcs, Ctx};
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::db::{DbError, InsertOutcome, InstanceQuery};
use crate::model::ids::{self, IdKind};
use crate::model::instance_types;
use crate::model::state::{self, Event, InstanceState, ShutdownBehavior};
use crate::model::vpc::IpamError;
use crate::model::{
    group_into_reservations, HttpTokens, Instance, MetadataOptions, Placement, Reservation,
    RootVolume, Toggle, DEFAULT_AVAILABILITY_ZONE, DEFAULT_OWNER_ID, ROOT_DEVICE_NAME,
};

/// EC2's limit on user data: 16 KB before base64.
pub const MAX_USER_DATA: usize = 16 * 1024;
/// The most instances one RunInstances may ask for.
const MAX_COUNT: i64 = 1000;

pub(super) fn state_node(name: &'static str, s: InstanceState) -> XmlNode {
    XmlNode::element(
        name,
        vec![
            XmlNode::number("code", s.code()),
            XmlNode::text("name", s.name()),
        ],
    )
}

/// One instance as `instancesSet/item`.
fn instance_node(i: &Instance, region: &str) -> Vec<XmlNode> {
    let itype = instance_types::lookup(&i.instance_type);
    let vcpus = itype.map_or(1, |t| t.vcpus);
    let mut n = vec![
        XmlNode::text("instanceId", i.id.as_str()),
        XmlNode::text("imageId", i.image_id.as_str()),
        state_node("instanceState", i.state),
        XmlNode::text("dnsName", ""),
        XmlNode::text("reason", i.state_transition_reason.as_str()),
    ];
    if let Some(key) = &i.key_name {
        n.push(XmlNode::text("keyName", key.as_str()));
    }
    n.extend([
        XmlNode::number("amiLaunchIndex", i.ami_launch_index),
        XmlNode::list("productCodes", Vec::<Vec<XmlNode>>::new()),
        XmlNode::text("instanceType", i.instance_type.as_str()),
        XmlNode::timestamp("launchTime", system_time_ms(i.launch_time)),
        XmlNode::element(
            "placement",
            vec![
                XmlNode::text("availabilityZone", i.placement.availability_zone.as_str()),
                XmlNode::text("groupName", ""),
                XmlNode::text("tenancy", "default"),
            ],
        ),
    ]);
    if let Some(k) = &i.kernel_id {
        n.push(XmlNode::text("kernelId", k.as_str()));
    }
    n.extend([XmlNode::element(
        "monitoring",
        vec![XmlNode::text("state", "disabled")],
    )]);
    n.extend(vpcs::instance_network_nodes(
        &i.network_interfaces,
        i.primary_interface(),
        region,
    ));
    n.extend([
        XmlNode::text("architecture", "x86_64"),
        XmlNode::text("rootDeviceType", "ebs"),
        XmlNode::text("rootDeviceName", ROOT_DEVICE_NAME),
        XmlNode::list(
            "blockDeviceMapping",
            [vec![
                XmlNode::text("deviceName", ROOT_DEVICE_NAME),
                XmlNode::element(
                    "ebs",
                    vec![
                        XmlNode::text("volumeId", i.root_volume.volume_id.as_str()),
                        XmlNode::text(
                            "status",
                            if i.state == InstanceState::Terminated {
                                "detached"
                            } else {
                                "attached"
                            },
                        ),
                        XmlNode::timestamp("attachTime", system_time_ms(i.launch_time)),
                        XmlNode::bool("deleteOnTermination", i.root_volume.delete_on_termination),
                    ],
                ),
            ]],
        ),
        XmlNode::text("virtualizationType", "hvm"),
    ]);
    if let Some(token) = &i.client_token {
        n.push(XmlNode::text("clientToken", token.as_str()));
    }
    if !i.tags.is_empty() {
        n.push(tag_set(&i.tags));
    }
    n.extend([
        XmlNode::text("hypervisor", "xen"),
        XmlNode::bool("ebsOptimized", false),
        XmlNode::bool("enaSupport", true),
    ]);
    if let Some(reason) = &i.state_reason {
        n.push(XmlNode::element(
            "stateReason",
            vec![
                XmlNode::text("code", reason.code.as_str()),
                XmlNode::text("message", reason.message.as_str()),
            ],
        ));
    }
    let m = &i.metadata_options;
    n.extend([
        XmlNode::element(
            "cpuOptions",
            vec![
                XmlNode::number("coreCount", vcpus),
                XmlNode::number("threadsPerCore", 1),
            ],
        ),
        XmlNode::element(
            "capacityReservationSpecification",
            vec![XmlNode::text("capacityReservationPreference", "open")],
        ),
        XmlNode::element(
            "hibernationOptions",
            vec![XmlNode::bool("configured", i.hibernation_configured)],
        ),
        XmlNode::element(
            "metadataOptions",
            vec![
                XmlNode::text("state", "applied"),
                XmlNode::text("httpTokens", m.http_tokens.name()),
                XmlNode::number("httpPutResponseHopLimit", m.http_put_response_hop_limit),
                XmlNode::text("httpEndpoint", m.http_endpoint.name()),
                XmlNode::text("httpProtocolIpv6", "disabled"),
                XmlNode::text("instanceMetadataTags", m.instance_metadata_tags.name()),
            ],
        ),
        XmlNode::element("enclaveOptions", vec![XmlNode::bool("enabled", false)]),
        XmlNode::text("platformDetails", "Linux/UNIX"),
        XmlNode::text("usageOperation", "RunInstances"),
        XmlNode::timestamp("usageOperationUpdateTime", system_time_ms(i.launch_time)),
        XmlNode::element(
            "maintenanceOptions",
            vec![XmlNode::text("autoRecovery", "default")],
        ),
        XmlNode::text("currentInstanceBootMode", "legacy-bios"),
    ]);
    n
}

fn reservation_node(r: &Reservation, region: &str) -> Vec<XmlNode> {
    vec![
        XmlNode::text("reservationId", r.id.as_str()),
        XmlNode::text("ownerId", r.owner_id.as_str()),
        XmlNode::list("groupSet", Vec::<Vec<XmlNode>>::new()),
        XmlNode::list(
            "instancesSet",
            r.instances.iter().map(|i| instance_node(i, region)),
        ),
    ]
}

/// The `InstanceId.N` list, well-formed and present.
fn instance_ids(params: &Params) -> Result<Vec<String>, Ec2Error> {
    let list = params.list("InstanceId")?;
    if list.is_empty() {
        return Err(Ec2Error::missing_parameter("InstanceId"));
    }
    check_ids(IdKind::Instance, &list)
}

/// Parses RunInstances' options into a template instance.
struct Launch {
    image_id: String,
    kernel_id: Option<String>,
    instance_type: String,
    min: u32,
    max: u32,
    key_name: Option<String>,
    user_data: Option<Vec<u8>>,
    tags: Vec<(String, String)>,
    shutdown_behavior: ShutdownBehavior,
    disable_api_termination: bool,
    metadata: MetadataOptions,
    hibernation: bool,
    root_size_gib: Option<u32>,
    delete_on_termination: bool,
    client_token: Option<String>,
    zone: Option<String>,
    network: vpcs::LaunchNetwork,
}

fn parse_launch(params: &Params) -> Result<Launch, Ec2Error> {
    let known: Vec<&str> = [
        "ImageId",
        "InstanceType",
        "MinCount",
        "MaxCount",
        "KeyName",
        "UserData",
        "TagSpecification",
        "InstanceInitiatedShutdownBehavior",
        "DisableApiTermination",
        "MetadataOptions",
        "HibernationOptions",
        "BlockDeviceMapping",
        "ClientToken",
        "KernelId",
        "Placement",
        "DryRun",
        "Monitoring",
        "EbsOptimized",
        "CreditSpecification",
        "PrivateDnsNameOptions",
        "MaintenanceOptions",
        "EnablePrimaryIpv6",
    ]
    .into_iter()
    .chain(vpcs::LAUNCH_PARAMETERS.iter().copied())
    .collect();
    params.reject_unknown(&known)?;
    let image_id = params.required("ImageId")?;
    check_ids(IdKind::Image, &[image_id])?;
    let kernel_id = match params.optional("KernelId") {
        Some(k) => Some(check_ids(IdKind::Kernel, &[k])?.remove(0)),
        None => None,
    };
    let instance_type = params
        .optional("InstanceType")
        .unwrap_or(instance_types::FALLBACK_INSTANCE_TYPE);
    if instance_types::lookup(instance_type).is_none() {
        return Err(Ec2Error::invalid_parameter_value(format!(
            "Invalid value '{instance_type}' for InstanceType."
        )));
    }
    let min = params
        .int_in("MinCount", 1, MAX_COUNT)?
        .ok_or_else(|| Ec2Error::missing_parameter("MinCount"))?;
    let max = params
        .int_in("MaxCount", 1, MAX_COUNT)?
        .ok_or_else(|| Ec2Error::missing_parameter("MaxCount"))?;
    if min > max {
        return Err(Ec2Error::invalid_parameter_value(
            "MinCount must be less than or equal to MaxCount",
        ));
    }
    let user_data = match params.optional("UserData") {
        Some(b64) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| {
                    Ec2Error::invalid_parameter_value("Invalid BASE64 encoding of user data")
                })?;
            if raw.len() > MAX_USER_DATA {
                return Err(Ec2Error::invalid_parameter_value(format!(
                    "User data is limited to {MAX_USER_DATA} bytes; got {}",
                    raw.len()
                )));
            }
            Some(raw)
        }
        None => None,
    };
    let shutdown_behavior = match params.optional("InstanceInitiatedShutdownBehavior") {
        Some(b) => ShutdownBehavior::from_name(b).ok_or_else(|| {
            Ec2Error::invalid_parameter_value(format!(
                "Value ({b}) for parameter instanceInitiatedShutdownBehavior is invalid. Expected: 'stop', 'terminate'."
            ))
        })?,
        None => ShutdownBehavior::Stop,
    };
    let mut metadata = MetadataOptions::default();
    if let Some(v) = params.optional("MetadataOptions.HttpTokens") {
        metadata.http_tokens = HttpTokens::from_name(v).ok_or_else(|| {
            Ec2Error::invalid_parameter_value(format!("Invalid value '{v}' for HttpTokens"))
        })?;
    }
    if let Some(v) = params.optional("MetadataOptions.HttpEndpoint") {
        metadata.http_endpoint = Toggle::from_name(v).ok_or_else(|| {
            Ec2Error::invalid_parameter_value(format!("Invalid value '{v}' for HttpEndpoint"))
        })?;
    }
    if let Some(hops) = params.int_in("MetadataOptions.HttpPutResponseHopLimit", 1, 64)? {
        metadata.http_put_response_hop_limit = hops as u8;
    }
    if let Some(v) = params.optional("MetadataOptions.InstanceMetadataTags") {
        metadata.instance_metadata_tags = Toggle::from_name(v).ok_or_else(|| {
            Ec2Error::invalid_parameter_value(format!(
                "Invalid value '{v}' for InstanceMetadataTags"
            ))
        })?;
    }
    let mut root_size_gib = None;
    let mut delete_on_termination = true;
    for bdm in params.structs("BlockDeviceMapping")? {
        let device = bdm.optional("DeviceName").unwrap_or(ROOT_DEVICE_NAME);
        if device != ROOT_DEVICE_NAME && device != "/dev/sda1" {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Only the root device ({ROOT_DEVICE_NAME}) can be mapped on ec2lab; got {device}"
            )));
        }
        if let Some(size) = bdm.int_in("Ebs.VolumeSize", 1, 16384)? {
            root_size_gib = Some(size as u32);
        }
        if let Some(d) = bdm.bool("Ebs.DeleteOnTermination")? {
            delete_on_termination = d;
        }
    }
    Ok(Launch {
        image_id: image_id.to_string(),
        kernel_id,
        instance_type: instance_type.to_string(),
        min: min as u32,
        max: max as u32,
        key_name: params.optional("KeyName").map(str::to_string),
        user_data,
        tags: tag_specifications(params, "instance")?,
        shutdown_behavior,
        disable_api_termination: params.bool("DisableApiTermination")?.unwrap_or(false),
        metadata,
        hibernation: params
            .bool("HibernationOptions.Configured")?
            .unwrap_or(false),
        root_size_gib,
        delete_on_termination,
        client_token: params.optional("ClientToken").map(str::to_string),
        zone: params
            .optional("Placement.AvailabilityZone")
            .map(str::to_string),
        network: vpcs::parse_launch_network(params)?,
    })
}

/// `RunInstances`: records the reservation (pending), answers at once, and
/// boots in the background.
pub fn run_instances(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    let launch = parse_launch(params)?;
    let lab = lab(ctx)?;
    if let Some(token) = &launch.client_token {
        if let Some(existing) = lab
            .db
            .find_reservation_by_client_token(token)
            .map_err(|e| db_error(ctx, e))?
        {
            return Ok(reservation_node(&existing, ctx.region));
        }
    }
    let image = lab
        .db
        .get_image(&launch.image_id)
        .map_err(|e| db_error(ctx, e))?;
    if image.kind != crate::model::ImageKind::Machine
        || image.state != crate::model::ImageState::Available
    {
        return Err(Ec2Error::image_not_found(&launch.image_id));
    }
    let kernel_id = launch.kernel_id.clone().or(image.kernel_id.clone());
    if let Some(k) = &kernel_id {
        lab.db.get_image(k).map_err(|e| db_error(ctx, e))?;
    }
    if let Some(key) = &launch.key_name {
        lab.db
            .get_key_pair_by_name(key)
            .map_err(|_| Ec2Error::key_pair_not_found(key))?;
    }
    if let Some(zone) = &launch.zone {
        if !zone.starts_with(ctx.region) || zone.len() != ctx.region.len() + 1 {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Invalid availability zone: [{zone}]"
            )));
        }
    }
    let (interface, zone) = vpcs::resolve_launch_network(
        ctx,
        &launch.network,
        launch.zone.as_deref(),
        DEFAULT_AVAILABILITY_ZONE,
    )?;
    if vpcs::asks_for_an_address(&launch.network) && launch.max > 1 {
        return Err(Ec2Error::invalid_parameter_combination(
            "A private IP address can only be given to one instance: MaxCount must be 1",
        ));
    }
    // As many as fit, but at least MinCount (EC2's rule).
    let fit = lab
        .how_many_fit(&launch.instance_type)
        .map_err(|e| lab_error(ctx, e))?;
    let count = u32::try_from(fit).unwrap_or(u32::MAX).min(launch.max);
    if count < launch.min {
        return Err(Ec2Error::insufficient_instance_capacity(
            &launch.instance_type,
        ));
    }
    // The same rule for addresses: as many as the subnet has free, at
    // least MinCount. The launch's transaction checks again, so a race
    // with another launch fails cleanly instead of over-allocating.
    let free = lab
        .db
        .get_subnet(&interface.subnet_id)
        .map_err(|e| db_error(ctx, e))?
        .available_ip_address_count;
    let count = u32::try_from(free).unwrap_or(u32::MAX).min(count);
    if count < launch.min {
        let full = IpamError::SubnetFull {
            subnet_id: interface.subnet_id.clone(),
        };
        return Err(db_error(ctx, DbError::Ipam(full)));
    }
    let now = OffsetDateTime::now_utc();
    let reservation_id = ids::generate(IdKind::Reservation);
    let launched = state::launch();
    let root_gib = launch.root_size_gib.or(image.root_size_gib).unwrap_or(1);
    let instances: Vec<Instance> = (0..count)
        .map(|index| {
            let id = ids::generate(IdKind::Instance);
            Instance {
                root_volume: RootVolume {
                    volume_id: ids::generate(IdKind::Volume),
                    size_gib: root_gib,
                    delete_on_termination: launch.delete_on_termination,
                    path: lab.supervisor.files(&id).root_volume(),
                },
                id,
                reservation_id: reservation_id.clone(),
                image_id: launch.image_id.clone(),
                kernel_id: kernel_id.clone(),
                instance_type: launch.instance_type.clone(),
                key_name: launch.key_name.clone(),
                state: launched.to,
                state_reason: match &launched.state_reason {
                    state::Update::Set(r) => Some(r.clone()),
                    _ => None,
                },
                state_transition_reason: String::new(),
                launch_time: now,
                user_data: launch.user_data.clone(),
                tags: launch.tags.iter().cloned().collect(),
                shutdown_behavior: launch.shutdown_behavior,
                disable_api_termination: launch.disable_api_termination,
                metadata_options: launch.metadata,
                hibernation_configured: launch.hibernation,
                client_token: launch.client_token.clone(),
                ami_launch_index: index,
                placement: Placement {
                    availability_zone: zone.clone(),
                },
                vmm: None,
                console_output_path: None,
                terminated_at: None,
                network_interfaces: Vec::new(),
            }
        })
        .collect();
    let mut reservation = Reservation {
        id: reservation_id,
        owner_id: DEFAULT_OWNER_ID.to_string(),
        client_token: launch.client_token.clone(),
        instances,
    };
    match lab
        .db
        .insert_reservation(&mut reservation, Some(&interface))
        .map_err(|e| db_error(ctx, e))?
    {
        InsertOutcome::Existing(existing) => Ok(reservation_node(&existing, ctx.region)),
        InsertOutcome::Created => {
            for i in &reservation.instances {
                log::info!("{}: launching {} ({})", i.id, i.image_id, i.instance_type);
                lab.spawn_boot(i.id.clone());
            }
            Ok(reservation_node(&reservation, ctx.region))
        }
    }
}

/// `DescribeInstances`.
pub fn describe_instances(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "Filter", "MaxResults", "NextToken", "DryRun"])?;
    let ids = params.list("InstanceId")?;
    let instance_ids = check_ids(IdKind::Instance, &ids)?;
    if !instance_ids.is_empty() && params.optional("MaxResults").is_some() {
        return Err(Ec2Error::invalid_parameter_combination(
            "The parameter instancesSet cannot be used with the parameter maxResults",
        ));
    }
    let lab = lab(ctx)?;
    let query = InstanceQuery {
        instance_ids,
        filters: filters(params)?,
        page: page(params)?,
    };
    let found = lab
        .db
        .list_instances(&query)
        .map_err(|e| db_error(ctx, e))?;
    let reservations = group_into_reservations(found.items, DEFAULT_OWNER_ID);
    let mut out = vec![XmlNode::list(
        "reservationSet",
        reservations.iter().map(|r| reservation_node(r, ctx.region)),
    )];
    if let Some(token) = found.next_token {
        out.push(XmlNode::text("nextToken", token));
    }
    Ok(out)
}

fn state_change(id: &str, before: InstanceState, after: InstanceState) -> Vec<XmlNode> {
    vec![
        XmlNode::text("instanceId", id),
        state_node("currentState", after),
        state_node("previousState", before),
    ]
}

/// Checks that every id exists before anything changes (EC2 refuses the
/// whole request if one is unknown).
fn existing(ctx: &Ctx<'_>, ids: &[String]) -> Result<(), Ec2Error> {
    let lab = lab(ctx)?;
    lab.db
        .list_instances(&InstanceQuery {
            instance_ids: ids.to_vec(),
            ..Default::default()
        })
        .map(|_| ())
        .map_err(|e| db_error(ctx, e))
}

/// `StopInstances` (with `Force`).
pub fn stop_instances(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "Force", "Hibernate", "DryRun"])?;
    let ids = instance_ids(params)?;
    let force = params.bool("Force")?.unwrap_or(false);
    if params.bool("Hibernate")?.unwrap_or(false) {
        return Err(Ec2Error::unsupported_operation(
            "Hibernation is not supported by ec2lab yet",
        ));
    }
    existing(ctx, &ids)?;
    let lab = lab(ctx)?;
    let mut changes = Vec::new();
    for id in &ids {
        let (before, after) = lab
            .apply(id, &Event::StopRequested { force })
            .map_err(|e| lab_error(ctx, e))?;
        if before.state != after.state || force {
            lab.spawn_stop(id, force);
        }
        changes.push(state_change(id, before.state, after.state));
    }
    Ok(vec![XmlNode::list("instancesSet", changes)])
}

/// `StartInstances`.
pub fn start_instances(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "AdditionalInfo", "DryRun"])?;
    let ids = instance_ids(params)?;
    existing(ctx, &ids)?;
    let lab = lab(ctx)?;
    let mut changes = Vec::new();
    for id in &ids {
        let instance = lab.db.get_instance(id).map_err(|e| db_error(ctx, e))?;
        if instance.state == InstanceState::Stopped
            && lab
                .how_many_fit(&instance.instance_type)
                .map_err(|e| lab_error(ctx, e))?
                == 0
        {
            return Err(Ec2Error::insufficient_instance_capacity(
                &instance.instance_type,
            ));
        }
        let (before, after) = lab
            .apply(id, &Event::StartRequested)
            .map_err(|e| lab_error(ctx, e))?;
        if before.state == InstanceState::Stopped {
            lab.spawn_boot(id.clone());
        }
        changes.push(state_change(id, before.state, after.state));
    }
    Ok(vec![XmlNode::list("instancesSet", changes)])
}

/// `RebootInstances`.
pub fn reboot_instances(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "DryRun"])?;
    let ids = instance_ids(params)?;
    existing(ctx, &ids)?;
    let lab = lab(ctx)?;
    for id in &ids {
        lab.reboot(id).map_err(|e| lab_error(ctx, e))?;
    }
    // The model gives this action no output members.
    Ok(Vec::new())
}

/// `TerminateInstances`.
pub fn terminate_instances(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "DryRun", "Force", "SkipOsShutdown"])?;
    let ids = instance_ids(params)?;
    existing(ctx, &ids)?;
    let lab = lab(ctx)?;
    // Termination protection is checked for all before any is touched.
    for id in &ids {
        let i = lab.db.get_instance(id).map_err(|e| db_error(ctx, e))?;
        if i.disable_api_termination && i.state != InstanceState::Terminated {
            return Err(lab_error(
                ctx,
                crate::lifecycle::LabError::TerminationProtected(id.clone()),
            ));
        }
    }
    let mut changes = Vec::new();
    for id in &ids {
        let (before, after) = lab.terminate(id).map_err(|e| lab_error(ctx, e))?;
        changes.push(state_change(id, before.state, after.state));
    }
    Ok(vec![XmlNode::list("instancesSet", changes)])
}

/// The most recent console output EC2 returns: the last 64 KiB.
const CONSOLE_TAIL: u64 = 64 * 1024;

/// `GetConsoleOutput`: the tail of the guest's serial console, base64.
pub fn get_console_output(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "Latest", "DryRun"])?;
    let id = params.required("InstanceId")?;
    check_ids(IdKind::Instance, &[id])?;
    let lab = lab(ctx)?;
    let instance = lab.db.get_instance(id).map_err(|e| db_error(ctx, e))?;
    let path = instance
        .console_output_path
        .clone()
        .unwrap_or_else(|| lab.supervisor.files(id).serial_log());
    let (text, modified) = read_tail(&path, CONSOLE_TAIL);
    let mut out = vec![
        XmlNode::text("instanceId", id),
        XmlNode::timestamp("timestamp", modified.unwrap_or_else(SystemTime::now)),
    ];
    if !text.is_empty() {
        out.push(XmlNode::text(
            "output",
            base64::engine::general_purpose::STANDARD.encode(&text),
        ));
    }
    Ok(out)
}

fn read_tail(path: &std::path::Path, max: u64) -> (Vec<u8>, Option<SystemTime>) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), None);
    };
    let meta = f.metadata().ok();
    let len = meta.as_ref().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    (buf, meta.and_then(|m| m.modified().ok()))
}

/// `DescribeInstanceAttribute`.
pub fn describe_instance_attribute(
    ctx: &Ctx<'_>,
    params: &Params,
) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "Attribute", "DryRun"])?;
    let id = params.required("InstanceId")?;
    check_ids(IdKind::Instance, &[id])?;
    let attribute = params.required("Attribute")?;
    let lab = lab(ctx)?;
    let i = lab.db.get_instance(id).map_err(|e| db_error(ctx, e))?;
    let value =
        |name: &'static str, v: String| XmlNode::element(name, vec![XmlNode::text("value", v)]);
    let node = match attribute {
        "instanceType" => value("instanceType", i.instance_type.clone()),
        "userData" => match &i.user_data {
            Some(data) => value(
                "userData",
                base64::engine::general_purpose::STANDARD.encode(data),
            ),
            None => XmlNode::element("userData", vec![]),
        },
        "disableApiTermination" => XmlNode::element(
            "disableApiTermination",
            vec![XmlNode::bool("value", i.disable_api_termination)],
        ),
        "instanceInitiatedShutdownBehavior" => value(
            "instanceInitiatedShutdownBehavior",
            i.shutdown_behavior.name().to_string(),
        ),
        "kernel" => value("kernel", i.kernel_id.clone().unwrap_or_default()),
        "rootDeviceName" => value("rootDeviceName", ROOT_DEVICE_NAME.to_string()),
        other => {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Value ({other}) for parameter attribute is invalid or not supported by ec2lab"
            )))
        }
    };
    Ok(vec![XmlNode::text("instanceId", id), node])
}

/// `ModifyInstanceAttribute`: instance type and user data while stopped,
/// termination protection and shutdown behaviour at any time.
pub fn modify_instance_attribute(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "InstanceId",
        "Attribute",
        "Value",
        "InstanceType",
        "UserData",
        "DisableApiTermination",
        "InstanceInitiatedShutdownBehavior",
        "DryRun",
    ])?;
    let id = params.required("InstanceId")?;
    check_ids(IdKind::Instance, &[id])?;
    let lab = lab(ctx)?;
    lab.db.get_instance(id).map_err(|e| db_error(ctx, e))?;
    // The flat form (Attribute=x&Value=y) and the structured one.
    let get = |name: &str| -> Option<&str> {
        params.optional(&format!("{name}.Value")).or_else(|| {
            let attribute = params.optional("Attribute")?;
            let wanted = name[..1].to_lowercase() + &name[1..];
            (attribute == wanted)
                .then(|| params.optional("Value"))
                .flatten()
        })
    };
    let mut changed = false;
    if let Some(t) = get("InstanceType") {
        if instance_types::lookup(t).is_none() {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Invalid value '{t}' for InstanceType."
            )));
        }
        lab.db
            .set_instance_type(id, t)
            .map_err(|e| db_error(ctx, e))?;
        changed = true;
    }
    if let Some(u) = get("UserData") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(u.trim())
            .map_err(|_| {
                Ec2Error::invalid_parameter_value("Invalid BASE64 encoding of user data")
            })?;
        if raw.len() > MAX_USER_DATA {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "User data is limited to {MAX_USER_DATA} bytes"
            )));
        }
        lab.db
            .set_user_data(id, Some(&raw))
            .map_err(|e| db_error(ctx, e))?;
        changed = true;
    }
    if let Some(v) = get("DisableApiTermination") {
        let value = match v {
            "true" => true,
            "false" => false,
            _ => {
                return Err(Ec2Error::invalid_parameter_value(format!(
                    "Invalid boolean '{v}' for DisableApiTermination"
                )))
            }
        };
        lab.db
            .set_disable_api_termination(id, value)
            .map_err(|e| db_error(ctx, e))?;
        changed = true;
    }
    if let Some(v) = get("InstanceInitiatedShutdownBehavior") {
        let behavior = ShutdownBehavior::from_name(v).ok_or_else(|| {
            Ec2Error::invalid_parameter_value(format!(
                "Value ({v}) for instanceInitiatedShutdownBehavior is invalid"
            ))
        })?;
        lab.db
            .set_shutdown_behavior(id, behavior)
            .map_err(|e| db_error(ctx, e))?;
        changed = true;
    }
    if !changed {
        return Err(Ec2Error::missing_parameter("Attribute"));
    }
    // The model gives this action no output members.
    Ok(Vec::new())
}
