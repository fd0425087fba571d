"""EC2 Instance Connect's API on the ec2lab endpoint, without a guest: the
aws CLI's `ec2-instance-connect send-ssh-public-key` and boto3's client
reach it (AWS JSON 1.1, signed for `ec2-instance-connect`), and what EC2
refuses is refused with EC2's exception names. A pushed key logging in, and
expiring after 60 seconds, is in test_vpc.py."""
import json
import os
import subprocess
import urllib.error
import urllib.request

import boto3
import botocore
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import ENDPOINT

KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICtYnzSySIHq8QQfRJUzRQMqPnobgvnW74dY1GvmPst8"
       " me@laptop")
# A real 1024-bit RSA key: ImportKeyPair takes it, Instance Connect does not.
RSA1024 = ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC+W/Q4rNOL/zvSchzI0128b0ikik0VDezQSgf7frWvMw7C5S"
           "N/T4QzTge66Y/EG76GX6q518phgZzkcTlscZApCP9Oxtp4r5zZg2RKIvqRX68AcrKMdTI7RKGjhhyogJKJgc0p"
           "EKfpkBOT+C850dWmE9k0KHmt8TFmaAj3GKx/eQ== small")
MISSING = "i-0123456789abcdef0"


@pytest.fixture(scope="module")
def eic():
    return boto3.client("ec2-instance-connect", endpoint_url=ENDPOINT)


def refused(eic, **params):
    """The exception name and message of a SendSSHPublicKey that must fail."""
    args = {"InstanceId": MISSING, "InstanceOSUser": "ec2-user", "SSHPublicKey": KEY}
    args.update(params)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        eic.send_ssh_public_key(**args)
    error = e.value.response["Error"]
    assert e.value.response["ResponseMetadata"]["RequestId"], e.value.response
    return error["Code"], error["Message"]


def test_what_ec2_refuses_is_refused_with_its_exception_names(eic):
    code, message = refused(eic)
    assert code == "EC2InstanceNotFoundException" and MISSING in message, message
    code, message = refused(eic, InstanceOSUser="../root")
    assert code == "InvalidArgsException" and "InstanceOSUser" in message, message
    code, message = refused(eic, SSHPublicKey="ssh-ed25519 " + "A" * 90)
    assert code == "InvalidArgsException" and "SSHPublicKey" in message, message
    code, message = refused(eic, SSHPublicKey=RSA1024)
    assert code == "InvalidArgsException" and "1024 bits" in message, message
    code, message = refused(eic, InstanceId="i-NOTHEX00000")
    assert code == "InvalidArgsException" and "instance id" in message, message


def test_the_aws_cli_reaches_it_on_the_ec2_endpoint(tmp_path):
    pub = tmp_path / "key.pub"
    pub.write_text(KEY + "\n")
    proc = subprocess.run(
        ["aws", "--endpoint-url", ENDPOINT, "ec2-instance-connect", "send-ssh-public-key",
         "--instance-id", MISSING, "--instance-os-user", "ec2-user",
         "--ssh-public-key", f"file://{pub}"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc
    assert "EC2InstanceNotFoundException" in proc.stderr, proc.stderr


def raw(service, body=b"{}", sign=True):
    """A SendSSHPublicKey POST signed for `service` (or unsigned): its
    status and parsed JSON body."""
    request = AWSRequest(method="POST", url=ENDPOINT + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "AWSEC2InstanceConnectService.SendSSHPublicKey",
    })
    if sign:
        credentials = Credentials(os.environ["AWS_ACCESS_KEY_ID"],
                                  os.environ["AWS_SECRET_ACCESS_KEY"])
        SigV4Auth(credentials, service, "us-east-1").add_auth(request)
    prepared = urllib.request.Request(request.url, data=body, method="POST",
                                      headers=dict(request.headers.items()))
    try:
        with urllib.request.urlopen(prepared, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_every_request_is_authenticated_for_this_service():
    body = json.dumps({"InstanceId": MISSING, "InstanceOSUser": "ec2-user",
                       "SSHPublicKey": KEY}).encode()
    status, answer = raw("ec2-instance-connect", body)
    assert (status, answer["__type"]) == (400, "EC2InstanceNotFoundException"), answer
    # A signature for EC2 itself, or none, does not get that far.
    for service, sign in [("ec2", True), ("ec2-instance-connect", False)]:
        status, answer = raw(service, body, sign)
        assert status in (401, 403), (service, sign, status, answer)
        assert answer["__type"] != "EC2InstanceNotFoundException", answer
    status, answer = raw("ec2", body)
    assert "ec2-instance-connect" in answer["message"], answer
    # A body that is no SendSSHPublicKey input is refused, not guessed at.
    status, answer = raw("ec2-instance-connect", b"[1, 2")
    assert (status, answer["__type"]) == (400, "SerializationException"), answer
