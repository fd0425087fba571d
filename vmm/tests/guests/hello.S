# hello.S — the smallest useful guest: proves port I/O reaches the VMM's
# serial device and that ACPI poweroff ends the VM with status 0.
#
# Booted as a plain 64-bit ELF (no PVH note): the VMM enters here in long
# mode, ring 0, with its own GDT, stack and identity-mapped page tables.

    .include "lib/io64.inc"

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp    # our own stack, so nothing relies on RSP
    PUTS "hello from ring 0\n"
    jmp poweroff
