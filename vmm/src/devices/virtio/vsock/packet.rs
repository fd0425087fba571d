//! The virtio-vsock packet header (virtio spec 5.10.6): 44 little-endian
//! bytes in front of every packet, read from the guest's tx buffers and
//! written into its rx buffers.
//!
//! The header is parsed field by field rather than through a `#[repr(C)]`
//! struct because its natural layout has no padding only when packed, and
//! byte-wise parsing keeps it correct on any host endianness.

use std::io::{Read, Write};

use virtio_queue::{Reader, Writer};

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;

/// The only socket type we carry: SOCK_STREAM.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (`enum virtio_vsock_op`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset (refused, or torn down).
    pub const RST: u16 = 3;
    /// The sender will stop receiving and/or sending (see the flags).
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// The sender's buffer space, unsolicited.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the receiver for a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags: the connection is being closed.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Errors reading or writing a header in guest buffers.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The chain's readable part is shorter than a header.
    #[error("vsock packet header needs {HDR_LEN} bytes, the buffer has {0}")]
    ShortHeader(usize),
    /// The rx buffer cannot hold a header.
    #[error("vsock rx buffer needs at least {HDR_LEN} bytes, it has {0}")]
    ShortBuffer(usize),
    /// The guest buffers could not be accessed.
    #[error("vsock packet header in guest memory: {0}")]
    Memory(#[source] std::io::Error),
}

/// `struct virtio_vsock_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length (OP_RW only).
    pub len: u32,
    /// Socket type, [`TYPE_STREAM`].
    pub socket_type: u16,
    /// One of [`op`].
    pub op: u16,
    /// SHUTDOWN flags.
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

impl PacketHeader {
    /// Parses the wire format.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(v)
        };
        let u32_at = |i: usize| {
            let mut v = [0u8; 4];
            v.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(v)
        };
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            socket_type: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The wire format.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.socket_type.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Reads a header from the start of a tx chain.
    pub fn read_from(reader: &mut Reader) -> Result<Self, PacketError> {
        let available = reader.available_bytes();
        if available < HDR_LEN {
            return Err(PacketError::ShortHeader(available));
        }
        let mut b = [0u8; HDR_LEN];
        reader.read_exact(&mut b).map_err(PacketError::Memory)?;
        Ok(Self::from_bytes(&b))
    }

    /// Writes the header at the start of an rx chain.
    pub fn write_to(&self, writer: &mut Writer) -> Result<(), PacketError> {
        let available = writer.available_bytes();
        if available < HDR_LEN {
            return Err(PacketError::ShortBuffer(available));
        }
        writer
            .write_all(&self.to_bytes())
            .map_err(PacketError::Memory)
    }

    /// A reply to this packet: addresses swapped, everything else zero.
    pub fn reply(&self, op: u16) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            socket_type: TYPE_STREAM,
            op,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_the_little_endian_wire_format() {
        let h = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 5000,
            len: 4096,
            socket_type: TYPE_STREAM,
            op: op::RW,
            flags: SHUTDOWN_BOTH,
            buf_alloc: 256 * 1024,
            fwd_cnt: u32::MAX,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 3);
        assert_eq!(&b[16..20], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(b[30], op::RW as u8);
        assert_eq!(PacketHeader::from_bytes(&b), h);
    }

    #[test]
    fn a_reply_swaps_the_addresses() {
        let h = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1,
            dst_port: 9,
            len: 7,
            ..PacketHeader::default()
        };
        let r = h.reply(op::RST);
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port, r.len, r.op),
            (2, 3, 9, 1, 0, op::RST)
        );
    }
}
