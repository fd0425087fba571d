/*
 * LD_PRELOAD shim for `scripts/bench vmm`: at the process's first KVM_RUN
 * ioctl, append "<cpu_ns> <mono_ns>" to $BENCH_KVM_RUN_OUT, where cpu_ns is
 * the CPU time (user+sys, all threads) the VMM has used since exec and mono_ns
 * is CLOCK_MONOTONIC. That is the VMM's start-up cost up to the guest's first
 * instruction, without strace's per-syscall overhead. All three VMMs are
 * dynamically linked and reach KVM through libc's ioctl().
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define KVM_RUN 0xae80UL /* _IO(KVMIO, 0x80) */

/* Opened at load, before the VMM confines its threads: ec2lab-vmm's vCPU
 * threads may not open files once their seccomp filter is in place. */
static int stamp_fd = -1;

__attribute__((constructor)) static void open_stamp(void)
{
    const char *path = getenv("BENCH_KVM_RUN_OUT");
    if (path)
        stamp_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

int ioctl(int fd, unsigned long req, ...)
{
    static int (*real)(int, unsigned long, ...);
    static int stamped;
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (req == KVM_RUN && !__atomic_exchange_n(&stamped, 1, __ATOMIC_SEQ_CST)) {
        struct timespec cpu, mono;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
        clock_gettime(CLOCK_MONOTONIC, &mono);
        if (stamp_fd >= 0) {
            /* snprintf + write: dprintf would fstat, which a confined
               thread may not. */
            char line[64];
            int n = snprintf(line, sizeof line, "%lld %lld\n",
                             cpu.tv_sec * 1000000000LL + cpu.tv_nsec,
                             mono.tv_sec * 1000000000LL + mono.tv_nsec);
            if (n > 0 && write(stamp_fd, line, (size_t)n) < 0)
                n = 0;
            close(stamp_fd);
        }
    }
    if (!real)
        real = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
    return real(fd, req, arg);
}
