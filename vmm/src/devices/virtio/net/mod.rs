//! virtio-net on a Linux tap: one rx and one tx queue, the guest's MAC and
//! link status in config space, and checksum/segmentation offloads passed
//! through to the tap when the kernel accepts them.
//!
//! Frames are copied between guest buffers and one VMM buffer per
//! direction. The copy keeps guest memory out of system calls and gives
//! every transmitted frame one contiguous place to be looked at, which is
//! where the instance metadata service will intercept its traffic.
//!
//! Back-pressure is the tap's own queue: when the guest has no rx buffer
//! the device keeps at most one frame read from the tap and stops reading;
//! the kernel queues (and eventually drops) the rest until the guest posts
//! buffers and notifies the rx queue.

pub mod tap;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Instant;

use ec2lab_vmm_api::metadata::InstanceMetadata;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use self::tap::{Tap, TapError, VNET_HDR_LEN};
use super::{
    device_type, read_config_bytes, ready_queue, BackendEvents, DeviceCounters, UsedQueues,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::imds::stack::{self as imds_stack, ImdsStack};
use crate::imds::ImdsError;

/// Queue the device puts received frames on.
pub const RX_QUEUE: usize = 0;
/// Queue the guest puts frames to send on.
pub const TX_QUEUE: usize = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];

/// Largest packet either way, vnet header included: a 64 KiB GSO frame
/// plus Ethernet header, as Linux sizes its "big packet" rx buffers.
pub const MAX_PACKET: usize = 65562;

/// Backend token of the tap descriptor.
const TAP_TOKEN: u32 = 0;
/// Backend token of the metadata service's timer.
const IMDS_TIMER_TOKEN: u32 = 1;

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS: usize = 10;

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// Errors creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened or set up.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The metadata service could not be set up.
    #[error("instance metadata: {0}")]
    Metadata(#[from] ImdsError),
    /// The metadata service's timer could not be made.
    #[error("instance metadata timer: {0}")]
    Timer(std::io::Error),
    /// The MAC given cannot be a network card's address.
    #[error("MAC {mac} for tap {tap} is a multicast address")]
    MulticastMac {
        /// The tap.
        tap: String,
        /// The address, formatted.
        mac: String,
    },
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A locally administered unicast MAC (06:00:xx:xx:xx:xx) derived from the
/// tap name, so a guest keeps its address (and DHCP lease) across restarts.
pub fn default_mac(tap_name: &str) -> [u8; 6] {
    // FNV-1a: tiny, stable across Rust versions, good enough to spread names.
    let hash = tap_name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let [a, b, c, d] = hash.to_be_bytes();
    [0x06, 0x00, a, b, c, d]
}

/// Which `TUN_F_*` offloads follow from the guest's negotiated features:
/// what the kernel may hand us is what the guest said it can take.
fn tap_offloads(acked: u64) -> u32 {
    if acked & bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        // Every segmentation offload builds on partial checksums; tun
        // refuses them alone.
        return 0;
    }
    [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ]
    .into_iter()
    .filter(|(feature, _)| acked & bit(*feature) != 0)
    .fold(libc::TUN_F_CSUM, |flags, (_, tun)| flags | tun)
}

/// What became of an rx chain.
enum RxOutcome {
    /// The frame went in; this many bytes were written.
    Delivered(u32),
    /// The chain is unusable (read-only or outside guest memory); the frame
    /// waits for the next one.
    BadChain,
    /// The chain is too small for the frame, which is dropped: the next
    /// buffer is likely the same size.
    TooSmall,
}

/// A network card whose other end is a tap interface.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    acked_features: u64,
    counters: DeviceCounters,
    /// The frame read from the tap and not yet delivered, vnet header first.
    rx_packet: Vec<u8>,
    /// Length of the frame in `rx_packet`, if one is waiting.
    rx_pending: Option<usize>,
    /// The packet being transmitted, gathered from the guest's descriptors.
    tx_packet: Vec<u8>,
    /// The instance metadata service, on the card that serves it.
    imds: Option<Metadata>,
}

/// The metadata service on a card and the timer that drives its TCP
/// (retransmissions, idle connections) between guest frames.
struct Metadata {
    stack: ImdsStack,
    timer: TimerFd,
}

impl Metadata {
    /// Arms the timer for the stack's next deadline (or disarms it).
    fn rearm(&mut self) {
        let result = match self.stack.poll_delay(Instant::now()) {
            // A zero duration would disarm a timerfd.
            Some(delay) => self
                .timer
                .reset(delay.max(std::time::Duration::from_millis(1)), None),
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            log::warn!("virtio-net: metadata timer: {e}");
        }
    }
}

impl Net {
    /// Opens tap `tap_name` for a card with address `mac` (derived from the
    /// name when not given).
    pub fn open(tap_name: &str, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        let tap = Tap::open(tap_name)?;
        Self::with_tap(tap, mac)
    }

    /// A card on an already opened tap.
    pub fn with_tap(tap: Tap, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        let mac = mac.unwrap_or_else(|| default_mac(tap.name()));
        if mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac {
                tap: tap.name().to_string(),
                mac: format_mac(&mac),
            });
        }
        Ok(Self {
            tap,
            mac,
            acked_features: 0,
            counters: DeviceCounters::default(),
            rx_packet: vec![0; MAX_PACKET],
            rx_pending: None,
            tx_packet: vec![0; MAX_PACKET],
            imds: None,
        })
    }

    /// Serves the instance metadata service `doc` on this card: the
    /// guest's frames for 169.254.169.254 go to it instead of the tap.
    pub fn serve_metadata(&mut self, doc: InstanceMetadata) -> Result<(), NetError> {
        let stack = ImdsStack::new(doc, self.mac, Instant::now())?;
        let timer = TimerFd::new().map_err(|e| NetError::Timer(e.into()))?;
        // Non-blocking: a rearm between epoll's report and the read clears
        // the expiry, and the read must then return, not wait.
        // SAFETY: F_SETFL on a descriptor this function owns; no pointers.
        if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(NetError::Timer(std::io::Error::last_os_error()));
        }
        self.imds = Some(Metadata { stack, timer });
        Ok(())
    }

    /// The card's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The tap's interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Sends every frame on the tx queue.
    fn process_tx(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> UsedQueues {
        let Some(queue) = ready_queue(queues, TX_QUEUE) else {
            return UsedQueues::NONE;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if let Some(len) = self.gather_tx(mem, chain) {
                // Lend the buffer out so `transmit` may use all of `self`.
                let packet = std::mem::take(&mut self.tx_packet);
                if let Some(packet) = packet.get(..len) {
                    self.transmit(packet);
                }
                self.tx_packet = packet;
            }
            // Nothing is written into tx buffers.
            if queue.add_used(mem, head, 0).is_err() {
                self.counters.error();
            }
            used = true;
        }
        let mut used = UsedQueues::when(used, TX_QUEUE);
        if self.imds.as_ref().is_some_and(|m| m.stack.has_frames()) {
            // The metadata service answered: its frames go to the guest now.
            used |= self.process_rx(mem, queues);
        }
        used
    }

    /// Copies a tx chain (vnet header and frame, device-readable only) into
    /// `tx_packet`; returns its length, or `None` for a malformed chain.
    fn gather_tx(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Option<usize> {
        if chain.clone().writable().next().is_some() {
            return self.drop_malformed_tx("device-writable descriptor");
        }
        let Ok(mut reader) = Reader::new(mem, chain) else {
            return self.drop_malformed_tx("buffer outside guest memory");
        };
        let len = reader.available_bytes();
        if len <= VNET_HDR_LEN || len > MAX_PACKET {
            return self.drop_malformed_tx("bad length");
        }
        let packet = self.tx_packet.get_mut(..len)?;
        match std::io::Read::read_exact(&mut reader, packet) {
            Ok(()) => Some(len),
            Err(_) => self.drop_malformed_tx("unreadable buffer"),
        }
    }

    fn drop_malformed_tx(&self, why: &str) -> Option<usize> {
        // Debug level: a guest could repeat this at will.
        log::debug!("virtio-net {}: dropping tx chain: {why}", self.tap.name());
        self.counters.error();
        None
    }

    /// Sends one packet from the guest: the vnet header, then the Ethernet
    /// frame. Every frame the guest transmits passes here, which is where
    /// frames for the instance metadata service (169.254.169.254) are
    /// diverted to the in-VMM stack instead of the tap.
    ///
    /// A tap that cannot take the frame right now drops it: the kernel tap
    /// rarely blocks on write, and TCP in the guest recovers a lost frame.
    fn transmit(&mut self, packet: &[u8]) {
        let frame_len = packet.len().saturating_sub(VNET_HDR_LEN) as u64;
        if let Some(imds) = &mut self.imds {
            let frame = packet.get(VNET_HDR_LEN..).unwrap_or_default();
            if imds_stack::diverts(frame) {
                imds.stack.receive(frame, Instant::now());
                imds.rearm();
                self.counters.ok(frame_len);
                return;
            }
        }
        match self.tap.write(packet) {
            Ok(_) => self.counters.ok(frame_len),
            Err(e) => {
                log::debug!("virtio-net {}: frame not sent: {e}", self.tap.name());
                self.counters.error();
            }
        }
    }

    /// Moves frames from the tap to the rx queue until the tap is empty or
    /// the guest has no buffer left. Does nothing while the driver is not
    /// active, leaving frames queued in the tap.
    fn process_rx(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> UsedQueues {
        let Some(queue) = ready_queue(queues, RX_QUEUE) else {
            return UsedQueues::NONE;
        };
        let mut used = false;
        loop {
            if self.rx_pending.is_none() {
                // The metadata service's answers go first: they are few,
                // and they wait in the VMM's memory, not the kernel's.
                self.rx_pending = self.metadata_frame().or_else(|| self.read_tap());
            }
            let Some(len) = self.rx_pending else {
                break;
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // Keep the frame; the rx queue notification resumes here.
                break;
            };
            let head = chain.head_index();
            let written = match self.deliver(mem, chain, len) {
                RxOutcome::Delivered(written) => {
                    self.counters.ok((len - VNET_HDR_LEN) as u64);
                    self.rx_pending = None;
                    written
                }
                RxOutcome::BadChain => {
                    self.counters.error();
                    0
                }
                RxOutcome::TooSmall => {
                    self.counters.error();
                    self.rx_pending = None;
                    0
                }
            };
            if queue.add_used(mem, head, written).is_err() {
                self.counters.error();
            }
            used = true;
        }
        UsedQueues::when(used, RX_QUEUE)
    }

    /// Puts the metadata service's next frame into `rx_packet` behind a
    /// plain vnet header (no offloads: the stack checksums everything).
    fn metadata_frame(&mut self) -> Option<usize> {
        let frame = self.imds.as_mut()?.stack.next_frame()?;
        let len = VNET_HDR_LEN + frame.len();
        let packet = self.rx_packet.get_mut(..len)?;
        packet[..VNET_HDR_LEN].fill(0);
        packet[VNET_HDR_LEN..].copy_from_slice(&frame);
        Some(len)
    }

    /// Reads the next frame from the tap into `rx_packet`; `None` when the
    /// tap has nothing (more) to give.
    fn read_tap(&mut self) -> Option<usize> {
        loop {
            match self.tap.read(&mut self.rx_packet) {
                Ok(0) => return None,
                Ok(n) if n > VNET_HDR_LEN => return Some(n),
                // A frame without even a header: the kernel should never
                // send one; skip it.
                Ok(_) => self.counters.error(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) => {
                    log::warn!("virtio-net {}: reading the tap: {e}", self.tap.name());
                    return None;
                }
            }
        }
    }

    /// Writes the waiting frame (`len` bytes of `rx_packet`) into `chain`.
    fn deliver(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        len: usize,
    ) -> RxOutcome {
        if chain.clone().readable().next().is_some() {
            log::debug!("virtio-net {}: rx chain is not writable", self.tap.name());
            return RxOutcome::BadChain;
        }
        let Ok(mut writer) = Writer::new(mem, chain) else {
            log::debug!(
                "virtio-net {}: rx chain outside guest memory",
                self.tap.name()
            );
            return RxOutcome::BadChain;
        };
        if writer.available_bytes() < len {
            log::debug!(
                "virtio-net {}: {len}-byte frame dropped, rx buffer holds {}",
                self.tap.name(),
                writer.available_bytes()
            );
            return RxOutcome::TooSmall;
        }
        let Some(packet) = self.rx_packet.get_mut(..len) else {
            return RxOutcome::TooSmall;
        };
        // Without MRG_RXBUF every frame fits one chain; the tap leaves this
        // field of the header untouched.
        if let Some(num_buffers) = packet.get_mut(NUM_BUFFERS..VNET_HDR_LEN) {
            num_buffers.copy_from_slice(&1u16.to_le_bytes());
        }
        match writer.write_all(packet) {
            Ok(()) => RxOutcome::Delivered(len as u32),
            Err(_) => RxOutcome::BadChain,
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn name(&self) -> &'static str {
        "net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS);
        let offloads = self.tap.supported_offloads();
        // Offer an offload only when the tap can deliver it to the guest;
        // the host direction is offered alongside as its twin.
        for (tun, offered) in [
            (
                libc::TUN_F_CSUM,
                bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM),
            ),
            (
                libc::TUN_F_TSO4,
                bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO4),
            ),
            (
                libc::TUN_F_TSO6,
                bit(VIRTIO_NET_F_GUEST_TSO6) | bit(VIRTIO_NET_F_HOST_TSO6),
            ),
            (
                libc::TUN_F_UFO,
                bit(VIRTIO_NET_F_GUEST_UFO) | bit(VIRTIO_NET_F_HOST_UFO),
            ),
        ] {
            if offloads & tun != 0 && offloads & libc::TUN_F_CSUM != 0 {
                features |= offered;
            }
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6], then status.
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        queues: &mut [Queue],
    ) -> UsedQueues {
        match index {
            RX_QUEUE => self.process_rx(mem, queues),
            TX_QUEUE => self.process_tx(mem, queues),
            _ => UsedQueues::NONE,
        }
    }

    fn counters(&self) -> &DeviceCounters {
        &self.counters
    }

    fn register_backend(&mut self, events: BackendEvents) -> std::io::Result<()> {
        events.add(self.tap.as_raw_fd(), TAP_TOKEN, EventSet::IN)?;
        if let Some(imds) = &self.imds {
            events.add(imds.timer.as_raw_fd(), IMDS_TIMER_TOKEN, EventSet::IN)?;
        }
        Ok(())
    }

    fn process_backend(
        &mut self,
        mem: &GuestMemoryMmap,
        token: u32,
        _events: u32,
        queues: &mut [Queue],
    ) -> UsedQueues {
        match token {
            TAP_TOKEN => self.process_rx(mem, queues),
            IMDS_TIMER_TOKEN => {
                if let Some(imds) = &mut self.imds {
                    // Reading clears the expiry; nothing to read is fine.
                    let _ = imds.timer.wait();
                    imds.stack.poll(Instant::now());
                    imds.rearm();
                }
                self.process_rx(mem, queues)
            }
            _ => UsedQueues::NONE,
        }
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn activate(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> UsedQueues {
        let offloads = tap_offloads(self.acked_features) & self.tap.supported_offloads();
        if let Err(e) = self.tap.set_offload(offloads) {
            // The guest then gets plain frames, which it always accepts.
            log::warn!("virtio-net: {e}");
        }
        // Frames may have queued on the tap while the driver set up.
        self.process_rx(mem, queues)
    }

    fn update_metadata(&mut self, doc: &InstanceMetadata) -> bool {
        match &mut self.imds {
            Some(imds) => {
                imds.stack.update(doc.clone());
                imds.rearm();
                true
            }
            None => false,
        }
    }

    fn reset(&mut self) {
        self.rx_pending = None;
        self.acked_features = 0;
        // No offloaded frame for a driver that may not negotiate offloads.
        if let Err(e) = self.tap.set_offload(0) {
            log::warn!("virtio-net: {e}");
        }
    }
}
