//! One stream between a guest port and a host AF_UNIX connection: its state
//! machine and both directions of credit accounting (virtio spec 5.10.6.3).
//!
//! Guest → host: we advertise [`CONN_BUF_ALLOC`] bytes; what the host
//! socket cannot take at once waits in `to_host`, which the guest's credit
//! keeps within that bound. Host → guest: we read the socket only while the
//! guest has credit for the bytes, so nothing is ever buffered that way.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use virtio_queue::Writer;

use super::packet::{
    op, PacketHeader, HDR_LEN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::HOST_CID;

/// Receive buffer we advertise per connection: the most guest data we hold
/// for a host socket that does not keep up.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// The most a connection holds for its host socket: the guest's credit and
/// our own "OK <port>" line. Allocated when data waits, freed when it has
/// all been written, so an idle connection holds nothing.
pub const MAX_HELD: usize = CONN_BUF_ALLOC as usize + 32;
/// Consumed bytes after which we tell the guest about its new credit
/// without waiting for it to ask (every packet we send also carries it).
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;
/// Largest payload of one packet in either direction, as in Linux.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;

/// Epoll bits as they come with a backend event.
const EPOLLIN: u32 = libc::EPOLLIN as u32;
const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
const EPOLLERR: u32 = libc::EPOLLERR as u32;
const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The host asked for it; our REQUEST waits for the guest's RESPONSE.
    LocalInit,
    /// Data flows.
    Established,
    /// The host will send no more (end of file on its socket); we told the
    /// guest with SHUTDOWN(SEND). The guest may still send: the host may
    /// only have half-closed. The guest's own SHUTDOWN ends it.
    Closing,
}

/// What the muxer does with the connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it.
    Keep,
    /// Send the guest an RST and forget it (an orderly end).
    Reset,
    /// Send the guest an RST and forget it, counting an error: the guest
    /// broke the protocol or the host socket failed.
    Violation,
    /// Forget it without a word (the guest reset it).
    Close,
}

/// What [`Connection::produce_rx`] put into an rx buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// A packet of this many bytes, header included.
    Packet(u32),
    /// Nothing to send now.
    Nothing,
    /// The connection must be reset (see [`Verdict::Violation`]).
    Violation,
}

/// One connection.
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// Epoll token of `stream`.
    pub token: u32,
    /// Port on the host (CID 2) side.
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
    /// Whether the muxer has it in its list of connections with rx work.
    pub queued: bool,
    guest_cid: u64,
    state: State,

    // Host → guest.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The socket may have data we have not read: it signalled readable
    /// (edge-triggered, so once) and we stopped before it said WouldBlock.
    host_readable: bool,

    // Guest → host.
    to_host: VecDeque<u8>,
    /// Leading bytes of `to_host` that are ours ("OK <port>\n"), not the
    /// guest's, so they do not count as forwarded.
    to_host_ours: usize,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,

    // Packets owed to the guest, at most one of each.
    send_request: bool,
    send_response: bool,
    send_shutdown: bool,
    send_credit_update: bool,
    /// We ran out of the guest's credit with host data waiting: ask once,
    /// in case the guest only tells when asked.
    send_credit_request: bool,

    /// SHUTDOWN flags the guest sent.
    peer_shutdown: u32,
    host_write_shut: bool,
}

impl Connection {
    fn new(
        stream: UnixStream,
        token: u32,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        state: State,
    ) -> Self {
        Self {
            stream,
            token,
            local_port,
            peer_port,
            queued: false,
            guest_cid,
            state,
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            host_readable: false,
            to_host: VecDeque::new(),
            to_host_ours: 0,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            send_request: state == State::LocalInit,
            send_response: false,
            send_shutdown: false,
            send_credit_update: false,
            send_credit_request: false,
            peer_shutdown: 0,
            host_write_shut: false,
        }
    }

    /// A host-initiated connection to guest port `peer_port`; the REQUEST
    /// is owed to the guest.
    pub fn host_initiated(
        stream: UnixStream,
        token: u32,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
    ) -> Self {
        Self::new(
            stream,
            token,
            guest_cid,
            local_port,
            peer_port,
            State::LocalInit,
        )
    }

    /// A guest-initiated connection from `request` that the host accepted;
    /// the RESPONSE is owed to the guest.
    pub fn guest_initiated(
        stream: UnixStream,
        token: u32,
        guest_cid: u64,
        request: &PacketHeader,
    ) -> Self {
        let mut conn = Self::new(
            stream,
            token,
            guest_cid,
            request.dst_port,
            request.src_port,
            State::Established,
        );
        conn.update_peer_credit(request);
        conn.send_response = true;
        // The host may have written before we saw it.
        conn.host_readable = true;
        conn
    }

    /// The connection's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes the guest can still take from us.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        // A hostile fwd_cnt ahead of what we sent wraps to a huge in-flight
        // count: no credit, rather than unbounded credit.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// A header from us to the guest, carrying our current credit.
    fn header(&mut self, op: u16, len: u32, flags: u32) -> PacketHeader {
        // Whatever we send tells the guest its credit.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.send_credit_update = false;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            socket_type: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn update_peer_credit(&mut self, hdr: &PacketHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Whether the connection has something for the guest's rx queue.
    pub fn has_rx_work(&self) -> bool {
        self.send_request
            || self.send_response
            || self.send_shutdown
            || self.send_credit_update
            || self.send_credit_request
            || self.can_send_data()
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Handles a packet from the guest addressed to this connection;
    /// `payload` is its data (OP_RW only).
    pub fn on_guest_packet(&mut self, hdr: &PacketHeader, payload: &[u8]) -> Verdict {
        self.update_peer_credit(hdr);
        if hdr.op == op::RST {
            return Verdict::Close;
        }
        match self.state {
            State::LocalInit => {
                if hdr.op != op::RESPONSE {
                    return Verdict::Violation;
                }
                self.state = State::Established;
                let line = format!("OK {}\n", self.local_port);
                self.hold(line.as_bytes());
                self.to_host_ours = line.len();
                // Data the host wrote after its CONNECT line is waiting.
                self.host_readable = true;
                self.flush_to_host()
            }
            State::Established | State::Closing => match hdr.op {
                op::RW => self.guest_data(payload),
                op::CREDIT_UPDATE => Verdict::Keep,
                op::CREDIT_REQUEST => {
                    self.send_credit_update = true;
                    Verdict::Keep
                }
                op::SHUTDOWN => self.guest_shutdown(hdr.flags),
                _ => Verdict::Violation,
            },
        }
    }

    fn guest_data(&mut self, payload: &[u8]) -> Verdict {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            return Verdict::Violation;
        }
        let held = (self.rx_cnt - self.fwd_cnt).0 as usize;
        if held + payload.len() > CONN_BUF_ALLOC as usize {
            // The guest sent beyond the credit we gave it.
            return Verdict::Violation;
        }
        self.rx_cnt += Wrapping(payload.len() as u32);
        self.hold(payload);
        self.flush_to_host()
    }

    /// Keeps `bytes` for the host socket, in a buffer of [`MAX_HELD`] bytes
    /// allocated once (it never grows past it: the credit bounds the
    /// guest's bytes, and ours come before any of them).
    fn hold(&mut self, bytes: &[u8]) {
        if self.to_host.capacity() == 0 {
            self.to_host = VecDeque::with_capacity(MAX_HELD);
        }
        self.to_host.extend(bytes);
    }

    /// Bytes of memory the connection holds for its host socket.
    pub fn held_bytes(&self) -> usize {
        self.to_host.capacity()
    }

    fn guest_shutdown(&mut self, flags: u32) -> Verdict {
        self.peer_shutdown |= flags & SHUTDOWN_BOTH;
        self.flush_to_host()
    }

    /// Writes what it can of `to_host`, credits the guest for it, and
    /// passes on the guest's half-close once everything is written.
    fn flush_to_host(&mut self) -> Verdict {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                    let ours = n.min(self.to_host_ours);
                    self.to_host_ours -= ours;
                    self.fwd_cnt += Wrapping((n - ours) as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Violation,
            }
        }
        if self.to_host.is_empty() && self.to_host.capacity() > 0 {
            // All written: give the buffer back.
            self.to_host = VecDeque::new();
        }
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.send_credit_update = true;
        }
        if self.to_host.is_empty()
            && self.peer_shutdown & SHUTDOWN_SEND != 0
            && !self.host_write_shut
        {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.to_host.is_empty() && self.peer_shutdown == SHUTDOWN_BOTH {
            // The guest has closed and everything it sent reached the host;
            // it waits for our RST.
            let _ = self.stream.shutdown(Shutdown::Both);
            return Verdict::Reset;
        }
        Verdict::Keep
    }

    /// Handles an epoll event mask for the host socket.
    pub fn on_host_event(&mut self, events: u32) -> Verdict {
        if events & EPOLLERR != 0 {
            return Verdict::Violation;
        }
        if events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP) != 0 {
            // A hang-up may still leave data to read; end of file is seen
            // by reading, in order after the data.
            self.host_readable = true;
        }
        if events & (EPOLLOUT | EPOLLHUP) != 0 && !self.to_host.is_empty() {
            return self.flush_to_host();
        }
        Verdict::Keep
    }

    /// Fills one rx buffer (which has room for at least a header) with the
    /// next packet this connection owes the guest. `scratch` is a reusable
    /// buffer for host data.
    pub fn produce_rx(&mut self, writer: &mut Writer, scratch: &mut Vec<u8>) -> RxOutcome {
        if self.send_request {
            self.send_request = false;
            return self.write_control(writer, op::REQUEST, 0);
        }
        if self.send_response {
            self.send_response = false;
            return self.write_control(writer, op::RESPONSE, 0);
        }
        if self.can_send_data() {
            let room = writer.available_bytes().saturating_sub(HDR_LEN);
            let max = room.min(MAX_PKT_PAYLOAD).min(self.peer_credit() as usize);
            if max > 0 {
                scratch.resize(max, 0);
                match self.stream.read(&mut scratch[..max]) {
                    Ok(0) => {
                        self.host_readable = false;
                        self.state = State::Closing;
                        self.send_shutdown = true;
                    }
                    Ok(n) => {
                        let hdr = self.header(op::RW, n as u32, 0);
                        self.tx_cnt += Wrapping(n as u32);
                        if self.peer_credit() == 0 {
                            self.send_credit_request = true;
                        }
                        if hdr.write_to(writer).is_err() || writer.write_all(&scratch[..n]).is_err()
                        {
                            return RxOutcome::Violation;
                        }
                        return RxOutcome::Packet((HDR_LEN + n) as u32);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => self.host_readable = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return RxOutcome::Violation,
                }
            }
        }
        if self.send_shutdown {
            self.send_shutdown = false;
            // Only "we send no more": the host may just have half-closed
            // and still be reading the guest's answer.
            return self.write_control(writer, op::SHUTDOWN, SHUTDOWN_SEND);
        }
        if self.send_credit_update {
            self.send_credit_update = false;
            return self.write_control(writer, op::CREDIT_UPDATE, 0);
        }
        if self.send_credit_request {
            self.send_credit_request = false;
            if self.peer_credit() == 0 && self.host_readable {
                return self.write_control(writer, op::CREDIT_REQUEST, 0);
            }
        }
        RxOutcome::Nothing
    }

    fn write_control(&mut self, writer: &mut Writer, op: u16, flags: u32) -> RxOutcome {
        let hdr = self.header(op, 0, flags);
        match hdr.write_to(writer) {
            Ok(()) => RxOutcome::Packet(HDR_LEN as u32),
            Err(_) => RxOutcome::Violation,
        }
    }
}
