# ring3_spin.S — a guest that runs until the host stops it: ring 3 writes
# to unbacked MMIO in an endless loop, so every iteration is a counted
# mmio_write exit. API tests watch that counter (it stops while paused)
# and stop the VM through the API or with a signal.

    .include "lib/io64.inc"
    .include "lib/idt64.inc"
    .include "lib/ring3.inc"

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp
    call ring3_setup
    call install_fault_reporters
    PUTS "spinning in ring 3\n"
    ENTER_RING3 user_spin

user_spin:
    mov $UNBACKED_MMIO, %ebx
    xor %ecx, %ecx
1:  inc %ecx
    mov %ecx, (%rbx)
    jmp 1b
