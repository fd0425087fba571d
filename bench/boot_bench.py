#!/usr/bin/env python3
"""`scripts/bench boot`: RunInstances to a usable lab-minimal instance,
through the real daemon, as a user meets it.

Starts `ec2lab serve` (release build, the images of `scripts/build-images`)
on a data directory of its own, with an uplink namespace the bench makes
(so nothing leaves this host's namespaces), opens port 22 of the default
security group to the uplink, and for each instance type launches one
lab-minimal instance at a time and times, from the RunInstances call:

  - `Run /init` on the console (the kernel's part),
  - `lab-minimal: ready` on the console (init, DHCP, the agent's
    check-in, metadata, key and user data done),
  - the SSH banner read from the instance's public address in the uplink.

Console lines are timed when the daemon's GetConsoleOutput first shows
them (polled every 0.5 s). Then the instance is terminated. Prints the
machine (CPU model) and one row per type; `--timeline FILE` writes every
console line with the time it first showed. Needs root, /dev/kvm, the images
and the Python environment of scripts/python-env.
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import boto3
import botocore.config

from benchlib import free_port, machine

REGION = "us-east-1"


# Connect with a 1 s deadline (until the guest has its address a SYN goes
# unanswered, and a long deadline would blur the time), then give the
# banner 30 s: an emulated guest kernel takes seconds to accept and fork.
KNOCK = """
import socket, sys
s = socket.socket()
s.settimeout(1)
try:
    s.connect((sys.argv[1], 22))
except OSError:
    sys.exit(1)
s.settimeout(30)
try:
    sys.stdout.write(s.recv(7).decode(errors="replace"))
except OSError:
    sys.exit(1)
"""


def banner(ns, ip):
    """The first 7 bytes port 22 of `ip` sends, from namespace `ns`."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", KNOCK, ip],
        capture_output=True, text=True)
    return done.stdout


def boot_once(ec2, ami, itype, ns, timeout, timeline=None):
    started = time.monotonic()
    iid = ec2.run_instances(ImageId=ami, InstanceType=itype, MinCount=1,
                            MaxCount=1)["Instances"][0]["InstanceId"]
    launched = time.monotonic() - started
    marks = {"Run /init": None, "lab-minimal: ready": None}
    ssh = [None]
    public = [None]

    def knock():
        while ssh[0] is None and time.monotonic() - started < timeout:
            if public[0] and banner(ns, public[0]).startswith("SSH-2.0"):
                ssh[0] = time.monotonic() - started
                return
            time.sleep(0.2)

    knocker = threading.Thread(target=knock, daemon=True)
    knocker.start()
    seen = 0
    while time.monotonic() - started < timeout:
        if public[0] is None:
            got = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
            public[0] = got.get("PublicIpAddress")
        # botocore decodes the base64 Output itself.
        text = ec2.get_console_output(InstanceId=iid).get("Output") or ""
        now = time.monotonic() - started
        if timeline is not None:
            lines = text.splitlines()
            for line in lines[seen:]:
                timeline.write(f"{now:7.1f} {line}\n")
            seen = len(lines)
        for mark in marks:
            if marks[mark] is None and mark in text:
                marks[mark] = now
        if all(marks.values()) and ssh[0] is not None:
            if timeline is not None:
                timeline.write(f"{ssh[0]:7.1f} [bench] SSH banner\n")
            break
        time.sleep(0.5)
    knocker.join(timeout=1)
    ec2.terminate_instances(InstanceIds=[iid])
    while ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0][
            "State"]["Name"] != "terminated":
        time.sleep(0.5)
    return launched, marks["Run /init"], marks["lab-minimal: ready"], ssh[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ec2lab", required=True)
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--types", default="lab.nano,t2.micro")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--timeline", metavar="FILE",
                    help="write each console line with the time it first showed")
    a = ap.parse_args()
    # A SIGTERM still terminates the instances' daemon and removes the
    # namespace (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("boot_bench: terminated"))
    work = tempfile.mkdtemp(prefix="ec2lab-boot-bench.")
    ns = f"ec2lab-bench-uplink-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = ec2 = None
    try:
        data = os.path.join(work, "data")
        init = subprocess.run([a.ec2lab, "init", "--data-dir", data], capture_output=True,
                              text=True, check=True)
        creds = {k: v.strip("'\"") for k, v in
                 (w.split("=", 1) for w in init.stdout.split() if "=" in w)}
        port = free_port()
        log = open(os.path.join(work, "serve.log"), "w")
        proc = subprocess.Popen(
            [a.ec2lab, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
             "--images", a.images, "--vmm", a.vmm, "--uplink-netns", ns,
             "--dns-upstream", "none", "--forward-base", "0"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env={**os.environ, "EC2LAB_LOG": "info"})
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    sys.exit("boot_bench: ec2lab serve did not start (see serve.log)")
                time.sleep(0.1)
        ec2 = boto3.client(
            "ec2", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            config=botocore.config.Config(retries={"total_max_attempts": 1}))
        ami = ec2.describe_images(Filters=[{"Name": "name", "Values": ["lab-minimal"]}])[
            "Images"][0]["ImageId"]
        group = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]
        ec2.authorize_security_group_ingress(
            GroupId=group["GroupId"], IpPermissions=[{
                "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        print(f"{machine()}, load {load}")
        print()
        print("| type | run | RunInstances answered | `Run /init` | `lab-minimal: ready` | SSH banner at the public address |")
        print("|---|---:|---:|---:|---:|---:|")

        def s(x):
            return "never" if x is None else f"{x:.1f} s"

        timeline = open(a.timeline, "w") if a.timeline else None
        for itype in a.types.split(","):
            for run in range(1, a.runs + 1):
                if timeline is not None:
                    timeline.write(f"# {itype} run {run}\n")
                launched, init_at, ready, ssh = boot_once(ec2, ami, itype, ns, a.timeout,
                                                          timeline)
                print(f"| {itype} | {run} | {launched * 1000:.0f} ms | {s(init_at)} | {s(ready)} | {s(ssh)} |",
                      flush=True)
    finally:
        if proc is not None:
            try:
                left = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"]
                        for i in r["Instances"] if i["State"]["Name"] != "terminated"]
                if left:
                    ec2.terminate_instances(InstanceIds=left)
                    time.sleep(10)
            except Exception as e:  # the daemon may be what failed
                print(f"boot_bench: cleaning up: {e}", file=sys.stderr)
            proc.terminate()
            proc.wait(timeout=60)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
