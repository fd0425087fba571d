//! The CPU credit option of burstable instances:
//! DescribeInstanceCreditSpecifications and
//! ModifyInstanceCreditSpecification. The rules (which types burst, each
//! type's default) are the lab's (`crate::instances`, `model::CpuCredits`).
//!
//! The AWS Terraform provider reads the credit specification of every T2,
//! T3, T3a and T4g instance on each refresh and waits until it gets one, so
//! an `aws_instance` of the default `t2.micro` needs this to plan at all.
//! Credits themselves are not metered: the option is stored and reported.

use super::common::{check_ids, filters};
use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::model::ids::IdKind;
use crate::model::CpuCredits;

/// A `CpuCredits` value, as RunInstances and the modification take it.
pub(super) fn cpu_credits(name: &str) -> Result<CpuCredits, Ec2Error> {
    CpuCredits::from_name(name).ok_or_else(|| {
        Ec2Error::invalid_parameter_value(format!(
            "Value ({name}) for parameter cpuCredits is invalid. Expected: 'standard', 'unlimited'."
        ))
    })
}

/// `DescribeInstanceCreditSpecifications`: every answer fits one page, so
/// there is never a `nextToken`.
pub fn describe_instance_credit_specifications(
    ctx: &Ctx<'_>,
    params: &Params,
) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceId", "Filter", "MaxResults", "NextToken", "DryRun"])?;
    let ids = check_ids(IdKind::Instance, &params.list("InstanceId")?)?;
    if !ids.is_empty() && params.optional("MaxResults").is_some() {
        return Err(Ec2Error::invalid_parameter_combination(
            "The parameter instancesSet cannot be used with the parameter maxResults",
        ));
    }
    params.int_in("MaxResults", 5, 1000)?;
    let mut wanted: Option<Vec<String>> = None;
    for filter in filters(params)? {
        if filter.name != "instance-id" {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "The filter '{}' is invalid",
                filter.name
            )));
        }
        wanted.get_or_insert_with(Vec::new).extend(filter.values);
    }
    let found = ctx.lab()?.credit_specifications(&ids)?;
    let items = found
        .iter()
        .filter(|(id, _)| wanted.as_ref().is_none_or(|w| w.contains(id)))
        .map(|(id, credits)| {
            vec![
                XmlNode::text("instanceId", id.as_str()),
                XmlNode::text("cpuCredits", credits.name()),
            ]
        });
    Ok(vec![XmlNode::list("instanceCreditSpecificationSet", items)])
}

/// `ModifyInstanceCreditSpecification`: each instance succeeds or fails on
/// its own, reported in the two sets as EC2 does.
pub fn modify_instance_credit_specification(
    ctx: &Ctx<'_>,
    params: &Params,
) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["InstanceCreditSpecification", "ClientToken", "DryRun"])?;
    let mut changes = Vec::new();
    for spec in params.structs("InstanceCreditSpecification")? {
        spec.reject_unknown(&["InstanceId", "CpuCredits"])?;
        let id = spec.required("InstanceId")?;
        check_ids(IdKind::Instance, &[id])?;
        changes.push((id.to_string(), cpu_credits(spec.required("CpuCredits")?)?));
    }
    if changes.is_empty() {
        return Err(Ec2Error::missing_parameter("InstanceCreditSpecification"));
    }
    let mut successful = Vec::new();
    let mut unsuccessful = Vec::new();
    for (id, outcome) in ctx.lab()?.modify_credit_specifications(&changes) {
        match outcome {
            Ok(()) => successful.push(vec![XmlNode::text("instanceId", id)]),
            Err(e) => {
                let e = Ec2Error::from(e);
                unsuccessful.push(vec![
                    XmlNode::text("instanceId", id),
                    XmlNode::element(
                        "error",
                        vec![
                            XmlNode::text("code", e.code().to_string()),
                            XmlNode::text("message", e.message().to_string()),
                        ],
                    ),
                ]);
            }
        }
    }
    Ok(vec![
        XmlNode::list("successfulInstanceCreditSpecificationSet", successful),
        XmlNode::list("unsuccessfulInstanceCreditSpecificationSet", unsuccessful),
    ])
}
