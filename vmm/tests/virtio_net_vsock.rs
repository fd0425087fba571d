//! virtio-net and virtio-vsock seen from a real guest, in one boot of the
//! lab kernel (full boots are slow on kernel-emulating hosts, so this one
//! checks many things):
//!
//! - net: the VMM runs inside a network namespace the test creates, on a
//!   tap there. The guest (addressed by the kernel's `ip=`) and the
//!   namespace ping each other, and 10 MiB (2 MiB on hosts that emulate
//!   the guest kernel, see `transfer_bytes`) cross the link over TCP in each
//!   direction, compared by SHA-256.
//! - vsock: a host process connects to the VMM's Unix socket and sends
//!   `CONNECT 5000` to reach a guest echo server (several connections at
//!   once); then the guest connects out to host port 6000, which the VMM
//!   maps to `<uds>_6000`, where the test echoes.
//! - jail: the VMM runs with `--jail` on the test's directory; its mount
//!   table is that one directory (nosuid, noexec) as its root, and the
//!   guest's outgoing vsock connections still reach `<uds>_6000`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{
    api, cached_kernel, repo_root, root_image, static_binary, status, NetNs, Outcome, Vmm,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes sent each way over TCP: 10 MiB on bare-metal KVM, 2 MiB on any
/// host that emulates the guest kernel. Guest TCP there measured about
/// 50 KiB/s on AMD hosts and on some Intel ones (an Intel Xeon host on
/// 2026-12-03: 10 MiB guest to host took about three minutes and the way
/// back did not finish in the boot timeout), 1.75–2.9 MiB/s on others, so
/// the vendor does not tell which a host is.
/// vCPUs of the guest: 2, but 1 on AMD hosts that emulate the guest kernel,
/// where a guest with two vCPUs occasionally loses a freshly exec'd program
/// (or init itself, seen here) to the host fault in
/// guest-images/kernel/NOTES.md; SMP is covered there by the lab-kernel and
/// virtio-boot tests, which boot once more on that fault.
fn vcpus() -> &'static str {
    if common::on_emulating_host() && common::host_is_amd() {
        "1"
    } else {
        "2"
    }
}

fn transfer_bytes() -> usize {
    if common::on_emulating_host() {
        2 << 20
    } else {
        10 << 20
    }
}
const GUEST_IP: &str = "10.0.2.15";
const HOST_IP: &str = "10.0.2.1";
const GUEST_MAC: &str = "06:00:0a:00:02:0f";
const VSOCK_CONNECTIONS: usize = 3;
const VSOCK_BYTES: usize = 64 * 1024;

fn sha256(data: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&data).expect("feed sha256sum"));
    let out = child.wait_with_output().expect("sha256sum");
    writer.join().expect("writer");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Pseudo-random bytes that no compression or pattern can fake.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn vsock_pattern(conn: usize, offset: usize) -> u8 {
    (offset * 7 + conn * 31 + (offset >> 9)) as u8
}

/// The host side of one `CONNECT <port>` connection: handshake, then send
/// `VSOCK_BYTES` and read the echo back.
fn host_initiated(uds: &Path, port: u32, conn: usize) -> Result<(), String> {
    let stream = UnixStream::connect(uds).map_err(|e| format!("connect {uds:?}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    writer
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("OK ") {
        return Err(format!("handshake answered {line:?}"));
    }
    let data: Vec<u8> = (0..VSOCK_BYTES).map(|i| vsock_pattern(conn, i)).collect();
    let sender = thread::spawn(move || {
        let r = writer.write_all(&data);
        let _ = writer.shutdown(std::net::Shutdown::Write);
        r
    });
    let mut echoed = Vec::new();
    reader
        .read_to_end(&mut echoed)
        .map_err(|e| format!("read echo: {e}"))?;
    sender
        .join()
        .map_err(|_| "sender panicked".to_string())?
        .map_err(|e| format!("send: {e}"))?;
    let expected: Vec<u8> = (0..VSOCK_BYTES).map(|i| vsock_pattern(conn, i)).collect();
    if echoed != expected {
        return Err(format!(
            "connection {conn}: {} bytes echoed, {} expected, contents differ",
            echoed.len(),
            expected.len()
        ));
    }
    Ok(())
}

#[test]
fn guest_pings_moves_megabytes_each_way_over_tap_and_echoes_over_vsock_both_ways() {
    require_kvm!("virtio_net_vsock");
    let Some(kernel) = cached_kernel("virtio_net_vsock", "kernels/lab/vmlinux") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = static_binary(
        dir.path(),
        &repo_root().join("vmm/tests/guests/userspace/vsock_echo.c"),
        "vsock_echo",
    );
    let transfer = transfer_bytes();
    let to_host = payload(transfer, 0x5eed);
    let to_guest = Arc::new(payload(transfer, 0xfeed));
    let to_host_file = dir.path().join("to_host.bin");
    std::fs::write(&to_host_file, &to_host).expect("payload");

    let script = format!(
        r#"#!/bin/sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
echo "NET-INIT eth0 $($B cat /sys/class/net/eth0/address) $($B ip addr show eth0 | $B grep -o 'inet [0-9./]*')"
$B ping -c 2 -W 10 {HOST_IP} > /dev/null && echo "NET-INIT ping-ok"
$B nc {HOST_IP} 5001 < /to_host.bin
echo "NET-INIT sent status=$?"
$B nc {HOST_IP} 5002 < /dev/null > /from_host.bin
echo "NET-INIT received $($B sha256sum /from_host.bin | $B cut -d' ' -f1)"
$B nc {HOST_IP} 5003 < /dev/null
/vsock_echo serve 5000 {VSOCK_CONNECTIONS}
/vsock_echo connect 6000 {VSOCK_CONNECTIONS} {VSOCK_BYTES}
$B poweroff -f
"#
    );
    // Each boot gets its own scratch directory (sockets, root image).
    let boot = |n: u32| {
        let scratch = dir.path().join(format!("boot{n}"));
        std::fs::create_dir(&scratch).expect("scratch directory");
        exchange(
            &kernel,
            &scratch,
            &script,
            &echo,
            &to_host_file,
            to_guest.clone(),
        )
    };
    let mut run = boot(0);
    if common::hit_known_host_fault(&run.out) {
        println!(
            "known AMD kvm_pvm host fault in this boot (NOTES.md); booting once more\n{}",
            run.out
        );
        run = boot(1);
    }
    let Exchange {
        out,
        received,
        echoed,
        vm,
    } = run;
    out.assert_code(status::POWEROFF);
    out.assert_stdout_contains(&format!("NET-INIT eth0 {GUEST_MAC} inet {GUEST_IP}/24"));
    out.assert_stdout_contains("NET-INIT ping-ok");
    out.assert_stdout_contains("NET-INIT sent status=0");
    out.assert_stdout_contains(&format!("NET-INIT received {}", sha256(&to_guest)));
    assert_eq!(received.len(), transfer, "bytes the namespace received");
    assert!(received == to_host, "guest → host data differs");
    out.assert_stdout_contains(&format!(
        "VSOCK-GUEST served {VSOCK_CONNECTIONS} connections, echoed {} bytes",
        VSOCK_CONNECTIONS * VSOCK_BYTES
    ));
    out.assert_stdout_contains("VSOCK-GUEST connect ok");
    assert_eq!(echoed, VSOCK_CONNECTIONS * VSOCK_BYTES);

    let devices = vm["devices"].as_array().expect("devices");
    let kinds: Vec<&str> = devices.iter().filter_map(|d| d["type"].as_str()).collect();
    assert_eq!(kinds, ["block", "net", "vsock"], "{vm}");
    assert!(
        devices[1]["counters"]["bytes"].as_u64().unwrap_or(0) >= 2 * transfer as u64,
        "{vm}"
    );
}

/// What one boot of the exchange produced, checked by the test.
struct Exchange {
    out: Outcome,
    /// The bytes the namespace received from the guest over TCP.
    received: Vec<u8>,
    /// The bytes the test echoed on the guest's outgoing vsock connections.
    echoed: usize,
    /// `GET /vm` while the guest still ran.
    vm: serde_json::Value,
}

/// Boots the guest once and runs every exchange with it.
fn exchange(
    kernel: &Path,
    dir: &Path,
    script: &str,
    echo: &Path,
    to_host_file: &Path,
    to_guest: Arc<Vec<u8>>,
) -> Exchange {
    let root = root_image(
        dir,
        script,
        &[(to_host_file, "to_host.bin"), (echo, "vsock_echo")],
    );

    let ns = NetNs::new("net");
    ns.add_tap("tap0", &format!("{HOST_IP}/24"));

    // The namespace's side of the three TCP exchanges, in a thread that
    // lives in the namespace.
    let ns_name = ns.name.clone();
    let server_to_guest = to_guest.clone();
    let server = thread::spawn(move || {
        common::enter_netns(&ns_name);
        let listen = |port: u16| TcpListener::bind((HOST_IP, port)).expect("listen");
        let (l1, l2, l3) = (listen(5001), listen(5002), listen(5003));
        let (mut c, _) = l1.accept().expect("accept 5001");
        let mut received = Vec::new();
        c.read_to_end(&mut received)
            .expect("receive from the guest");
        drop(c);
        let (mut c, _) = l2.accept().expect("accept 5002");
        c.write_all(&server_to_guest).expect("send to the guest");
        drop(c);
        let (c, _) = l3.accept().expect("accept 5003");
        (received, c)
    });

    // The guest's outgoing vsock connections land on <uds>_6000.
    let uds = dir.join("vm.vsock");
    let guest_listener = UnixListener::bind(format!("{}_6000", uds.display())).expect("bind");
    let echo_server = thread::spawn(move || {
        let mut handlers = Vec::new();
        for _ in 0..VSOCK_CONNECTIONS {
            let (mut s, _) = guest_listener.accept().expect("accept a guest connection");
            handlers.push(thread::spawn(move || {
                let mut r = s.try_clone().expect("clone");
                std::io::copy(&mut r, &mut s).expect("echo")
            }));
        }
        handlers
            .into_iter()
            .map(|h| h.join().expect("echo thread"))
            .sum::<u64>()
    });

    let sock = dir.join("api.sock");
    let disk = root.display().to_string();
    let net = format!("tap=tap0,mac={GUEST_MAC}");
    let vsock = format!("cid=3,uds={}", uds.display());
    let cmdline = format!(
        "console=ttyS0 root=/dev/vda rw init=/init ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off"
    );
    let mut vmm = Vmm::spawn_in(
        &ns,
        [
            "--kernel",
            &kernel.display().to_string(),
            "--cmdline",
            &cmdline,
            "--memory-mib",
            "256",
            "--vcpus",
            vcpus(),
            "--api-sock",
            &sock.display().to_string(),
            "--disk",
            &disk,
            "--net",
            &net,
            "--vsock",
            &vsock,
            // Jailed: the guest's outgoing connections below reach <uds>_6000
            // as the VMM sees it, inside its own mount namespace.
            "--jail",
            &dir.display().to_string(),
        ],
    );

    vmm.wait_for_stdout("NET-INIT received", BOOT_TIMEOUT);
    // The jailed VMM sees one mount: this test's directory, as its root.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", vmm.pid()))
        .expect("the VMM's mounts");
    let dir_real = std::fs::canonicalize(dir).expect("canonical dir");
    let fields: Vec<Vec<&str>> = mounts
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        fields.len() == 1
            && fields[0].get(3) == Some(&dir_real.to_str().unwrap_or_default())
            && fields[0].get(4) == Some(&"/")
            && fields[0]
                .get(5)
                .is_some_and(|o| o.contains("nosuid") && o.contains("noexec")),
        "the VMM's mounts:\n{mounts}"
    );
    // The guest now waits on port 5003: ping it from the namespace first.
    let ping = ns
        .command(&[
            &common::busybox(dir).display().to_string(),
            "ping",
            "-c",
            "2",
            "-W",
            "10",
            GUEST_IP,
        ])
        .output()
        .expect("ping");
    let (received, release) = server.join().expect("namespace server");
    drop(release);
    assert!(
        ping.status.success(),
        "namespace → guest ping failed: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    vmm.wait_for_stdout("VSOCK-GUEST listening on 5000", BOOT_TIMEOUT);
    let clients: Vec<_> = (0..VSOCK_CONNECTIONS)
        .map(|conn| {
            let uds = uds.clone();
            thread::spawn(move || host_initiated(&uds, 5000, conn))
        })
        .collect();
    for (conn, c) in clients.into_iter().enumerate() {
        if let Err(e) = c.join().expect("client thread") {
            panic!(
                "host → guest vsock connection {conn}: {e}\n{}",
                vmm.stdout_so_far()
            );
        }
    }

    vmm.wait_for_stdout("VSOCK-GUEST connect", BOOT_TIMEOUT);
    let vm = api::get_vm(&sock);
    let out = vmm.wait(Duration::from_secs(120));
    let echoed = echo_server.join().expect("echo server") as usize;
    Exchange {
        out,
        received,
        echoed,
        vm,
    }
}
