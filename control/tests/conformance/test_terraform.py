"""The AWS Terraform provider's EC2 calls, replayed with boto3 in its order
and with its parameters (hashicorp/terraform-provider-aws,
internal/service/ec2/ec2_instance.go: resourceInstanceCreate, Read,
Delete; ec2_key_pair.go; ami_data_source.go; vpc_eip.go), for this main.tf:

    provider "aws" {
      region                      = "us-east-1"
      skip_credentials_validation = true
      skip_requesting_account_id  = true
      skip_metadata_api_check     = true
      endpoints { ec2 = "http://127.0.0.1:8787" }
    }
    data "aws_ami" "lab" {
      most_recent = true
      owners      = ["self"]
      filter {
        name   = "name"
        values = ["lab-minimal"]
      }
    }
    resource "aws_key_pair" "lab" {
      key_name   = "tf-lab"
      public_key = "ssh-ed25519 AAAA... tf@lab"
    }
    resource "aws_instance" "web" {
      ami           = data.aws_ami.lab.id
      instance_type = "t2.micro"
      key_name      = aws_key_pair.lab.key_name
      tags          = { Name = "web" }
    }
    resource "aws_eip" "web" {
      domain   = "vpc"
      instance = aws_instance.web.id
      tags     = { Name = "web-eip" }
    }

Terraform itself is not run (it cannot be installed here); a refresh is
the read sequence, and "no diff" means two reads give the same state."""
import uuid

import botocore.exceptions
import pytest

from conftest import wait_for

PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDJa8ePMeCDNOX5wHU7ZvtbXwxvfEAMEHAmmeOFOzd54 tf@lab")


def read_ami(ec2):
    """data "aws_ami": DescribeImages with owners and filters, most recent."""
    images = ec2.describe_images(Owners=["self"], IncludeDeprecated=False,
                                 Filters=[{"Name": "name", "Values": ["lab-minimal"]}])["Images"]
    assert images, "the data source finds no image"
    image = sorted(images, key=lambda i: i["CreationDate"])[-1]
    for key in ["ImageId", "Architecture", "RootDeviceName", "RootDeviceType", "VirtualizationType",
                "BlockDeviceMappings", "State", "OwnerId", "CreationDate", "Hypervisor"]:
        assert key in image, f"aws_ami reads {key}"
    return image


def read_key_pair(ec2, name):
    """resourceKeyPairRead: FindKeyPairByName with the public key."""
    pairs = ec2.describe_key_pairs(KeyNames=[name], IncludePublicKey=True)["KeyPairs"]
    assert len(pairs) == 1
    p = pairs[0]
    return {k: p.get(k) for k in ["KeyName", "KeyPairId", "KeyFingerprint", "KeyType", "PublicKey", "Tags"]}


def read_instance(ec2, iid):
    """resourceInstanceRead: every call it makes, and the state it sets."""
    instance = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    itype = ec2.describe_instance_types(InstanceTypes=[instance["InstanceType"]])["InstanceTypes"][0]
    # flattenInstanceLaunchTemplate: FindInstanceByID again, for the tag.
    ec2.describe_instances(InstanceIds=[iid])
    shutdown = ec2.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
    volume_ids = [m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"] if "Ebs" in m]
    volumes = ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]
    stop = ec2.describe_instance_attribute(InstanceId=iid, Attribute="disableApiStop")
    term = ec2.describe_instance_attribute(InstanceId=iid, Attribute="disableApiTermination")
    user_data = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
    credits = None
    if itype["BurstablePerformanceSupported"]:
        specs = ec2.describe_instance_credit_specifications(InstanceIds=[iid])
        credits = specs["InstanceCreditSpecifications"][0]["CpuCredits"]
    primary = [n for n in instance["NetworkInterfaces"] if n["Attachment"]["DeviceIndex"] == 0]
    root = [v for v in volumes if v["Attachments"] and v["Attachments"][0]["Device"] == instance["RootDeviceName"]]
    assert len(root) == 1, volumes
    return {
        "instance_state": instance["State"]["Name"],
        "availability_zone": instance["Placement"]["AvailabilityZone"],
        "tenancy": instance["Placement"]["Tenancy"],
        "cpu_options": instance["CpuOptions"],
        "hibernation": instance["HibernationOptions"]["Configured"],
        "enclave_options": instance["EnclaveOptions"],
        "maintenance_options": instance["MaintenanceOptions"],
        "metadata_options": instance["MetadataOptions"],
        "ami": instance["ImageId"],
        "instance_type": instance["InstanceType"],
        "key_name": instance.get("KeyName"),
        "private_ip": instance.get("PrivateIpAddress"),
        "private_dns": instance.get("PrivateDnsName"),
        "subnet_id": primary[0]["SubnetId"],
        "primary_network_interface_id": primary[0]["NetworkInterfaceId"],
        "source_dest_check": primary[0]["SourceDestCheck"],
        "vpc_security_group_ids": sorted(g["GroupId"] for g in instance["SecurityGroups"]),
        "ebs_optimized": instance["EbsOptimized"],
        "monitoring": instance["Monitoring"]["State"],
        "tags": {t["Key"]: t["Value"] for t in instance.get("Tags", [])},
        "instance_initiated_shutdown_behavior": shutdown["InstanceInitiatedShutdownBehavior"]["Value"],
        "root_block_device": {k: root[0].get(k) for k in
                              ["VolumeId", "Size", "VolumeType", "Iops", "Encrypted"]},
        "root_delete_on_termination": root[0]["Attachments"][0]["DeleteOnTermination"],
        "disable_api_stop": stop["DisableApiStop"]["Value"],
        "disable_api_termination": term["DisableApiTermination"]["Value"],
        "user_data": user_data["UserData"].get("Value"),
        "credit_specification": credits,
        "capacity_reservation": instance["CapacityReservationSpecification"],
    }


def test_terraform_aws_ami_key_pair_and_instance_apply_plan_destroy(ec2):
    ami = read_ami(ec2)
    assert read_ami(ec2) == ami, "the data source must read the same twice"

    # aws_key_pair: create, read, plan again.
    ec2.import_key_pair(KeyName="tf-lab", PublicKeyMaterial=PUBLIC_KEY.encode())
    key = read_key_pair(ec2, "tf-lab")
    assert key["PublicKey"].startswith("ssh-ed25519 "), key
    assert read_key_pair(ec2, "tf-lab") == key

    # aws_instance: RunInstances as resourceInstanceCreate sends it.
    token = f"terraform-{uuid.uuid4().hex[:20]}"
    launch = dict(ImageId=ami["ImageId"], InstanceType="t2.micro", KeyName="tf-lab", MinCount=1, MaxCount=1,
                  ClientToken=token,
                  TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web"}]}])
    iid = ec2.run_instances(**launch)["Instances"][0]["InstanceId"]
    # The provider's RetryWhen resends the same request: same reservation.
    assert ec2.run_instances(**launch)["Instances"][0]["InstanceId"] == iid
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.run_instances(**{**launch, "InstanceType": "t3.micro"})
    assert e.value.response["Error"]["Code"] == "IdempotentParameterMismatch"

    # WaitInstanceCreated: pending until running.
    def state():
        return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
    wait_for(lambda: state() == "running", 600, f"{iid} running")

    applied = read_instance(ec2, iid)
    assert applied["credit_specification"] == "standard", "t2 defaults to standard"
    assert applied["disable_api_stop"] is False and applied["disable_api_termination"] is False
    assert applied["tags"] == {"Name": "web"}
    assert applied["root_block_device"]["VolumeType"] == "gp2"
    # The plan after apply: a refresh that changes nothing.
    assert read_instance(ec2, iid) == applied

    # disable_api_stop = true, then an attempted stop, as EC2 refuses it.
    ec2.modify_instance_attribute(InstanceId=iid, DisableApiStop={"Value": True})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.stop_instances(InstanceIds=[iid])
    assert e.value.response["Error"]["Code"] == "OperationNotPermitted"
    assert read_instance(ec2, iid)["disable_api_stop"] is True

    # credit_specification { cpu_credits = "unlimited" }: the update, then a
    # refresh that shows it.
    ec2.modify_instance_credit_specification(
        InstanceCreditSpecifications=[{"InstanceId": iid, "CpuCredits": "unlimited"}])
    assert read_instance(ec2, iid)["credit_specification"] == "unlimited"

    # aws_eip { domain = "vpc", instance = aws_instance.web.id }, as
    # resourceEIPCreate does it: AllocateAddress with its tags, a find by
    # allocation id, AssociateAddress, a find by association id; then
    # resourceEIPRead (DescribeAddresses, DescribeAddressesAttribute
    # domain-name for ptr_record), twice, with nothing changed between.
    alloc = ec2.allocate_address(Domain="vpc", TagSpecifications=[
        {"ResourceType": "elastic-ip", "Tags": [{"Key": "Name", "Value": "web-eip"}]}])["AllocationId"]
    assert alloc.startswith("eipalloc-"), alloc  # the provider's IsVPC()
    assert ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]["AllocationId"] == alloc
    association = ec2.associate_address(AllocationId=alloc, InstanceId=iid)["AssociationId"]
    found = ec2.describe_addresses(Filters=[{"Name": "association-id", "Values": [association]}])
    assert [a["AllocationId"] for a in found["Addresses"]] == [alloc]

    def read_eip():
        a = ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]
        ptr = ec2.describe_addresses_attribute(AllocationIds=[alloc], Attribute="domain-name")["Addresses"]
        return {"allocation_id": a["AllocationId"], "association_id": a.get("AssociationId"),
                "domain": a["Domain"], "instance": a.get("InstanceId"),
                "network_interface": a.get("NetworkInterfaceId"),
                "private_ip": a.get("PrivateIpAddress"), "public_ip": a["PublicIp"],
                "public_ipv4_pool": a.get("PublicIpv4Pool"),
                "network_border_group": a.get("NetworkBorderGroup"),
                "ptr_record": ptr[0].get("PtrRecord") if ptr else None,
                "tags": {t["Key"]: t["Value"] for t in a.get("Tags", [])}}
    eip = read_eip()
    assert (eip["instance"], eip["association_id"], eip["domain"]) == (iid, association, "vpc"), eip
    assert eip["private_ip"] == applied["private_ip"], eip
    assert eip["network_interface"] == applied["primary_network_interface_id"], eip
    assert eip["tags"] == {"Name": "web-eip"}, eip
    assert read_eip() == eip, "a second plan would show a diff"
    # The instance's refresh shows the EIP as its public address, and its
    # own state has not moved (the provider would plan nothing for it).
    instance = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert instance["PublicIpAddress"] == eip["public_ip"]
    # resourceEIPDelete: DisassociateAddress by association id, then
    # ReleaseAddress; a find afterwards is InvalidAllocationID.NotFound.
    ec2.disassociate_address(AssociationId=association)
    ec2.release_address(AllocationId=alloc)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_addresses(AllocationIds=[alloc])
    assert e.value.response["Error"]["Code"] == "InvalidAllocationID.NotFound"

    # resourceInstanceDelete: lift both protections, terminate, wait.
    ec2.modify_instance_attribute(InstanceId=iid, DisableApiTermination={"Value": False})
    ec2.modify_instance_attribute(InstanceId=iid, DisableApiStop={"Value": False})
    ec2.terminate_instances(InstanceIds=[iid])
    wait_for(lambda: state() == "terminated", 600, f"{iid} terminated")

    # resourceKeyPairDelete.
    ec2.delete_key_pair(KeyName="tf-lab")
    assert ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["tf-lab"]}])["KeyPairs"] == []
