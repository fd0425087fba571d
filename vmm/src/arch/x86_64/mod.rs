//! x86_64 guest platform: memory layout, boot protocols, CPU state, firmware tables.

pub mod acpi;
pub mod boot;
pub mod bzimage;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
pub mod smbios;
