//! Diagnostics for fatal vCPU exits: registers, the instruction bytes at RIP
//! and their disassembly, so a failed boot says exactly where and why.

use std::fmt::Write as _;

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, NasmFormatter};
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;
const PAGE_SIZE: u64 = 4096;
const EFER_LMA: u64 = 1 << 10;

/// The code size the vCPU is executing in.
pub fn bitness(sregs: &kvm_sregs) -> u32 {
    if sregs.efer & EFER_LMA != 0 && sregs.cs.l == 1 {
        64
    } else if sregs.cs.db == 1 {
        32
    } else {
        16
    }
}

/// Reads up to 15 bytes at the guest virtual address `rip`, translating each
/// page through the vCPU's page tables; stops early at an unmapped page.
pub fn read_insn_bytes(vcpu: &VcpuFd, mem: &GuestMemoryMmap, rip: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(MAX_INSN_LEN);
    let mut va = rip;
    while bytes.len() < MAX_INSN_LEN {
        let Ok(t) = vcpu.translate_gva(va) else { break };
        if t.valid == 0 {
            break;
        }
        let in_page = (PAGE_SIZE - (va % PAGE_SIZE)) as usize;
        let n = in_page.min(MAX_INSN_LEN - bytes.len());
        let mut chunk = vec![0u8; n];
        if mem
            .read_slice(&mut chunk, GuestAddress(t.physical_address))
            .is_err()
        {
            break;
        }
        bytes.extend_from_slice(&chunk);
        va = va.wrapping_add(n as u64);
    }
    bytes
}

/// Disassembles the first instruction in `bytes`.
pub fn disassemble(bytes: &[u8], rip: u64, bitness: u32) -> String {
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    if !decoder.can_decode() {
        return "<no bytes>".to_string();
    }
    decoder.decode_out(&mut insn);
    if insn.is_invalid() {
        return "<invalid instruction>".to_string();
    }
    let mut out = String::new();
    NasmFormatter::new().format(&insn, &mut out);
    out
}

/// Formats general and special registers.
pub fn format_registers(regs: &kvm_regs, sregs: &kvm_sregs) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "rip={:#018x} rsp={:#018x} rflags={:#010x}",
        regs.rip, regs.rsp, regs.rflags
    );
    let _ = writeln!(
        s,
        "rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
        regs.rax, regs.rbx, regs.rcx, regs.rdx
    );
    let _ = writeln!(
        s,
        "rsi={:#018x} rdi={:#018x} rbp={:#018x} r8={:#018x}",
        regs.rsi, regs.rdi, regs.rbp, regs.r8
    );
    let _ = writeln!(
        s,
        "r9={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}",
        regs.r9, regs.r10, regs.r11, regs.r12
    );
    let _ = writeln!(
        s,
        "r13={:#018x} r14={:#018x} r15={:#018x}",
        regs.r13, regs.r14, regs.r15
    );
    let _ = writeln!(
        s,
        "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
        sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer
    );
    let _ = write!(
        s,
        "cs={:#x} (dpl {} l {} db {}) ss={:#x} idt={:#x}/{:#x} gdt={:#x}/{:#x}",
        sregs.cs.selector,
        sregs.cs.dpl,
        sregs.cs.l,
        sregs.cs.db,
        sregs.ss.selector,
        sregs.idt.base,
        sregs.idt.limit,
        sregs.gdt.base,
        sregs.gdt.limit
    );
    s
}

/// Everything worth printing about a vCPU that stopped unexpectedly.
pub fn dump(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> String {
    let (regs, sregs) = match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) | (_, Err(e)) => return format!("registers unavailable: {e}"),
    };
    let bytes = read_insn_bytes(vcpu, mem, regs.rip);
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}\ncode at rip: [{}] {}",
        format_registers(&regs, &sregs),
        hex.join(" "),
        disassemble(&bytes, regs.rip, bitness(&sregs))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disassembles_int3_and_fwait() {
        assert_eq!(disassemble(&[0xcc], 0x1000, 64), "int3");
        assert_eq!(disassemble(&[0x9b], 0x1000, 64), "wait");
        assert_eq!(
            disassemble(&[0xf3, 0x0f, 0xb8, 0xc0], 0, 64),
            "popcnt eax,eax"
        );
        assert_eq!(disassemble(&[], 0, 64), "<no bytes>");
    }

    #[test]
    fn bitness_follows_efer_and_cs() {
        let mut s = kvm_sregs::default();
        assert_eq!(bitness(&s), 16);
        s.cs.db = 1;
        assert_eq!(bitness(&s), 32);
        s.efer = EFER_LMA;
        s.cs.l = 1;
        s.cs.db = 0;
        assert_eq!(bitness(&s), 64);
    }

    #[test]
    fn register_dump_names_rip() {
        let regs = kvm_regs {
            rip: 0xdead_beef,
            ..Default::default()
        };
        let text = format_registers(&regs, &kvm_sregs::default());
        assert!(text.contains("rip=0x00000000deadbeef"), "{text}");
    }
}
