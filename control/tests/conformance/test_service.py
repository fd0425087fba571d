"""Regions, zones, instance types, images, and the protocol's edges:
unsupported actions, signatures, dry runs."""
import os

import boto3
import botocore
import pytest

from conftest import ENDPOINT, aws, aws_error


def test_describe_regions_and_availability_zones(ec2):
    regions = aws("describe-regions")["Regions"]
    assert "us-east-1" in [r["RegionName"] for r in regions]
    zones = ec2.describe_availability_zones()["AvailabilityZones"]
    assert zones and all(z["State"] == "available" for z in zones)
    assert all(z["ZoneName"].startswith(os.environ.get("AWS_DEFAULT_REGION", "us-east-1")) for z in zones)


def test_describe_instance_types_reports_aws_sizes(ec2):
    types = ec2.describe_instance_types(InstanceTypes=["t2.micro", "m5.large"])["InstanceTypes"]
    by_name = {t["InstanceType"]: t for t in types}
    assert by_name["t2.micro"]["VCpuInfo"]["DefaultVCpus"] == 1
    assert by_name["t2.micro"]["MemoryInfo"]["SizeInMiB"] == 1024
    assert by_name["m5.large"]["VCpuInfo"]["DefaultVCpus"] == 2
    assert by_name["m5.large"]["MemoryInfo"]["SizeInMiB"] == 8192


def test_describe_images_finds_lab_minimal_by_name_wildcard(ec2, lab_minimal_ami):
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": ["lab-*"]}])["Images"]
    assert lab_minimal_ami in [i["ImageId"] for i in images]
    image = ec2.describe_images(ImageIds=[lab_minimal_ami])["Images"][0]
    assert image["Architecture"] == "x86_64"
    assert image["RootDeviceType"] == "ebs"
    assert image["State"] == "available"
    assert image["KernelId"].startswith("aki-")
    kernels = ec2.describe_images(Filters=[{"Name": "image-type", "Values": ["kernel"]}])["Images"]
    assert image["KernelId"] in [k["ImageId"] for k in kernels]
    err = aws_error("describe-images", "--image-ids", "ami-0123456789abcdef0")
    assert "InvalidAMIID.NotFound" in err


def test_unsupported_actions_say_so(ec2):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_spot_price_history()
    assert e.value.response["Error"]["Code"] == "UnsupportedOperation"


def test_wrong_credentials_get_auth_failure():
    bad = boto3.client(
        "ec2",
        endpoint_url=ENDPOINT,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key="not-the-secret",
    )
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bad.describe_regions()
    assert e.value.response["Error"]["Code"] == "AuthFailure"
    unknown = boto3.client(
        "ec2", endpoint_url=ENDPOINT, aws_access_key_id="AKIAUNKNOWN000000000", aws_secret_access_key="x"
    )
    with pytest.raises(botocore.exceptions.ClientError) as e:
        unknown.describe_regions()
    assert e.value.response["Error"]["Code"] == "AuthFailure"


def test_unsigned_requests_get_auth_failure():
    unsigned = boto3.client(
        "ec2", endpoint_url=ENDPOINT, config=botocore.config.Config(signature_version=botocore.UNSIGNED)
    )
    with pytest.raises(botocore.exceptions.ClientError) as e:
        unsigned.describe_regions()
    assert e.value.response["Error"]["Code"] == "AuthFailure"
