//! Net device tests: mock guest queues on one side, a real tap on the
//! other. Every test runs on its own thread inside a network namespace it
//! creates, so its tap exists nowhere else and its frames go nowhere else;
//! an AF_PACKET socket on the tap plays the host stack.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::{mem, readable, writable};

/// EtherType of the test frames (IEEE 802 local experimental).
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// Where the tx ring lives; the rx ring is at 0.
const TX_RING: u64 = 0x1_0000;
/// Guest buffers.
const BUF: u64 = 0x10_0000;
const TAP: &str = "nettest0";
const EPOLLIN: u32 = libc::EPOLLIN as u32;

/// Runs `test` on a thread of its own in a fresh network namespace
/// (namespaces are per thread), re-raising its panic here.
fn in_netns<T: Send + 'static>(test: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this
        // thread into a new namespace.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            ret,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        test()
    });
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A socket(2) call's result as an owned descriptor.
fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> OwnedFd {
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Brings `name` up with no ARP and an MTU below IPv6's minimum, so the
/// kernel sends nothing of its own on it and every frame is the test's.
fn bring_up(name: &str) {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
    let mut req = tap::ifreq(name).expect("name");
    req.ifr_ifru.ifru_mtu = 1200;
    // SAFETY: SIOCSIFMTU reads one ifreq, `req`, alive for the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut req) };
    assert_eq!(ret, 0, "SIOCSIFMTU: {}", std::io::Error::last_os_error());
    // SAFETY: SIOCGIFFLAGS fills in one ifreq, `req`, alive for the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    assert_eq!(ret, 0, "SIOCGIFFLAGS: {}", std::io::Error::last_os_error());
    // SAFETY: SIOCGIFFLAGS just set the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_NOARP) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads one ifreq, `req`, alive for the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) };
    assert_eq!(ret, 0, "SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
}

/// An AF_PACKET socket on the tap interface: what it sends leaves through
/// the interface (and so reaches the tap fd); what the tap fd writes is
/// received by the interface (and so reaches this socket).
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(name: &str) -> Self {
        let all = (libc::ETH_P_ALL as u16).to_be();
        let sock = socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(all));
        let cname = CString::new(name).expect("name");
        // SAFETY: `cname` is a NUL-terminated string alive for the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(index, 0, "no interface {name}");
        // SAFETY: sockaddr_ll is plain integers; all zeroes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = index as libc::c_int;
        // SAFETY: the pointer and length describe `addr`, alive for the call.
        let ret = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: the pointer and length describe `timeout`, alive for the call.
        let ret = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(ret, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        Self(sock)
    }

    /// Sends `frame` out of the interface, towards the tap fd.
    fn send(&self, frame: &[u8]) {
        // SAFETY: the pointer and length describe `frame`.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// The next test frame the interface received, within 2 s.
    fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        loop {
            // SAFETY: the pointer and length describe `buf`.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(n >= 0, "no frame: {}", std::io::Error::last_os_error());
            let frame = &buf[..n as usize];
            if frame.get(12..14) == Some(&ETHERTYPE[..]) {
                return frame.to_vec();
            }
        }
    }

    /// Whether a test frame arrives within 200 ms.
    fn nothing_received(&self) -> bool {
        !readable_within(self.0.as_raw_fd(), 200)
    }
}

fn readable_within(fd: RawFd, millis: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: the pointer describes one pollfd, `pfd`, alive for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, millis) };
    n == 1
}

/// A Net on a fresh tap, and a packet socket on the same interface.
fn lab() -> (Net, PacketSocket) {
    let tap = Tap::open(TAP).expect("tap");
    bring_up(TAP);
    let sock = PacketSocket::bind(TAP);
    (Net::with_tap(tap, None).expect("net"), sock)
}

/// Waits until the tap has a frame for the device.
fn wait_for_tap(net: &Net) {
    assert!(
        readable_within(net.tap.as_raw_fd(), 2000),
        "no frame reached the tap"
    );
}

/// An Ethernet frame of `len` bytes with the test EtherType, payload `seed`-patterned.
fn frame(seed: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ETHERTYPE);
    f.extend((0..len - 14).map(|i| seed.wrapping_add(i as u8)));
    f
}

/// The rx and tx rings, and the device's view of them.
fn queues(
    m: &GuestMemoryMmap,
) -> (
    MockSplitQueue<'_, GuestMemoryMmap>,
    MockSplitQueue<'_, GuestMemoryMmap>,
    Vec<Queue>,
) {
    let rx = MockSplitQueue::new(m, 16);
    let tx = MockSplitQueue::create(m, GuestAddress(TX_RING), 16);
    let qs = vec![
        rx.create_queue().expect("rx queue"),
        tx.create_queue().expect("tx queue"),
    ];
    (rx, tx, qs)
}

/// Makes `descs` one chain at descriptor `first` and makes it available.
fn push_chain(vq: &MockSplitQueue<GuestMemoryMmap>, first: u16, descs: &[RawDescriptor]) {
    let linked: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = SplitDescriptor::from(*d);
            let flags = if i + 1 == descs.len() {
                d.flags()
            } else {
                d.flags() | VRING_DESC_F_NEXT as u16
            };
            RawDescriptor::from(SplitDescriptor::new(
                d.addr().0,
                d.len(),
                flags,
                first + i as u16 + 1,
            ))
        })
        .collect();
    vq.add_desc_chains(&linked, first).expect("chain");
}

/// Used ring entry `i`: (head, length).
fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).expect("used").load();
    (e.id(), e.len())
}

fn read_guest(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    m.read_slice(&mut buf, GuestAddress(addr)).expect("read");
    buf
}

fn counts(net: &Net) -> (u64, u64, u64) {
    let c = net.counters();
    (
        c.requests.load(Ordering::Relaxed),
        c.bytes.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
    )
}

#[test]
fn transmitted_frames_reach_the_tap_without_their_vnet_header() {
    in_netns(|| {
        let (mut net, sock) = lab();
        let m = mem();
        let (_rx, tx, mut qs) = queues(&m);
        let f = frame(1, 200);
        m.write_slice(&[0; VNET_HDR_LEN], GuestAddress(BUF))
            .expect("header");
        m.write_slice(&f[..100], GuestAddress(BUF + 0x1000))
            .expect("frame");
        m.write_slice(&f[100..], GuestAddress(BUF + 0x2000))
            .expect("frame");
        push_chain(
            &tx,
            0,
            &[
                readable(BUF, 12),
                readable(BUF + 0x1000, 100),
                readable(BUF + 0x2000, 100),
            ],
        );
        let used_queues = net.process_queue(&m, TX_QUEUE, &mut qs);
        assert_eq!(used_queues, UsedQueues::one(TX_QUEUE));
        assert_eq!(used(&tx, 0), (0, 0));
        assert_eq!(sock.recv(), f);
        assert_eq!(counts(&net), (1, 200, 0));
    });
}

#[test]
fn frames_from_the_tap_land_in_rx_buffers_behind_a_vnet_header() {
    in_netns(|| {
        let (mut net, sock) = lab();
        let m = mem();
        let (rx, _tx, mut qs) = queues(&m);
        let f = frame(7, 300);
        sock.send(&f);
        wait_for_tap(&net);
        // Header and frame in separate buffers, as the guest may post them.
        push_chain(&rx, 0, &[writable(BUF, 12), writable(BUF + 0x1000, 2048)]);
        let used_queues = net.process_backend(&m, TAP_TOKEN, EPOLLIN, &mut qs);
        assert_eq!(used_queues, UsedQueues::one(RX_QUEUE));
        assert_eq!(used(&rx, 0), (0, (VNET_HDR_LEN + f.len()) as u32));
        let header = read_guest(&m, BUF, VNET_HDR_LEN);
        assert_eq!(header[NUM_BUFFERS..], [1, 0], "num_buffers");
        assert_eq!(read_guest(&m, BUF + 0x1000, f.len()), f);
        assert_eq!(counts(&net), (1, 300, 0));
    });
}

#[test]
fn without_rx_buffers_a_frame_waits_in_the_device_for_the_next_buffer() {
    in_netns(|| {
        let (mut net, sock) = lab();
        let m = mem();
        let (rx, _tx, mut qs) = queues(&m);
        let (f1, f2) = (frame(1, 100), frame(2, 150));
        sock.send(&f1);
        sock.send(&f2);
        wait_for_tap(&net);
        let used_queues = net.process_backend(&m, TAP_TOKEN, EPOLLIN, &mut qs);
        assert_eq!(used_queues, UsedQueues::NONE);
        assert!(net.rx_pending.is_some(), "one frame held");
        assert!(
            readable_within(net.tap.as_raw_fd(), 0),
            "the other left on the tap"
        );

        push_chain(&rx, 0, &[writable(BUF, 2048)]);
        let used_queues = net.process_queue(&m, RX_QUEUE, &mut qs);
        assert_eq!(used_queues, UsedQueues::one(RX_QUEUE));
        assert_eq!(used(&rx, 0), (0, (VNET_HDR_LEN + f1.len()) as u32));
        assert_eq!(read_guest(&m, BUF + 12, f1.len()), f1);

        push_chain(&rx, 1, &[writable(BUF + 0x1000, 2048)]);
        net.process_queue(&m, RX_QUEUE, &mut qs);
        assert_eq!(used(&rx, 1), (1, (VNET_HDR_LEN + f2.len()) as u32));
        assert_eq!(read_guest(&m, BUF + 0x1000 + 12, f2.len()), f2);
        assert!(net.rx_pending.is_none());
        assert_eq!(counts(&net), (2, 250, 0));
    });
}

#[test]
fn an_inactive_driver_leaves_frames_on_the_tap_until_activation() {
    in_netns(|| {
        let (mut net, sock) = lab();
        let m = mem();
        let (rx, _tx, mut qs) = queues(&m);
        let f = frame(3, 120);
        sock.send(&f);
        wait_for_tap(&net);
        assert_eq!(
            net.process_backend(&m, TAP_TOKEN, EPOLLIN, &mut []),
            UsedQueues::NONE
        );
        assert!(net.rx_pending.is_none());
        assert!(
            readable_within(net.tap.as_raw_fd(), 0),
            "frame still queued"
        );

        push_chain(&rx, 0, &[writable(BUF, 2048)]);
        net.set_acked_features(VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_MAC));
        assert_eq!(net.activate(&m, &mut qs), UsedQueues::one(RX_QUEUE));
        assert_eq!(read_guest(&m, BUF + 12, f.len()), f);
    });
}

#[test]
fn reset_drops_the_waiting_frame() {
    in_netns(|| {
        let (mut net, sock) = lab();
        let m = mem();
        let (_rx, _tx, mut qs) = queues(&m);
        sock.send(&frame(4, 100));
        wait_for_tap(&net);
        net.process_backend(&m, TAP_TOKEN, EPOLLIN, &mut qs);
        assert!(net.rx_pending.is_some());
        net.reset();
        assert!(net.rx_pending.is_none());
    });
}

#[test]
fn hostile_tx_chains_are_counted_and_skipped() {
    in_netns(|| {
        let (mut net, sock) = lab();
        let m = mem();
        let (_rx, tx, mut qs) = queues(&m);
        let good = frame(9, 80);
        let good_at = BUF + 0x2_0000;
        m.write_slice(&[0; VNET_HDR_LEN], GuestAddress(good_at))
            .expect("header");
        m.write_slice(&good, GuestAddress(good_at + 12))
            .expect("frame");
        // A header whose GSO type the tap refuses.
        let mut bad_gso = vec![0u8; VNET_HDR_LEN];
        bad_gso[1] = 0x77;
        bad_gso.extend_from_slice(&good);
        let bad_gso_at = BUF + 0x3_0000;
        m.write_slice(&bad_gso, GuestAddress(bad_gso_at))
            .expect("bad gso");

        push_chain(&tx, 0, &[readable(BUF, 8)]); // shorter than the header
        push_chain(&tx, 1, &[readable(0xffff_0000, 100)]); // outside memory
        push_chain(&tx, 2, &[readable(BUF, 12), writable(BUF + 0x1000, 100)]);
        push_chain(&tx, 4, &[writable(BUF, 100)]); // write-only
        push_chain(&tx, 5, &[readable(BUF, MAX_PACKET as u32 + 1)]); // oversize
        push_chain(&tx, 6, &[readable(bad_gso_at, bad_gso.len() as u32)]);
        push_chain(&tx, 7, &[readable(good_at, (12 + good.len()) as u32)]);

        assert_eq!(
            net.process_queue(&m, TX_QUEUE, &mut qs),
            UsedQueues::one(TX_QUEUE)
        );
        let heads: Vec<(u32, u32)> = (0..7).map(|i| used(&tx, i)).collect();
        assert_eq!(
            heads,
            [(0, 0), (1, 0), (2, 0), (4, 0), (5, 0), (6, 0), (7, 0)]
        );
        assert_eq!(sock.recv(), good, "the good frame still goes out");
        assert!(sock.nothing_received(), "and nothing else");
        assert_eq!(counts(&net), (7, 80, 6));
    });
}

#[test]
fn hostile_rx_chains_are_counted_and_skipped() {
    in_netns(|| {
        let (mut net, sock) = lab();
        let m = mem();
        let (rx, _tx, mut qs) = queues(&m);
        let (f1, f2) = (frame(1, 200), frame(2, 210));
        sock.send(&f1);
        sock.send(&f2);
        wait_for_tap(&net);

        push_chain(&rx, 0, &[readable(BUF, 2048)]); // read-only: f1 waits
        push_chain(&rx, 1, &[writable(0xffff_0000, 2048)]); // outside memory: f1 waits
        push_chain(&rx, 2, &[writable(BUF, 20)]); // too small: f1 dropped
        push_chain(&rx, 3, &[writable(BUF + 0x1000, 2048)]);

        assert_eq!(
            net.process_backend(&m, TAP_TOKEN, EPOLLIN, &mut qs),
            UsedQueues::one(RX_QUEUE)
        );
        let heads: Vec<(u32, u32)> = (0..4).map(|i| used(&rx, i)).collect();
        assert_eq!(
            heads,
            [
                (0, 0),
                (1, 0),
                (2, 0),
                (3, (VNET_HDR_LEN + f2.len()) as u32)
            ]
        );
        assert_eq!(read_guest(&m, BUF + 0x1000 + 12, f2.len()), f2);
        assert_eq!(counts(&net), (4, 210, 3));
    });
}

#[test]
fn config_space_holds_the_mac_and_link_up() {
    in_netns(|| {
        let (net, _sock) = lab();
        let mut config = [0u8; 8];
        net.read_config(0, &mut config);
        assert_eq!(config[..6], net.mac());
        assert_eq!(config[6..], [1, 0], "VIRTIO_NET_S_LINK_UP");
        let features = net.features();
        for needed in [
            VIRTIO_F_VERSION_1,
            bit(VIRTIO_NET_F_MAC),
            bit(VIRTIO_NET_F_STATUS),
        ] {
            assert_ne!(features & needed, 0);
        }
        assert_eq!(features & bit(15), 0, "no MRG_RXBUF");
        if net.tap.supported_offloads() & libc::TUN_F_TSO4 != 0 {
            assert_ne!(features & bit(VIRTIO_NET_F_GUEST_TSO4), 0);
            assert_ne!(features & bit(VIRTIO_NET_F_GUEST_CSUM), 0);
        }
    });
}

#[test]
fn negotiated_offloads_are_applied_to_the_tap() {
    in_netns(|| {
        let (mut net, _sock) = lab();
        let m = mem();
        let (_rx, _tx, mut qs) = queues(&m);
        // Every offered feature, then none: the tap accepts both.
        net.set_acked_features(net.features());
        let wanted = tap_offloads(net.features()) & net.tap.supported_offloads();
        net.tap.set_offload(wanted).expect("offloads as negotiated");
        net.activate(&m, &mut qs);
        net.reset();
        net.activate(&m, &mut qs);
    });
}

#[test]
fn tap_offloads_follow_the_guest_features() {
    let csum = bit(VIRTIO_NET_F_GUEST_CSUM);
    assert_eq!(tap_offloads(bit(VIRTIO_NET_F_GUEST_TSO4)), 0, "no csum");
    assert_eq!(tap_offloads(csum), libc::TUN_F_CSUM);
    assert_eq!(
        tap_offloads(csum | bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6)),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    );
    assert_eq!(
        tap_offloads(csum | bit(VIRTIO_NET_F_GUEST_UFO)),
        libc::TUN_F_CSUM | libc::TUN_F_UFO
    );
}

#[test]
fn default_macs_are_stable_local_unicast_addresses() {
    let mac = default_mac("tap0");
    assert_eq!(mac, default_mac("tap0"));
    assert_ne!(mac, default_mac("tap1"));
    assert_eq!(mac[0], 0x06, "locally administered, unicast");
    assert_eq!(format_mac(&[0x06, 0, 0xab, 1, 2, 3]), "06:00:ab:01:02:03");
}

#[test]
fn multicast_macs_are_refused() {
    in_netns(|| {
        let tap = Tap::open(TAP).expect("tap");
        let err = Net::with_tap(tap, Some([0x01, 0, 0x5e, 0, 0, 1]))
            .err()
            .expect("refused");
        assert!(err.to_string().contains(TAP), "{err}");
    });
}

#[test]
fn open_errors_name_the_interface() {
    in_netns(|| {
        // "lo" exists in every namespace and is not a tap.
        let err = Net::open("lo", None).err().expect("not a tap");
        assert!(
            matches!(err, NetError::Tap(TapError::Attach { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("tap interface lo"), "{err}");
    });
}

/// The Internet checksum of `data`.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request from the guest (172.31.0.5) to `dst`, sent to
/// its gateway's MAC as Linux routes 169.254.169.254.
fn ping(mac: [u8; 6], dst: [u8; 4]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"imds");
    let sum = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![
        0x45,
        0,
        0,
        (20 + icmp.len()) as u8,
        0,
        1,
        0x40,
        0,
        64,
        1,
        0,
        0,
    ];
    ip.extend_from_slice(&[172, 31, 0, 5]);
    ip.extend_from_slice(&dst);
    let sum = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// An ARP request from the guest for `target`.
fn arp_request(mac: [u8; 6], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[172, 31, 0, 5, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&target);
    f
}

/// [`lab`] with the metadata service on the card, as on an instance's
/// primary interface.
fn metadata_lab() -> (Net, PacketSocket) {
    let (mut net, sock) = lab();
    net.serve_metadata(ec2lab_vmm_api::metadata::InstanceMetadata {
        instance_id: "i-0a1b2c3d4e5f60718".into(),
        ..Default::default()
    })
    .expect("metadata service");
    (net, sock)
}

#[test]
fn frames_for_the_metadata_service_stay_in_the_vmm_and_its_answers_reach_the_guest() {
    in_netns(|| {
        let (mut net, sock) = metadata_lab();
        let mac = net.mac();
        let m = mem();
        let (rx, tx, mut qs) = queues(&m);
        push_chain(&rx, 0, &[writable(BUF + 0x8000, 2048)]);
        push_chain(&rx, 1, &[writable(BUF + 0x9000, 2048)]);
        for (i, f) in [
            arp_request(mac, [169, 254, 169, 254]),
            ping(mac, [169, 254, 169, 254]),
        ]
        .iter()
        .enumerate()
        {
            let at = BUF + 0x1000 * i as u64;
            m.write_slice(&[0; VNET_HDR_LEN], GuestAddress(at))
                .expect("header");
            m.write_slice(f, GuestAddress(at + VNET_HDR_LEN as u64))
                .expect("frame");
            push_chain(
                &tx,
                2 * i as u16,
                &[readable(at, (VNET_HDR_LEN + f.len()) as u32)],
            );
        }
        let used_queues = net.process_queue(&m, TX_QUEUE, &mut qs);
        assert!(used_queues.contains(TX_QUEUE) && used_queues.contains(RX_QUEUE));
        assert!(sock.nothing_received(), "a metadata frame reached the tap");
        // The ARP reply: the service's MAC for 169.254.169.254.
        let (_, len) = used(&rx, 0);
        let arp = read_guest(&m, BUF + 0x8000, len as usize);
        assert_eq!(arp[..NUM_BUFFERS], [0; NUM_BUFFERS], "no offloads");
        assert_eq!(arp[NUM_BUFFERS..VNET_HDR_LEN], [1, 0], "num_buffers");
        let arp = &arp[VNET_HDR_LEN..];
        assert_eq!(
            (&arp[..6], &arp[12..14], &arp[20..22]),
            (&mac[..], &[8u8, 6][..], &[0u8, 2][..])
        );
        assert_eq!(&arp[28..32], &[169, 254, 169, 254]);
        // The echo reply, from the MAC the guest sent to.
        let (_, len) = used(&rx, 1);
        let pong = read_guest(&m, BUF + 0x9000, len as usize);
        let pong = &pong[VNET_HDR_LEN..];
        assert_eq!(&pong[..6], &mac);
        assert_eq!(&pong[6..12], &[0x02, 0, 0, 0, 0, 0x01]);
        assert_eq!(&pong[26..30], &[169, 254, 169, 254], "source address");
        assert_eq!(pong[34], 0, "an echo reply");
        // Anything else still goes to the tap.
        let other = ping(mac, [172, 31, 0, 1]);
        m.write_slice(&[0; VNET_HDR_LEN], GuestAddress(BUF + 0x4000))
            .expect("header");
        m.write_slice(&other, GuestAddress(BUF + 0x4000 + VNET_HDR_LEN as u64))
            .expect("frame");
        push_chain(
            &tx,
            4,
            &[readable(BUF + 0x4000, (VNET_HDR_LEN + other.len()) as u32)],
        );
        net.process_queue(&m, TX_QUEUE, &mut qs);
        assert!(!sock.nothing_received(), "the other frame reached the tap");
    });
}

/// A driver gone wrong on the primary network card (the metadata service
/// on): random chains, and frames for the tap, the service's ARP and ICMP
/// and its TCP port, mutated; frames from the host wait on the tap for
/// the receive queue. No panic, only offered buffers returned, and some
/// returned at all (receive buffers may wait for frames).
#[test]
fn a_driver_gone_wrong_gets_no_panic() {
    in_netns(|| {
        let (mut net, sock) = metadata_lab();
        let mac = net.mac();
        for i in 0..64 {
            sock.send(&frame(i, 60 + usize::from(i) * 16));
        }
        let with_header = |f: Vec<u8>| {
            let mut b = vec![0u8; VNET_HDR_LEN];
            b.extend(f);
            b
        };
        let seeds = [
            with_header(arp_request(mac, [169, 254, 169, 254])),
            with_header(ping(mac, [169, 254, 169, 254])),
            with_header(frame(7, 100)),
        ];
        let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
        let served = crate::devices::virtio::fuzz::drive(
            &mut net,
            crate::fuzzing::iterations(),
            0x4e7,
            &seeds,
        );
        assert!(served.used > 0, "{served:?}");
    });
}
