"""The default VPC as the aws CLI and boto3 see it: the lookups tools do
before a launch (isDefault, default-for-az), a launch into a chosen subnet
with a chosen private address, and the errors EC2 gives for bad subnets
and taken addresses; the guest launched there gets its address by DHCP
from the VPC fabric and answers on it."""
import json
import os
import subprocess
import tempfile
import time

import botocore
import pytest

from conftest import ENDPOINT, aws, aws_error, wait_for

MISSING_SUBNET = "subnet-0123456789abcdef0"


@pytest.fixture(scope="module")
def default_vpc():
    vpcs = aws("describe-vpcs", "--filters", "Name=isDefault,Values=true")["Vpcs"]
    assert len(vpcs) == 1, vpcs
    return vpcs[0]


def default_subnets(vpc_id):
    return aws("describe-subnets", "--filters", f"Name=vpc-id,Values={vpc_id}",
               "Name=default-for-az,Values=true")["Subnets"]


def subnet(ec2, subnet_id):
    return ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]


def console(instance_id):
    return aws("get-console-output", "--instance-id", instance_id).get("Output") or ""


def test_the_default_vpc_subnets_and_group_are_awss(ec2, default_vpc):
    assert default_vpc["CidrBlock"] == "172.31.0.0/16"
    assert default_vpc["IsDefault"] is True
    assert default_vpc["State"] == "available"
    assert default_vpc["CidrBlockAssociationSet"][0]["CidrBlockState"]["State"] == "associated"
    assert aws("describe-vpcs", "--filters", "Name=is-default,Values=false")["Vpcs"] == []

    subnets = default_subnets(default_vpc["VpcId"])
    layout = sorted((s["AvailabilityZone"], s["AvailabilityZoneId"], s["CidrBlock"]) for s in subnets)
    assert layout == [
        ("us-east-1a", "use1-az1", "172.31.0.0/20"),
        ("us-east-1b", "use1-az2", "172.31.16.0/20"),
        ("us-east-1c", "use1-az3", "172.31.32.0/20"),
    ]
    for s in subnets:
        assert s["DefaultForAz"] is True and s["MapPublicIpOnLaunch"] is True
        assert 0 < s["AvailableIpAddressCount"] <= 4091
    # boto3 spells the filter the other way; EC2 accepts both.
    by_zone = ec2.describe_subnets(Filters=[{"Name": "availabilityZone", "Values": ["us-east-1c"]}])
    assert [s["CidrBlock"] for s in by_zone["Subnets"]] == ["172.31.32.0/20"]

    group = aws("describe-security-groups", "--group-names", "default")["SecurityGroups"][0]
    assert group["VpcId"] == default_vpc["VpcId"]
    assert group["Description"] == "default VPC security group"
    assert group["IpPermissions"][0]["IpProtocol"] == "-1"
    assert group["IpPermissions"][0]["UserIdGroupPairs"][0]["GroupId"] == group["GroupId"]
    assert group["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]


def eni_groups(eni_id):
    return aws("describe-network-interfaces", "--network-interface-ids",
               eni_id)["NetworkInterfaces"][0]["Groups"]


def test_a_launch_into_a_subnet_at_a_chosen_address(ec2, lab_minimal_ami, default_vpc):
    subnet_b = next(s for s in default_subnets(default_vpc["VpcId"])
                    if s["AvailabilityZone"] == "us-east-1b")
    free_before = subnet(ec2, subnet_b["SubnetId"])["AvailableIpAddressCount"]
    group = aws("create-security-group", "--group-name", "WebSSHAccess",
                "--description", "WebSSHAccess", "--vpc-id", default_vpc["VpcId"])["GroupId"]
    # A key pair and a user-data script that reads the metadata service
    # both ways: v2 through the agent (token first), v1 with busybox wget.
    workdir = tempfile.mkdtemp()
    key = os.path.join(workdir, "kp")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vpc-kp", "-f", key],
                   check=True, timeout=60)
    aws("import-key-pair", "--key-name", "vpc-kp", "--public-key-material", f"fileb://{key}.pub")
    script = os.path.join(workdir, "user-data.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n"
                "echo \"ud: v2 az=$(ec2lab-guest metadata placement/availability-zone)"
                " pub=$(ec2lab-guest metadata public-ipv4)\"\n"
                "echo \"ud: v1 ip=$(wget -qO- http://169.254.169.254/latest/meta-data/local-ipv4)\"\n")
    run = aws("run-instances", "--image-id", lab_minimal_ami, "--instance-type", "lab.nano",
              "--subnet-id", subnet_b["SubnetId"], "--private-ip-address", "172.31.16.77",
              "--security-group-ids", group, "--key-name", "vpc-kp",
              "--user-data", f"file://{script}")
    iid = run["Instances"][0]["InstanceId"]
    launched = [iid]
    try:
        described = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        assert described["PrivateIpAddress"] == "172.31.16.77"
        assert described["PrivateDnsName"] == "ip-172-31-16-77.ec2.internal"
        assert described["SubnetId"] == subnet_b["SubnetId"]
        assert described["VpcId"] == default_vpc["VpcId"]
        assert described["Placement"]["AvailabilityZone"] == "us-east-1b"
        assert described["SecurityGroups"] == [{"GroupName": "WebSSHAccess", "GroupId": group}]
        nic = described["NetworkInterfaces"][0]
        assert nic["Attachment"]["DeviceIndex"] == 0
        assert nic["Attachment"]["DeleteOnTermination"] is True
        assert nic["MacAddress"].startswith("02:")
        # The default subnet maps public addresses on launch: one from the
        # lab's pool, with EC2's public DNS name, on the primary interface.
        public = described["PublicIpAddress"]
        assert public.startswith("198.51.100."), public
        assert described["PublicDnsName"] == \
            "ec2-" + public.replace(".", "-") + ".compute-1.amazonaws.com"
        assert described["NetworkInterfaces"][0]["Association"]["PublicIp"] == public

        enis = aws("describe-network-interfaces", "--filters",
                   f"Name=attachment.instance-id,Values={iid}")["NetworkInterfaces"]
        assert len(enis) == 1
        eni = enis[0]
        assert eni["NetworkInterfaceId"] == nic["NetworkInterfaceId"]
        assert eni["PrivateIpAddress"] == described["PrivateIpAddress"]
        assert eni["MacAddress"] == nic["MacAddress"]
        assert eni["Status"] == "in-use"
        assert eni["Attachment"]["InstanceId"] == iid
        by_ip = ec2.describe_instances(Filters=[{"Name": "private-ip-address", "Values": ["172.31.16.77"]}])
        assert [i["InstanceId"] for r in by_ip["Reservations"] for i in r["Instances"]] == [iid]
        assert subnet(ec2, subnet_b["SubnetId"])["AvailableIpAddressCount"] == free_before - 1
        # A second instance in the same subnet and group, booting beside
        # the first (no key, no user data): the two reach each other by
        # private DNS name and never see each other's metadata.
        other = aws("run-instances", "--image-id", lab_minimal_ami, "--instance-type", "lab.nano",
                    "--subnet-id", subnet_b["SubnetId"], "--private-ip-address", "172.31.16.78",
                    "--security-group-ids", group)["Instances"][0]["InstanceId"]
        launched.append(other)

        # The guest's eth0 got that address by DHCP from its VPC: lab-minimal
        # asks for the kernel's DHCP client (the kernel prints the lease),
        # and its init took the name server from it. Its SSH server is behind its
        # security group: from the VPC's router namespace (where `ec2lab ssh`
        # connects from) the connection times out until port 22 is
        # authorized, answers at once after, and is cut again on revoke,
        # with the guest running throughout.
        wait_for(lambda: "lab-minimal: ready" in console(iid), 600, "the guest's boot")
        out = console(iid)
        assert "lab-minimal: eth0: configured by the kernel's DHCP client" in out, out
        assert "ipaddr=172.31.16.77, mask=255.255.240.0, gw=172.31.16.1" in out, out
        # The subnet's DNS address (its base + 2) is the lease's name server.
        assert "nameserver0=172.31.16.2" in out, out
        # The metadata service in the VMM answered the agent and the user
        # data: the key reached ec2-user, the script ran with v2 and v1.
        for line in ["ec2lab-guest: token: ok", f"ec2lab-guest: instance-id: ok: {iid}",
                     "ec2lab-guest: hostname: ok: ip-172-31-16-77.ec2.internal",
                     "ec2lab-guest: ssh-key: ok: installed key 0=vpc-kp",
                     f"ud: v2 az=us-east-1b pub={public}", "ud: v1 ip=172.31.16.77",
                     "ec2lab-guest: user-data: ok"]:
            assert line in out, (line, out)

        router = f"ec2lab-{default_vpc['VpcId']}"

        def banner(ns=router, ip="172.31.16.77", seconds=10):
            """One connection to port 22: its first 8 bytes, or a failure."""
            return subprocess.run(
                ["ip", "netns", "exec", ns, "timeout", str(seconds),
                 "bash", "-c", f"exec 3<>/dev/tcp/{ip}/22 && head -c 8 <&3"],
                capture_output=True, text=True, timeout=seconds + 30)

        def opens(ns=router, ip="172.31.16.77"):
            """The SSH banner, waited for: the rules are live when the API
            answers, but on a host that emulates the guest kernel dropbear's
            accept and fork alone can take seconds (more on AMD). A refusal
            shows the live ruleset, so a CI log says which side dropped."""
            tries = []
            deadline = time.time() + 120
            while time.time() < deadline:
                tries.append(banner(ns, ip, seconds=20))
                if tries[-1].stdout.startswith("SSH-2.0"):
                    return tries[-1]
            ruleset = subprocess.run(["ip", "netns", "exec", router, "nft", "list", "ruleset"],
                                     capture_output=True, text=True, timeout=30)
            raise AssertionError(f"no banner from {ip} in {ns}: {tries}\n{ruleset.stdout}"
                                 f"\n{console(iid)[-3000:]}")
        # Inside the VPC, the public and the private DNS names both resolve
        # to the private address (the Amazon-provided DNS at base+2).
        for name in [described["PublicDnsName"], described["PrivateDnsName"]]:
            answer = subprocess.run(
                ["ip", "netns", "exec", f"ec2lab-{default_vpc['VpcId']}", "busybox",
                 "nslookup", name, "172.31.16.2"], capture_output=True, text=True, timeout=30)
            assert "172.31.16.77" in answer.stdout, (name, answer)
        internet = os.environ["EC2LAB_UPLINK_NETNS"]
        for where in [{}, {"ns": internet, "ip": public}]:
            closed = banner(**where)
            assert closed.returncode != 0 and not closed.stdout, (where, closed)
        ssh = ["--group-id", group, "--protocol", "tcp", "--port", "22", "--cidr", "0.0.0.0/0"]
        aws("authorize-security-group-ingress", *ssh)
        # From inside the VPC, and from the internet at the public address.
        for where in [{}, {"ns": internet, "ip": public}]:
            opens(**where)
        def guest(ip, command):
            """Runs `command` in the guest over ssh with the launch key
            pair, from the internet; its stdout."""
            done = subprocess.run(
                ["ip", "netns", "exec", internet, "ssh", "-i", key, "-o", "BatchMode=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "ConnectTimeout=120", f"ec2-user@{ip}", command],
                capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done
            return done.stdout

        # A real login with the launch key pair, from the internet; the
        # firmware (SMBIOS from the VMM) says what EC2's says.
        dmi = "/sys/class/dmi/id/"
        lines = guest(public, f"id -un; hostname; cat {dmi}sys_vendor {dmi}product_name"
                              f" {dmi}chassis_asset_tag; sudo cat {dmi}product_uuid").splitlines()
        assert lines[:5] == ["ec2-user", "ip-172-31-16-77.ec2.internal", "Amazon EC2",
                             "lab.nano", iid], lines
        assert lines[5].startswith("ec2"), lines
        # From the host itself, with no route to the lab: the daemon's
        # loopback forward for the public address (listed in
        # <data>/forwards) carries the login to it from the internet.
        if os.environ.get("EC2LAB_FORWARDS"):
            with open(os.environ["EC2LAB_FORWARDS"]) as table:
                rows = [line.split() for line in table]
            ports = [r[0].split(":")[1] for r in rows if r[1:] == [f"{public}:22", iid]]
            assert len(ports) == 1, rows
            done = subprocess.run(
                ["ssh", "-p", ports[0], "-i", key, "-o", "BatchMode=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "ConnectTimeout=120", "ec2-user@127.0.0.1", "hostname"],
                capture_output=True, text=True, timeout=300)
            assert (done.returncode, done.stdout) == (0, "ip-172-31-16-77.ec2.internal\n"), done
        # EC2 Instance Connect: a key pushed with the aws CLI logs in for
        # its 60 seconds (the guest's watcher writes it to authorized_keys
        # within its 2 s poll); the same key was refused before the push.
        eic = os.path.join(workdir, "eic")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "eic", "-f", eic],
                       check=True, timeout=60)

        def eic_login(ip):
            return subprocess.run(
                ["ip", "netns", "exec", internet, "ssh", "-i", eic, "-o", "BatchMode=yes",
                 "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                 "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=120",
                 f"ec2-user@{ip}", "id -un"],
                capture_output=True, text=True, timeout=300)
        before = eic_login(public)
        assert before.returncode != 0 and "ec2-user" not in before.stdout, before
        pushed_at = time.time()
        sent = subprocess.run(
            ["aws", "--endpoint-url", ENDPOINT, "--output", "json",
             "ec2-instance-connect", "send-ssh-public-key", "--instance-id", iid,
             "--instance-os-user", "ec2-user", "--ssh-public-key", f"file://{eic}.pub"],
            capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0 and json.loads(sent.stdout)["Success"] is True, sent
        wait_for(lambda: eic_login(public).stdout == "ec2-user\n", 50,
                 "the Instance Connect key to log in", interval=1)
        with open(f"{eic}.pub") as f:
            eic_key = " ".join(f.read().split()[:2])
        served = guest(public, "ec2lab-guest metadata managed-ssh-keys/active-keys/ec2-user/")
        assert served.strip() == eic_key, served
        # `ec2lab connect` over vsock, with no network and no key: one
        # command with its streams and status, then a shell (its terminal
        # in the guest, its input from a pipe here).
        def connect(*args, **kw):
            return subprocess.run([os.environ["EC2LAB_CLI"], "connect", iid, *args],
                                  capture_output=True, text=True, timeout=120, **kw)
        done = connect("--", "id", "-u", stdin=subprocess.DEVNULL)
        assert (done.returncode, done.stdout) == (0, "0\n"), done
        done = connect("--", "sh", "-c", "echo out; echo err >&2; exit 5",
                       stdin=subprocess.DEVNULL)
        assert (done.returncode, done.stdout, done.stderr) == (5, "out\n", "err\n"), done
        done = connect(input="[ -t 0 ] && echo tty=$(hostname); exit 7\n")
        assert done.returncode == 7, done
        assert "tty=ip-172-31-16-77.ec2.internal" in done.stdout, done
        done = connect("--", "/nonexistent", stdin=subprocess.DEVNULL)
        assert done.returncode != 0 and "cannot run /nonexistent" in done.stderr, done
        # Two instances. Each reaches the other by its private DNS name
        # (the VPC's DNS, port 22 open to the group's 0.0.0.0/0 rule).
        # Each VMM serves its own instance's metadata only: the same request
        # gets each instance its own id, and a token one instance was given
        # is refused (401) by the other's metadata service.
        wait_for(lambda: "lab-minimal: ready" in console(other), 600, "the second instance's boot")
        other_name = "ip-172-31-16-78.ec2.internal"
        # A name outside the VPC resolves too: the VPC's DNS forwards it to
        # the host's resolver (here a stand-in on the host's loopback).
        outside = os.environ.get("EC2LAB_OUTSIDE_NAME")
        ask_outside = f"nslookup -type=a {outside}; " if outside else ""
        reach = guest(public, f"{ask_outside}nslookup {other_name}; timeout 20 nc {other_name} 22"
                              " </dev/null | head -c 7; echo")
        assert "172.31.16.78" in reach and reach.endswith("SSH-2.0\n"), reach
        if outside:
            assert f"Address: {os.environ['EC2LAB_OUTSIDE_ADDRESS']}" in reach, reach

        def imds(where, request):
            """One raw HTTP/1.0 request to 169.254.169.254 from inside
            instance `where` (over `ec2lab connect`): the whole answer,
            its CRLFs read as newlines."""
            done = subprocess.run(
                [os.environ["EC2LAB_CLI"], "connect", where, "--", "sh", "-c",
                 f"printf '{request}' | nc 169.254.169.254 80"],
                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            assert done.returncode == 0, done
            return done.stdout
        get_id = "GET /latest/meta-data/instance-id HTTP/1.0\\r\\n"
        for who in launched:
            assert imds(who, get_id + "\\r\\n").endswith(f"\n\n{who}"), who
        token = imds(iid, "PUT /latest/api/token HTTP/1.0\\r\\n"
                          "X-aws-ec2-metadata-token-ttl-seconds: 300\\r\\n\\r\\n").split("\n\n")[-1]
        assert token and token.isascii() and " " not in token, token
        with_token = get_id + f"X-aws-ec2-metadata-token: {token}\\r\\n\\r\\n"
        assert imds(iid, with_token).endswith(f"\n\n{iid}")
        refused = imds(other, with_token)
        assert refused.startswith("HTTP/1.1 401"), refused
        assert iid not in refused and other not in refused, refused
        # An Elastic IP replaces the public address at once, no restart:
        # the guest answers at it, and no longer at the old one.
        eip = aws("allocate-address", "--domain", "vpc")
        try:
            aws("associate-address", "--instance-id", iid, "--allocation-id", eip["AllocationId"])
            opens(ns=internet, ip=eip["PublicIp"])
            assert not banner(ns=internet, ip=public).stdout
            # The running guest's metadata follows (pushed to its VMM), and
            # so do its metadata options: tokens required turns v1 away.
            wait_pub = ("for i in $(seq 30); do v=$(ec2lab-guest metadata public-ipv4);"
                        f" [ \"$v\" = {eip['PublicIp']} ] && break; sleep 1; done; echo $v")
            assert guest(eip["PublicIp"], wait_pub).strip() == eip["PublicIp"]
            aws("modify-instance-metadata-options", "--instance-id", iid,
                "--http-tokens", "required")
            # A raw v1 request with busybox nc: busybox wget crashes on a 401
            # without WWW-Authenticate, which is what EC2 sends too.
            v1 = ("printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n'"
                  " | nc 169.254.169.254 80 | head -n1")
            refused = guest(eip["PublicIp"],
                            f"for i in $(seq 30); do r=$({v1}); case \"$r\" in *401*) break;; esac;"
                            " sleep 1; done; echo \"v1=$r\"; echo v2=$(ec2lab-guest metadata instance-id)")
            assert "v1=HTTP/1.1 401 Unauthorized" in refused and f"v2={iid}" in refused, refused
            assert "InvalidIPAddress.InUse" in aws_error(
                "release-address", "--allocation-id", eip["AllocationId"])
            aws("disassociate-address", "--public-ip", eip["PublicIp"])
            public = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0][
                "PublicIpAddress"]
            assert public != eip["PublicIp"]
            opens(ns=internet, ip=public)
        finally:
            aws("disassociate-address", "--public-ip", eip["PublicIp"], check=False)
            aws("release-address", "--allocation-id", eip["AllocationId"], check=False)
        # The Instance Connect key's minute is over: the guest's copy is
        # gone and the key no longer logs in, while the launch key still does.
        time.sleep(max(0, pushed_at + 62 - time.time()))
        wait_for(lambda: eic_key not in guest(public, "cat .ssh/authorized_keys"), 60,
                 "the expired Instance Connect key to leave authorized_keys", interval=2)
        after = eic_login(public)
        assert after.returncode != 0 and "ec2-user" not in after.stdout, after
        assert "vpc-kp" in guest(public, "cat .ssh/authorized_keys")
        aws("revoke-security-group-ingress", *ssh)
        closed = banner(ns=internet, ip=public)
        assert closed.returncode != 0 and not closed.stdout, closed

        # Moving the running instance between groups is live too; the
        # interface form and the instance form change the same thing.
        web = aws("create-security-group", "--group-name", "web-22",
                  "--description", "ssh", "--vpc-id", default_vpc["VpcId"])["GroupId"]
        try:
            aws("authorize-security-group-ingress", "--group-id", web, "--protocol", "tcp",
                "--port", "22", "--cidr", "172.31.0.0/16")
            aws("modify-instance-attribute", "--instance-id", iid, "--groups", web)
            eni_id = nic["NetworkInterfaceId"]
            assert [g["GroupId"] for g in eni_groups(eni_id)] == [web]
            opens()
            aws("modify-network-interface-attribute", "--network-interface-id", eni_id,
                "--groups", group)
            assert [g["GroupId"] for g in eni_groups(eni_id)] == [group]
            closed = banner()
            assert closed.returncode != 0 and not closed.stdout, closed
            err = aws_error("modify-network-interface-attribute", "--network-interface-id",
                            eni_id, "--groups", "sg-0123456789abcdef0")
            assert "InvalidGroup.NotFound" in err, err
            aws("modify-network-interface-attribute", "--network-interface-id", eni_id,
                "--no-source-dest-check")
            eni = aws("describe-network-interfaces", "--network-interface-ids",
                      eni_id)["NetworkInterfaces"][0]
            assert eni["SourceDestCheck"] is False
        finally:
            aws("modify-network-interface-attribute", "--network-interface-id",
                nic["NetworkInterfaceId"], "--groups", group, check=False)
            aws("delete-security-group", "--group-id", web, check=False)

        with pytest.raises(botocore.exceptions.ClientError) as taken:
            ec2.run_instances(ImageId=lab_minimal_ami, InstanceType="lab.nano", MinCount=1, MaxCount=1,
                              NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet_b["SubnetId"],
                                                  "PrivateIpAddress": "172.31.16.77"}])
        assert taken.value.response["Error"]["Code"] == "InvalidIPAddress.InUse"
    finally:
        ec2.terminate_instances(InstanceIds=launched)
        ec2.get_waiter("instance_terminated").wait(InstanceIds=launched,
                                                   WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    ec2.delete_security_group(GroupId=group)
    ec2.delete_key_pair(KeyName="vpc-kp")
    # Termination deleted the interface and gave the address back.
    assert aws("describe-network-interfaces", "--filters",
               f"Name=attachment.instance-id,Values={iid}")["NetworkInterfaces"] == []
    assert subnet(ec2, subnet_b["SubnetId"])["AvailableIpAddressCount"] == free_before


def test_bad_subnets_are_refused_like_ec2(ec2, lab_minimal_ami):
    err = aws_error("run-instances", "--image-id", lab_minimal_ami, "--subnet-id", MISSING_SUBNET)
    assert "InvalidSubnetID.NotFound" in err
    assert "InvalidSubnetID.Malformed" in aws_error("run-instances", "--image-id", lab_minimal_ami,
                                                     "--subnet-id", "subnet-xyz")
    assert "InvalidSubnetID.NotFound" in aws_error("describe-subnets", "--subnet-ids", MISSING_SUBNET)
    with pytest.raises(botocore.exceptions.ClientError) as both:
        ec2.run_instances(ImageId=lab_minimal_ami, MinCount=1, MaxCount=1, SubnetId=MISSING_SUBNET,
                          NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": MISSING_SUBNET}])
    assert both.value.response["Error"]["Code"] == "InvalidParameterCombination"
    with pytest.raises(botocore.exceptions.ClientError) as reserved:
        ec2.run_instances(ImageId=lab_minimal_ami, MinCount=1, MaxCount=1, PrivateIpAddress="172.31.0.1")
    assert reserved.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending"]}])[
        "Reservations"] == []
