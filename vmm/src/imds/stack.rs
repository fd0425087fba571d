//! The TCP/IP side of the metadata service: the frames a guest sends to
//! 169.254.169.254 (and its ARP for that address) come here from
//! virtio-net's transmit path instead of the tap, a smoltcp interface
//! terminates TCP port 80, and the answers leave as frames for the
//! receive queue. No host socket is opened and nothing reaches the tap.
//!
//! smoltcp runs on the IP medium: this module strips and adds the Ethernet
//! header itself, so the stack needs no neighbour table (replies go to the
//! card's own MAC, from the MAC the guest addressed: its gateway's when it
//! routes 169.254.169.254, ours when it ARPs for it on-link).
//!
//! Bounded everywhere a guest could push: [`MAX_CONNECTIONS`] sockets,
//! [`MAX_QUEUED_FRAMES`] frames each way, a request at most
//! [`http::MAX_HEAD`] + [`http::MAX_BODY`] bytes, an idle connection
//! closed after [`IDLE`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ec2lab_vmm_api::metadata::InstanceMetadata;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpCidr, Ipv4Address,
};

use super::http;
use super::token::fill_random;
use super::{Imds, ImdsError, Served};

/// The metadata service's address.
pub const IMDS_ADDR: Ipv4Address = Ipv4Address::new(169, 254, 169, 254);
/// The MAC the service answers ARP with (locally administered unicast).
pub const IMDS_MAC: [u8; 6] = [0x06, 0xec, 0x2a, 0xa9, 0xfe, 0xfe];
/// Connections served at once; a further SYN is refused until one ends.
pub const MAX_CONNECTIONS: usize = 8;
/// Frames waiting in either direction; more are dropped (TCP resends).
pub const MAX_QUEUED_FRAMES: usize = 64;
/// An established connection with no traffic for this long is reset.
pub const IDLE: Duration = Duration::from_secs(30);

const PORT: u16 = 80;
const SOCKET_RX: usize = 4096;
const SOCKET_TX: usize = 8192;
const MTU: usize = 1500;
const ETHERNET_HEADER: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];

/// Whether a guest frame (Ethernet, no vnet header) is for the metadata
/// service: IPv4 to 169.254.169.254, whatever MAC it is sent to, or ARP
/// asking for that address.
pub fn diverts(frame: &[u8]) -> bool {
    let imds = IMDS_ADDR.octets();
    match frame.get(12..14) {
        Some(t) if t == ETHERTYPE_IPV4 => frame.get(30..34) == Some(&imds[..]),
        Some(t) if t == ETHERTYPE_ARP => frame.get(38..42) == Some(&imds[..]),
        _ => false,
    }
}

/// IP packets between the card and a smoltcp stack (the tests' guest
/// stack uses one too).
#[derive(Default)]
pub(super) struct Frames {
    /// Packets for the stack to receive.
    pub(super) to_stack: VecDeque<Vec<u8>>,
    /// Packets the stack sent.
    pub(super) from_stack: VecDeque<Vec<u8>>,
}

pub(super) struct RxToken(Vec<u8>);
pub(super) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl smoltcp::phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let result = f(&mut packet);
        self.0.push_back(packet);
        result
    }
}

impl Device for Frames {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.to_stack.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.from_stack)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        (self.from_stack.len() < MAX_QUEUED_FRAMES).then_some(TxToken(&mut self.from_stack))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        // A guest that negotiated checksum offload sends TCP with a
        // partial checksum; nothing between it and us can corrupt a
        // frame, so the stack does not check what it receives.
        caps.checksum.tcp = Checksum::Tx;
        caps
    }
}

/// One socket of the pool and the HTTP state of its connection.
struct Conn {
    handle: SocketHandle,
    input: Vec<u8>,
    output: Vec<u8>,
    closing: bool,
    /// When the connection last moved (`None` while the socket listens).
    last_active: Option<Instant>,
}

/// The metadata service on its own TCP/IP stack.
pub struct ImdsStack {
    imds: Imds,
    iface: Interface,
    sockets: SocketSet<'static>,
    frames: Frames,
    conns: Vec<Conn>,
    arp_replies: VecDeque<Vec<u8>>,
    epoch: Instant,
    guest_mac: [u8; 6],
    reply_mac: [u8; 6],
}

impl std::fmt::Debug for ImdsStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImdsStack")
            .field("imds", &self.imds)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl ImdsStack {
    /// The service for a card with address `guest_mac`, its clocks
    /// starting at `now`.
    pub fn new(doc: InstanceMetadata, guest_mac: [u8; 6], now: Instant) -> Result<Self, ImdsError> {
        let imds = Imds::new(doc, now)?;
        let mut seed = [0u8; 8];
        // Initial sequence numbers come from this seed.
        fill_random(&mut seed)?;
        let mut frames = Frames::default();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = u64::from_ne_bytes(seed);
        let mut iface = Interface::new(config, &mut frames, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // A /32 always fits the interface's address list.
            let _ = addrs.push(IpCidr::new(IMDS_ADDR.into(), 32));
        });
        // Every guest address is "routed" back to the card (the IP medium
        // needs no next hop's MAC); without a route smoltcp would not answer.
        // A default route always fits the route table.
        let _ = iface.routes_mut().add_default_ipv4_route(IMDS_ADDR);
        let mut stack = ImdsStack {
            imds,
            iface,
            sockets: SocketSet::new(Vec::new()),
            frames,
            conns: Vec::new(),
            arp_replies: VecDeque::new(),
            epoch: now,
            guest_mac,
            reply_mac: IMDS_MAC,
        };
        for _ in 0..MAX_CONNECTIONS {
            let socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; SOCKET_RX]),
                tcp::SocketBuffer::new(vec![0; SOCKET_TX]),
            );
            let handle = stack.sockets.add(socket);
            stack.conns.push(Conn {
                handle,
                input: Vec::new(),
                output: Vec::new(),
                closing: false,
                last_active: None,
            });
            stack.listen(handle);
        }
        Ok(stack)
    }

    /// The HTTP service (its document, its tokens).
    pub fn service(&mut self) -> &mut Imds {
        &mut self.imds
    }

    /// Replaces the document; turning the endpoint off resets every
    /// connection, as the service is then gone.
    pub fn update(&mut self, doc: InstanceMetadata) {
        let enabled = doc.options.http_endpoint;
        self.imds.update(doc);
        if !enabled {
            for i in 0..self.conns.len() {
                self.recycle(i);
            }
            self.frames = Frames::default();
            self.arp_replies.clear();
        }
    }

    /// Takes one guest frame that [`diverts`] said is ours.
    pub fn receive(&mut self, frame: &[u8], now: Instant) {
        if !self.imds.document().options.http_endpoint {
            return;
        }
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => self.answer_arp(eth.payload()),
            EthernetProtocol::Ipv4 => {
                if self.frames.to_stack.len() >= MAX_QUEUED_FRAMES {
                    return;
                }
                let to = eth.dst_addr();
                // Answer from the address the guest sent to, so its
                // neighbour table stays as it is.
                self.reply_mac = if to.is_unicast() { to.0 } else { IMDS_MAC };
                self.frames.to_stack.push_back(eth.payload().to_vec());
                self.poll(now);
            }
            _ => {}
        }
    }

    fn answer_arp(&mut self, payload: &[u8]) {
        let Ok(packet) = ArpPacket::new_checked(payload) else {
            return;
        };
        let Ok(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&packet)
        else {
            return;
        };
        if target_protocol_addr != IMDS_ADDR || self.arp_replies.len() >= MAX_QUEUED_FRAMES {
            return;
        }
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(IMDS_MAC),
            source_protocol_addr: IMDS_ADDR,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(IMDS_MAC),
            dst_addr: EthernetAddress(self.guest_mac),
            ethertype: EthernetProtocol::Arp,
        };
        let mut frame = vec![0; eth.buffer_len() + reply.buffer_len()];
        let mut out = EthernetFrame::new_unchecked(&mut frame);
        eth.emit(&mut out);
        reply.emit(&mut ArpPacket::new_unchecked(out.payload_mut()));
        self.arp_replies.push_back(frame);
    }

    /// Runs the stack and the HTTP service until neither has more to do
    /// at `now`: segments in, requests served, segments out.
    pub fn poll(&mut self, now: Instant) {
        let stamp = self.stamp(now);
        // Each round moves data at least one step; a bound keeps a
        // misbehaving peer from holding the caller here.
        for _ in 0..8 {
            let changed = self.iface.poll(stamp, &mut self.frames, &mut self.sockets);
            let served = self.serve(now);
            if changed == smoltcp::iface::PollResult::None && !served {
                break;
            }
        }
    }

    /// How long until the stack next needs [`ImdsStack::poll`]
    /// (retransmissions, idle connections); `None` when never.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        let stamp = self.stamp(now);
        let stack = self
            .iface
            .poll_delay(stamp, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        let idle = self
            .conns
            .iter()
            .filter(|c| self.is_busy(c.handle))
            .map(|c| {
                c.last_active
                    .map_or(IDLE, |t| (t + IDLE).saturating_duration_since(now))
            })
            .min();
        match (stack, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next frame for the guest's receive queue (Ethernet, no vnet
    /// header).
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if let Some(frame) = self.arp_replies.pop_front() {
            return Some(frame);
        }
        let packet = self.frames.from_stack.pop_front()?;
        let mut frame = Vec::with_capacity(ETHERNET_HEADER + packet.len());
        frame.extend_from_slice(&self.guest_mac);
        frame.extend_from_slice(&self.reply_mac);
        frame.extend_from_slice(&ETHERTYPE_IPV4);
        frame.extend_from_slice(&packet);
        Some(frame)
    }

    /// Whether frames wait for the guest.
    pub fn has_frames(&self) -> bool {
        !self.arp_replies.is_empty() || !self.frames.from_stack.is_empty()
    }

    fn stamp(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    fn is_busy(&self, handle: SocketHandle) -> bool {
        let state = self.sockets.get::<tcp::Socket>(handle).state();
        !matches!(state, tcp::State::Listen | tcp::State::Closed)
    }

    fn listen(&mut self, handle: SocketHandle) {
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        socket.set_timeout(Some(smoltcp::time::Duration::from_secs(10)));
        socket.set_hop_limit(None);
        if let Err(e) = socket.listen(PORT) {
            log::warn!("imds: socket cannot listen: {e}");
        }
    }

    /// Puts socket `i` back in the pool, dropping its connection.
    fn recycle(&mut self, i: usize) {
        let Some(conn) = self.conns.get_mut(i) else {
            return;
        };
        conn.input.clear();
        conn.output.clear();
        conn.closing = false;
        conn.last_active = None;
        let handle = conn.handle;
        self.sockets.get_mut::<tcp::Socket>(handle).abort();
        self.listen(handle);
    }

    /// Reads requests from every connection, answers them and queues the
    /// answers; true when anything moved.
    fn serve(&mut self, now: Instant) -> bool {
        let limit = http::MAX_HEAD + http::MAX_BODY;
        let mut moved = false;
        for i in 0..self.conns.len() {
            let handle = self.conns[i].handle;
            let state = self.sockets.get::<tcp::Socket>(handle).state();
            match state {
                tcp::State::Listen | tcp::State::SynReceived => continue,
                // Done, or our side closed and the peer is winding down:
                // the socket can serve the next client at once.
                tcp::State::Closed | tcp::State::TimeWait => {
                    self.recycle(i);
                    continue;
                }
                _ => {}
            }
            // A connection's clock starts when it is first seen open.
            let since = *self.conns[i].last_active.get_or_insert(now);
            if now.saturating_duration_since(since) >= IDLE {
                self.recycle(i);
                moved = true;
                continue;
            }
            let conn = &mut self.conns[i];
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            // Bytes in, up to one request's worth.
            if read_into(socket, &mut conn.input, limit) {
                conn.last_active = Some(now);
                moved = true;
            }
            // Requests out of the bytes.
            while !conn.closing && !conn.input.is_empty() {
                match self.imds.serve(&conn.input, now) {
                    Served::Incomplete | Served::Silent => break,
                    Served::Reply {
                        response,
                        consumed,
                        head_only,
                    } => {
                        conn.input.drain(..consumed.min(conn.input.len()));
                        if let Some(ttl) = response.ip_ttl {
                            socket.set_hop_limit(Some(ttl.max(1)));
                        }
                        conn.output.extend(response.to_bytes(head_only));
                        conn.closing = response.close;
                        conn.last_active = Some(now);
                        moved = true;
                    }
                }
            }
            // Answers out, as the send buffer allows.
            if !conn.output.is_empty() && socket.can_send() {
                if let Ok(n) = socket.send_slice(&conn.output) {
                    conn.output.drain(..n);
                    moved |= n > 0;
                }
            }
            // The client is done sending and nothing is left to answer,
            // or we said we would close: close our side.
            let finished = !socket.may_recv() && conn.output.is_empty();
            if (conn.closing && conn.output.is_empty()) || finished {
                if socket.state() != tcp::State::Closed {
                    socket.close();
                }
                conn.closing = true;
            }
        }
        moved
    }
}

/// Moves what `socket` has received into `input`, at most up to `limit`
/// bytes in all; true when anything moved.
fn read_into(socket: &mut tcp::Socket, input: &mut Vec<u8>, limit: usize) -> bool {
    let mut moved = false;
    while socket.can_recv() && input.len() < limit {
        let mut chunk = [0u8; 1024];
        let want = chunk.len().min(limit - input.len());
        match socket.recv_slice(&mut chunk[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                input.extend_from_slice(&chunk[..n]);
                moved = true;
            }
        }
    }
    moved
}
