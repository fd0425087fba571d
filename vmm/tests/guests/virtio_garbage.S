# virtio_garbage.S — a hostile guest: feeds pseudo-random garbage to every
# register of the first virtio-mmio devices and points their queues at
# memory full of random "descriptors", notifying all the while. The VMM must
# survive it: the guest prints "garbage done" and powers off (status 0), and
# the test checks the VMM stayed responsive.
#
# Devices sit at 0xc0000000 + n * 0x1000 (the VMM's layout). Ring addresses
# are biased into GARBAGE (2 MiB of random bytes) half the time, so chains
# are parsed from junk rather than rejected at the first address check.

    .include "lib/io64.inc"

    .equ DEVICES_BASE, 0xc0000000
    .equ GARBAGE, 0x400000
    .equ GARBAGE_QWORDS, 0x40000       # 2 MiB
    .equ BOOT_PDPT, 0xa000             # the VMM's boot page tables (1 GiB identity map)
    .equ MMIO_PD, 0x300000             # our page directory for the 4th GiB
    .ifndef ITERATIONS
    .equ ITERATIONS, 20000
    .endif

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp
    mov $0x9e3779b97f4a7c15, %r12      # xorshift64 state

    # The boot identity map covers only the first GiB: map 3..4 GiB (the
    # MMIO gap) with uncached 2 MiB pages.
    mov $MMIO_PD, %rdi
    mov $0xc0000000 | 0x9b, %rax       # present, writable, PWT, PCD, 2 MiB
    mov $512, %rcx
0:  mov %rax, (%rdi)
    add $0x200000, %rax
    add $8, %rdi
    dec %rcx
    jnz 0b
    movq $MMIO_PD | 3, BOOT_PDPT + 3 * 8
    mov %cr3, %rax
    mov %rax, %cr3

    # Fill the garbage area.
    mov $GARBAGE, %rdi
    mov $GARBAGE_QWORDS, %rcx
1:  call next_random
    mov %rax, (%rdi)
    add $8, %rdi
    dec %rcx
    jnz 1b
    PUTS "garbage ready\n"

    mov $ITERATIONS, %r13
2:  call next_random
    mov %rax, %rbx
    # Register offset: 0x000..0x1fc, 4-byte aligned (config space included).
    mov %rbx, %rdi
    and $0x1fc, %rdi
    # Device 0..3.
    mov %rbx, %rsi
    shr $9, %rsi
    and $3, %rsi
    shl $12, %rsi
    mov $DEVICES_BASE, %rdx
    add %rdx, %rsi
    add %rdi, %rsi
    # Value: high half of the random number; for ring-address registers
    # (0x80..0xa4) half the time an address inside the garbage area.
    mov %rbx, %rax
    shr $32, %rax
    cmp $0x80, %rdi
    jb 3f
    cmp $0xa4, %rdi
    ja 3f
    bt $32, %rbx
    jnc 3f
    and $0x1ffff0, %eax
    add $GARBAGE, %eax
3:  # Keep queue sizes and "ready" plausible sometimes, so rings get used.
    cmp $0x38, %rdi
    jne 4f
    and $0x3ff, %eax
4:  mov %eax, (%rsi)
    # Every 64th step: a by-the-book bring-up of a random device whose rings
    # lie in the garbage, so the device parses junk descriptors and rings.
    test $63, %r13
    jnz 6f
    push %rsi
    and $~0xfff, %rsi
    call bring_up
    pop %rsi
6:
    # Every 8th step: read the register back (exercises read paths) and
    # kick queue 0 of the device.
    test $7, %r13
    jnz 5f
    mov (%rsi), %eax
    and $~0xfff, %rsi
    movl $0, 0x50(%rsi)
5:  dec %r13
    jnz 2b

    PUTS "garbage done\n"
    jmp poweroff

# bring_up: reset the device at %rsi, negotiate VERSION_1 only, put queue 0
# (random size 1..128) with all three rings inside the garbage area and a
# plausible avail index (1..size), set DRIVER_OK and notify a few times, so
# the device walks chains made of junk. Clobbers %rax, %rcx, %rdx, %r8, %r9.
bring_up:
    movl $0, 0x70(%rsi)                # reset
    movl $1, 0x70(%rsi)                # ACKNOWLEDGE
    movl $3, 0x70(%rsi)                # DRIVER
    movl $1, 0x24(%rsi)                # driver features, high word:
    movl $1, 0x20(%rsi)                #   VIRTIO_F_VERSION_1
    movl $0, 0x24(%rsi)
    movl $0, 0x20(%rsi)
    movl $0xb, 0x70(%rsi)              # FEATURES_OK
    movl $0, 0x30(%rsi)                # queue 0
    call next_random
    mov %eax, %ecx
    and $7, %ecx
    mov $1, %r9d
    shl %cl, %r9d
    mov %r9d, 0x38(%rsi)               # size 1 << (0..7)
    call random_ring
    mov %eax, 0x80(%rsi)               # descriptor table
    movl $0, 0x84(%rsi)
    call random_ring
    mov %eax, 0x90(%rsi)               # avail ring
    movl $0, 0x94(%rsi)
    mov %rax, %r8
    call random_ring
    mov %eax, 0xa0(%rsi)               # used ring
    movl $0, 0xa4(%rsi)
    call next_random
    xor %edx, %edx
    and $0xffff, %eax
    div %r9d                           # %edx = random % size
    inc %edx
    mov %dx, 2(%r8)                    # avail->idx
    movl $1, 0x44(%rsi)                # ready
    movl $0xf, 0x70(%rsi)              # DRIVER_OK
    .rept 4
    movl $0, 0x50(%rsi)                # notify queue 0
    .endr
    ret

# random_ring: a 256-byte-aligned address inside the garbage area in %rax.
random_ring:
    call next_random
    and $0x1fff00, %eax
    add $GARBAGE, %eax
    ret

# next_random: xorshift64 on %r12, result in %rax.
next_random:
    mov %r12, %rax
    shl $13, %rax
    xor %rax, %r12
    mov %r12, %rax
    shr $7, %rax
    xor %rax, %r12
    mov %r12, %rax
    shl $17, %rax
    xor %rax, %r12
    mov %r12, %rax
    ret
