"""Elastic IPs through the aws CLI and boto3, without a guest: allocation
from the lab's pool, DescribeAddresses with ids, addresses and filters,
EC2's limit of five, and the errors for unknown and malformed ids. The
associations (and their effect on a running guest) are in
test_instances.py and test_vpc.py."""
import botocore
import pytest

from conftest import aws, aws_error


def test_allocate_describe_release(ec2):
    first = aws("allocate-address", "--domain", "vpc", "--tag-specifications",
                "ResourceType=elastic-ip,Tags=[{Key=Name,Value=web}]")
    second = ec2.allocate_address(Domain="vpc")
    try:
        assert first["Domain"] == "vpc"
        assert first["AllocationId"].startswith("eipalloc-")
        assert first["PublicIp"] != second["PublicIp"]
        both = {a["AllocationId"]: a for a in aws("describe-addresses")["Addresses"]}
        assert set(both) >= {first["AllocationId"], second["AllocationId"]}
        mine = both[first["AllocationId"]]
        assert mine["PublicIp"] == first["PublicIp"]
        assert mine["Tags"] == [{"Key": "Name", "Value": "web"}]
        assert "AssociationId" not in mine
        by_ip = ec2.describe_addresses(PublicIps=[second["PublicIp"]])["Addresses"]
        assert [a["AllocationId"] for a in by_ip] == [second["AllocationId"]]
        by_tag = aws("describe-addresses", "--filters", "Name=tag:Name,Values=web")["Addresses"]
        assert [a["AllocationId"] for a in by_tag] == [first["AllocationId"]]
        # Not associated: disassociating fails, releasing works.
        assert "InvalidAssociationID.NotFound" in aws_error(
            "disassociate-address", "--association-id", "eipassoc-0123456789abcdef0")
    finally:
        aws("release-address", "--allocation-id", first["AllocationId"])
        ec2.release_address(AllocationId=second["AllocationId"])
    assert "InvalidAllocationID.NotFound" in aws_error(
        "describe-addresses", "--allocation-ids", first["AllocationId"])
    assert "InvalidAllocationID.NotFound" in aws_error(
        "release-address", "--allocation-id", first["AllocationId"])


def test_limits_and_bad_input(ec2):
    held = [ec2.allocate_address(Domain="vpc") for _ in range(5)]
    try:
        with pytest.raises(botocore.exceptions.ClientError) as over:
            ec2.allocate_address(Domain="vpc")
        assert over.value.response["Error"]["Code"] == "AddressLimitExceeded"
        assert "InvalidInstanceID.NotFound" in aws_error(
            "associate-address", "--instance-id", "i-0123456789abcdef0",
            "--allocation-id", held[0]["AllocationId"])
    finally:
        for a in held:
            ec2.release_address(AllocationId=a["AllocationId"])
    assert "InvalidAllocationID.Malformed" in aws_error(
        "release-address", "--allocation-id", "eipalloc-nothex")
    assert "InvalidAddress.NotFound" in aws_error(
        "describe-addresses", "--public-ips", "192.0.2.9")
    assert "InvalidParameterValue" in aws_error("allocate-address", "--domain", "standard")
