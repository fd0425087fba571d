//! The API's limits before authentication (issue 16, findings 4 and 6):
//! idle and half-sent connections are closed, a half-sent body is answered
//! `RequestTimeout`, connections over the cap are closed at once, and
//! shutdown waits for a stuck client only for its grace period.
//! Everything runs on loopback against the real server with short limits.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ec2lab_control::api::actions::AppState;
use ec2lab_control::api::listener::{self, Limits};
use ec2lab_control::api::server::{AcceptAnySignature, ApiState};

/// Long enough that a passing test never waits on it.
const READ_GUARD: Duration = Duration::from_secs(20);

/// Starts the server with `limits` on a fresh loopback port; the returned
/// sender stops it and the handle yields how many connections were still
/// open when the grace ran out.
fn start(
    limits: Limits,
) -> (
    tokio::runtime::Runtime,
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<usize>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let app = AppState::new("us-east-1", common::guestless_lab(runtime.handle()));
    let state = ApiState::new(app, AcceptAnySignature);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(listener::serve(listener, state, limits, async {
        let _ = stopped.await;
    }));
    (runtime, addr, stop, server)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(READ_GUARD)).expect("timeout");
    stream
}

/// Everything the server sends until it closes; panics if it keeps the
/// connection open past the guard.
fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => String::from_utf8_lossy(&got).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            String::from_utf8_lossy(&got).into_owned()
        }
        Err(e) => panic!(
            "the server kept the connection open ({e}); read so far: {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
}

const DESCRIBE_REGIONS: &str = "Action=DescribeRegions&Version=2016-11-15";

fn post(body: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn short() -> Limits {
    Limits {
        max_connections: 64,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(1),
    }
}

#[test]
fn idle_and_half_sent_connections_are_closed_and_a_half_sent_body_times_out() {
    let (_runtime, addr, _stop, _server) = start(short());

    // A whole request is answered.
    let mut whole = connect(addr);
    whole
        .write_all(post(DESCRIBE_REGIONS).as_bytes())
        .expect("send");
    let answer = read_to_close(&mut whole);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Connected, nothing sent: closed without an answer.
    let mut idle = connect(addr);
    assert_eq!(read_to_close(&mut idle), "");

    // Half the headers: closed.
    let mut half_headers = connect(addr);
    half_headers
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")
        .expect("send");
    let answer = read_to_close(&mut half_headers);
    assert!(!answer.contains("200 OK"), "{answer}");

    // Headers, then ten of the hundred body bytes promised: RequestTimeout.
    let mut half_body = connect(addr);
    half_body
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nAction=Des")
        .expect("send");
    let answer = read_to_close(&mut half_body);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("<Code>RequestTimeout</Code>"), "{answer}");
}

#[test]
fn a_connection_over_the_cap_is_closed_at_once_and_a_freed_slot_serves_again() {
    let (_runtime, addr, _stop, _server) = start(Limits {
        max_connections: 3,
        header_timeout: Duration::from_secs(60),
        ..short()
    });
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    // Let the server accept all three before the fourth arrives.
    std::thread::sleep(Duration::from_millis(300));
    let mut over = connect(addr);
    over.write_all(post(DESCRIBE_REGIONS).as_bytes())
        .unwrap_or_default();
    assert_eq!(
        read_to_close(&mut over),
        "",
        "the fourth connection was served"
    );

    held.pop();
    std::thread::sleep(Duration::from_millis(300));
    let mut again = connect(addr);
    again
        .write_all(post(DESCRIBE_REGIONS).as_bytes())
        .expect("send");
    let answer = read_to_close(&mut again);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
}

#[test]
fn shutdown_waits_for_a_stuck_client_only_for_its_grace() {
    let (runtime, addr, stop, server) = start(Limits {
        header_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(1),
        ..short()
    });
    // A request whose body never finishes: in flight, not idle.
    let mut stuck = connect(addr);
    stuck
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nAction=Des")
        .expect("send");
    std::thread::sleep(Duration::from_millis(300));
    stop.send(()).expect("stop");
    let left = runtime
        .block_on(async { tokio::time::timeout(READ_GUARD, server).await })
        .expect("serve returned within the guard, not waiting for the client")
        .expect("serve task");
    assert_eq!(left, 1, "the stuck connection is reported");
    // New connections are refused once serve has returned.
    assert!(TcpStream::connect(addr).is_err());
}
