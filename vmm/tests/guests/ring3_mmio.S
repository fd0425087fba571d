# ring3_mmio.S — proves that ring-3 code runs, that its accesses to
# unbacked guest-physical memory become counted MMIO exits (reads return
# all-ones), and that a ring-3 exception (#UD) reaches the guest's ring-0
# handler through its own GDT/TSS/IDT.
#
# Ring 0 does only setup (emulated on kernel-emulating hosts, so it is
# kept short); the 1000-iteration loop runs in ring 3, which is native.

    .include "lib/io64.inc"
    .include "lib/idt64.inc"
    .include "lib/ring3.inc"

    .equ MMIO_WRITES, 1000

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp
    call ring3_setup
    call install_fault_reporters
    SET_GATE 6, on_ud               # replaces the reporting #UD handler
    PUTS "entering ring 3\n"
    ENTER_RING3 user_main

# --- ring 3 ---
user_main:
    mov $UNBACKED_MMIO, %ebx        # zero-extended: 0x00000000d0000000
    mov (%rbx), %r12d               # one MMIO read, expected 0xffffffff
    mov $MMIO_WRITES, %ecx
1:  mov %ecx, (%rbx)                # one MMIO write exit per iteration
    dec %ecx
    jnz 1b
user_ud2:
    ud2                             # back to ring 0 through the IDT

# --- ring 0: #UD handler, frame: RIP at 0(%rsp), CS at 8(%rsp) ---
on_ud:
    testb $3, 8(%rsp)               # RPL of the saved CS = CPL at the fault
    jnz 1f
    PUTS "#UD came from ring 0, cs="
    PUTHEX 8(%rsp)
    PUTS "\n"
    jmp reset_i8042
1:  lea user_ud2(%rip), %rax
    cmp %rax, (%rsp)
    je 2f
    PUTS "#UD at unexpected rip="
    PUTHEX (%rsp)
    PUTS "\n"
    jmp reset_i8042
2:  PUTS "ring3 ok\n"
    # %r12 still holds what ring 3 read: exceptions do not touch GPRs.
    cmp $0xffffffff, %r12d
    jne 3f
    PUTS "mmio read returned all-ones\n"
    jmp poweroff
3:  PUTS "mmio read returned "
    PUTHEX %r12
    PUTS "\n"
    jmp poweroff
