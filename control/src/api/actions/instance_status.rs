//! DescribeInstanceStatus: the system status check is the VMM's (is its
//! process alive), the instance status check the guest agent's (did it
//! check in over vsock since this VMM started; see `model::status`).

use time::OffsetDateTime;

use super::common::{check_ids, page, system_time_ms};
use super::filter::{all_match, Filter};
use super::instances::state_node;
use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::db::InstanceQuery;
use crate::model::ids::IdKind;
use crate::model::state::InstanceState;
use crate::model::status::InstanceHealth;
use crate::model::Instance;

/// The filters DescribeInstanceStatus takes (EC2's, without `event.*`:
/// ec2lab schedules no events).
const FILTERS: &[&str] = &[
    "availability-zone",
    "instance-state-code",
    "instance-state-name",
    "instance-status.reachability",
    "instance-status.status",
    "system-status.reachability",
    "system-status.status",
];

/// One status check's verdict as EC2 shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Check {
    status: &'static str,
    /// None where EC2 shows no details (instances not running).
    reachability: Option<&'static str>,
    impaired_since: Option<OffsetDateTime>,
}

impl Check {
    const NOT_APPLICABLE: Check = Check {
        status: "not-applicable",
        reachability: None,
        impaired_since: None,
    };

    fn from_health(h: InstanceHealth) -> Check {
        Check {
            status: h.status(),
            reachability: Some(h.reachability()),
            impaired_since: h.impaired_since(),
        }
    }

    fn node(self, name: &'static str) -> XmlNode {
        let mut members = vec![XmlNode::text("status", self.status)];
        if let Some(reachability) = self.reachability {
            let mut detail = vec![
                XmlNode::text("name", "reachability"),
                XmlNode::text("status", reachability),
            ];
            if let Some(since) = self.impaired_since {
                detail.push(XmlNode::timestamp("impairedSince", system_time_ms(since)));
            }
            members.push(XmlNode::list("details", [detail]));
        }
        XmlNode::element(name, members)
    }
}

/// The (system, instance) checks of `i`, whose VMM is alive or not, and
/// whose agent's record says `health`. Only running instances are checked,
/// as on EC2; an instance running without a VMM fails both.
fn checks(i: &Instance, vmm_alive: bool, health: InstanceHealth) -> (Check, Check) {
    match i.state {
        InstanceState::Running if vmm_alive => (
            Check::from_health(InstanceHealth::Ok),
            Check::from_health(health),
        ),
        InstanceState::Running => {
            let failed = Check {
                status: "impaired",
                reachability: Some("failed"),
                impaired_since: None,
            };
            (failed, failed)
        }
        _ => (Check::NOT_APPLICABLE, Check::NOT_APPLICABLE),
    }
}

/// `DescribeInstanceStatus`: running instances by default, all with
/// `IncludeAllInstances`.
pub fn describe_instance_status(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "InstanceId",
        "Filter",
        "MaxResults",
        "NextToken",
        "DryRun",
        "IncludeAllInstances",
    ])?;
    let ids = params.list("InstanceId")?;
    let all = params.bool("IncludeAllInstances")?.unwrap_or(false);
    let filters = Filter::parse_all(params, FILTERS)?;
    let lab = ctx.lab()?;
    let query = InstanceQuery {
        instance_ids: check_ids(IdKind::Instance, &ids)?,
        filters: Vec::new(),
        page: page(params)?,
    };
    let found = lab.db.list_instances(&query)?;
    let mut statuses = Vec::new();
    for i in found
        .items
        .iter()
        .filter(|i| all || i.state == InstanceState::Running)
    {
        let health = lab.instance_health(&i.id)?;
        let (system, instance) = checks(i, lab.live_process(i).is_some(), health);
        let field = |name: &str| -> Vec<String> {
            let value = match name {
                "availability-zone" => Some(i.placement.availability_zone.as_str()),
                "instance-state-code" => return vec![i.state.code().to_string()],
                "instance-state-name" => Some(i.state.name()),
                "instance-status.reachability" => instance.reachability,
                "instance-status.status" => Some(instance.status),
                "system-status.reachability" => system.reachability,
                "system-status.status" => Some(system.status),
                _ => None,
            };
            value.map(str::to_string).into_iter().collect()
        };
        if !all_match(&filters, field) {
            continue;
        }
        statuses.push(vec![
            XmlNode::text("instanceId", i.id.as_str()),
            XmlNode::text("availabilityZone", i.placement.availability_zone.as_str()),
            state_node("instanceState", i.state),
            system.node("systemStatus"),
            instance.node("instanceStatus"),
        ]);
    }
    let mut out = vec![XmlNode::list("instanceStatusSet", statuses)];
    if let Some(token) = found.next_token {
        out.push(XmlNode::text("nextToken", token));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::xml::render_response;

    #[test]
    fn a_failed_check_shows_when_it_failed_and_a_passed_one_does_not() {
        let since = time::macros::datetime!(2026-11-26 03:00:00 UTC);
        let failed = Check::from_health(InstanceHealth::Impaired { since });
        let xml = render_response("X", "r", &[failed.node("instanceStatus")]);
        assert!(xml.contains("<status>impaired</status>"), "{xml}");
        assert!(
            xml.contains("<name>reachability</name><status>failed</status>"),
            "{xml}"
        );
        assert!(
            xml.contains("<impairedSince>2026-11-26T03:00:00.000Z</impairedSince>"),
            "{xml}"
        );
        let passed = Check::from_health(InstanceHealth::Ok);
        let xml = render_response("X", "r", &[passed.node("instanceStatus")]);
        assert!(xml.contains("<status>ok</status>"), "{xml}");
        assert!(xml.contains("<status>passed</status>"), "{xml}");
        assert!(!xml.contains("impairedSince"), "{xml}");
        let xml = render_response("X", "r", &[Check::NOT_APPLICABLE.node("instanceStatus")]);
        assert!(xml.contains("<status>not-applicable</status>"), "{xml}");
        assert!(!xml.contains("details"), "EC2 shows no details here: {xml}");
    }
}
