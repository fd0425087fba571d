//! What the resource actions share: request filters and pages in the
//! model's terms, id checks, timestamps and tag sets. (The domain's errors
//! become EC2 errors in `api::error`.)

use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use time::OffsetDateTime;

use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::model::filter::{self, Filter, FilterError, PageRequest};
use crate::model::ids::{self, IdKind};
use crate::model::{Tags, MAX_TAGS_PER_RESOURCE};

/// `Filter.N.Name` / `Filter.N.Value.M` as model filters; the repository
/// checks the names for the resource. EC2's limits on how many filters and
/// values are checked before any is collected (`FilterLimitExceeded`).
pub fn filters(params: &Params) -> Result<Vec<Filter>, Ec2Error> {
    let count = params.member_count("Filter");
    if count > filter::MAX_FILTERS {
        return Err(FilterError::TooManyFilters(count).into());
    }
    params
        .structs("Filter")?
        .iter()
        .map(|member| {
            member.reject_unknown(&["Name", "Value"])?;
            let name = member.required("Name")?;
            filter::check_limits(std::iter::once((name, member.member_count("Value"))))?;
            Ok(Filter {
                name: name.to_string(),
                values: member
                    .list("Value")?
                    .iter()
                    .map(|v| v.to_string())
                    .collect(),
            })
        })
        .collect()
}

/// `t` to the millisecond, for [`XmlNode::timestamp`]: launch, attach and
/// impaired-since times, shown with their milliseconds as EC2 does. Times
/// before the epoch render as the epoch rather than failing a response.
pub fn system_time_ms(t: OffsetDateTime) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_millis(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// `t` to the whole second, for [`XmlNode::timestamp`]: image creation
/// dates and key pair create times have always rendered as `….000Z`, and
/// keeping them so keeps DescribeImages / DescribeKeyPairs output stable.
/// Times before the epoch render as the epoch rather than failing a response.
pub fn system_time_secs(t: OffsetDateTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap_or(0))
}

/// `MaxResults` / `NextToken`.
pub fn page(params: &Params) -> Result<PageRequest, Ec2Error> {
    Ok(PageRequest {
        max_results: params.int("MaxResults")?,
        next_token: params.optional("NextToken").map(str::to_string),
    })
}

/// Checks that every id is a well-formed id of `kind`.
pub fn check_ids(kind: IdKind, list: &[&str]) -> Result<Vec<String>, Ec2Error> {
    list.iter()
        .map(|id| {
            ids::parse(kind, id)
                .map(|_| id.to_string())
                .map_err(|e| Ec2Error::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))
        })
        .collect()
}

/// `tagSet`.
pub fn tag_set(tags: &Tags) -> XmlNode {
    XmlNode::list(
        "tagSet",
        tags.iter().map(|(k, v)| {
            vec![
                XmlNode::text("key", k.as_str()),
                XmlNode::text("value", v.as_str()),
            ]
        }),
    )
}

/// `TagSpecification.N` members for `resource_type` as (key, value) pairs.
pub fn tag_specifications(
    params: &Params,
    resource_type: &str,
) -> Result<Vec<(String, String)>, Ec2Error> {
    Ok(tag_specifications_for(params, &[resource_type])?.remove(0))
}

/// `TagSpecification.N` of an action that creates resources of several
/// types (RunInstances: instance, volume, network-interface): the tags for
/// each of `resource_types`, in that order; any other type is refused.
pub fn tag_specifications_for(
    params: &Params,
    resource_types: &[&str],
) -> Result<Vec<Vec<(String, String)>>, Ec2Error> {
    let mut tags = vec![Vec::new(); resource_types.len()];
    for spec in params.structs("TagSpecification")? {
        spec.reject_unknown(&["ResourceType", "Tag"])?;
        let rtype = spec.required("ResourceType")?;
        let Some(slot) = resource_types.iter().position(|t| *t == rtype) else {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "'{rtype}' is not a valid taggable resource type for this operation."
            )));
        };
        tags[slot].extend(tag_pairs(&spec)?);
    }
    Ok(tags)
}

/// More tags than one resource may have is refused before any is read.
fn check_tag_count(count: usize) -> Result<(), Ec2Error> {
    if count > MAX_TAGS_PER_RESOURCE {
        return Err(Ec2Error::tag_limit_exceeded(format!(
            "The request has {count} tags; a resource may have at most {MAX_TAGS_PER_RESOURCE}"
        )));
    }
    Ok(())
}

/// `Tag.N.Key` / `Tag.N.Value`, checked like EC2 (key 1-128 characters,
/// no `aws:` prefix, value up to 256, at most 50 tags).
pub fn tag_pairs(params: &Params) -> Result<Vec<(String, String)>, Ec2Error> {
    check_tag_count(params.member_count("Tag"))?;
    params
        .structs("Tag")?
        .iter()
        .map(|t| {
            t.reject_unknown(&["Key", "Value"])?;
            let key = t.required("Key")?;
            let value = t.optional("Value").unwrap_or("");
            if key.is_empty() || key.chars().count() > 128 || key.starts_with("aws:") {
                return Err(Ec2Error::invalid_parameter_value(format!(
                    "Tag key '{key}' is invalid: 1 to 128 characters, not starting with 'aws:'"
                )));
            }
            if value.chars().count() > 256 {
                return Err(Ec2Error::invalid_parameter_value(format!(
                    "Tag value for key '{key}' exceeds 256 characters"
                )));
            }
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}
