# triple_fault.S — proves a triple fault is reported as such: with an IDT
# of limit 0, ud2 raises #UD, whose delivery raises #GP, whose delivery
# raises #DF, whose delivery shuts the CPU down (KVM_EXIT_SHUTDOWN).

    .include "lib/io64.inc"

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp
    PUTS "about to triple fault\n"
    lidt empty_idtr(%rip)
    ud2
    PUTS "survived ud2 with an empty IDT\n"
    jmp poweroff

    .data
empty_idtr:
    .word 0                         # limit 0: no vector is inside the IDT
    .quad 0
