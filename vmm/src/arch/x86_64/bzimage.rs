//! A bzImage's compressed kernel, decompressed by the VMM.
//!
//! A bzImage carries its kernel (an ELF vmlinux followed by its relocation
//! table) compressed, behind a small decompressor that runs as guest code.
//! On KVM hosts that emulate guest kernel mode (DESIGN.md) that decompressor
//! runs at a few million instructions a second: Debian's 14 MB LZ4 payload
//! took about two minutes there before the kernel printed its first line.
//! The VMM does the same work natively in a fraction of a second and loads
//! the ELF inside, as it loads any vmlinux (PVH entry when the kernel has
//! the note, else the 64-bit entry with the bzImage's setup header).
//!
//! What the guest's decompressor does besides decompressing is choose a
//! random place for the kernel (KASLR). A kernel loaded from its ELF runs at
//! its link address instead, as every PVH or ELF boot does (Firecracker's
//! included), which is why the guest keeps the job where its own
//! decompressor is cheap.
//!
//! Formats: the four a distribution kernel ships with (Debian and Ubuntu
//! LZ4, Fedora and others XZ or ZSTD, older kernels gzip). A kernel
//! compressed with bzip2, LZMA or LZO is left to its own decompressor.

use std::io::Read;

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

/// Errors reading or decompressing a bzImage's payload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    /// The image is shorter than its setup header or its header predates
    /// boot protocol 2.08, the first to say where the payload is.
    #[error("the setup header does not locate the payload (boot protocol {0:#06x}, 2.08 or later needed)")]
    OldProtocol(u16),
    /// The payload offset or length points outside the file.
    #[error("the payload ({offset:#x}+{length:#x}) lies outside the {file_len}-byte image")]
    OutOfBounds {
        /// Payload start in the file.
        offset: u64,
        /// Payload length.
        length: u64,
        /// File length.
        file_len: u64,
    },
    /// A compression the VMM does not decompress (the guest still can).
    #[error("payload compressed with {0}, which the VMM leaves to the kernel's own decompressor")]
    Unsupported(&'static str),
    /// The payload starts with no known compression magic.
    #[error("payload compression not recognised (first bytes {0:02x?})")]
    Unknown(Vec<u8>),
    /// The decompressed kernel would not fit.
    #[error("the decompressed kernel would be {size} bytes, more than the {limit} bytes allowed")]
    TooLarge {
        /// The size the payload declares (or reached).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The compressed stream is damaged.
    #[error("{format} payload is corrupt: {reason}")]
    Corrupt {
        /// The compression.
        format: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// The stream decompressed to another size than the image declares.
    #[error("{format} payload decompressed to {got} bytes, the image declares {declared}")]
    SizeMismatch {
        /// The compression.
        format: &'static str,
        /// The size in the payload's trailer.
        declared: u64,
        /// What came out.
        got: u64,
    },
    /// What came out is not an ELF file.
    #[error("the decompressed payload is not an ELF vmlinux")]
    NotElf,
}

impl PayloadError {
    /// Whether the payload is not the VMM's to decompress (a compression
    /// it leaves to the kernel, or a header too old or unknown to locate
    /// it) rather than damaged: the guest's own decompressor gets it.
    pub fn leaves_it_to_the_guest(&self) -> bool {
        matches!(
            self,
            Self::OldProtocol(_) | Self::Unknown(_) | Self::Unsupported(_)
        )
    }
}

/// The compressions Linux can build a bzImage with, known by their magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`CONFIG_KERNEL_GZIP`).
    Gzip,
    /// XZ with the x86 BCJ filter (`CONFIG_KERNEL_XZ`).
    Xz,
    /// LZ4 legacy frames (`CONFIG_KERNEL_LZ4`).
    Lz4,
    /// Zstandard (`CONFIG_KERNEL_ZSTD`).
    Zstd,
    /// bzip2 (`CONFIG_KERNEL_BZIP2`).
    Bzip2,
    /// LZMA alone (`CONFIG_KERNEL_LZMA`).
    Lzma,
    /// LZO (`CONFIG_KERNEL_LZO`).
    Lzo,
}

impl Compression {
    /// Tells the compression from the payload's first bytes.
    pub fn from_magic(data: &[u8]) -> Option<Self> {
        const MAGICS: [(&[u8], Compression); 7] = [
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (b"BZh", Compression::Bzip2),
            (&[0x5d, 0x00, 0x00], Compression::Lzma),
            (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| data.starts_with(magic))
            .map(|(_, c)| *c)
    }

    /// The name in messages and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Xz => "xz",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
            Self::Bzip2 => "bzip2",
            Self::Lzma => "lzma",
            Self::Lzo => "lzo",
        }
    }
}

/// A bzImage's compressed kernel, located through its setup header.
#[derive(Debug)]
pub struct Payload<'a> {
    /// How it is compressed.
    pub compression: Compression,
    /// The compressed stream, without the size trailer.
    data: &'a [u8],
    /// The decompressed size the build appended (Linux's `size_append`).
    declared_size: u64,
}

/// Where the setup header starts in a bzImage file (and in the zero page).
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Setup header fields (offsets from the file's start, Documentation/arch/x86/boot.rst).
const SETUP_SECTS: usize = SETUP_HEADER_OFFSET;
const VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;
/// 2.10 added `pref_address` and `init_size`.
const INIT_SIZE_VERSION: u16 = 0x020a;
/// 2.08 added `payload_offset` and `payload_length`.
const PAYLOAD_FIELDS_VERSION: u16 = 0x0208;
/// An LZ4 legacy block holds at most 8 MiB once decompressed.
const LZ4_LEGACY_BLOCK_MAX: usize = 8 << 20;
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

fn u16_at(image: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(image: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?))
}

/// Finds the payload of `image`, a whole bzImage file.
pub fn payload(image: &[u8]) -> Result<Payload<'_>, PayloadError> {
    let version = u16_at(image, VERSION).unwrap_or(0);
    let (Some(&sects), Some(offset), Some(length)) = (
        image.get(SETUP_SECTS),
        u32_at(image, PAYLOAD_OFFSET),
        u32_at(image, PAYLOAD_LENGTH),
    ) else {
        return Err(PayloadError::OldProtocol(version));
    };
    if version < PAYLOAD_FIELDS_VERSION {
        return Err(PayloadError::OldProtocol(version));
    }
    // A zero means 4, for compatibility with the oldest boot sectors.
    let setup_sects = if sects == 0 { 4 } else { u64::from(sects) };
    let start = (setup_sects + 1) * 512 + u64::from(offset);
    let out_of_bounds = || PayloadError::OutOfBounds {
        offset: start,
        length: u64::from(length),
        file_len: image.len() as u64,
    };
    let end = start + u64::from(length);
    let whole = usize::try_from(start)
        .ok()
        .zip(usize::try_from(end).ok())
        .and_then(|(s, e)| image.get(s..e))
        .ok_or_else(out_of_bounds)?;
    // Every kernel compression rule ends with the decompressed size, 32 bits
    // little-endian (scripts/Makefile.lib, `size_append`).
    let split = whole.len().checked_sub(4).ok_or_else(out_of_bounds)?;
    let (data, trailer) = whole.split_at(split);
    let declared_size = u64::from(u32_at(trailer, 0).ok_or_else(out_of_bounds)?);
    let compression = Compression::from_magic(data)
        .ok_or_else(|| PayloadError::Unknown(data.iter().take(6).copied().collect()))?;
    Ok(Payload {
        compression,
        data,
        declared_size,
    })
}

/// The setup header of `image`, a whole bzImage file, as the zero page of
/// a 64-bit entry carries it.
pub fn setup_header(image: &[u8]) -> Option<setup_header> {
    let mut header = setup_header::default();
    let len = header.as_slice().len();
    header
        .as_mut_slice()
        .copy_from_slice(image.get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + len)?);
    Some(header)
}

/// Where the kernel's memory ends once it runs: its preferred load address
/// plus the `init_size` it needs there (boot protocol 2.10 and later, else
/// `None`).
pub fn init_end(image: &[u8]) -> Option<u64> {
    if u16_at(image, VERSION)? < INIT_SIZE_VERSION {
        return None;
    }
    let pref_address =
        u64::from_le_bytes(image.get(PREF_ADDRESS..PREF_ADDRESS + 8)?.try_into().ok()?);
    pref_address.checked_add(u64::from(u32_at(image, INIT_SIZE)?))
}

impl Payload<'_> {
    /// The size the image says the kernel decompresses to.
    pub fn declared_size(&self) -> u64 {
        self.declared_size
    }

    /// Decompresses the payload into the ELF vmlinux it holds (followed by
    /// the relocation table the guest's decompressor would apply, which a
    /// kernel loaded at its link address does not need). Refuses to produce
    /// more than `limit` bytes, whatever the stream says.
    pub fn decompress(&self, limit: u64) -> Result<Vec<u8>, PayloadError> {
        let format = self.compression.name();
        if self.declared_size > limit {
            return Err(PayloadError::TooLarge {
                size: self.declared_size,
                limit,
            });
        }
        // Bounded by `limit` above, which the caller derives from guest memory.
        let capacity = self.declared_size as usize;
        let stream = |reader: Box<dyn Read + '_>| {
            read_bounded(reader, capacity, limit).map_err(|e| e.to_string())
        };
        let out = match self.compression {
            Compression::Lz4 => lz4_legacy(self.data, capacity),
            Compression::Gzip => stream(Box::new(flate2::read::MultiGzDecoder::new(self.data))),
            Compression::Xz => stream(Box::new(liblzma::read::XzDecoder::new_multi_decoder(
                self.data,
            ))),
            Compression::Zstd => ruzstd::decoding::StreamingDecoder::new(self.data)
                .map_err(|e| e.to_string())
                .and_then(|decoder| stream(Box::new(decoder))),
            other => return Err(PayloadError::Unsupported(other.name())),
        }
        .map_err(|reason| PayloadError::Corrupt { format, reason })?;
        let got = out.len() as u64;
        if got > limit {
            return Err(PayloadError::TooLarge { size: got, limit });
        }
        if got != self.declared_size {
            return Err(PayloadError::SizeMismatch {
                format,
                declared: self.declared_size,
                got,
            });
        }
        if !out.starts_with(b"\x7fELF") {
            return Err(PayloadError::NotElf);
        }
        Ok(out)
    }
}

/// Reads `reader` to its end, but never more than `limit + 1` bytes: one
/// past the limit is enough to tell the caller it was exceeded.
fn read_bounded(reader: impl Read, capacity: usize, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity);
    reader.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    Ok(out)
}

/// The LZ4 legacy format `lz4 -l` writes and Linux's `unlz4` reads: a magic
/// number, then blocks, each a 32-bit compressed length and an LZ4 block of
/// at most 8 MiB decompressed. Another magic may start a new stream.
fn lz4_legacy(mut data: &[u8], capacity: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; capacity];
    let mut filled = 0;
    let mut seen_magic = false;
    while !data.is_empty() {
        let word: [u8; 4] = data
            .get(..4)
            .and_then(|w| w.try_into().ok())
            .ok_or_else(|| format!("{} stray bytes at the end", data.len()))?;
        data = &data[4..];
        if word == LZ4_LEGACY_MAGIC {
            seen_magic = true;
            continue;
        }
        if !seen_magic {
            return Err("no LZ4 legacy magic".to_string());
        }
        let len = u32::from_le_bytes(word) as usize;
        let block = data
            .get(..len)
            .ok_or_else(|| format!("block of {len} bytes, {} left", data.len()))?;
        data = &data[len..];
        let room = (capacity - filled).min(LZ4_LEGACY_BLOCK_MAX);
        let n = lz4_flex::block::decompress_into(block, &mut out[filled..filled + room])
            .map_err(|e| format!("block at output offset {filled}: {e}"))?;
        filled += n;
    }
    out.truncate(filled);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A fake kernel: an ELF magic and enough varied bytes to compress.
    fn vmlinux(len: usize) -> Vec<u8> {
        let mut v = b"\x7fELF\x02\x01\x01".to_vec();
        let mut x = 0x1234_5678u32;
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Runs of repeated bytes, as code and zeroed data have.
            v.extend(std::iter::repeat_n((x % 7) as u8, (x % 23) as usize));
        }
        v.truncate(len);
        v
    }

    fn lz4_legacy_stream(data: &[u8], block: usize) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(block) {
            let c = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        }
        out
    }

    /// A bzImage around `stream` (with Linux's size trailer for `size`):
    /// boot protocol 2.15, 27 setup sectors, the payload 0x3c0 bytes into
    /// the protected-mode code.
    fn bzimage(stream: &[u8], size: u32) -> Vec<u8> {
        let start = 28 * 512 + 0x3c0;
        let mut image = vec![0u8; start];
        image[SETUP_SECTS] = 27;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        image[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0x3c0u32.to_le_bytes());
        let length = stream.len() as u32 + 4;
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&length.to_le_bytes());
        image.extend_from_slice(stream);
        image.extend_from_slice(&size.to_le_bytes());
        image.extend_from_slice(&[0u8; 100]);
        image
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).expect("xz");
        e.finish().expect("xz")
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    #[test]
    fn every_supported_compression_round_trips() {
        let kernel = vmlinux(3 << 20);
        let size = kernel.len() as u32;
        for (stream, expect) in [
            (
                lz4_legacy_stream(&kernel, LZ4_LEGACY_BLOCK_MAX),
                Compression::Lz4,
            ),
            (lz4_legacy_stream(&kernel, 1 << 20), Compression::Lz4),
            (gzip(&kernel), Compression::Gzip),
            (xz(&kernel), Compression::Xz),
            (zstd(&kernel), Compression::Zstd),
        ] {
            let image = bzimage(&stream, size);
            let p = payload(&image).expect("payload");
            assert_eq!(p.compression, expect);
            assert_eq!(p.declared_size(), u64::from(size));
            let out = p
                .decompress(64 << 20)
                .unwrap_or_else(|e| panic!("{}: {e}", expect.name()));
            assert!(out == kernel, "{} output differs", expect.name());
        }
    }

    #[test]
    fn a_declared_size_over_the_limit_is_refused_before_decompressing() {
        let kernel = vmlinux(1 << 20);
        let image = bzimage(&gzip(&kernel), kernel.len() as u32);
        let p = payload(&image).expect("payload");
        assert_eq!(
            p.decompress(1000).expect_err("too large"),
            PayloadError::TooLarge {
                size: kernel.len() as u64,
                limit: 1000
            }
        );
    }

    #[test]
    fn a_stream_longer_than_declared_stops_at_the_limit() {
        // A small declared size and a big stream: a decompression bomb
        // reads at most one byte past the limit.
        let kernel = vmlinux(4 << 20);
        for stream in [gzip(&kernel), xz(&kernel), zstd(&kernel)] {
            let image = bzimage(&stream, 4096);
            let p = payload(&image).expect("payload");
            assert!(matches!(
                p.decompress(1 << 20),
                Err(PayloadError::TooLarge { size, limit: 1_048_576 }) if size == (1 << 20) + 1
            ));
        }
        // LZ4 writes into a buffer of the declared size and cannot overrun it.
        let image = bzimage(&lz4_legacy_stream(&kernel, 1 << 20), 4096);
        let err = payload(&image)
            .expect("payload")
            .decompress(1 << 20)
            .expect_err("overrun");
        assert!(
            matches!(err, PayloadError::Corrupt { format: "lz4", .. }),
            "{err}"
        );
    }

    #[test]
    fn damaged_payloads_get_errors_not_panics() {
        let kernel = vmlinux(1 << 20);
        let size = kernel.len() as u32;
        let streams = [
            lz4_legacy_stream(&kernel, 256 << 10),
            gzip(&kernel),
            xz(&kernel),
            zstd(&kernel),
        ];
        let mut x = 7u64;
        for stream in &streams {
            for round in 0..40 {
                let mut s = stream.clone();
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match round % 3 {
                    // Truncated.
                    0 => s.truncate(((x >> 33) as usize) % s.len()),
                    // A flipped byte after the magic.
                    1 => {
                        let at = 6 + ((x >> 33) as usize) % (s.len() - 6);
                        s[at] ^= 0x5a;
                    }
                    // Garbage appended.
                    _ => s.extend_from_slice(&x.to_le_bytes()),
                }
                let image = bzimage(&s, size);
                if let Ok(p) = payload(&image) {
                    // Either an error, or (a flip the format cannot detect,
                    // e.g. inside an LZ4 literal) bytes of the declared size.
                    if let Ok(out) = p.decompress(8 << 20) {
                        assert_eq!(out.len(), kernel.len());
                    }
                }
            }
        }
    }

    #[test]
    fn header_fields_that_point_outside_the_file_are_refused() {
        let kernel = vmlinux(4096);
        let mut image = bzimage(&gzip(&kernel), 4096);
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            payload(&image),
            Err(PayloadError::OutOfBounds { .. })
        ));
        let mut image = bzimage(&gzip(&kernel), 4096);
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            payload(&image),
            Err(PayloadError::OutOfBounds { .. })
        ));
        let mut image = bzimage(&gzip(&kernel), 4096);
        image[VERSION..VERSION + 2].copy_from_slice(&0x0206u16.to_le_bytes());
        assert_eq!(
            payload(&image).expect_err("old"),
            PayloadError::OldProtocol(0x0206)
        );
        assert_eq!(
            payload(&image[..0x100]).expect_err("short"),
            PayloadError::OldProtocol(0)
        );
    }

    #[test]
    fn init_end_is_the_preferred_address_plus_init_size() {
        let mut image = bzimage(&gzip(&vmlinux(4096)), 4096);
        image[PREF_ADDRESS..PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        image[INIT_SIZE..INIT_SIZE + 4].copy_from_slice(&0x337_7000u32.to_le_bytes());
        assert_eq!(init_end(&image), Some(0x437_7000));
        image[VERSION..VERSION + 2].copy_from_slice(&0x0209u16.to_le_bytes());
        assert_eq!(init_end(&image), None);
        assert_eq!(init_end(&image[..0x100]), None);
    }

    #[test]
    fn other_compressions_are_left_to_the_guest_and_unknown_ones_named() {
        let image = bzimage(b"BZh91AY&SY\x00\x00", 4096);
        let p = payload(&image).expect("payload");
        assert_eq!(p.compression, Compression::Bzip2);
        assert_eq!(
            p.decompress(1 << 20).expect_err("bzip2"),
            PayloadError::Unsupported("bzip2")
        );
        let image = bzimage(b"\x00\x01\x02\x03\x04\x05\x06", 4096);
        assert_eq!(
            payload(&image).expect_err("unknown"),
            PayloadError::Unknown(vec![0, 1, 2, 3, 4, 5])
        );
        // Those two and an old header go to the guest; damage does not.
        assert!(PayloadError::Unsupported("bzip2").leaves_it_to_the_guest());
        assert!(PayloadError::Unknown(vec![0]).leaves_it_to_the_guest());
        assert!(PayloadError::OldProtocol(0x0206).leaves_it_to_the_guest());
        assert!(!PayloadError::NotElf.leaves_it_to_the_guest());
        let corrupt = PayloadError::Corrupt {
            format: "lz4",
            reason: String::new(),
        };
        assert!(!corrupt.leaves_it_to_the_guest());
    }

    #[test]
    fn the_setup_header_is_read_from_its_offset() {
        let image = bzimage(&gzip(&vmlinux(4096)), 4096);
        let header = setup_header(&image).expect("header");
        assert_eq!({ header.setup_sects }, 27);
        assert_eq!({ header.header }, u32::from_le_bytes(*b"HdrS"));
        assert_eq!({ header.version }, 0x020f);
        assert!(setup_header(&image[..0x200]).is_none());
    }

    #[test]
    fn a_payload_that_is_not_an_elf_is_refused() {
        let data = vec![0x42u8; 5000];
        let image = bzimage(&gzip(&data), data.len() as u32);
        assert_eq!(
            payload(&image)
                .expect("payload")
                .decompress(1 << 20)
                .expect_err("not elf"),
            PayloadError::NotElf
        );
    }
}
