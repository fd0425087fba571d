#!/usr/bin/env python3
"""Side-by-side VMM benchmark driven by `scripts/bench vmm` (see its --help).

Runs ec2lab-vmm, Firecracker and QEMU microvm on the same tiny guests (built
by scripts/bench from bench/exit-guest.S), interleaved so that host drift hits
all three alike, and prints Markdown tables. Only processes started here are
ever killed, by PID.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

VMMS = ("ec2lab", "firecracker", "qemu")
FAILED = {}  # VMM -> why it cannot run the exit guest here (its cells say n/a)
TITLE = {"ec2lab": "ec2lab-vmm", "firecracker": "Firecracker 1.16.1", "qemu": "QEMU microvm"}
# How the exit guest ends on each VMM (see exit-guest.S): ACPI S5, i8042
# reset, isa-debug-exit value 0 -> status 1.
OK_STATUS = {"ec2lab": 0, "firecracker": 0, "qemu": 1}
MEM_MIB = 128
# What ec2lab-vmm appends by itself on kernel-emulating hosts (features the
# emulator lacks), given to the baselines too so that they get as far as they
# can. Not `nopv`: without kvmclock FC and QEMU publish no TSC frequency and
# the kernel spins for minutes in emulated PIT calibration (ec2lab-vmm
# publishes it in CPUID leaf 0x15).
PVM_PARAMS = ("noxsave pti=off clearcpuid=pclmulqdq,cx16,popcnt,aes,rdrand,"
              "fsgsbase,invpcid,rdseed,smap,clflushopt,clwb,serialize,rdtscp")


class Bench:
    def __init__(self, a):
        self.a = a
        self.seq = 0

    def path(self, name):
        self.seq += 1
        return os.path.join(self.a.work, f"{self.seq:04d}-{name}")

    def argv(self, vmm, kernel, cmdline="console=ttyS0", initrd=None):
        """Command line for one VMM; Firecracker's logs go to a file so stdout is the serial port."""
        if vmm == "ec2lab":
            argv = [self.a.ec2lab, "--kernel", kernel, "--cmdline", cmdline,
                    "--memory-mib", str(MEM_MIB)]
            return argv + (["--initrd", initrd] if initrd else [])
        if vmm == "firecracker":
            boot = {"kernel_image_path": kernel, "boot_args": cmdline}
            if initrd:
                boot["initrd_path"] = initrd
            cfg = self.path("fc.json")
            with open(cfg, "w") as f:
                json.dump({"boot-source": boot, "drives": [], "machine-config":
                           {"vcpu_count": 1, "mem_size_mib": MEM_MIB, "smt": False}}, f)
            log = self.path("fc.log")
            open(log, "w").close()
            return [self.a.firecracker, "--no-api", "--config-file", cfg, "--log-path", log]
        argv = [self.a.qemu, "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities",
                "-m", str(MEM_MIB), "-nographic", "-nodefaults", "-no-user-config",
                "-serial", "stdio", "-kernel", kernel, "-append", cmdline,
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        return argv + (["-initrd", initrd] if initrd else [])

    def run(self, vmm, kernel, timeout=60):
        """One run to the guest's own end: wall time, rusage, first-KVM_RUN stamp."""
        out, err, stamp = self.path("out"), self.path("err"), self.path("stamp")
        env = dict(os.environ, LD_PRELOAD=self.a.stamp, BENCH_KVM_RUN_OUT=stamp)
        argv = self.argv(vmm, kernel)
        with open(out, "w") as o, open(err, "w") as e:
            t0_mono = time.monotonic_ns()
            t0 = time.perf_counter()
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=env)
            killer = threading.Timer(timeout, os.kill, (p.pid, signal.SIGKILL))
            killer.start()
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
            killer.cancel()
            p.returncode = os.waitstatus_to_exitcode(status)
        r = {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rc": p.returncode, "out": open(out, errors="replace").read(),
             "err": open(err, errors="replace").read()}
        if os.path.exists(stamp):
            cpu_ns, mono_ns = map(int, open(stamp).read().split()[:2])
            r["run_cpu"], r["run_wall"] = cpu_ns / 1e9, (mono_ns - t0_mono) / 1e9
        return r

    def check(self, vmm, r, n):
        """None if the run did what the guest says, else the reason."""
        st = f"killed by signal {-r['rc']}" if r["rc"] < 0 else f"exit status {r['rc']}"
        if "BENCH-OK" not in r["out"]:
            tail = (r["out"] + r["err"]).strip().splitlines()[-1:] or ["no output"]
            return f"{st}, no BENCH-OK: {tail[0][:120]}"
        if r["rc"] != OK_STATUS[vmm]:
            return f"{st}, expected {OK_STATUS[vmm]}"
        if vmm == "ec2lab":
            m = re.search(r"mmio_write=(\d+)", r["err"])
            if not m or int(m.group(1)) != n:
                return f"mmio_write={m.group(1) if m else '?'} but the guest did {n} writes"
        return None

    def footprint(self, vmm):
        """Peak RSS, guest-RAM RSS and anonymous RSS of a VMM whose guest has
        finished and halted."""
        out = self.path("out")
        argv = self.argv(vmm, self.a.guest_hang)
        with open(out, "w") as o:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o,
                                 stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 30
            while "BENCH-OK" not in open(out, errors="replace").read():
                if p.poll() is not None or time.time() > deadline:
                    return None
                time.sleep(0.01)
            time.sleep(0.3)  # let the VMM settle (threads, lazy allocations)
            status = open(f"/proc/{p.pid}/status").read()
            hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
            anon = int(re.search(r"RssAnon:\s+(\d+)", status).group(1))
            # Guest RAM = the anonymous rw mapping of exactly MEM_MIB.
            guest, size = 0, 0
            for line in open(f"/proc/{p.pid}/smaps"):
                if line.startswith("Size:"):
                    size = int(line.split()[1])
                elif line.startswith("Rss:") and size == MEM_MIB * 1024:
                    guest += int(line.split()[1])
            return hwm, guest, anon
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()

    def boot(self, vmm, kernel, initrd, timeout):
        """One kernel boot: timestamps of the first serial line and `Run /init`."""
        cmdline = "console=ttyS0 earlyprintk=serial"
        if vmm != "ec2lab" and os.path.exists("/sys/module/kvm_pvm"):
            cmdline += " " + PVM_PARAMS
        argv = self.argv(vmm, kernel, cmdline, initrd)
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        res = {"first": None, "init": None, "last": "", "outcome": None}
        done = threading.Event()  # set when there is nothing more to wait for

        def serial():
            for raw in p.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if not line.strip():
                    continue
                res["first"] = res["first"] or time.monotonic() - t0
                res["last"] = line
                if "Run /init" in line and res["init"] is None:
                    res["init"] = time.monotonic() - t0
                if "Kernel panic" in line:
                    done.set()
            done.set()

        stderr = []

        def errors():
            for raw in p.stderr:
                stderr.append(raw.decode(errors="replace"))
                if vmm == "qemu" and b"KVM internal error" in raw and not done.is_set():
                    res["outcome"] = "paused on KVM internal error"
                    done.set()

        for fn in (serial, errors):
            threading.Thread(target=fn, daemon=True).start()
        while not done.wait(0.1) and time.monotonic() - t0 < timeout:
            if res["init"] and time.monotonic() - t0 > res["init"] + 10:
                break  # what /init does after that is not measured here
        try:
            p.wait(2)  # e.g. guest poweroff right after `Run /init`
            res["outcome"] = res["outcome"] or f"exited with status {p.returncode}"
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            if time.monotonic() - t0 >= timeout:
                res["outcome"] = f"timeout after {timeout} s"
            elif "Kernel panic" in res["last"]:
                res["outcome"] = "kernel panic"
            res["outcome"] = (res["outcome"] or "still running") + ", killed"
        # Why it stopped, in the VMM's own words: QEMU's instruction bytes
        # (<cc> = INT3), Firecracker's log.
        code = re.search(r"Code=.*<([0-9a-f]{2})>", "".join(stderr))
        if code:
            op = f"opcode 0x{code.group(1)}" + (" (INT3)" if code.group(1) == "cc" else "")
            res["outcome"] = res["outcome"].replace("error", f"error at {op}", 1)
        if vmm == "firecracker":
            log = open(argv[argv.index("--log-path") + 1], errors="replace").read().splitlines()
            hits = ([l for l in log if "KVM_EXIT" in l]
                    or [l for l in log if "rror" in l and "bus_error" not in l])
            if hits:
                res["outcome"] += " (log: " + hits[-1].split("] ", 1)[-1].strip() + ")"
        return res


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(v, unit, scale=1.0, digits=1):
    return "–" if v is None else f"{v * scale:,.{digits}f} {unit}"


def ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def table(rows, na=FAILED):
    """rows: (label, {vmm: value}, formatter). Columns: the VMMs, then ec2lab ÷ each baseline."""
    lines = ["| | " + " | ".join(TITLE[v] for v in VMMS) + " | ec2lab ÷ FC | ec2lab ÷ QEMU |",
             "|---|" + "---|" * (len(VMMS) + 2)]
    for label, vals, f in rows:
        cells = [f(vals[v]) if vals.get(v) is not None else "n/a" if v in na else "–" for v in VMMS]
        r = [ratio(vals.get("ec2lab"), vals.get(b)) if f is not str else "" for b in ("firecracker", "qemu")]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r[0]} | {r[1]} |")
    return "\n".join(lines)


def version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        return next((l.strip() for l in out.splitlines() if l.strip()), "?")
    except OSError:
        return "?"


def machine(a):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    pvm = "yes (guest kernel mode emulated)" if os.path.exists("/sys/module/kvm_pvm") else "no"
    return (f"- CPU: {cpu} ({os.cpu_count()} CPUs)\n- kernel: {os.uname().release}\n"
            f"- /sys/module/kvm_pvm: {pvm}\n- VMMs: "
            + "; ".join(version([x, "--version"]) for x in (a.ec2lab, a.firecracker, a.qemu)))


def main():
    ap = argparse.ArgumentParser()
    for k in ("work", "ec2lab", "firecracker", "qemu", "stamp", "guest0", "guestn", "guest_hang"):
        ap.add_argument("--" + k.replace("_", "-"), required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kernel")
    ap.add_argument("--initrd")
    ap.add_argument("--boot-timeout", type=int, default=240)
    a = ap.parse_args()
    b = Bench(a)

    # 1 + 2: exit round trip and start-up, interleaved runs.
    runs = {(v, n): [] for v in VMMS for n in (0, a.n)}
    why = {}
    for i in range(a.runs):
        for v in VMMS:
            for n, guest in ((0, a.guest0), (a.n, a.guestn)):
                if v in why:
                    continue
                r = b.run(v, guest, timeout=60 + n / 10_000)
                bad = b.check(v, r, n)
                if bad:
                    why[v] = f"cannot run the guest: {bad}"
                else:
                    runs[(v, n)].append(r)
        print(f"bench: round {i + 1}/{a.runs} done", flush=True, file=sys.stderr)

    FAILED.update(why)

    def m(key, n):
        return {v: med([r[key] for r in runs[(v, n)] if key in r]) for v in VMMS if v not in why}

    t0, tn = m("wall", 0), m("wall", a.n)
    rate = {v: a.n / (tn[v] - t0[v]) for v in VMMS if v in tn and tn[v] > t0[v]}
    verified = {v: why.get(v, f"{a.runs}/{a.runs} runs ok") for v in VMMS}
    if "ec2lab" not in why:
        verified["ec2lab"] += f", mmio_write={a.n} each"

    print("## Machine\n\n" + machine(a) + "\n")
    print(f"## 1. Exit round trip (ring-3 32-bit MMIO write to unbacked 0xd0000000)\n\n"
          f"Median of {a.runs} runs each; exits/s = N / (t(N={a.n}) − t(N=0)); "
          "ratios > 1 mean ec2lab is faster.\n")
    print(table([
        ("wall, N=0", t0, lambda x: fmt(x, "ms", 1e3)),
        (f"wall, N={a.n}", tn, lambda x: fmt(x, "s", 1, 3)),
        ("**exits/s**", rate, lambda x: f"**{x:,.0f}**"),
        ("checked", verified, str),
    ]))

    fp = {v: [x for x in (b.footprint(v) for _ in range(a.runs)) if x] for v in VMMS if v not in why}
    hwm = {v: med([h for h, _, _ in fp[v]]) for v in fp if fp[v]}
    guest = {v: med([g for _, g, _ in fp[v]]) for v in fp if fp[v]}
    net = {v: med([h - g for h, g, _ in fp[v]]) for v in fp if fp[v]}
    private = {v: med([a - g for _, g, a in fp[v]]) for v in fp if fp[v]}
    print(f"\n## 2. Start-up and footprint (same guest, N=0, {MEM_MIB} MiB, median of {a.runs})\n")
    print(table([
        ("CPU to first KVM_RUN (user+sys)", m("run_cpu", 0), lambda x: fmt(x, "ms", 1e3)),
        ("wall to first KVM_RUN", m("run_wall", 0), lambda x: fmt(x, "ms", 1e3)),
        ("CPU to exit (user+sys)", m("cpu", 0), lambda x: fmt(x, "ms", 1e3)),
        ("peak RSS (VmHWM)", hwm, lambda x: fmt(x, "MiB", 1 / 1024, 2)),
        ("guest RAM resident", guest, lambda x: fmt(x, "MiB", 1 / 1024, 2)),
        ("**peak RSS − guest RAM**", net, lambda x: fmt(x, "MiB", 1 / 1024, 2)),
        ("private: anonymous RSS − guest RAM", private, lambda x: fmt(x, "MiB", 1 / 1024, 2)),
    ]))
    print("\nRatios < 1 mean ec2lab uses less. Targets for ec2lab-vmm: ≤ 8 ms CPU, ≤ 4 MB.\n"
          "First KVM_RUN: stamped by an LD_PRELOAD ioctl() shim (CPU = CLOCK_PROCESS_CPUTIME_ID).\n"
          "CPU to exit: getrusage of the whole run, incl. the emulated ring-0 guest code (sys).\n"
          "RSS: VmHWM once the guest has printed BENCH-OK and halted; guest RAM = Rss of the\n"
          f"{MEM_MIB} MiB guest mapping in /proc/PID/smaps (QEMU's includes its firmware's pages).\n"
          "Most of the RSS is the binary's and libraries' text, mapped from the page cache and\n"
          "shared by every VMM process; the anonymous RSS (RssAnon, at the same moment) is what\n"
          "each further VM adds.")

    if a.kernel:
        print(f"\n## 3. Kernel boot ({os.path.basename(a.kernel)}, 1 run each, timeout {a.boot_timeout} s)\n")
        res = {v: b.boot(v, a.kernel, a.initrd, a.boot_timeout) for v in VMMS}
        print(table([
            ("start → first serial line", {v: res[v]["first"] for v in VMMS}, lambda x: fmt(x, "s", 1, 2)),
            ("start → `Run /init`", {v: res[v]["init"] for v in VMMS}, lambda x: fmt(x, "s", 1, 1)),
            ("outcome", {v: res[v]["outcome"] for v in VMMS}, str),
            ("last line", {v: "`" + res[v]["last"][-70:].replace("|", "/") + "`" for v in VMMS}, str),
        ], na={}))
        print("\nCommand line: `console=ttyS0 earlyprintk=serial` (ec2lab-vmm appends its host workarounds;"
              f" the baselines get `{PVM_PARAMS}` where kvm_pvm is loaded).")


if __name__ == "__main__":
    main()
