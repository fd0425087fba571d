# bootinfo.S — proves the 64-bit ELF entry contract and the Linux zero page
# the VMM hands over, by printing what it finds:
#
#   entry state ok                 (or one "entry check failed" line each)
#   cmdline: [<string at boot_params.hdr.cmd_line_ptr>]
#   e820: entries=0x.. ram top=0x..   (end of the highest usable-RAM range)
#   initrd: size=0x.. head=[<first 16 bytes>]   (or "initrd: none")
#
# then powers off. Entry contract: CS=0x08, DS/ES/SS=0x10, RSP=0x8ff0,
# RSI=0x7000 (zero page), RFLAGS=0x2, long mode with paging, page tables
# in 0x9000-0xbfff.

    .include "lib/io64.inc"

    # Zero page (struct boot_params) offsets.
    .equ BP_E820_ENTRIES, 0x1e8     # u8
    .equ BP_RAMDISK_IMAGE, 0x218    # u32
    .equ BP_RAMDISK_SIZE, 0x21c     # u32
    .equ BP_CMD_LINE_PTR, 0x228     # u32
    .equ BP_E820_TABLE, 0x2d0       # 20-byte entries: addr u64, size u64, type u32
    .equ E820_RAM, 1

# CHECK_EQ what, reg, expected — count and report a mismatch in %r15.
.macro CHECK_EQ what, reg, expected
    mov $\expected, %rax
    cmp %rax, \reg
    je .Lcheck_ok\@
    PUTS "entry check failed: \what="
    PUTHEX \reg
    PUTS "\n"
    inc %r15
.Lcheck_ok\@:
.endm

    .section .text.entry, "ax"
    .globl _start
_start:
    # Capture the entry state before any instruction changes it: pushfq
    # first (an xor would change the flags), on the VMM's stack.
    pushfq
    pop %r12                        # entry RFLAGS
    mov %rsp, %r14                  # entry RSP
    mov %rsi, %r13                  # entry RSI: the zero page
    lea stack0_top(%rip), %rsp
    xor %r15d, %r15d                # failed checks

    CHECK_EQ rflags, %r12, 0x2
    CHECK_EQ rsp, %r14, 0x8ff0
    CHECK_EQ rsi, %r13, 0x7000
    xor %ebx, %ebx
    mov %cs, %bx
    CHECK_EQ cs, %rbx, 0x08
    xor %ebx, %ebx
    mov %ds, %bx
    CHECK_EQ ds, %rbx, 0x10
    xor %ebx, %ebx
    mov %es, %bx
    CHECK_EQ es, %rbx, 0x10
    xor %ebx, %ebx
    mov %ss, %bx
    CHECK_EQ ss, %rbx, 0x10
    mov %cr0, %rax
    mov %eax, %ebx
    and $0x80000001, %ebx           # PG | PE
    CHECK_EQ cr0.pg_pe, %rbx, 0x80000001
    mov %cr4, %rbx
    and $0x20, %ebx                 # PAE
    CHECK_EQ cr4.pae, %rbx, 0x20
    mov $0xc0000080, %ecx           # IA32_EFER
    rdmsr
    mov %eax, %ebx
    and $0x500, %ebx                # LMA | LME
    CHECK_EQ efer.lma_lme, %rbx, 0x500
    # The page tables live in 0x9000-0xbfff: 0x9000 <= CR3 base < 0xc000.
    mov %cr3, %rbx
    and $~0xfff, %rbx
    mov %rbx, %rax
    sub $0x9000, %rax
    cmp $0x3000, %rax               # unsigned: below 0x9000 wraps to huge
    jb 1f
    PUTS "entry check failed: cr3="
    PUTHEX %rbx
    PUTS "\n"
    inc %r15
1:
    test %r15, %r15
    jnz 2f
    PUTS "entry state ok\n"
    jmp 3f
2:  PUTS "entry state: some checks failed\n"
3:
    # --- command line, echoed between brackets for an exact comparison ---
    PUTS "cmdline: ["
    movl BP_CMD_LINE_PTR(%r13), %esi
    test %esi, %esi
    jz 1f
    call puts
1:  PUTS "]\n"

    # --- e820: the end of the highest usable-RAM range ---
    movzbl BP_E820_ENTRIES(%r13), %ecx
    lea BP_E820_TABLE(%r13), %rdi
    xor %ebx, %ebx
1:  test %ecx, %ecx
    jz 3f
    cmpl $E820_RAM, 16(%rdi)
    jne 2f
    mov (%rdi), %rax
    add 8(%rdi), %rax
    cmp %rbx, %rax
    jbe 2f
    mov %rax, %rbx
2:  add $20, %rdi
    dec %ecx
    jmp 1b
3:  PUTS "e820: entries="
    movzbl BP_E820_ENTRIES(%r13), %eax
    call put_hex64
    PUTS " ram top="
    PUTHEX %rbx
    PUTS "\n"

    # --- initrd: size and its first 16 bytes, raw ---
    movl BP_RAMDISK_SIZE(%r13), %ebx
    test %ebx, %ebx
    jnz 1f
    PUTS "initrd: none\n"
    jmp 3f
1:  PUTS "initrd: size="
    PUTHEX %rbx
    PUTS " head=["
    movl BP_RAMDISK_IMAGE(%r13), %esi
    mov $16, %ecx
2:  movb (%rsi), %al
    call putc
    inc %rsi
    dec %ecx
    jnz 2b
    PUTS "]\n"
3:
    jmp poweroff
