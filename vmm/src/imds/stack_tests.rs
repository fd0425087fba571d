//! The metadata service's TCP/IP side, driven the way a guest drives it:
//! a second smoltcp stack plays the guest's kernel, its packets wrapped in
//! Ethernet frames addressed to the guest's gateway, as Linux sends them
//! when it routes 169.254.169.254.

use std::time::{Duration, Instant};

use ec2lab_vmm_api::metadata::{HttpTokens, InstanceMetadata};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr, Ipv4Address, Ipv4Packet};

use super::stack::{diverts, Frames, ImdsStack, IDLE, IMDS_ADDR, IMDS_MAC, MAX_CONNECTIONS};

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn doc() -> InstanceMetadata {
    InstanceMetadata {
        instance_id: "i-0a1b2c3d4e5f60718".into(),
        local_ipv4: "172.31.0.5".into(),
        availability_zone: "us-east-1a".into(),
        ..InstanceMetadata::default()
    }
}

/// The guest: its stack, its wire to the card (the service's own packet
/// queues: `from_stack` is what the guest sends, `to_stack` what it gets),
/// and what it saw.
struct Guest {
    iface: Interface,
    wire: Frames,
    sockets: SocketSet<'static>,
    t0: Instant,
    now: Instant,
    /// Every frame the service sent, as the guest's card received it.
    seen: Vec<Vec<u8>>,
}

impl Guest {
    fn new() -> Self {
        let mut wire = Frames::default();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = 7;
        let mut iface = Interface::new(config, &mut wire, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(Ipv4Address::new(172, 31, 0, 5).into(), 20))
                .expect("room");
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(172, 31, 0, 1))
            .expect("room");
        let t0 = Instant::now();
        Guest {
            iface,
            wire,
            sockets: SocketSet::new(Vec::new()),
            t0,
            now: t0,
            seen: Vec::new(),
        }
    }

    fn stamp(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros((self.now - self.t0).as_micros() as i64)
    }

    fn connect(&mut self, port: u16) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        socket
            .connect(self.iface.context(), (IMDS_ADDR, 80), port)
            .expect("connect");
        self.sockets.add(socket)
    }

    /// Moves packets both ways until nothing moves.
    fn pump(&mut self, stack: &mut ImdsStack) {
        for _ in 0..200 {
            let stamp = self.stamp();
            self.iface.poll(stamp, &mut self.wire, &mut self.sockets);
            let mut moved = false;
            while let Some(packet) = self.wire.from_stack.pop_front() {
                let mut frame = GATEWAY_MAC.to_vec();
                frame.extend_from_slice(&GUEST_MAC);
                frame.extend_from_slice(&[0x08, 0x00]);
                frame.extend_from_slice(&packet);
                assert!(diverts(&frame));
                stack.receive(&frame, self.now);
                moved = true;
            }
            stack.poll(self.now);
            while let Some(frame) = stack.next_frame() {
                self.seen.push(frame.clone());
                self.wire.to_stack.push_back(frame[14..].to_vec());
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the exchange never settles");
    }

    /// One HTTP exchange on a fresh connection: the answer's text.
    fn http(&mut self, stack: &mut ImdsStack, request: &str, port: u16) -> String {
        let handle = self.connect(port);
        self.pump(stack);
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        assert!(socket.may_send(), "not connected: {}", socket.state());
        socket.send_slice(request.as_bytes()).expect("send");
        self.pump(stack);
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let mut answer = vec![0; 65536];
        let n = socket.recv_slice(&mut answer).unwrap_or(0);
        socket.close();
        self.pump(stack);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }
}

fn get(path: &str, token: Option<&str>) -> String {
    let token = token
        .map(|t| format!("X-aws-ec2-metadata-token: {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{token}\r\n")
}

fn body(answer: &str) -> &str {
    answer.split("\r\n\r\n").nth(1).unwrap_or("")
}

#[test]
fn a_v1_get_is_answered_over_tcp_from_the_mac_the_guest_sent_to() {
    let mut guest = Guest::new();
    let mut stack = ImdsStack::new(doc(), GUEST_MAC, guest.now).expect("stack");
    let answer = guest.http(
        &mut stack,
        &get("/latest/meta-data/instance-id", None),
        40000,
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(body(&answer), "i-0a1b2c3d4e5f60718");
    assert!(!guest.seen.is_empty());
    for frame in &guest.seen {
        assert_eq!(&frame[..6], &GUEST_MAC, "to the card");
        assert_eq!(
            &frame[6..12],
            &GATEWAY_MAC,
            "from the gateway the guest used"
        );
        let ip = Ipv4Packet::new_checked(&frame[14..]).expect("IPv4");
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), IMDS_ADDR);
    }
}

#[test]
fn a_v2_token_leaves_with_the_hop_limit_as_its_ttl_and_opens_the_metadata() {
    let mut guest = Guest::new();
    let mut required = doc();
    required.options.http_tokens = HttpTokens::Required;
    required.options.hop_limit = 1;
    let mut stack = ImdsStack::new(required, GUEST_MAC, guest.now).expect("stack");
    let put = "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
               X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
    let answer = guest.http(&mut stack, put, 40001);
    let token = body(&answer).to_string();
    assert_eq!(token.len(), 56, "{answer}");
    let token_ttls: Vec<u8> = guest
        .seen
        .iter()
        .filter_map(|f| Ipv4Packet::new_checked(&f[14..]).ok())
        .filter(|ip| ip.payload().len() > 20 + 56)
        .map(|ip| ip.hop_limit())
        .collect();
    assert_eq!(token_ttls, vec![1], "the segment with the token");
    let refused = guest.http(
        &mut stack,
        &get("/latest/meta-data/instance-id", None),
        40002,
    );
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let az = guest.http(
        &mut stack,
        &get(
            "/latest/meta-data/placement/availability-zone",
            Some(&token),
        ),
        40003,
    );
    assert_eq!(body(&az), "us-east-1a");
}

#[test]
fn arp_for_the_service_is_answered_with_its_mac_and_other_arp_is_not_ours() {
    let mut stack = ImdsStack::new(doc(), GUEST_MAC, Instant::now()).expect("stack");
    let arp = |target: [u8; 4]| {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[172, 31, 0, 5]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f
    };
    assert!(!diverts(&arp([172, 31, 0, 1])));
    let request = arp([169, 254, 169, 254]);
    assert!(diverts(&request));
    stack.receive(&request, Instant::now());
    let reply = stack.next_frame().expect("an ARP reply");
    assert_eq!(&reply[..6], &GUEST_MAC);
    assert_eq!(&reply[6..12], &IMDS_MAC);
    assert_eq!(&reply[12..14], &[0x08, 0x06]);
    assert_eq!(&reply[20..22], &[0, 2], "a reply");
    assert_eq!(&reply[22..28], &IMDS_MAC, "sender MAC");
    assert_eq!(&reply[28..32], &[169, 254, 169, 254]);
    assert_eq!(&reply[38..42], &[172, 31, 0, 5]);
    assert!(stack.next_frame().is_none());
}

#[test]
fn only_frames_for_169_254_169_254_are_diverted() {
    let mut ip = vec![0u8; 34];
    ip[12..14].copy_from_slice(&[0x08, 0x00]);
    ip[30..34].copy_from_slice(&[169, 254, 169, 254]);
    assert!(diverts(&ip));
    ip[33] = 253;
    assert!(!diverts(&ip));
    ip[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert!(!diverts(&ip));
    assert!(!diverts(&[]));
    assert!(!diverts(&ip[..20]));
}

#[test]
fn with_the_endpoint_disabled_nothing_answers() {
    let mut guest = Guest::new();
    let mut off = doc();
    off.options.http_endpoint = false;
    let mut stack = ImdsStack::new(off, GUEST_MAC, guest.now).expect("stack");
    let handle = guest.connect(40010);
    guest.pump(&mut stack);
    assert!(guest.seen.is_empty(), "no SYN-ACK, no RST: silence");
    assert!(!guest.sockets.get::<tcp::Socket>(handle).may_send());
}

#[test]
fn connections_beyond_the_pool_are_refused_and_idle_ones_reset() {
    let mut guest = Guest::new();
    let mut stack = ImdsStack::new(doc(), GUEST_MAC, guest.now).expect("stack");
    let handles: Vec<_> = (0..=MAX_CONNECTIONS as u16)
        .map(|i| guest.connect(41000 + i))
        .collect();
    guest.pump(&mut stack);
    let open = handles
        .iter()
        .filter(|h| guest.sockets.get::<tcp::Socket>(**h).may_send())
        .count();
    assert_eq!(open, MAX_CONNECTIONS);
    // Nobody says anything: after IDLE every connection is reset and the
    // pool serves again.
    guest.now += IDLE + Duration::from_secs(1);
    assert!(stack.poll_delay(guest.now).is_some());
    stack.poll(guest.now);
    guest.pump(&mut stack);
    let still = handles
        .iter()
        .filter(|h| guest.sockets.get::<tcp::Socket>(**h).may_send())
        .count();
    assert_eq!(still, 0);
    let answer = guest.http(
        &mut stack,
        &get("/latest/meta-data/instance-id", None),
        42000,
    );
    assert_eq!(body(&answer), "i-0a1b2c3d4e5f60718");
}

/// Random frames into the diversion path: no panic, nothing unbounded,
/// and whatever comes out is addressed to the card.
#[test]
fn fuzzed_frames_never_panic_or_pile_up() {
    let now = Instant::now();
    let mut stack = ImdsStack::new(doc(), GUEST_MAC, now).expect("stack");
    let mut rand = crate::fuzzing::Rand::new(0x2545_f491_4f6c_dd1du64);
    let mut next = move || rand.next();
    for round in 0..crate::fuzzing::iterations() {
        let len = (next() % 200) as usize;
        let mut frame: Vec<u8> = (0..len.max(42)).map(|_| next() as u8).collect();
        // Most frames look like ours, so they get past the classifier.
        if round % 4 != 0 {
            frame[12..14].copy_from_slice(if round % 3 == 0 { &[8, 6] } else { &[8, 0] });
            frame[14] = 0x45;
            frame[30..34].copy_from_slice(&[169, 254, 169, 254]);
            frame[38..42].copy_from_slice(&[169, 254, 169, 254]);
        }
        if diverts(&frame) {
            stack.receive(&frame, now);
        }
        if round % 16 == 0 {
            while let Some(out) = stack.next_frame() {
                assert_eq!(&out[..6], &GUEST_MAC);
            }
        }
    }
    let mut left = 0;
    while stack.next_frame().is_some() {
        left += 1;
    }
    assert!(left <= 2 * super::stack::MAX_QUEUED_FRAMES, "{left}");
}
