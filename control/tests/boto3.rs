//! The real clients against a live `serve` on loopback: boto3 (and the
//! `aws` CLI) must parse every response and error exactly as they would
//! from EC2. Runs the venv's python (`scripts/python-env`); prints SKIPPED
//! without it unless `EC2LAB_REQUIRE_VENV=1`. Signatures are not checked
//! here (the server runs with `AcceptAnySignature`).

mod common;

use std::process::Command;

use ec2lab_control::api::actions::AppState;
use ec2lab_control::api::server::{self, AcceptAnySignature, ApiState};

/// The client side: calls the API and prints one JSON object of what the
/// client parsed, so the assertions stay in Rust.
const CLIENT: &str = r#"
import json, sys, urllib.request, urllib.error
import boto3, botocore.parsers, botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint = sys.argv[1]
ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                   config=Config(retries={"max_attempts": 1}))
out = {}

def error(call, **kw):
    try:
        call(**kw)
    except ClientError as e:
        return [e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"],
                e.response["ResponseMetadata"].get("RequestId", "")]
    return ["no error"]

r = ec2.describe_regions()
out["regions"] = [[x["RegionName"], x["Endpoint"], x["OptInStatus"]] for x in r["Regions"]]
out["request_id"] = r["ResponseMetadata"]["RequestId"]
out["request_id_header"] = r["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid")
out["content_type"] = r["ResponseMetadata"]["HTTPHeaders"].get("content-type")
out["regions_filtered"] = len(ec2.describe_regions(Filters=[{"Name": "region-name", "Values": ["eu-*"]}])["Regions"])
azs = ec2.describe_availability_zones()["AvailabilityZones"]
out["zones"] = [[z["ZoneName"], z["ZoneId"], z["State"], z["ZoneType"], z["Messages"]] for z in azs]
t = ec2.describe_instance_types(InstanceTypes=["t2.micro"])["InstanceTypes"]
out["t2_micro"] = [[x["InstanceType"], x["VCpuInfo"]["DefaultVCpus"], x["MemoryInfo"]["SizeInMiB"],
                    x["Hypervisor"], x["BareMetal"], x["ProcessorInfo"]["SustainedClockSpeedInGhz"],
                    x["ProcessorInfo"]["SupportedArchitectures"]] for x in t]
pages = ec2.get_paginator("describe_instance_types").paginate(PaginationConfig={"PageSize": 5})
out["all_types"] = [x["InstanceType"] for p in pages for x in p["InstanceTypes"]]
out["unsupported"] = error(ec2.describe_vpn_gateways)
out["bad_filter"] = error(ec2.describe_instance_types, Filters=[{"Name": "bogus", "Values": ["x"]}])
out["bad_type"] = error(ec2.describe_instance_types, InstanceTypes=["t9.huge"])
out["dry_run"] = error(ec2.describe_regions, DryRun=True)

# Malformed parameters that botocore would refuse to send: post them raw and
# parse the answer with botocore's own EC2 parser.
model = botocore.session.get_session().get_service_model("ec2")
parser = botocore.parsers.create_parser("ec2")
def raw(body):
    req = urllib.request.Request(endpoint + "/", data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        resp = urllib.request.urlopen(req)
    except urllib.error.HTTPError as e:
        resp = e
    parsed = parser.parse({"body": resp.read(), "headers": dict(resp.headers), "status_code": resp.status},
                          model.operation_model("DescribeRegions").output_shape)
    return [parsed.get("Error", {}).get("Code", "no error"), resp.status,
            parsed["ResponseMetadata"].get("RequestId", "")]
out["bad_bool"] = raw("Action=DescribeRegions&Version=2016-11-15&AllRegions=maybe")
out["bad_index"] = raw("Action=DescribeRegions&Version=2016-11-15&RegionName.0=us-east-1")
out["unknown_param"] = raw("Action=DescribeRegions&Version=2016-11-15&Bogus=1")
out["invalid_action"] = raw("Action=MakeCoffee&Version=2016-11-15")
out["missing_action"] = raw("Version=2016-11-15")
get = urllib.request.urlopen(endpoint + "/?Action=DescribeRegions&Version=2016-11-15")
parsed = parser.parse({"body": get.read(), "headers": dict(get.headers), "status_code": get.status},
                      model.operation_model("DescribeRegions").output_shape)
out["get_regions"] = [x["RegionName"] for x in parsed["Regions"]]
out["too_large"] = raw("Action=DescribeRegions&Version=2016-11-15&X=" + "a" * (1 << 20))
print(json.dumps(out))
"#;

#[test]
fn boto3_and_the_aws_cli_parse_every_response_and_error() {
    let test = "boto3_and_the_aws_cli_parse_every_response_and_error";
    let Some(python) = common::venv_python() else {
        common::skip(test, "no venv python");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind loopback");
    let endpoint = format!("http://{}", listener.local_addr().expect("local addr"));
    let app = AppState::new("us-east-1", common::guestless_lab(runtime.handle()));
    let state = ApiState::new(app, AcceptAnySignature);
    runtime.spawn(server::serve(listener, state));

    let output = Command::new(&python)
        .args(["-c", CLIENT, &endpoint])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("client prints JSON");
    let j = |v: &str| serde_json::from_str::<serde_json::Value>(v).expect("literal");

    assert_eq!(
        out["regions"],
        j(r#"[["us-east-1","ec2.us-east-1.amazonaws.com","opt-in-not-required"]]"#)
    );
    let request_id = out["request_id"].as_str().expect("request id");
    assert_eq!(request_id.len(), 36, "a UUID: {request_id}");
    assert_eq!(out["request_id_header"].as_str(), Some(request_id));
    assert_eq!(out["content_type"], "text/xml;charset=UTF-8");
    assert_eq!(out["regions_filtered"], 0);
    assert_eq!(
        out["get_regions"],
        j(r#"["us-east-1"]"#),
        "GET with a query"
    );
    assert_eq!(
        out["zones"],
        j(
            r#"[["us-east-1a","use1-az1","available","availability-zone",[]],
              ["us-east-1b","use1-az2","available","availability-zone",[]],
              ["us-east-1c","use1-az3","available","availability-zone",[]]]"#
        )
    );
    assert_eq!(
        out["t2_micro"],
        j(r#"[["t2.micro",1,1024,"xen",false,2.5,["x86_64"]]]"#)
    );
    let all: Vec<&str> = ec2lab_control::model::instance_types::INSTANCE_TYPES
        .iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(out["all_types"], serde_json::json!(all), "paginated by 5");

    let error = |key: &str, code: &str, status: u64| {
        assert_eq!(out[key][0], code, "{key}: {}", out[key]);
        assert_eq!(out[key][1], status, "{key}: {}", out[key]);
        assert_eq!(
            out[key][2].as_str().map(str::len),
            Some(36),
            "{key}: request id"
        );
    };
    error("unsupported", "UnsupportedOperation", 400);
    error("bad_filter", "InvalidParameterValue", 400);
    error("bad_type", "InvalidInstanceType", 400);
    error("dry_run", "DryRunOperation", 412);
    error("bad_bool", "InvalidParameterValue", 400);
    error("bad_index", "InvalidParameterValue", 400);
    error("unknown_param", "UnknownParameter", 400);
    error("invalid_action", "InvalidAction", 400);
    error("missing_action", "MissingAction", 400);
    error("too_large", "RequestEntityTooLarge", 413);

    let aws = python.with_file_name("aws");
    let cli = Command::new(&aws)
        .args([
            "ec2",
            "describe-instance-types",
            "--instance-types",
            "lab.nano",
        ])
        .args([
            "--endpoint-url",
            &endpoint,
            "--region",
            "us-east-1",
            "--output",
            "json",
        ])
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("run aws");
    assert!(
        cli.status.success(),
        "aws: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("aws prints JSON");
    assert_eq!(cli["InstanceTypes"][0]["MemoryInfo"]["SizeInMiB"], 128);
    assert_eq!(cli["InstanceTypes"][0]["VCpuInfo"]["DefaultVCpus"], 1);
}
