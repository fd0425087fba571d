//! Names outside the VPC: the Amazon-provided DNS (each VPC's dnsmasq)
//! answers the VPC's own names and forwards every other name to the
//! host's resolver, as Route 53 Resolver does for a VPC.
//!
//! dnsmasq runs inside the VPC's namespace, from where the host's resolver
//! (often 127.0.0.53, or an address only the host routes to) cannot be
//! reached, and the namespace must not be given a path to the host. So the
//! daemon relays: it binds UDP and TCP sockets on the loopback *inside*
//! each VPC namespace ([`RELAY`], reachable only by dnsmasq there: Linux
//! drops packets for 127/8 that arrive on any other link) and sends each
//! query on to the upstreams from its own, the host's, namespace.
//!
//! The relay reads no DNS: each UDP query goes out on a fresh socket
//! connected to the upstream (only the upstream's answer is taken) and
//! its answer comes back as it is; a TCP connection is piped to the
//! upstream. dnsmasq matches answers to questions and caches them. What a
//! VPC can hold open is bounded ([`MAX_UDP_IN_FLIGHT`], [`MAX_TCP`]) and
//! every exchange has a deadline. While the daemon is down the relay is
//! gone: the VPC's own names still resolve, other names fail until the
//! daemon is back (it binds the relays again when it reconciles).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use super::netns::{self, NetnsError};

/// Where dnsmasq sends what it does not answer itself, in each VPC's
/// namespace.
pub const RELAY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 53);
/// UDP queries of one VPC waiting for an upstream at once; more are
/// dropped (dnsmasq asks again).
pub const MAX_UDP_IN_FLIGHT: usize = 256;
/// TCP connections of one VPC to upstreams at once.
pub const MAX_TCP: usize = 32;
/// How long one upstream has to answer a UDP query before the next is
/// asked.
const UDP_DEADLINE: Duration = Duration::from_secs(2);
/// How long connecting to one upstream over TCP may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(3);
/// How long a relayed TCP connection may live.
const TCP_LIFETIME: Duration = Duration::from_secs(30);
/// The largest DNS message (TCP's two-byte length; EDNS over UDP is less).
const MAX_MESSAGE: usize = 65_535;

/// Errors of the relay.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The VPC's namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The relay's sockets could not be bound there.
    #[error("DNS relay in {namespace}: binding {RELAY}: {source}")]
    Bind {
        /// The namespace.
        namespace: String,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The host's resolver configuration could not be read.
    #[error("reading {path}: {source}")]
    ResolvConf {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The host's resolver configuration does not parse.
    #[error("{path} does not parse: {detail}")]
    ResolvConfSyntax {
        /// The file.
        path: String,
        /// The parser's complaint.
        detail: String,
    },
}

/// The name servers of a resolv.conf, on port 53, in its order.
pub fn upstreams_from(path: &Path) -> Result<Vec<SocketAddr>, ForwardError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| ForwardError::ResolvConf {
        path: shown.clone(),
        source,
    })?;
    let config = resolv_conf::Config::parse(&text).map_err(|e| ForwardError::ResolvConfSyntax {
        path: shown,
        detail: e.to_string(),
    })?;
    Ok(config
        .nameservers
        .into_iter()
        .map(|ip| SocketAddr::new(IpAddr::from(ip), 53))
        .collect())
}

/// One VPC's relay: its tasks end when it is dropped.
#[derive(Debug)]
struct Relay {
    tasks: [AbortHandle; 2],
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The relays of every VPC namespace, running on the daemon's runtime.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Arc<[SocketAddr]>,
    runtime: tokio::runtime::Handle,
    relays: Mutex<HashMap<String, Relay>>,
}

impl Forwarder {
    /// Relays to `upstreams` (tried in order), with tasks on `runtime`.
    pub fn new(upstreams: Vec<SocketAddr>, runtime: tokio::runtime::Handle) -> Self {
        Self {
            upstreams: upstreams.into(),
            runtime,
            relays: Mutex::new(HashMap::new()),
        }
    }

    /// Makes namespace `namespace` have a relay (bound now if it has
    /// none). Idempotent.
    pub fn ensure(&self, namespace: &str) -> Result<(), ForwardError> {
        let mut relays = crate::lock(&self.relays);
        if relays.contains_key(namespace) {
            return Ok(());
        }
        let bound = netns::run_in(namespace, || -> std::io::Result<_> {
            let udp = std::net::UdpSocket::bind(RELAY)?;
            udp.set_nonblocking(true)?;
            let tcp = std::net::TcpListener::bind(RELAY)?;
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        })?;
        let (udp, tcp) = bound.map_err(|source| ForwardError::Bind {
            namespace: namespace.to_string(),
            source,
        })?;
        let (up_udp, up_tcp) = (self.upstreams.clone(), self.upstreams.clone());
        let name = namespace.to_string();
        let udp_task = self.runtime.spawn(async move {
            match UdpSocket::from_std(udp) {
                Ok(udp) => relay_udp(Arc::new(udp), up_udp).await,
                Err(e) => log::error!("{name}: DNS relay (UDP): {e}"),
            }
        });
        let name = namespace.to_string();
        let tcp_task = self.runtime.spawn(async move {
            match TcpListener::from_std(tcp) {
                Ok(tcp) => relay_tcp(tcp, up_tcp).await,
                Err(e) => log::error!("{name}: DNS relay (TCP): {e}"),
            }
        });
        relays.insert(
            namespace.to_string(),
            Relay {
                tasks: [udp_task.abort_handle(), tcp_task.abort_handle()],
            },
        );
        Ok(())
    }

    /// Stops namespace `namespace`'s relay, if it has one.
    pub fn remove(&self, namespace: &str) {
        crate::lock(&self.relays).remove(namespace);
    }

    /// Whether namespace `namespace` has a relay.
    pub fn relays(&self, namespace: &str) -> bool {
        crate::lock(&self.relays).contains_key(namespace)
    }
}

/// Takes queries from dnsmasq and answers each with what the first
/// upstream to answer said.
async fn relay_udp(local: Arc<UdpSocket>, upstreams: Arc<[SocketAddr]>) {
    let in_flight = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, from) = match local.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                log::warn!("DNS relay: receiving: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let (query, local, upstreams) = (buf[..n].to_vec(), local.clone(), upstreams.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = ask(&upstreams, &query).await {
                let _ = local.send_to(&answer, from).await;
            }
        });
    }
}

/// `query` to each upstream in turn until one answers in time.
async fn ask(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let any: SocketAddr = if upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(socket) = UdpSocket::bind(any).await else {
            continue;
        };
        // Connected: only the upstream's datagrams are received.
        if socket.connect(upstream).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; MAX_MESSAGE];
        if let Ok(Ok(n)) = tokio::time::timeout(UDP_DEADLINE, socket.recv(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// Pipes each TCP connection from dnsmasq to the first upstream that
/// takes it.
async fn relay_tcp(listener: TcpListener, upstreams: Arc<[SocketAddr]>) {
    super::accept::bounded(listener, MAX_TCP, "DNS relay".into(), move |mut client| {
        let upstreams = upstreams.clone();
        async move {
            let _ = tokio::time::timeout(TCP_LIFETIME, pipe(&mut client, &upstreams)).await;
        }
    })
    .await;
}

async fn pipe(client: &mut TcpStream, upstreams: &[SocketAddr]) {
    for upstream in upstreams {
        if let Ok(Ok(mut server)) =
            tokio::time::timeout(CONNECT_DEADLINE, TcpStream::connect(upstream)).await
        {
            let _ = tokio::io::copy_bidirectional(client, &mut server).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_the_name_servers_of_resolv_conf_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "# made by hand\nsearch example.net\nnameserver 127.0.0.53\n\
             nameserver 2001:db8::53\noptions edns0 trust-ad\nnameserver 192.0.2.53\n",
        )
        .expect("write");
        let got = upstreams_from(&path).expect("parses");
        let want: Vec<SocketAddr> = vec![
            "127.0.0.53:53".parse().expect("addr"),
            "[2001:db8::53]:53".parse().expect("addr"),
            "192.0.2.53:53".parse().expect("addr"),
        ];
        assert_eq!(got, want);
        std::fs::write(&path, "search example.net\n").expect("write");
        assert_eq!(upstreams_from(&path).expect("parses"), Vec::new());
        assert!(matches!(
            upstreams_from(&dir.path().join("missing")),
            Err(ForwardError::ResolvConf { .. })
        ));
    }

    /// A stand-in upstream on the loopback: answers every query with the
    /// query itself, reversed, so the relay's answer is recognisable.
    async fn echo_upstream() -> SocketAddr {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let at = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                let mut answer = buf[..n].to_vec();
                answer.reverse();
                let _ = server.send_to(&answer, from).await;
            }
        });
        at
    }

    #[tokio::test]
    async fn a_query_goes_to_the_next_upstream_when_the_first_is_silent() {
        // Bound and never read: a black hole on the loopback.
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let upstreams = [silent.local_addr().expect("addr"), echo_upstream().await];
        let answer = ask(&upstreams, b"query").await.expect("an answer");
        assert_eq!(answer, b"yreuq");
        assert_eq!(ask(&upstreams[..1], b"query").await, None);
    }

    #[tokio::test]
    async fn the_udp_relay_answers_the_asker() {
        let local = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let at = local.local_addr().expect("addr");
        let upstreams: Arc<[SocketAddr]> = vec![echo_upstream().await].into();
        tokio::spawn(relay_udp(local, upstreams));
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        client.send_to(b"abc", at).await.expect("send");
        let mut buf = [0u8; 16];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("in time")
            .expect("recv");
        assert_eq!((&buf[..n], from), (&b"cba"[..], at));
    }

    #[tokio::test]
    async fn a_tcp_connection_is_piped_to_the_upstream() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream_at = upstream.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let relay = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let at = relay.local_addr().expect("addr");
        tokio::spawn(relay_tcp(relay, vec![upstream_at].into()));
        let mut client = TcpStream::connect(at).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        client.write_all(b"\x00\x05hello").await.expect("write");
        let mut buf = [0u8; 7];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&buf, b"\x00\x05hello");
    }
}
