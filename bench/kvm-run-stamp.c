/*
 * LD_PRELOAD shim for `scripts/bench vmm`: at the process's first KVM_RUN
 * ioctl, append "<cpu_ns> <mono_ns>" to $BENCH_KVM_RUN_OUT, where cpu_ns is
 * the CPU time (user+sys, all threads) the VMM has used since exec and mono_ns
 * is CLOCK_MONOTONIC. That is the VMM's start-up cost up to the guest's first
 * instruction, without strace's per-syscall overhead. Two more fields follow
 * for a breakdown: CLOCK_MONOTONIC when the shim was loaded (the dynamic
 * loader done, before the VMM's main) and when KVM_CREATE_VM returned. All three VMMs are
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
#define KVM_CREATE_VM 0xae01UL /* _IO(KVMIO, 0x01) */

static long long mono_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long loaded_ns, vm_created_ns;

/* Opened at load, before the VMM confines its threads: ec2lab-vmm's vCPU
 * threads may not open files once their seccomp filter is in place. */
static int stamp_fd = -1;

__attribute__((constructor)) static void open_stamp(void)
{
    loaded_ns = mono_now();
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
            char line[128];
            int n = snprintf(line, sizeof line, "%lld %lld %lld %lld\n",
                             cpu.tv_sec * 1000000000LL + cpu.tv_nsec,
                             mono.tv_sec * 1000000000LL + mono.tv_nsec,
                             loaded_ns, vm_created_ns);
            if (n > 0 && write(stamp_fd, line, (size_t)n) < 0)
                n = 0;
            close(stamp_fd);
        }
    }
    if (!real)
        real = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
    int ret = real(fd, req, arg);
    if (req == KVM_CREATE_VM && !vm_created_ns)
        vm_created_ns = mono_now();
    return ret;
}
