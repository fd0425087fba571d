"""Twenty launch/terminate cycles leave nothing on the host: each launch
builds its VPC's namespace, bridge, tap, rules, dnsmasq and gateway, and
each terminate (here while the guest is still booting, the racy case)
takes them down again. Checked after the cycles; the suite's end checks
the same again for everything."""
import os
import subprocess

from conftest import aws


def namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def links_in(ns):
    out = subprocess.run(["ip", "netns", "exec", ns, "ip", "-o", "link", "show"],
                         capture_output=True, text=True, check=True)
    return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]


def test_twenty_launch_terminate_cycles_leave_nothing(ec2, lab_minimal_ami):
    vpc = aws("describe-vpcs", "--filters", "Name=isDefault,Values=true")["Vpcs"][0]["VpcId"]
    vpc_ns = f"ec2lab-{vpc}"
    uplink = os.environ["EC2LAB_UPLINK_NETNS"]
    for cycle in range(20):
        iid = aws("run-instances", "--image-id", lab_minimal_ami, "--instance-type", "lab.nano",
                  )["Instances"][0]["InstanceId"]
        if cycle == 0:
            # The fabric is really built: the namespace with the tap and the
            # gateway's port on the uplink (waited for: the boot builds it).
            ec2.get_waiter("instance_running").wait(
                InstanceIds=[iid], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
            assert vpc_ns in namespaces()
            assert any(link.startswith("tap") for link in links_in(vpc_ns))
            assert "igw" in links_in(vpc_ns)
            assert len(links_in(uplink)) >= 3, links_in(uplink)  # lo, inet0, the port
        ec2.terminate_instances(InstanceIds=[iid])
        ec2.get_waiter("instance_terminated").wait(
            InstanceIds=[iid], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    assert vpc_ns not in namespaces()
    assert links_in(uplink) == ["lo"], links_in(uplink)
    dnsmasq = subprocess.run(["pgrep", "-f", f"network/{vpc}/dnsmasq"],
                             capture_output=True, text=True)
    assert dnsmasq.stdout.strip() == "", dnsmasq.stdout
