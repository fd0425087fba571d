//! Routes packets between the guest and the host sockets: the table of
//! connections, the host listener, connections still reading their
//! `CONNECT` line, and what is owed to the guest's rx queue.
//!
//! Nothing here touches a queue: the device hands in one tx chain at a time
//! ([`Muxer::handle_tx_chain`]) and asks for one rx packet at a time
//! ([`Muxer::next_rx_packet`]), so the muxer never needs to know whether the
//! guest has buffers, only to keep what it owes within bounds.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::connection::{Connection, RxOutcome, Verdict, MAX_HELD, MAX_PKT_PAYLOAD};
use super::packet::{op, PacketHeader, HDR_LEN, TYPE_STREAM};
use super::unix::{connect_nonblocking, port_path, ConnectLine, PendingHost};
use super::HOST_CID;
use crate::devices::virtio::{BackendEvents, DeviceCounters};

/// Epoll token of the listener; streams get the others.
pub const LISTENER_TOKEN: u32 = 0;
/// Most memory one device's connections may hold for their host sockets.
/// Each holds at most [`MAX_HELD`] (the credit it gives the guest), so the
/// connection limit follows from it: a guest that fills every connection
/// it may open, to host sockets that never read, pins at most this much
/// of the VMM's memory.
pub const BUFFER_BUDGET: usize = 32 << 20;
/// Most connections, established or still reading their CONNECT line;
/// beyond that, host connections are closed and guest requests reset.
pub const MAX_CONNECTIONS: usize = BUFFER_BUDGET / MAX_HELD;
const _: () = assert!(MAX_CONNECTIONS >= 64 && MAX_CONNECTIONS * MAX_HELD <= BUFFER_BUDGET);
/// Most RSTs waiting for rx buffers for connections that no longer exist.
/// Packets owed by live connections are flags on the connection and need
/// no room; these are the only ones a guest can multiply at will (by
/// sending to ports nobody listens on), so beyond the bound they are
/// dropped and counted as errors.
pub const MAX_CONTROL_PACKETS: usize = 256;
/// First port handed to host-initiated connections, as Firecracker does:
/// high enough to stay clear of ports guests listen on.
pub const FIRST_HOST_PORT: u32 = 1 << 30;

/// A connection's (host port, guest port).
type ConnKey = (u32, u32);

/// The device's host side.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    events: Option<BackendEvents>,
    pending_hosts: HashMap<u32, PendingHost>,
    conns: HashMap<ConnKey, Connection>,
    tokens: HashMap<u32, ConnKey>,
    /// Connections that may have something for the rx queue, served round
    /// robin. Entries of connections gone meanwhile are skipped.
    rx_ready: VecDeque<ConnKey>,
    /// RSTs for connections that are gone.
    control: VecDeque<PacketHeader>,
    next_token: u32,
    next_host_port: u32,
    max_connections: usize,
    /// Payload bounce buffer, reused.
    scratch: Vec<u8>,
    counters: DeviceCounters,
}

impl Muxer {
    /// A muxer accepting host connections on `listener` (bound at `uds_path`).
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> Self {
        Self {
            guest_cid,
            uds_path,
            listener,
            events: None,
            pending_hosts: HashMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            rx_ready: VecDeque::new(),
            control: VecDeque::new(),
            next_token: LISTENER_TOKEN,
            next_host_port: FIRST_HOST_PORT,
            max_connections: MAX_CONNECTIONS,
            scratch: Vec::new(),
            counters: DeviceCounters::default(),
        }
    }

    /// The counters.
    pub fn counters(&self) -> &DeviceCounters {
        &self.counters
    }

    /// Lowers the connection limit (for tests).
    #[cfg(test)]
    pub fn set_max_connections(&mut self, max: usize) {
        self.max_connections = max;
    }

    /// Where guest connections go: `<uds_path>_<port>`.
    pub fn connect_through(&mut self, uds_path: PathBuf) {
        self.uds_path = uds_path;
    }

    /// Connections, established or pending.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.pending_hosts.len()
    }

    /// Bytes of memory the connections hold for their host sockets.
    pub fn held_bytes(&self) -> usize {
        self.conns.values().map(Connection::held_bytes).sum()
    }

    /// Starts having the listener watched.
    pub fn register(&mut self, events: BackendEvents) -> std::io::Result<()> {
        events.add(self.listener.as_raw_fd(), LISTENER_TOKEN, EventSet::IN)?;
        self.events = Some(events);
        Ok(())
    }

    /// Every descriptor with its token, for polling without epoll.
    pub fn fds(&self) -> Vec<(RawFd, u32)> {
        let mut fds = vec![(self.listener.as_raw_fd(), LISTENER_TOKEN)];
        fds.extend(
            self.pending_hosts
                .iter()
                .map(|(token, p)| (p.stream.as_raw_fd(), *token)),
        );
        fds.extend(self.conns.values().map(|c| (c.stream.as_raw_fd(), c.token)));
        fds
    }

    /// Whether anything waits for an rx buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || !self.rx_ready.is_empty()
    }

    /// Drops every connection (the driver reset the device).
    pub fn reset(&mut self) {
        // Closing a descriptor also takes it out of the epoll set.
        self.pending_hosts.clear();
        self.conns.clear();
        self.tokens.clear();
        self.rx_ready.clear();
        self.control.clear();
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            self.next_token = self.next_token.wrapping_add(1);
            let t = self.next_token;
            if t != LISTENER_TOKEN
                && !self.tokens.contains_key(&t)
                && !self.pending_hosts.contains_key(&t)
            {
                return t;
            }
        }
    }

    fn alloc_host_port(&mut self) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.keys().any(|(local, _)| *local == port) {
                return port;
            }
        }
    }

    /// Watches a host stream for everything it may need, for its whole
    /// life: a pending host connection keeps its token and registration
    /// when it becomes a connection.
    fn watch(&self, fd: RawFd, token: u32) -> std::io::Result<()> {
        match &self.events {
            Some(events) => events.add(
                fd,
                token,
                EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP,
            ),
            None => Ok(()),
        }
    }

    fn unwatch(&self, fd: RawFd) {
        if let Some(events) = &self.events {
            let _ = events.remove(fd);
        }
    }

    fn push_control(&mut self, hdr: PacketHeader) {
        if self.control.len() >= MAX_CONTROL_PACKETS {
            log::debug!("virtio-vsock: control queue full, dropping {hdr:?}");
            self.counters.error();
            return;
        }
        self.control.push_back(hdr);
    }

    fn rst_for(&self, conn: &Connection) -> PacketHeader {
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: conn.local_port,
            dst_port: conn.peer_port,
            socket_type: TYPE_STREAM,
            op: op::RST,
            ..PacketHeader::default()
        }
    }

    fn schedule(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.queued && conn.has_rx_work() {
                conn.queued = true;
                self.rx_ready.push_back(key);
            }
        }
    }

    fn remove(&mut self, key: ConnKey, rst: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.tokens.remove(&conn.token);
        self.unwatch(conn.stream.as_raw_fd());
        if rst {
            let hdr = self.rst_for(&conn);
            self.push_control(hdr);
        }
    }

    fn apply(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Keep => self.schedule(key),
            Verdict::Reset => self.remove(key, true),
            Verdict::Violation => {
                self.counters.error();
                self.remove(key, true);
            }
            Verdict::Close => self.remove(key, false),
        }
    }

    /// Handles one packet the guest put on the tx queue. Nothing is written
    /// back into the chain; replies go through the rx queue.
    pub fn handle_tx_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) {
        let mut reader = match Reader::new(mem, chain) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("virtio-vsock: tx chain outside guest memory: {e}");
                self.counters.error();
                return;
            }
        };
        let hdr = match PacketHeader::read_from(&mut reader) {
            Ok(h) => h,
            Err(e) => {
                log::debug!("virtio-vsock: {e}");
                self.counters.error();
                return;
            }
        };
        if hdr.src_cid != self.guest_cid {
            // Not from this guest's address: no reply, it would go nowhere.
            log::debug!("virtio-vsock: dropping packet from CID {}", hdr.src_cid);
            self.counters.error();
            return;
        }
        if hdr.op == op::RST && !self.conns.contains_key(&(hdr.dst_port, hdr.src_port)) {
            // Never answer an RST, or two ends could ping-pong forever.
            return;
        }
        if hdr.dst_cid != HOST_CID {
            // Nobody else is reachable through us; refuse quickly.
            self.push_control(hdr.reply(op::RST));
            return;
        }
        let len = hdr.len as usize;
        let bad_len = hdr.op == op::RW && (len > MAX_PKT_PAYLOAD || len > reader.available_bytes());
        if hdr.socket_type != TYPE_STREAM || bad_len {
            log::debug!("virtio-vsock: malformed packet {hdr:?}");
            self.counters.error();
            self.reset_for(&hdr);
            return;
        }
        let mut payload = std::mem::take(&mut self.scratch);
        payload.clear();
        if hdr.op == op::RW {
            payload.resize(len, 0);
            if reader.read_exact(&mut payload).is_err() {
                self.counters.error();
                self.reset_for(&hdr);
                self.scratch = payload;
                return;
            }
        }
        self.counters.ok(payload.len() as u64);
        self.route(&hdr, &payload);
        self.scratch = payload;
    }

    /// Resets the connection `hdr` belongs to, or answers it with an RST if
    /// there is none.
    fn reset_for(&mut self, hdr: &PacketHeader) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            self.remove(key, true);
        } else if hdr.op != op::RST {
            self.push_control(hdr.reply(op::RST));
        }
    }

    fn route(&mut self, hdr: &PacketHeader, payload: &[u8]) {
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            let verdict = conn.on_guest_packet(hdr, payload);
            if verdict == Verdict::Violation {
                log::debug!("virtio-vsock: protocol violation on {key:?}: {hdr:?}");
            }
            self.apply(key, verdict);
        } else if hdr.op == op::REQUEST {
            self.connect_to_host(hdr);
        } else if hdr.op != op::RST {
            if !matches!(
                hdr.op,
                op::RW | op::SHUTDOWN | op::CREDIT_UPDATE | op::CREDIT_REQUEST | op::RESPONSE
            ) {
                self.counters.error();
            }
            self.push_control(hdr.reply(op::RST));
        }
    }

    /// A guest REQUEST: connect to `<uds_path>_<port>`; RESPONSE or RST.
    fn connect_to_host(&mut self, hdr: &PacketHeader) {
        if self.connection_count() >= self.max_connections {
            log::debug!(
                "virtio-vsock: too many connections, refusing guest port {}",
                hdr.src_port
            );
            self.push_control(hdr.reply(op::RST));
            return;
        }
        let path = port_path(&self.uds_path, hdr.dst_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("virtio-vsock: cannot connect to {}: {e}", path.display());
                self.push_control(hdr.reply(op::RST));
                return;
            }
        };
        let token = self.alloc_token();
        if let Err(e) = self.watch(stream.as_raw_fd(), token) {
            log::warn!("virtio-vsock: cannot watch {}: {e}", path.display());
            self.push_control(hdr.reply(op::RST));
            return;
        }
        let conn = Connection::guest_initiated(stream, token, self.guest_cid, hdr);
        let key = (conn.local_port, conn.peer_port);
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.schedule(key);
    }

    /// A backend descriptor is ready. `active` says whether the driver is
    /// there to talk to.
    pub fn host_event(&mut self, token: u32, events: u32, active: bool) {
        if token == LISTENER_TOKEN {
            self.accept_all(active);
        } else if self.pending_hosts.contains_key(&token) {
            self.read_connect_line(token, active);
        } else if let Some(&key) = self.tokens.get(&token) {
            if let Some(conn) = self.conns.get_mut(&key) {
                let verdict = conn.on_host_event(events);
                self.apply(key, verdict);
            }
        }
    }

    fn accept_all(&mut self, active: bool) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, most likely; the next connection
                    // retries (the listener signals again).
                    log::warn!("virtio-vsock: accept on {}: {e}", self.uds_path.display());
                    return;
                }
            };
            if !active || self.connection_count() >= self.max_connections {
                log::debug!("virtio-vsock: refusing host connection (driver inactive or too many)");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.alloc_token();
            if let Err(e) = self.watch(stream.as_raw_fd(), token) {
                log::warn!("virtio-vsock: cannot watch a host connection: {e}");
                continue;
            }
            self.pending_hosts.insert(token, PendingHost::new(stream));
            // Edge-triggered: the line may be there already.
            self.read_connect_line(token, active);
        }
    }

    fn read_connect_line(&mut self, token: u32, active: bool) {
        let Some(pending) = self.pending_hosts.get_mut(&token) else {
            return;
        };
        let line = if active {
            pending.read_line()
        } else {
            ConnectLine::Invalid
        };
        let port = match line {
            ConnectLine::Incomplete => return,
            ConnectLine::Invalid => {
                if let Some(p) = self.pending_hosts.remove(&token) {
                    self.unwatch(p.stream.as_raw_fd());
                }
                return;
            }
            ConnectLine::Port(port) => port,
        };
        let Some(pending) = self.pending_hosts.remove(&token) else {
            return;
        };
        let local_port = self.alloc_host_port();
        let conn =
            Connection::host_initiated(pending.stream, token, self.guest_cid, local_port, port);
        let key = (local_port, port);
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.schedule(key);
    }

    /// Writes the next packet owed to the guest into `writer` (which has
    /// room for at least a header); returns its length, or `None` if
    /// nothing is owed and the buffer was left untouched.
    pub fn next_rx_packet(&mut self, writer: &mut Writer) -> Option<u32> {
        if let Some(hdr) = self.control.pop_front() {
            self.counters.ok(0);
            return Some(match hdr.write_to(writer) {
                Ok(()) => HDR_LEN as u32,
                Err(_) => {
                    self.counters.error();
                    0
                }
            });
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            match conn.produce_rx(writer, &mut self.scratch) {
                RxOutcome::Packet(len) => {
                    self.counters
                        .ok(u64::from(len).saturating_sub(HDR_LEN as u64));
                    // Round robin: one packet per connection per turn.
                    self.schedule(key);
                    return Some(len);
                }
                RxOutcome::Nothing => {}
                RxOutcome::Violation => {
                    self.counters.error();
                    self.remove(key, true);
                    if writer.bytes_written() > 0 {
                        // Half a packet: hand the buffer back empty.
                        return Some(0);
                    }
                }
            }
        }
        None
    }
}
