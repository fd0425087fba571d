//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced), DSDT and MADT.
//!
//! Hardware-reduced ACPI gives the guest a sleep control register, so that
//! `poweroff` reaches the VMM as a port write instead of halting the CPUs
//! forever, and a reset register for `reboot`. The DSDT names `\_S5` and
//! declares the legacy devices (COM1, the i8042) so that Linux's PNP probing
//! finds them on a platform without the legacy-device flags.

use acpi_tables::{aml, fadt, gas, madt, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_END, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_START, APIC_START, IOAPIC_START,
};

/// Errors writing ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables outgrew the reserved region.
    #[error("ACPI tables need {0} bytes, more than the reserved region")]
    TooLarge(u64),
    /// Writing to guest memory failed.
    #[error("cannot write ACPI tables into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const OEM_ID: [u8; 6] = *b"EC2LAB";
/// S5 (soft off) sleep type value written into SLP_TYP.
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN in the hardware-reduced sleep control register.
pub const SLEEP_ENABLE: u8 = 1 << 5;

/// Serial port and i8042 resources as declared to the guest.
const COM1_PORT: u16 = 0x3f8;
const COM1_IRQ: u32 = 4;
const I8042_IRQ: u32 = 1;

/// Where each table landed, for the boot protocols that point at the RSDP.
#[derive(Clone, Copy, Debug)]
pub struct AcpiLayout {
    /// Physical address of the RSDP.
    pub rsdp: u64,
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// A virtio-mmio device as the guest must learn of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Base of its 4 KiB register window.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
}

/// ACPI id Linux's virtio-mmio driver matches.
const VIRTIO_MMIO_HID: &str = "LNRO0005";

/// Writes one `Device` per virtio-mmio window. Declaring them here rather than
/// with `virtio_mmio.device=` on the command line is what gives them a usable
/// interrupt: on a hardware-reduced ACPI platform Linux maps GSIs to IRQs
/// only through ACPI resources (there is no legacy PIC, so a bare IRQ number
/// on the command line reaches nothing).
fn virtio_devices_aml(devices: &[MmioDeviceInfo], body: &mut Vec<u8>) {
    for (i, d) in devices.iter().enumerate() {
        let hid: &'static str = VIRTIO_MMIO_HID;
        let hid_name = aml::Name::new("_HID".into(), &hid);
        let uid = i as u32;
        let uid_name = aml::Name::new("_UID".into(), &uid);
        let window = aml::Memory32Fixed::new(
            true,
            d.base as u32,
            crate::devices::virtio::mmio::MMIO_LEN as u32,
        );
        let irq = aml::Interrupt::new(true, true, false, false, d.gsi);
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        let crs_name = aml::Name::new("_CRS".into(), &crs);
        let path = format!("_SB_.V{i:03X}");
        aml::Device::new(path.as_str().into(), vec![&hid_name, &uid_name, &crs_name])
            .to_aml_bytes(body);
    }
}

fn dsdt(devices: &[MmioDeviceInfo]) -> Vec<u8> {
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8, &0u8, &0u8]);
    let s5_name = aml::Name::new("_S5_".into(), &s5);

    let com1_hid = aml::EISAName::new("PNP0501");
    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_uid = 0u8;
    let com1_hid_name = aml::Name::new("_HID".into(), &com1_hid);
    let com1_uid_name = aml::Name::new("_UID".into(), &com1_uid);
    let com1_crs_name = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new(
        "_SB_.COM1".into(),
        vec![&com1_hid_name, &com1_uid_name, &com1_crs_name],
    );

    let ps2_hid = aml::EISAName::new("PNP0303");
    let ps2_data = aml::IO::new(0x60, 0x60, 1, 1);
    let ps2_cmd = aml::IO::new(0x64, 0x64, 1, 1);
    let ps2_irq = aml::Interrupt::new(true, true, false, false, I8042_IRQ);
    let ps2_crs = aml::ResourceTemplate::new(vec![&ps2_data, &ps2_cmd, &ps2_irq]);
    let ps2_hid_name = aml::Name::new("_HID".into(), &ps2_hid);
    let ps2_crs_name = aml::Name::new("_CRS".into(), &ps2_crs);
    let ps2 = aml::Device::new("_SB_.PS2_".into(), vec![&ps2_hid_name, &ps2_crs_name]);

    let mut body = Vec::new();
    s5_name.to_aml_bytes(&mut body);
    com1.to_aml_bytes(&mut body);
    ps2.to_aml_bytes(&mut body);
    virtio_devices_aml(devices, &mut body);

    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"EC2LDSDT", 1);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = fadt::FADTBuilder::new(OEM_ID, *b"EC2LFACP", 1)
        .dsdt_64(dsdt_addr)
        .flag(fadt::Flags::HwReducedAcpi)
        .flag(fadt::Flags::ResetRegSup)
        .flag(fadt::Flags::PwrButton)
        .flag(fadt::Flags::SlpButton);
    let port = gas::GAS::new(
        gas::AddressSpace::SystemIo,
        8,
        0,
        gas::AccessSize::ByteAccess,
        u64::from(ACPI_SLEEP_CONTROL_PORT),
    );
    f.sleep_control_reg = port;
    f.sleep_status_reg = port;
    f.reset_reg = port;
    f.reset_value = ACPI_RESET_VALUE;
    // An 8042 is present (so Linux probes it even without PNP); no VGA, no
    // MSI, no ASPM control: what a microVM platform has.
    f.iapc_boot_arch = ((1u16 << 1) | (1 << 2) | (1 << 3) | (1 << 4)).into();
    bytes_of(&f.finalize())
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut m = madt::MADT::new(
        OEM_ID,
        *b"EC2LMADT",
        1,
        madt::LocalInterruptController::Address(APIC_START as u32),
    );
    for cpu in 0..vcpus {
        m.add_structure(madt::ProcessorLocalApic::new(
            cpu,
            cpu,
            madt::EnabledStatus::Enabled,
        ));
    }
    m.add_structure(madt::IoApic::new(vcpus, IOAPIC_START as u32, 0));
    bytes_of(&m)
}

/// Builds every table and writes them from `ACPI_START`, RSDP first.
pub fn setup(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    devices: &[MmioDeviceInfo],
) -> Result<AcpiLayout, AcpiError> {
    let rsdp_addr = ACPI_START;
    // Tables follow the RSDP, each 16-byte aligned.
    let align = |a: u64| (a + 15) & !15;
    let mut next = align(rsdp_addr + Rsdp::len() as u64);

    let dsdt = dsdt(devices);
    let dsdt_addr = next;
    next = align(next + dsdt.len() as u64);

    let fadt = fadt(dsdt_addr);
    let fadt_addr = next;
    next = align(next + fadt.len() as u64);

    let madt = madt(vcpus);
    let madt_addr = next;
    next = align(next + madt.len() as u64);

    let mut xsdt = XSDT::new(OEM_ID, *b"EC2LXSDT", 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes_of(&xsdt);
    let xsdt_addr = next;
    next += xsdt.len() as u64;
    if next > ACPI_END {
        return Err(AcpiError::TooLarge(next - ACPI_START));
    }

    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    for (bytes, addr) in [
        (&rsdp, rsdp_addr),
        (&dsdt, dsdt_addr),
        (&fadt, fadt_addr),
        (&madt, madt_addr),
        (&xsdt, xsdt_addr),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))?;
    }
    Ok(AcpiLayout { rsdp: rsdp_addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).expect("guest memory")
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).expect("read");
        v
    }

    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let hdr = read(mem, addr, 8);
        let len = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
        read(mem, addr, len)
    }

    #[test]
    fn tables_chain_from_rsdp_with_valid_checksums() {
        let m = mem();
        let devices = [MmioDeviceInfo {
            base: 0xc000_0000,
            gsi: 5,
        }];
        let layout = setup(&m, 2, &devices).expect("tables");
        let rsdp = read(&m, layout.rsdp, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().expect("8 bytes"));
        let xsdt = table_at(&m, xsdt_addr);
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert_eq!(sum(&xsdt), 0);
        let mut signatures = Vec::new();
        for chunk in xsdt[36..].chunks(8) {
            let addr = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let t = table_at(&m, addr);
            assert_eq!(
                sum(&t),
                0,
                "checksum of {:?}",
                String::from_utf8_lossy(&t[0..4])
            );
            signatures.push(t[0..4].to_vec());
            if &t[0..4] == b"FACP" {
                let dsdt_addr = u64::from_le_bytes(t[140..148].try_into().expect("8 bytes"));
                let dsdt = table_at(&m, dsdt_addr);
                assert_eq!(&dsdt[0..4], b"DSDT");
                assert_eq!(sum(&dsdt), 0);
                assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
                assert!(dsdt.windows(8).any(|w| w == b"LNRO0005"));
                let flags = u32::from_le_bytes(t[112..116].try_into().expect("4 bytes"));
                assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
            }
        }
        assert_eq!(signatures, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
    }

    #[test]
    fn madt_lists_every_vcpu() {
        let bytes = madt(4);
        let (mut offset, mut lapics, mut ioapics) = (44, 0, 0);
        while offset < bytes.len() {
            match bytes[offset] {
                0 => lapics += 1,
                1 => ioapics += 1,
                other => panic!("unexpected MADT structure {other}"),
            }
            offset += usize::from(bytes[offset + 1]);
        }
        assert_eq!((lapics, ioapics), (4, 1));
    }
}
