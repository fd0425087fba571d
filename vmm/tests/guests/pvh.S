# pvh.S — proves the PVH boot path: a Xen PHYS32_ENTRY ELF note makes the
# VMM enter at that address in 32-bit protected mode with paging off and
# %ebx pointing at a struct hvm_start_info.
#
# The file is still an ELF64 (linux-loader only loads ELF64), but the code
# is 32-bit. It prints one line per check, then the command line the VMM
# passed in start_info, then powers off. No 64-bit include can be used here.

    .equ COM1, 0x3f8
    .equ HVM_START_MAGIC, 0x336ec578
    .equ START_INFO_CMDLINE, 24     # hvm_start_info.cmdline_paddr (u64)

    # The note the VMM looks for: name "Xen", type 18
    # (XEN_ELFNOTE_PHYS32_ENTRY), 4-byte descriptor = 32-bit entry address.
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                         # namesz, "Xen\0"
    .long 4                         # descsz
    .long 18                        # type
    .asciz "Xen"
    .balign 4
    .long pvh_entry
    .balign 4
    .popsection

    .code32
    .section .text.entry, "ax"
    .globl _start
_start:
pvh_entry:
    mov $stack_top, %esp            # PVH hands over no stack
    mov %ebx, %ebp                  # keep the start_info pointer

    cmpl $HVM_START_MAGIC, (%ebp)
    jne 1f
    mov $msg_magic_ok, %esi
    call puts32
    jmp 2f
1:  mov $msg_magic_bad, %esi
    call puts32
2:
    mov %cr0, %eax
    test $0x80000000, %eax          # CR0.PG
    jnz 3f
    test $1, %eax                   # CR0.PE
    jz 3f
    mov $msg_mode_ok, %esi
    call puts32
    jmp 4f
3:  mov $msg_mode_bad, %esi
    call puts32
4:
    # Echo the command line between brackets so the test can compare it
    # exactly. Only the low 32 bits of cmdline_paddr are reachable here.
    mov $msg_cmdline, %esi
    call puts32
    mov START_INFO_CMDLINE(%ebp), %esi
    test %esi, %esi
    jz 5f
    call puts32
5:  mov $msg_cmdline_end, %esi
    call puts32

    # ACPI S5 poweroff: SLP_TYP=5, SLP_EN.
    mov $0x600, %dx
    mov $0x34, %al
    outb %al, %dx
    mov $msg_poweroff_failed, %esi
    call puts32
6:  cli
    hlt
    jmp 6b

# puts32: print the NUL-terminated string at %esi on COM1.
puts32:
    mov $COM1, %dx
1:  movb (%esi), %al
    test %al, %al
    jz 2f
    outb %al, %dx
    inc %esi
    jmp 1b
2:  ret

    .section .rodata
msg_magic_ok:        .asciz "pvh: start_info magic ok\n"
msg_magic_bad:       .asciz "pvh: start_info magic BAD\n"
msg_mode_ok:         .asciz "pvh: protected mode, paging off\n"
msg_mode_bad:        .asciz "pvh: wrong CPU mode (CR0)\n"
msg_cmdline:         .asciz "pvh: cmdline ["
msg_cmdline_end:     .asciz "]\n"
msg_poweroff_failed: .asciz "poweroff did not stop the VM\n"

    .bss
    .balign 16
    .skip 4096
stack_top:
