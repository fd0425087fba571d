"""Instance status checks: the system check is the VMM's, the instance check
passes once the guest agent in lab-minimal checks in over vsock, and a
reboot sends it back through initializing."""
from conftest import aws

WAIT = {"Delay": 2, "MaxAttempts": 300}


def instance_check(ec2, iid):
    statuses = ec2.describe_instance_status(InstanceIds=[iid], IncludeAllInstances=True)["InstanceStatuses"]
    assert len(statuses) == 1, statuses
    return statuses[0]


def reachability(check):
    return {d["Name"]: d["Status"] for d in check["Details"]}["reachability"]


def ids_with(ec2, name, value):
    statuses = ec2.describe_instance_status(Filters=[{"Name": name, "Values": [value]}])["InstanceStatuses"]
    return [s["InstanceId"] for s in statuses]


def test_instance_status_turns_ok_when_the_agent_checks_in_and_again_after_a_reboot(ec2, lab_minimal_ami):
    iid = ec2.run_instances(ImageId=lab_minimal_ami, InstanceType="lab.micro", MinCount=1,
                            MaxCount=1)["Instances"][0]["InstanceId"]
    pending = instance_check(ec2, iid)
    assert pending["InstanceState"]["Name"] in ("pending", "running")
    assert pending["InstanceStatus"]["Status"] in ("not-applicable", "initializing"), pending

    ec2.get_waiter("instance_status_ok").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    status = instance_check(ec2, iid)
    assert status["InstanceState"]["Name"] == "running"
    assert status["SystemStatus"]["Status"] == "ok"
    assert reachability(status["SystemStatus"]) == "passed"
    assert status["InstanceStatus"]["Status"] == "ok"
    assert reachability(status["InstanceStatus"]) == "passed"
    assert all("ImpairedSince" not in d for d in status["InstanceStatus"]["Details"])
    assert iid in ids_with(ec2, "instance-status.status", "ok")
    assert iid in ids_with(ec2, "instance-status.reachability", "passed")
    assert iid in ids_with(ec2, "system-status.status", "ok")
    assert iid not in ids_with(ec2, "instance-status.status", "impaired")
    # The agent says so on the console too.
    console = aws("get-console-output", "--instance-id", iid).get("Output") or ""
    assert "ec2lab-guest: checkin: ok" in console, console

    # A reboot: the guest goes down, so its check-in no longer holds; the
    # new boot's agent checks in again.
    aws("reboot-instances", "--instance-ids", iid)
    rebooting = instance_check(ec2, iid)
    assert rebooting["InstanceStatus"]["Status"] == "initializing", rebooting
    assert reachability(rebooting["InstanceStatus"]) == "initializing"
    ec2.get_waiter("instance_status_ok").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    assert instance_check(ec2, iid)["InstanceStatus"]["Status"] == "ok"

    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    gone = instance_check(ec2, iid)
    assert gone["InstanceStatus"]["Status"] == "not-applicable"
    assert iid not in [s["InstanceId"] for s in ec2.describe_instance_status()["InstanceStatuses"]]
