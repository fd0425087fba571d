#!/bin/sh
# Smoke-test /init for ec2lab guest kernels (scripts/build-initramfs puts it at
# /init). Prints a few facts and a marker line on the console, then powers the
# guest off through ACPI. A VMM test waits for the marker and for a
# "guest poweroff" exit. Keep it short: on hosts that emulate the guest kernel
# every syscall costs a page fault plus emulated kernel code (NOTES.md).
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "ec2lab-init: kernel $(uname -r) cpus $(nproc)"
grep -q ec2lab_syscall_via_pf /proc/cpuinfo && echo "ec2lab-init: syscall via #PF active"
echo "EC2LAB_INIT_OK"
poweroff -f
