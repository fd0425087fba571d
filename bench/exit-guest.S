/*
 * Exit round-trip guest for `scripts/bench vmm`: a 32-bit PVH ELF that every
 * VMM under test (ec2lab-vmm, Firecracker, QEMU microvm) can boot.
 *
 * Ring 0 (emulated on kernel-emulating hosts, ~1.5M instr/s) only sets up a
 * GDT, TSS, IDT and drops to ring 3 (SYSEXIT); ring 3 (native there) does N 32-bit
 * writes to MMIO_ADDR, where nothing lives, so each is one exit to the VMM's
 * user space and back. Ring 3 then runs `ud2`; the #UD handler prints
 * "BENCH-OK" on COM1 and ends the VM in a way each VMM understands, the others
 * ignore the port writes meant for other VMMs (unclaimed ports):
 *   0x600 <- 0x34  ACPI S5 (ec2lab-vmm: exit 0)
 *   0xf4  <- 0     isa-debug-exit (QEMU: exit (0<<1)|1 = 1)
 *   0x64  <- 0xfe  i8042 reset (Firecracker: exit 0; ec2lab-vmm would exit 3)
 * Any other exception prints "BENCH-FAULT vv" and resets (QEMU exit 3).
 * Ring-3 port I/O faults on such hosts (IOPL is not honoured), hence MMIO.
 *
 * Build: as --64 --defsym N=<writes> --defsym HANG=<0|1>; HANG=1 halts after
 * the message instead of ending the VM (for footprint sampling and
 * snapshots). --defsym TOUCH_MIB=<m> first has ring 3 write one word into
 * every 4 KiB page of m MiB from 16 MiB up (paging is off: flat physical),
 * so a snapshot has that much memory to save (`scripts/bench snapshot`).
 */
        .ifndef TOUCH_MIB
        .set TOUCH_MIB, 0
        .endif
        .set MMIO_ADDR, 0xd0000000
        .set CODE0, 0x08
        .set DATA0, 0x10
        .set CODE3, 0x18 | 3
        .set DATA3, 0x20 | 3
        .set TSSSEL, 0x28

        /* XEN_ELFNOTE_PHYS32_ENTRY: linux-loader/QEMU find the entry here. */
        .section .note.pvh, "a"
        .balign 4
        .long 4, 4, 18
        .asciz "Xen"
        .long _start

        .text
        .code32
        .globl _start
_start:
        cli
        mov $stack0_top, %esp
        lgdt gdt_desc
        ljmp $CODE0, $1f
1:      mov $DATA0, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov %ax, %fs
        mov %ax, %gs

        /* TSS descriptor base (the linker knows it, the assembler cannot split it). */
        mov $tss, %eax
        mov %ax, gdt_tss + 2
        shr $16, %eax
        mov %al, gdt_tss + 4
        mov %ah, gdt_tss + 7
        mov $TSSSEL, %ax
        ltr %ax

        /* IDT: 32 interrupt gates, vector i -> fault_stubs + 16*i. */
        mov $idt, %edi
        mov $fault_stubs, %eax
        mov $32, %ecx
2:      mov %ax, (%edi)
        movw $CODE0, 2(%edi)
        movw $0x8e00, 4(%edi)
        mov %eax, %edx
        shr $16, %edx
        mov %dx, 6(%edi)
        add $16, %eax
        add $8, %edi
        loop 2b
        lidt idt_desc

        /* Drop to ring 3 with SYSEXIT (CS = SYSENTER_CS+16, SS = +24, EIP = EDX,
           ESP = ECX): KVM's instruction emulator has no protected-mode IRET
           or outer-privilege far return, but it does emulate SYSEXIT. */
        mov $0x174, %ecx                /* IA32_SYSENTER_CS */
        mov $CODE0, %eax
        xor %edx, %edx
        wrmsr
        mov $DATA3, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov $user, %edx
        mov $stack3_top, %ecx
        sysexit

user:   /* ring 3: touch TOUCH_MIB MiB, then the measured loop */
        mov $0x1000000, %edi
        mov $(TOUCH_MIB * 256), %ecx
        test %ecx, %ecx
        jz 6f
7:      movl %edi, (%edi)
        add $4096, %edi
        dec %ecx
        jnz 7b
6:      mov $N, %ecx
        test %ecx, %ecx
        jz 4f
3:      movl %ecx, MMIO_ADDR
        dec %ecx
        jnz 3b
4:      ud2

        /* One 16-byte stub per vector: push the vector number. */
        .balign 16
fault_stubs:
        .set vec, 0
        .rept 32
        .balign 16
        push $vec
        jmp fault
        .set vec, vec + 1
        .endr

fault:  pop %ebx                        /* vector (after any error code, ignored) */
        mov $DATA0, %ax
        mov %ax, %ds
        cmp $6, %ebx
        jne bad
        mov $msg_ok, %esi
        call puts
        .if HANG
5:      hlt
        jmp 5b
        .endif
        mov $0x600, %dx
        mov $0x34, %al
        out %al, %dx
        mov $0, %al
        out %al, $0xf4
        mov $0xfe, %al
        out %al, $0x64
        jmp halt

bad:    mov $msg_bad, %esi
        call puts
        mov %ebx, %eax
        shr $4, %eax
        call hexdigit
        mov %ebx, %eax
        call hexdigit
        mov $'\n', %al
        out %al, %dx
        mov $1, %al
        out %al, $0xf4
        mov $0xfe, %al
        out %al, $0x64
halt:   hlt
        jmp halt

puts:   mov $0x3f8, %dx
6:      lodsb
        test %al, %al
        jz 7f
        out %al, %dx
        jmp 6b
7:      ret

hexdigit:                               /* low nibble of %al to COM1 */
        and $0xf, %al
        add $'0', %al
        cmp $'9', %al
        jbe 8f
        add $7, %al
8:      mov $0x3f8, %dx
        out %al, %dx
        ret

msg_ok:  .asciz "BENCH-OK\n"
msg_bad: .asciz "BENCH-FAULT "

        .balign 8
gdt:    .quad 0
        .quad 0x00cf9a000000ffff        /* 0x08 ring-0 code, flat 4 GiB, 32-bit */
        .quad 0x00cf92000000ffff        /* 0x10 ring-0 data */
        .quad 0x00cffa000000ffff        /* 0x18 ring-3 code */
        .quad 0x00cff2000000ffff        /* 0x20 ring-3 data */
gdt_tss:
        .quad 0x0000890000000067        /* 0x28 32-bit TSS, limit 103, base patched */
gdt_end:
gdt_desc:
        .word gdt_end - gdt - 1
        .long gdt
idt_desc:
        .word 32 * 8 - 1
        .long idt

        .balign 8
tss:    .long 0                         /* previous task link */
        .long stack0_top                /* esp0: ring-0 stack for exceptions from ring 3 */
        .long DATA0                     /* ss0 */
        .fill 22, 4, 0
        .word 0, 104                    /* T flag; I/O map base past the limit: no bitmap */

        .balign 8
idt:    .fill 32 * 8, 1, 0

        /* Stacks in the file, not .bss: every loader then maps them. */
        .balign 16
        .fill 1024, 1, 0
stack0_top:
        .fill 1024, 1, 0
stack3_top:
