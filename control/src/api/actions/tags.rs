//! Tags: CreateTags, DeleteTags, DescribeTags on any ec2lab resource.

use super::common::{filters, page, tag_pairs};
use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::db::TagSelector;

fn resources(params: &Params) -> Result<Vec<String>, Ec2Error> {
    let ids = params.list("ResourceId")?;
    if ids.is_empty() {
        return Err(Ec2Error::missing_parameter("ResourceId"));
    }
    Ok(ids.iter().map(|s| s.to_string()).collect())
}

/// `CreateTags`.
pub fn create_tags(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["ResourceId", "Tag", "DryRun"])?;
    let ids = resources(params)?;
    let tags = tag_pairs(params)?;
    if tags.is_empty() {
        return Err(Ec2Error::missing_parameter("Tag"));
    }
    ctx.lab()?.db.create_tags(&ids, &tags)?;
    // Instance tags show in metadata where the instance allows it.
    ctx.lab()?.refresh_metadata();
    // The model gives this action no output members.
    Ok(Vec::new())
}

/// `DeleteTags`: `Tag.N.Key` with an optional value that must match.
pub fn delete_tags(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["ResourceId", "Tag", "DryRun"])?;
    let ids = resources(params)?;
    let selectors = params
        .structs("Tag")?
        .iter()
        .map(|t| {
            t.reject_unknown(&["Key", "Value"])?;
            Ok(TagSelector {
                key: t.required("Key")?.to_string(),
                value: t.optional("Value").map(str::to_string),
            })
        })
        .collect::<Result<Vec<_>, Ec2Error>>()?;
    ctx.lab()?.db.delete_tags(&ids, &selectors)?;
    ctx.lab()?.refresh_metadata();
    // The model gives this action no output members.
    Ok(Vec::new())
}

/// `DescribeTags`.
pub fn describe_tags(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["Filter", "MaxResults", "NextToken", "DryRun"])?;
    let found = ctx
        .lab()?
        .db
        .describe_tags(&filters(params)?, &page(params)?)?;
    let items = found.items.iter().map(|t| {
        vec![
            XmlNode::text("resourceId", t.resource_id.as_str()),
            XmlNode::text("resourceType", t.resource_type()),
            XmlNode::text("key", t.key.as_str()),
            XmlNode::text("value", t.value.as_str()),
        ]
    });
    let mut out = vec![XmlNode::list("tagSet", items)];
    if let Some(token) = found.next_token {
        out.push(XmlNode::text("nextToken", token));
    }
    Ok(out)
}
