//! Loading a kernel, initrd and command line, and writing the boot
//! structures of the protocol the kernel supports: PVH when the ELF carries a
//! PVH note, else the Linux 64-bit boot protocol (ELF vmlinux or bzImage).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader, KernelLoaderResult};
use object::elf::FileHeader64;
use object::read::elf::FileHeader as _;
use object::{Endianness, ReadCache, ReadRef};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::bzimage::{self, Compression, PayloadError};
use super::layout::{self, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START};
use super::regs::EntryMode;

/// Errors loading the kernel or writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Io {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The kernel file is neither an ELF nor a bzImage.
    #[error("{0}: not a kernel image (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel(PathBuf),
    /// linux-loader refused the image.
    #[error("{path}: cannot load kernel: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The loader's error.
        source: linux_loader::loader::Error,
    },
    /// The kernel does not fit in guest memory.
    #[error("{path}: kernel ends at {end:#x}, beyond guest memory ({mem:#x} bytes)")]
    KernelTooLarge {
        /// The file.
        path: PathBuf,
        /// End of the loaded image.
        end: u64,
        /// Guest memory size.
        mem: u64,
    },
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error("{path}: initrd of {size} bytes does not fit in guest memory ({available} bytes free above the kernel)")]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Room there is.
        available: u64,
    },
    /// The command line is invalid.
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// The command line could not be written into guest memory.
    #[error("cannot write the kernel command line: {0}")]
    WriteCmdline(linux_loader::loader::Error),
    /// Writing boot parameters failed.
    #[error("cannot write boot parameters: {0}")]
    BootParams(linux_loader::configurator::Error),
    /// The VMM could not decompress the bzImage's kernel.
    #[error("{path}: {source}")]
    Payload {
        /// The file.
        path: PathBuf,
        /// What was wrong with the payload.
        source: PayloadError,
    },
    /// Writing to guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    Memory {
        /// What.
        what: &'static str,
        /// The error.
        source: vm_memory::GuestMemoryError,
    },
}

/// The kernel image formats we boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF vmlinux.
    Elf,
    /// bzImage (Linux boot protocol ≥ 2.00).
    BzImage,
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// The 64-bit entry point of a bzImage sits 0x200 bytes into the protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Tells the kernel format from the first bytes of the file.
pub fn detect_format(file: &mut File, path: &Path) -> Result<KernelFormat, BootError> {
    let io = |source| BootError::Io {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    if file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    let mut hdrs = [0u8; 4];
    if file.seek(SeekFrom::Start(0x202)).is_ok()
        && file.read_exact(&mut hdrs).is_ok()
        && u32::from_le_bytes(hdrs) == KERNEL_HDR_MAGIC
    {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::NotAKernel(path.to_path_buf()))
}

/// Whether a kernel image can use the VMM's ACPI tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiSupport {
    /// The image contains Linux's ACPI core: devices come from the DSDT.
    Present,
    /// A kernel without ACPI (Firecracker-style guest configs): devices
    /// must be declared on the command line and interrupts come from the MP
    /// table; `poweroff` only halts such a guest (use `reboot`).
    Absent,
    /// A bzImage the guest decompresses: its contents cannot be read
    /// without decompressing; distribution kernels, the reason to boot a
    /// bzImage, all have ACPI, so it is assumed.
    Assumed,
}

impl AcpiSupport {
    /// Whether the kernel will find its devices in the DSDT.
    pub fn uses_dsdt(self) -> bool {
        self != AcpiSupport::Absent
    }
}

/// Bytes every Linux with `CONFIG_ACPI` carries (ACPICA's banner, printed by
/// `acpi_bus_init` since 2.6 as `PREFIX "Core revision %08x"`).
const ACPI_CORE_MARKER: &[u8] = b"ACPI: Core revision";

/// Which of `markers` `image` (an uncompressed kernel) contains, in one
/// pass read in chunks so that a large vmlinux is not held in memory.
fn image_contains<const N: usize, R: Read + Seek>(
    image: &mut R,
    markers: [&[u8]; N],
) -> std::io::Result<[bool; N]> {
    const CHUNK: usize = 1 << 20;
    let finders = markers.map(memchr::memmem::Finder::new);
    let mut found = [false; N];
    let keep = markers
        .iter()
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
        .saturating_sub(1);
    let mut buf = vec![0u8; CHUNK + keep];
    let mut carried = 0;
    image.seek(SeekFrom::Start(0))?;
    while !found.iter().all(|f| *f) {
        let n = image.read(&mut buf[carried..])?;
        if n == 0 {
            break;
        }
        let filled = carried + n;
        for (hit, finder) in found.iter_mut().zip(&finders) {
            *hit = *hit || finder.find(&buf[..filled]).is_some();
        }
        carried = keep.min(filled);
        buf.copy_within(filled - carried..filled, 0);
    }
    Ok(found)
}

/// What the VMM found in a kernel image that changes what it tells the
/// kernel on hosts that emulate guest kernel mode (see
/// `Workarounds::cmdline_params` in `host.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelTraits {
    /// A `.BTF` section: type information the kernel parses in full at its
    /// first BPF kfunc registration (see [`carries_btf`]).
    pub btf: bool,
    /// ec2lab's syscall-via-#PF patch (guest-images/kernel/patches/0001),
    /// without which no user space runs on those hosts.
    pub syscall_via_pf: bool,
}

/// The line the syscall-via-#PF patch prints when enabled.
const SYSCALL_VIA_PF_MARKER: &[u8] = b"ec2lab: syscall entry via #PF enabled";

/// What a kernel ELF (a vmlinux file, or the payload the VMM decompressed
/// from a bzImage) contains: Linux's ACPI core, BTF, our syscall patch.
fn inspect_elf<R: Read + Seek>(elf: &mut R) -> std::io::Result<(AcpiSupport, KernelTraits)> {
    let [acpi, syscall_via_pf] = image_contains(elf, [ACPI_CORE_MARKER, SYSCALL_VIA_PF_MARKER])?;
    let btf = carries_btf(&ReadCache::new(elf));
    Ok((
        acpi_support(acpi),
        KernelTraits {
            btf,
            syscall_via_pf,
        },
    ))
}

/// Whether an ELF kernel has a `.BTF` section (`CONFIG_DEBUG_INFO_BTF`):
/// the type information of the whole kernel, which Linux parses at its
/// first BPF kfunc registration. Section headers are not needed to load a
/// kernel, so an image whose headers cannot be read counts as without.
fn carries_btf<'data, R: ReadRef<'data>>(data: R) -> bool {
    let Ok(header) = FileHeader64::<Endianness>::parse(data) else {
        return false;
    };
    let Ok(endian) = header.endian() else {
        return false;
    };
    header
        .sections(endian, data)
        .is_ok_and(|sections| sections.section_by_name(endian, b".BTF").is_some())
}

/// What the boot vCPU needs after loading.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// How to enter the kernel.
    pub entry: EntryMode,
    /// The format that was loaded.
    pub format: KernelFormat,
    /// Whether the kernel reads ACPI tables.
    pub acpi: AcpiSupport,
    /// What the image contains; all `false` for a bzImage the guest
    /// decompresses, which the VMM cannot read.
    pub traits: KernelTraits,
    /// End of the loaded image (first free byte).
    pub end: u64,
    /// The compression of a bzImage whose kernel the VMM decompressed and
    /// loaded as an ELF; `None` when the guest decompresses its own.
    pub decompressed: Option<Compression>,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Loads the kernel image into guest memory. With `decompress` a bzImage's
/// kernel is decompressed here and loaded as the ELF it is (see
/// [`bzimage`]), unless its compression is one the VMM leaves to the guest.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    decompress: bool,
) -> Result<LoadedKernel, BootError> {
    let io = |source| BootError::Io {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let format = detect_format(&mut file, path)?;
    if format == KernelFormat::BzImage && decompress {
        if let Some(kernel) = load_decompressed(mem, path, &mut file, mem_size)? {
            return Ok(kernel);
        }
    }
    let load_err = |source| BootError::Load {
        path: path.to_path_buf(),
        source,
    };
    let result: KernelLoaderResult = match format {
        KernelFormat::Elf => {
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?
        }
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?
        }
    };
    check_fits(path, &result, mem_size)?;
    let entry = match format {
        KernelFormat::Elf => elf_entry(&result),
        KernelFormat::BzImage => EntryMode::Linux64 {
            entry: result.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
        },
    };
    let (acpi, traits) = match format {
        KernelFormat::Elf => inspect_elf(&mut file).map_err(io)?,
        KernelFormat::BzImage => (AcpiSupport::Assumed, KernelTraits::default()),
    };
    Ok(LoadedKernel {
        entry,
        format,
        acpi,
        traits,
        end: result.kernel_end,
        decompressed: None,
        setup_header: result.setup_header,
    })
}

/// Decompresses the bzImage in `file` and loads the ELF inside. `None`
/// when the payload is one the VMM leaves to the guest's decompressor (an
/// unsupported compression, or a header too old to locate it).
fn load_decompressed(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut File,
    mem_size: u64,
) -> Result<Option<LoadedKernel>, BootError> {
    let io = |source| BootError::Io {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let payload_err = |source| BootError::Payload {
        path: path.to_path_buf(),
        source,
    };
    // The compressed image must fit in guest memory too, which bounds the read.
    let len = file.metadata().map_err(io)?.len();
    if len > mem_size {
        return Err(BootError::KernelTooLarge {
            path: path.to_path_buf(),
            end: len,
            mem: mem_size,
        });
    }
    let mut image = Vec::with_capacity(len as usize);
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.read_to_end(&mut image).map_err(io)?;
    let left_to_guest = |e: PayloadError| {
        log::info!("{}: the guest decompresses its kernel: {e}", path.display());
        Ok(None)
    };
    let payload = match bzimage::payload(&image) {
        Ok(payload) => payload,
        Err(e) if e.leaves_it_to_the_guest() => return left_to_guest(e),
        Err(e) => return Err(payload_err(e)),
    };
    let compression = payload.compression;
    // The kernel runs from its preferred address and needs `init_size`
    // bytes there (boot protocol 2.10): say so now rather than fail to
    // load an ELF into memory that is not there.
    if let Some(end) = bzimage::init_end(&image) {
        if end > layout::low_ram_end(mem_size) {
            return Err(BootError::KernelTooLarge {
                path: path.to_path_buf(),
                end,
                mem: mem_size,
            });
        }
    }
    // The kernel's ELF lands in low memory; it can never be larger.
    let elf = match payload.decompress(layout::low_ram_end(mem_size)) {
        Ok(elf) => elf,
        Err(e) if e.leaves_it_to_the_guest() => return left_to_guest(e),
        Err(e) => return Err(payload_err(e)),
    };
    // The zero page of a 64-bit entry still wants the bzImage's header.
    let setup_header =
        bzimage::setup_header(&image).ok_or(BootError::NotAKernel(path.to_path_buf()))?;
    drop(image);
    let result = Elf::load(
        mem,
        None,
        &mut std::io::Cursor::new(&elf),
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|source| BootError::Load {
        path: path.to_path_buf(),
        source,
    })?;
    check_fits(path, &result, mem_size)?;
    let (acpi, traits) = inspect_elf(&mut std::io::Cursor::new(&elf)).map_err(io)?;
    Ok(Some(LoadedKernel {
        entry: elf_entry(&result),
        format: KernelFormat::BzImage,
        acpi,
        traits,
        end: result.kernel_end,
        decompressed: Some(compression),
        setup_header: Some(setup_header),
    }))
}

fn check_fits(path: &Path, result: &KernelLoaderResult, mem_size: u64) -> Result<(), BootError> {
    if result.kernel_end > layout::low_ram_end(mem_size) {
        return Err(BootError::KernelTooLarge {
            path: path.to_path_buf(),
            end: result.kernel_end,
            mem: mem_size,
        });
    }
    Ok(())
}

/// An ELF kernel's entry: PVH when it carries the note, else the 64-bit
/// entry at `e_entry` (Firecracker's way for vmlinux without the note).
fn elf_entry(result: &KernelLoaderResult) -> EntryMode {
    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => EntryMode::Pvh {
            entry: addr.raw_value(),
        },
        _ => EntryMode::Linux64 {
            entry: result.kernel_load.raw_value(),
        },
    }
}

fn acpi_support(has_acpi_core: bool) -> AcpiSupport {
    if has_acpi_core {
        AcpiSupport::Present
    } else {
        AcpiSupport::Absent
    }
}

/// Where the initrd went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Chooses the initrd's address: page-aligned, as high in low memory as it
/// fits (kernels relocate themselves upward while decompressing, so the top
/// is the safe end), and never over the kernel.
pub fn place_initrd(size: u64, kernel_end: u64, low_ram_end: u64, addr_max: u64) -> Option<u64> {
    let top = low_ram_end.min(addr_max.saturating_add(1));
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end && size > 0).then_some(addr)
}

/// Loads the initrd into guest memory.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<InitrdPlacement, BootError> {
    let io = |source| BootError::Io {
        what: "initrd",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(0x7fff_ffff);
    let low_end = layout::low_ram_end(mem_size);
    let addr = place_initrd(size, kernel.end, low_end, addr_max).ok_or_else(|| {
        BootError::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
            available: low_end.saturating_sub(kernel.end),
        }
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::Memory {
            what: "initrd",
            source,
        })?;
    Ok(InitrdPlacement { addr, size })
}

/// Writes the command line at `CMDLINE_START`.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    c.insert_str(cmdline).map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &c).map_err(BootError::WriteCmdline)
}

/// The guest's memory map, shared by both protocols.
pub fn memory_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, 0xa0000 - EBDA_START, E820_RESERVED),
        // Firmware tables: ACPI, then SMBIOS up to 1 MiB.
        (
            layout::ACPI_START,
            layout::SMBIOS_END - layout::ACPI_START,
            E820_RESERVED,
        ),
    ];
    for (start, size) in layout::ram_regions(mem_size) {
        if start == 0 {
            map.push((HIMEM_START, size - HIMEM_START, E820_RAM));
        } else {
            map.push((start, size, E820_RAM));
        }
    }
    map
}

/// Everything the boot structures point at.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// Command line length, without the NUL.
    pub cmdline_len: usize,
    /// The initrd, if any.
    pub initrd: Option<InitrdPlacement>,
    /// ACPI RSDP address.
    pub rsdp: u64,
    /// Guest memory size.
    pub mem_size: u64,
}

/// Writes the zero page (Linux 64-bit protocol) or the PVH start info.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    info: &BootInfo,
) -> Result<(), BootError> {
    match kernel.entry {
        EntryMode::Pvh { .. } => write_pvh_start_info(mem, info),
        EntryMode::Linux64 { .. } => write_zero_page(mem, kernel, info),
    }
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    info: &BootInfo,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32 + 1;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    if let Some(initrd) = info.initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = info.rsdp;
    let map = memory_map(info.mem_size);
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(layout::ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::BootParams)
}

fn write_pvh_start_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), BootError> {
    let map: Vec<hvm_memmap_table_entry> = memory_map(info.mem_size)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let modules_addr = GuestAddress(
        layout::PVH_MEMMAP_START
            + (map.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64,
    );
    // The initrd is the one module PVH passes.
    let modules: Vec<hvm_modlist_entry> = info
        .initrd
        .iter()
        .map(|initrd| hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: info.rsdp,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            modules_addr.raw_value()
        },
        ..Default::default()
    };
    let mut params =
        BootParams::new::<hvm_start_info>(&start_info, GuestAddress(layout::PVH_INFO_START));
    params.set_sections::<hvm_memmap_table_entry>(&map, GuestAddress(layout::PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules::<hvm_modlist_entry>(&modules, modules_addr);
    }
    if modules_addr.raw_value() + std::mem::size_of::<hvm_modlist_entry>() as u64
        > layout::ZERO_PAGE_START
    {
        return Err(BootError::Memory {
            what: "PVH memory map",
            source: vm_memory::GuestMemoryError::InvalidGuestAddress(modules_addr),
        });
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::BootParams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_to_the_top_page_aligned() {
        let addr = place_initrd(0x1800, 0x200_0000, 0x800_0000, 0x7fff_ffff).expect("fits");
        assert_eq!(addr, 0x800_0000 - 0x2000);
        assert_eq!(addr % 0x1000, 0);
    }

    #[test]
    fn initrd_respects_addr_max() {
        let addr = place_initrd(0x1000, 0x100_0000, 0x4000_0000, 0x1fff_ffff).expect("fits");
        assert_eq!(addr, 0x2000_0000 - 0x1000);
    }

    #[test]
    fn initrd_larger_than_memory_is_refused() {
        assert_eq!(
            place_initrd(0x900_0000, 0x200_0000, 0x800_0000, 0x7fff_ffff),
            None
        );
        assert_eq!(
            place_initrd(0x700_0000, 0x200_0000, 0x800_0000, 0x7fff_ffff),
            None
        );
        assert_eq!(place_initrd(0, 0x200_0000, 0x800_0000, 0x7fff_ffff), None);
    }

    #[test]
    fn memory_map_covers_ram_and_reserves_firmware() {
        let map = memory_map(256 << 20);
        let ram: u64 = map.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(ram, (256 << 20) - (HIMEM_START - EBDA_START));
        assert!(map.contains(&(layout::ACPI_START, 0x20000, E820_RESERVED)));
        let big = memory_map(4 << 30);
        assert!(big.contains(&(layout::MMIO_GAP_END, 1 << 30, E820_RAM)));
    }

    #[test]
    fn markers_are_found_across_chunk_boundaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        for at in [0usize, 100, (1 << 20) - 5, (1 << 20) + 3, 3 << 20] {
            let mut bytes = vec![0x90u8; (3 << 20) + 64];
            bytes[at..at + ACPI_CORE_MARKER.len()].copy_from_slice(ACPI_CORE_MARKER);
            let path = dir.path().join("with");
            std::fs::write(&path, &bytes).expect("write");
            let mut f = File::open(&path).expect("open");
            assert_eq!(
                image_contains(&mut f, [ACPI_CORE_MARKER, SYSCALL_VIA_PF_MARKER]).expect("read"),
                [true, false],
                "at {at}"
            );
        }
        let path = dir.path().join("without");
        let mut bytes = vec![0u8; 3 << 20];
        // A near miss straddling the first chunk boundary.
        let near = b"ACPI: Core revisio";
        bytes[(1 << 20) - 9..(1 << 20) - 9 + near.len()].copy_from_slice(near);
        std::fs::write(&path, &bytes).expect("write");
        let mut f = File::open(&path).expect("open");
        assert_eq!(
            image_contains(&mut f, [ACPI_CORE_MARKER]).expect("read"),
            [false]
        );
        // Both markers, the shorter one across the last boundary.
        bytes[(2 << 20) - 3..(2 << 20) - 3 + SYSCALL_VIA_PF_MARKER.len()]
            .copy_from_slice(SYSCALL_VIA_PF_MARKER);
        bytes[100..100 + ACPI_CORE_MARKER.len()].copy_from_slice(ACPI_CORE_MARKER);
        std::fs::write(&path, &bytes).expect("write");
        let mut f = File::open(&path).expect("open");
        assert_eq!(
            image_contains(&mut f, [ACPI_CORE_MARKER, SYSCALL_VIA_PF_MARKER]).expect("read"),
            [true, true]
        );
    }

    #[test]
    fn format_is_detected_from_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elf = dir.path().join("elf");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01").expect("write");
        let mut f = File::open(&elf).expect("open");
        assert_eq!(detect_format(&mut f, &elf).expect("elf"), KernelFormat::Elf);

        let bz = dir.path().join("bz");
        let mut bytes = vec![0u8; 0x300];
        bytes[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&bz, &bytes).expect("write");
        let mut f = File::open(&bz).expect("open");
        assert_eq!(
            detect_format(&mut f, &bz).expect("bz"),
            KernelFormat::BzImage
        );

        let txt = dir.path().join("txt");
        std::fs::write(&txt, b"hello").expect("write");
        let mut f = File::open(&txt).expect("open");
        assert!(matches!(
            detect_format(&mut f, &txt),
            Err(BootError::NotAKernel(_))
        ));
    }

    /// A little-endian ELF64 with no segments and these sections (after the
    /// null section and `.shstrtab`).
    fn elf_with_sections(names: &[&str]) -> Vec<u8> {
        let mut strtab = b"\0.shstrtab\0".to_vec();
        let mut name_offsets = Vec::new();
        for name in names {
            name_offsets.push(strtab.len() as u32);
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        let shoff = (64 + strtab.len()).next_multiple_of(8);
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(16, 0);
        elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
        elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: x86-64
        elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
        elf.extend_from_slice(&0u64.to_le_bytes()); // e_entry
        elf.extend_from_slice(&0u64.to_le_bytes()); // e_phoff
        elf.extend_from_slice(&(shoff as u64).to_le_bytes());
        elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [64u16, 56, 0, 64, names.len() as u16 + 2, 1] {
            // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
            elf.extend_from_slice(&half.to_le_bytes());
        }
        elf.extend_from_slice(&strtab);
        elf.resize(shoff, 0);
        let section = |name: u32, kind: u32, offset: u64, size: u64| {
            let mut h = Vec::with_capacity(64);
            h.extend_from_slice(&name.to_le_bytes());
            h.extend_from_slice(&kind.to_le_bytes());
            h.extend_from_slice(&[0; 24]); // flags, addr, and the offset below
            h[24..32].copy_from_slice(&offset.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&[0; 24]); // link, info, addralign, entsize
            h
        };
        elf.extend(section(0, 0, 0, 0));
        elf.extend(section(1, 3, 64, strtab.len() as u64)); // SHT_STRTAB
        for offset in name_offsets {
            elf.extend(section(offset, 1, 0, 0)); // SHT_PROGBITS, empty
        }
        elf
    }

    #[test]
    fn btf_is_found_by_its_section_name() {
        assert!(carries_btf(
            elf_with_sections(&[".text", ".BTF", ".BTF_ids"]).as_slice()
        ));
        assert!(!carries_btf(
            elf_with_sections(&[".text", ".BTF_ids", ".BTF.ext"]).as_slice()
        ));
        assert!(!carries_btf(elf_with_sections(&[]).as_slice()));
        // Read from a file as a vmlinux is, without holding all of it.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, elf_with_sections(&[".BTF"])).expect("write");
        let mut file = File::open(&path).expect("open");
        assert!(carries_btf(&ReadCache::new(&mut file)));
    }

    #[test]
    fn unreadable_section_headers_mean_no_btf() {
        let elf = elf_with_sections(&[".BTF"]);
        assert!(!carries_btf(&elf[..elf.len() - 10]), "table cut short");
        assert!(!carries_btf(&elf[..40]), "header cut short");
        let mut big_endian = elf;
        big_endian[5] = 2;
        assert!(!carries_btf(big_endian.as_slice()));
        assert!(!carries_btf(b"not an elf at all".as_slice()));
    }
}
