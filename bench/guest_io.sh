#!/usr/bin/env bash
# Usage: bench/guest_io.sh [--mib N] [--tcp-kib K] [--http-n R] [--pipeline-n P] [--boot-timeout S]
#        (or: scripts/bench guest)
#
# In-guest I/O throughput: boots the lab kernel (~/.cache/ec2lab/kernels/lab,
# built with scripts/build-kernel if missing) under ec2lab-vmm (release) on a
# busybox root ext4 (/dev/vda) with a second raw disk (/dev/vdb, 2N MiB) and
# a virtio-net card on a tap in a network namespace this script creates
# (ec2lab-guestio-PID, tap0 10.0.9.1/24, guest 10.0.9.2). The guest runs:
#   dd if=/dev/zero of=/dev/vdb bs=1M count=N oflag=direct
#   dd if=/dev/vdb of=/dev/null bs=1M count=N iflag=direct
#   dd if=/dev/zero of=/dev/null bs=1M count=N    (control: no device at all)
#   dd if=/dev/zero bs=16k count=K/16 | nc 10.0.9.1 5001  (guest -> host TCP)
#   nc 10.0.9.1 5002 > /dev/null                          (host -> guest TCP)
# with N = --mib (default 64) and K = --tcp-kib (default 1024: TCP in an
# emulated guest kernel moves tens of KiB/s). The namespace's side is
# python3 (receive to nowhere / send zeros). The host times each step from
# timestamps on the serial lines (and the TCP server from accept to EOF);
# the guest prints dd's lines and each step's time on its own clock.
#
# Then the instance metadata service the VMM serves at 169.254.169.254
# (the VM config carries a metadata document) beside the same client
# against a host-side HTTP server over the tap (python3 http.server in the
# namespace, 10.0.9.1:8080, serving the same path and bytes), one after the
# other in the same boot:
#   R x busybox wget -qO /dev/null http://HOST/latest/meta-data/instance-id
#       (a process and a TCP connection per request, as scripts do it)
#   P requests pipelined on one keep-alive connection (busybox nc), the
#       last with "Connection: close"; the guest counts the 200 answers
#   R x busybox true (control: the process start-up alone)
# with R = --http-n (default 20) and P = --pipeline-n (default 100);
# requests/s and latency per request are host-timed per step, and the
# table gives IMDS's rate as a ratio of the tap server's.
#
# Where QEMU can run the guest (not on kvm_pvm hosts: it stops at the guest
# kernel's first INT3), the same guest also runs under qemu-system-x86_64
# -M microvm with virtio-blk-device and virtio-net-device (vhost off).
# Cleans up: the namespace, and only the processes it started (by PID).
set -euo pipefail
mib=64 tcp_kib=1024 http_n=20 pipeline_n=100 boot_timeout=600
while [ $# -gt 0 ]; do
    case "$1" in
        --mib) mib="$2"; shift 2 ;;
        --tcp-kib) tcp_kib="$2"; shift 2 ;;
        --http-n) http_n="$2"; shift 2 ;;
        --pipeline-n) pipeline_n="$2"; shift 2 ;;
        --boot-timeout) boot_timeout="$2"; shift 2 ;;
        -h|--help) sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "guest_io.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
done
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${EC2LAB_CACHE:-$HOME/.cache/ec2lab}
kernel=$cache/kernels/lab/vmlinux
[ -f "$kernel" ] || "$repo/scripts/build-kernel" --variant lab >&2
for t in mkfs.ext4 python3 ip; do
    command -v "$t" >/dev/null || { echo "guest_io.sh: $t missing" >&2; exit 1; }
done
[ -w /dev/kvm ] || { echo "guest_io.sh: /dev/kvm is not writable" >&2; exit 1; }
(cd "$repo" && cargo build -q --release -p ec2lab-vmm >&2)
vmm=${CARGO_TARGET_DIR:-$repo/target}/release/ec2lab-vmm

work=$(mktemp -d /tmp/ec2lab-guestio.XXXXXX)
ns=ec2lab-guestio-$$
pids=()
cleanup() {
    for p in ${pids[@]+"${pids[@]}"}; do kill "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cached_busybox() { local f; for f in "$cache"/tools/busybox-static-*; do [ -f "$f" ] && echo "$f" && return; done; }
busybox=$(cached_busybox)
if [ -z "$busybox" ]; then # build-initramfs fetches it into the cache
    printf '#!/bin/sh\n' >"$work/noop.sh"
    "$repo/scripts/build-initramfs" "$work/noop.cpio" "$work/noop.sh" >/dev/null
    busybox=$(cached_busybox)
fi

# Root file system: busybox and an /init that runs the steps, each between
# two marker lines the host timestamps.
mkdir -p "$work/rootfs"/{bin,dev,proc,sys,tmp}
cp "$busybox" "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sh"
cat >"$work/rootfs/init" <<EOF
#!/bin/sh
B=/bin/busybox
\$B mount -t proc proc /proc
\$B mount -t sysfs sysfs /sys
uptime() { \$B cut -d' ' -f1 /proc/uptime; }
step() { # NAME CMD: markers around CMD, its output lines tagged, guest-clock time
    name=\$1; shift
    echo "GUEST-IO begin \$name"
    t0=\$(uptime)
    "\$@" 2>&1 | while read -r l; do echo "GUEST-IO \$name: \$l"; done
    t1=\$(uptime)
    echo "GUEST-IO end \$name"
    echo "GUEST-IO \$name: guest clock \$(echo "\$t0 \$t1" | \$B awk '{ printf "%.2f s", \$2 - \$1 }')"
}
step dd-write \$B dd if=/dev/zero of=/dev/vdb bs=1M count=$mib oflag=direct
step dd-read \$B dd if=/dev/vdb of=/dev/null bs=1M count=$mib iflag=direct
step dd-zero \$B dd if=/dev/zero of=/dev/null bs=1M count=$mib
tx() { \$B dd if=/dev/zero bs=16k count=$((tcp_kib / 16)) | \$B nc 10.0.9.1 5001; }
step tcp-tx tx
rx() { \$B nc 10.0.9.1 5002 </dev/null >/dev/null; }
step tcp-rx rx
# Metadata: only where the VMM serves it (ec2lab.imds=1 on the command line).
if \$B grep -q ec2lab.imds=1 /proc/cmdline; then
    path=/latest/meta-data/instance-id
    each() { # HOST[:PORT]: R requests, a wget process each
        i=0 bad=0
        while [ \$i -lt $http_n ]; do
            \$B wget -q -O /dev/null "http://\$1\$path" || bad=\$((bad + 1))
            i=\$((i + 1))
        done
        echo "$http_n requests, \$bad failed"
    }
    pipelined() { # HOST PORT: P requests on one connection
        { i=1
          while [ \$i -lt $pipeline_n ]; do
              printf 'GET %s HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' \$path \$1; i=\$((i + 1))
          done
          printf 'GET %s HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n' \$path \$1
        } | \$B nc \$1 \$2 | \$B grep -o 'HTTP/1.1 200' | \$B wc -l | while read -r n; do echo "\$n of $pipeline_n answered 200"; done
    }
    spawn() { i=0; while [ \$i -lt $http_n ]; do \$B true; i=\$((i + 1)); done; }
    echo "GUEST-IO imds answer: \$(\$B wget -q -O - http://169.254.169.254\$path)"
    echo "GUEST-IO tap answer: \$(\$B wget -q -O - http://10.0.9.1:8080\$path)"
    step http-tap each 10.0.9.1:8080
    step http-imds each 169.254.169.254
    step pipe-tap pipelined 10.0.9.1 8080
    step pipe-imds pipelined 169.254.169.254 80
    step spawn spawn
fi
echo "GUEST-IO done"
\$B poweroff -f
EOF
chmod 755 "$work/rootfs/init"
mkfs.ext4 -q -F -d "$work/rootfs" "$work/root.ext4" 64M >/dev/null
truncate -s $((mib * 2))M "$work/data.img"

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add dev tap0 mode tap vnet_hdr
ip -n "$ns" addr add 10.0.9.1/24 dev tap0
ip -n "$ns" link set tap0 up

# The namespace's end of both TCP steps: receive to nowhere on 5001, then
# send N MiB of zeros on 5002; prints "tcp-tx|tcp-rx BYTES SECONDS".
server_py='
import socket, sys, time
n = int(sys.argv[1]) << 10
def listen(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.0.9.1", port)); s.listen(1); return s
l1, l2 = listen(5001), listen(5002)
c, _ = l1.accept(); t0 = time.monotonic(); got = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    got += len(b)
print("tcp-tx", got, time.monotonic() - t0, flush=True); c.close()
c, _ = l2.accept(); t0 = time.monotonic(); buf = bytes(1 << 16); sent = 0
while sent < n:
    sent += c.send(buf[: min(len(buf), n - sent)])
c.shutdown(socket.SHUT_WR)
while c.recv(1 << 16): pass
print("tcp-rx", sent, time.monotonic() - t0, flush=True)
'

# The host-side HTTP server over the tap for the metadata rows: the same
# path and bytes as the VMM's metadata service, HTTP/1.1 with keep-alive.
iid=i-0123456789abcdef0
mkdir -p "$work/www/latest/meta-data"
printf '%s' "$iid" >"$work/www/latest/meta-data/instance-id"
http_py='
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
handler = functools.partial(Handler, directory=sys.argv[1])
http.server.ThreadingHTTPServer(("10.0.9.1", 8080), handler).serve_forever()
'
ip netns exec "$ns" python3 -c "$http_py" "$work/www" &
pids+=("$!")

# run_guest LABEL CMD...: boots the guest in the namespace, prints its table
# rows. Serial lines are stamped with host time as they arrive.
run_guest() {
    local label=$1; shift
    local log=$work/$label.log srv=$work/$label.server
    ip netns exec "$ns" python3 -c "$server_py" "$tcp_kib" >"$srv" 2>&1 &
    local server=$!; pids+=("$server")
    sleep 0.5
    mkfifo "$work/$label.fifo"
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done \
        <"$work/$label.fifo" >"$log" &
    local stamper=$!
    local start=$EPOCHREALTIME
    # ip netns exec execs the VMM: $! is the VMM's own PID.
    ip netns exec "$ns" "$@" </dev/null >"$work/$label.fifo" 2>&1 &
    local guest=$!; pids+=("$guest")
    local deadline=$((SECONDS + boot_timeout))
    while ! grep -q 'GUEST-IO done' "$log" 2>/dev/null; do
        if ! kill -0 "$guest" 2>/dev/null || [ $SECONDS -gt $deadline ]; then
            echo "guest_io.sh: $label: no 'GUEST-IO done' (exited or timed out); serial log:" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
        sleep 1
    done
    wait "$guest" || true
    wait "$stamper" "$server" || true
    python3 - "$label" "$log" "$srv" "$mib" "$tcp_kib" "$start" "$http_n" "$pipeline_n" <<'PY'
import re, sys
label, log, srv = sys.argv[1:4]
mib, tcp_mib, start = int(sys.argv[4]), int(sys.argv[5]) / 1024, float(sys.argv[6])
t, lines = {}, []
for raw in open(log, errors="replace"):
    stamp, _, line = raw.rstrip("\n").partition(" ")
    m = re.search(r"GUEST-IO (begin|end) (\S+)", line)
    if m:
        t[(m.group(1), m.group(2))] = float(stamp)
    elif "GUEST-IO " in line and ": " in line:
        lines.append(line[line.index("GUEST-IO ") + 9:])
    if "Run /init" in line:
        t["init"] = float(stamp)
server = {}
for l in open(srv):
    p = l.split()
    if len(p) == 3:
        server[p[0]] = (int(p[1]), float(p[2]))
if "init" in t:
    print(f"| {label} | boot to `Run /init` | {t['init'] - start:.1f} s | |")
for step, what, size in [("dd-write", f"dd write /dev/vdb, 1 MiB O_DIRECT, {mib} MiB", mib),
                         ("dd-read", f"dd read /dev/vdb, 1 MiB O_DIRECT, {mib} MiB", mib),
                         ("dd-zero", f"control, no device: dd /dev/zero → /dev/null, {mib} MiB", mib),
                         ("tcp-tx", f"TCP guest → host (busybox nc), {tcp_mib:g} MiB", tcp_mib),
                         ("tcp-rx", f"TCP host → guest (busybox nc), {tcp_mib:g} MiB", tcp_mib)]:
    if ("begin", step) not in t or ("end", step) not in t:
        continue
    secs = t[("end", step)] - t[("begin", step)]
    extra = ""
    if step in server:
        got, ssecs = server[step]
        extra = f"namespace side: {got / 2**20:g} MiB in {ssecs:.2f} s = {got / 2**20 / ssecs:.3f} MiB/s"
    print(f"| {label} | {what} | {size / secs:.3f} MiB/s ({secs:.1f} s) | {extra} |")
http_n, pipeline_n = int(sys.argv[7]), int(sys.argv[8])
rate = {}
for step, what, n in [("http-tap", f"HTTP GET, host server over the tap, {http_n} × busybox wget", http_n),
                      ("http-imds", f"HTTP GET, metadata service in the VMM, {http_n} × busybox wget", http_n),
                      ("pipe-tap", f"HTTP GET, host server over the tap, {pipeline_n} pipelined on one connection", pipeline_n),
                      ("pipe-imds", f"HTTP GET, metadata service in the VMM, {pipeline_n} pipelined on one connection", pipeline_n),
                      ("spawn", f"control, no network: {http_n} × busybox true", http_n)]:
    if ("begin", step) not in t or ("end", step) not in t:
        continue
    secs = t[("end", step)] - t[("begin", step)]
    rate[step] = n / secs
    extra = ""
    if step.endswith("-imds"):
        tap = rate.get(step.replace("imds", "tap"))
        extra = f"{rate[step] / tap:.2f}× the tap server's rate" if tap else ""
    print(f"| {label} | {what} | {rate[step]:.2f} req/s, {1000 * secs / n:.0f} ms each ({secs:.1f} s) | {extra} |")
print()
for l in lines:
    print(f"    {label} guest: {l}")
print()
PY
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs, kernel $(uname -r)$([ -d /sys/module/kvm_pvm ] && echo ', kvm_pvm (guest kernel emulated)'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| VMM | step | host-timed rate | notes |"
echo "|---|---|---|---|"
cmdline="console=ttyS0 root=/dev/vda rw init=/init ip=10.0.9.2::10.0.9.1:255.255.255.0::eth0:off"
# ec2lab-vmm gets a VM config (the flags have no metadata document).
cat >"$work/vm.json" <<EOF
{"kernel": "$kernel", "cmdline": "$cmdline ec2lab.imds=1", "memory_mib": 256, "vcpus": 2,
 "disks": [{"path": "$work/root.ext4"}, {"path": "$work/data.img"}],
 "nets": [{"tap": "tap0", "mac": "02:00:00:00:09:02"}],
 "metadata": {"instance_id": "$iid", "ami_id": "ami-0123456789abcdef0",
   "instance_type": "t2.micro", "reservation_id": "r-0123456789abcdef0", "account_id": "000000000000",
   "region": "us-east-1", "availability_zone": "us-east-1a", "availability_zone_id": "use1-az1",
   "architecture": "x86_64", "pending_time": "2026-01-01T00:00:00Z",
   "local_hostname": "ip-10-0-9-2.ec2.internal", "local_ipv4": "10.0.9.2", "mac": "02:00:00:00:09:02"}}
EOF
run_guest ec2lab-vmm "$vmm" --config "$work/vm.json"

if [ -d /sys/module/kvm_pvm ]; then
    echo "QEMU microvm: skipped: kvm_pvm host (QEMU stops at the guest kernel's first INT3)"
elif ! command -v qemu-system-x86_64 >/dev/null; then
    echo "QEMU microvm: skipped: qemu-system-x86_64 not installed"
else
    run_guest qemu-microvm qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 256 -smp 2 \
        -nodefaults -no-user-config -nographic -serial stdio \
        -kernel "$kernel" -append "$cmdline" \
        -drive id=root,file="$work/root.ext4",format=raw,if=none \
        -device virtio-blk-device,drive=root \
        -drive id=data,file="$work/data.img",format=raw,if=none \
        -device virtio-blk-device,drive=data \
        -netdev tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off \
        -device virtio-net-device,netdev=net0
fi
