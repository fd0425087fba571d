"""Security groups through the aws CLI and boto3, as the issue's example
uses them: create, authorize with the CLI's shorthand and with
IpPermissions, describe rules, revoke, delete, and EC2's error codes.
Guestless: tests/conformance.rs also runs this file against a daemon that
cannot boot anything."""
import botocore
import pytest

from conftest import aws, aws_error


def rules_of(ec2, group_id):
    return ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [group_id]}])["SecurityGroupRules"]


def test_create_authorize_revoke_delete_with_the_cli(ec2):
    created = aws("create-security-group", "--group-name", "WebSSHAccess", "--description", "WebSSHAccess",
                  "--tag-specifications", "ResourceType=security-group,Tags=[{Key=Name,Value=web}]")
    gid = created["GroupId"]
    assert gid.startswith("sg-")
    try:
        group = aws("describe-security-groups", "--group-ids", gid)["SecurityGroups"][0]
        # EC2's defaults: nothing in, everything out.
        assert group["IpPermissions"] == []
        assert group["IpPermissionsEgress"][0]["IpProtocol"] == "-1"
        assert group["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
        assert group["Tags"] == [{"Key": "Name", "Value": "web"}]
        assert "InvalidGroup.Duplicate" in aws_error("create-security-group", "--group-name", "WebSSHAccess",
                                                     "--description", "again")

        added = aws("authorize-security-group-ingress", "--group-name", "WebSSHAccess",
                    "--protocol", "tcp", "--port", "22", "--cidr", "0.0.0.0/0")
        assert added["Return"] is True
        [ssh] = added["SecurityGroupRules"]
        assert ssh["SecurityGroupRuleId"].startswith("sgr-")
        assert (ssh["IpProtocol"], ssh["FromPort"], ssh["ToPort"], ssh["CidrIpv4"], ssh["IsEgress"]) == \
            ("tcp", 22, 22, "0.0.0.0/0", False)
        assert "InvalidPermission.Duplicate" in aws_error(
            "authorize-security-group-ingress", "--group-id", gid, "--protocol", "tcp", "--port", "22",
            "--cidr", "0.0.0.0/0")
        assert "InvalidParameterValue" in aws_error(
            "authorize-security-group-ingress", "--group-id", gid, "--protocol", "tcp", "--port", "22",
            "--cidr", "10.0.0.1/8")
        assert "InvalidParameterValue" in aws_error(
            "authorize-security-group-ingress", "--group-id", gid, "--protocol", "tcp", "--port", "70000",
            "--cidr", "10.0.0.0/8")

        by_rule = {r["SecurityGroupRuleId"]: r for r in rules_of(ec2, gid)}
        assert ssh["SecurityGroupRuleId"] in by_rule
        assert len(by_rule) == 2  # ssh in, everything out

        aws("revoke-security-group-ingress", "--group-id", gid, "--protocol", "tcp", "--port", "22",
            "--cidr", "0.0.0.0/0")
        assert "InvalidPermission.NotFound" in aws_error(
            "revoke-security-group-ingress", "--group-id", gid, "--protocol", "tcp", "--port", "22",
            "--cidr", "0.0.0.0/0")
    finally:
        aws("delete-security-group", "--group-id", gid)
    assert "InvalidGroup.NotFound" in aws_error("describe-security-groups", "--group-ids", gid)


def test_ip_permissions_icmp_group_references_and_egress_with_boto3(ec2):
    web = ec2.create_security_group(GroupName="web", Description="web tier")["GroupId"]
    db = ec2.create_security_group(GroupName="db", Description="db tier")["GroupId"]
    try:
        added = ec2.authorize_security_group_ingress(GroupId=db, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
             "UserIdGroupPairs": [{"GroupId": web, "Description": "from web"}]},
            {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1,
             "IpRanges": [{"CidrIp": "172.31.0.0/16", "Description": "pings"}]},
            {"IpProtocol": "udp", "FromPort": 1000, "ToPort": 2000, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
        ])["SecurityGroupRules"]
        assert len(added) == 3
        ref = next(r for r in added if "ReferencedGroupInfo" in r)
        assert ref["ReferencedGroupInfo"]["GroupId"] == web and ref["Description"] == "from web"
        group = ec2.describe_security_groups(GroupIds=[db])["SecurityGroups"][0]
        icmp = next(p for p in group["IpPermissions"] if p["IpProtocol"] == "icmp")
        assert (icmp["FromPort"], icmp["ToPort"]) == (8, -1)
        assert icmp["IpRanges"] == [{"CidrIp": "172.31.0.0/16", "Description": "pings"}]

        # Egress: replace all-outbound with HTTPS inside the VPC.
        ec2.revoke_security_group_egress(GroupId=db, IpPermissions=[
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        ec2.authorize_security_group_egress(GroupId=db, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "172.31.0.0/16"}]}])
        egress = ec2.describe_security_groups(GroupIds=[db])["SecurityGroups"][0]["IpPermissionsEgress"]
        assert [(p["IpProtocol"], p["FromPort"]) for p in egress] == [("tcp", 443)]

        # A group another group's rule names cannot go.
        with pytest.raises(botocore.exceptions.ClientError) as err:
            ec2.delete_security_group(GroupId=web)
        assert err.value.response["Error"]["Code"] == "DependencyViolation"
        rule_id = ref["SecurityGroupRuleId"]
        revoked = ec2.revoke_security_group_ingress(GroupId=db, SecurityGroupRuleIds=[rule_id])
        assert revoked["Return"] is True
        assert [r["SecurityGroupRuleId"] for r in revoked["RevokedSecurityGroupRules"]] == [rule_id]
        rules = ec2.describe_security_group_rules(
            Filters=[{"Name": "security-group-rule-id", "Values": [rule_id]}])["SecurityGroupRules"]
        assert rules == []
    finally:
        ec2.delete_security_group(GroupId=web)
        ec2.delete_security_group(GroupId=db)


def test_the_default_group_cannot_be_deleted_and_limits_hold(ec2):
    default = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ec2.delete_security_group(GroupId=default)
    assert err.value.response["Error"]["Code"] == "CannotDelete"

    gid = ec2.create_security_group(GroupName="many", Description="sixty rules")["GroupId"]
    try:
        ranges = [{"CidrIp": f"10.{i}.0.0/16"} for i in range(60)]
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": ranges}])
        with pytest.raises(botocore.exceptions.ClientError) as err:
            ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.99.0.0/16"}]}])
        assert err.value.response["Error"]["Code"] == "RulesPerSecurityGroupLimitExceeded"
        with pytest.raises(botocore.exceptions.ClientError) as err:
            ec2.authorize_security_group_ingress(GroupId="sg-0123456789abcdef0", IpPermissions=[
                {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
        assert err.value.response["Error"]["Code"] == "InvalidGroup.NotFound"
    finally:
        ec2.delete_security_group(GroupId=gid)
