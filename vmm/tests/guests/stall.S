# stall.S — a guest that stops making exits, in one of four ways chosen
# with --defsym MODE=N, for the VMM's stall watchdog:
#   0  spins in ring 0 (what a hung kernel looks like)      -> stalled
#   1  halts with interrupts off (a dead CPU)               -> stalled
#   2  halts with interrupts on (an idle guest)             -> not stalled
#   3  spins in ring 3 without exits (a busy user program)  -> not stalled
# Each prints "quiet now\n" (its last exit) first.

    .include "lib/io64.inc"
    .include "lib/idt64.inc"
    .include "lib/ring3.inc"

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp
.if MODE == 3
    call ring3_setup
    call install_fault_reporters
.endif
    PUTS "quiet now\n"
.if MODE == 0
1:  jmp 1b
.elseif MODE == 1
    cli
1:  hlt
    jmp 1b
.elseif MODE == 2
    sti
1:  hlt
    jmp 1b
.else
    ENTER_RING3 user_spin
.endif

user_spin:
1:  jmp 1b
