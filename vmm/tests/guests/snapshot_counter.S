# snapshot_counter.S — a guest whose whole state is worth keeping: ring 3
# counts forever, keeping the count both in a register (%r12) and in
# memory, and prints "count 0x..." on COM1 after every COUNT_SPIN loop
# iterations (the loop counter, %rcx, is live most of the time, so a
# snapshot almost always lands mid-loop). A register and the
# memory copy disagreeing prints "MISMATCH". The snapshot tests concatenate
# the consoles of every generation and expect 1, 2, 3, ... with no gap.
#
# Ring 3 asks ring 0 to print with `ud2` (#UD reaches the guest's own
# handler on every host; port I/O from ring 3 with IOPL 3 does not work on
# hosts that run guest user mode as host user mode). The handler prints,
# steps over the ud2 and returns: a few hundred emulated instructions per
# line, while the counting itself stays native.

    .include "lib/io64.inc"
    .include "lib/idt64.inc"
    .include "lib/ring3.inc"

    .ifndef COUNT_SPIN
    .equ COUNT_SPIN, 1 << 26
    .endif

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp
    call ring3_setup
    call install_fault_reporters
    SET_GATE 6, print_count         # replaces the reporting #UD handler
    PUTS "counting in ring 3\n"
    ENTER_RING3 user_count

user_count:
    xor %r12d, %r12d
1:  mov $COUNT_SPIN, %ecx
2:  dec %ecx
    jnz 2b
    inc %r12
    incq count(%rip)
    ud2                             # print %r12 and the memory copy
    jmp 1b

# --- ring 0: #UD handler, frame: RIP at 0(%rsp) ---
print_count:
    push %rax
    push %rdx
    push %rsi
    cmp count(%rip), %r12
    je 3f
    PUTS "MISMATCH "
3:  PUTS "count "
    PUTHEX %r12
    PUTS "\n"
    pop %rsi
    pop %rdx
    pop %rax
    addq $2, (%rsp)                 # step over the ud2
    iretq

    .data
    .balign 8
count:
    .quad 0
