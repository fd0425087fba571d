//! The static, host-independent describes: regions, availability zones and
//! instance types. ec2lab is one region with three zones; the zones are
//! labels for placement, all on this host.

use super::filter::{all_match, Filter};
use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::model::instance_types::{InstanceType, INSTANCE_TYPES};
use crate::model::zones::zones;

/// `DescribeRegions`: the configured region, which is the only one there is.
pub fn describe_regions(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["RegionName", "AllRegions", "DryRun", "Filter"])?;
    params.bool("AllRegions")?;
    let filters = Filter::parse_all(params, &["endpoint", "opt-in-status", "region-name"])?;
    let names = params.list("RegionName")?;
    if let Some(unknown) = names.iter().find(|n| **n != ctx.region) {
        return Err(Ec2Error::invalid_parameter_value(format!(
            "Invalid region: {unknown}"
        )));
    }
    let endpoint = format!("ec2.{}.amazonaws.com", ctx.region);
    let visible = all_match(&filters, |name| match name {
        "endpoint" => vec![endpoint.clone()],
        "opt-in-status" => vec!["opt-in-not-required".to_owned()],
        _ => vec![ctx.region.to_owned()],
    });
    let regions = visible.then(|| {
        vec![
            XmlNode::text("regionName", ctx.region),
            XmlNode::text("regionEndpoint", endpoint.as_str()),
            XmlNode::text("optInStatus", "opt-in-not-required"),
        ]
    });
    Ok(vec![XmlNode::list("regionInfo", regions)])
}

/// `DescribeAvailabilityZones`: `{region}a`, `b`, `c`, all available.
pub fn describe_availability_zones(
    ctx: &Ctx<'_>,
    params: &Params,
) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "ZoneName",
        "ZoneId",
        "AllAvailabilityZones",
        "DryRun",
        "Filter",
    ])?;
    params.bool("AllAvailabilityZones")?;
    let filters = Filter::parse_all(
        params,
        &[
            "group-name",
            "message",
            "network-border-group",
            "opt-in-status",
            "region-name",
            "state",
            "zone-id",
            "zone-name",
            "zone-type",
        ],
    )?;
    let all = zones(ctx.region);
    let names = params.list("ZoneName")?;
    let ids = params.list("ZoneId")?;
    let unknown = names
        .iter()
        .find(|n| all.iter().all(|z| z.name != **n))
        .or_else(|| ids.iter().find(|id| all.iter().all(|z| z.id != **id)));
    if let Some(unknown) = unknown {
        return Err(Ec2Error::invalid_parameter_value(format!(
            "Invalid availability zone: [{unknown}]"
        )));
    }
    let selected = all.iter().filter(|z| {
        let named = (names.is_empty() && ids.is_empty())
            || names.contains(&z.name.as_str())
            || ids.contains(&z.id.as_str());
        named
            && all_match(&filters, |name| match name {
                "zone-name" => vec![z.name.clone()],
                "zone-id" => vec![z.id.clone()],
                "state" => vec!["available".to_owned()],
                "zone-type" => vec!["availability-zone".to_owned()],
                "opt-in-status" => vec!["opt-in-not-required".to_owned()],
                "message" => vec![],
                _ => vec![ctx.region.to_owned()],
            })
    });
    let items = selected.map(|z| {
        vec![
            XmlNode::text("zoneName", z.name.as_str()),
            XmlNode::text("zoneId", z.id.as_str()),
            XmlNode::text("zoneState", "available"),
            XmlNode::text("regionName", ctx.region),
            XmlNode::text("groupName", ctx.region),
            XmlNode::text("networkBorderGroup", ctx.region),
            XmlNode::text("optInStatus", "opt-in-not-required"),
            XmlNode::text("zoneType", "availability-zone"),
            XmlNode::list("messageSet", []),
        ]
    });
    Ok(vec![XmlNode::list("availabilityZoneInfo", items)])
}

/// `DescribeInstanceTypes`, paginated as EC2 does (`MaxResults` 5–100,
/// `NextToken` opaque to clients; here the offset of the next item).
pub fn describe_instance_types(_ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "DryRun",
        "InstanceType",
        "Filter",
        "MaxResults",
        "NextToken",
    ])?;
    let filters = Filter::parse_all(
        params,
        &[
            "burstable-performance-supported",
            "current-generation",
            "free-tier-eligible",
            "hypervisor",
            "instance-type",
            "memory-info.size-in-mib",
            "processor-info.supported-architecture",
            "vcpu-info.default-vcpus",
        ],
    )?;
    let wanted = params.list("InstanceType")?;
    let unknown: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| INSTANCE_TYPES.iter().all(|t| t.name != *w))
        .collect();
    if !unknown.is_empty() {
        return Err(Ec2Error::invalid_instance_type(&unknown));
    }
    let max_results = params.int_in("MaxResults", 5, 100)?;
    let start = match params.optional("NextToken") {
        None | Some("") => 0,
        Some(token) => token.parse::<usize>().map_err(|_| {
            Ec2Error::invalid_parameter_value(format!("Invalid NextToken: {token}"))
        })?,
    };
    let matching: Vec<&InstanceType> = INSTANCE_TYPES
        .iter()
        .filter(|t| wanted.is_empty() || wanted.contains(&t.name))
        .filter(|t| all_match(&filters, |name| instance_type_field(t, name)))
        .collect();
    let page_len = max_results.map_or(matching.len(), |n| n.unsigned_abs() as usize);
    let page = matching.iter().skip(start).take(page_len);
    let mut members = vec![XmlNode::list(
        "instanceTypeSet",
        page.map(|t| instance_type_info(t)),
    )];
    let next = start.saturating_add(page_len);
    if next < matching.len() {
        members.push(XmlNode::text("nextToken", next.to_string()));
    }
    Ok(members)
}

fn instance_type_field(t: &InstanceType, filter: &str) -> Vec<String> {
    let value = match filter {
        "burstable-performance-supported" => t.burstable.to_string(),
        "current-generation" => "true".to_owned(),
        "free-tier-eligible" => t.free_tier.to_string(),
        "hypervisor" => t.hypervisor.as_str().to_owned(),
        "memory-info.size-in-mib" => t.memory_mib.to_string(),
        "processor-info.supported-architecture" => "x86_64".to_owned(),
        "vcpu-info.default-vcpus" => t.vcpus.to_string(),
        _ => t.name.to_owned(),
    };
    vec![value]
}

fn instance_type_info(t: &InstanceType) -> Vec<XmlNode> {
    let card = vec![
        XmlNode::number("networkCardIndex", 0),
        XmlNode::text("networkPerformance", t.network_performance),
        XmlNode::number("maximumNetworkInterfaces", t.max_network_interfaces),
    ];
    vec![
        XmlNode::text("instanceType", t.name),
        XmlNode::bool("currentGeneration", true),
        XmlNode::bool("freeTierEligible", t.free_tier),
        XmlNode::text_list("supportedUsageClasses", ["on-demand", "spot"]),
        XmlNode::text_list("supportedRootDeviceTypes", ["ebs"]),
        XmlNode::text_list("supportedVirtualizationTypes", ["hvm"]),
        XmlNode::bool("bareMetal", false),
        XmlNode::text("hypervisor", t.hypervisor.as_str()),
        XmlNode::element(
            "processorInfo",
            vec![
                XmlNode::text_list("supportedArchitectures", ["x86_64"]),
                XmlNode::number("sustainedClockSpeedInGhz", t.clock_ghz),
            ],
        ),
        XmlNode::element(
            "vCpuInfo",
            vec![
                XmlNode::number("defaultVCpus", t.vcpus),
                XmlNode::number("defaultCores", t.cores),
                XmlNode::number("defaultThreadsPerCore", t.threads_per_core),
            ],
        ),
        XmlNode::element(
            "memoryInfo",
            vec![XmlNode::number("sizeInMiB", t.memory_mib)],
        ),
        XmlNode::bool("instanceStorageSupported", false),
        XmlNode::element(
            "networkInfo",
            vec![
                XmlNode::text("networkPerformance", t.network_performance),
                XmlNode::number("maximumNetworkInterfaces", t.max_network_interfaces),
                XmlNode::number("maximumNetworkCards", 1),
                XmlNode::number("defaultNetworkCardIndex", 0),
                XmlNode::list("networkCards", [card]),
                XmlNode::number("ipv4AddressesPerInterface", t.ipv4_per_interface),
                XmlNode::number("ipv6AddressesPerInterface", 0),
                XmlNode::bool("ipv6Supported", false),
                XmlNode::text("enaSupport", t.ena),
                XmlNode::bool("efaSupported", false),
                XmlNode::bool("encryptionInTransitSupported", false),
            ],
        ),
        XmlNode::bool("hibernationSupported", true),
        XmlNode::bool("burstablePerformanceSupported", t.burstable),
        XmlNode::bool("dedicatedHostsSupported", false),
        XmlNode::bool("autoRecoverySupported", true),
        XmlNode::text_list("supportedBootModes", ["legacy-bios"]),
    ]
}
