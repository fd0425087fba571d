//! The device driven as a guest driver would drive it (mock split queues in
//! guest memory) against real AF_UNIX sockets in a temporary directory.
//! Backend readiness comes from [`Vsock::poll_all`] instead of the event
//! thread; tests that check edge-triggered resumption deliberately do not
//! poll, so the device must resume on its own.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::connection::{CONN_BUF_ALLOC, MAX_HELD};
use super::muxer::FIRST_HOST_PORT;
use super::packet::{op, PacketHeader, HDR_LEN, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM};
use super::unix::port_path;
use super::*;

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 256;
const MEM_SIZE: u64 = 32 << 20;
const BUF_START: u64 = 1 << 20;
/// What Linux posts: a header and 4 KiB of payload.
const RX_BUF: u32 = HDR_LEN as u32 + 4096;

/// One packet the guest received.
#[derive(Debug)]
struct Received {
    hdr: PacketHeader,
    data: Vec<u8>,
    used_len: u32,
}

/// The guest driver: owns the three rings and the buffers in guest memory.
struct Guest<'m> {
    mem: &'m GuestMemoryMmap,
    rings: Vec<MockSplitQueue<'m, GuestMemoryMmap>>,
    queues: Vec<Queue>,
    next_desc: [u16; 3],
    used_seen: [u16; 3],
    rx_addrs: HashMap<u16, u64>,
    next_buf: u64,
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("memory")
}

impl<'m> Guest<'m> {
    fn new(mem: &'m GuestMemoryMmap) -> Self {
        let rings: Vec<_> = (0..3u64)
            .map(|i| MockSplitQueue::create(mem, GuestAddress(i * 0x1_0000), QSIZE))
            .collect();
        let queues = rings
            .iter()
            .map(|r| r.create_queue::<Queue>().expect("queue"))
            .collect();
        Self {
            mem,
            rings,
            queues,
            next_desc: [0; 3],
            used_seen: [0; 3],
            rx_addrs: HashMap::new(),
            next_buf: BUF_START,
        }
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len.max(1)).next_multiple_of(64);
        if self.next_buf + len > MEM_SIZE {
            self.next_buf = BUF_START;
        }
        let addr = self.next_buf;
        self.next_buf += len;
        addr
    }

    /// Makes a chain of (address, length, device-writable) available on
    /// queue `q`; returns its head.
    fn push_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc[q] + n > QSIZE {
            self.next_desc[q] = 0;
        }
        let head = self.next_desc[q];
        for (i, (addr, len, writable)) in descs.iter().enumerate() {
            let i = i as u16;
            let mut flags = if *writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < n {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc = SplitDescriptor::new(*addr, *len, flags, head + i + 1);
            self.rings[q]
                .desc_table()
                .store(head + i, RawDescriptor::from(desc))
                .expect("descriptor");
        }
        self.next_desc[q] += n;
        let avail = self.rings[q].avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .expect("avail slot")
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
        head
    }

    /// Posts `n` rx buffers and notifies.
    fn post_rx(&mut self, dev: &mut Vsock, n: usize) -> UsedQueues {
        self.post_rx_quietly(n);
        dev.process_queue(self.mem, RX_QUEUE, &mut self.queues)
    }

    /// Posts `n` rx buffers without notifying.
    fn post_rx_quietly(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.alloc(RX_BUF);
            let head = self.push_chain(RX_QUEUE, &[(addr, RX_BUF, true)]);
            self.rx_addrs.insert(head, addr);
        }
    }

    /// Sends a packet (header and payload in one descriptor, as Linux does
    /// for small packets) and notifies the tx queue.
    fn send(&mut self, dev: &mut Vsock, hdr: PacketHeader, payload: &[u8]) -> UsedQueues {
        let len = (HDR_LEN + payload.len()) as u32;
        let addr = self.alloc(len);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .expect("header");
        self.mem
            .write_slice(payload, GuestAddress(addr + HDR_LEN as u64))
            .expect("payload");
        self.send_raw(dev, &[(addr, len, false)])
    }

    /// Sends an arbitrary chain on the tx queue.
    fn send_raw(&mut self, dev: &mut Vsock, descs: &[(u64, u32, bool)]) -> UsedQueues {
        self.push_chain(TX_QUEUE, descs);
        dev.process_queue(self.mem, TX_QUEUE, &mut self.queues)
    }

    fn poll(&mut self, dev: &mut Vsock) -> UsedQueues {
        dev.poll_all(self.mem, &mut self.queues)
    }

    fn avail_idx(&self, q: usize) -> u16 {
        self.rings[q].avail().idx().load()
    }

    /// Posts rx buffers until `target` are outstanding, and notifies: a
    /// driver never has more buffers out than its ring holds.
    fn top_up_rx(&mut self, dev: &mut Vsock, target: usize) -> UsedQueues {
        let n = target.saturating_sub(self.rx_addrs.len());
        self.post_rx(dev, n)
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.rings[q].used().idx().load()
    }

    /// The rx packets used since the last call.
    fn recv(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        let used = self.rings[RX_QUEUE].used();
        while self.used_seen[RX_QUEUE] != used.idx().load() {
            let elem = used
                .ring()
                .ref_at(usize::from(self.used_seen[RX_QUEUE] % QSIZE))
                .expect("used slot")
                .load();
            self.used_seen[RX_QUEUE] = self.used_seen[RX_QUEUE].wrapping_add(1);
            let addr = self
                .rx_addrs
                .remove(&(elem.id() as u16))
                .expect("used an rx buffer we posted");
            let mut bytes = vec![0u8; elem.len() as usize];
            self.mem
                .read_slice(&mut bytes, GuestAddress(addr))
                .expect("read rx");
            let mut hdr = [0u8; HDR_LEN];
            let hdr = if bytes.len() >= HDR_LEN {
                hdr.copy_from_slice(&bytes[..HDR_LEN]);
                PacketHeader::from_bytes(&hdr)
            } else {
                PacketHeader::default()
            };
            out.push(Received {
                hdr,
                data: bytes.get(HDR_LEN..).unwrap_or_default().to_vec(),
                used_len: elem.len(),
            });
        }
        out
    }
}

/// A packet from the guest's port `src` to host port `dst`.
fn pkt(op: u16, src: u32, dst: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        socket_type: TYPE_STREAM,
        op,
        buf_alloc: 256 * 1024,
        ..PacketHeader::default()
    }
}

fn rw(src: u32, dst: u32, len: usize) -> PacketHeader {
    PacketHeader {
        len: len as u32,
        ..pkt(op::RW, src, dst)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    dev: Vsock,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vsock.sock");
    let dev = Vsock::new(GUEST_CID, &uds).expect("device");
    Fixture {
        _dir: dir,
        uds,
        dev,
    }
}

fn errors(dev: &Vsock) -> u64 {
    dev.counters().errors.load(Ordering::Relaxed)
}

fn host_stream(path: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("host connect");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    s
}

/// Asserts the host sees end of file (or a reset) on `s`, skipping data.
fn assert_closed(s: &mut UnixStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the device to close the stream: {e}"),
        }
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        s.read_exact(&mut b).expect("line byte");
        line.push(b[0]);
    }
    String::from_utf8(line).expect("utf-8")
}

/// Host connects to guest port `port`, the guest accepts; returns the host
/// stream and the host port the device picked.
fn host_to_guest(g: &mut Guest, f: &mut Fixture, port: u32) -> (UnixStream, u32) {
    let mut host = host_stream(&f.uds);
    host.write_all(format!("CONNECT {port}\n").as_bytes())
        .expect("connect line");
    g.post_rx_quietly(1);
    assert!(g.poll(&mut f.dev).contains(RX_QUEUE));
    let got = g.recv();
    assert_eq!(got.len(), 1, "{got:?}");
    let req = got[0].hdr;
    assert_eq!(
        (
            req.op,
            req.src_cid,
            req.dst_cid,
            req.dst_port,
            req.socket_type
        ),
        (op::REQUEST, HOST_CID, GUEST_CID, port, TYPE_STREAM)
    );
    assert!(req.src_port >= FIRST_HOST_PORT);
    assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);
    g.send(&mut f.dev, pkt(op::RESPONSE, port, req.src_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}\n", req.src_port));
    (host, req.src_port)
}

/// Collects `len` bytes of RW payload for guest port `port`, posting rx
/// buffers and polling as needed.
fn guest_read(g: &mut Guest, dev: &mut Vsock, port: u32, len: usize) -> Vec<u8> {
    let mut data = Vec::new();
    for _ in 0..1000 {
        if data.len() >= len {
            break;
        }
        g.top_up_rx(dev, 32);
        g.poll(dev);
        for p in g.recv() {
            if p.hdr.op == op::RW && p.hdr.dst_port == port {
                data.extend(p.data);
            }
        }
    }
    assert_eq!(data.len(), len);
    data
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8 ^ seed).collect()
}

#[test]
fn reserved_guest_cids_are_refused_and_the_config_holds_the_cid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    for cid in [0, 1, 2, u64::MAX] {
        let err = Vsock::new(cid, &uds).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("CID")), "cid {cid}");
    }
    let dev = Vsock::new(42, &uds).expect("device");
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 42);
    assert_eq!(dev.features(), VIRTIO_F_VERSION_1);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.device_type(), device_type::VSOCK);
}

#[test]
fn host_connect_handshake_then_data_flows_both_ways_intact() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut host, hport) = host_to_guest(&mut g, &mut f, 5000);

    let big = pattern(100 * 1024, 0x5a);
    for chunk in big.chunks(4096) {
        g.send(&mut f.dev, rw(5000, hport, chunk.len()), chunk);
    }
    let mut got = vec![0u8; big.len()];
    host.read_exact(&mut got).expect("guest data");
    assert!(got == big, "guest to host data differs");

    let back = pattern(150 * 1024, 0xa5);
    host.write_all(&back).expect("host data");
    let got = guest_read(&mut g, &mut f.dev, 5000, back.len());
    assert!(got == back, "host to guest data differs");
    assert_eq!(errors(&f.dev), 0);
    assert_eq!(f.dev.connection_count(), 1);
}

#[test]
fn data_the_host_sends_before_the_guest_accepts_is_delivered_after() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let mut host = host_stream(&f.uds);
    host.write_all(b"CONNECT 77\nearly bird").expect("write");
    g.post_rx_quietly(4);
    g.poll(&mut f.dev);
    let req = g.recv().pop().expect("request").hdr;
    // No poll after this: the socket signalled readable once, long ago.
    assert!(g
        .send(&mut f.dev, pkt(op::RESPONSE, 77, req.src_port), &[])
        .contains(RX_QUEUE));
    assert_eq!(read_line(&mut host), format!("OK {}\n", req.src_port));
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].hdr.op, &got[0].data[..]),
        (op::RW, &b"early bird"[..])
    );
}

#[test]
fn guest_connects_to_a_host_listener_on_uds_port() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let listener = UnixListener::bind(port_path(&f.uds, 7000)).expect("listen");
    g.post_rx_quietly(4);
    g.send(&mut f.dev, pkt(op::REQUEST, 1234, 7000), &[]);
    let got = g.recv();
    assert_eq!(got.len(), 1);
    let resp = got[0].hdr;
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port, resp.dst_cid),
        (op::RESPONSE, 7000, 1234, GUEST_CID)
    );
    let (mut host, _) = listener.accept().expect("accept");
    host.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    g.send(&mut f.dev, rw(1234, 7000, 5), b"hello");
    let mut b = [0u8; 5];
    host.read_exact(&mut b).expect("read");
    assert_eq!(&b, b"hello");
    host.write_all(b"world").expect("write");
    assert_eq!(guest_read(&mut g, &mut f.dev, 1234, 5), b"world");
}

#[test]
fn guest_connect_with_nobody_listening_is_reset() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    g.post_rx_quietly(2);
    g.send(&mut f.dev, pkt(op::REQUEST, 1234, 7001), &[]);
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].hdr.op, got[0].hdr.src_port, got[0].hdr.dst_port),
        (op::RST, 7001, 1234)
    );
    assert_eq!(f.dev.connection_count(), 0);
}

#[test]
fn concurrent_connections_keep_their_data_apart() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let mut hosts = Vec::new();
    for i in 0..5u32 {
        hosts.push((host_to_guest(&mut g, &mut f, 6000 + i), 6000 + i));
    }
    let listener = UnixListener::bind(port_path(&f.uds, 8000)).expect("listen");
    let mut guests = Vec::new();
    for i in 0..3u32 {
        g.post_rx_quietly(1);
        g.send(&mut f.dev, pkt(op::REQUEST, 100 + i, 8000), &[]);
        assert_eq!(g.recv()[0].hdr.op, op::RESPONSE);
        let (s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        guests.push((s, 100 + i));
    }
    assert_eq!(f.dev.connection_count(), 8);
    // Every host socket writes its own pattern at once; the guest sorts
    // what arrives by port.
    for (i, ((s, _), _)) in hosts.iter_mut().enumerate() {
        s.write_all(&pattern(10_000, i as u8)).expect("write");
    }
    for (i, (s, _)) in guests.iter_mut().enumerate() {
        s.write_all(&pattern(10_000, 0x80 | i as u8))
            .expect("write");
    }
    let mut by_port: HashMap<u32, Vec<u8>> = HashMap::new();
    for _ in 0..200 {
        g.top_up_rx(&mut f.dev, 64);
        g.poll(&mut f.dev);
        for p in g.recv() {
            assert_eq!(p.hdr.op, op::RW);
            by_port.entry(p.hdr.dst_port).or_default().extend(p.data);
        }
    }
    for (i, ((_, _), port)) in hosts.iter().enumerate() {
        assert!(by_port[port] == pattern(10_000, i as u8), "port {port}");
    }
    for (i, (_, port)) in guests.iter().enumerate() {
        assert!(
            by_port[port] == pattern(10_000, 0x80 | i as u8),
            "port {port}"
        );
    }
    // And the other way, interleaved.
    for round in 0..3u8 {
        for ((_, hport), port) in &hosts {
            g.send(&mut f.dev, rw(*port, *hport, 3), &[round; 3]);
        }
    }
    for ((s, _), _) in &mut hosts {
        let mut b = [0u8; 9];
        s.read_exact(&mut b).expect("read");
        assert_eq!(b, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    }
    assert_eq!(errors(&f.dev), 0);
}

#[test]
fn the_device_stops_at_the_guests_credit_and_resumes_on_credit_update() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let listener = UnixListener::bind(port_path(&f.uds, 9000)).expect("listen");
    g.post_rx_quietly(1);
    let small = PacketHeader {
        buf_alloc: 8192,
        ..pkt(op::REQUEST, 50, 9000)
    };
    g.send(&mut f.dev, small, &[]);
    assert_eq!(g.recv()[0].hdr.op, op::RESPONSE);
    let (mut host, _) = listener.accept().expect("accept");
    let sent = pattern(20_000, 7);
    host.write_all(&sent).expect("write");

    let mut got = Vec::new();
    g.post_rx_quietly(16);
    g.poll(&mut f.dev);
    g.poll(&mut f.dev);
    let mut asked = false;
    for p in g.recv() {
        match p.hdr.op {
            op::RW => got.extend(p.data),
            op::CREDIT_REQUEST => asked = true,
            other => panic!("unexpected op {other}"),
        }
    }
    assert_eq!(got.len(), 8192, "exactly the credit, no more");
    assert!(asked, "out of credit with data waiting, the device asks");

    // The credit update alone must restart the flow: no socket event will
    // come, the data has been sitting there since before.
    let update = |fwd_cnt| PacketHeader {
        buf_alloc: 8192,
        fwd_cnt,
        ..pkt(op::CREDIT_UPDATE, 50, 9000)
    };
    assert!(g.send(&mut f.dev, update(8192), &[]).contains(RX_QUEUE));
    let more: Vec<u8> = g
        .recv()
        .into_iter()
        .filter(|p| p.hdr.op == op::RW)
        .flat_map(|p| p.data)
        .collect();
    assert_eq!(more.len(), 8192);
    got.extend(more);
    g.send(&mut f.dev, update(16384), &[]);
    got.extend(
        g.recv()
            .into_iter()
            .filter(|p| p.hdr.op == op::RW)
            .flat_map(|p| p.data),
    );
    assert!(got == sent);
}

#[test]
fn rx_buffers_posted_later_restart_the_flow_without_a_socket_event() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut host, _) = host_to_guest(&mut g, &mut f, 5001);
    host.write_all(&pattern(12_000, 1)).expect("write");
    // Readable, but no rx buffers: the device must remember.
    g.poll(&mut f.dev);
    assert!(g.recv().is_empty());
    assert!(g.post_rx(&mut f.dev, 8).contains(RX_QUEUE));
    let got: Vec<u8> = g.recv().into_iter().flat_map(|p| p.data).collect();
    assert!(got == pattern(12_000, 1));
}

#[test]
fn guest_data_the_host_does_not_read_yet_is_held_within_the_credit() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut host, hport) = host_to_guest(&mut g, &mut f, 5002);
    host.set_nonblocking(true).expect("nonblocking");
    // A well-behaved guest: it sends while its view of our credit allows.
    let data = pattern(1 << 20, 3);
    let (mut sent, mut our_fwd_cnt) = (0usize, 0u32);
    let mut got = Vec::new();
    g.post_rx_quietly(64);
    while got.len() < data.len() {
        let credit = CONN_BUF_ALLOC as usize - (sent - our_fwd_cnt as usize);
        let n = credit.min(4096).min(data.len() - sent);
        if n > 0 {
            g.send(&mut f.dev, rw(5002, hport, n), &data[sent..sent + n]);
            sent += n;
        }
        for p in g.recv() {
            our_fwd_cnt = p.hdr.fwd_cnt;
            g.post_rx_quietly(1);
        }
        // The host reads only now and then.
        if sent % (64 * 4096) == 0 || n == 0 {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match host.read(&mut buf) {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            g.poll(&mut f.dev);
        }
    }
    assert!(got == data);
    assert_eq!(
        errors(&f.dev),
        0,
        "a guest within its credit is never reset"
    );
}

#[test]
fn a_guest_sending_past_its_credit_is_reset() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut host, hport) = host_to_guest(&mut g, &mut f, 5003);
    g.post_rx_quietly(8);
    let chunk = vec![0x11u8; 64 * 1024];
    let mut reset = false;
    for _ in 0..64 {
        g.send(&mut f.dev, rw(5003, hport, chunk.len()), &chunk);
        if g.recv().iter().any(|p| p.hdr.op == op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "never reset");
    assert_eq!(f.dev.connection_count(), 0);
    assert!(errors(&f.dev) >= 1);
    assert_closed(&mut host);
}

#[test]
fn host_half_close_becomes_shutdown_send_and_the_guest_can_still_answer() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut host, hport) = host_to_guest(&mut g, &mut f, 5004);
    host.write_all(b"bye").expect("write");
    host.shutdown(std::net::Shutdown::Write).expect("shutdown");
    g.post_rx_quietly(4);
    g.poll(&mut f.dev);
    let got = g.recv();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].hdr.op, &got[0].data[..]), (op::RW, &b"bye"[..]));
    assert_eq!(
        (got[1].hdr.op, got[1].hdr.flags),
        (op::SHUTDOWN, SHUTDOWN_SEND),
        "only the host's direction is shut"
    );
    // The guest answers after the host's half-close, then closes.
    g.send(&mut f.dev, rw(5004, hport, 5), b"reply");
    let mut answer = [0u8; 5];
    host.read_exact(&mut answer)
        .expect("the answer reaches the host");
    assert_eq!(&answer, b"reply");
    g.send(
        &mut f.dev,
        PacketHeader {
            flags: SHUTDOWN_BOTH,
            ..pkt(op::SHUTDOWN, 5004, hport)
        },
        &[],
    );
    let got = g.recv();
    assert!(got.iter().any(|p| p.hdr.op == op::RST), "{got:?}");
    assert_eq!(f.dev.connection_count(), 0);
    assert_closed(&mut host);
}

#[test]
fn host_hang_up_then_guest_rst_closes_quietly() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (host, hport) = host_to_guest(&mut g, &mut f, 5014);
    drop(host);
    g.post_rx_quietly(4);
    g.poll(&mut f.dev);
    let got = g.recv();
    assert!(got.iter().any(|p| p.hdr.op == op::SHUTDOWN), "{got:?}");
    g.send(&mut f.dev, pkt(op::RST, 5014, hport), &[]);
    assert_eq!(f.dev.connection_count(), 0);
    assert!(g.recv().is_empty(), "an RST is never answered");
}

#[test]
fn guest_shutdown_closes_the_host_stream_and_is_answered_with_rst() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut host, hport) = host_to_guest(&mut g, &mut f, 5005);
    g.post_rx_quietly(2);
    g.send(
        &mut f.dev,
        PacketHeader {
            flags: SHUTDOWN_BOTH,
            ..pkt(op::SHUTDOWN, 5005, hport)
        },
        &[],
    );
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].hdr.op, got[0].hdr.src_port), (op::RST, hport));
    assert_eq!(f.dev.connection_count(), 0);
    assert_closed(&mut host);
}

#[test]
fn guest_half_close_gives_the_host_eof_but_keeps_the_other_direction() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut host, hport) = host_to_guest(&mut g, &mut f, 5006);
    g.send(&mut f.dev, rw(5006, hport, 4), b"last");
    g.send(
        &mut f.dev,
        PacketHeader {
            flags: SHUTDOWN_SEND,
            ..pkt(op::SHUTDOWN, 5006, hport)
        },
        &[],
    );
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).expect("read to eof");
    assert_eq!(rest, b"last");
    host.write_all(b"reply").expect("write");
    assert_eq!(guest_read(&mut g, &mut f.dev, 5006, 5), b"reply");
}

#[test]
fn guest_rst_closes_the_host_stream() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut host, hport) = host_to_guest(&mut g, &mut f, 5007);
    g.post_rx_quietly(2);
    g.send(&mut f.dev, pkt(op::RST, 5007, hport), &[]);
    assert!(g.recv().is_empty());
    assert_eq!(f.dev.connection_count(), 0);
    assert_closed(&mut host);
}

#[test]
fn a_guest_refusing_a_host_connection_closes_it() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let mut host = host_stream(&f.uds);
    host.write_all(b"CONNECT 1\n").expect("write");
    g.post_rx_quietly(2);
    g.poll(&mut f.dev);
    let req = g.recv().pop().expect("request").hdr;
    g.send(&mut f.dev, pkt(op::RST, 1, req.src_port), &[]);
    assert_closed(&mut host);
    assert_eq!(f.dev.connection_count(), 0);
}

#[test]
fn malformed_connect_lines_close_the_host_stream() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    g.post_rx_quietly(4);
    for line in [
        &b"CONNECT abc\n"[..],
        b"HELLO 5\n",
        &[b'7'; 40],
        b"CONNECT 5",
    ] {
        let mut host = host_stream(&f.uds);
        host.write_all(line).expect("write");
        if line == b"CONNECT 5" {
            // Half a line, then end of file.
            host.shutdown(std::net::Shutdown::Write).expect("shutdown");
        }
        g.poll(&mut f.dev);
        g.poll(&mut f.dev);
        assert_closed(&mut host);
    }
    assert!(g.recv().is_empty());
    assert_eq!(f.dev.connection_count(), 0);
}

#[test]
fn host_connections_while_the_driver_is_inactive_are_closed() {
    let m = memory();
    let mut f = fixture();
    let mut host = host_stream(&f.uds);
    host.write_all(b"CONNECT 5\n").expect("write");
    f.dev.poll_all(&m, &mut []);
    assert_closed(&mut host);
    assert_eq!(f.dev.connection_count(), 0);
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    f.dev.muxer.set_max_connections(2);
    let _a = host_to_guest(&mut g, &mut f, 1);
    let listener = UnixListener::bind(port_path(&f.uds, 2)).expect("listen");
    g.post_rx_quietly(4);
    g.send(&mut f.dev, pkt(op::REQUEST, 10, 2), &[]);
    assert_eq!(g.recv()[0].hdr.op, op::RESPONSE);
    let _b = listener.accept().expect("accept");
    g.send(&mut f.dev, pkt(op::REQUEST, 11, 2), &[]);
    assert_eq!(g.recv()[0].hdr.op, op::RST);
    let mut third = host_stream(&f.uds);
    third.write_all(b"CONNECT 3\n").expect("write");
    g.poll(&mut f.dev);
    assert_closed(&mut third);
    assert_eq!(f.dev.connection_count(), 2);
}

#[test]
fn reset_drops_every_connection() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut a, _) = host_to_guest(&mut g, &mut f, 1);
    let (mut b, _) = host_to_guest(&mut g, &mut f, 2);
    f.dev.reset();
    assert_eq!(f.dev.connection_count(), 0);
    assert_closed(&mut a);
    assert_closed(&mut b);
}

#[test]
fn replies_wait_for_rx_buffers_and_go_out_when_they_come() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    for port in 0..3 {
        g.send(&mut f.dev, rw(port, 4000, 1), b"x");
    }
    assert!(g.recv().is_empty());
    assert!(g.post_rx(&mut f.dev, 3).contains(RX_QUEUE));
    let got = g.recv();
    assert_eq!(got.len(), 3);
    assert!(got
        .iter()
        .all(|p| p.hdr.op == op::RST && p.hdr.src_port == 4000));
    // Bounded: a flood of stray packets with no rx buffers drops, counts,
    // and does not grow without limit.
    for _ in 0..super::muxer::MAX_CONTROL_PACKETS + 10 {
        g.send(&mut f.dev, rw(1, 4000, 0), &[]);
    }
    assert_eq!(errors(&f.dev), 10);
}

#[test]
fn the_event_queue_keeps_its_buffers() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let addr = g.alloc(8);
    g.push_chain(EVENT_QUEUE, &[(addr, 8, true)]);
    assert_eq!(
        f.dev.process_queue(&m, EVENT_QUEUE, &mut g.queues),
        UsedQueues::NONE
    );
    assert_eq!(g.used_idx(EVENT_QUEUE), 0);
}

#[test]
fn a_restore_sends_one_transport_reset_event() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let addr = g.alloc(8);
    m.write_slice(&[0xaa; 4], GuestAddress(addr))
        .expect("poison");
    g.push_chain(EVENT_QUEUE, &[(addr, 8, true)]);
    let spare = g.alloc(8);
    g.push_chain(EVENT_QUEUE, &[(spare, 8, true)]);
    let used = f.dev.restored(&m, &mut g.queues);
    assert!(used.contains(EVENT_QUEUE), "{used:?}");
    assert_eq!(
        g.used_idx(EVENT_QUEUE),
        1,
        "one event, the other buffer kept"
    );
    let mut id = [0u8; 4];
    m.read_slice(&mut id, GuestAddress(addr))
        .expect("read event");
    assert_eq!(
        u32::from_le_bytes(id),
        0,
        "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET"
    );
}

#[test]
fn hostile_packets_are_counted_or_reset_and_never_panic() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut host, hport) = host_to_guest(&mut g, &mut f, 5008);
    g.post_rx_quietly(32);
    let before = errors(&f.dev);

    // Short header.
    let a = g.alloc(64);
    g.send_raw(&mut f.dev, &[(a, 10, false)]);
    // Header outside guest memory.
    g.send_raw(&mut f.dev, &[(0xffff_0000_0000, HDR_LEN as u32, false)]);
    // Wrong direction: only device-writable buffers on tx.
    g.send_raw(&mut f.dev, &[(a, 64, true)]);
    // Header split over two descriptors is fine (no error).
    m.write_slice(
        &pkt(op::CREDIT_REQUEST, 5008, hport).to_bytes(),
        GuestAddress(a),
    )
    .expect("hdr");
    g.send_raw(&mut f.dev, &[(a, 20, false), (a + 20, 24, false)]);
    // Spoofed source CID: dropped.
    g.send(
        &mut f.dev,
        PacketHeader {
            src_cid: 99,
            ..pkt(op::REQUEST, 1, 2)
        },
        &[],
    );
    assert_eq!(errors(&f.dev) - before, 4);
    assert_eq!(
        g.used_idx(TX_QUEUE),
        g.avail_idx(TX_QUEUE),
        "every tx chain is used"
    );
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].hdr.op, op::CREDIT_UPDATE);

    // Unknown op and wrong socket type for nobody's port: RST and counted.
    g.send(&mut f.dev, pkt(99, 1, 2), &[]);
    g.send(
        &mut f.dev,
        PacketHeader {
            socket_type: 2,
            ..pkt(op::REQUEST, 1, 2)
        },
        &[],
    );
    // To a CID other than the host: refused.
    g.send(
        &mut f.dev,
        PacketHeader {
            dst_cid: 7,
            ..pkt(op::REQUEST, 1, 2)
        },
        &[],
    );
    let got = g.recv();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|p| p.hdr.op == op::RST));
    assert_eq!(got[2].hdr.src_cid, 7);
    assert_eq!(errors(&f.dev) - before, 6);

    // A length past the buffer on a live connection: it is reset.
    g.send(&mut f.dev, rw(5008, hport, 1000), b"0123456789");
    let got = g.recv();
    assert_eq!((got.len(), got[0].hdr.op), (1, op::RST));
    assert_eq!(f.dev.connection_count(), 0);
    assert_eq!(errors(&f.dev) - before, 7);
    assert_closed(&mut host);

    // A REQUEST on an established connection, and an unknown op on one.
    let (mut h2, p2) = host_to_guest(&mut g, &mut f, 5009);
    g.post_rx_quietly(4);
    g.send(&mut f.dev, pkt(op::REQUEST, 5009, p2), &[]);
    assert_eq!(g.recv()[0].hdr.op, op::RST);
    assert_closed(&mut h2);
    let (mut h3, p3) = host_to_guest(&mut g, &mut f, 5010);
    g.post_rx_quietly(4);
    g.send(&mut f.dev, pkt(42, 5010, p3), &[]);
    assert_eq!(g.recv()[0].hdr.op, op::RST);
    assert_closed(&mut h3);
}

#[test]
fn rx_buffers_that_cannot_hold_a_header_are_returned_empty() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut h4, _) = host_to_guest(&mut g, &mut f, 5011);
    let small = g.alloc(16);
    let head = g.push_chain(RX_QUEUE, &[(small, 16, true)]);
    g.rx_addrs.insert(head, small);
    let far = g.push_chain(RX_QUEUE, &[(0xffff_0000_0000, RX_BUF, true)]);
    g.rx_addrs.insert(far, small);
    let readable_only = g.push_chain(RX_QUEUE, &[(small, RX_BUF, false)]);
    g.rx_addrs.insert(readable_only, small);
    let before = errors(&f.dev);
    h4.write_all(b"data").expect("write");
    g.poll(&mut f.dev);
    let got = g.recv();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|p| p.used_len == 0));
    assert_eq!(errors(&f.dev) - before, 3);
    // The data waits for a proper buffer.
    g.post_rx(&mut f.dev, 1);
    assert_eq!(g.recv()[0].data, b"data");
}

/// A driver gone wrong: random chains, and packet headers of every op with
/// random lengths, ports and credit, on all three queues. No panic, only
/// offered buffers used, and the host side (its listening socket in a
/// temporary directory) keeps nothing it should not.
#[test]
fn a_driver_gone_wrong_gets_resets_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    let mut dev = Vsock::new(GUEST_CID, &uds).expect("vsock");
    let _listener = UnixListener::bind(port_path(&uds, 52)).expect("listen");
    let header = |op: u16, dst_port: u32, len: u32| {
        let mut h = Vec::with_capacity(HDR_LEN);
        h.extend(GUEST_CID.to_le_bytes());
        h.extend(2u64.to_le_bytes());
        h.extend(1024u32.to_le_bytes());
        h.extend(dst_port.to_le_bytes());
        h.extend(len.to_le_bytes());
        h.extend(TYPE_STREAM.to_le_bytes());
        h.extend(op.to_le_bytes());
        h.extend(0u32.to_le_bytes());
        h.extend(CONN_BUF_ALLOC.to_le_bytes());
        h.extend(0u32.to_le_bytes());
        h.extend(b"payload");
        h
    };
    let seeds: Vec<Vec<u8>> = [
        op::REQUEST,
        op::RESPONSE,
        op::RST,
        op::SHUTDOWN,
        op::RW,
        op::CREDIT_UPDATE,
        op::CREDIT_REQUEST,
    ]
    .iter()
    .flat_map(|&o| [header(o, 52, 7), header(o, 53, 0), header(o, 52, u32::MAX)])
    .collect();
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    crate::devices::virtio::fuzz::drive(&mut dev, crate::fuzzing::iterations(), 0x50c4, &seeds)
        .assert_returns_most();
}

/// What a connection holds for a host socket that does not read is bounded
/// by the credit it gave the guest, and given back once written: an idle
/// connection holds nothing, so the device's memory is bounded by its
/// connection limit (`muxer::BUFFER_BUDGET`).
#[test]
fn held_data_is_bounded_by_the_credit_and_freed_once_written() {
    let m = memory();
    let mut g = Guest::new(&m);
    let mut f = fixture();
    let (mut host, hport) = host_to_guest(&mut g, &mut f, 5003);
    assert_eq!(f.dev.held_bytes(), 0, "an idle connection holds nothing");
    host.set_nonblocking(true).expect("nonblocking");
    // The guest sends its whole credit; the host reads nothing yet (its
    // socket buffer takes less than 256 KiB of 4 KiB writes).
    let data = pattern(CONN_BUF_ALLOC as usize, 9);
    for chunk in data.chunks(4096) {
        g.send(&mut f.dev, rw(5003, hport, chunk.len()), chunk);
    }
    let held = f.dev.held_bytes();
    assert!(held > 0 && held <= MAX_HELD, "held {held}");
    assert_eq!(errors(&f.dev), 0);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..1000 {
        match host.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => {
                g.post_rx_quietly(4);
                g.poll(&mut f.dev);
                let _ = g.recv();
            }
        }
        if got.len() == data.len() {
            break;
        }
    }
    assert!(
        got == data,
        "{} of {} bytes reached the host",
        got.len(),
        data.len()
    );
    assert_eq!(f.dev.held_bytes(), 0, "the written buffer was kept");
}
