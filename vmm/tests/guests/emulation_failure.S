# emulation_failure.S — proves the VMM reports an instruction KVM cannot
# emulate with exit status 5 and a diagnostic (reason, registers, bytes at
# RIP and their disassembly).
#
# Portable trigger: a ring-0 POPCNT whose memory operand is unbacked MMIO.
# On any KVM host the access exits to KVM's instruction emulator, which has
# no POPCNT; at CPL 0 KVM then reports KVM_EXIT_INTERNAL_ERROR (emulation
# failure) to the VMM instead of injecting #UD as it would at CPL 3. On
# kernel-emulating hosts the whole of ring 0 is emulated, with the same
# result. The VMM's INT3/FWAIT workarounds must not swallow it.

    .include "lib/io64.inc"
    .include "lib/idt64.inc"
    .include "lib/ring3.inc"

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp
    call ring3_setup                # page tables that map UNBACKED_MMIO
    call install_fault_reporters
    PUTS "popcnt from mmio\n"
    mov $UNBACKED_MMIO, %ebx
    popcnt (%rbx), %rax
    PUTS "popcnt from mmio was emulated\n"
    jmp poweroff
