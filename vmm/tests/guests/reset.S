# reset.S — proves a guest-requested reset ends the VM with status 3.
# Default: the i8042 keyboard controller's CPU-reset pulse (0xfe to port
# 0x64). Assembled with --defsym VIA_ACPI=1: writing 0x01 (reset) to the
# ACPI sleep control register at port 0x600 instead.

    .include "lib/io64.inc"

    .section .text.entry, "ax"
    .globl _start
_start:
    lea stack0_top(%rip), %rsp
.ifdef VIA_ACPI
    PUTS "resetting via ACPI\n"
    mov $ACPI_SLEEP_CONTROL, %dx
    mov $0x01, %al
    outb %al, %dx
    PUTS "ACPI reset did not stop the VM\n"
    jmp halt_forever
.else
    PUTS "resetting via i8042\n"
    jmp reset_i8042                 # prints and halts if it returns
.endif
