"""An instance's whole life with real lab-minimal guests under KVM: the
README's commands verbatim through the aws CLI, boto3's waiters, and the
error cases EC2 users run into."""
import base64
import os
import re
import subprocess
import time

import botocore
import pytest

from conftest import aws, aws_error, wait_for

INIT_SH = "#!/bin/sh\necho hello from user data > /tmp/hello\n"


@pytest.fixture(scope="module")
def key_pair():
    aws("create-key-pair", "--key-name", "lifecycle-kp")
    yield "lifecycle-kp"
    aws("delete-key-pair", "--key-name", "lifecycle-kp")


def console(instance_id):
    out = aws("get-console-output", "--instance-id", instance_id)
    return out.get("Output") or ""


def mem_total_mib(iid):
    """The guest kernel's MemTotal in MiB (0 when it cannot be read)."""
    done = connect(iid, "grep", "MemTotal", "/proc/meminfo")
    fields = done.stdout.split()
    return int(fields[1]) // 1024 if done.returncode == 0 and len(fields) > 1 else 0


def state(ec2, instance_id):
    r = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return r[0]["Instances"][0]


def connect(iid, *command):
    """Runs one command in the instance over `ec2lab connect` (vsock)."""
    return subprocess.run([os.environ["EC2LAB_CLI"], "connect", iid, "--", *command],
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def counters(text):
    return [int(n) for n in re.findall(r"^counter (\d+)$", text.replace("\r", ""), re.MULTILINE)]


def test_run_describe_console_stop_start_reboot_hibernate_terminate(ec2, lab_minimal_ami, key_pair,
                                                                    tmp_path):
    init = tmp_path / "init.sh"
    init.write_text(INIT_SH)
    run = aws("run-instances", "--image-id", lab_minimal_ami, "--instance-type", "t2.micro",
              "--key-name", key_pair, "--user-data", f"file://{init}",
              "--hibernation-options", "Configured=true",
              "--tag-specifications", "ResourceType=instance,Tags=[{Key=Name,Value=web}]")
    instance = run["Instances"][0]
    iid = instance["InstanceId"]
    assert instance["State"]["Name"] == "pending"
    assert instance["State"]["Code"] == 0
    assert instance["InstanceType"] == "t2.micro"
    assert instance["KeyName"] == key_pair
    assert {"Key": "Name", "Value": "web"} in instance["Tags"]
    assert instance["HibernationOptions"] == {"Configured": True}

    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    running = aws("describe-instances", "--filters", "Name=instance-state-name,Values=running",
                  "Name=instance-type,Values=t2.micro",
                  "--query", "Reservations[].Instances[].InstanceId", "--output", "text", text_output=True)
    assert iid in running.split()
    by_tag = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["w?b"]}])["Reservations"]
    assert iid in [i["InstanceId"] for r in by_tag for i in r["Instances"]]
    described = state(ec2, iid)
    assert described["ImageId"] == lab_minimal_ami
    assert described["Placement"]["AvailabilityZone"].startswith("us-east-1")
    assert described["BlockDeviceMappings"][0]["DeviceName"] == "/dev/xvda"
    assert described["MetadataOptions"]["HttpTokens"] in ("optional", "required")
    attribute = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
    assert base64.b64decode(attribute["UserData"]["Value"]).decode() == INIT_SH

    # The guest really boots: its serial console comes back through the API.
    wait_for(lambda: "lab-minimal: ready" in console(iid), 600, "the guest's boot on its console")
    # The agent got the key and the user data from the metadata service.
    for line in ["ec2lab-guest: ssh-key: ok: installed key 0=lifecycle-kp",
                 "ec2lab-guest: user-data: ok: user data script exited with status 0"]:
        assert line in console(iid), (line, console(iid))
    status = ec2.describe_instance_status(InstanceIds=[iid])["InstanceStatuses"][0]
    assert status["SystemStatus"]["Status"] == "ok"
    assert status["InstanceState"]["Name"] == "running"
    # The guest has its type's 1 GiB. On hosts that emulate the guest
    # kernel the lab boots it with 128 MiB and its virtio-mem driver plugs
    # the rest once the agent has checked in; elsewhere it boots with all.
    wait_for(lambda: "session: ok: listening on vsock port 9001" in console(iid), 300,
             "the agent's session service")
    wait_for(lambda: mem_total_mib(iid) > 900, 300, "the t2.micro's 1 GiB of memory")

    # A public address from the lab's pool while it runs (the default
    # subnet maps one on launch).
    first_public = described["PublicIpAddress"]

    # As on EC2, starting a running instance is a no-op that succeeds.
    again = aws("start-instances", "--instance-ids", iid)["StartingInstances"][0]
    assert again["PreviousState"]["Name"] == again["CurrentState"]["Name"] == "running"

    stopping = aws("stop-instances", "--instance-ids", iid)["StoppingInstances"][0]
    assert stopping["PreviousState"]["Name"] == "running"
    assert stopping["CurrentState"]["Name"] == "stopping"
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    stopped = state(ec2, iid)
    assert stopped["StateReason"]["Code"] == "Client.UserInitiatedShutdown"
    assert "lab-minimal: shutting down" in console(iid), "stop was not a clean guest shutdown"
    assert "IncorrectInstanceState" in aws_error("reboot-instances", "--instance-ids", iid)
    # Stopping gives the pool address back; an Elastic IP associated now
    # is the instance's public address, stopped and running alike.
    assert "PublicIpAddress" not in stopped
    eip = aws("allocate-address", "--domain", "vpc")
    association = aws("associate-address", "--instance-id", iid,
                      "--allocation-id", eip["AllocationId"])["AssociationId"]
    assert state(ec2, iid)["PublicIpAddress"] == eip["PublicIp"]

    ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "t2.nano"})
    started = aws("start-instances", "--instance-ids", iid)["StartingInstances"][0]
    assert started["PreviousState"]["Name"] == "stopped"
    assert started["CurrentState"]["Name"] == "pending"
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    assert state(ec2, iid)["InstanceType"] == "t2.nano"
    wait_for(lambda: "lab-minimal: ready" in console(iid), 600, "the second boot")
    # User data runs once per instance, as on EC2: not again after a stop.
    once = f"ec2lab-guest: user-data: skipped: already ran for {iid}"
    assert once in console(iid) and "user data script exited" not in console(iid), console(iid)
    assert state(ec2, iid)["PublicIpAddress"] == eip["PublicIp"], "the EIP did not survive stop/start"
    address = aws("describe-addresses", "--allocation-ids", eip["AllocationId"])["Addresses"][0]
    assert address["InstanceId"] == iid and address["AssociationId"] == association
    assert address["PrivateIpAddress"] == state(ec2, iid)["PrivateIpAddress"]
    # Disassociated from a running instance, it gets a pool address again:
    # not the one it had before the stop.
    aws("disassociate-address", "--association-id", association)
    second_public = state(ec2, iid)["PublicIpAddress"]
    assert second_public not in (first_public, eip["PublicIp"]), (first_public, second_public)
    aws("release-address", "--allocation-id", eip["AllocationId"])

    before_reboot = console(iid)
    aws("reboot-instances", "--instance-ids", iid)
    # Each boot starts a fresh console: wait for a different, complete one.
    # (The old console changes too while the old guest shuts down.)
    wait_for(lambda: state(ec2, iid)["State"]["Name"] == "running"
             and "lab-minimal: ready" in (now := console(iid)) and now != before_reboot
             and "lab-minimal: shutting down" not in now,
             600, "the reboot")
    assert state(ec2, iid)["PublicIpAddress"] == second_public, "a reboot changed the public address"
    assert once in console(iid) and "user data script exited" not in console(iid), console(iid)

    # Hibernate: a process counting on the console every second (it ignores
    # the hang-up that ends the session it was started from), a file in
    # /tmp (RAM: tmpfs), then stop --hibernate and start. The same counter
    # goes on, the file is there, nothing booted, and the guest's clock is
    # the host's again although it stood still on disk.
    wait_for(lambda: "session: ok: listening on vsock port 9001" in console(iid), 300,
             "the agent's session service")
    started = connect(iid, "sh", "-c",
                      "echo in-memory > /tmp/hibernated; "
                      "(trap '' HUP; i=0; while true; do i=$((i+1)); echo counter $i > /dev/console;"
                      " sleep 1; done)"
                      " </dev/null >/dev/null 2>&1 &")
    assert started.returncode == 0, started
    wait_for(lambda: len(counters(console(iid))) >= 3, 300, "the guest's counter")
    # The t2.nano's 512 MiB (plugged after boot where the lab splits it):
    # the hibernation saves what was plugged and the resume has it again.
    memory = wait_for(lambda: (m := mem_total_mib(iid)) > 400 and m, 300,
                      "the t2.nano's 512 MiB of memory")
    # An IMDSv2 token from before the hibernation (over the network card,
    # whose metadata service lives in the VMM).
    def imds(request):
        """One raw HTTP/1.0 request to 169.254.169.254 from inside the
        instance (busybox nc): the status line's code and the body."""
        done = connect(iid, "sh", "-c", f"printf '{request}' | nc 169.254.169.254 80")
        assert done.returncode == 0, done
        head, _, body = done.stdout.replace("\r", "").partition("\n\n")
        return head.split()[1] if head else "", body
    put_token = ("PUT /latest/api/token HTTP/1.0\\r\\n"
                 "X-aws-ec2-metadata-token-ttl-seconds: 21600\\r\\n\\r\\n")
    get_id = "GET /latest/meta-data/instance-id HTTP/1.0\\r\\nX-aws-ec2-metadata-token: {}\\r\\n\\r\\n"
    status, old_token = imds(put_token)
    assert status == "200" and old_token, (status, old_token)
    private_ip = state(ec2, iid)["PrivateIpAddress"]
    hibernating = aws("stop-instances", "--instance-ids", iid, "--hibernate")["StoppingInstances"][0]
    assert hibernating["CurrentState"]["Name"] == "stopping"
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    stopped = state(ec2, iid)
    assert stopped["StateReason"] == {"Code": "Client.UserInitiatedHibernate",
                                      "Message": "Client.UserInitiatedHibernate: User initiated hibernate"}
    assert "PublicIpAddress" not in stopped, "a hibernated instance keeps no pool address"
    before = counters(console(iid))
    assert before and "lab-minimal: shutting down" not in console(iid), "hibernate shut the guest down"
    time.sleep(20)  # on disk for a while: the guest's clock stands still meanwhile
    aws("start-instances", "--instance-ids", iid)
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    resumed = state(ec2, iid)
    assert resumed["PrivateIpAddress"] == private_ip
    assert "PublicIpAddress" in resumed
    after = wait_for(lambda: (c := counters(console(iid))) and len(c) >= 3 and c, 300,
                     "the counter after the resume")
    # The first whole line after the resume is the next count (or the one
    # after, when the pause fell in the middle of a line).
    assert after[0] in (before[-1] + 1, before[-1] + 2), (before, after)
    assert after == list(range(after[0], after[0] + len(after))), after
    assert "lab-minimal: ready" not in console(iid) and "Linux version" not in console(iid), console(iid)
    kept = connect(iid, "cat", "/tmp/hibernated")
    assert (kept.returncode, kept.stdout) == (0, "in-memory\n"), kept
    assert mem_total_mib(iid) == memory, "the resumed guest lost plugged memory"
    # The network card works after the resume; the old token does not (a
    # new VMM signs with a new key, as EC2 invalidates tokens), a new one does.
    assert imds(get_id.format(old_token))[0] == "401"
    status, new_token = imds(put_token)
    assert status == "200" and new_token != old_token, (status, new_token)
    assert imds(get_id.format(new_token)) == ("200", iid)
    # The daemon sets the resumed guest's clock through the agent; allow it
    # a moment (the guest is slow where its kernel is emulated).
    def guest_clock_skew():
        now = connect(iid, "date", "+%s")
        return now.returncode == 0 and abs(int(now.stdout) - time.time()) < 15 and now
    wait_for(guest_clock_skew, 120, "the guest's clock to be set after the resume", interval=5)
    assert not resumed.get("StateTransitionReason"), resumed["StateTransitionReason"]
    saved = os.path.join(os.environ["EC2LAB_DATA_DIR"], "instances", iid, "hibernation")
    assert not os.path.exists(os.path.join(saved, "state")), "the resumed hibernation was kept"

    # A hibernation that cannot be resumed (its state damaged on disk) boots
    # the instance from its volume instead, and says so.
    aws("stop-instances", "--instance-ids", iid, "--hibernate")
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    with open(os.path.join(saved, "state"), "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xff]))
    aws("start-instances", "--instance-ids", iid)
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    wait_for(lambda: "lab-minimal: ready" in console(iid), 600, "the boot after a failed resume")
    reason = state(ec2, iid)["StateTransitionReason"]
    assert reason.startswith("Resume from hibernation failed (") and "checksum mismatch" in reason, reason
    assert not os.path.exists(os.path.join(saved, "state"))

    terminating = aws("terminate-instances", "--instance-ids", iid)["TerminatingInstances"][0]
    assert terminating["CurrentState"]["Name"] == "shutting-down"
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    assert "IncorrectInstanceState" in aws_error("start-instances", "--instance-ids", iid)


def test_instance_errors(ec2, lab_minimal_ami, tmp_path):
    assert "InvalidInstanceID.Malformed" in aws_error("describe-instances", "--instance-ids", "i-xyz")
    assert "InvalidInstanceID.NotFound" in aws_error("describe-instances", "--instance-ids", "i-0123456789abcdef0")
    assert "InvalidInstanceID.NotFound" in aws_error("stop-instances", "--instance-ids", "i-0123456789abcdef0")
    assert "InvalidAMIID.NotFound" in aws_error("run-instances", "--image-id", "ami-0123456789abcdef0",
                                                "--instance-type", "t2.micro")
    assert "InvalidKeyPair.NotFound" in aws_error("run-instances", "--image-id", lab_minimal_ami,
                                                  "--instance-type", "t2.micro", "--key-name", "nope")
    big = tmp_path / "big.sh"
    big.write_text("#!/bin/sh\n" + "#" * 16500 + "\n")
    assert "InvalidParameterValue" in aws_error("run-instances", "--image-id", lab_minimal_ami,
                                                "--instance-type", "t2.micro", "--user-data", f"file://{big}")
    assert "InsufficientInstanceCapacity" in aws_error("run-instances", "--image-id", lab_minimal_ami,
                                                       "--instance-type", "m5.xlarge",
                                                       "--count", "500")
    assert "DryRunOperation" in aws_error("run-instances", "--image-id", lab_minimal_ami,
                                          "--instance-type", "t2.micro", "--dry-run")
    assert "InvalidParameterValue" in aws_error("run-instances", "--image-id", lab_minimal_ami,
                                                "--instance-type", "t9.huge")


def test_termination_protection_and_client_token(ec2, lab_minimal_ami):
    first = ec2.run_instances(ImageId=lab_minimal_ami, InstanceType="lab.nano", MinCount=1, MaxCount=1,
                              DisableApiTermination=True, ClientToken="token-1")
    again = ec2.run_instances(ImageId=lab_minimal_ami, InstanceType="lab.nano", MinCount=1, MaxCount=1,
                              DisableApiTermination=True, ClientToken="token-1")
    iid = first["Instances"][0]["InstanceId"]
    assert again["Instances"][0]["InstanceId"] == iid, "ClientToken must make RunInstances idempotent"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.terminate_instances(InstanceIds=[iid])
    assert e.value.response["Error"]["Code"] == "OperationNotPermitted"
    # Hibernation must be chosen at launch, as on EC2.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.stop_instances(InstanceIds=[iid], Hibernate=True)
    assert e.value.response["Error"]["Code"] == "UnsupportedHibernationConfiguration"
    assert iid in e.value.response["Error"]["Message"]
    ec2.modify_instance_attribute(InstanceId=iid, DisableApiTermination={"Value": False})
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig={"Delay": 2, "MaxAttempts": 150})


def test_tags(ec2, lab_minimal_ami):
    iid = ec2.run_instances(ImageId=lab_minimal_ami, InstanceType="lab.nano", MinCount=1,
                            MaxCount=1)["Instances"][0]["InstanceId"]
    aws("create-tags", "--resources", iid, "--tags", "Key=env,Value=test", "Key=team,Value=lab")
    tags = aws("describe-tags", "--filters", f"Name=resource-id,Values={iid}")["Tags"]
    assert {(t["Key"], t["Value"]) for t in tags} == {("env", "test"), ("team", "lab")}
    aws("delete-tags", "--resources", iid, "--tags", "Key=team")
    tags = aws("describe-tags", "--filters", f"Name=resource-id,Values={iid}")["Tags"]
    assert [(t["Key"], t["Value"]) for t in tags] == [("env", "test")]
    by_key = ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": ["env"]}])["Reservations"]
    assert iid in [i["InstanceId"] for r in by_key for i in r["Instances"]]
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig={"Delay": 2, "MaxAttempts": 150})
