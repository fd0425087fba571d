# kbd.S — proves the API's SendCtrlAltDel reaches the guest's i8042: the
# guest polls the controller (status port 0x64, bit 0 = output buffer
# full), prints every byte it reads from port 0x60, and powers off after
# the key that follows an 0xe0 prefix — Del is the only extended key of
# Ctrl-Alt-Del in both scancode set 1 (1d 38 e0 53) and set 2 (14 11 e0 71).
# More than 16 bytes without that means the sequence is wrong: reset.

    .include "lib/io64.inc"

    .equ I8042_DATA, 0x60
    .equ I8042_STATUS, 0x64
    .equ MAX_BYTES, 16

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp
    xor %r12d, %r12d                # previous byte
    xor %r13d, %r13d                # bytes read
    PUTS "waiting for keys\n"
1:  inb $I8042_STATUS, %al
    test $1, %al
    jz 1b
    inb $I8042_DATA, %al
    movzbl %al, %ebx
    inc %r13d
    PUTS "key "
    PUTHEX %rbx
    PUTS "\n"
    cmp $0xe0, %r12d
    je 2f
    mov %ebx, %r12d
    cmp $MAX_BYTES, %r13d
    jb 1b
    PUTS "no extended key after 16 bytes\n"
    jmp reset_i8042
2:  PUTS "ctrl-alt-del received\n"
    jmp poweroff
