//! Shared by the integration tests: finding the Python venv and botocore's
//! model, and skipping (loudly) when they are absent unless
//! `EC2LAB_REQUIRE_VENV=1` makes that a failure.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;

use ec2lab_control::api::shapes::ServiceModel;

/// Whether a missing venv must fail the test instead of skipping it.
pub fn venv_required() -> bool {
    std::env::var("EC2LAB_REQUIRE_VENV").is_ok_and(|v| v == "1")
}

/// Prints a SKIPPED line, or panics when the venv is required.
pub fn skip(test: &str, why: &str) {
    assert!(!venv_required(), "{test}: {why} (EC2LAB_REQUIRE_VENV=1)");
    // Written to the real stderr, past libtest's capture, so a skip shows
    // in the output of a passing run.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why}; run scripts/python-env to create it"
    );
}

/// The venv's python, made by `scripts/python-env`.
pub fn venv_python() -> Option<PathBuf> {
    let cache = std::env::var_os("EC2LAB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ec2lab")))?;
    let python = cache.join("venv/bin/python");
    python.is_file().then_some(python)
}

/// botocore's EC2 model, or `None` after printing SKIPPED.
pub fn model(test: &str) -> Option<ServiceModel> {
    match ServiceModel::load() {
        Ok(model) => Some(model),
        Err(err) => {
            skip(test, &err.to_string());
            None
        }
    }
}

/// Requests run through every implemented action: each one's response must
/// pass botocore's shape check. Add a case here with each new action (the
/// test `every_action_in_the_table_has_a_case` insists).
pub const CASES: &[(&str, &[(&str, &str)])] = &[
    ("DescribeRegions", &[]),
    ("DescribeRegions", &[("RegionName.1", "us-east-1")]),
    (
        "DescribeRegions",
        &[
            ("Filter.1.Name", "region-name"),
            ("Filter.1.Value.1", "eu-*"),
        ],
    ),
    ("DescribeAvailabilityZones", &[]),
    (
        "DescribeAvailabilityZones",
        &[("ZoneName.1", "us-east-1b"), ("ZoneId.1", "use1-az3")],
    ),
    ("DescribeInstanceTypes", &[]),
    (
        "DescribeInstanceTypes",
        &[
            ("InstanceType.1", "t2.micro"),
            ("InstanceType.2", "lab.nano"),
        ],
    ),
    (
        "DescribeInstanceTypes",
        &[
            ("Filter.1.Name", "instance-type"),
            ("Filter.1.Value.1", "t3.*"),
        ],
    ),
    ("DescribeInstanceTypes", &[("MaxResults", "5")]),
];
