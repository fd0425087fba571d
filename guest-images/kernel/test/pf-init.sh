#!/bin/sh
# /init for the syscall-via-pf regression test (see ../NOTES.md, "Testing").
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "pf-init: kernel $(uname -r) cpus $(nproc)"
grep -q ec2lab_syscall_via_pf /proc/cpuinfo && echo "pf-init: syscall via #PF active"
lstar=$(grep ' entry_SYSCALL_64$' /proc/kallsyms | cut -d' ' -f1)
/syscall-via-pf "$lstar" 2000
echo "pf-init: syscall-via-pf exit $?"
echo "EC2LAB_INIT_OK"
poweroff -f
