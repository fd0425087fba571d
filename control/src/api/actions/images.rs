//! Images: DescribeImages over the registered AMIs and AKIs, and
//! RegisterImage / DeregisterImage over image directories on this host.

use crate::images::RegisterRequest;

use super::common::{check_ids, filters, page, system_time_secs, tag_set};
use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::db::ImageQuery;
use crate::model::filter::Filter;
use crate::model::ids::IdKind;
use crate::model::{Image, ImageKind, ImageState, DEFAULT_OWNER_ID, ROOT_DEVICE_NAME};

fn image_node(i: &Image) -> Vec<XmlNode> {
    let mut n = vec![
        XmlNode::text("imageId", i.id.as_str()),
        XmlNode::text("imageLocation", i.dir.display().to_string()),
        XmlNode::text("imageState", i.state.name()),
        XmlNode::text("imageOwnerId", i.owner_id.as_str()),
        XmlNode::timestamp("creationDate", system_time_secs(i.created)),
        XmlNode::bool("isPublic", false),
        XmlNode::text("architecture", i.architecture.as_str()),
        XmlNode::text("imageType", i.kind.name()),
    ];
    if let Some(k) = &i.kernel_id {
        n.push(XmlNode::text("kernelId", k.as_str()));
    }
    n.push(XmlNode::text("name", i.name.as_str()));
    if let Some(d) = &i.description {
        n.push(XmlNode::text("description", d.as_str()));
    }
    if i.kind == ImageKind::Machine {
        n.extend([
            XmlNode::text("rootDeviceType", "ebs"),
            XmlNode::text("rootDeviceName", ROOT_DEVICE_NAME),
            XmlNode::list(
                "blockDeviceMapping",
                [vec![
                    XmlNode::text("deviceName", ROOT_DEVICE_NAME),
                    XmlNode::element(
                        "ebs",
                        vec![
                            XmlNode::bool("deleteOnTermination", true),
                            XmlNode::number("volumeSize", i.root_size_gib.unwrap_or(1)),
                            XmlNode::text("volumeType", "gp3"),
                            XmlNode::bool("encrypted", false),
                        ],
                    ),
                ]],
            ),
        ]);
    } else {
        n.push(XmlNode::text("rootDeviceType", "instance-store"));
    }
    n.extend([
        XmlNode::text(
            "virtualizationType",
            if i.kind == ImageKind::Machine {
                "hvm"
            } else {
                "paravirtual"
            },
        ),
        XmlNode::text("hypervisor", "xen"),
        XmlNode::text("platformDetails", "Linux/UNIX"),
        XmlNode::text("usageOperation", "RunInstances"),
        XmlNode::bool("enaSupport", true),
    ]);
    if !i.tags.is_empty() {
        n.push(tag_set(&i.tags));
    }
    n
}

/// `DescribeImages` (ImageId.N, Owner.N, ExecutableBy.N, filters).
pub fn describe_images(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "ImageId",
        "Owner",
        "ExecutableBy",
        "Filter",
        "IncludeDeprecated",
        "IncludeDisabled",
        "MaxResults",
        "NextToken",
        "DryRun",
    ])?;
    let image_ids: Vec<String> = params
        .list("ImageId")?
        .iter()
        .map(|id| match IdKind::of(id) {
            Some(IdKind::Kernel) => check_ids(IdKind::Kernel, &[id]).map(|mut v| v.remove(0)),
            _ => check_ids(IdKind::Image, &[id]).map(|mut v| v.remove(0)),
        })
        .collect::<Result<_, _>>()?;
    let owners = params.list("Owner")?;
    let mut filters = filters(params)?;
    if !owners.is_empty() {
        // Every image here is the account's own: "self" and the account
        // id match, "amazon" and other accounts match nothing.
        let values: Vec<String> = owners
            .iter()
            .map(|o| {
                if *o == "self" {
                    DEFAULT_OWNER_ID.to_string()
                } else {
                    o.to_string()
                }
            })
            .collect();
        filters.push(Filter {
            name: "owner-id".to_string(),
            values,
        });
    }
    let lab = ctx.lab()?;
    let found = lab.db.list_images(&ImageQuery {
        image_ids,
        filters,
        page: page(params)?,
    })?;
    let visible = found
        .items
        .iter()
        .filter(|i| i.state == ImageState::Available)
        .map(image_node);
    let mut out = vec![XmlNode::list("imagesSet", visible)];
    if let Some(t) = found.next_token {
        out.push(XmlNode::text("nextToken", t));
    }
    Ok(out)
}

/// `RegisterImage`: `ImageLocation` is an image directory in the lab's
/// image store (what scripts/build-images or scripts/import-image wrote);
/// `crate::images` checks it.
pub fn register_image(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "ImageLocation",
        "Name",
        "Description",
        "Architecture",
        "KernelId",
        "RootDeviceName",
        "BlockDeviceMapping",
        "VirtualizationType",
        "EnaSupport",
        "BootMode",
        "DryRun",
    ])?;
    let request = RegisterRequest {
        location: params.required("ImageLocation")?.to_string(),
        name: params.optional("Name").map(str::to_string),
        description: params.optional("Description").map(str::to_string),
        kernel_id: match params.optional("KernelId") {
            Some(k) => Some(check_ids(IdKind::Kernel, &[k])?.remove(0)),
            None => None,
        },
    };
    let image_id = ctx.lab()?.register_image(&request)?;
    Ok(vec![XmlNode::text("imageId", image_id)])
}

/// `DeregisterImage`: running instances keep their volumes.
pub fn deregister_image(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["ImageId", "DryRun", "DeleteAssociatedSnapshots"])?;
    let id = params.required("ImageId")?;
    check_ids(IdKind::Image, &[id])?;
    let lab = ctx.lab()?;
    lab.db
        .deregister_image(id, time::OffsetDateTime::now_utc())?;
    // The model gives this action no output members.
    Ok(Vec::new())
}
