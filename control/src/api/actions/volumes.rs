//! DescribeVolumes for the volumes ec2lab has: each instance's root
//! volume. The AWS Terraform provider reads them on every refresh of an
//! `aws_instance` (size, type, IOPS and encryption of `root_block_device`),
//! so without this no instance can be planned twice.

use super::common::{check_ids, system_time_ms, tag_set};
use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::model::ids::IdKind;
use crate::model::state::InstanceState;
use crate::model::{Instance, Tags, ROOT_DEVICE_NAME};

/// gp2's baseline: 3 IOPS per GiB, at least 100 (EC2's rule, reported as
/// EC2 reports it; the lab's disks are not throttled).
fn gp2_iops(size_gib: u32) -> u32 {
    size_gib.saturating_mul(3).clamp(100, 16000)
}

fn volume_node(i: &Instance) -> Vec<XmlNode> {
    let v = &i.root_volume;
    let attached = i.state != InstanceState::Terminated;
    let attachments: Vec<Vec<XmlNode>> = if attached {
        vec![vec![
            XmlNode::text("volumeId", v.volume_id.as_str()),
            XmlNode::text("instanceId", i.id.as_str()),
            XmlNode::text("device", ROOT_DEVICE_NAME),
            XmlNode::text("status", "attached"),
            XmlNode::timestamp("attachTime", system_time_ms(i.launch_time)),
            XmlNode::bool("deleteOnTermination", v.delete_on_termination),
        ]]
    } else {
        Vec::new()
    };
    let mut n = vec![
        XmlNode::text("volumeId", v.volume_id.as_str()),
        XmlNode::number("size", v.size_gib),
        XmlNode::text("snapshotId", ""),
        XmlNode::text("availabilityZone", i.placement.availability_zone.as_str()),
        XmlNode::text("status", if attached { "in-use" } else { "available" }),
        XmlNode::timestamp("createTime", system_time_ms(i.launch_time)),
        XmlNode::list("attachmentSet", attachments),
    ];
    let tags: &Tags = &v.tags;
    if !tags.is_empty() {
        n.push(tag_set(tags));
    }
    n.extend([
        XmlNode::text("volumeType", "gp2"),
        XmlNode::bool("encrypted", false),
        XmlNode::number("iops", gp2_iops(v.size_gib)),
        XmlNode::bool("multiAttachEnabled", false),
    ]);
    n
}

/// `DescribeVolumes`: by id, or all; every answer fits one page.
pub fn describe_volumes(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["VolumeId", "MaxResults", "NextToken", "DryRun"])?;
    let ids = check_ids(IdKind::Volume, &params.list("VolumeId")?)?;
    let found = ctx.lab()?.root_volumes(&ids)?;
    Ok(vec![XmlNode::list(
        "volumeSet",
        found.iter().map(volume_node),
    )])
}
