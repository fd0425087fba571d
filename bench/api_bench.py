#!/usr/bin/env python3
"""Control-plane API benchmark driven by `scripts/bench api` (see its --help).

Starts `ec2lab serve` (1,000 instance records from `ec2lab bench-seed`, a
fake image catalog and a VMM path that does not exist, so launches fail in
the background without a guest) and moto's EC2 server (1,000 instances made
with run_instances) side by side, then runs the same boto3 code against both:

* DescribeInstances over all 1,000 instances: boto3 end-to-end latency, the
  wire part of it (request signed and sent -> response body read, measured
  with botocore's before-send/before-parse events) and requests/s, one
  client and 4 client threads. boto3 parsing 1,000 instances costs the
  client far more than either server spends, and the GIL serialises it, so
  a last row sends the same signed requests from 4 threads but hands botocore
  an empty result to parse: that row measures the servers.
* RunInstances, one instance per call: latency of the answer (the guest
  boot happens afterwards, or here not at all). ec2lab launches on a second,
  empty lab: the seeded records are "running" and leave no host capacity.

Prints a Markdown table and the machine line. Only processes started here
are killed, by PID; the temporary directory is removed.
"""
import argparse
import concurrent.futures
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import boto3
import botocore.awsrequest
import botocore.config
import urllib3

from benchlib import free_port, machine

REGION = "us-east-1"
INSTANCES = 1000


def wait_listening(port, proc, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"api_bench: {what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"api_bench: {what} never listened on port {port}")


def fake_catalog(images):
    """A kernel and a lab-minimal machine image whose manifests check out
    (as control/tests/shapes.rs builds it); nothing here can boot."""
    kernel, ami = os.path.join(images, "kernels/k"), os.path.join(images, "lab-minimal")
    os.makedirs(kernel)
    os.makedirs(ami)
    files = {os.path.join(kernel, "vmlinux"): b"ELF", os.path.join(ami, "root.ext4"): b"root"}
    for path, data in files.items():
        with open(path, "wb") as f:
            f.write(data)
    sha = {data: hashlib.sha256(data).hexdigest() for data in files.values()}
    k = {"schema_version": 1, "image_type": "kernel", "name": "k", "description": "bench",
         "architecture": "x86_64",
         "kernel": {"path": "vmlinux", "format": "elf-pvh", "size_bytes": 3, "sha256": sha[b"ELF"]},
         "created": "2026-01-01T00:00:00Z"}
    m = {"schema_version": 1, "image_type": "machine", "name": "lab-minimal", "description": "bench",
         "architecture": "x86_64", "root_device_type": "ebs", "root_device_name": "/dev/xvda",
         "block_device_mappings": [{"device_name": "/dev/xvda", "guest_device": "/dev/vda",
                                    "path": "root.ext4", "format": "raw", "size_bytes": 4,
                                    "sha256": sha[b"root"]}],
         "kernel": "k", "initrd": None, "cmdline": "console=ttyS0", "default_user": "ec2-user",
         "created": "2026-01-01T00:00:00Z"}
    for d, manifest in ((kernel, k), (ami, m)):
        with open(os.path.join(d, "manifest.json"), "w") as f:
            json.dump(manifest, f)


class Server:
    """One endpoint under test: its process, credentials and launch parameters."""

    def __init__(self, name, proc, endpoint, key, secret):
        self.name, self.proc, self.endpoint = name, proc, endpoint
        self.key, self.secret = key, secret
        self.ami = self.instance_type = None

    def client(self):
        return boto3.client(
            "ec2", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=self.key, aws_secret_access_key=self.secret,
            config=botocore.config.Config(retries={"total_max_attempts": 1},
                                          max_pool_connections=8))


def start_ec2lab(a, work, logs, name, seed):
    """An `ec2lab serve` on work/name; with `seed`, 1,000 running records."""
    data, images = os.path.join(work, name, "data"), os.path.join(work, name, "images")
    fake_catalog(images)
    init = subprocess.run([a.ec2lab, "init", "--data-dir", data], capture_output=True,
                          text=True, check=True)
    env = dict(w.split("=", 1) for w in init.stdout.split() if "=" in w)
    creds = {k: v.strip("'\"") for k, v in env.items()}
    port = free_port()
    proc = subprocess.Popen(
        [a.ec2lab, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
         "--images", images, "--vmm", "/nonexistent/ec2lab-vmm"],
        stdin=subprocess.DEVNULL, stdout=logs, stderr=logs,
        env={**os.environ, "EC2LAB_LOG": "warn"})
    server = Server("ec2lab", proc, f"http://127.0.0.1:{port}",
                    creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"])
    wait_listening(port, proc, "ec2lab serve")
    if seed:
        subprocess.run([a.ec2lab, "bench-seed", "--data-dir", data, "--count", str(INSTANCES)],
                       check=True, stdout=subprocess.DEVNULL)
    images = server.client().describe_images(
        Filters=[{"Name": "name", "Values": ["lab-minimal"]}])["Images"]
    server.ami, server.instance_type = images[0]["ImageId"], "lab.nano"
    return server


def start_moto(logs):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                            stdin=subprocess.DEVNULL, stdout=logs, stderr=logs)
    server = Server("moto", proc, f"http://127.0.0.1:{port}", "testing", "testing")
    wait_listening(port, proc, "moto server")
    ec2 = server.client()
    server.ami, server.instance_type = ec2.describe_images()["Images"][0]["ImageId"], "t2.nano"
    for _ in range(INSTANCES // 100):
        ec2.run_instances(ImageId=server.ami, InstanceType=server.instance_type,
                          MinCount=100, MaxCount=100)
    return server


class WireClock:
    """Times each call's wire part: from the signed request leaving botocore
    to the full response body in hand, before parsing."""

    def __init__(self, client):
        self.local = threading.local()
        self.samples = []
        client.meta.events.register("before-send.ec2.*", self.sent)
        client.meta.events.register("before-parse.ec2.*", self.received)

    def sent(self, **_):
        self.local.t0 = time.perf_counter()

    def received(self, **_):
        self.samples.append(time.perf_counter() - self.local.t0)


class RawSend:
    """Sends botocore's signed request itself and gives botocore an empty
    DescribeInstances result to parse, so only the server is measured."""
    EMPTY = (b'<?xml version="1.0" encoding="UTF-8"?><DescribeInstancesResponse '
             b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>x</requestId>'
             b'<reservationSet/></DescribeInstancesResponse>')

    def __init__(self, client):
        self.pool = urllib3.PoolManager(maxsize=1)
        self.bytes = 0
        client.meta.events.register("before-send.ec2.DescribeInstances", self.send)

    def send(self, request, **_):
        r = self.pool.request(request.method, request.url, body=request.body,
                              headers=dict(request.headers), retries=False)
        if r.status != 200:
            raise RuntimeError(f"DescribeInstances: HTTP {r.status}: {r.data[:300]!r}")
        self.bytes = len(r.data)

        class Raw:
            def stream(_self, **_):
                yield self.EMPTY
        return botocore.awsrequest.AWSResponse(request.url, 200, {}, Raw())


def timed(fn, n, warmup, budget):
    """Latencies of up to n calls after the warm-ups, stopping after `budget`
    seconds (at least 5 calls): moto needs seconds per DescribeInstances."""
    for _ in range(warmup):
        fn()
    out = []
    deadline = time.perf_counter() + budget
    while len(out) < n and (len(out) < 5 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def pct(xs, p):
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]


def concurrent_rate(server, threads, calls, budget, raw):
    """(requests/s, calls made) with `threads` clients each making up to
    `calls` DescribeInstances, until `budget` seconds have passed."""
    clients = [server.client() for _ in range(threads)]
    for c in clients:
        if raw:
            RawSend(c)
        c.describe_regions()  # loads the client's model outside the clock
    barrier = threading.Barrier(threads + 1)
    done = []

    def work(c):
        barrier.wait()
        deadline = time.perf_counter() + budget
        made = 0
        while made < calls and (made < 2 or time.perf_counter() < deadline):
            c.describe_instances()
            made += 1
        done.append(made)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(work, c) for c in clients]
        barrier.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        return sum(done) / (time.perf_counter() - t0), sum(done)


def measure(server, launcher, a):
    """DescribeInstances on `server`, RunInstances on `launcher`."""
    ec2 = server.client()
    got = sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"])
    if got < INSTANCES:
        sys.exit(f"api_bench: {server.name} describes {got} instances, expected {INSTANCES}")
    wire = WireClock(ec2)
    m = {}
    total = timed(ec2.describe_instances, a.calls, a.warmup, a.budget)
    wire_times = wire.samples[a.warmup:]
    m["n_seq"] = len(total)
    m["d50"], m["d99"] = pct(total, 50), pct(total, 99)
    m["w50"], m["w99"] = pct(wire_times, 50), pct(wire_times, 99)
    m["seq"] = len(total) / sum(total)
    m["thr"], m["n_thr"] = concurrent_rate(server, 4, a.calls, a.budget, raw=False)
    m["raw"], m["n_raw"] = concurrent_rate(server, 4, a.calls * 3, a.budget, raw=True)
    ec2 = launcher.client()
    wire = WireClock(ec2)

    def launch():
        ec2.run_instances(ImageId=launcher.ami, InstanceType=launcher.instance_type,
                          MinCount=1, MaxCount=1)
    run = timed(launch, a.run_calls, a.warmup, a.budget)
    m["n_run"] = len(run)
    run_wire = wire.samples[a.warmup:]
    m["r50"], m["r99"] = pct(run, 50), pct(run, 99)
    m["rw50"], m["rw99"] = pct(run_wire, 50), pct(run_wire, 99)
    return m


def table(e, m, a):
    ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
    rps = lambda v: f"{v:,.1f} req/s"  # noqa: E731
    n = f"up to {a.calls} calls after {a.warmup} warm-ups"
    rows = [
        (f"DescribeInstances, {INSTANCES:,} instances: p50, boto3 end to end ({n})", "d50", ms),
        ("DescribeInstances: p99, boto3 end to end", "d99", ms),
        ("DescribeInstances: p50, wire (request sent → body read, before parsing)", "w50", ms),
        ("DescribeInstances: p99, wire", "w99", ms),
        ("DescribeInstances: req/s, 1 boto3 client, sequential", "seq", rps),
        ("DescribeInstances: req/s, 4 boto3 client threads", "thr", rps),
        ("DescribeInstances: req/s, 4 client threads, response not parsed", "raw", rps),
        (f"RunInstances, 1 instance: p50, boto3 end to end ({a.run_calls} calls; "
         "ec2lab on an empty lab)", "r50", ms),
        ("RunInstances: p99, boto3 end to end", "r99", ms),
        ("RunInstances: p50, wire", "rw50", ms),
        ("RunInstances: p99, wire", "rw99", ms),
    ]
    print("| metric | ec2lab | moto | ec2lab ÷ moto |")
    print("|---|---|---|---|")
    for label, key, f in rows:
        print(f"| {label} | {f(e[key])} | {f(m[key])} | {e[key] / m[key]:.2f} |")
    print()
    for name, r in (("ec2lab", e), ("moto", m)):
        print(f"{name}: DescribeInstances {r['n_seq']} sequential calls, {r['n_thr']} and "
              f"{r['n_raw']} calls over 4 threads; RunInstances {r['n_run']} calls")
    print(machine())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ec2lab", required=True, help="the ec2lab binary")
    p.add_argument("--calls", type=int, default=30, help="measured DescribeInstances calls")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--run-calls", type=int, default=50, help="measured RunInstances calls")
    p.add_argument("--budget", type=float, default=45,
                   help="seconds per measurement before it stops early (at least 5 calls)")
    a = p.parse_args()
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        os.environ.pop(var, None)
    os.environ.update(AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                      AWS_EC2_METADATA_DISABLED="true")
    work = tempfile.mkdtemp(prefix="ec2lab-apibench.")
    servers = []
    try:
        with open(os.path.join(work, "servers.log"), "w") as logs:
            print("api_bench: starting ec2lab serve and moto, seeding "
                  f"{INSTANCES} instances in each", file=sys.stderr)
            # The 1,000 seeded records are "running" and hold the host's
            # capacity, so ec2lab launches on a second, empty lab.
            servers.append(start_ec2lab(a, work, logs, "seeded", seed=True))
            servers.append(start_ec2lab(a, work, logs, "empty", seed=False))
            servers.append(start_moto(logs))
            results = {}
            for s, launcher in ((servers[0], servers[1]), (servers[2], servers[2])):
                print(f"api_bench: measuring {s.name}", file=sys.stderr)
                results[s.name] = measure(s, launcher, a)
        table(results["ec2lab"], results["moto"], a)
    except BaseException:
        log = os.path.join(work, "servers.log")
        if os.path.exists(log):
            with open(log) as f:
                sys.stderr.write("--- server logs (tail) ---\n" + "".join(f.readlines()[-30:]))
        raise
    finally:
        for s in servers:
            if s.proc.poll() is None:
                os.kill(s.proc.pid, signal.SIGTERM)
                try:
                    s.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(s.proc.pid, signal.SIGKILL)
                    s.proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
