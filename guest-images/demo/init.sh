#!/bin/sh
# /init of the quick-start initramfs: show that user space runs, then power off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "ec2lab: user space is up on $(uname -r) with $(nproc) CPU(s)"
echo "ec2lab: uptime $(cut -d' ' -f1 /proc/uptime) s; powering off"
poweroff -f
