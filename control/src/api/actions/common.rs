//! What the resource actions share: the lab from the context, request
//! filters and pages in the model's terms, id checks, and EC2 error codes
//! for the domain's errors.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use time::OffsetDateTime;

use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::db::DbError;
use crate::lifecycle::{Lab, LabError};
use crate::model::filter::{Filter, PageRequest};
use crate::model::ids::{self, IdKind};
use crate::model::Tags;

/// The lab behind the API (absent only in protocol-level tests).
pub fn lab(ctx: &Ctx<'_>) -> Result<Arc<Lab>, Ec2Error> {
    ctx.state.lab.clone().ok_or_else(|| {
        log::error!("{}: no lab behind the API", ctx.request_id);
        Ec2Error::internal_error()
    })
}

/// `Filter.N.Name` / `Filter.N.Value.M` as model filters; the repository
/// checks the names for the resource.
pub fn filters(params: &Params) -> Result<Vec<Filter>, Ec2Error> {
    params
        .structs("Filter")?
        .iter()
        .map(|member| {
            member.reject_unknown(&["Name", "Value"])?;
            Ok(Filter {
                name: member.required("Name")?.to_string(),
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

/// The EC2 error for a repository error.
pub fn db_error(ctx: &Ctx<'_>, e: DbError) -> Ec2Error {
    let bad =
        |code: &'static str, message: String| Ec2Error::new(StatusCode::BAD_REQUEST, code, message);
    match &e {
        DbError::NotFound { kind, ids } => {
            let message = match kind {
                IdKind::Instance => format!("The instance IDs '{}' do not exist", ids.join(", ")),
                IdKind::Image | IdKind::Kernel => {
                    format!("The image id '[{}]' does not exist", ids.join(", "))
                }
                IdKind::KeyPair => format!("The key pair '{}' does not exist", ids.join(", ")),
                IdKind::Vpc => format!("The vpc ID '{}' does not exist", ids.join(", ")),
                IdKind::Subnet => format!("The subnet ID '{}' does not exist", ids.join(", ")),
                IdKind::SecurityGroup => {
                    format!("The security group '{}' does not exist", ids.join(", "))
                }
                IdKind::NetworkInterface => format!(
                    "The networkInterface ID '{}' does not exist",
                    ids.join(", ")
                ),
                _ => e.to_string(),
            };
            bad(kind.not_found_code(), message)
        }
        DbError::Duplicate { kind, name } => match kind {
            IdKind::KeyPair => Ec2Error::key_pair_duplicate(name),
            IdKind::Image | IdKind::Kernel => bad(
                "InvalidAMIName.Duplicate",
                format!("AMI name {name} is already in use by AMI"),
            ),
            _ => bad("InvalidParameterValue", e.to_string()),
        },
        DbError::IncorrectState { .. } | DbError::StateConflict { .. } => {
            bad("IncorrectInstanceState", e.to_string())
        }
        DbError::Conflict { .. } => bad("InvalidParameterValue", e.to_string()),
        DbError::InvalidId(id) => bad("InvalidID", format!("The ID '{id}' is not valid")),
        DbError::InvalidQuery(f) => bad(f.code(), f.to_string()),
        DbError::Ipam(i) => bad(i.code(), i.to_string()),
        _ => {
            log::error!("{}: {e}", ctx.request_id);
            Ec2Error::internal_error()
        }
    }
}

/// The EC2 error for a lifecycle error.
pub fn lab_error(ctx: &Ctx<'_>, e: LabError) -> Ec2Error {
    match e {
        LabError::Db(e) => db_error(ctx, e),
        LabError::Transition(t) => Ec2Error::new(StatusCode::BAD_REQUEST, t.code(), t.to_string()),
        LabError::TerminationProtected(_) => Ec2Error::operation_not_permitted(e.to_string()),
        LabError::Boot(detail) => {
            log::error!("{}: {detail}", ctx.request_id);
            Ec2Error::internal_error()
        }
    }
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
    let mut tags = Vec::new();
    for spec in params.structs("TagSpecification")? {
        spec.reject_unknown(&["ResourceType", "Tag"])?;
        let rtype = spec.required("ResourceType")?;
        if rtype != resource_type {
            // Volumes and network interfaces get tags once they are
            // resources of their own; until then say so.
            if ["volume", "network-interface"].contains(&rtype) {
                continue;
            }
            return Err(Ec2Error::invalid_parameter_value(format!(
                "'{rtype}' is not a valid taggable resource type for this operation."
            )));
        }
        tags.extend(tag_pairs(&spec)?);
    }
    Ok(tags)
}

/// `Tag.N.Key` / `Tag.N.Value`, checked like EC2 (key 1-128 characters,
/// no `aws:` prefix, value up to 256).
pub fn tag_pairs(params: &Params) -> Result<Vec<(String, String)>, Ec2Error> {
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
