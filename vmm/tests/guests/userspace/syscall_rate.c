/*
 * Guest user-space probe for the lab-kernel tests: makes N getppid() system
 * calls (real SYSCALL instructions) and prints how many per second the guest
 * managed, the number that decides how slow guest user space is on a host.
 *
 *   syscall-rate [N]      prints "syscall-rate: N calls in T ms = R/s"
 *
 * Built static at test time: gcc -O2 -static -o syscall-rate syscall_rate.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000;
    struct timespec a, b;
    pid_t parent = getppid();

    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        /* syscall() so libc cannot cache or skip it. */
        if (syscall(SYS_getppid) != parent) {
            printf("syscall-rate: getppid mismatch at %ld\n", i);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    printf("syscall-rate: %ld calls in %.1f ms = %.0f/s\n", n, ms, n / (ms / 1e3));
    return 0;
}
