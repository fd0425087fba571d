/*
 * Regression test for patches/0001-x86-entry-syscall-via-page-fault.patch.
 *
 * Simulates what SYSCALL does on KVM hosts that emulate the guest kernel:
 * jump to LSTAR (entry_SYSCALL_64) while staying in ring 3, with RCX = the
 * return address and R11 = RFLAGS. On any x86 CPU (bare metal, KVM, QEMU TCG)
 * that jump raises the same user-mode #PF (error 0x15) the broken SYSCALL
 * does, so the lab kernel's #PF -> syscall redirection can be tested anywhere.
 *
 *   syscall-via-pf ENTRY_SYSCALL_64_HEX [ROUND_TRIPS]
 *
 * With ec2lab.syscall_via_pf: prints two "ok" lines, exits 42 (the exit code
 * is passed through a redirected exit_group). Without it (or on an unpatched
 * kernel): dies with SIGSEGV (shell exit status 139).
 * Build: gcc -O2 -static -o syscall-via-pf syscall-via-pf.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>

static unsigned long lstar;
static unsigned long r11_clear; /* RFLAGS bits to clear in the forged R11 */

static long fake_syscall3(long nr, long a1, long a2, long a3)
{
    long ret;
    register unsigned long target asm("r8") = lstar;
    register unsigned long keep asm("r9") = ~r11_clear;

    asm volatile(
        "lea 1f(%%rip), %%rcx\n\t"
        "pushfq\n\t"
        "pop %%r11\n\t"
        "and %%r9, %%r11\n\t"
        "jmp *%%r8\n"
        "1:\n\t"
        : "=a"(ret)
        : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(target), "r"(keep)
        : "rcx", "r11", "memory", "cc");
    return ret;
}

int main(int argc, char **argv)
{
    static const char msg[] = "syscall-via-pf: write via #PF ok\n";
    unsigned long fl;
    long i, n, r;

    if (argc < 2) {
        fprintf(stderr, "usage: %s ENTRY_SYSCALL_64_HEX [ROUND_TRIPS]\n", argv[0]);
        return 2;
    }
    lstar = strtoul(argv[1], NULL, 16);
    n = argc > 2 ? atol(argv[2]) : 1000;

    r = fake_syscall3(SYS_write, 1, (long)msg, sizeof(msg) - 1);
    if (r != (long)sizeof(msg) - 1) {
        printf("syscall-via-pf: write returned %ld\n", r);
        return 1;
    }
    if (fake_syscall3(SYS_getpid, 0, 0, 0) != getpid()) {
        printf("syscall-via-pf: getpid mismatch\n");
        return 1;
    }
    for (i = 0; i < n; i++) {
        if (fake_syscall3(SYS_getppid, 0, 0, 0) != getppid()) {
            printf("syscall-via-pf: getppid mismatch at %ld\n", i);
            return 1;
        }
    }
    /* A forged R11 with IF=0 must not return to user mode with IRQs off. */
    r11_clear = 0x200;
    fake_syscall3(SYS_getpid, 0, 0, 0);
    r11_clear = 0;
    asm volatile("pushfq; pop %0" : "=r"(fl));
    if (!(fl & 0x200)) {
        printf("syscall-via-pf: FAIL: returned with IF=0\n");
        return 1;
    }
    printf("syscall-via-pf: %ld round trips ok, IF=1 after forged R11\n", n + 3);
    fflush(stdout);
    fake_syscall3(SYS_exit_group, 42, 0, 0);
    return 3;
}
