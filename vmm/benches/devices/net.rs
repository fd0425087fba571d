//! virtio-net rows: the device on a tap in a network namespace of the
//! bench's own (a thread that unshares CLONE_NEWNET; the namespace, its taps
//! and everything sent there vanish with the thread), against the host
//! reading and writing the same frames on a second tap.
//!
//! - tx: the "guest" posts `TX_BATCH` one-descriptor chains (zeroed 12-byte
//!   virtio_net_hdr_v1 + frame) per notify and waits for the irqfd. The
//!   frames carry a foreign destination MAC and an unhandled EtherType, so
//!   the namespace's stack drops them right after the tap hands them in.
//!   Host: write(2) of the same header + frame on a tap fd.
//! - rx: a thread in the namespace floods the tap through an AF_PACKET
//!   socket (qdisc bypassed) while the "guest" keeps `QUEUE_SIZE` buffers
//!   of 1526 bytes posted and reposts each used one on every interrupt.
//!   Host: read(2) on a tap fd, polling when it is empty.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ec2lab_vmm::devices::virtio::net::tap::{Tap, VNET_HDR_LEN};
use ec2lab_vmm::devices::virtio::net::{Net, RX_QUEUE, TX_QUEUE};
use vm_memory::{Bytes, GuestAddress};

use crate::rig::{Rig, QUEUE_SIZE, VRING_DESC_F_WRITE};

const RUN_TIME: Duration = Duration::from_secs(2);
/// Chains per tx notification.
const TX_BATCH: u16 = 128;
/// Size of each posted rx buffer: header plus a full 1514-byte frame.
const RX_BUFFER: u32 = 1526;
/// Guest addresses of the tx frames and the rx buffers, 2 KiB per slot.
const TX_FRAMES: u64 = 0x100_0000;
const RX_BUFFERS: u64 = 0x200_0000;
const SLOT: u64 = 0x800;
const DEVICE_TAP: &str = "ecb-dev";
const HOST_TAP: &str = "ecb-host";
/// Local experimental EtherType: no protocol handler takes it.
const ETHERTYPE: u16 = 0x88b5;
/// Not in the libc crate yet (linux/if_packet.h).
const PACKET_QDISC_BYPASS: libc::c_int = 20;

/// Frame sizes measured: minimum Ethernet, and a full 1500-byte MTU payload.
const FRAMES: [(&str, usize); 2] = [("64 B", 64), ("1500 B", 1514)];

fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x5a; len];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f
}

fn check(rc: libc::c_int, what: &str) -> Result<libc::c_int, String> {
    if rc < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(rc)
    }
}

/// Sets interface `name` (in this thread's namespace) up.
fn link_up(name: &str) -> Result<(), String> {
    // SAFETY: socket() returns a new descriptor or -1.
    let fd = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )?;
    // SAFETY: `fd` is a descriptor we just opened and own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all zeroes is a valid ifreq (a name and a union of integers).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads and writes one ifreq we own.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    check(rc, "SIOCGIFFLAGS")?;
    // SAFETY: the union was just filled as flags by SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads one ifreq we own.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) };
    check(rc, &format!("bring {name} up"))?;
    Ok(())
}

/// A packet socket that sends frames out of interface `name`, past the
/// qdisc when the kernel allows it.
fn injector_socket(name: &str) -> Result<OwnedFd, String> {
    let cname = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(format!("no interface {name}"));
    }
    // Protocol 0: the socket sends only and sees no traffic.
    // SAFETY: socket() returns a new descriptor or -1.
    let fd = check(
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) },
        "AF_PACKET socket",
    )?;
    // SAFETY: `fd` is a descriptor we just opened and own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all zeroes is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = index as i32;
    // SAFETY: bind reads a sockaddr_ll of the length given.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    check(rc, "bind AF_PACKET")?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one int. Failure only means the qdisc stays.
    let _ = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_QDISC_BYPASS,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    Ok(sock)
}

/// Floods interface `name` with `frame` until stopped; counts the frames
/// the tap took and those it refused (its queue full: ENOBUFS).
struct Injector {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Injector {
    fn start(name: &str, frame: Vec<u8>) -> Result<Injector, String> {
        let sock = injector_socket(name)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let (s, n, r) = (stop.clone(), sent.clone(), refused.clone());
        // Spawned from the namespaced thread, so it lives there too.
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // SAFETY: send reads `frame.len()` bytes of `frame`.
                let rc =
                    unsafe { libc::send(sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
                if rc > 0 {
                    n.fetch_add(1, Ordering::Relaxed);
                } else {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Injector {
            stop,
            sent,
            refused,
            thread,
        })
    }

    /// Stops; returns (frames the tap took, frames it refused).
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("injector");
        (
            self.sent.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// The tap's (rx packets, rx dropped) from this thread's namespace: what
/// the VMM wrote into the tap, as the interface counts it.
fn tap_stats(name: &str) -> (u64, u64) {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
    dev.lines()
        .find_map(|l| {
            let (ifname, rest) = l.split_once(':')?;
            if ifname.trim() != name {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some((*v.get(1)?, *v.get(3)?))
        })
        .unwrap_or_default()
}

struct Measured {
    packets: u64,
    secs: f64,
    device_cpu: Option<f64>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.packets as f64 / self.secs
    }
}

fn guest_tx(rig: &mut Rig, len: usize) -> Measured {
    let wire = (VNET_HDR_LEN + len) as u32;
    let mut packet = vec![0u8; VNET_HDR_LEN];
    packet.extend_from_slice(&frame(len));
    for slot in 0..u64::from(QUEUE_SIZE) {
        rig.mem
            .write_slice(&packet, GuestAddress(TX_FRAMES + slot * SLOT))
            .expect("tx frame");
    }
    let (requests0, errors0) = rig.counters();
    let (start, cpu0) = (Instant::now(), rig.device_cpu());
    let mut packets = 0u64;
    while start.elapsed() < RUN_TIME {
        for _ in 0..TX_BATCH {
            let head = rig.next_avail(TX_QUEUE) % QUEUE_SIZE;
            let addr = TX_FRAMES + u64::from(head) * SLOT;
            rig.set_desc(TX_QUEUE, head, addr, wire, 0, 0);
            rig.push_avail(TX_QUEUE, head);
        }
        rig.kick(TX_QUEUE);
        while rig.used_idx(TX_QUEUE) != rig.next_avail(TX_QUEUE) {
            rig.wait_irq();
        }
        packets += u64::from(TX_BATCH);
    }
    let secs = start.elapsed().as_secs_f64();
    let device_cpu = rig
        .device_cpu()
        .zip(cpu0)
        .map(|(b, a)| (b - a).as_secs_f64());
    let (requests, errors) = rig.counters();
    assert_eq!(errors, errors0, "the device reported tx errors");
    // The counters also count any frame the namespace sent to the guest.
    assert!(requests - requests0 >= packets, "frames the device sent");
    Measured {
        packets,
        secs,
        device_cpu,
    }
}

fn host_tx(tap: &Tap, len: usize) -> Measured {
    let mut packet = vec![0u8; VNET_HDR_LEN];
    packet.extend_from_slice(&frame(len));
    let start = Instant::now();
    let mut packets = 0u64;
    while start.elapsed() < RUN_TIME {
        for _ in 0..TX_BATCH {
            tap.write(&packet).expect("write to the tap");
        }
        packets += u64::from(TX_BATCH);
    }
    Measured {
        packets,
        secs: start.elapsed().as_secs_f64(),
        device_cpu: None,
    }
}

/// Frames of `len` bytes the guest received while the injector ran, how
/// many the injector sent, and how many used buffers held something else.
/// `consumed` is the used index the guest has processed up to.
fn guest_rx(
    rig: &mut Rig,
    len: usize,
    consumed: &mut u16,
) -> Result<(Measured, (u64, u64), u64), String> {
    let expected = (VNET_HDR_LEN + len) as u32;
    let injector = Injector::start(DEVICE_TAP, frame(len))?;
    let (start, cpu0) = (Instant::now(), rig.device_cpu());
    let (mut packets, mut other) = (0u64, 0u64);
    while start.elapsed() < RUN_TIME {
        rig.wait_irq();
        let used = rig.used_idx(RX_QUEUE);
        while *consumed != used {
            let (head, written) = rig.used_elem(RX_QUEUE, *consumed);
            if written == expected {
                packets += 1;
            } else {
                other += 1;
            }
            rig.push_avail(RX_QUEUE, head);
            *consumed = consumed.wrapping_add(1);
        }
        rig.kick(RX_QUEUE);
    }
    let secs = start.elapsed().as_secs_f64();
    let device_cpu = rig
        .device_cpu()
        .zip(cpu0)
        .map(|(b, a)| (b - a).as_secs_f64());
    let injected = injector.stop();
    // Take what is still queued in the tap, so the next row starts empty.
    loop {
        let used = rig.used_idx(RX_QUEUE);
        while *consumed != used {
            let (head, _) = rig.used_elem(RX_QUEUE, *consumed);
            rig.push_avail(RX_QUEUE, head);
            *consumed = consumed.wrapping_add(1);
        }
        rig.kick(RX_QUEUE);
        if !rig.wait_irq_for(Duration::from_millis(200)) {
            break;
        }
    }
    Ok((
        Measured {
            packets,
            secs,
            device_cpu,
        },
        injected,
        other,
    ))
}

fn host_rx(tap: &Tap, len: usize) -> Result<(Measured, (u64, u64)), String> {
    let expected = VNET_HDR_LEN + len;
    let mut buf = vec![0u8; RX_BUFFER as usize];
    let injector = Injector::start(HOST_TAP, frame(len))?;
    let start = Instant::now();
    let mut packets = 0u64;
    while start.elapsed() < RUN_TIME {
        match tap.read(&mut buf) {
            Ok(n) if n == expected => packets += 1,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: tap.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll reads and writes one pollfd we own.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
            Err(e) => return Err(format!("read the tap: {e}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let injected = injector.stop();
    // Empty the tap for the next row.
    while tap.read(&mut buf).is_ok() {}
    Ok((
        Measured {
            packets,
            secs,
            device_cpu: None,
        },
        injected,
    ))
}

fn unit(rate: f64, len: usize) -> String {
    let gbit = rate * len as f64 * 8.0 / 1e9;
    format!("{rate:.0} pkt/s ({gbit:.2} Gbit/s)")
}

fn cpu_cells(m: &Measured, len: usize) -> String {
    match m.device_cpu {
        Some(cpu) => {
            let per_mpkt = cpu / (m.packets as f64 / 1e6);
            let per_gib = cpu / (m.packets as f64 * len as f64 / f64::from(1u32 << 30));
            format!("{per_mpkt:.2} | {per_gib:.2}")
        }
        None => "n/a | n/a".to_string(),
    }
}

/// Everything that must run inside the bench's namespace: returns the
/// table and notes to print.
fn rows_in_namespace() -> Result<Vec<String>, String> {
    let before = std::fs::read_link("/proc/thread-self/ns/net").map_err(|e| e.to_string())?;
    // SAFETY: unshare moves only this thread into a new network namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    check(rc, "unshare(CLONE_NEWNET) (needs root)")?;
    let after = std::fs::read_link("/proc/thread-self/ns/net").map_err(|e| e.to_string())?;
    if before == after {
        return Err("still in the host's network namespace".into());
    }
    let device_tap = Tap::open(DEVICE_TAP).map_err(|e| e.to_string())?;
    let host_tap = Tap::open(HOST_TAP).map_err(|e| e.to_string())?;
    link_up(DEVICE_TAP)?;
    link_up(HOST_TAP)?;
    let net = Net::with_tap(device_tap, None).map_err(|e| e.to_string())?;
    let mut rig = Rig::new(Box::new(net), 64 << 20);
    for head in 0..QUEUE_SIZE {
        let addr = RX_BUFFERS + u64::from(head) * SLOT;
        rig.set_desc(RX_QUEUE, head, addr, RX_BUFFER, VRING_DESC_F_WRITE, 0);
        rig.push_avail(RX_QUEUE, head);
    }
    rig.kick(RX_QUEUE);
    let mut rx_consumed = 0u16;

    let mut out = vec![
        format!(
            "| virtio-net, tap in a private netns, {}-frame tx batches, {} rx buffers | ec2lab device path | host tap write/read | ratio | device thread CPU s per M packets | per GiB |",
            TX_BATCH, QUEUE_SIZE
        ),
        "|---|---|---|---|---|---|".to_string(),
    ];
    let mut notes = Vec::new();
    for (name, len) in FRAMES {
        let s0 = tap_stats(DEVICE_TAP);
        let guest = guest_tx(&mut rig, len);
        let s1 = tap_stats(DEVICE_TAP);
        let host = host_tx(&host_tap, len);
        out.push(format!(
            "| tx {name} | {} | {} | {:.2} | {} |",
            unit(guest.rate(), len),
            unit(host.rate(), len),
            guest.rate() / host.rate(),
            cpu_cells(&guest, len)
        ));
        notes.push(format!(
            "tx {name}: the namespace received {} of the {} frames the guest sent and dropped {} (foreign MAC, no handler: as intended)",
            s1.0 - s0.0,
            guest.packets,
            s1.1 - s0.1
        ));
    }
    for (name, len) in FRAMES {
        let (guest, guest_injected, other) = guest_rx(&mut rig, len, &mut rx_consumed)?;
        let (host, host_injected) = host_rx(&host_tap, len)?;
        out.push(format!(
            "| rx {name} | {} | {} | {:.2} | {} |",
            unit(guest.rate(), len),
            unit(host.rate(), len),
            guest.rate() / host.rate(),
            cpu_cells(&guest, len)
        ));
        let offered = |(took, refused): (u64, u64)| {
            format!(
                "{:.0} frames/s offered, {:.0}% taken",
                (took + refused) as f64 / RUN_TIME.as_secs_f64(),
                100.0 * took as f64 / (took + refused).max(1) as f64
            )
        };
        notes.push(format!(
            "rx {name}: injector {} (ec2lab) / {} (host), the rest refused with the tap's queue full{}",
            offered(guest_injected),
            offered(host_injected),
            if other > 0 {
                format!("; {other} other frames (IPv6 from the namespace) reached the guest")
            } else {
                String::new()
            }
        ));
    }
    out.push(String::new());
    out.extend(notes);
    Ok(out)
}

/// Runs the net rows and prints their table (or why they were skipped).
pub fn run() {
    // Namespaces are per thread: this thread and those it spawns (the
    // device thread, the injectors) are the only ones in the bench's.
    match std::thread::spawn(rows_in_namespace).join() {
        Ok(Ok(lines)) => {
            for line in lines {
                println!("{line}");
            }
        }
        Ok(Err(why)) => println!("virtio-net rows skipped: {why}"),
        Err(_) => {
            println!("virtio-net rows failed (see the panic above)");
            std::process::exit(1);
        }
    }
}
