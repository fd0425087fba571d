//! Instances: RunInstances, DescribeInstances,
//! Start/Stop/Reboot/TerminateInstances, GetConsoleOutput and the instance
//! attributes. Handlers parse, make one call into the lab (the rules are in
//! `crate::instances`), and render; the rendering of an instance is complete (every member EC2 returns), so tools that diff
//! state see no drift.

use std::time::SystemTime;

use base64::Engine;

use super::common::{check_ids, filters, page, system_time_ms, tag_set, tag_specifications_for};
use super::{credit_specifications, vpcs, Ctx};
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::db::InstanceQuery;
use crate::instances::{AttributeChange, LaunchRequest, StateChange};
use crate::model::ids::IdKind;
use crate::model::instance_types;
use crate::model::state::{InstanceState, ShutdownBehavior};
use crate::model::vpc::public_dns_name;
use crate::model::{
    group_into_reservations, HttpTokens, Instance, MetadataOptions, Reservation, Toggle,
    DEFAULT_OWNER_ID, ROOT_DEVICE_NAME,
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
    ];
    // The primary interface's public address, if it holds one.
    let public_ip = i
        .network_interfaces
        .iter()
        .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0))
        .and_then(|e| e.public_ip);
    n.push(XmlNode::text(
        "dnsName",
        public_ip.map_or_else(String::new, |ip| public_dns_name(ip, region)),
    ));
    n.extend(public_ip.map(|ip| XmlNode::text("ipAddress", ip.to_string())));
    n.push(XmlNode::text("reason", i.state_transition_reason.as_str()));
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
        block_device_mapping(i),
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

/// `blockDeviceMapping`: the root volume, as DescribeInstances and the
/// instance attribute of that name show it.
fn block_device_mapping(i: &Instance) -> XmlNode {
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
    )
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

/// RunInstances' parameters, checked for shape.
fn parse_launch(params: &Params) -> Result<LaunchRequest, Ec2Error> {
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
        "DisableApiStop",
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
    let metadata = metadata_options(params, "MetadataOptions.", MetadataOptions::default())?;
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
    let [tags, volume_tags, interface_tags]: [Vec<(String, String)>; 3] =
        tag_specifications_for(params, &["instance", "volume", "network-interface"])?
            .try_into()
            .map_err(|_| Ec2Error::internal("one tag list per resource type"))?;
    Ok(LaunchRequest {
        image_id: image_id.to_string(),
        kernel_id,
        instance_type: instance_type.to_string(),
        min: min as u32,
        max: max as u32,
        key_name: params.optional("KeyName").map(str::to_string),
        user_data,
        tags,
        volume_tags,
        interface_tags,
        shutdown_behavior,
        disable_api_termination: params.bool("DisableApiTermination")?.unwrap_or(false),
        disable_api_stop: params.bool("DisableApiStop")?.unwrap_or(false),
        cpu_credits: params
            .optional("CreditSpecification.CpuCredits")
            .map(credit_specifications::cpu_credits)
            .transpose()?,
        metadata,
        hibernation: params
            .bool("HibernationOptions.Configured")?
            .unwrap_or(false),
        root_size_gib,
        delete_on_termination,
        client_token: params.optional("ClientToken").map(str::to_string),
        zone: placement_zone(params)?,
        network: vpcs::parse_launch_network(params)?,
    })
}

/// `Placement`: the zone is honoured; default tenancy is what the lab has;
/// a placement group cannot exist (there is no CreatePlacementGroup), so a
/// named one is unknown, as EC2 says of any group it does not have; the
/// rest (dedicated hosts, partitions) is refused rather than ignored.
fn placement_zone(params: &Params) -> Result<Option<String>, Ec2Error> {
    for (key, value) in params.pairs() {
        let Some(field) = key.strip_prefix("Placement.") else {
            continue;
        };
        match (field, value) {
            ("AvailabilityZone", _) | ("Tenancy", "default") | ("GroupName", "") => {}
            ("GroupName", group) => return Err(Ec2Error::placement_group_unknown(group)),
            ("Tenancy", tenancy) => {
                return Err(Ec2Error::unsupported_operation(format!(
                    "Tenancy '{tenancy}' is not supported by ec2lab: every instance shares the \
                     lab's one host (tenancy 'default')"
                )))
            }
            (other, _) => {
                return Err(Ec2Error::unsupported_operation(format!(
                    "Placement.{other} is not supported by ec2lab"
                )))
            }
        }
    }
    Ok(params
        .optional("Placement.AvailabilityZone")
        .map(str::to_string))
}

/// `RunInstances`: records the reservation (pending), answers at once, and
/// boots in the background.
pub fn run_instances(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    let launch = parse_launch(params)?;
    let reservation = ctx.lab()?.launch(ctx.region, &launch)?;
    Ok(reservation_node(&reservation, ctx.region))
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
    let query = InstanceQuery {
        instance_ids,
        filters: filters(params)?,
        page: page(params)?,
    };
    let found = ctx.lab()?.db.list_instances(&query)?;
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

fn state_changes(changes: &[StateChange]) -> Vec<XmlNode> {
    vec![XmlNode::list(
        "instancesSet",
        changes.iter().map(|c| {
            vec![
                XmlNode::text("instanceId", c.instance_id.as_str()),
                state_node("currentState", c.current),
                state_node("previousState", c.previous),
            ]
        }),
    )]
}

/// `StopInstances` (with `Force`).
pub fn stop_instances(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "Force", "Hibernate", "DryRun"])?;
    let ids = instance_ids(params)?;
    let force = params.bool("Force")?.unwrap_or(false);
    let hibernate = params.bool("Hibernate")?.unwrap_or(false);
    Ok(state_changes(&ctx.lab()?.stop(&ids, force, hibernate)?))
}

/// `StartInstances`.
pub fn start_instances(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "AdditionalInfo", "DryRun"])?;
    let ids = instance_ids(params)?;
    Ok(state_changes(&ctx.lab()?.start(&ids)?))
}

/// `RebootInstances`.
pub fn reboot_instances(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "DryRun"])?;
    let ids = instance_ids(params)?;
    ctx.lab()?.reboot(&ids)?;
    // The model gives this action no output members.
    Ok(Vec::new())
}

/// `TerminateInstances`.
pub fn terminate_instances(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "DryRun", "Force", "SkipOsShutdown"])?;
    let ids = instance_ids(params)?;
    Ok(state_changes(&ctx.lab()?.terminate(&ids)?))
}

/// The most recent console output EC2 returns: the last 64 KiB.
const CONSOLE_TAIL: u64 = 64 * 1024;

/// `GetConsoleOutput`: the tail of the guest's serial console, base64.
pub fn get_console_output(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "Latest", "DryRun"])?;
    let id = params.required("InstanceId")?;
    check_ids(IdKind::Instance, &[id])?;
    let console = ctx.lab()?.console_output(id, CONSOLE_TAIL)?;
    let mut out = vec![
        XmlNode::text("instanceId", id),
        XmlNode::timestamp(
            "timestamp",
            console.written_at.unwrap_or_else(SystemTime::now),
        ),
    ];
    if !console.text.is_empty() {
        out.push(XmlNode::text(
            "output",
            base64::engine::general_purpose::STANDARD.encode(&console.text),
        ));
    }
    Ok(out)
}

/// `DescribeInstanceAttribute`: every attribute name of EC2's enum, each
/// in the shape EC2 gives it. Those that do not apply to a lab instance
/// (`ramdisk`, `sriovNetSupport`, `kernel` without one) are present and
/// empty, as EC2 shows them for an HVM instance without them.
pub fn describe_instance_attribute(
    ctx: &Ctx<'_>,
    params: &Params,
) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "Attribute", "DryRun"])?;
    let id = params.required("InstanceId")?;
    check_ids(IdKind::Instance, &[id])?;
    let attribute = params.required("Attribute")?;
    let i = ctx.lab()?.db.get_instance(id)?;
    let value = |name: &'static str, v: Option<String>| {
        XmlNode::element(
            name,
            v.map(|v| XmlNode::text("value", v)).into_iter().collect(),
        )
    };
    let boolean =
        |name: &'static str, v: bool| XmlNode::element(name, vec![XmlNode::bool("value", v)]);
    let primary = i.primary_interface();
    let node = match attribute {
        "instanceType" => value("instanceType", Some(i.instance_type.clone())),
        "kernel" => value("kernel", i.kernel_id.clone()),
        "ramdisk" => value("ramdisk", None),
        "userData" => value(
            "userData",
            i.user_data
                .as_ref()
                .map(|data| base64::engine::general_purpose::STANDARD.encode(data)),
        ),
        "disableApiTermination" => boolean("disableApiTermination", i.disable_api_termination),
        "disableApiStop" => boolean("disableApiStop", i.disable_api_stop),
        "instanceInitiatedShutdownBehavior" => value(
            "instanceInitiatedShutdownBehavior",
            Some(i.shutdown_behavior.name().to_string()),
        ),
        "rootDeviceName" => value("rootDeviceName", Some(ROOT_DEVICE_NAME.to_string())),
        "blockDeviceMapping" => block_device_mapping(&i),
        "productCodes" => XmlNode::list("productCodes", Vec::<Vec<XmlNode>>::new()),
        "sourceDestCheck" => XmlNode::element(
            "sourceDestCheck",
            primary
                .map(|n| XmlNode::bool("value", n.source_dest_check))
                .into_iter()
                .collect(),
        ),
        "groupSet" => vpcs::group_set(primary.map_or(&[][..], |n| &n.groups)),
        "ebsOptimized" => boolean("ebsOptimized", false),
        "sriovNetSupport" => value("sriovNetSupport", None),
        "enaSupport" => boolean("enaSupport", true),
        "enclaveOptions" => {
            XmlNode::element("enclaveOptions", vec![XmlNode::bool("enabled", false)])
        }
        other => {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Value ({other}) for parameter attribute is invalid. Unknown attribute."
            )))
        }
    };
    Ok(vec![XmlNode::text("instanceId", id), node])
}

/// The metadata options in `params` (RunInstances' `MetadataOptions.*`,
/// ModifyInstanceMetadataOptions' top-level members), over `base`.
fn metadata_options(
    params: &Params,
    prefix: &str,
    base: MetadataOptions,
) -> Result<MetadataOptions, Ec2Error> {
    let mut metadata = base;
    let name = |member: &str| format!("{prefix}{member}");
    if let Some(v) = params.optional(&name("HttpTokens")) {
        metadata.http_tokens = HttpTokens::from_name(v).ok_or_else(|| {
            Ec2Error::invalid_parameter_value(format!("Invalid value '{v}' for HttpTokens"))
        })?;
    }
    if let Some(v) = params.optional(&name("HttpEndpoint")) {
        metadata.http_endpoint = Toggle::from_name(v).ok_or_else(|| {
            Ec2Error::invalid_parameter_value(format!("Invalid value '{v}' for HttpEndpoint"))
        })?;
    }
    if let Some(hops) = params.int_in(&name("HttpPutResponseHopLimit"), 1, 64)? {
        metadata.http_put_response_hop_limit = hops as u8;
    }
    if let Some(v) = params.optional(&name("InstanceMetadataTags")) {
        metadata.instance_metadata_tags = Toggle::from_name(v).ok_or_else(|| {
            Ec2Error::invalid_parameter_value(format!(
                "Invalid value '{v}' for InstanceMetadataTags"
            ))
        })?;
    }
    match params.optional(&name("HttpProtocolIpv6")) {
        None | Some("disabled") => {}
        Some("enabled") => {
            return Err(Ec2Error::unsupported_operation(
                "The metadata service has no IPv6 endpoint in ec2lab",
            ))
        }
        Some(v) => {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Invalid value '{v}' for HttpProtocolIpv6"
            )))
        }
    }
    Ok(metadata)
}

/// `ModifyInstanceMetadataOptions`: stored, and handed to the running
/// instance's metadata service at once (tokens required, hop limit,
/// endpoint off, tags in metadata).
pub fn modify_instance_metadata_options(
    ctx: &Ctx<'_>,
    params: &Params,
) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "InstanceId",
        "HttpTokens",
        "HttpPutResponseHopLimit",
        "HttpEndpoint",
        "HttpProtocolIpv6",
        "InstanceMetadataTags",
        "DryRun",
    ])?;
    let id = params.required("InstanceId")?;
    check_ids(IdKind::Instance, &[id])?;
    let current = ctx.state.lab.db.get_instance(id)?;
    let options = metadata_options(params, "", current.metadata_options)?;
    let lab = ctx.lab()?;
    lab.db.set_metadata_options(id, &options)?;
    lab.refresh_metadata();
    Ok(vec![
        XmlNode::text("instanceId", id),
        XmlNode::element(
            "instanceMetadataOptions",
            vec![
                // EC2 says "pending" until the instance has the options.
                XmlNode::text("state", "pending"),
                XmlNode::text("httpTokens", options.http_tokens.name()),
                XmlNode::number(
                    "httpPutResponseHopLimit",
                    options.http_put_response_hop_limit,
                ),
                XmlNode::text("httpEndpoint", options.http_endpoint.name()),
                XmlNode::text("httpProtocolIpv6", "disabled"),
                XmlNode::text(
                    "instanceMetadataTags",
                    options.instance_metadata_tags.name(),
                ),
            ],
        ),
    ])
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
        "DisableApiStop",
        "InstanceInitiatedShutdownBehavior",
        "GroupId",
        "SourceDestCheck",
        "DryRun",
    ])?;
    let id = params.required("InstanceId")?;
    check_ids(IdKind::Instance, &[id])?;
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
    let mut changes = Vec::new();
    if let Some(t) = get("InstanceType") {
        changes.push(AttributeChange::InstanceType(t.to_string()));
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
        changes.push(AttributeChange::UserData(raw));
    }
    let boolean = |name: &str, v: &str| match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Ec2Error::invalid_parameter_value(format!(
            "Invalid boolean '{v}' for {name}"
        ))),
    };
    if let Some(v) = get("DisableApiTermination") {
        changes.push(AttributeChange::DisableApiTermination(boolean(
            "DisableApiTermination",
            v,
        )?));
    }
    if let Some(v) = get("DisableApiStop") {
        changes.push(AttributeChange::DisableApiStop(boolean(
            "DisableApiStop",
            v,
        )?));
    }
    if let Some(v) = get("InstanceInitiatedShutdownBehavior") {
        let behavior = ShutdownBehavior::from_name(v).ok_or_else(|| {
            Ec2Error::invalid_parameter_value(format!(
                "Value ({v}) for instanceInitiatedShutdownBehavior is invalid"
            ))
        })?;
        changes.push(AttributeChange::ShutdownBehavior(behavior));
    }
    if let Some(v) = get("SourceDestCheck") {
        changes.push(AttributeChange::SourceDestCheck(boolean(
            "SourceDestCheck",
            v,
        )?));
    }
    let groups = params.list("GroupId")?;
    if !groups.is_empty() {
        changes.push(AttributeChange::Groups(check_ids(
            IdKind::SecurityGroup,
            &groups,
        )?));
    }
    if changes.is_empty() {
        return Err(Ec2Error::missing_parameter("Attribute"));
    }
    ctx.lab()?.modify_attributes(id, &changes)?;
    ctx.lab()?.refresh_metadata();
    // The model gives this action no output members.
    Ok(Vec::new())
}
