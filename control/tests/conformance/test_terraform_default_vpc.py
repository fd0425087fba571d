"""The AWS Terraform provider's EC2 calls for the default VPC's resources,
security groups and Elastic IPs, replayed with boto3 in its order and with
its parameters (hashicorp/terraform-provider-aws, internal/service/ec2:
vpc_default_vpc.go and vpc_.go resourceVPCRead; vpc_default_subnet.go and
vpc_subnet.go; vpc_default_security_group.go and vpc_security_group.go;
ec2_eip.go), for this main.tf:

    provider "aws" {
      region                      = "us-east-1"
      skip_credentials_validation = true
      skip_requesting_account_id  = true
      skip_metadata_api_check     = true
      endpoints { ec2 = "http://127.0.0.1:8787" }
    }
    resource "aws_default_vpc" "default" {}
    resource "aws_default_subnet" "a" {
      availability_zone = "us-east-1a"
    }
    resource "aws_default_security_group" "default" {
      vpc_id = aws_default_vpc.default.id
      ingress {
        protocol  = -1
        self      = true
        from_port = 0
        to_port   = 0
      }
      egress {
        protocol    = "-1"
        from_port   = 0
        to_port     = 0
        cidr_blocks = ["0.0.0.0/0"]
      }
    }
    resource "aws_security_group" "web" {
      name        = "tf-web"
      description = "web servers"
      vpc_id      = aws_default_vpc.default.id
      ingress {
        description = "ssh"
        protocol    = "tcp"
        from_port   = 22
        to_port     = 22
        cidr_blocks = ["0.0.0.0/0"]
      }
      egress {
        protocol    = "-1"
        from_port   = 0
        to_port     = 0
        cidr_blocks = ["0.0.0.0/0"]
      }
      tags = { Name = "web" }
    }
    resource "aws_eip" "lab" {
      domain = "vpc"
      tags   = { Name = "lab" }
    }

Each resource goes create -> read -> read again (a plan: the two reads
must agree, or Terraform would show a diff) -> destroy. Destroying a
default resource only forgets it (no call), as the provider does without
`force_destroy`. The default security group ends with the rules it started
with (the config above is EC2's default rule set), so the daemon is left as
found. No instance is launched: this file needs no guest.

Terraform itself is not run (it cannot be installed here)."""
import ipaddress
import uuid

import botocore.exceptions
import pytest

AZ = "us-east-1a"


def one(items, what):
    assert len(items) == 1, f"{what}: expected exactly one, got {items}"
    return items[0]


def not_found(call, code):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    assert e.value.response["Error"]["Code"] == code, e.value.response


# aws_default_vpc


def vpc_attributes(ec2, vpc_id):
    """findVPCAttribute for the three attributes the provider reads."""
    out = {}
    for attribute, key in [("enableDnsHostnames", "EnableDnsHostnames"),
                           ("enableDnsSupport", "EnableDnsSupport"),
                           ("enableNetworkAddressUsageMetrics", "EnableNetworkAddressUsageMetrics")]:
        answer = ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute=attribute)
        assert answer["VpcId"] == vpc_id, answer
        out[attribute] = answer[key]["Value"]
    return out


def read_vpc(ec2, vpc_id):
    """resourceVPCRead: the VPC, its attributes, its default network ACL,
    main route table and default security group (each found by filter and
    required to be exactly one: the provider's AssertSingleValueResult)."""
    vpc = one(ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"], "FindVPCByID")
    for key in ["VpcId", "CidrBlock", "DhcpOptionsId", "InstanceTenancy", "OwnerId", "IsDefault", "State"]:
        assert key in vpc, f"aws_default_vpc reads {key}: {vpc}"
    attributes = vpc_attributes(ec2, vpc_id)
    acl = one(ec2.describe_network_acls(Filters=[
        {"Name": "default", "Values": ["true"]},
        {"Name": "vpc-id", "Values": [vpc_id]},
    ])["NetworkAcls"], "findVPCDefaultNetworkACL")
    table = one(ec2.describe_route_tables(Filters=[
        {"Name": "association.main", "Values": ["true"]},
        {"Name": "vpc-id", "Values": [vpc_id]},
    ])["RouteTables"], "findVPCMainRouteTable")
    group = one(ec2.describe_security_groups(Filters=[
        {"Name": "group-name", "Values": ["default"]},
        {"Name": "vpc-id", "Values": [vpc_id]},
    ])["SecurityGroups"], "findVPCDefaultSecurityGroup")
    # defaultIPv6CIDRBlockAssociation: the lab's VPCs are IPv4 only.
    ipv6 = [a for a in vpc.get("Ipv6CidrBlockAssociationSet", [])
            if a["Ipv6CidrBlockState"]["State"] == "associated"]
    return {
        "id": vpc["VpcId"],
        "arn": f"arn:aws:ec2:us-east-1:{vpc['OwnerId']}:vpc/{vpc['VpcId']}",
        "cidr_block": vpc["CidrBlock"],
        "dhcp_options_id": vpc["DhcpOptionsId"],
        "instance_tenancy": vpc["InstanceTenancy"],
        "owner_id": vpc["OwnerId"],
        "enable_dns_hostnames": attributes["enableDnsHostnames"],
        "enable_dns_support": attributes["enableDnsSupport"],
        "enable_network_address_usage_metrics": attributes["enableNetworkAddressUsageMetrics"],
        "default_network_acl_id": acl["NetworkAclId"],
        "default_route_table_id": table["RouteTableId"],
        "main_route_table_id": table["RouteTableId"],
        "default_security_group_id": group["GroupId"],
        "ipv6_association_id": ipv6[0]["AssociationId"] if ipv6 else None,
        "tags": {t["Key"]: t["Value"] for t in vpc.get("Tags", [])},
        # Not Terraform state, but what the ids above must stand for.
        "_route_table": table,
        "_network_acl": acl,
    }


def create_default_vpc(ec2):
    """resourceDefaultVPCCreate: adopt the default VPC, compare its
    attributes with the config's defaults (no ModifyVpcAttribute when they
    agree), then read."""
    vpc = one(ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"],
              "the default VPC")
    attributes = vpc_attributes(ec2, vpc["VpcId"])
    # The schema's defaults: enable_dns_hostnames = true,
    # enable_dns_support = true, enable_network_address_usage_metrics false.
    assert attributes == {"enableDnsHostnames": True, "enableDnsSupport": True,
                          "enableNetworkAddressUsageMetrics": False}, attributes
    assert vpc.get("Tags", []) == [], "no tags in the config, so no CreateTags"
    return read_vpc(ec2, vpc["VpcId"])


def check_routing(ec2, state):
    """The main route table, default ACL and internet gateway are the ones
    the default VPC's data plane has: its block is local, the rest leaves
    through its internet gateway; the ACL lets everything through."""
    vpc_id, cidr = state["id"], state["cidr_block"]
    table = state["_route_table"]
    assert table["VpcId"] == vpc_id and table["RouteTableId"].startswith("rtb-"), table
    association = one(table["Associations"], "main association")
    assert association["Main"] is True and association["RouteTableId"] == table["RouteTableId"], association
    assert association["RouteTableAssociationId"].startswith("rtbassoc-"), association
    assert association["AssociationState"]["State"] == "associated", association
    gateway = one(ec2.describe_internet_gateways(Filters=[
        {"Name": "attachment.vpc-id", "Values": [vpc_id]},
    ])["InternetGateways"], "the default VPC's internet gateway")
    assert gateway["Attachments"] == [{"State": "available", "VpcId": vpc_id}], gateway
    assert ec2.describe_internet_gateways(
        InternetGatewayIds=[gateway["InternetGatewayId"]])["InternetGateways"] == [gateway]
    routes = {(r["DestinationCidrBlock"], r["GatewayId"], r["State"]) for r in table["Routes"]}
    assert routes == {(cidr, "local", "active"), ("0.0.0.0/0", gateway["InternetGatewayId"], "active")}, routes
    assert ec2.describe_route_tables(RouteTableIds=[table["RouteTableId"]])["RouteTables"] == [table]

    acl = state["_network_acl"]
    assert acl["IsDefault"] is True and acl["VpcId"] == vpc_id, acl
    entries = sorted((e["Egress"], e["RuleNumber"], e["Protocol"], e["RuleAction"], e["CidrBlock"])
                     for e in acl["Entries"])
    assert entries == [
        (False, 100, "-1", "allow", "0.0.0.0/0"),
        (False, 32767, "-1", "deny", "0.0.0.0/0"),
        (True, 100, "-1", "allow", "0.0.0.0/0"),
        (True, 32767, "-1", "deny", "0.0.0.0/0"),
    ], entries
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    assert subnets, "the default VPC has subnets"
    associated = {a["SubnetId"] for a in acl["Associations"]}
    assert associated == {s["SubnetId"] for s in subnets}, acl["Associations"]
    for s in subnets:
        by_subnet = one(ec2.describe_network_acls(Filters=[
            {"Name": "association.subnet-id", "Values": [s["SubnetId"]]},
        ])["NetworkAcls"], f"the ACL of {s['SubnetId']}")
        assert by_subnet["NetworkAclId"] == acl["NetworkAclId"]
        assert ipaddress.ip_network(s["CidrBlock"]).subnet_of(ipaddress.ip_network(cidr)), s


# aws_default_subnet


def read_subnet(ec2, subnet_id):
    """resourceSubnetRead: FindSubnetByID and the attributes it sets."""
    s = one(ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"], "FindSubnetByID")
    dns = s["PrivateDnsNameOptionsOnLaunch"]
    return {
        "arn": s["SubnetArn"],
        "assign_ipv6_address_on_creation": s["AssignIpv6AddressOnCreation"],
        "availability_zone": s["AvailabilityZone"],
        "availability_zone_id": s["AvailabilityZoneId"],
        "cidr_block": s["CidrBlock"],
        "customer_owned_ipv4_pool": s.get("CustomerOwnedIpv4Pool"),
        "enable_dns64": s["EnableDns64"],
        "enable_lni_at_device_index": s.get("EnableLniAtDeviceIndex", 0),
        "ipv6_native": s["Ipv6Native"],
        "map_customer_owned_ip_on_launch": s["MapCustomerOwnedIpOnLaunch"],
        "map_public_ip_on_launch": s["MapPublicIpOnLaunch"],
        "outpost_arn": s.get("OutpostArn"),
        "owner_id": s["OwnerId"],
        "vpc_id": s["VpcId"],
        "enable_resource_name_dns_a_record_on_launch": dns["EnableResourceNameDnsARecord"],
        "enable_resource_name_dns_aaaa_record_on_launch": dns["EnableResourceNameDnsAAAARecord"],
        "private_dns_hostname_type_on_launch": dns["HostnameType"],
        "ipv6_cidr_block_association_id": [a["AssociationId"] for a in s["Ipv6CidrBlockAssociationSet"]],
        "default_for_az": s["DefaultForAz"],
        "tags": {t["Key"]: t["Value"] for t in s.get("Tags", [])},
    }


def create_default_subnet(ec2):
    """resourceDefaultSubnetCreate: the zone's default subnet by filter,
    then modifySubnetAttributesOnCreate, which calls nothing when the
    subnet already has the schema's defaults, then read."""
    s = one(ec2.describe_subnets(Filters=[
        {"Name": "availabilityZone", "Values": [AZ]},
        {"Name": "defaultForAz", "Values": ["true"]},
    ])["Subnets"], "the default subnet of " + AZ)
    assert s["EnableDns64"] is False and s["MapCustomerOwnedIpOnLaunch"] is False, s
    assert s["AssignIpv6AddressOnCreation"] is False, s
    assert s["PrivateDnsNameOptionsOnLaunch"] == {
        "HostnameType": "ip-name", "EnableResourceNameDnsARecord": False,
        "EnableResourceNameDnsAAAARecord": False}, s
    return read_subnet(ec2, s["SubnetId"])


# aws_security_group and aws_default_security_group


def gather_rules(group_id, permissions):
    """securityGroupIPPermGather: the rules as Terraform's state holds
    them, one per (protocol, ports, description), peers folded in."""
    rules = {}
    for p in permissions:
        def rule(description):
            key = (p["IpProtocol"], p.get("FromPort", 0), p.get("ToPort", 0), description)
            return rules.setdefault(key, {"protocol": p["IpProtocol"], "from_port": p.get("FromPort", 0),
                                          "to_port": p.get("ToPort", 0), "description": description,
                                          "cidr_blocks": [], "ipv6_cidr_blocks": [], "prefix_list_ids": [],
                                          "security_groups": [], "self": False})
        for r in p["IpRanges"]:
            rule(r.get("Description", ""))["cidr_blocks"].append(r["CidrIp"])
        for r in p["Ipv6Ranges"]:
            rule(r.get("Description", ""))["ipv6_cidr_blocks"].append(r["CidrIpv6"])
        for r in p["PrefixListIds"]:
            rule(r.get("Description", ""))["prefix_list_ids"].append(r["PrefixListId"])
        for pair in p["UserIdGroupPairs"]:
            r = rule(pair.get("Description", ""))
            if pair["GroupId"] == group_id:
                r["self"] = True
            else:
                r["security_groups"].append(pair.get("GroupName") or pair["GroupId"])
    return sorted((dict(r, cidr_blocks=sorted(r["cidr_blocks"])) for r in rules.values()),
                  key=lambda r: sorted(r.items()).__repr__())


def read_security_group(ec2, group_id):
    """resourceSecurityGroupRead: FindSecurityGroupByID and the rules."""
    g = one(ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"], "FindSecurityGroupByID")
    for key in ["OwnerId", "GroupId", "GroupName", "Description", "VpcId", "IpPermissions",
                "IpPermissionsEgress"]:
        assert key in g, f"aws_security_group reads {key}: {g}"
    return {
        "arn": f"arn:aws:ec2:us-east-1:{g['OwnerId']}:security-group/{g['GroupId']}",
        "description": g["Description"],
        "name": g["GroupName"],
        "owner_id": g["OwnerId"],
        "vpc_id": g["VpcId"],
        "ingress": gather_rules(group_id, g["IpPermissions"]),
        "egress": gather_rules(group_id, g["IpPermissionsEgress"]),
        "tags": {t["Key"]: t["Value"] for t in g.get("Tags", [])},
    }


def authorize(ec2, group_id, ingress, egress):
    """updateSecurityGroupRules from an empty state: one Authorize per
    direction with the expanded permissions (expandIPPerms)."""
    if ingress:
        answer = ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=ingress)
        assert answer["Return"] is True, answer
    if egress:
        answer = ec2.authorize_security_group_egress(GroupId=group_id, IpPermissions=egress)
        assert answer["Return"] is True, answer


ALL_OUT = [{"IpProtocol": "-1", "FromPort": 0, "ToPort": 0, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]


def force_revoke_rules(ec2, group_id):
    """forceRevokeSecurityGroupRules(searchAll=false): the group's related
    groups, their rules that touch it, each revoked by rule id."""
    group = one(ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"], "relatedSGs")
    related = [group_id] + [p["GroupId"] for perm in group["IpPermissions"] + group["IpPermissionsEgress"]
                            for p in perm["UserIdGroupPairs"] if p["GroupId"] != group_id]
    rules = ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": related}])["SecurityGroupRules"]
    touching = [r for r in rules if r["GroupId"] == group_id
                or r.get("ReferencedGroupInfo", {}).get("GroupId") == group_id]
    for r in touching:
        if r["IsEgress"]:
            ec2.revoke_security_group_egress(GroupId=r["GroupId"], SecurityGroupRuleIds=[r["SecurityGroupRuleId"]])
        else:
            ec2.revoke_security_group_ingress(GroupId=r["GroupId"], SecurityGroupRuleIds=[r["SecurityGroupRuleId"]])
    return touching


def test_terraform_default_vpc_and_subnet_create_read_plan_destroy(ec2):
    state = create_default_vpc(ec2)
    assert state["default_route_table_id"].startswith("rtb-"), state
    assert state["default_network_acl_id"].startswith("acl-"), state
    assert state["default_security_group_id"].startswith("sg-"), state
    assert state["ipv6_association_id"] is None
    check_routing(ec2, state)
    assert read_vpc(ec2, state["id"]) == state, "a second read of aws_default_vpc differs"

    subnet = create_default_subnet(ec2)
    assert subnet["vpc_id"] == state["id"] and subnet["availability_zone"] == AZ, subnet
    assert subnet["default_for_az"] is True and subnet["map_public_ip_on_launch"] is True, subnet
    assert ipaddress.ip_network(subnet["cidr_block"]).subnet_of(ipaddress.ip_network(state["cidr_block"]))
    assert read_subnet(ec2, subnet["arn"].rsplit("/", 1)[1]) == subnet, "a second read of aws_default_subnet differs"
    # Destroy without force_destroy: removed from state, nothing called.
    # The objects are still there, unchanged.
    assert read_vpc(ec2, state["id"]) == state


def test_terraform_default_security_group_create_read_plan_destroy(ec2):
    vpc_id = create_default_vpc(ec2)["id"]
    # resourceDefaultSecurityGroupCreate: by name and VPC.
    group = one(ec2.describe_security_groups(Filters=[
        {"Name": "group-name", "Values": ["default"]},
        {"Name": "vpc-id", "Values": [vpc_id]},
    ])["SecurityGroups"], "the default security group")
    gid = group["GroupId"]
    revoked = force_revoke_rules(ec2, gid)
    assert {r["IsEgress"] for r in revoked} == {True, False}, revoked
    emptied = one(ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"], "resourceSecurityGroupUpdate")
    assert emptied["IpPermissions"] == [] and emptied["IpPermissionsEgress"] == [], emptied
    authorize(ec2, gid, [{"IpProtocol": "-1", "FromPort": 0, "ToPort": 0, "UserIdGroupPairs": [{"GroupId": gid}]}],
              ALL_OUT)
    state = read_security_group(ec2, gid)
    assert state["name"] == "default" and state["vpc_id"] == vpc_id, state
    assert state["ingress"] == [{"protocol": "-1", "from_port": 0, "to_port": 0, "description": "",
                                 "cidr_blocks": [], "ipv6_cidr_blocks": [], "prefix_list_ids": [],
                                 "security_groups": [], "self": True}], state
    assert state["egress"] == [{"protocol": "-1", "from_port": 0, "to_port": 0, "description": "",
                                "cidr_blocks": ["0.0.0.0/0"], "ipv6_cidr_blocks": [], "prefix_list_ids": [],
                                "security_groups": [], "self": False}], state
    assert read_security_group(ec2, gid) == state, "a second read of aws_default_security_group differs"
    # Destroy: removed from state, nothing called.


def test_terraform_security_group_with_ingress_create_read_plan_destroy(ec2):
    vpc_id = create_default_vpc(ec2)["id"]
    name = f"tf-web-{uuid.uuid4().hex[:8]}"
    # resourceSecurityGroupCreate.
    created = ec2.create_security_group(
        GroupName=name, Description="web servers", VpcId=vpc_id,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": "Name", "Value": "web"}]}])
    gid = created["GroupId"]
    one(ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"], "waitSecurityGroupCreated")
    # The provider drops AWS's default egress rules, IPv4 then IPv6; the
    # IPv6 one is not there, and that error is the one it tolerates.
    ec2.revoke_security_group_egress(GroupId=gid, IpPermissions=[
        {"FromPort": 0, "ToPort": 0, "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "IpProtocol": "-1"}])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.revoke_security_group_egress(GroupId=gid, IpPermissions=[
            {"FromPort": 0, "ToPort": 0, "Ipv6Ranges": [{"CidrIpv6": "::/0"}], "IpProtocol": "-1"}])
    error = e.value.response["Error"]
    assert error["Code"] == "InvalidPermission.NotFound" or (
        error["Code"] == "InvalidParameterValue" and "remote-ipv6-range" in error["Message"]), error
    # resourceSecurityGroupUpdate: the config's rules.
    one(ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"], "resourceSecurityGroupUpdate")
    authorize(ec2, gid, [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                          "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "ssh"}]}], ALL_OUT)
    state = read_security_group(ec2, gid)
    assert state["name"] == name and state["description"] == "web servers", state
    assert state["vpc_id"] == vpc_id and state["tags"] == {"Name": "web"}, state
    assert state["ingress"] == [{"protocol": "tcp", "from_port": 22, "to_port": 22, "description": "ssh",
                                 "cidr_blocks": ["0.0.0.0/0"], "ipv6_cidr_blocks": [], "prefix_list_ids": [],
                                 "security_groups": [], "self": False}], state
    assert state["egress"] == [{"protocol": "-1", "from_port": 0, "to_port": 0, "description": "",
                                "cidr_blocks": ["0.0.0.0/0"], "ipv6_cidr_blocks": [], "prefix_list_ids": [],
                                "security_groups": [], "self": False}], state
    assert read_security_group(ec2, gid) == state, "a second read of aws_security_group differs"

    # resourceSecurityGroupDelete: lingering ENIs, delete, wait for gone.
    assert ec2.describe_network_interfaces(
        Filters=[{"Name": "group-id", "Values": [gid]}])["NetworkInterfaces"] == []
    ec2.delete_security_group(GroupId=gid)
    not_found(lambda: ec2.describe_security_groups(GroupIds=[gid]), "InvalidGroup.NotFound")


def read_eip(ec2, allocation_id):
    """resourceEIPRead: FindEIPByAllocationID and the domain-name
    attribute (whose NotFound means no PTR record)."""
    a = one(ec2.describe_addresses(AllocationIds=[allocation_id])["Addresses"], "findEIPByAllocationID")
    assert a["AllocationId"] == allocation_id and a["Domain"] == "vpc", a
    attributes = ec2.describe_addresses_attribute(AllocationIds=[allocation_id],
                                                  Attribute="domain-name")["Addresses"]
    attribute = one(attributes, "findEIPDomainNameAttributeByAllocationID")
    assert attribute["AllocationId"] == allocation_id and attribute["PublicIp"] == a["PublicIp"], attribute
    return {
        "allocation_id": a["AllocationId"],
        "association_id": a.get("AssociationId"),
        "carrier_ip": a.get("CarrierIp"),
        "customer_owned_ip": a.get("CustomerOwnedIp"),
        "customer_owned_ipv4_pool": a.get("CustomerOwnedIpv4Pool"),
        "domain": a["Domain"],
        "instance": a.get("InstanceId"),
        "network_border_group": a["NetworkBorderGroup"],
        "network_interface": a.get("NetworkInterfaceId"),
        "public_ipv4_pool": a["PublicIpv4Pool"],
        "private_ip": a.get("PrivateIpAddress"),
        "public_ip": a["PublicIp"],
        "ptr_record": attribute.get("PtrRecord", "").rstrip("."),
        "tags": {t["Key"]: t["Value"] for t in a.get("Tags", [])},
    }


def test_terraform_eip_create_read_plan_destroy(ec2):
    # resourceEIPCreate.
    allocated = ec2.allocate_address(
        Domain="vpc", TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": [{"Key": "Name", "Value": "lab"}]}])
    allocation_id = allocated["AllocationId"]
    assert allocation_id.startswith("eipalloc-"), allocated
    state = read_eip(ec2, allocation_id)
    assert state["public_ip"] == allocated["PublicIp"] and state["tags"] == {"Name": "lab"}, state
    assert state["association_id"] is None and state["instance"] is None, state
    assert state["network_border_group"] == "us-east-1" and state["public_ipv4_pool"] == "amazon", state
    assert read_eip(ec2, allocation_id) == state, "a second read of aws_eip differs"
    # resourceEIPDelete: not associated, so only ReleaseAddress.
    ec2.release_address(AllocationId=allocation_id)
    not_found(lambda: ec2.describe_addresses(AllocationIds=[allocation_id]), "InvalidAllocationID.NotFound")
    not_found(lambda: ec2.describe_addresses_attribute(AllocationIds=[allocation_id], Attribute="domain-name"),
              "InvalidAllocationID.NotFound")
