# serial_flood.S — a guest that writes to the console without end, from
# ring 0 (ring-3 port I/O faults on kernel-emulating hosts). Pointed at a
# pipe nobody reads, its vCPU ends up blocked in the VMM's console write:
# a vCPU that cannot park, for the test of a pause that must fail.

    .include "lib/io64.inc"

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp
    PUTS "flooding the console\n"
    mov $COM1, %dx
    mov $'.', %al
1:  outb %al, %dx
    jmp 1b
