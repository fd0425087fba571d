"""Shared fixtures for the conformance suite: the real aws CLI and boto3
against a running `ec2lab serve` (started by control/tests/conformance.rs,
which passes the endpoint and credentials in the environment)."""
import json
import os
import subprocess
import time

import boto3
import pytest

ENDPOINT = os.environ.get("EC2LAB_ENDPOINT", "http://127.0.0.1:8787")


@pytest.fixture(scope="session")
def ec2():
    return boto3.client("ec2", endpoint_url=ENDPOINT)


def aws(*args, check=True, text_output=False):
    """Runs `aws --endpoint-url ... ec2 ARGS`; returns parsed JSON (or text)."""
    cmd = ["aws", "--endpoint-url", ENDPOINT, "ec2", *args]
    if not text_output and "--output" not in args:
        cmd += ["--output", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    if not check:
        return proc
    if text_output:
        return proc.stdout
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def aws_error(*args):
    """Runs a command that must fail; returns its stderr."""
    proc = aws(*args, check=False)
    assert proc.returncode != 0, f"aws ec2 {' '.join(args)} unexpectedly succeeded:\n{proc.stdout}"
    return proc.stderr


def wait_for(predicate, timeout, what, interval=2.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def lab_minimal_ami(ec2):
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": ["lab-minimal"]}])["Images"]
    assert len(images) == 1, images
    return images[0]["ImageId"]
