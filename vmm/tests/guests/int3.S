# int3.S — proves an INT3 executed in guest ring 0 reaches the guest's own
# #BP handler as a trap (saved RIP = the next instruction) and that iretq
# resumes after it. On kernel-emulating hosts KVM cannot emulate INT3 in
# ring 0 and the VMM has to inject #BP itself; on other hosts the CPU
# delivers it. The guest cannot tell, and must not have to.

    .include "lib/io64.inc"
    .include "lib/idt64.inc"

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp
    lidt idtr(%rip)                 # the boot GDT's 0x08 code segment is kept
    call install_fault_reporters
    SET_GATE 3, on_bp
    int3
after_int3:
    PUTS "after int3\n"
    jmp poweroff

# #BP handler: no error code, saved RIP at 0(%rsp).
on_bp:
    PUTS "bp ok\n"
    lea after_int3(%rip), %rax
    cmp %rax, (%rsp)
    je 1f
    PUTS "#BP saved rip="
    PUTHEX (%rsp)
    PUTS " expected "
    lea after_int3(%rip), %rax
    call put_hex64
    PUTS "\n"
    jmp reset_i8042
1:  iretq
