/*
 * /init of the minimal initramfs `scripts/bench vmm --kernel` uses when no
 * --initrd is given: the kernel prints "Run /init as init process" before
 * executing it, which is what the boot benchmark times. It then asks for a
 * poweroff; where the kernel cannot take a syscall from user mode (a
 * kernel-emulating host without the lab kernel's patch) init dies instead and
 * the kernel panics, which is fine: the measurement is already taken.
 */
        .globl _start
_start: mov $169, %eax                  /* reboot(2) */
        mov $0xfee1dead, %edi
        mov $0x28121969, %esi
        mov $0x4321fedc, %edx           /* LINUX_REBOOT_CMD_POWER_OFF */
        syscall
1:      pause
        jmp 1b
