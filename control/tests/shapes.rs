//! Responses checked against botocore's EC2 model: every implemented action
//! renders a valid response, and the checker itself rejects what botocore
//! would silently mangle.

mod common;

use ec2lab_control::api::actions::{self, AppState, Ctx, ACTIONS, EC2_OPERATIONS};
use ec2lab_control::api::query::Params;
use ec2lab_control::api::xml::{self, XmlNode};

fn run(action: &str, pairs: &[(&str, &str)]) -> String {
    let state = AppState::default();
    let ctx = Ctx {
        region: &state.region,
        request_id: "00000000-0000-4000-8000-000000000000",
        state: &state,
    };
    let params = Params::from_pairs(pairs.iter().copied());
    let members = actions::dispatch(&ctx, action, &params)
        .unwrap_or_else(|e| panic!("{action} {pairs:?} failed: {e}"));
    xml::render_response(action, ctx.request_id, &members)
}

#[test]
fn every_action_in_the_table_has_a_case() {
    for (name, _) in ACTIONS {
        assert!(
            common::CASES.iter().any(|(action, _)| action == name),
            "{name} is in the action table but has no case in tests/common/mod.rs"
        );
    }
}

#[test]
fn every_implemented_action_passes_the_botocore_shape_check() {
    let Some(model) = common::model("every_implemented_action_passes_the_botocore_shape_check")
    else {
        return;
    };
    for (action, pairs) in common::CASES {
        let xml = run(action, pairs);
        if let Err(errors) = model.validate_output(action, &xml) {
            panic!("{action} {pairs:?}:\n{}\n{xml}", errors.join("\n"));
        }
    }
}

#[test]
fn operations_list_matches_botocore_model() {
    let Some(model) = common::model("operations_list_matches_botocore_model") else {
        return;
    };
    let names = model.operation_names();
    assert_eq!(
        EC2_OPERATIONS,
        names.as_slice(),
        "regenerate control/src/api/actions/operations.rs from the model"
    );
}

fn assert_rejected(
    model: &ec2lab_control::api::shapes::ServiceModel,
    action: &str,
    xml: &str,
    expect: &str,
) {
    match model.validate_output(action, xml) {
        Ok(()) => panic!("accepted:\n{xml}"),
        Err(errors) => assert!(
            errors.iter().any(|e| e.contains(expect)),
            "no error mentioning {expect:?} in {errors:#?}"
        ),
    }
}

#[test]
fn checker_rejects_unknown_elements_bad_scalars_and_missing_required_members() {
    let Some(model) = common::model("checker_rejects_unknown_elements_bad_scalars") else {
        return;
    };
    let region = |extra: XmlNode| {
        xml::render_response(
            "DescribeRegions",
            "r",
            &[XmlNode::list(
                "regionInfo",
                [vec![XmlNode::text("regionName", "us-east-1"), extra]],
            )],
        )
    };
    assert_rejected(
        &model,
        "DescribeRegions",
        &region(XmlNode::text("regionname", "typo")),
        "regionname: unknown element",
    );
    let instance_type = |members: Vec<XmlNode>| {
        xml::render_response(
            "DescribeInstanceTypes",
            "r",
            &[XmlNode::list("instanceTypeSet", [members])],
        )
    };
    assert_rejected(
        &model,
        "DescribeInstanceTypes",
        &instance_type(vec![XmlNode::text("bareMetal", "yes")]),
        "not a boolean",
    );
    assert_rejected(
        &model,
        "DescribeInstanceTypes",
        &instance_type(vec![XmlNode::text("hypervisor", "kvm")]),
        "not a InstanceTypeHypervisor",
    );
    assert_rejected(
        &model,
        "DescribeInstanceTypes",
        &instance_type(vec![XmlNode::element(
            "memoryInfo",
            vec![XmlNode::text("sizeInMiB", "1.5")],
        )]),
        "not a 64-bit integer",
    );
    assert_rejected(
        &model,
        "DescribeInstanceTypes",
        &instance_type(vec![XmlNode::text("instanceType", "t9.huge")]),
        "not a InstanceType",
    );
    // Lists must hold <item>s, not bare members.
    let bare = xml::render_response(
        "DescribeRegions",
        "r",
        &[XmlNode::element(
            "regionInfo",
            vec![XmlNode::text("regionName", "us-east-1")],
        )],
    );
    assert_rejected(&model, "DescribeRegions", &bare, "must be <item>");
    // RunInstancesMonitoringEnabled requires Enabled.
    let spot = xml::render_response(
        "DescribeSpotInstanceRequests",
        "r",
        &[XmlNode::list(
            "spotInstanceRequestSet",
            [vec![XmlNode::element(
                "launchSpecification",
                vec![XmlNode::element("monitoring", vec![])],
            )]],
        )],
    );
    assert_rejected(
        &model,
        "DescribeSpotInstanceRequests",
        &spot,
        "required member Enabled",
    );
    let timestamps = xml::render_response(
        "DescribeSpotInstanceRequests",
        "r",
        &[XmlNode::list(
            "spotInstanceRequestSet",
            [vec![XmlNode::text("createTime", "25/11/2026")]],
        )],
    );
    assert_rejected(
        &model,
        "DescribeSpotInstanceRequests",
        &timestamps,
        "not an ISO 8601",
    );
    let wrong_root = region(XmlNode::text("optInStatus", "opt-in-not-required"))
        .replace("DescribeRegionsResponse", "DescribeRegionResponse");
    assert_rejected(
        &model,
        "DescribeRegions",
        &wrong_root,
        "expected <DescribeRegionsResponse>",
    );
    let no_ns = region(XmlNode::text("optInStatus", "x")).replace(" xmlns=", " xmlns:other=");
    assert_rejected(&model, "DescribeRegions", &no_ns, "namespace");
}

#[test]
fn checker_accepts_a_timestamp_and_ec2lab_instance_types() {
    let Some(model) = common::model("checker_accepts_a_timestamp_and_ec2lab_instance_types") else {
        return;
    };
    let spot = xml::render_response(
        "DescribeSpotInstanceRequests",
        "r",
        &[XmlNode::list(
            "spotInstanceRequestSet",
            [vec![XmlNode::timestamp(
                "createTime",
                std::time::SystemTime::now(),
            )]],
        )],
    );
    assert_eq!(
        model.validate_output("DescribeSpotInstanceRequests", &spot),
        Ok(())
    );
}
