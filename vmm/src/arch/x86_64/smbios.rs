//! SMBIOS 3.0 tables that say what an EC2 instance's firmware says: system
//! vendor "Amazon EC2", the instance type as the product, a system UUID
//! beginning with `ec2`, and the instance id as the chassis asset tag.
//!
//! Why: cloud-init's ds-identify trusts the Ec2 datasource at once when
//! DMI says so (otherwise it probes for it, ~100 s on slow hosts), and
//! tools that read `/sys/class/dmi/id` (facter, ohai, the AWS SDKs'
//! "am I on EC2" checks) see an EC2 instance. Written only for instances,
//! i.e. when the VM config carries instance metadata; a plain VM gets no
//! SMBIOS, as before.
//!
//! Linux finds the 64-bit entry point by scanning 0xf0000–0xfffff on 16-byte
//! boundaries for `_SM3_` (no EFI here), so the tables live there.

use ec2lab_vmm_api::metadata::InstanceMetadata;
use sha2::{Digest, Sha256};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{SMBIOS_END, SMBIOS_START};

/// Errors writing the SMBIOS tables.
#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    /// The tables do not fit their region.
    #[error("SMBIOS tables take {0} bytes, more than their region")]
    TooLarge(usize),
    /// Writing to guest memory failed.
    #[error("cannot write the SMBIOS tables into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const ENTRY_POINT_LEN: u8 = 24;
const VENDOR: &str = "Amazon EC2";
/// What EC2's Nitro firmware reports as its BIOS.
const BIOS_VERSION: &str = "1.0";
const BIOS_DATE: &str = "10/16/2017";

/// One structure: its formatted part (type, length and handle first) and
/// its strings, which the formatted part refers to by 1-based index.
struct Structure {
    formatted: Vec<u8>,
    strings: Vec<String>,
}

impl Structure {
    fn new(kind: u8, handle: u16) -> Self {
        Structure {
            formatted: vec![kind, 0, handle as u8, (handle >> 8) as u8],
            strings: Vec::new(),
        }
    }

    /// Adds a string field: its index, or 0 (no string) when empty.
    fn string(&mut self, value: &str) -> &mut Self {
        // A NUL would end the string early; EC2's values never hold one.
        let value: String = value.chars().filter(|c| *c != '\0').collect();
        let index = if value.is_empty() {
            0
        } else {
            self.strings.push(value);
            self.strings.len() as u8
        };
        self.formatted.push(index);
        self
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.formatted.extend_from_slice(bytes);
        self
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = self.formatted.clone();
        out[1] = out.len() as u8;
        if self.strings.is_empty() {
            out.extend_from_slice(&[0, 0]);
        } else {
            for s in &self.strings {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            out.push(0);
        }
        out
    }
}

/// The system UUID: `ec2` then 29 hex digits derived from the instance id,
/// stable across boots of one instance, in SMBIOS 2.6+ byte order (the
/// first three fields little-endian), so Linux prints it as it reads here.
pub fn system_uuid(instance_id: &str) -> (String, [u8; 16]) {
    let digest = Sha256::digest(instance_id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let digits = format!("ec2{}", &hex[..29]);
    let text = format!(
        "{}-{}-{}-{}-{}",
        &digits[..8],
        &digits[8..12],
        &digits[12..16],
        &digits[16..20],
        &digits[20..32]
    );
    let mut raw = [0u8; 16];
    for (i, byte) in raw.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    raw[0..4].reverse();
    raw[4..6].reverse();
    raw[6..8].reverse();
    (text, raw)
}

/// The tables for `doc`'s instance, entry point first, as placed at
/// [`SMBIOS_START`].
pub fn build(doc: &InstanceMetadata) -> Result<Vec<u8>, SmbiosError> {
    let (uuid_text, uuid) = system_uuid(&doc.instance_id);
    let mut structures = Vec::new();

    // Type 0, BIOS information (SMBIOS 2.4 layout).
    let mut bios = Structure::new(0, 0);
    bios.string(VENDOR)
        .string(BIOS_VERSION)
        .bytes(&0xe800u16.to_le_bytes())
        .string(BIOS_DATE)
        .bytes(&[0])
        // Characteristics: "not supported" (bit 3); then byte 2, bit 3:
        // the VM is a virtual machine.
        .bytes(&(1u64 << 3).to_le_bytes())
        .bytes(&[0, 1 << 4])
        .bytes(&[0xff, 0xff, 0xff, 0xff]);
    structures.push(bios.encode());

    // Type 1, system information (2.4 layout): what ds-identify reads.
    let mut system = Structure::new(1, 1);
    system
        .string(VENDOR)
        .string(&doc.instance_type)
        .string("")
        .string(&uuid_text)
        .bytes(&uuid)
        // Wake-up type: power switch.
        .bytes(&[6])
        .string("")
        .string("");
    structures.push(system.encode());

    // Type 3, chassis: EC2 puts the instance id in the asset tag.
    let mut chassis = Structure::new(3, 3);
    chassis
        .string(VENDOR)
        // Type: other.
        .bytes(&[1])
        .string("")
        .string("")
        .string(&doc.instance_id)
        // Boot-up, power supply and thermal state safe; no security.
        .bytes(&[3, 3, 3, 2]);
    structures.push(chassis.encode());

    // Type 127, end of table.
    structures.push(Structure::new(127, 0x7f).encode());

    let table: Vec<u8> = structures.concat();
    let table_addr = SMBIOS_START + 32;
    let mut entry = Vec::with_capacity(usize::from(ENTRY_POINT_LEN));
    entry.extend_from_slice(b"_SM3_");
    entry.push(0);
    entry.push(ENTRY_POINT_LEN);
    // SMBIOS 3.0.0, entry point revision 1.
    entry.extend_from_slice(&[3, 0, 0, 1, 0]);
    entry.extend_from_slice(&(table.len() as u32).to_le_bytes());
    entry.extend_from_slice(&table_addr.to_le_bytes());
    entry[5] = entry
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg();

    let mut out = entry;
    out.resize(32, 0);
    out.extend_from_slice(&table);
    let room = (SMBIOS_END - SMBIOS_START) as usize;
    if out.len() > room {
        return Err(SmbiosError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Writes the tables for `doc` into guest memory.
pub fn setup(mem: &GuestMemoryMmap, doc: &InstanceMetadata) -> Result<(), SmbiosError> {
    let tables = build(doc)?;
    mem.write_slice(&tables, GuestAddress(SMBIOS_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> InstanceMetadata {
        InstanceMetadata {
            instance_id: "i-0a1b2c3d4e5f60718".into(),
            instance_type: "t2.micro".into(),
            ..InstanceMetadata::default()
        }
    }

    /// The structures of a table as (type, formatted bytes, strings).
    fn parse(table: &[u8]) -> Vec<(u8, Vec<u8>, Vec<String>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < table.len() {
            let kind = table[at];
            let len = usize::from(table[at + 1]);
            let formatted = table[at..at + len].to_vec();
            let mut strings = Vec::new();
            let mut p = at + len;
            if table[p] == 0 && table[p + 1] == 0 {
                p += 2;
            } else {
                while table[p] != 0 {
                    let end = p + table[p..].iter().position(|b| *b == 0).expect("NUL");
                    strings.push(String::from_utf8(table[p..end].to_vec()).expect("utf8"));
                    p = end + 1;
                }
                p += 1;
            }
            out.push((kind, formatted, strings));
            at = p;
            if kind == 127 {
                break;
            }
        }
        out
    }

    #[test]
    fn the_entry_point_is_where_linux_scans_and_sums_to_zero() {
        let tables = build(&doc()).expect("tables");
        assert_eq!(&tables[..5], b"_SM3_");
        assert_eq!(SMBIOS_START % 16, 0);
        assert!((0xf0000..0x100000).contains(&SMBIOS_START));
        let sum = tables[..24].iter().fold(0u8, |s, b| s.wrapping_add(*b));
        assert_eq!(sum, 0);
        assert_eq!((tables[6], tables[7]), (24, 3), "length, major version");
        let len = u32::from_le_bytes(tables[12..16].try_into().expect("4")) as usize;
        let addr = u64::from_le_bytes(tables[16..24].try_into().expect("8"));
        assert_eq!(addr, SMBIOS_START + 32);
        assert_eq!(tables.len(), 32 + len);
    }

    #[test]
    fn the_tables_say_what_an_ec2_instance_says() {
        let tables = build(&doc()).expect("tables");
        let structures = parse(&tables[32..]);
        let kinds: Vec<u8> = structures.iter().map(|s| s.0).collect();
        assert_eq!(kinds, vec![0, 1, 3, 127]);
        let (_, bios, strings) = &structures[0];
        assert_eq!(strings[usize::from(bios[4]) - 1], "Amazon EC2");
        let (_, system, strings) = &structures[1];
        assert_eq!(
            strings[usize::from(system[4]) - 1],
            "Amazon EC2",
            "sys_vendor"
        );
        assert_eq!(
            strings[usize::from(system[5]) - 1],
            "t2.micro",
            "product_name"
        );
        // Linux prints the UUID of SMBIOS 2.6+ with its first three
        // fields little-endian: it must read "ec2…".
        let raw = &system[8..24];
        let printed = format!(
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}",
            raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6]
        );
        let (text, _) = system_uuid("i-0a1b2c3d4e5f60718");
        assert!(
            text.starts_with("ec2") && text.starts_with(&printed),
            "{text} {printed}"
        );
        assert_eq!(strings[usize::from(system[7]) - 1], text, "product_serial");
        let (_, chassis, strings) = &structures[2];
        assert_eq!(
            strings[usize::from(chassis[8]) - 1],
            "i-0a1b2c3d4e5f60718",
            "asset tag"
        );
    }

    #[test]
    fn uuids_are_stable_per_instance_and_differ_between_instances() {
        assert_eq!(system_uuid("i-1"), system_uuid("i-1"));
        assert_ne!(system_uuid("i-1").0, system_uuid("i-2").0);
        assert_eq!(system_uuid("i-1").0.len(), 36);
    }

    #[test]
    fn strings_cannot_break_the_structure() {
        let mut odd = doc();
        odd.instance_type = "t2.\0micro".into();
        odd.instance_id = String::new();
        let tables = build(&odd).expect("tables");
        let structures = parse(&tables[32..]);
        assert_eq!(structures.len(), 4);
        let (_, chassis, _) = &structures[2];
        assert_eq!(chassis[8], 0, "an empty asset tag is no string");
    }
}
