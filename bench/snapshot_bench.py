#!/usr/bin/env python3
"""`scripts/bench snapshot`: ec2lab-vmm's snapshot and restore beside
Firecracker 1.16.1's own, in one run, on the same tiny guest
(bench/exit-guest.S built with HANG=1: it halts after "BENCH-OK").

For each guest size (128 MiB, 1 GiB, 4 GiB of mostly untouched memory, and
1 GiB with 100 MiB touched):
- snapshot: wall time of the snapshot request on a paused VM, memory
  file included (ec2lab: PUT /snapshot/create; Firecracker: PUT
  /snapshot/create with a Full snapshot);
- restore to running: from spawning the new VMM process to its first
  KVM_RUN (LD_PRELOAD stamp, bench/kvm-run-stamp.c), the snapshot's files
  in the page cache (ec2lab: --restore-from; Firecracker: PUT
  /snapshot/load with resume_vm); and the part of it from the moment the
  VMM's binary is loaded (the stamp's constructor: exec and the dynamic
  loader done), which is the VMM's own work (for Firecracker it includes
  this script's API request).
Medians of --runs (default 5). Prints Markdown tables with ratios and the
machine. Timing is reported, never judged.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time

SIZES = [(128, 0), (1024, 0), (4096, 0), (1024, 100)]


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=600):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def call(sock, method, path, body=None):
    c = UnixHTTP(sock)
    data = None if body is None else json.dumps(body)
    headers = {"Content-Type": "application/json"} if data is not None else {}
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    text = r.read().decode(errors="replace")
    c.close()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {text.strip()[:200]}")
    return text


def wait_socket(sock, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before its API answered")
        if os.path.exists(sock):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.close()
                return
            except OSError:
                pass
        time.sleep(0.005)
    raise RuntimeError("API socket never answered")


def wait_output(path, needle, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if needle in open(path, errors="replace").read():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {needle!r}")
        time.sleep(0.01)
    raise RuntimeError(f"no {needle!r} after {timeout} s")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


class Bench:
    def __init__(self, a):
        self.a = a
        self.seq = 0

    def path(self, name):
        self.seq += 1
        return os.path.join(self.a.work, f"{self.seq:04d}-{name}")

    def spawn(self, argv, stamp=None):
        out = self.path("out")
        env = dict(os.environ)
        if stamp:
            env.update(LD_PRELOAD=self.a.stamp, BENCH_KVM_RUN_OUT=stamp)
        with open(out, "w") as o:
            t0 = time.monotonic_ns()
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=subprocess.STDOUT, env=env)
        return p, out, t0

    def restore_time(self, stamp, t0, proc, timeout=60):
        """(spawn → first KVM_RUN, VMM loaded → first KVM_RUN) in seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(stamp) and open(stamp).read().strip():
                fields = [int(x) for x in open(stamp).read().split()]
                return (fields[1] - t0) / 1e9, (fields[1] - fields[2]) / 1e9
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode} before its first KVM_RUN")
            time.sleep(0.001)
        raise RuntimeError("no KVM_RUN after the restore")

    def ec2lab(self, mib, guest):
        snap_dir = os.path.join(self.a.dir, "ec2lab-snapshot")
        shutil.rmtree(snap_dir, ignore_errors=True)
        os.makedirs(snap_dir)
        sock = self.path("api.sock")
        base = [self.a.ec2lab, "--kernel", guest, "--memory-mib", str(mib)]
        p, out, _ = self.spawn(base + ["--api-sock", sock, "--snapshot-dir", snap_dir])
        try:
            wait_output(out, "BENCH-OK", p)
            call(sock, "PUT", "/vm/state", {"state": "Paused"})
            t = time.perf_counter()
            report = json.loads(call(sock, "PUT", "/snapshot/create"))
            snap = time.perf_counter() - t
        finally:
            stop(p)
        sock2, stamp = self.path("api.sock"), self.path("stamp")
        p, out, t0 = self.spawn(base + ["--api-sock", sock2, "--restore-from", snap_dir], stamp)
        try:
            restore, restore_loaded = self.restore_time(stamp, t0, p)
            wait_socket(sock2, p)
            vm = json.loads(call(sock2, "GET", "/vm"))
            if vm.get("state") != "Running":
                raise RuntimeError(f"restored VM is {vm.get('state')}")
        finally:
            stop(p)
        return snap, restore, restore_loaded, report["written_bytes"]

    def firecracker(self, mib, guest):
        snap_dir = os.path.join(self.a.dir, "firecracker-snapshot")
        shutil.rmtree(snap_dir, ignore_errors=True)
        os.makedirs(snap_dir)
        state, mem = os.path.join(snap_dir, "state"), os.path.join(snap_dir, "memory")
        sock = self.path("fc.sock")
        p, out, _ = self.spawn([self.a.firecracker, "--api-sock", sock, "--log-path", self.touch("fc.log")])
        try:
            wait_socket(sock, p)
            call(sock, "PUT", "/boot-source", {"kernel_image_path": guest, "boot_args": "console=ttyS0"})
            call(sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": mib, "smt": False})
            call(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
            wait_output(out, "BENCH-OK", p)
            call(sock, "PATCH", "/vm", {"state": "Paused"})
            t = time.perf_counter()
            call(sock, "PUT", "/snapshot/create",
                 {"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem})
            snap = time.perf_counter() - t
        finally:
            stop(p)
        written = os.stat(mem).st_blocks * 512
        sock2, stamp = self.path("fc.sock"), self.path("stamp")
        p, out, t0 = self.spawn([self.a.firecracker, "--api-sock", sock2, "--log-path", self.touch("fc.log")],
                                stamp)
        try:
            wait_socket(sock2, p)
            call(sock2, "PUT", "/snapshot/load",
                 {"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem},
                  "resume_vm": True})
            restore, restore_loaded = self.restore_time(stamp, t0, p)
        finally:
            stop(p)
        return snap, restore, restore_loaded, written

    def touch(self, name):
        path = self.path(name)
        open(path, "w").close()
        return path


def med(xs):
    return statistics.median(xs) if xs else None


def ms(v):
    return "–" if v is None else f"{v * 1000:,.1f} ms"


def mib(v):
    return "–" if v is None else f"{v / 2**20:,.0f} MiB"


def ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def main():
    ap = argparse.ArgumentParser()
    for k in ("work", "dir", "ec2lab", "firecracker", "stamp"):
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--guests", required=True, help="directory with touch-<MiB>.elf guests")
    a = ap.parse_args()
    b = Bench(a)
    results, failures = {}, []
    for size, touched in SIZES:
        guest = os.path.join(a.guests, f"touch-{touched}.elf")
        for vmm in ("ec2lab", "firecracker"):
            runs = []
            for _ in range(a.runs):
                try:
                    runs.append(getattr(b, vmm)(size, guest))
                except (RuntimeError, OSError) as e:
                    failures.append(f"{vmm}, {size} MiB ({touched} MiB touched): {e}")
                    break
            results[(size, touched, vmm)] = runs
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    pvm = "yes (guest kernel mode emulated)" if os.path.exists("/sys/module/kvm_pvm") else "no"
    print(f"- CPU: {cpu} ({os.cpu_count()} CPUs)\n- kernel: {os.uname().release}\n"
          f"- /sys/module/kvm_pvm: {pvm}\n- medians of {a.runs} runs; snapshot files under {a.dir}\n")
    print("| guest memory (touched) | | ec2lab-vmm | Firecracker 1.16.1 | ec2lab ÷ FC |")
    print("|---|---|---|---|---|")
    for size, touched in SIZES:
        e, f = results[(size, touched, "ec2lab")], results[(size, touched, "firecracker")]
        label = f"{size:,} MiB ({touched} MiB)"
        for i, (name, fmt) in enumerate([("snapshot", ms), ("restore: spawn → first KVM_RUN", ms),
                                         ("restore: VMM loaded → first KVM_RUN", ms),
                                         ("memory file on disk", mib)]):
            ev, fv = med([r[i] for r in e]), med([r[i] for r in f])
            print(f"| {label if i == 0 else ''} | {name} | {fmt(ev)} | {fmt(fv)} | {ratio(ev, fv)} |")
    for f in failures:
        print(f"\nnot measured: {f}")


if __name__ == "__main__":
    main()
